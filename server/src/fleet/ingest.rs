//! The ingest seam: where status messages come from. The fleet only sees [`StatusMessage`]s,
//! so a message queue's consumer (RocketMQ behind Alibaba Cloud MQTT, Kafka behind EMQX) can
//! replace the MQTT subscription by implementing [`StatusSource`] over the same payloads.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csg_protocol::{Heartbeat, InstanceId, Presence, StatusTopic, TopicParents};
use tracing::warn;

use super::state::Beat;

/// A status payload above this is dropped unread (`oversized`): an agent's heartbeat is about
/// 1 KB, and the fleet keeps each gateway's last one in memory.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;

/// A status message body, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusBody {
    /// Parsed and checked, then kept as what the fleet needs and its text.
    Heartbeat(Beat),
    Presence(Presence),
}

/// One status message for the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMessage {
    /// The instance the topic (or the queue's key) names, equal to the body's.
    pub instance: InstanceId,
    pub body: StatusBody,
    /// Delivered from the broker's retained store, so possibly old (the fleet orders by the
    /// agent's timestamps anyway).
    pub retained: bool,
}

/// Anything that yields status messages: the MQTT subscription, or a queue consumer.
pub trait StatusSource: Send {
    /// The next message; `None` once the source has ended. Bad messages are counted and
    /// skipped inside, never returned.
    fn next(&mut self) -> impl Future<Output = Option<StatusMessage>> + Send;
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadStatus {
    /// Not a heartbeat or presence topic under the status parent.
    Topic,
    /// Not the JSON of the body its topic names.
    Payload,
    /// The body names another instance than its topic.
    InstanceMismatch,
    /// Over [`MAX_STATUS_BYTES`].
    Oversized,
}

impl BadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BadStatus::Topic => "topic",
            BadStatus::Payload => "payload",
            BadStatus::InstanceMismatch => "instance_mismatch",
            BadStatus::Oversized => "oversized",
        }
    }
}

/// Reads a status message the way every source does: the topic (or key) names the kind and
/// the instance, the payload must agree. Never panics, whatever the bytes.
pub fn parse_status(
    parents: &TopicParents,
    topic: &str,
    payload: &[u8],
    retained: bool,
) -> Result<StatusMessage, BadStatus> {
    let kind = StatusTopic::parse(parents, topic).ok_or(BadStatus::Topic)?;
    if payload.len() > MAX_STATUS_BYTES {
        return Err(BadStatus::Oversized);
    }
    let (instance, body, named) = match kind {
        StatusTopic::Heartbeat(i) => {
            let hb: Heartbeat = serde_json::from_slice(payload).map_err(|_| BadStatus::Payload)?;
            if hb.kind != "heartbeat" {
                return Err(BadStatus::Payload);
            }
            let beat = Beat::of(&hb).map_err(|_| BadStatus::Payload)?;
            (i, StatusBody::Heartbeat(beat), hb.instance_id)
        }
        StatusTopic::Presence(i) => {
            let p: Presence = serde_json::from_slice(payload).map_err(|_| BadStatus::Payload)?;
            if p.kind != "presence" {
                return Err(BadStatus::Payload);
            }
            let named = p.instance_id.clone();
            (i, StatusBody::Presence(p), named)
        }
    };
    if named != instance.as_str() {
        return Err(BadStatus::InstanceMismatch);
    }
    Ok(StatusMessage {
        instance,
        body,
        retained,
    })
}

/// What a source took in, for metrics and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub heartbeats: AtomicU64,
    pub presence: AtomicU64,
    pub bad_topic: AtomicU64,
    pub bad_payload: AtomicU64,
    pub instance_mismatch: AtomicU64,
    pub oversized: AtomicU64,
    /// Dropped because the consumer fell behind (the inbound queue was full). Shared with the
    /// session's tap, which counts.
    pub overflow: Arc<AtomicU64>,
}

impl IngestStats {
    pub fn count(&self, msg: &StatusMessage) {
        let c = match msg.body {
            StatusBody::Heartbeat(_) => &self.heartbeats,
            StatusBody::Presence(_) => &self.presence,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bad(&self, why: BadStatus) {
        let c = match why {
            BadStatus::Topic => &self.bad_topic,
            BadStatus::Payload => &self.bad_payload,
            BadStatus::InstanceMismatch => &self.instance_mismatch,
            BadStatus::Oversized => &self.oversized,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bad_total(&self) -> u64 {
        self.bad_topic.load(Ordering::Relaxed)
            + self.bad_payload.load(Ordering::Relaxed)
            + self.instance_mismatch.load(Ordering::Relaxed)
            + self.oversized.load(Ordering::Relaxed)
    }
}

/// At most one warning per period about dropped messages, with the count since the last one:
/// a flood of bad payloads must not become a flood of log lines.
#[derive(Debug)]
pub struct DropLog {
    period: Duration,
    last: Option<Instant>,
    since: u64,
}

impl DropLog {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            since: 0,
        }
    }

    /// Counts one drop; returns whether a line was logged.
    pub fn dropped(&mut self, why: BadStatus, topic: &str) -> bool {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return false;
        }
        // The topic is cut: it comes from the network.
        let topic: String = topic.chars().take(96).collect();
        warn!(
            reason = why.as_str(),
            topic,
            dropped = self.since,
            "status messages dropped"
        );
        self.last = Some(now);
        self.since = 0;
        true
    }
}
