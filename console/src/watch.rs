//! Live heartbeats and presence from the status topics.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csg_protocol::{Heartbeat, InstanceId, Presence};
use csg_transport::SubscribeError;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::client::{lock, Console, Watcher};

/// Events buffered per watch before new ones are dropped (the event loop never waits).
const WATCH_QUEUE: usize = 4096;

/// Above this many instances a watch subscribes the two wildcard filters and filters locally:
/// one SUBSCRIBE per reconnect stays small, and the broker's matching stays cheap.
const MAX_SPECIFIC_INSTANCES: usize = 200;

/// Which instances to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFilter {
    All,
    Instances(Vec<InstanceId>),
}

/// A parsed status message body.
// Most events are heartbeats, each built once and moved to its consumer: boxing the larger
// variant would add an allocation to nearly every event to save bytes on the rare presence.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Heartbeat(Heartbeat),
    Presence(Presence),
}

/// One status message, with where and when it arrived.
#[derive(Debug, Clone)]
pub struct StatusEvent {
    pub topic: String,
    /// The instance named by the topic.
    pub instance: InstanceId,
    pub event: WatchEvent,
    /// Delivered from the broker's retained store (presence in standard mode), so possibly old.
    pub retained: bool,
    pub received: Instant,
}

/// Why a watch could not start.
#[derive(Debug, Clone, Error)]
pub enum WatchError {
    #[error("the broker refused the subscription to {filter}")]
    Refused { filter: String },
    #[error(
        "the status subscription was not confirmed within {waited:?} (is the broker reachable?)"
    )]
    Timeout { waited: Duration },
    #[error("the console connection is closed")]
    Closed,
}

/// A stream of status events. Dropping it stops delivery; the subscriptions themselves stay
/// until the console closes (another watch may share them).
pub struct Watch {
    // Keeps the connection open for as long as the watch lives.
    console: Console,
    id: u64,
    rx: mpsc::Receiver<StatusEvent>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next event; `None` once the console has closed.
    pub async fn next(&mut self) -> Option<StatusEvent> {
        self.rx.recv().await
    }

    /// Events dropped because this watch was not read fast enough.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.console.inner.shared.subs)
            .watchers
            .retain(|w| w.id != self.id);
    }
}

impl Console {
    /// Subscribes the status topics of `filter` and returns once the broker confirmed the
    /// subscription (bounded by the options' `connect_timeout`). Malformed status messages
    /// are skipped with a debug log. Subscriptions are restored after every reconnect.
    pub async fn watch(&self, filter: WatchFilter) -> Result<Watch, WatchError> {
        let parents = &self.inner.opts.parents;
        let (filters, instances): (Vec<String>, Option<HashSet<InstanceId>>) = match &filter {
            WatchFilter::All => (parents.status_filters().to_vec(), None),
            WatchFilter::Instances(list) if list.len() > MAX_SPECIFIC_INSTANCES => (
                parents.status_filters().to_vec(),
                Some(list.iter().cloned().collect()),
            ),
            WatchFilter::Instances(list) => {
                let set: BTreeSet<String> = list
                    .iter()
                    .flat_map(|i| [parents.heartbeat_topic(i), parents.presence_topic(i)])
                    .collect();
                (
                    set.into_iter().collect(),
                    Some(list.iter().cloned().collect()),
                )
            }
        };

        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        // Register before subscribing so retained presence sent right after the SUBACK is kept.
        let id = {
            let mut subs = lock(&self.inner.shared.subs);
            let id = subs.next_watcher;
            subs.next_watcher += 1;
            subs.watchers.push(Watcher {
                id,
                instances,
                tx,
                dropped: dropped.clone(),
            });
            id
        };
        let watch = Watch {
            console: self.clone(),
            id,
            rx,
            dropped,
        };
        // The session keeps the filters and restores them after every reconnect.
        match self
            .inner
            .mqtt
            .subscribe(&filters, self.inner.opts.connect_timeout)
            .await
        {
            Ok(()) => Ok(watch),
            Err(SubscribeError::Refused { filter }) => Err(WatchError::Refused { filter }),
            Err(SubscribeError::Timeout { waited }) => Err(WatchError::Timeout { waited }),
            Err(SubscribeError::Closed) => Err(WatchError::Closed),
        }
    }
}
