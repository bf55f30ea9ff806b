//! Heartbeats and `sys.status`: what the gateway looks like right now.
//!
//! One `StatusSource` samples the system (CPU, load, memory, disks) and the request counters.
//! The heartbeat task publishes a sample at once after every (re)connect and then every
//! interval while the link stays up; nothing is queued while offline, so a reconnect never
//! floods the broker with stale heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::status::{Heartbeat, SystemStats};
use csg_protocol::{now_ms, DiskInfo, PROTOCOL_VERSION};
use sysinfo::{Disks, System};
use tokio::sync::watch;
use tracing::debug;

use crate::families::SharedStorage;
use crate::session::LinkState;
use crate::stats::Stats;
use crate::uplink::{OutMessage, Qos, Uplink};
use crate::AGENT_VERSION;

/// Host name, OS and kernel, for `sys.info`: they do not change while the process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
}

impl HostFacts {
    /// This machine's (empty where the system does not say).
    pub fn read() -> Self {
        Self {
            hostname: System::host_name().unwrap_or_default(),
            os: System::long_os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
        }
    }
}

/// The host a run describes: its facts and its sampler. The caller builds it, so many runs in
/// one process (the fleet simulator) can share one instead of each reading the system.
pub struct Host {
    pub facts: HostFacts,
    pub sampler: Arc<HostSampler>,
}

impl Host {
    /// This machine, sampled afresh whenever a sample is older than `max_age`.
    pub fn read(max_age: Duration) -> Self {
        Self {
            facts: HostFacts::read(),
            sampler: Arc::new(HostSampler::new(max_age)),
        }
    }
}

/// Samples the host: CPU, load, memory, disks.
///
/// An agent has its own and samples afresh for every heartbeat (`max_age` zero). The fleet
/// simulator's agents share one that answers from a sample up to `max_age` old: thousands of
/// agents on one machine describe the same host, and reading /proc and every mount for each
/// of them would measure the sampler rather than the agents.
pub struct HostSampler {
    max_age: Duration,
    inner: Mutex<HostInner>,
}

struct HostInner {
    system: System,
    last: Option<(Instant, SystemStats, Vec<DiskInfo>)>,
}

impl HostSampler {
    pub fn new(max_age: Duration) -> Self {
        let mut system = System::new();
        // CPU use is a difference between two samples: take the first one now.
        system.refresh_cpu_usage();
        Self {
            max_age,
            inner: Mutex::new(HostInner { system, last: None }),
        }
    }

    fn sample(&self) -> (SystemStats, Vec<DiskInfo>) {
        let mut g = self.inner.lock().expect("sysinfo lock");
        if let Some((at, sys, disks)) = &g.last {
            if at.elapsed() < self.max_age {
                return (sys.clone(), disks.clone());
            }
        }
        let s = &mut g.system;
        s.refresh_cpu_usage();
        s.refresh_memory();
        let system = SystemStats {
            cpu_pct: s.global_cpu_usage(),
            load1: System::load_average().one,
            mem_total: s.total_memory(),
            mem_used: s.used_memory(),
        };
        let disks: Vec<DiskInfo> = Disks::new_with_refreshed_list()
            .list()
            .iter()
            .map(|d| DiskInfo {
                mount: d.mount_point().to_string_lossy().into_owned(),
                fs: d.file_system().to_string_lossy().into_owned(),
                total: d.total_space(),
                avail: d.available_space(),
            })
            .collect();
        if !self.max_age.is_zero() {
            g.last = Some((Instant::now(), system.clone(), disks.clone()));
        }
        (system, disks)
    }
}

pub struct StatusSource {
    instance_id: String,
    group_id: String,
    started: Instant,
    seq: AtomicU64,
    /// The heartbeat interval now in force (seconds), set by the heartbeat task.
    interval_s: AtomicU64,
    host: Arc<HostSampler>,
    stats: Arc<Stats>,
    storage: SharedStorage,
}

impl StatusSource {
    /// A source with its own host sampler.
    pub fn new(
        instance_id: &str,
        group_id: &str,
        stats: Arc<Stats>,
        storage: SharedStorage,
    ) -> Self {
        Self::with_host(
            instance_id,
            group_id,
            stats,
            storage,
            Arc::new(HostSampler::new(Duration::ZERO)),
        )
    }

    /// A source that reads the host through `host` (shared by the simulator's agents).
    pub fn with_host(
        instance_id: &str,
        group_id: &str,
        stats: Arc<Stats>,
        storage: SharedStorage,
        host: Arc<HostSampler>,
    ) -> Self {
        Self {
            instance_id: instance_id.into(),
            group_id: group_id.into(),
            started: Instant::now(),
            seq: AtomicU64::new(0),
            interval_s: AtomicU64::new(0),
            host,
            stats,
            storage,
        }
    }

    async fn sample(&self, seq: u64) -> Heartbeat {
        // Backend probes first: they may run programs, and the system sample should be fresh.
        let (services, storage) = {
            let s = self.storage.read().await;
            (s.services().await, s.summaries().await)
        };
        let (system, disks) = self.host.sample();
        Heartbeat {
            v: PROTOCOL_VERSION,
            kind: "heartbeat".into(),
            instance_id: self.instance_id.clone(),
            group_id: self.group_id.clone(),
            seq,
            ts_ms: now_ms(),
            agent_version: AGENT_VERSION.into(),
            uptime_s: self.started.elapsed().as_secs(),
            interval_s: self.interval_s.load(Ordering::Relaxed),
            system,
            disks,
            services,
            storage,
            counters: self.stats.snapshot(),
            dropped: self.stats.dropped_by_reason(),
        }
    }

    /// The next heartbeat: `seq` goes up by one.
    pub async fn next_heartbeat(&self) -> Heartbeat {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.sample(seq).await
    }

    /// The interval heartbeats carry from now on (a reload may change it).
    pub fn set_interval(&self, every: Duration) {
        self.interval_s.store(every.as_secs(), Ordering::Relaxed);
    }

    /// The body of `sys.status`: a fresh sample carrying the last heartbeat's `seq`.
    pub async fn snapshot(&self) -> Heartbeat {
        self.sample(self.seq.load(Ordering::Relaxed)).await
    }
}

/// Publishes heartbeats while the link is up. Ends when the link state channel closes.
pub async fn heartbeat_loop(
    source: Arc<StatusSource>,
    uplink: Arc<dyn Uplink>,
    topic: String,
    mut interval: watch::Receiver<Duration>,
    mut link: watch::Receiver<LinkState>,
) {
    source.set_interval(*interval.borrow());
    loop {
        // Wait for the link to come up.
        let epoch = loop {
            if let LinkState::Ready(epoch) = *link.borrow_and_update() {
                break epoch;
            }
            if link.changed().await.is_err() {
                return;
            }
        };
        let mut tick = tokio::time::interval(*interval.borrow_and_update());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // The first tick fires at once: a heartbeat right after each connect.
                _ = tick.tick() => {
                    let hb = source.next_heartbeat().await;
                    let payload = Bytes::from(serde_json::to_vec(&hb).expect("heartbeat serializes"));
                    let msg = OutMessage { topic: topic.clone(), payload, qos: Qos::AtMostOnce, retain: false, props: Default::default() };
                    if let Err(e) = uplink.publish_urgent(msg) {
                        debug!(error = %e, seq = hb.seq, "heartbeat not queued");
                    }
                }
                changed = link.changed() => {
                    if changed.is_err() { return; }
                    if *link.borrow() != LinkState::Ready(epoch) { break; }
                }
                // A reloaded interval applies from the next heartbeat on, without a reconnect.
                changed = interval.changed() => {
                    if changed.is_err() { return; }
                    let every = *interval.borrow_and_update();
                    source.set_interval(every);
                    tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
        }
    }
}
