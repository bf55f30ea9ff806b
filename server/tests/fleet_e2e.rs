//! The fleet against a real Mosquitto and real agents: online within a heartbeat, the
//! heartbeat's figures, stale when heartbeats stop, offline by the Will, and two replicas of
//! one share group splitting the heartbeats while both see every presence.
//!
//! Build the agent first: `cargo build -p csg-agent --bins`.

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csg_console::{Console, ConsoleOptions};
use csg_consoled::fleet::driver::{self, system_clock, DriverConfig, SharedFleet};
use csg_consoled::fleet::{
    Fleet, FleetConfig, IngestStats, Instance, Liveness, MemorySink, MqttStatusSource, Reason,
    ShareGroup,
};
use csg_e2e::{now_ms, Agent, AgentConfig, Broker, TIMEOUT, WORKSPACE_VERSION};
use csg_protocol::{BrokerUrl, GroupId, InstanceId, TopicParents};
use csg_transport::Protocol;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The agents' keep-alive in these tests (the harness's default).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

struct Replica {
    fleet: SharedFleet,
    stats: Arc<IngestStats>,
    console: Console,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Replica {
    async fn start(broker: &Broker, name: &str, group: &str) -> Replica {
        let mut opts = ConsoleOptions::new(
            BrokerUrl::parse(&broker.url()).unwrap(),
            GroupId::new("GID_console").unwrap(),
            InstanceId::new(csg_e2e::unique(&format!("consoled-{name}"))).unwrap(),
        );
        opts.protocol = if csg_e2e::mqtt5() {
            Protocol::V5
        } else {
            Protocol::V311
        };
        opts.keep_alive = KEEP_ALIVE;
        opts.connect_timeout = TIMEOUT;
        let (source, tap) = MqttStatusSource::new(
            TopicParents::default(),
            &ShareGroup::new(group).unwrap(),
            1024,
        )
        .unwrap();
        opts.subscriptions = tap.subscriptions;
        opts.tap = Some(tap.tap);
        // The service's way: one console session carries the ingest through its tap.
        let console = Console::connect(opts)
            .await
            .unwrap_or_else(|e| panic!("replica {name} not subscribed: {e}"));
        let stats = source.stats();
        let fleet: SharedFleet = Arc::new(Mutex::new(Fleet::new("test", FleetConfig::default())));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(driver::run(
            source,
            fleet.clone(),
            MemorySink::default(),
            DriverConfig {
                flush_every: Duration::from_millis(50),
            },
            system_clock(),
            stop_rx,
        ));
        Replica {
            fleet,
            stats,
            console,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn get(&self, id: &str) -> Option<Instance> {
        driver::lock(&self.fleet)
            .get(&InstanceId::new(id).unwrap())
            .cloned()
    }

    fn state(&self, id: &str) -> Option<Liveness> {
        self.get(id).map(|i| i.presence.state)
    }

    fn heartbeats(&self) -> u64 {
        self.stats.heartbeats.load(Ordering::Relaxed)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        self.console.disconnect().await;
    }
}

/// Polls `cond` every 10 ms until it holds; the time it took, or `None` after `limit`.
async fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn agent_config(broker: &Broker, id: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.keep_alive_s = KEEP_ALIVE.as_secs();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_online_within_a_heartbeat_stale_when_silent_and_offline_when_killed() {
    let broker = Broker::start();
    let r = Replica::start(&broker, "a", "consoled").await;
    let mut agent = Agent::spawn(&agent_config(&broker, "gw-fleet-1"));

    // Online: measured from the agent's own evidence (its online presence or first
    // heartbeat, stamped on this machine's clock) to the fleet showing it.
    within(TIMEOUT, || r.state("gw-fleet-1") == Some(Liveness::Online))
        .await
        .expect("the agent never came online in the fleet");
    let seen_at = now_ms();
    let i = r.get("gw-fleet-1").unwrap();
    let evidence = match i.presence.reason {
        Reason::Connected => i.presence.since_ms,
        _ => i.heartbeat.as_ref().map_or(0, |h| h.ts_ms),
    };
    let lag = seen_at.saturating_sub(evidence);
    eprintln!(
        "online seen {lag} ms after the agent said so ({:?})",
        i.presence.reason
    );
    assert!(
        lag <= 1000,
        "online seen {lag} ms after the agent's evidence, more than one interval"
    );

    // The heartbeat's figures.
    within(TIMEOUT, || {
        r.get("gw-fleet-1")
            .and_then(|i| i.heartbeat)
            .is_some_and(|h| h.seq >= 2)
    })
    .await
    .expect("no second heartbeat");
    let i = r.get("gw-fleet-1").unwrap();
    let last = i.heartbeat.as_ref().unwrap();
    assert_eq!(last.interval_s, 1);
    // The fleet keeps the heartbeat's text, made once at ingest: the whole message.
    let hb: csg_protocol::Heartbeat = serde_json::from_str(last.text.as_str()).unwrap();
    assert_eq!(hb.instance_id, "gw-fleet-1");
    assert_eq!((hb.seq, hb.ts_ms), (last.seq, last.ts_ms));
    assert!(hb.system.mem_total > 0, "{hb:?}");
    assert_eq!(i.agent_version.as_deref(), Some(WORKSPACE_VERSION));
    assert_eq!(i.group_id.as_deref(), Some("GID_csg"));
    assert_eq!(&*i.region, "test");

    // Bad status messages are counted and dropped; the gateway they name is untouched.
    let port = broker.port();
    tokio::task::spawn_blocking(move || {
        // Its own runtime: created and dropped off the test's.
        let rec = csg_e2e::Recorder::connect(port, &[]);
        rec.publish_acked("csg-status/gw-fleet-1", "{not json");
        rec.publish_acked(
            "csg-status/gw-other/presence",
            r#"{"v":1,"type":"presence","instance_id":"gw-fleet-1","state":"offline","ts_ms":1,"agent_version":"x"}"#,
        );
    })
    .await
    .unwrap();
    within(TIMEOUT, || r.stats.bad_total() >= 2)
        .await
        .expect("bad status messages were not counted");
    assert_eq!(r.stats.bad_payload.load(Ordering::Relaxed), 1);
    assert_eq!(r.stats.instance_mismatch.load(Ordering::Relaxed), 1);
    assert_eq!(r.state("gw-fleet-1"), Some(Liveness::Online));
    assert_eq!(r.state("gw-other"), None);

    // Frozen: the connection stays open (no Will yet) but heartbeats stop: stale after 3 s.
    agent.signal(Signal::SIGSTOP);
    let stale = within(Duration::from_secs(8), || {
        r.state("gw-fleet-1") == Some(Liveness::Stale)
    })
    .await;
    agent.signal(Signal::SIGCONT);
    let stale = stale.expect("a silent agent never turned stale");
    eprintln!("stale after {stale:?} of silence");
    assert!(
        stale >= Duration::from_secs(2),
        "stale too early: {stale:?}"
    );
    within(TIMEOUT, || r.state("gw-fleet-1") == Some(Liveness::Online))
        .await
        .expect("a resumed agent's heartbeat did not bring it back online");

    // Killed: the broker's Will says offline.
    agent.kill9();
    let offline = within(KEEP_ALIVE * 2 + Duration::from_secs(2), || {
        r.state("gw-fleet-1") == Some(Liveness::Offline)
    })
    .await
    .expect("no offline within the broker's keep-alive window");
    eprintln!("offline {offline:?} after kill -9");
    assert_eq!(
        r.get("gw-fleet-1").unwrap().presence.reason,
        Reason::ConnectionLost
    );
    assert_eq!(r.stats.bad_total(), 2);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_heartbeats_and_both_see_presence() {
    let broker = Broker::start();
    let a = Replica::start(&broker, "a", "consoled").await;
    let b = Replica::start(&broker, "b", "consoled").await;
    let ids = ["gw-split-1", "gw-split-2"];
    let mut agents: Vec<Agent> = ids
        .iter()
        .map(|id| Agent::spawn(&agent_config(&broker, id)))
        .collect();
    for id in ids {
        within(TIMEOUT, || {
            a.state(id) == Some(Liveness::Online) && b.state(id) == Some(Liveness::Online)
        })
        .await
        .unwrap_or_else(|| panic!("{id} not online in both replicas"));
    }
    // A few heartbeats each.
    within(TIMEOUT, || a.heartbeats() + b.heartbeats() >= 10)
        .await
        .expect("heartbeats do not arrive");
    for agent in &mut agents {
        agent.kill9();
    }
    for id in ids {
        within(KEEP_ALIVE * 2 + Duration::from_secs(2), || {
            a.state(id) == Some(Liveness::Offline) && b.state(id) == Some(Liveness::Offline)
        })
        .await
        .unwrap_or_else(|| panic!("{id} not offline in both replicas"));
    }
    // Every heartbeat sent reached exactly one replica: the agents number them from 1.
    let sent: u64 = ids
        .iter()
        .map(|id| {
            [&a, &b]
                .iter()
                .filter_map(|r| r.get(id).and_then(|i| i.heartbeat).map(|h| h.seq))
                .max()
                .unwrap_or(0)
        })
        .sum();
    let (got_a, got_b) = (a.heartbeats(), b.heartbeats());
    eprintln!("heartbeats sent {sent}: replica a got {got_a}, b got {got_b}");
    assert!(
        got_a > 0 && got_b > 0,
        "one replica got none: {got_a} / {got_b}"
    );
    assert_eq!(got_a + got_b, sent, "each heartbeat to exactly one replica");
    // Presence is not shared: both replicas saw each gateway's online and offline.
    assert!(a.stats.presence.load(Ordering::Relaxed) >= 4);
    assert!(b.stats.presence.load(Ordering::Relaxed) >= 4);
    a.stop().await;
    b.stop().await;
}
