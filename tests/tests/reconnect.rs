//! The agent never gives up on the broker: it survives a broker restart and a broker that
//! is not there yet, and heals on its own, without being restarted.

use std::time::Duration;

use csg_e2e::bed::wait_online;
use csg_e2e::{wait_until, Agent, AgentConfig, Bed, Broker, Mark, Recorder, TIMEOUT};
use serde_json::json;

/// Position of the first line of `log` at or after byte `from` containing all of `parts`.
fn find_line(log: &str, from: usize, parts: &[&str]) -> Option<usize> {
    let mut pos = 0;
    for line in log.split_inclusive('\n') {
        if pos >= from && parts.iter().all(|p| line.contains(p)) {
            return Some(pos);
        }
        pos += line.len();
    }
    None
}

#[test]
fn after_a_broker_restart_the_agent_reconnects_resubscribes_and_answers() {
    let mut bed = Bed::start("gw-restart");
    let cid = bed.client_id();
    let pid = bed.agent.pid();
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));

    // A crash of the broker: SIGKILL, a new empty broker on the same port.
    let mark = bed.rec.mark();
    bed.broker.restart();
    let sub = format!("{} (QoS 1)", bed.config().command_topic());
    let presence = format!("'{}'", bed.config().presence_topic());
    let heartbeat = format!("'{}'", bed.config().heartbeat_topic());
    // Read the new broker's log: the recorder may reconnect after the agent, so it could
    // miss the (QoS 0, unretained) heartbeat; the broker sees everything.
    let ok = wait_until(TIMEOUT, || {
        let log = bed.broker.current_log();
        find_line(&log, 0, &["Received PUBLISH from", &cid, &presence]).is_some()
            && find_line(&log, 0, &["Received PUBLISH from", &cid, &heartbeat]).is_some()
    });
    let log = bed.broker.current_log();
    assert!(
        ok,
        "the agent did not come back with presence and a heartbeat within {TIMEOUT:?}\n\
         (agent running: {})\n{log}",
        bed.agent.is_running()
    );
    let connected = find_line(&log, 0, &["New client connected", &format!(" as {cid} (")])
        .expect("a CONNECT precedes any PUBLISH");
    let subscribed = find_line(&log, connected, &["Received SUBSCRIBE from", &cid])
        .unwrap_or_else(|| panic!("the agent did not re-subscribe after reconnecting\n{log}"));
    let topic_line = find_line(&log, subscribed, &[&sub])
        .unwrap_or_else(|| panic!("the re-subscription is not {sub}\n{log}"));
    let online = find_line(&log, connected, &["Received PUBLISH from", &cid, &presence]).unwrap();
    assert!(
        topic_line < online,
        "online must be published only after the subscription (clean session)\n{log}"
    );
    // The heartbeat interval is 30 s: this one was sent at once after the reconnect.
    assert!(find_line(
        &log,
        connected,
        &["Received PUBLISH from", &cid, &heartbeat]
    )
    .is_some());

    // The recorder is back too; the retained online reaches it.
    assert!(bed.rec.wait_resubscribed(2), "{}", bed.rec.dump());
    bed.rec
        .expect_since(mark, "online after the restart", TIMEOUT, |m| {
            bed.is_presence(m, "online") && m.field("reason").as_deref() == Some("connected")
        });
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));

    // Same process, one connection to the new broker (no flapping).
    assert_eq!(bed.agent.pid(), pid);
    bed.agent.assert_running("after the broker restart");
    assert_eq!(
        csg_e2e::broker::count_connects(&bed.broker.current_log(), &cid),
        1,
        "{}",
        bed.broker.current_log()
    );
}

#[test]
fn with_the_broker_absent_at_start_the_agent_waits_and_connects_when_it_appears() {
    let port = csg_e2e::broker::free_port();
    let cfg = AgentConfig::new("gw-late", &format!("mqtt://127.0.0.1:{port}"));
    let mut agent = Agent::spawn(&cfg);
    // Part of the scenario, not an assertion: leave the broker away for several back-off
    // rounds (100 ms doubling to 1 s) before it appears.
    std::thread::sleep(Duration::from_millis(2500));
    agent.assert_running("while the broker was absent: it must keep retrying");

    let broker = Broker::start_on(port);
    let rec = Recorder::connect(broker.port(), &["#"]);
    if wait_online(&rec, Mark::default(), &cfg, TIMEOUT).is_none() {
        panic!(
            "agent did not connect within {TIMEOUT:?} of the broker appearing (exit: {:?})\n{}\n{}",
            agent.try_status(),
            rec.dump(),
            broker.log()
        );
    }
    let reply_to = "csg-up/late-console";
    rec.publish(
        &cfg.command_topic(),
        csg_e2e::rpc::bytes(&csg_e2e::rpc::request(
            "late-1",
            "sys.ping",
            json!({}),
            Some(reply_to),
        )),
    );
    let reply = rec.expect("reply after the late connect", TIMEOUT, |m| {
        m.topic == reply_to
    });
    csg_e2e::rpc::expect_ok(&reply.json_or_panic(), "late-1");
    agent.assert_running("after connecting");
}
