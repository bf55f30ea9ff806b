//! The service's live events: presence changes, call completions and job progress, fanned out
//! to whoever listens (server-sent events, webhooks). Publishing never waits: a listener that
//! falls behind loses the oldest events and is told how many (tokio's broadcast `Lagged`).
//! A listener that must see every event (the webhooks, which store each one) takes a queue of
//! its own instead ([`Bus::queue`]): a whole region going offline at once is tens of thousands
//! of events in one flush, more than a broadcast keeps.
//!
//! Every event gets an id when published: a counter of this process, increasing, so a listener
//! can tell order and gaps (it starts again at 1 when the process restarts). Clients never see
//! it: the event log ([`crate::eventlog`]) stores each event and gives it the id streams and
//! webhooks carry, the same on every replica and across restarts.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::warn;

/// How many events wait for the slowest listener before the oldest are dropped for it.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// One event, as listeners receive it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A gateway changed presence.
    Presence {
        region: String,
        instance_id: String,
        /// The gateway's group, when known (a gateway heard of by presence alone, never stored,
        /// has none yet); tokens limited to groups see only their groups' events.
        group_id: Option<String>,
        from: Option<String>,
        to: String,
        reason: Option<String>,
        since_ms: i64,
        at_ms: i64,
    },
    /// A call made through the console finished (answered, or given up).
    Call {
        region: String,
        instance_id: String,
        /// As for presence: what group-limited tokens are filtered by.
        group_id: Option<String>,
        id: String,
        method: String,
        /// `ok`, the agent's error code, or the console's own failure (`timeout`, …).
        outcome: String,
        latency_ms: u64,
    },
    /// A job's counts or state changed.
    Job {
        id: String,
        state: String,
        counts: serde_json::Value,
        /// The token that created the job: a token limited to groups sees the jobs it created,
        /// and their events. Not sent: the event log keeps it beside the event (its own
        /// column), and clients know a job's creator from the job itself.
        #[serde(skip)]
        created_by: String,
    },
}

/// The kinds of event, as named in `?types=` and in webhook configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Presence,
    Call,
    Job,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Presence, EventKind::Call, EventKind::Job];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Presence => "presence",
            EventKind::Call => "call",
            EventKind::Job => "job",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of event kinds; never empty once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKinds(u8);

impl EventKinds {
    pub const ALL: EventKinds = EventKinds(0b111);

    fn bit(k: EventKind) -> u8 {
        match k {
            EventKind::Presence => 1,
            EventKind::Call => 2,
            EventKind::Job => 4,
        }
    }

    pub fn contains(self, k: EventKind) -> bool {
        self.0 & Self::bit(k) != 0
    }

    /// From names (`presence`, `call`, `job`); an unknown name, or none at all, is an error
    /// naming the known ones.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0;
        for n in names {
            let k = EventKind::parse(n.trim()).ok_or_else(|| {
                format!(
                    "unknown event type {:?}; known: presence, call, job",
                    n.chars().take(64).collect::<String>()
                )
            })?;
            bits |= Self::bit(k);
        }
        if bits == 0 {
            return Err("no event type given; known: presence, call, job".to_owned());
        }
        Ok(EventKinds(bits))
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Presence { .. } => EventKind::Presence,
            Event::Call { .. } => EventKind::Call,
            Event::Job { .. } => EventKind::Job,
        }
    }

    /// The group of the gateway the event is about; `None` for a job (jobs span groups) and for
    /// a gateway whose group is not known yet.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            Event::Presence { group_id, .. } | Event::Call { group_id, .. } => group_id.as_deref(),
            Event::Job { .. } => None,
        }
    }

    /// The token that created the job a job event is about; `None` for the other kinds.
    pub fn created_by(&self) -> Option<&str> {
        match self {
            Event::Job { created_by, .. } => Some(created_by),
            Event::Presence { .. } | Event::Call { .. } => None,
        }
    }

    /// Whether `viewer` may see it ([`Viewer::sees`]).
    pub fn visible_to(&self, viewer: &Viewer) -> bool {
        viewer.sees(self.kind(), self.group_id(), self.created_by())
    }
}

/// Who an event stream is for: its token's name and the groups the token is limited to
/// (none: every group).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Viewer {
    pub name: String,
    pub groups: Vec<String>,
}

impl Viewer {
    pub fn of(token: &crate::store::TokenRecord) -> Self {
        Self {
            name: token.name.as_str().to_owned(),
            groups: token.groups.iter().map(|g| g.as_str().to_owned()).collect(),
        }
    }

    /// The one rule of what a stream passes, from what is known of an event: its kind, the
    /// group of its gateway and, for a job, the token that created the job. A token limited to
    /// groups sees the events of its groups' gateways (not those of a gateway whose group is
    /// not known yet) and the events of the jobs it created, as it may see those jobs and no
    /// other (`GET /v1/jobs`); not another token's job, even over its own gateways. Any other
    /// token sees everything.
    pub fn sees(&self, kind: EventKind, group_id: Option<&str>, created_by: Option<&str>) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        match kind {
            EventKind::Job => created_by == Some(self.name.as_str()),
            EventKind::Presence | EventKind::Call => {
                group_id.is_some_and(|g| self.groups.iter().any(|t| t == g))
            }
        }
    }
}

/// An event with the id it was published under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    pub event_id: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// The fan-out point. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Published>>,
    next_id: Arc<AtomicU64>,
    /// Set once at shutdown: long-lived listeners (event streams) end, so the server's
    /// graceful shutdown is not held open by them.
    closed: Arc<watch::Sender<bool>>,
    queues: Arc<Mutex<Vec<mpsc::Sender<Arc<Published>>>>>,
    /// Events a full queue could not take.
    queue_dropped: Arc<AtomicU64>,
}

impl Bus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (closed, _) = watch::channel(false);
        Self {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(closed),
            queues: Arc::new(Mutex::new(Vec::new())),
            queue_dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Never blocks; with nobody listening the event is simply dropped. Returns its id.
    pub fn publish(&self, event: Event) -> u64 {
        let event_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Published { event_id, event });
        {
            let mut queues = self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queues.retain(|q| match q.try_send(p.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let n = self.queue_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // Logged at powers of two: a stuck queue does not flood the log.
                    if n.is_power_of_two() {
                        warn!(dropped = n, "an event queue is full; events dropped");
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        let _ = self.tx.send(p);
        event_id
    }

    /// A queue that gets every event published from now on, up to `capacity` waiting; beyond
    /// that events are dropped for it, counted ([`Bus::queue_dropped`]) and logged. Dropping
    /// the receiver ends it.
    pub fn queue(&self, capacity: usize) -> mpsc::Receiver<Arc<Published>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Events full queues could not take, since start.
    pub fn queue_dropped(&self) -> u64 {
        self.queue_dropped.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Ends every stream waiting on [`Bus::closed`].
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Bus::close`] was called (at once if it already was).
    pub async fn closed(&self) {
        let mut rx = self.close_signal();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Turns true at [`Bus::close`]; for a listener to wait on beside its events.
    pub fn close_signal(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(group: Option<&str>) -> Event {
        Event::Presence {
            region: "default".into(),
            instance_id: "gw-1".into(),
            group_id: group.map(str::to_owned),
            from: Some("online".into()),
            to: "offline".into(),
            reason: Some("connection_lost".into()),
            since_ms: 1,
            at_ms: 2,
        }
    }

    #[test]
    fn kinds_parse_checked() {
        let k = EventKinds::parse("presence,job".split(',')).unwrap();
        assert!(k.contains(EventKind::Presence) && k.contains(EventKind::Job));
        assert!(!k.contains(EventKind::Call));
        assert!(EventKinds::parse("presence,jobs".split(',')).is_err());
        assert!(EventKinds::parse([]).is_err());
    }

    fn viewer(name: &str, groups: &[&str]) -> Viewer {
        Viewer {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn job(created_by: &str) -> Event {
        Event::Job {
            id: "j".into(),
            state: "running".into(),
            counts: serde_json::json!({"succeeded": 1}),
            created_by: created_by.into(),
        }
    }

    #[test]
    fn group_limited_listeners_see_only_their_gateways() {
        let all = viewer("ops", &[]);
        assert!(presence(Some("GID_a")).visible_to(&all));
        assert!(presence(None).visible_to(&all));
        let a = viewer("team-a", &["GID_a"]);
        assert!(presence(Some("GID_a")).visible_to(&a));
        assert!(!presence(Some("GID_b")).visible_to(&a));
        assert!(!presence(None).visible_to(&a));
        assert!(viewer("team-ab", &["GID_b", "GID_a"]).sees(EventKind::Call, Some("GID_a"), None));
    }

    /// A token limited to groups sees the events of the jobs it created, and only those:
    /// not another token's job (over the same groups or not), not a job whose creator is not
    /// known (a job event logged before the log kept it). Group membership says nothing of a
    /// job.
    #[test]
    fn group_limited_listeners_see_the_jobs_they_created_and_no_other() {
        let a = viewer("team-a", &["GID_a"]);
        assert!(job("team-a").visible_to(&a));
        assert!(!job("team-a2").visible_to(&a));
        assert!(!job("ops").visible_to(&a));
        assert!(!a.sees(EventKind::Job, None, None));
        assert!(!a.sees(EventKind::Job, Some("GID_a"), Some("ops")));
        // The name alone does not make a presence or call event visible.
        assert!(!a.sees(EventKind::Presence, None, Some("team-a")));
        // Unlimited tokens see every job's events.
        assert!(job("team-a").visible_to(&viewer("ops", &[])));
        assert!(job("anyone").visible_to(&viewer("ops", &[])));
    }

    /// The creator stays off the wire: a job event's JSON is as documented.
    #[test]
    fn a_job_events_json_does_not_carry_its_creator() {
        let v = serde_json::to_value(job("team-a")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "job", "id": "j", "state": "running", "counts": {"succeeded": 1}})
        );
    }

    #[tokio::test]
    async fn ids_increase_and_a_lagging_listener_is_told_how_many_it_lost() {
        let bus = Bus::new(2);
        let mut rx = bus.subscribe();
        let ids: Vec<u64> = (0..5).map(|_| bus.publish(presence(None))).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(3))
        ));
        assert_eq!(rx.recv().await.unwrap().event_id, 4);
        let json = serde_json::to_value(&*rx.recv().await.unwrap()).unwrap();
        assert_eq!(json["event_id"], 5);
        assert_eq!(json["type"], "presence");
        assert_eq!(json["group_id"], serde_json::Value::Null);
        bus.close();
        bus.closed().await;
    }

    #[tokio::test]
    async fn a_queue_gets_every_event_up_to_its_capacity_and_counts_the_rest() {
        let bus = Bus::new(2);
        let mut q = bus.queue(100);
        let mut small = bus.queue(3);
        for _ in 0..50 {
            bus.publish(presence(None));
        }
        for id in 1..=50 {
            assert_eq!(q.recv().await.unwrap().event_id, id);
        }
        assert_eq!(bus.queue_dropped(), 47);
        assert_eq!(small.recv().await.unwrap().event_id, 1);
        drop(q);
        bus.publish(presence(None));
        assert_eq!(
            bus.queues.lock().unwrap().len(),
            1,
            "a dropped queue is forgotten"
        );
    }
}
