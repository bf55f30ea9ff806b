//! Request counters, shared by the dispatcher (which counts) and status (which reports).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use csg_protocol::status::Counters;

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
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
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
