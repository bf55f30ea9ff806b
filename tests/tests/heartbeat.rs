//! Heartbeats: one at once after connecting, then one per interval.

use std::time::{Duration, Instant};

use csg_e2e::rpc::check_heartbeat_body;
use csg_e2e::{Agent, AgentConfig, Broker, Mark, Recorder, TIMEOUT};

#[test]
fn a_heartbeat_arrives_at_once_after_connecting() {
    let broker = Broker::start();
    let rec = Recorder::connect(broker.port(), &["#"]);
    let cfg = AgentConfig::new("gw-hb", &broker.url());
    // 30 s interval: a heartbeat within the 10 s timeout can only be the immediate one.
    assert!(Duration::from_secs(cfg.heartbeat_interval_s) > TIMEOUT);
    let started = Instant::now();
    let mut agent = Agent::spawn(&cfg);
    let hb_topic = cfg.heartbeat_topic();
    let Some(hb) = rec.wait_for(TIMEOUT, |m| m.topic == hb_topic) else {
        panic!(
            "no heartbeat on {hb_topic} within {TIMEOUT:?} (agent exit: {:?})\n{}",
            agent.try_status(),
            rec.dump()
        );
    };
    let body = hb.json_or_panic();
    check_heartbeat_body(&body, "gw-hb", "GID_csg");
    assert_eq!(
        body["seq"], 1,
        "the first heartbeat of a process has seq 1: {body}"
    );
    assert_eq!(
        body["interval_s"], cfg.heartbeat_interval_s,
        "a heartbeat carries its interval: {body}"
    );
    assert_eq!(hb.qos, 0, "heartbeats are QoS 0: {}", hb.summary());
    assert!(!hb.retain, "heartbeats are not retained: {}", hb.summary());
    assert!(hb.at.duration_since(started) < TIMEOUT);

    // And it is the same body sys.status returns on demand.
    let status = {
        let reply_to = "csg-up/hb-console";
        let mark = rec.mark();
        rec.publish(
            &cfg.command_topic(),
            csg_e2e::rpc::bytes(&csg_e2e::rpc::request(
                "hb-status",
                "sys.status",
                serde_json::json!({}),
                Some(reply_to),
            )),
        );
        let m = rec.expect_since(mark, "sys.status reply", TIMEOUT, |m| m.topic == reply_to);
        csg_e2e::rpc::expect_ok(&m.json_or_panic(), "hb-status")
    };
    check_heartbeat_body(&status, "gw-hb", "GID_csg");
    assert_eq!(status["interval_s"], cfg.heartbeat_interval_s, "{status}");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&status),
        keys(&body),
        "sys.status is the heartbeat body"
    );
}

#[test]
fn heartbeats_follow_the_interval_with_consecutive_seq() {
    let broker = Broker::start();
    let rec = Recorder::connect(broker.port(), &["#"]);
    let mut cfg = AgentConfig::new("gw-cadence", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    let hb_topic = cfg.heartbeat_topic();
    const N: usize = 5;
    let hbs = rec.wait_for_count(Mark::default(), N, TIMEOUT, |m| m.topic == hb_topic);
    if hbs.len() < N {
        panic!(
            "{} of {N} heartbeats within {TIMEOUT:?} at a 1 s interval (agent exit: {:?})\n{}",
            hbs.len(),
            agent.try_status(),
            rec.dump()
        );
    }
    for m in &hbs {
        let body = m.json_or_panic();
        assert_eq!(body["interval_s"], 1, "{body}");
    }
    let seqs: Vec<u64> = hbs
        .iter()
        .map(|m| m.json_or_panic()["seq"].as_u64().expect("seq"))
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "seq must increase by one: {seqs:?}");
    }
    let gaps: Vec<f64> = hbs
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect();
    // The first heartbeat is sent at connect, the ticker may start earlier, so the first
    // gap can be short; later ones must be about one interval. Loose bounds: CI is loaded.
    assert!(gaps[0] <= 2.5, "first gap {:.3}s: {gaps:?}", gaps[0]);
    for g in &gaps[1..] {
        assert!(
            (0.5..=2.5).contains(g),
            "heartbeat spacing {g:.3}s is not about 1 s: {gaps:?}"
        );
    }
    // Load can delay a tick but not make it early: the mean tells a 1 s cadence from a
    // 2 s one even on a busy machine.
    let mean = gaps[1..].iter().sum::<f64>() / (gaps.len() - 1) as f64;
    assert!(
        (0.75..=1.5).contains(&mean),
        "mean spacing {mean:.3}s for a 1 s interval: {gaps:?}"
    );
}
