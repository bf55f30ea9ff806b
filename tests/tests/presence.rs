//! Presence: online (retained) once the command subscription is live, the broker's Last Will
//! when the agent dies, and the agent's own offline on a clean stop.

use csg_e2e::bed::wait_online;
use csg_e2e::rpc::{self, check_presence, expect_ok, request};
use csg_e2e::{wait_until, Bed, Mark, Recorder, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::json;

/// A subscriber that connects now and collects what the broker has retained for `topic`.
/// The marker it publishes to itself after subscribing arrives after any retained message
/// (the broker sends retained messages right after the SUBACK), so once the marker is in,
/// the answer is complete.
fn retained_on(port: u16, topic: &str) -> Vec<csg_e2e::Msg> {
    let marker = format!("{topic}-e2e-marker");
    let late = Recorder::connect(port, &[topic, &marker]);
    late.publish(&marker, "marker");
    late.expect("the marker", TIMEOUT, |m| m.topic == marker);
    late.matching(|m| m.topic == topic)
}

#[test]
fn online_presence_is_retained_for_subscribers_that_come_later() {
    let bed = Bed::start("gw-online");
    let live = bed
        .rec
        .expect("online presence", TIMEOUT, |m| bed.is_presence(m, "online"));
    assert_eq!(check_presence(&live.json_or_panic(), "gw-online"), "online");
    assert_eq!(
        live.field("reason").as_deref(),
        Some("connected"),
        "{}",
        live.summary()
    );
    assert_eq!(live.qos, 1, "presence is QoS 1: {}", live.summary());

    let stored = retained_on(bed.broker.port(), &bed.config().presence_topic());
    assert_eq!(stored.len(), 1, "exactly one retained presence: {stored:?}");
    assert!(
        stored[0].retain,
        "delivered from the retained store: {}",
        stored[0].summary()
    );
    assert_eq!(stored[0].field("state").as_deref(), Some("online"));
    assert_eq!(
        stored[0].payload, live.payload,
        "the retained presence is the one published"
    );
}

#[test]
fn a_request_sent_the_moment_online_is_seen_is_answered() {
    // Online means "subscribed": a console that fires as soon as it sees online must not
    // lose its first command.
    let broker = csg_e2e::Broker::start();
    let rec = Recorder::connect(broker.port(), &["#"]);
    let cfg = csg_e2e::AgentConfig::new("gw-first", &broker.url());
    let mut agent = csg_e2e::Agent::spawn(&cfg);
    if wait_online(&rec, Mark::default(), &cfg, TIMEOUT).is_none() {
        panic!(
            "agent not online (exit: {:?})\n{}",
            agent.try_status(),
            rec.dump()
        );
    }
    rec.publish(
        &cfg.command_topic(),
        rpc::bytes(&request(
            "first",
            "sys.ping",
            json!({}),
            Some("csg-up/first-console"),
        )),
    );
    let reply = rec.expect("reply to the first request", TIMEOUT, |m| {
        m.topic == "csg-up/first-console"
    });
    expect_ok(&reply.json_or_panic(), "first");
}

#[test]
fn kill_9_fires_the_last_will_offline_retained() {
    let mut bed = Bed::start("gw-will");
    let mark = bed.rec.mark();
    bed.agent.kill9();
    let will = bed
        .rec
        .expect_since(mark, "the Last Will (offline presence)", TIMEOUT, |m| {
            bed.is_presence(m, "offline")
        });
    assert_eq!(check_presence(&will.json_or_panic(), "gw-will"), "offline");
    assert_eq!(
        will.field("reason").as_deref(),
        Some("connection_lost"),
        "{}",
        will.summary()
    );
    assert_eq!(will.qos, 1, "{}", will.summary());

    let stored = retained_on(bed.broker.port(), &bed.config().presence_topic());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].retain, "{}", stored[0].summary());
    assert_eq!(
        stored[0].field("state").as_deref(),
        Some("offline"),
        "{}",
        stored[0].summary()
    );
}

fn clean_stop_publishes_offline_and_exits_0(instance: &str, sig: Signal) {
    let mut bed = Bed::start(instance);
    let cid = bed.client_id();
    let mark = bed.rec.mark();
    bed.agent.signal(sig);
    let status = bed.agent.wait_exit(TIMEOUT).unwrap_or_else(|| {
        panic!(
            "agent still running {TIMEOUT:?} after {sig}\n{}",
            bed.agent.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit after {sig}: {status}\n{}",
        bed.agent.log()
    );

    let offline = bed
        .rec
        .expect_since(mark, "offline presence", TIMEOUT, |m| {
            bed.is_presence(m, "offline")
        });
    assert_eq!(
        check_presence(&offline.json_or_panic(), instance),
        "offline"
    );
    assert_eq!(
        offline.field("reason").as_deref(),
        Some("shutdown"),
        "{}",
        offline.summary()
    );

    // It said goodbye with DISCONNECT, so the broker did not fire the Will on top.
    let said_bye = format!("Client {cid} disconnected.");
    assert!(
        wait_until(TIMEOUT, || bed.broker.log().contains(&said_bye)),
        "no clean DISCONNECT in the broker log\n{}",
        bed.broker.log()
    );
    std::thread::sleep(csg_e2e::QUIET);
    let wills: Vec<_> = bed
        .rec
        .matching_since(mark, |m| {
            bed.is_presence(m, "offline") && m.field("reason").as_deref() != Some("shutdown")
        })
        .into_iter()
        .map(|m| m.summary())
        .collect();
    assert!(
        wills.is_empty(),
        "the Will fired after a clean stop: {wills:?}"
    );

    let stored = retained_on(bed.broker.port(), &bed.config().presence_topic());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].retain);
    assert_eq!(stored[0].field("state").as_deref(), Some("offline"));
    assert_eq!(stored[0].field("reason").as_deref(), Some("shutdown"));
}

#[test]
fn sigterm_publishes_offline_itself_and_exits_0() {
    clean_stop_publishes_offline_and_exits_0("gw-term", Signal::SIGTERM);
}

#[test]
fn sigint_publishes_offline_itself_and_exits_0() {
    clean_stop_publishes_offline_and_exits_0("gw-int", Signal::SIGINT);
}

#[test]
fn sigterm_with_no_broker_still_exits_0_promptly() {
    // Nothing listens on this port: the offline presence cannot be delivered, and the stop
    // must not wait for it forever.
    let port = csg_e2e::broker::free_port();
    let cfg = csg_e2e::AgentConfig::new("gw-term-alone", &format!("mqtt://127.0.0.1:{port}"));
    let mut agent = csg_e2e::Agent::spawn(&cfg);
    // Let it get into its retry loop first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    agent.assert_running("while retrying an absent broker");
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(TIMEOUT).unwrap_or_else(|| {
        panic!(
            "agent still running {TIMEOUT:?} after SIGTERM\n{}",
            agent.log()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}\n{}", agent.log());
}

#[test]
fn sigterm_with_a_frozen_broker_exits_0_within_a_bound() {
    // The broker accepts nothing while stopped, so the PUBACK of the offline presence never
    // comes: the wait for it is bounded.
    let mut bed = Bed::start("gw-term-frozen");
    let broker_pid = nix::unistd::Pid::from_raw(bed.broker_pid() as i32);
    nix::sys::signal::kill(broker_pid, Signal::SIGSTOP).unwrap();
    bed.agent.signal(Signal::SIGTERM);
    let status = bed.agent.wait_exit(TIMEOUT);
    nix::sys::signal::kill(broker_pid, Signal::SIGCONT).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "agent still running {TIMEOUT:?} after SIGTERM with a frozen broker\n{}",
            bed.agent.log()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}\n{}", bed.agent.log());
}
