//! The task that feeds the fleet: status in, and every `flush_every` a tick (stale) and a
//! batch of what changed out to a sink (the store, once it exists).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csg_protocol::InstanceId;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::warn;

use super::ingest::{StatusBody, StatusSource};
use super::state::{Beat, Fleet, Instance, PresenceEvent};

/// The console's clock in milliseconds since the Unix epoch; passed in so tests drive time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The fleet, shared between the driver and its readers (the API). Held for microseconds.
pub type SharedFleet = Arc<Mutex<Fleet>>;

/// Locks the fleet; a panic elsewhere while holding it leaves state that is still whole (every
/// update is a few field writes), so poisoning is ignored.
pub fn lock(fleet: &SharedFleet) -> MutexGuard<'_, Fleet> {
    fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One flush: the gateways changed since the last one, and the presence transitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub instances: Vec<Instance>,
    pub events: Vec<PresenceEvent>,
}

#[derive(Debug, Clone, Error)]
#[error("the fleet sink failed: {0}")]
pub struct SinkError(pub String);

/// What another replica saw of a gateway: its newest heartbeat and when it arrived there.
#[derive(Debug, Clone)]
pub struct Seen {
    pub instance_id: InstanceId,
    pub heartbeat: Beat,
    pub seen_ms: u64,
}

/// Where batches go. The store implements it; [`MemorySink`] stands in until then and in tests.
pub trait FleetSink: Send {
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// What the other replicas sharing this sink saw of these gateways (the heartbeats the
    /// shared subscription gave to them), asked before they are turned stale. None by default:
    /// a sink nobody else writes to has nothing to add.
    fn seen_elsewhere(
        &mut self,
        _ids: &[InstanceId],
    ) -> impl Future<Output = Result<Vec<Seen>, SinkError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Keeps every batch in memory: the sink of tests and of a console run without a store.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    pub batches: Arc<Mutex<Vec<Batch>>>,
}

impl FleetSink for MemorySink {
    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(batch.clone());
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How often to tick and write what changed.
    pub flush_every: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            flush_every: Duration::from_millis(500),
        }
    }
}

/// Takes what changed and hands it to the sink; on failure puts it back for the next flush.
pub async fn flush(fleet: &SharedFleet, sink: &mut impl FleetSink, now_ms: u64) {
    // With a shared subscription this replica got only its share of each gateway's heartbeats:
    // before calling a gateway stale, ask what the others saw. One query for the few that are
    // due, not a read of the whole fleet.
    let due = lock(fleet).due_stale(now_ms);
    if !due.is_empty() {
        match sink.seen_elsewhere(&due).await {
            Ok(seen) => {
                let mut f = lock(fleet);
                for s in seen {
                    f.merge_seen(&s.instance_id, s.heartbeat, s.seen_ms);
                }
            }
            Err(e) => {
                warn!(error = %e, due = due.len(), "could not ask what other replicas saw; judging staleness alone");
            }
        }
    }
    let batch = {
        let mut f = lock(fleet);
        f.tick(now_ms);
        Batch {
            instances: f.take_dirty(),
            events: f.take_events(),
        }
    };
    if batch.instances.is_empty() && batch.events.is_empty() {
        return;
    }
    if let Err(e) = sink.write(&batch).await {
        warn!(error = %e, instances = batch.instances.len(), "fleet batch not written; retried at the next flush");
        let mut f = lock(fleet);
        f.mark_dirty(batch.instances.into_iter().map(|i| i.instance_id));
        f.requeue_events(batch.events);
    }
}

/// Runs until `source` ends or `stop` fires; flushes once more before returning.
pub async fn run(
    mut source: impl StatusSource,
    fleet: SharedFleet,
    mut sink: impl FleetSink,
    cfg: DriverConfig,
    clock: Clock,
    mut stop: oneshot::Receiver<()>,
) {
    let mut every = tokio::time::interval(cfg.flush_every.max(Duration::from_millis(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = source.next() => {
                let Some(msg) = msg else { break };
                let now = clock();
                let mut f = lock(&fleet);
                match msg.body {
                    StatusBody::Heartbeat(hb) => f.on_heartbeat(&msg.instance, hb, now),
                    StatusBody::Presence(p) => f.on_presence(&msg.instance, &p, now),
                };
            }
            _ = every.tick() => flush(&fleet, &mut sink, clock()).await,
            _ = &mut stop => break,
        }
    }
    flush(&fleet, &mut sink, clock()).await;
}
