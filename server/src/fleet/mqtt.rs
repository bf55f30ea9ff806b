//! Status from MQTT, on the service's one console session (its tap): heartbeats through a shared subscription
//! (`$share/{group}/{status}/+`), so the replicas of one group split them, and presence on a
//! plain subscription (`{status}/+/presence`), so every replica sees every change (and, in
//! standard mode, every gateway's retained presence at start).

use std::sync::Arc;
use std::time::Duration;

use csg_console::Tap;
use csg_protocol::TopicParents;
use csg_transport::Inbound;
use thiserror::Error;
use tokio::sync::mpsc;

use super::ingest::{parse_status, DropLog, IngestStats, StatusMessage, StatusSource};

/// Inbound messages buffered between the session's poll task and the fleet: about a second
/// of 10k gateways' heartbeats; beyond it they are dropped and counted (`overflow`).
pub const DEFAULT_QUEUE: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IngestError {
    #[error("share group {0:?} is invalid: 1-64 characters of [A-Za-z0-9_.:-]")]
    BadShareGroup(String),
    #[error("{0}")]
    BadTopics(String),
}

/// A shared subscription's group name: one MQTT topic level without wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroup(String);

impl ShareGroup {
    pub fn new(s: &str) -> Result<Self, IngestError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(IngestError::BadShareGroup(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The two filters: heartbeats shared by the group, presence seen by every replica.
pub fn filters(parents: &TopicParents, group: &ShareGroup) -> [String; 2] {
    let [heartbeats, presence] = parents.status_filters();
    [format!("$share/{}/{heartbeats}", group.as_str()), presence]
}

/// The status ingest's part of the one MQTT session: the filters it subscribes and the tap
/// its messages come through. Give both to the session ([`csg_console::ConsoleOptions`]'s
/// `subscriptions` and `tap`), which restores the subscriptions after every reconnect and,
/// since they are required, stays down rather than blind when the broker refuses one.
pub struct StatusTap {
    pub subscriptions: Vec<String>,
    pub tap: Tap,
}

/// The MQTT [`StatusSource`]: the status messages of the session's tap, parsed.
pub struct MqttStatusSource {
    rx: mpsc::Receiver<Inbound>,
    parents: TopicParents,
    stats: Arc<IngestStats>,
    log: DropLog,
}

impl MqttStatusSource {
    /// The source and the tap to feed it: `queue` messages wait between the session and the
    /// fleet; beyond that they are dropped and counted (`overflow`), never waited for.
    pub fn new(
        parents: TopicParents,
        share_group: &ShareGroup,
        queue: usize,
    ) -> Result<(Self, StatusTap), IngestError> {
        if let Some(e) = parents.validate().first() {
            return Err(IngestError::BadTopics(e.to_string()));
        }
        let stats = Arc::new(IngestStats::default());
        let (tx, rx) = mpsc::channel(queue.max(1));
        let tap = StatusTap {
            subscriptions: filters(&parents, share_group).to_vec(),
            tap: Tap {
                tx,
                overflow: stats.overflow.clone(),
            },
        };
        Ok((
            Self {
                rx,
                parents,
                stats,
                log: DropLog::new(Duration::from_secs(60)),
            },
            tap,
        ))
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }
}

impl StatusSource for MqttStatusSource {
    async fn next(&mut self) -> Option<StatusMessage> {
        loop {
            let msg = self.rx.recv().await?;
            match parse_status(&self.parents, &msg.topic, &msg.payload, msg.retain) {
                Ok(status) => {
                    self.stats.count(&status);
                    return Some(status);
                }
                Err(why) => {
                    self.stats.bad(why);
                    self.log.dropped(why, &msg.topic);
                }
            }
        }
    }
}
