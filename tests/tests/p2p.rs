//! P2P mode (Alibaba Cloud MQTT's point-to-point topics), exercised on Mosquitto through
//! `subscribe_p2p`: commands on `{down}/p2p/{client_id}`, replies on `{up}/p2p/{console}`,
//! no retained presence and no Will (that broker supports neither).

use csg_e2e::rpc::{self, expect_ok, request};
use csg_e2e::{wait_until, Bed, Recorder, QUIET, TIMEOUT};
use serde_json::json;

fn p2p_bed(instance: &str) -> Bed {
    Bed::start_with(instance, |c| {
        c.mode = "p2p".into();
        c.subscribe_p2p = true;
    })
}

/// Lines of the broker log about this client's CONNECT: the connect line and the Will lines
/// that follow it.
fn connect_block(log: &str, cid: &str) -> String {
    let needle = format!(" as {cid} (");
    let mut out = String::new();
    let mut inside = false;
    for line in log.lines() {
        if line.contains("New client connected") {
            inside = line.contains(&needle);
        } else if line.contains("Sending CONNACK") {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn p2p_commands_are_answered_on_p2p_reply_topics() {
    let bed = p2p_bed("gw-p2p");
    let cmd = bed.config().command_topic();
    assert_eq!(cmd, "csg-down/p2p/GID_csg@@@gw-p2p");
    let log = bed.broker.log();
    assert!(
        log.contains(&format!("\t{cmd} (QoS 1)")),
        "the agent must subscribe its P2P topic itself (subscribe_p2p)\n{log}"
    );

    let reply_to = "csg-up/p2p/GID_csg@@@e2e-console";
    let mark = bed.rec.mark();
    bed.rec.publish(
        &cmd,
        rpc::bytes(&request("p2p-1", "sys.info", json!({}), Some(reply_to))),
    );
    let reply = bed.reply_on_since(reply_to, mark, "p2p-1");
    let info = expect_ok(&reply, "p2p-1");
    assert_eq!(info["topic_mode"], json!("p2p"), "{info}");
    assert_eq!(info["client_id"], json!("GID_csg@@@gw-p2p"), "{info}");

    // The standard command topic is not listened to in P2P mode.
    let mark = bed.rec.mark();
    bed.rec.publish(
        "csg-down/gw-p2p",
        rpc::bytes(&request("std-1", "sys.ping", json!({}), Some(reply_to))),
    );
    bed.rec.publish(
        &cmd,
        rpc::bytes(&request("p2p-2", "sys.ping", json!({}), Some(reply_to))),
    );
    bed.reply_on_since(reply_to, mark, "p2p-2");
    std::thread::sleep(QUIET);
    assert!(
        bed.rec
            .matching_since(mark, |m| m.field("id").as_deref() == Some("std-1")
                && m.topic == reply_to)
            .is_empty(),
        "a command on the standard topic was answered in P2P mode\n{}",
        bed.rec.dump()
    );
}

#[test]
fn p2p_presence_is_not_retained_and_there_is_no_will() {
    let mut bed = p2p_bed("gw-p2p-nowill");
    let cid = bed.client_id();
    let live = bed
        .rec
        .expect("online presence", TIMEOUT, |m| bed.is_presence(m, "online"));
    assert!(!live.retain);

    let block = connect_block(&bed.broker.log(), &cid);
    assert!(
        block.contains("No will message specified"),
        "P2P mode must not set a Will:\n{block}"
    );
    let log = bed.broker.log();
    let presence = format!("'{}'", bed.config().presence_topic());
    let published: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("Received PUBLISH from") && l.contains(&cid) && l.contains(&presence)
        })
        .collect();
    assert!(!published.is_empty(), "{log}");
    for l in &published {
        assert!(
            l.contains(", r0,"),
            "P2P presence must not be retained: {l}"
        );
    }

    // A late subscriber finds nothing retained.
    let topic = bed.config().presence_topic();
    let marker = format!("{topic}-e2e-marker");
    let late = Recorder::connect(bed.broker.port(), &[&topic, &marker]);
    late.publish(&marker, "marker");
    late.expect("the marker", TIMEOUT, |m| m.topic == marker);
    assert!(
        late.matching(|m| m.topic == topic).is_empty(),
        "{}",
        late.dump()
    );

    // kill -9: the broker notices the dead socket and, having no Will, publishes nothing.
    let mark = bed.rec.mark();
    bed.agent.kill9();
    let gone = format!("Client {cid} closed its connection");
    assert!(
        wait_until(TIMEOUT, || bed.broker.log().contains(&gone)),
        "{}",
        bed.broker.log()
    );
    std::thread::sleep(QUIET);
    let offline = bed.rec.matching_since(mark, |m| m.topic == topic);
    assert!(
        offline.is_empty(),
        "something was published for a dead P2P agent: {offline:?}"
    );
}

#[test]
fn csgctl_calls_in_p2p_mode() {
    let bed = p2p_bed("gw-p2p-ctl");
    let out = bed
        .csgctl()
        .with_global(&["--p2p", "--subscribe-p2p"])
        .run(&["call", "gw-p2p-ctl", "sys.ping", "--timeout", "10s"]);
    out.assert_code(0);
    let v = csg_e2e::csgctl::json_stdout(&out);
    assert_eq!(v["pong"], json!(true), "{}", out.describe());
}
