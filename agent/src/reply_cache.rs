//! The id memory behind "at most once execution, at least once answer".
//!
//! Every request id the agent accepts for execution is remembered from the moment it starts
//! until `ttl` after it finished, with its reply. A repeat of a finished id gets the
//! remembered reply; a repeat of a running id is attached to it and answered when it ends.
//! The dispatcher forgets reads as soon as they are answered (running one again is harmless),
//! so what stays is the mutations' memory.
//!
//! Entries are kept small: the id is stored once and shared with the time order, the method is
//! a `&'static str` of the protocol's, and a finished entry holds only its reply bytes.
//! Memory is bounded by `max` entries: when every entry is still within its ttl, new ids are
//! refused (`BUSY`, retryable) rather than forgetting an id early.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::RequestId;

/// Most replies owed for one running id (the first arrival and its repeats).
pub const MAX_WAITERS: usize = 16;

#[derive(Debug)]
struct Entry {
    method: &'static str,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reply topics owed the result, one per arrival (empty for one-way requests).
    Running {
        waiters: Vec<String>,
    },
    Done {
        reply: Bytes,
        at: Instant,
    },
}

/// What to do with an incoming request id.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never seen (or forgotten after its ttl): the caller may execute it.
    New,
    /// Already running; the reply topic was attached and will get the reply.
    Attached,
    /// Already finished: send this reply again.
    Replay(Bytes),
    /// The id was used for another method: a console bug, refused.
    MethodMismatch(&'static str),
}

#[derive(Debug)]
pub struct ReplyCache {
    entries: HashMap<Arc<str>, Entry>,
    /// (time, id) in time order: when an id was started or finished. Purging pops from the
    /// front and removes an entry only once it is finished and past its ttl. The id is the
    /// entry's own key, shared, not a copy.
    order: VecDeque<(Instant, Arc<str>)>,
    ttl: Duration,
    max: usize,
}

impl ReplyCache {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn purge(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.ttl {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            let expired = matches!(
                self.entries.get(&*id),
                Some(Entry { state: State::Done { at, .. }, .. })
                    if now.saturating_duration_since(*at) >= self.ttl
            );
            if expired {
                self.entries.remove(&*id);
            }
        }
    }

    /// Looks an id up; for a running id, attaches `reply_to` to it.
    pub fn lookup(
        &mut self,
        id: &RequestId,
        method: &str,
        reply_to: Option<&str>,
        now: Instant,
    ) -> Lookup {
        self.purge(now);
        let Some(entry) = self.entries.get_mut(id.as_str()) else {
            return Lookup::New;
        };
        if entry.method != method {
            return Lookup::MethodMismatch(entry.method);
        }
        match &mut entry.state {
            State::Running { waiters } => {
                // Every repeat is owed its own answer, but a flood of repeats must not turn
                // into a flood of replies: past the cap, repeats share the answers already owed.
                if let (Some(t), true) = (reply_to, waiters.len() < MAX_WAITERS) {
                    waiters.push(t.to_string());
                }
                Lookup::Attached
            }
            State::Done { reply, .. } => Lookup::Replay(reply.clone()),
        }
    }

    /// Whether a new id can be remembered now.
    pub fn has_room(&mut self, now: Instant) -> bool {
        self.purge(now);
        self.entries.len() < self.max
    }

    /// Marks a new id as running. Call only after `lookup` returned `New` and `has_room`.
    pub fn start(
        &mut self,
        id: RequestId,
        method: &'static str,
        reply_to: Option<&str>,
        now: Instant,
    ) {
        let waiters = reply_to.map(|t| vec![t.to_string()]).unwrap_or_default();
        let id: Arc<str> = id.as_str().into();
        self.order.push_back((now, id.clone()));
        self.entries.insert(
            id,
            Entry {
                method,
                state: State::Running { waiters },
            },
        );
    }

    /// Puts back an id finished before a restart (from the reply journal).
    pub fn restore(&mut self, id: RequestId, method: &'static str, reply: Bytes, at: Instant) {
        let id: Arc<str> = id.as_str().into();
        self.order.push_back((at, id.clone()));
        self.entries.insert(
            id,
            Entry {
                method,
                state: State::Done { reply, at },
            },
        );
    }

    /// Forgets an id at once: its reply was a retryable error, and a re-send with the same id
    /// (what a console does with a retryable error) must run it again, not get that error back.
    /// Its place in `order` stays; `purge` skips ids that are gone or were started again.
    pub fn forget(&mut self, id: &RequestId) {
        self.entries.remove(id.as_str());
    }

    /// Records the reply of a finished id and returns the topics waiting for it.
    pub fn finish(&mut self, id: &RequestId, reply: Bytes, now: Instant) -> Vec<String> {
        // The order gets the entry's own key (shared), not a new copy of the id.
        let Some(key) = self
            .entries
            .get_key_value(id.as_str())
            .map(|(k, _)| k.clone())
        else {
            return Vec::new();
        };
        let Some(entry) = self.entries.get_mut(&*key) else {
            return Vec::new();
        };
        let old = std::mem::replace(&mut entry.state, State::Done { reply, at: now });
        self.order.push_back((now, key));
        match old {
            State::Running { waiters } => waiters,
            State::Done { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }
    fn m(s: &'static str) -> &'static str {
        s
    }

    #[test]
    fn new_running_done_replay() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(600), 10);
        assert_eq!(
            c.lookup(&id("a"), m("sys.ping"), Some("up/1"), t0),
            Lookup::New
        );
        c.start(id("a"), m("sys.ping"), Some("up/1"), t0);
        assert_eq!(
            c.lookup(&id("a"), m("sys.ping"), Some("up/1"), t0),
            Lookup::Attached
        );
        assert_eq!(
            c.lookup(&id("a"), m("sys.ping"), Some("up/2"), t0),
            Lookup::Attached
        );
        assert_eq!(
            c.lookup(&id("a"), m("sys.ping"), None, t0),
            Lookup::Attached
        );
        let waiters = c.finish(&id("a"), Bytes::from_static(b"r"), t0);
        assert_eq!(waiters, ["up/1", "up/1", "up/2"]);
        assert_eq!(
            c.lookup(&id("a"), m("sys.ping"), Some("up/3"), t0),
            Lookup::Replay(Bytes::from_static(b"r"))
        );
        assert_eq!(
            c.lookup(&id("a"), m("sys.info"), Some("up/3"), t0),
            Lookup::MethodMismatch(m("sys.ping"))
        );
    }

    #[test]
    fn repeats_owed_replies_are_capped() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(600), 10);
        c.start(id("a"), m("x.y"), Some("up/1"), t0);
        for _ in 0..100 {
            c.lookup(&id("a"), m("x.y"), Some("up/1"), t0);
        }
        assert_eq!(c.finish(&id("a"), Bytes::new(), t0).len(), MAX_WAITERS);
    }

    #[test]
    fn remembered_for_ttl_after_finishing_not_after_starting() {
        let ttl = Duration::from_secs(600);
        let t0 = Instant::now();
        let mut c = ReplyCache::new(ttl, 10);
        c.start(id("a"), m("x.y"), None, t0);
        // A long-running request: it finishes 700 s after it started.
        let t1 = t0 + Duration::from_secs(700);
        assert_eq!(c.lookup(&id("a"), m("x.y"), None, t1), Lookup::Attached);
        c.finish(&id("a"), Bytes::from_static(b"r"), t1);
        let t2 = t1 + ttl - Duration::from_secs(1);
        assert!(matches!(
            c.lookup(&id("a"), m("x.y"), None, t2),
            Lookup::Replay(_)
        ));
        let t3 = t1 + ttl;
        assert_eq!(c.lookup(&id("a"), m("x.y"), None, t3), Lookup::New);
        assert!(c.is_empty());
    }

    #[test]
    fn a_forgotten_id_runs_again_and_its_old_place_does_not_purge_the_new_run() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut c = ReplyCache::new(s(600), 10);
        c.start(id("a"), m("x.y"), Some("up/1"), t0);
        assert_eq!(c.finish(&id("a"), Bytes::from_static(b"e"), t0), ["up/1"]);
        c.forget(&id("a"));
        assert_eq!(c.lookup(&id("a"), m("x.y"), None, t0), Lookup::New);
        c.start(id("a"), m("x.y"), None, t0 + s(1));
        c.finish(&id("a"), Bytes::from_static(b"ok"), t0 + s(2));
        assert_eq!(
            c.lookup(&id("a"), m("x.y"), None, t0 + s(600)),
            Lookup::Replay(Bytes::from_static(b"ok"))
        );
        assert_eq!(c.lookup(&id("a"), m("x.y"), None, t0 + s(602)), Lookup::New);
    }

    #[test]
    fn full_cache_refuses_rather_than_forgets() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(600), 2);
        for n in ["a", "b"] {
            assert!(c.has_room(t0));
            c.start(id(n), m("x.y"), None, t0);
            c.finish(&id(n), Bytes::new(), t0);
        }
        assert!(!c.has_room(t0 + Duration::from_secs(599)));
        assert!(c.has_room(t0 + Duration::from_secs(600)));
        assert_eq!(c.len(), 0);
    }
}
