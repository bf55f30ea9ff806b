//! What only MQTT 5 has: Response Topic and Correlation Data on requests, Message Expiry from
//! csgctl's deadline, the Maximum Packet Size that keeps an oversized publish from costing the
//! agent its connection; and, for contrast, what that same publish does on MQTT 3.1.1.
//!
//! Each test sets the protocol of its agent, recorder and csgctl itself, so it tests the same
//! thing whatever `CSG_TEST_MQTT` says.

use bytes::Bytes;
use csg_e2e::agent::check_config;
use csg_e2e::bed::wait_online;
use csg_e2e::recorder::Properties;
use csg_e2e::rpc::{bytes, expect_err, expect_ok, request};
use csg_e2e::{Agent, AgentConfig, Broker, Csgctl, Mark, Recorder, QUIET, TIMEOUT};
use csg_transport::Protocol;
use serde_json::{json, Value};

/// A broker, a recorder on `#` and an online agent, all speaking `protocol`.
struct World {
    agent: Agent,
    rec: Recorder,
    broker: Broker,
}

impl World {
    fn start(instance: &str, protocol: Protocol) -> World {
        Self::start_on(Broker::start(), instance, protocol)
    }

    fn start_on(broker: Broker, instance: &str, protocol: Protocol) -> World {
        let rec = Recorder::connect_with(broker.port(), &["#"], protocol);
        let mut cfg = AgentConfig::new(instance, &broker.url());
        cfg.protocol = protocol.to_string();
        let agent = Agent::spawn(&cfg);
        assert!(
            wait_online(&rec, Mark::default(), &cfg, TIMEOUT).is_some(),
            "agent not online\n{}\n{}",
            agent.log(),
            broker.log()
        );
        World { agent, rec, broker }
    }

    fn cfg(&self) -> &AgentConfig {
        &self.agent.config
    }

    /// Sends `payload` with `props` and returns the first message on `topic` after it.
    fn ask(&self, payload: Vec<u8>, props: Properties, topic: &str) -> csg_e2e::Msg {
        let mark = self.rec.mark();
        self.rec
            .publish_props(&self.cfg().command_topic(), payload, props);
        self.rec
            .wait_for_since(mark, TIMEOUT, |m| m.topic == topic)
            .unwrap_or_else(|| panic!("no reply on {topic}\n{}", self.rec.dump()))
    }

    fn status(&self) -> Value {
        let topic = format!("csg-up/{}", csg_e2e::unique("st"));
        let id = csg_e2e::unique("status");
        let req = request(&id, "sys.status", json!({}), Some(&topic));
        let reply = self.ask(bytes(&req), Properties::default(), &topic);
        expect_ok(&reply.json_or_panic(), &id)
    }
}

fn props(response_topic: Option<&str>, correlation: Option<&[u8]>) -> Properties {
    Properties {
        response_topic: response_topic.map(str::to_string),
        correlation_data: correlation.map(Bytes::copy_from_slice),
        message_expiry: None,
    }
}

#[test]
fn a_response_topic_stands_in_for_reply_to_and_replies_mirror_correlation_data() {
    let w = World::start("gw-v5-rt", Protocol::V5);
    let topic = "csg-up/console-5";
    // No reply_to in the envelope: the Response Topic is where the reply goes.
    let req = request("v5-1", "sys.ping", json!({}), None);
    let reply = w.ask(
        bytes(&req),
        props(Some(topic), Some(b"\x00corr\xff")),
        topic,
    );
    expect_ok(&reply.json_or_panic(), "v5-1");
    assert_eq!(
        reply.props.correlation_data.as_deref(),
        Some(&b"\x00corr\xff"[..]),
        "the reply mirrors the Correlation Data"
    );
    assert_eq!(
        reply.props.response_topic, None,
        "a reply sets no Response Topic"
    );

    // Both, the same: fine. Both, different: BAD_REQUEST on the Response Topic, not run.
    let req = request("v5-2", "sys.ping", json!({}), Some(topic));
    let reply = w.ask(bytes(&req), props(Some(topic), None), topic);
    expect_ok(&reply.json_or_panic(), "v5-2");
    assert_eq!(reply.props.correlation_data, None);
    let req = request("v5-3", "sys.ping", json!({}), Some("csg-up/elsewhere"));
    let reply = w.ask(bytes(&req), props(Some(topic), Some(b"c3")), topic);
    let err = expect_err(&reply.json_or_panic(), Some("v5-3"), "BAD_REQUEST");
    assert!(
        err["message"].as_str().unwrap_or("").contains("differ"),
        "{err}"
    );
    assert_eq!(reply.props.correlation_data.as_deref(), Some(&b"c3"[..]));

    // The id stays required, Correlation Data or not.
    let mut req = request("x", "sys.ping", json!({}), None);
    req.as_object_mut().unwrap().remove("id");
    let reply = w.ask(bytes(&req), props(Some(topic), Some(b"c4")), topic);
    expect_err(&reply.json_or_panic(), None, "BAD_REQUEST");

    // A Response Topic outside the agent's reply parent gets the same treatment as such a
    // reply_to: nothing is published there (the request is dropped and counted).
    let before = w.status()["counters"]["dropped"].as_u64().unwrap();
    let mark = w.rec.mark();
    let req = request("v5-5", "sys.ping", json!({}), None);
    w.rec.publish_props(
        &w.cfg().command_topic(),
        bytes(&req),
        props(Some("csg-down/other"), None),
    );
    std::thread::sleep(QUIET);
    assert!(
        w.rec
            .matching_since(mark, |m| m.topic == "csg-down/other")
            .is_empty(),
        "published outside the reply parent\n{}",
        w.rec.dump()
    );
    let after = w.status()["counters"]["dropped"].as_u64().unwrap();
    assert_eq!(after, before + 1, "the refused Response Topic is counted");
}

#[test]
fn on_mqtt5_an_oversized_publish_is_dropped_by_the_broker_and_costs_nothing() {
    let mut w = World::start("gw-v5-big", Protocol::V5);
    let cid = w.cfg().client_id();
    let presence = w.cfg().presence_topic();
    let mark = w.rec.mark();
    // 2 MiB, twice the agent's Maximum Packet Size (mqtt.max_packet_bytes, 1 MiB).
    w.rec
        .publish_acked(&w.cfg().command_topic(), vec![b'x'; 2 << 20]);
    let topic = format!("csg-up/{}", csg_e2e::unique("after"));
    let req = request("after-big", "sys.ping", json!({}), Some(&topic));
    let reply = w.ask(bytes(&req), Properties::default(), &topic);
    expect_ok(&reply.json_or_panic(), "after-big");
    std::thread::sleep(QUIET);
    let presences = w.rec.matching_since(mark, |m| m.topic == presence);
    assert!(
        presences.is_empty(),
        "no Will, no new online: {:?}",
        presences.iter().map(|m| m.summary()).collect::<Vec<_>>()
    );
    assert_eq!(
        csg_e2e::broker::count_connects(&w.broker.log(), &cid),
        1,
        "one connection, never dropped\n{}",
        w.broker.log()
    );
    assert_eq!(w.status()["counters"]["packet_too_large"], json!(0));
    w.agent.assert_running("after the oversized publish");
}

#[test]
fn on_mqtt311_an_oversized_publish_costs_the_connection_and_is_counted() {
    let mut w = World::start("gw-311-big", Protocol::V311);
    let cid = w.cfg().client_id();
    let mark = w.rec.mark();
    w.rec
        .publish_acked(&w.cfg().command_topic(), vec![b'x'; 2 << 20]);
    // The client cannot skip the packet: the link drops, the Will says offline, and the
    // agent comes back (clean session: the broker does not redeliver it).
    w.rec.expect_since(mark, "the Will", TIMEOUT, |m| {
        m.topic == w.cfg().presence_topic() && m.field("state").as_deref() == Some("offline")
    });
    assert!(
        wait_online(&w.rec, mark, w.cfg(), TIMEOUT).is_some(),
        "not back online\n{}",
        w.agent.log()
    );
    let status = w.status();
    assert_eq!(status["counters"]["packet_too_large"], json!(1), "{status}");
    assert_eq!(
        csg_e2e::broker::count_connects(&w.broker.log(), &cid),
        2,
        "{}",
        w.broker.log()
    );
    let log = w.agent.log();
    assert!(
        log.contains("packet_too_large") && log.contains("packet of 20971"),
        "the log names the failure and the size\n{log}"
    );
    w.agent.assert_running("after the oversized publish");
}

#[test]
fn on_mqtt311_a_broker_packet_limit_below_the_agents_prevents_the_flap() {
    // The advice of docs/operations.md ("Oversized packets"), checked on a real Mosquitto.
    let broker = Broker::start_with(|port| {
        format!("{}max_packet_size 1000000\n", csg_e2e::broker::config(port))
    });
    let mut w = World::start_on(broker, "gw-311-limit", Protocol::V311);
    let cid = w.cfg().client_id();
    let mark = w.rec.mark();
    // The publisher is the one disconnected; its 2 MiB never reaches anyone.
    let attacker = Recorder::connect_with(w.broker.port(), &[], Protocol::V311);
    attacker.publish(&w.cfg().command_topic(), vec![b'x'; 2 << 20]);
    let topic = format!("csg-up/{}", csg_e2e::unique("after"));
    let req = request("after-limit", "sys.ping", json!({}), Some(&topic));
    let reply = w.ask(bytes(&req), Properties::default(), &topic);
    expect_ok(&reply.json_or_panic(), "after-limit");
    std::thread::sleep(QUIET);
    assert!(
        w.rec
            .matching_since(mark, |m| m.topic == w.cfg().presence_topic())
            .is_empty(),
        "no Will, no new online\n{}",
        w.rec.dump()
    );
    assert_eq!(w.status()["counters"]["packet_too_large"], json!(0));
    assert_eq!(
        csg_e2e::broker::count_connects(&w.broker.log(), &cid),
        1,
        "{}",
        w.broker.log()
    );
    w.agent.assert_running("after the refused publish");
}

#[test]
fn csgctl_on_mqtt5_sets_the_message_expiry_from_the_deadline() {
    let w = World::start("gw-v5-exp", Protocol::V5);
    let mark = w.rec.mark();
    let out = Csgctl::new(&w.broker.url()).with_protocol("5").run(&[
        "call",
        "gw-v5-exp",
        "sys.ping",
        "--deadline",
        "90s",
    ]);
    out.assert_code(0);
    let sent = w
        .rec
        .matching_since(mark, |m| m.topic == w.cfg().command_topic());
    let expiry = sent.first().and_then(|m| m.props.message_expiry);
    // 90 s from the request's creation, rounded up; what reaches a subscriber is what is left.
    assert!(
        expiry.is_some_and(|e| (85..=90).contains(&e)),
        "Message Expiry Interval {expiry:?}\n{}",
        w.rec.dump()
    );
    // Without a deadline there is none.
    let mark = w.rec.mark();
    Csgctl::new(&w.broker.url())
        .with_protocol("5")
        .run(&["call", "gw-v5-exp", "sys.ping"])
        .assert_code(0);
    let sent = w
        .rec
        .matching_since(mark, |m| m.topic == w.cfg().command_topic());
    assert_eq!(sent.first().map(|m| m.props.message_expiry), Some(None));
}

#[test]
fn check_config_advises_the_broker_limit_on_mqtt311_only() {
    let mut cfg = AgentConfig::new("gw-note", "mqtt://127.0.0.1:1");
    cfg.protocol = "3.1.1".into();
    let out = check_config(&cfg.to_toml());
    out.assert_code(0);
    assert!(
        out.stdout.contains("max_packet_size") && out.stdout.contains("mqtt.protocol"),
        "{}",
        out.describe()
    );
    cfg.protocol = "5".into();
    let out = check_config(&cfg.to_toml());
    out.assert_code(0);
    assert!(!out.stdout.contains("note:"), "{}", out.describe());
    cfg.protocol = "4".into();
    let out = check_config(&cfg.to_toml());
    out.assert_code(2);
    assert!(out.stderr.contains("mqtt.protocol"), "{}", out.describe());
}

#[test]
fn refusals_on_mqtt5_are_classified_like_on_mqtt311() {
    // A broker that wants a password: the v5 CONNACK reason (Not authorized, 0x87) is the
    // same class as 3.1.1's return code, and csgctl says so.
    let broker = Broker::start_with(|port| {
        format!(
            "{}allow_anonymous false\nlog_type all\nlog_dest stderr\n",
            csg_e2e::broker::base_config(port).replace("allow_anonymous true\n", "")
        )
    });
    let out = Csgctl::new(&broker.url())
        .with_protocol("5")
        .with_global(&["--connect-timeout", "3s"])
        .run(&["call", "gw-x", "sys.ping"]);
    assert_ne!(out.code(), Some(0));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("not authorized") || text.contains("credentials"),
        "{}",
        out.describe()
    );
}
