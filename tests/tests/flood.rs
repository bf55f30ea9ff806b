//! A flood: thousands of requests as fast as a client can publish them. The agent must answer
//! every one (a result, or BUSY to retry), keep its heartbeat cadence, and stay within a memory
//! bound (docs/security.md states it).

use std::collections::HashMap;
use std::time::Duration;

use csg_e2e::{rpc, Bed, TIMEOUT};
use serde_json::json;

/// The bound this test holds the agent to, as stated in docs/security.md.
const RSS_BOUND_KB: u64 = 64 * 1024;
/// The flood lasts this long, whatever the machine's speed, so heartbeat cadence is measured
/// over several intervals...
const FLOOD: Duration = Duration::from_secs(4);
/// ...and sends at most this many requests.
const MAX_REQUESTS: usize = 20_000;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn a_flood_is_answered_within_bounds_and_heartbeats_keep_their_cadence() {
    let bed = Bed::start_with("gw-flood", |c| {
        c.heartbeat_interval_s = 1;
        c.max_in_flight = 8;
        c.log = "warn".into();
    });
    let hb_topic = bed.config().heartbeat_topic();
    // Heartbeats are watched by a subscriber of their own, as a fleet monitor would: the bed's
    // recorder also receives every reply, and its own backlog would delay what it sees.
    let monitor = csg_e2e::Recorder::connect(bed.broker.port(), &[hb_topic.as_str()]);
    let mark = bed.rec.mark();
    let monitor_mark = monitor.mark();
    // sys.status does the most work of the sys methods (it samples CPU, memory and disks).
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < FLOOD && sent < MAX_REQUESTS {
        let method = if sent % 2 == 0 {
            "sys.status"
        } else {
            "sys.ping"
        };
        bed.send_raw(rpc::bytes(&rpc::request(
            &format!("flood-{sent}"),
            method,
            json!({}),
            Some(&bed.reply_to),
        )));
        sent += 1;
    }
    let flood_end = std::time::Instant::now();
    let replies = bed.rec.wait_for_count(mark, sent, TIMEOUT * 6, |m| {
        m.topic == bed.reply_to && m.field("id").is_some_and(|id| id.starts_with("flood-"))
    });
    let mut outcome: HashMap<String, usize> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for r in &replies {
        let v = r.json_or_panic();
        ids.insert(v["id"].as_str().unwrap().to_string());
        let what = if v["ok"] == true {
            "ok".to_string()
        } else {
            assert_eq!(v["error"]["code"], "BUSY", "only BUSY may refuse: {v}");
            assert_eq!(v["error"]["retryable"], true, "{v}");
            "BUSY".to_string()
        };
        *outcome.entry(what).or_default() += 1;
    }
    assert_eq!(
        ids.len(),
        sent,
        "every request answered exactly once ({outcome:?}); counters: {}",
        bed.counters()
    );
    assert!(outcome.get("ok").copied().unwrap_or(0) > 0, "{outcome:?}");

    // Heartbeats kept coming about once a second while the flood was sent and served.
    let served = std::time::Instant::now().max(flood_end);
    let beats: Vec<_> = monitor
        .matching_since(monitor_mark, |m| m.topic == hb_topic)
        .into_iter()
        .filter(|m| m.at <= served)
        .collect();
    let window = served.duration_since(started);
    assert!(
        beats.len() as u64 + 1 >= window.as_secs(),
        "{} heartbeats in {window:?} of flood ({outcome:?})",
        beats.len()
    );
    for pair in beats.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap < Duration::from_millis(2500),
            "heartbeat gap {gap:?} during the flood ({outcome:?})"
        );
    }
    let rss = rss_kb(bed.agent.pid());
    assert!(
        rss < RSS_BOUND_KB,
        "agent RSS {rss} kB after {sent} requests; the stated bound is {RSS_BOUND_KB} kB"
    );
    eprintln!(
        "flood: {sent} requests in {:?}: {outcome:?}, agent RSS {rss} kB",
        flood_end - started
    );
}

/// 1000 messages the agent cannot read and cannot answer (no reply topic): counted by reason in
/// `sys.status`, logged once per reason rather than once each.
#[test]
fn unreadable_messages_are_counted_and_logged_once_a_minute() {
    let bed = Bed::start("gw-unreadable");
    let base = bed.counters();
    const N: u64 = 1000;
    for i in 0..N {
        if i % 2 == 0 {
            bed.send_raw(format!("garbage {i}, not a request"));
        } else {
            bed.send_raw(vec![b'{', 0xc3, 0x28, b'}']);
        }
    }
    bed.assert_growth(
        &base,
        &[("dropped", N), ("bad_request", 0), ("executed", 0)],
    );
    let status = bed.call_ok("sys.status", json!({}));
    assert_eq!(
        status["dropped"],
        json!({"not_utf8": N / 2, "unreadable": N / 2}),
        "{status}"
    );
    let log = bed.agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("dropped")).collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per reason, not one per message:\n{}",
        lines.join("\n")
    );
    for reason in ["reason=not_utf8", "reason=unreadable"] {
        assert!(
            lines.iter().any(|l| l.contains(reason)),
            "{reason}: {lines:?}"
        );
    }
}
