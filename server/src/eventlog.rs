//! The durable event log: what makes event ids survive restarts, agree across replicas, and
//! lets a client that reconnects with `Last-Event-ID` get what it missed.
//!
//! Each replica runs three tasks:
//! - the **writer** takes every event published on this replica's bus (a queue of its own, as
//!   the webhooks had) and appends them to the store's log in batches, with their webhook
//!   deliveries in the same transaction (so an event is delivered once per webhook, whichever
//!   replica stored it, and a presence change every replica saw is logged once);
//! - the **tail** reads the log for ids above the last it read, every `poll_ms` and at once
//!   when this replica's writer appended, and hands each event to this replica's streams (a
//!   broadcast). Every replica's streams thus carry every replica's events, in the log's
//!   order, with the log's ids. One reader per replica, not one per stream: open streams cost
//!   the store nothing more;
//! - the **pruner** removes, every minute, events older than `retention_hours` and all but the
//!   newest `retention_max`.
//!
//! A stream replays from the store ([`LogTail::after`]) and then follows the tail; see
//! `http/events.rs` for how the seam is made without a gap or a duplicate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing::{info, warn};

use crate::events::{Bus, Event, EventKind, Published, Viewer};
use crate::store::{HookKinds, LogBounds, NewLogEvent, Store, StoreError};

/// Events waiting to be logged: as many as the fleet keeps for its own sink, so a region
/// going offline at once fits.
const QUEUE: usize = 100_000;
/// Events kept in memory while the store refuses them, before the oldest are dropped.
const MAX_UNSTORED: usize = 100_000;
/// Events per append transaction.
const APPEND_BATCH: usize = 2_000;
/// Events per read of the log.
pub const READ_PAGE: u32 = 1_000;
/// How many events the tail hands out before a slow stream goes back to the store.
const TAIL_CAPACITY: usize = 16_384;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// `[events]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    /// Events older than this are removed.
    pub retention_hours: u64,
    /// At most this many events are kept (the oldest go first).
    pub retention_max: u64,
    /// How often each replica reads the log for events stored by the others.
    pub poll_ms: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            retention_max: 100_000,
            poll_ms: 250,
        }
    }
}

/// `[events]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLogConfig {
    pub retention: Duration,
    pub retention_max: u64,
    pub poll: Duration,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        let r = RawEvents::default();
        Self {
            retention: Duration::from_secs(r.retention_hours * 3600),
            retention_max: r.retention_max,
            poll: Duration::from_millis(r.poll_ms),
        }
    }
}

/// Checks `[events]`, adding what is wrong to `p`.
pub fn check(raw: &RawEvents, p: &mut Vec<String>) -> EventLogConfig {
    if !(1..=8760).contains(&raw.retention_hours) {
        p.push(format!(
            "events.retention_hours = {}: must be from 1 to 8760",
            raw.retention_hours
        ));
    }
    if !(1_000..=10_000_000).contains(&raw.retention_max) {
        p.push(format!(
            "events.retention_max = {}: must be from 1000 to 10000000",
            raw.retention_max
        ));
    }
    if !(10..=10_000).contains(&raw.poll_ms) {
        p.push(format!(
            "events.poll_ms = {}: must be from 10 to 10000",
            raw.poll_ms
        ));
    }
    EventLogConfig {
        retention: Duration::from_secs(raw.retention_hours.clamp(1, 8760) * 3600),
        retention_max: raw.retention_max,
        poll: Duration::from_millis(raw.poll_ms.clamp(10, 10_000)),
    }
}

/// A logged event, as streams get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub kind: EventKind,
    pub group_id: Option<String>,
    /// A job event's: the token that created the job (`None` for the other kinds, and for a
    /// job event logged before the log kept it).
    pub created_by: Option<String>,
    /// `{"event_id": id, …}`: the body clients get.
    pub body: String,
}

impl Entry {
    /// Whether `viewer` may see it: as [`Event::visible_to`], from the stored group and
    /// creator.
    pub fn visible_to(&self, viewer: &Viewer) -> bool {
        viewer.sees(
            self.kind,
            self.group_id.as_deref(),
            self.created_by.as_deref(),
        )
    }

    fn of(row: crate::store::LogRow) -> Option<Self> {
        let kind = EventKind::parse(&row.kind)?;
        Some(Entry {
            id: row.id,
            kind,
            group_id: row.group_id,
            created_by: row.created_by,
            body: crate::store::with_id(row.id, &row.data),
        })
    }
}

/// What streams read: the store's log and this replica's tail of it. Cheap to clone.
#[derive(Clone)]
pub struct LogTail {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Arc<Entry>>,
    /// The highest id the tail has handed out (or found at start).
    head: Arc<AtomicI64>,
    wake: Arc<Notify>,
}

impl LogTail {
    /// A tail with no task behind it yet ([`Service::start`] runs one).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_capacity(store, TAIL_CAPACITY)
    }

    /// As [`LogTail::new`], handing out at most `capacity` events ahead of the slowest stream.
    pub fn with_capacity(store: Arc<dyn Store>, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            store,
            tx,
            head: Arc::new(AtomicI64::new(0)),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.tx.subscribe()
    }

    /// The highest id handed out so far.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// Up to a page of logged events above `after`, and whether that was all.
    pub async fn after(&self, after: i64) -> Result<(Vec<Arc<Entry>>, bool), StoreError> {
        let rows = self
            .store
            .event_log()
            .events_after(after, READ_PAGE)
            .await?;
        let complete = rows.len() < READ_PAGE as usize;
        Ok((
            rows.into_iter()
                .filter_map(Entry::of)
                .map(Arc::new)
                .collect(),
            complete,
        ))
    }

    pub async fn bounds(&self) -> Result<LogBounds, StoreError> {
        self.store.event_log().log_bounds().await
    }

    /// Reads what was logged above the head and hands it out; false when the store failed.
    async fn read_new(&self) -> bool {
        loop {
            let head = self.head();
            match self.after(head).await {
                Ok((entries, complete)) => {
                    for e in entries {
                        self.head.store(e.id, Ordering::Release);
                        let _ = self.tx.send(e);
                    }
                    if complete {
                        return true;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "the event log was not read; retried");
                    return false;
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The row of one published event.
fn new_log_event(p: &Published, origin: &str) -> Option<NewLogEvent> {
    // The id the bus gave it is this process's; the log gives it the one clients see.
    let data = serde_json::to_string(&p.event).ok()?;
    let (region, instance_id, presence, at_ms) = match &p.event {
        Event::Presence {
            region,
            instance_id,
            to,
            since_ms,
            at_ms,
            ..
        } => (
            Some(region.clone()),
            Some(instance_id.clone()),
            Some((to.clone(), *since_ms)),
            *at_ms,
        ),
        Event::Call {
            region,
            instance_id,
            ..
        } => (
            Some(region.clone()),
            Some(instance_id.clone()),
            None,
            now_ms(),
        ),
        Event::Job { .. } => (None, None, None, now_ms()),
    };
    Some(NewLogEvent {
        kind: p.event.kind().as_str(),
        region,
        instance_id,
        group_id: p.event.group_id().map(str::to_owned),
        created_by: p.event.created_by().map(str::to_owned),
        presence,
        data,
        origin: origin.to_owned(),
        at_ms,
    })
}

/// The log's tasks on this replica.
pub struct Service {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts the writer (from now on every event published on `bus` is logged), the tail
    /// (from the log's newest id, read here: a store that cannot be read at start is an error,
    /// as for the rest of the service) and the pruner. `delivered` is notified when deliveries
    /// were stored (the webhook sender waits on it).
    pub async fn start(
        tail: &LogTail,
        bus: &Bus,
        hooks: Vec<HookKinds>,
        origin: String,
        cfg: EventLogConfig,
        delivered: Arc<Notify>,
    ) -> Result<Self, StoreError> {
        // Before the writer runs: an event it appends is then above the tail's start, never
        // taken for one logged before.
        tail.head
            .store(tail.bounds().await?.newest, Ordering::Release);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(write(
                bus.queue(QUEUE),
                tail.clone(),
                hooks,
                origin,
                delivered,
                stop_rx.clone(),
            )),
            tokio::spawn(follow(tail.clone(), cfg.poll, stop_rx.clone())),
            tokio::spawn(prune(tail.clone(), cfg, stop_rx)),
        ];
        Ok(Service { stop, tasks })
    }

    /// Logs what the bus still holds and stops.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn write(
    mut rx: mpsc::Receiver<Arc<Published>>,
    tail: LogTail,
    hooks: Vec<HookKinds>,
    origin: String,
    delivered: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut unstored: Vec<NewLogEvent> = Vec::new();
    let mut stopping = false;
    loop {
        // Wait for an event (or, with events the store refused, a second to retry).
        let first = if stopping {
            None
        } else {
            tokio::select! {
                r = rx.recv() => Some(r),
                _ = stop.wait_for(|s| *s) => { stopping = true; None }
                _ = tokio::time::sleep(Duration::from_secs(1)), if !unstored.is_empty() => None,
            }
        };
        let mut open = true;
        match first {
            Some(Some(p)) => unstored.extend(new_log_event(&p, &origin)),
            Some(None) => open = false,
            None => {}
        }
        // Whatever else is already waiting goes in the same transactions.
        while open {
            match rx.try_recv() {
                Ok(p) => unstored.extend(new_log_event(&p, &origin)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if unstored.len() > MAX_UNSTORED {
            let drop = unstored.len() - MAX_UNSTORED;
            unstored.drain(..drop);
            warn!(
                dropped = drop,
                "the store refused events too long; the oldest are not logged (nor delivered)"
            );
        }
        while !unstored.is_empty() {
            let n = unstored.len().min(APPEND_BATCH);
            match tail
                .store
                .event_log()
                .append_events(&unstored[..n], &hooks)
                .await
            {
                Ok(_) => {
                    unstored.drain(..n);
                    tail.wake.notify_one();
                    delivered.notify_one();
                }
                Err(e) => {
                    warn!(error = %e, waiting = unstored.len(), "events not logged yet; retried");
                    break;
                }
            }
        }
        if stopping || !open {
            if !unstored.is_empty() {
                warn!(
                    lost = unstored.len(),
                    "stopping with events the store did not take"
                );
            }
            return;
        }
    }
}

async fn follow(tail: LogTail, poll: Duration, mut stop: watch::Receiver<bool>) {
    // From the head set at start: what was logged before is for replays, not live streams.
    loop {
        tokio::select! {
            _ = tail.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tail.read_new().await;
    }
}

async fn prune(tail: LogTail, cfg: EventLogConfig, mut stop: watch::Receiver<bool>) {
    loop {
        let older = now_ms().saturating_sub(i64::try_from(cfg.retention.as_millis()).unwrap_or(0));
        match tail
            .store
            .event_log()
            .prune_events(older, cfg.retention_max)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "old events removed from the event log"),
            Err(e) => warn!(error = %e, "the event log was not pruned; tried again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked() {
        let mut p = Vec::new();
        let c = check(&RawEvents::default(), &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c, EventLogConfig::default());
        assert_eq!(c.retention, Duration::from_secs(86_400));
        check(
            &RawEvents {
                retention_hours: 0,
                retention_max: 10,
                poll_ms: 5,
            },
            &mut p,
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    /// A whole region going offline at once: more events in one go than a broadcast keeps,
    /// every one logged, with a delivery each for the webhook that takes them (a real SQLite
    /// file).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_larger_than_the_broadcast_is_logged_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let bus = Bus::default();
        let tail = LogTail::new(store.clone());
        let hooks = vec![HookKinds {
            webhook: "ops".into(),
            kinds: vec!["presence"],
        }];
        let service = Service::start(
            &tail,
            &bus,
            hooks,
            "console-1".into(),
            EventLogConfig::default(),
            Arc::new(Notify::new()),
        )
        .await
        .unwrap();
        let n = crate::events::DEFAULT_CAPACITY + 5_000;
        for i in 0..n {
            bus.publish(Event::Presence {
                region: "default".into(),
                instance_id: format!("gw-{i}"),
                group_id: Some("GID_a".into()),
                from: Some("online".into()),
                to: "offline".into(),
                reason: Some("connection_lost".into()),
                since_ms: 1,
                // Now: older events would be the pruner's (24 h retention).
                at_ms: now_ms(),
            });
        }
        bus.publish(Event::Job {
            id: "j".into(),
            state: "running".into(),
            counts: serde_json::json!({}),
            created_by: "team-a".into(),
        });
        // Stopping logs what the queue still holds.
        service.stop().await;
        let (pending, _) = store.pending_deliveries().await.unwrap();
        assert_eq!(
            pending, n as u64,
            "one delivery per presence event, none for the job"
        );
        assert_eq!(bus.queue_dropped(), 0);
        let b = tail.bounds().await.unwrap();
        assert_eq!(b.newest, n as i64 + 1);
        let (first, complete) = tail.after(0).await.unwrap();
        assert!(!complete);
        assert_eq!(first.len(), READ_PAGE as usize);
        assert_eq!(first[0].id, 1);
        let v: serde_json::Value = serde_json::from_str(&first[0].body).unwrap();
        assert_eq!(v["event_id"], 1);
        assert_eq!(v["instance_id"], "gw-0");
        // The job's creator is logged beside it, for the streams' filter, not in its body.
        let (job, complete) = tail.after(n as i64).await.unwrap();
        assert!(complete);
        assert_eq!(job[0].created_by.as_deref(), Some("team-a"));
        assert!(!job[0].body.contains("team-a"), "{}", job[0].body);
        assert!(first[0].created_by.is_none());
        store.close().await;
    }
}
