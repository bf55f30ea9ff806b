use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csg_protocol::status::FamilySummary;
use csg_protocol::{Heartbeat, InstanceId, Presence, PresenceState, SystemStats, TopicParents};
use proptest::prelude::*;

use super::driver::{self, Batch, FleetSink, MemorySink, SinkError};
use super::ingest::{parse_status, BadStatus, DropLog, StatusBody, StatusMessage, StatusSource};
use super::mqtt::{filters, ShareGroup};
use super::state::{
    Applied, Beat, Fleet, FleetConfig, Instance, Liveness, Reason, CONNECT_SLACK_MS,
};

const T0: u64 = 1_764_133_100_000;

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

/// Heartbeat `seq` of a process started at `start_ms`, sent `interval_s` apart, with `jitter_ms`
/// of lateness (the agent's sampling takes time).
fn hb(inst: &str, start_ms: u64, seq: u64, interval_s: u64, jitter_ms: u64) -> Arc<Heartbeat> {
    let ts = start_ms + (seq - 1) * interval_s * 1000 + jitter_ms;
    Arc::new(Heartbeat {
        v: 1,
        kind: "heartbeat".into(),
        instance_id: inst.into(),
        group_id: "GID_csg".into(),
        seq,
        ts_ms: ts,
        agent_version: "0.1.0".into(),
        uptime_s: (ts - start_ms) / 1000,
        interval_s,
        system: SystemStats {
            cpu_pct: 1.0,
            load1: 0.1,
            mem_total: 1 << 30,
            mem_used: 1 << 20,
        },
        disks: vec![],
        services: BTreeMap::new(),
        storage: BTreeMap::new(),
        counters: Default::default(),
        dropped: BTreeMap::new(),
    })
}

/// The heartbeat as the fleet takes it from the ingest.
fn beat(h: Arc<Heartbeat>) -> Beat {
    Beat::of(&h).unwrap()
}

/// A gateway's newest heartbeat as another replica's store row hands it back: its text read
/// again, as the sink does.
fn stored(i: &Instance) -> Beat {
    Beat::stored(i.heartbeat.clone().unwrap().text).unwrap()
}

fn presence(inst: &str, state: PresenceState, reason: &str, ts: u64) -> Presence {
    Presence::new(inst, state, "0.1.0", reason, ts)
}

fn fleet() -> Fleet {
    Fleet::new(
        "hangzhou",
        FleetConfig {
            default_interval_s: 10,
            stale_after_missed: 3,
        },
    )
}

#[test]
fn a_first_heartbeat_makes_a_gateway_online_and_dirty() {
    let mut f = fleet();
    let g = id("gw-1");
    assert_eq!(
        f.on_heartbeat(&g, beat(hb("gw-1", T0, 1, 1, 5)), 1000),
        Applied::Changed
    );
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Online);
    assert_eq!(i.presence.reason, Reason::Heartbeat);
    assert_eq!(i.presence.since_ms, 1000);
    assert_eq!(i.last_seen_ms, 1000);
    assert_eq!(i.group_id.as_deref(), Some("GID_csg"));
    assert_eq!(&*i.region, "hangzhou");
    let events = f.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].from, None);
    assert_eq!(events[0].to, Liveness::Online);
    let dirty = f.take_dirty();
    assert_eq!(dirty.len(), 1);
    assert_eq!(dirty[0].instance_id, g);
    assert!(f.take_dirty().is_empty(), "taken once");
    assert!(f.take_events().is_empty());
}

#[test]
fn an_older_heartbeat_never_overwrites_a_newer_one() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_heartbeat(&g, beat(hb("gw-1", T0, 5, 1, 0)), 1000);
    f.take_dirty();
    assert_eq!(
        f.on_heartbeat(&g, beat(hb("gw-1", T0, 4, 1, 0)), 1001),
        Applied::Stale
    );
    assert_eq!(f.get(&g).unwrap().heartbeat.as_ref().unwrap().seq, 5);
    assert_eq!(f.get(&g).unwrap().last_seen_ms, 1000);
    assert!(
        f.take_dirty().is_empty(),
        "an ignored heartbeat changes nothing"
    );
    // The same heartbeat twice (a redelivery) is not newer either.
    assert_eq!(
        f.on_heartbeat(&g, beat(hb("gw-1", T0, 5, 1, 0)), 1002),
        Applied::Stale
    );
}

#[test]
fn within_a_process_seq_decides_even_when_the_clock_steps_back() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_heartbeat(&g, beat(hb("gw-1", T0, 5, 1, 900)), 1000);
    // seq 6, but its wall clock is 800 ms behind seq 5's (a clock step within the tolerance).
    let mut later = (*hb("gw-1", T0, 6, 1, 0)).clone();
    later.ts_ms -= 1100;
    assert_eq!(
        f.on_heartbeat(&g, beat(Arc::new(later)), 1001),
        Applied::Changed
    );
    assert_eq!(f.get(&g).unwrap().heartbeat.as_ref().unwrap().seq, 6);
}

#[test]
fn a_restarted_agent_is_newer_despite_its_lower_seq() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_heartbeat(&g, beat(hb("gw-1", T0, 100, 1, 0)), 1000);
    let restarted = hb("gw-1", T0 + 200_000, 1, 1, 0);
    assert_eq!(f.on_heartbeat(&g, beat(restarted), 2000), Applied::Changed);
    assert_eq!(f.get(&g).unwrap().heartbeat.as_ref().unwrap().seq, 1);
    // And the old process's late heartbeat loses to the new one.
    assert_eq!(
        f.on_heartbeat(&g, beat(hb("gw-1", T0, 101, 1, 0)), 2001),
        Applied::Stale
    );
}

#[test]
fn no_heartbeat_for_three_intervals_is_stale_and_a_new_one_brings_it_back() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_heartbeat(&g, beat(hb("gw-1", T0, 1, 2, 0)), 10_000);
    f.take_events();
    f.take_dirty();
    assert_eq!(f.tick(16_000), 0, "exactly 3 intervals is not yet stale");
    assert!(f.take_dirty().is_empty());
    assert_eq!(f.tick(16_001), 1);
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Stale);
    assert_eq!(i.presence.reason, Reason::NoHeartbeat);
    assert_eq!(i.presence.since_ms, 16_001);
    let ev = f.take_events();
    assert_eq!(
        (ev[0].from, ev[0].to),
        (Some(Liveness::Online), Liveness::Stale)
    );
    assert_eq!(f.take_dirty().len(), 1);
    assert_eq!(f.tick(30_000), 0, "stale once");

    f.on_heartbeat(&g, beat(hb("gw-1", T0, 2, 2, 0)), 31_000);
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Online);
    assert_eq!(i.presence.since_ms, 31_000);
    let ev = f.take_events();
    assert_eq!(
        (ev[0].from, ev[0].to),
        (Some(Liveness::Stale), Liveness::Online)
    );
}

#[test]
fn without_interval_s_the_default_interval_and_the_configured_count_apply() {
    let mut f = Fleet::new(
        "r",
        FleetConfig {
            default_interval_s: 10,
            stale_after_missed: 5,
        },
    );
    let g = id("gw-1");
    let mut old = (*hb("gw-1", T0, 1, 1, 0)).clone();
    old.interval_s = 0;
    f.on_heartbeat(&g, beat(Arc::new(old)), 0);
    assert_eq!(f.tick(50_000), 0);
    assert_eq!(f.tick(50_001), 1);
}

#[test]
fn online_presence_without_heartbeats_goes_stale_on_the_default_interval() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Online, "connected", T0),
        5_000,
    );
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Online);
    assert_eq!(i.presence.reason, Reason::Connected);
    assert_eq!(i.presence.since_ms, T0);
    assert_eq!(f.tick(35_000), 0);
    assert_eq!(f.tick(35_001), 1);
}

#[test]
fn the_will_ends_the_online_period_of_its_connection() {
    let mut f = fleet();
    let g = id("gw-1");
    // The Will is stamped before CONNECT, the online after the SUBACK.
    let will_ts = T0;
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Online, "connected", T0 + 40),
        1,
    );
    f.on_heartbeat(&g, beat(hb("gw-1", T0 - 1000, 3, 1, 0)), 2);
    f.take_events();
    let will = presence("gw-1", PresenceState::Offline, "connection_lost", will_ts);
    assert_eq!(f.on_presence(&g, &will, 3), Applied::Changed);
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Offline);
    assert_eq!(i.presence.reason, Reason::ConnectionLost);
    // Alive at least until its last heartbeat.
    assert_eq!(i.presence.since_ms, T0 + 1000);
    let ev = f.take_events();
    assert_eq!(
        (ev[0].from, ev[0].to),
        (Some(Liveness::Online), Liveness::Offline)
    );
    // A second copy changes nothing.
    assert_eq!(f.on_presence(&g, &will, 4), Applied::Stale);
    // A heartbeat the dead connection sent before the last one seen does not revive it.
    assert_eq!(
        f.on_heartbeat(&g, beat(hb("gw-1", T0 - 1000, 2, 1, 0)), 5),
        Applied::Stale
    );
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Offline);
}

#[test]
fn a_will_from_an_earlier_connection_does_not_end_a_later_one() {
    let mut f = fleet();
    let g = id("gw-1");
    let later = T0 + CONNECT_SLACK_MS + 10_000;
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Online, "connected", later),
        1,
    );
    let old_will = presence("gw-1", PresenceState::Offline, "connection_lost", T0);
    assert_eq!(f.on_presence(&g, &old_will, 2), Applied::Stale);
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Online);
}

#[test]
fn a_will_turns_a_stale_gateway_offline() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Online, "connected", T0),
        0,
    );
    f.tick(100_000);
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Stale);
    f.take_events();
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Offline, "connection_lost", T0),
        100_001,
    );
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Offline);
    let ev = f.take_events();
    assert_eq!(
        (ev[0].from, ev[0].to),
        (Some(Liveness::Stale), Liveness::Offline)
    );
}

#[test]
fn presence_older_than_the_current_state_never_wins() {
    let mut f = fleet();
    let g = id("gw-1");
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Online, "connected", T0),
        1,
    );
    f.on_presence(
        &g,
        &presence("gw-1", PresenceState::Offline, "shutdown", T0 + 5000),
        2,
    );
    assert_eq!(f.get(&g).unwrap().presence.reason, Reason::Shutdown);
    // The online of the connection that just shut down, delivered late.
    let late = presence("gw-1", PresenceState::Online, "connected", T0);
    assert_eq!(f.on_presence(&g, &late, 3), Applied::Stale);
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Offline);
    // A shutdown older than the last heartbeat loses too.
    f.on_heartbeat(&g, beat(hb("gw-1", T0 + 10_000, 1, 1, 0)), 4);
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Online);
    let old = presence("gw-1", PresenceState::Offline, "shutdown", T0 + 5000);
    assert_eq!(f.on_presence(&g, &old, 5), Applied::Stale);
    assert_eq!(f.get(&g).unwrap().presence.state, Liveness::Online);
    // A newer online keeps the period (no event) but counts as seen.
    f.take_events();
    let again = presence("gw-1", PresenceState::Online, "connected", T0 + 20_000);
    assert_eq!(f.on_presence(&g, &again, 6), Applied::Changed);
    assert!(f.take_events().is_empty());
    assert_eq!(f.get(&g).unwrap().last_seen_ms, 6);
}

#[test]
fn a_retained_will_introduces_an_offline_gateway() {
    let mut f = fleet();
    let g = id("gw-9");
    f.on_presence(
        &g,
        &presence("gw-9", PresenceState::Offline, "connection_lost", T0),
        7,
    );
    let i = f.get(&g).unwrap();
    assert_eq!(i.presence.state, Liveness::Offline);
    assert_eq!(i.presence.since_ms, T0);
    assert_eq!(
        i.agent_version, None,
        "presence carries no group; version from heartbeats"
    );
    let ev = f.take_events();
    assert_eq!((ev[0].from, ev[0].to), (None, Liveness::Offline));
    assert_eq!(f.tick(u64::MAX / 2), 0, "offline never turns stale");
}

#[test]
fn storage_counts_and_drift_are_summed_over_families() {
    let mut f = fleet();
    let g = id("gw-1");
    let mut h = (*hb("gw-1", T0, 1, 1, 0)).clone();
    h.storage
        .insert("nfs".into(), FamilySummary { count: 3, drift: 1 });
    h.storage
        .insert("smb".into(), FamilySummary { count: 2, drift: 0 });
    f.on_heartbeat(&g, beat(Arc::new(h)), 0);
    let s = f.get(&g).unwrap().storage;
    assert_eq!((s.count, s.drift), (5, 1));
}

#[test]
fn dirty_holds_each_changed_gateway_once_and_can_be_marked_again() {
    let mut f = fleet();
    for seq in 1..=10 {
        f.on_heartbeat(&id("gw-a"), beat(hb("gw-a", T0, seq, 1, 0)), seq);
    }
    f.on_heartbeat(&id("gw-b"), beat(hb("gw-b", T0, 1, 1, 0)), 11);
    let mut d = f.take_dirty();
    d.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].heartbeat.as_ref().unwrap().seq, 10, "the latest state");
    f.mark_dirty([id("gw-a"), id("gw-unknown")]);
    let d = f.take_dirty();
    assert_eq!(d.len(), 1);
    assert_eq!(f.counts()["online"], 2);
}

#[test]
fn events_beyond_the_bound_drop_the_oldest_and_are_counted() {
    let mut f = fleet();
    let n = super::state::MAX_PENDING_EVENTS + 10;
    for k in 0..n {
        let name = format!("gw-{k}");
        f.on_heartbeat(&id(&name), beat(hb(&name, T0, 1, 1, 0)), 0);
    }
    assert_eq!(f.events_dropped(), 10);
    let ev = f.take_events();
    assert_eq!(ev.len(), super::state::MAX_PENDING_EVENTS);
    assert_eq!(ev[0].instance_id, id("gw-10"));
}

#[test]
fn replicas_that_merge_each_others_heartbeats_do_not_call_a_live_gateway_stale() {
    // Two replicas of one share group; one gateway's heartbeats reach them in runs (the broker
    // deals the whole fleet's messages round robin): four to one, four to the other.
    let (mut a, mut b) = (fleet(), fleet());
    let g = id("gw-1");
    for seq in 1..=20u64 {
        let h = hb("gw-1", T0, seq, 10, 0);
        let at = seq * 10_000;
        if (seq - 1) / 4 % 2 == 0 {
            a.on_heartbeat(&g, beat(h.clone()), at);
        } else {
            b.on_heartbeat(&g, beat(h.clone()), at);
        }
        // Each also reads the other's rows before it ticks (what the store hands back).
        let (row_a, row_b) = (a.get(&g).cloned(), b.get(&g).cloned());
        if let Some(row) = row_b {
            a.merge_seen(&g, stored(&row), row.last_seen_ms);
        }
        if let Some(row) = row_a {
            b.merge_seen(&g, stored(&row), row.last_seen_ms);
        }
        assert_eq!(a.tick(at + 5_000), 0);
        assert_eq!(b.tick(at + 5_000), 0);
    }
    assert_eq!(a.get(&g).unwrap().heartbeat.as_ref().unwrap().seq, 20);
    assert_eq!(a.get(&g).unwrap().last_seen_ms, 200_000);
    // An old row from the store moves nothing back.
    a.merge_seen(&g, beat(hb("gw-1", T0, 3, 10, 0)), 30_000);
    assert_eq!(a.get(&g).unwrap().last_seen_ms, 200_000);
    assert_eq!(a.get(&g).unwrap().heartbeat.as_ref().unwrap().seq, 20);
}

// --- parsing ---

fn parents() -> TopicParents {
    TopicParents::default()
}

#[test]
fn status_messages_are_parsed_by_topic_and_checked_against_the_body() {
    let body = serde_json::to_vec(&*hb("gw-1", T0, 1, 1, 0)).unwrap();
    let m = parse_status(&parents(), "csg-status/gw-1", &body, false).unwrap();
    assert_eq!(m.instance, id("gw-1"));
    let StatusBody::Heartbeat(b) = &m.body else {
        panic!("{m:?}")
    };
    // The text made at ingest is the whole heartbeat, and reads back as the same beat.
    let back: Heartbeat = serde_json::from_str(b.last.text.as_str()).unwrap();
    assert_eq!(back, *hb("gw-1", T0, 1, 1, 0));
    assert_eq!(Beat::stored(b.last.text.clone()).unwrap(), *b);
    assert_eq!(
        parse_status(&parents(), "csg-status/gw-2", &body, false),
        Err(BadStatus::InstanceMismatch)
    );
    assert_eq!(
        parse_status(&parents(), "csg-status/gw-1/presence", &body, false),
        Err(BadStatus::Payload),
        "a heartbeat on the presence topic"
    );
    assert_eq!(
        parse_status(&parents(), "csg-status/gw-1", b"{not json", false),
        Err(BadStatus::Payload)
    );
    assert_eq!(
        parse_status(&parents(), "other/gw-1", &body, false),
        Err(BadStatus::Topic)
    );
    let mut big = (*hb("gw-1", T0, 1, 1, 0)).clone();
    big.agent_version = "x".repeat(super::ingest::MAX_STATUS_BYTES);
    assert_eq!(
        parse_status(
            &parents(),
            "csg-status/gw-1",
            &serde_json::to_vec(&big).unwrap(),
            false
        ),
        Err(BadStatus::Oversized)
    );
    let p = serde_json::to_vec(&presence("gw-1", PresenceState::Online, "connected", T0)).unwrap();
    let m = parse_status(&parents(), "csg-status/gw-1/presence", &p, true).unwrap();
    assert!(m.retained);
    assert!(matches!(m.body, StatusBody::Presence(_)));
}

#[test]
fn drops_are_logged_at_most_once_per_period() {
    let mut log = DropLog::new(Duration::from_secs(60));
    assert!(log.dropped(BadStatus::Payload, "t"));
    for _ in 0..1000 {
        assert!(!log.dropped(BadStatus::Payload, "t"));
    }
}

#[test]
fn the_heartbeats_are_shared_and_presence_is_not() {
    let g = ShareGroup::new("csg-consoled").unwrap();
    assert_eq!(
        filters(&parents(), &g),
        [
            "$share/csg-consoled/csg-status/+".to_string(),
            "csg-status/+/presence".to_string()
        ]
    );
    for bad in ["", "a/b", "a+", "#", &"x".repeat(65)] {
        assert!(ShareGroup::new(bad).is_err(), "{bad:?} accepted");
    }
}

proptest! {
    #[test]
    fn any_bytes_on_any_status_topic_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        topic in "csg-status/[a-z0-9/+#-]{0,20}",
    ) {
        let _ = parse_status(&parents(), &topic, &payload, false);
    }
}

// --- order independence ---

/// Heartbeats of up to three successive agent processes (restarts at least 5 s apart, as a
/// restart takes), each `1..=n` heartbeats long with sampling jitter under a second.
fn heartbeat_runs() -> impl Strategy<Value = Vec<Arc<Heartbeat>>> {
    proptest::collection::vec((1u64..8, 1u64..30, 0u64..900, 5_000u64..600_000), 1..4).prop_map(
        |procs| {
            let mut out = Vec::new();
            let mut start = T0;
            for (n, interval, jitter, gap) in procs {
                for seq in 1..=n {
                    out.push(hb("gw-p", start, seq, interval, (seq * jitter) % 900));
                }
                start += (n - 1) * interval * 1000 + 1000 + gap;
            }
            out
        },
    )
}

fn apply_all(hbs: &[Arc<Heartbeat>]) -> Fleet {
    let mut f = fleet();
    for h in hbs {
        f.on_heartbeat(&id("gw-p"), beat(h.clone()), 42);
    }
    f
}

proptest! {
    #[test]
    fn any_order_of_the_same_heartbeats_ends_in_the_same_state(
        (hbs, shuffled) in heartbeat_runs().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let in_order = apply_all(&hbs);
        let any_order = apply_all(&shuffled);
        let a = in_order.get(&id("gw-p")).unwrap();
        let b = any_order.get(&id("gw-p")).unwrap();
        prop_assert_eq!(a, b);
        // And that state is the last heartbeat sent.
        prop_assert_eq!(a.heartbeat.as_ref().unwrap(), &beat(hbs.last().unwrap().clone()).last);
    }
}

// --- the driver ---

/// A source fed by a channel: what a queue consumer would look like.
struct ChannelSource(tokio::sync::mpsc::Receiver<StatusMessage>);

impl StatusSource for ChannelSource {
    async fn next(&mut self) -> Option<StatusMessage> {
        self.0.recv().await
    }
}

/// Fails its first `fail` writes, then keeps batches.
struct FlakySink {
    fail: usize,
    kept: Arc<Mutex<Vec<Batch>>>,
}

impl FleetSink for FlakySink {
    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(SinkError("store down".into()));
        }
        self.kept.lock().unwrap().push(batch.clone());
        Ok(())
    }
}

fn msg(h: Arc<Heartbeat>) -> StatusMessage {
    StatusMessage {
        instance: id(&h.instance_id),
        body: StatusBody::Heartbeat(beat(h)),
        retained: false,
    }
}

#[tokio::test]
async fn the_driver_batches_what_changed_and_ticks_on_its_clock() {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let shared = Arc::new(Mutex::new(fleet()));
    let sink = MemorySink::default();
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let clock_now = now.clone();
    let clock: driver::Clock =
        Arc::new(move || clock_now.load(std::sync::atomic::Ordering::SeqCst));
    let (stop_tx, stop) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(driver::run(
        ChannelSource(rx),
        shared.clone(),
        sink.clone(),
        driver::DriverConfig {
            flush_every: Duration::from_millis(20),
        },
        clock,
        stop,
    ));
    for seq in 1..=3 {
        tx.send(msg(hb("gw-a", T0, seq, 1, 0))).await.unwrap();
    }
    tx.send(msg(hb("gw-b", T0, 1, 1, 0))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let batches = sink.batches.lock().unwrap();
        let rows: usize = batches.iter().map(|b| b.instances.len()).sum();
        assert!((2..=4).contains(&rows), "{rows} rows");
        let events: usize = batches.iter().map(|b| b.events.len()).sum();
        assert_eq!(events, 2, "two gateways came online");
    }
    // 3 s later by the console's clock both are stale.
    now.store(1_000 + 3_001, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(driver::lock(&shared).counts()["stale"], 2);
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let batches = sink.batches.lock().unwrap();
    let stale: usize = batches
        .iter()
        .flat_map(|b| &b.events)
        .filter(|e| e.to == Liveness::Stale)
        .count();
    assert_eq!(stale, 2);
}

#[tokio::test]
async fn a_failed_write_is_retried_with_the_same_changes() {
    let shared = Arc::new(Mutex::new(fleet()));
    driver::lock(&shared).on_heartbeat(&id("gw-a"), beat(hb("gw-a", T0, 1, 1, 0)), 0);
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut sink = FlakySink {
        fail: 1,
        kept: kept.clone(),
    };
    driver::flush(&shared, &mut sink, 1).await;
    assert!(kept.lock().unwrap().is_empty());
    driver::flush(&shared, &mut sink, 2).await;
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].instances.len(), 1);
    assert_eq!(kept[0].events.len(), 1);
}
