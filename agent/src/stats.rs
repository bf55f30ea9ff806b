//! Request counters, shared by the dispatcher (which counts) and status (which reports).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use csg_protocol::status::Counters;

use crate::ratelimit::{Line, LogLimiter};

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub executed: AtomicU64,
    pub duplicates: AtomicU64,
    pub expired: AtomicU64,
    pub busy: AtomicU64,
    pub bad_request: AtomicU64,
    pub dropped: AtomicU64,
    pub reply_lost: AtomicU64,
    pub unauthorized: AtomicU64,
    pub packet_too_large: AtomicU64,
    /// Messages the agent could not act on, per reason, and when to log them.
    noisy: Mutex<LogLimiter<Noisy>>,
}

/// Why a message was dropped without an answer (the keys of `sys.status` `dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Delivered on a topic the agent never subscribed to (some brokers forward retained
    /// messages to every client).
    UnsubscribedTopic,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// Larger than `agent.max_payload_bytes`, with no reply topic readable.
    Oversized,
    /// Not a request (not JSON, bad envelope) and no reply topic readable.
    Unreadable,
    /// A `reply_to` outside the reply parent or over the length limit.
    ReplyTopicRefused,
    /// The command queue was full and the message had no reply topic to say BUSY on.
    QueueFull,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnsubscribedTopic => "unsubscribed_topic",
            DropReason::NotUtf8 => "not_utf8",
            DropReason::Oversized => "oversized",
            DropReason::Unreadable => "unreadable",
            DropReason::ReplyTopicRefused => "reply_topic_refused",
            DropReason::QueueFull => "queue_full",
        }
    }

    /// For a log line: "dropped N messages {this}".
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::UnsubscribedTopic => "on topics the agent did not subscribe to",
            DropReason::NotUtf8 => "that are not UTF-8",
            DropReason::Oversized => "over the payload cap with no reply topic",
            DropReason::Unreadable => "that are not requests and have no reply topic",
            DropReason::ReplyTopicRefused => "whose reply topic is refused",
            DropReason::QueueFull => "with no reply topic while the command queue was full",
        }
    }
}

/// What is logged at most once a window: dropped messages, and answered BAD_REQUESTs (a
/// sender looping on a broken request would flood the log as surely).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Noisy {
    Dropped(DropReason),
    BadRequest,
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a dropped message (in `dropped` and under its reason); returns the log line due
    /// now, if any. `last` describes the message (built for every one, kept for the line).
    pub fn drop_message(&self, reason: DropReason, last: impl FnOnce() -> String) -> Option<Line> {
        Self::inc(&self.dropped);
        self.noisy(Noisy::Dropped(reason), last, Instant::now())
    }

    /// Counts an event that is logged at most once a window; returns the line due now.
    pub fn noisy(&self, what: Noisy, last: impl FnOnce() -> String, now: Instant) -> Option<Line> {
        let mut l = self
            .noisy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.record(what, last, now)
    }

    /// Lines owed for counts that had no line in the last window (for a timer).
    pub fn noisy_due(&self, now: Instant) -> Vec<(Noisy, Line)> {
        let mut l = self
            .noisy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.due(now)
    }

    /// Dropped messages per reason since the start (`sys.status` `dropped`).
    pub fn dropped_by_reason(&self) -> BTreeMap<String, u64> {
        let l = self
            .noisy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.totals()
            .into_iter()
            .filter_map(|(k, n)| match k {
                Noisy::Dropped(r) => Some((r.as_str().to_string(), n)),
                Noisy::BadRequest => None,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            received: self.received.load(Relaxed),
            executed: self.executed.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            expired: self.expired.load(Relaxed),
            busy: self.busy.load(Relaxed),
            bad_request: self.bad_request.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            reply_lost: self.reply_lost.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            packet_too_large: self.packet_too_large.load(Relaxed),
        }
    }
}
