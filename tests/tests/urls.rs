//! Several broker URLs (`mqtt.urls`, csgctl's repeated or comma-separated `--broker`): tried
//! in turn with the same back-off; a session stays on a broker that works and moves on after
//! a failed connect or a lost link.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use csg_e2e::bed::wait_online;
use csg_e2e::broker::free_port;
use csg_e2e::csgctl::json_stdout;
use csg_e2e::{Agent, AgentConfig, Bed, Broker, Csgctl, Recorder, TIMEOUT};
use serde_json::json;

#[test]
fn the_agent_skips_a_dead_broker_and_comes_online_on_the_next() {
    let broker = Broker::start();
    let rec = Recorder::connect(broker.port(), &["#"]);
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let mut cfg = AgentConfig::new("gw-urls", "");
    cfg.urls = vec![dead.clone(), broker.url()];
    let mark = rec.mark();
    let mut agent = Agent::spawn(&cfg);
    let online = wait_online(&rec, mark, &cfg, TIMEOUT);
    let log = agent.log();
    assert!(
        online.is_some(),
        "not online through the second URL\n{log}\n{}",
        rec.dump()
    );
    // The logs name the URL tried and the URL in use.
    assert!(log.contains(&dead), "the dead URL is not named\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("online") && l.contains(&broker.url())),
        "the URL in use is not named\n{log}"
    );

    // csgctl takes the same list, either as one comma-separated value or repeated.
    let list = format!("{dead},{}", broker.url());
    let out = Csgctl::new(&list).run(&["call", "gw-urls", "sys.ping", "--timeout", "10s"]);
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());
    let out = Csgctl::new(&dead)
        .with_global(&["--broker", &broker.url()])
        .run(&["call", "gw-urls", "sys.ping", "--timeout", "10s"]);
    out.assert_code(0);
    // A mix of plain and TLS URLs is a usage error.
    let out = Csgctl::new(&format!("{},mqtts://127.0.0.1:1", broker.url()))
        .run(&["call", "gw-urls", "sys.ping"]);
    out.assert_code(2);
    assert!(out.stderr.contains("mqtts://"), "{}", out.describe());
    agent.assert_running("after the calls");
}

#[test]
fn when_its_broker_dies_the_agent_moves_to_the_next_one() {
    let mut a = Broker::start();
    let b = Broker::start();
    let rec_a = Recorder::connect(a.port(), &["#"]);
    let rec_b = Recorder::connect(b.port(), &["#"]);
    let mut cfg = AgentConfig::new("gw-failover", "");
    cfg.urls = vec![a.url(), b.url()];
    let mark = rec_a.mark();
    let mut agent = Agent::spawn(&cfg);
    assert!(
        wait_online(&rec_a, mark, &cfg, TIMEOUT).is_some(),
        "not online on the first broker\n{}",
        agent.log()
    );
    let mark = rec_b.mark();
    a.kill();
    assert!(
        wait_online(&rec_b, mark, &cfg, TIMEOUT).is_some(),
        "not online on the second broker after the first died\n{}",
        agent.log()
    );
    let out = Csgctl::new(&b.url()).run(&["call", "gw-failover", "sys.ping", "--timeout", "10s"]);
    out.assert_code(0);
    assert!(
        agent.log().contains("connection lost"),
        "the loss is logged\n{}",
        agent.log()
    );
    agent.assert_running("after the failover");
}

/// A node that accepts TCP and then never says anything (a hung broker, a half-open path):
/// the kernel completes the handshake from the backlog, and nothing ever reads.
fn silent_node() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("mqtt://{}", l.local_addr().expect("local address"));
    (l, url)
}

/// A node that answers every CONNECT with "server unavailable", as a cluster node in an
/// election does (a 3.1.1 CONNACK, return code 3; a run on MQTT 5 reads a CONNACK it cannot
/// use, which must not end the wait either).
fn unavailable_node() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("mqtt://{}", l.local_addr().expect("local address"));
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x03]);
        }
    });
    url
}

#[test]
fn csgctl_tries_the_next_broker_when_the_first_is_silent_or_unavailable() {
    let bed = Bed::start("gw-urls-ctl");
    let real = bed.broker.url();
    let connect = Duration::from_secs(4);
    let ping = |list: &str| {
        let start = Instant::now();
        let out = Csgctl::new(list)
            .with_global(&["--connect-timeout", "4s"])
            .run(&["call", "gw-urls-ctl", "sys.ping", "--timeout", "5s"]);
        (out, start.elapsed())
    };

    // Each of the two gets 2 s of the 4 s, so the silent one cannot use up the wait.
    let (_silent, silent_url) = silent_node();
    let (out, took) = ping(&format!("{silent_url},{real}"));
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());
    assert!(
        took < connect + Duration::from_secs(3),
        "took {took:?}\n{}",
        out.describe()
    );

    // A passing refusal from the first node moves on to the next rather than ending the wait.
    let (out, took) = ping(&format!("{},{real}", unavailable_node()));
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());
    assert!(
        took < connect + Duration::from_secs(3),
        "took {took:?}\n{}",
        out.describe()
    );
}
