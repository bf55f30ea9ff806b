//! The service's live events: presence changes, call completions and job progress, fanned out
//! to whoever listens (server-sent events, webhooks). Publishing never waits: a listener that
//! falls behind loses the oldest events and is told how many (tokio's broadcast `Lagged`).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events wait for the slowest listener before the oldest are dropped for it.
pub const DEFAULT_CAPACITY: usize = 4096;

/// One event, as listeners receive it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A gateway changed presence.
    Presence {
        region: String,
        instance_id: String,
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
    },
}

/// The fan-out point. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Bus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Never blocks; with nobody listening the event is simply dropped.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}
