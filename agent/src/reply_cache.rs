//! The id memory behind "at most once execution, at least once answer".
//!
//! Every request id the agent accepts for execution is remembered from the moment it starts
//! until `ttl` after it finished, with its reply. A repeat of a finished id gets the
//! remembered reply; a repeat of a running id is attached to it and answered when it ends
//! (up to `MAX_WAITERS` replies owed per run; past that the caller answers `BUSY`).
//! The dispatcher forgets reads as soon as they are answered (running one again is harmless),
//! so what stays is the mutations' memory.
//!
//! Entries are kept small: the id is stored once and shared with the time order, the method is
//! one byte (its place in the protocol's list), a finished entry's time is kept only in the
//! time order, and a finished entry holds only its reply, compressed
//! (LZ4: a storage reply repeats its keys and values — desired and actual — and shrinks by
//! about a third; a replay, which is rare, pays the decompression).
//! Memory is bounded by `max` entries: when every entry is still within its ttl, new ids are
//! refused (`BUSY`, retryable) rather than forgetting an id early.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::methods;
use csg_protocol::RequestId;

/// Most replies owed for one running id (the first arrival and its repeats).
pub const MAX_WAITERS: usize = 16;

#[derive(Debug)]
struct Entry {
    method: MethodIndex,
    state: State,
}

/// A method by its place in the protocol's list of methods (`csg_protocol::methods::ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MethodIndex(u8);

impl MethodIndex {
    /// Names outside the protocol's list (never given by the dispatcher, which passes a parsed
    /// method's name) share one index.
    fn of(name: &str) -> Self {
        let i = methods::ALL.iter().position(|m| *m == name);
        Self(i.and_then(|i| u8::try_from(i).ok()).unwrap_or(u8::MAX))
    }

    fn name(self) -> &'static str {
        methods::ALL
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("an unknown method")
    }
}

#[derive(Debug)]
enum State {
    /// Reply topics owed the result, one per arrival (empty for one-way requests).
    Running { waiters: Vec<String> },
    /// Its time is its place in `order`.
    Done(Packed),
}

/// A remembered reply, LZ4-compressed, in a buffer of exactly its size.
#[derive(Debug)]
struct Packed(Box<[u8]>);

impl Packed {
    fn new(reply: &[u8]) -> Self {
        Self(lz4_flex::compress_prepend_size(reply).into_boxed_slice())
    }

    /// `None` only if the buffer was damaged in memory: only this cache compresses these
    /// buffers, and it never changes one afterwards.
    fn unpack(&self) -> Option<Bytes> {
        lz4_flex::decompress_size_prepended(&self.0)
            .ok()
            .map(Bytes::from)
    }
}

/// What to do with an incoming request id.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never seen (or forgotten after its ttl): the caller may execute it.
    New,
    /// Already running; the reply topic was attached and will get the reply.
    Attached,
    /// Already running and already owing `MAX_WAITERS` replies: this repeat's reply topic
    /// was not attached, and the caller answers it `BUSY` (retryable).
    WaitersFull,
    /// Already finished: send this reply again.
    Replay(Bytes),
    /// Already finished, but its remembered reply cannot be read back: it must not run again,
    /// and there is nothing to replay.
    Unreadable,
    /// The id was used for another method: a console bug, refused.
    MethodMismatch(&'static str),
}

#[derive(Debug)]
pub struct ReplyCache {
    entries: HashMap<Arc<str>, Entry>,
    /// (time, id) in time order: when a remembered id finished. Purging pops from the front and
    /// removes an entry only once it is finished and past its ttl. The id is the entry's own
    /// key, shared, not a copy. Running ids are not here: they are never purged, and a read
    /// (forgotten when it finishes) never gets a place at all.
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
            // The place is the entry's only if it holds the very key the entry was inserted
            // with: a later entry for the same id (one restored twice from the journal) has
            // its own key and its own, later place.
            let expired = matches!(
                self.entries.get_key_value(&*id),
                Some((key, Entry { state: State::Done(_), .. })) if Arc::ptr_eq(key, &id)
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
        if entry.method != MethodIndex::of(method) {
            return Lookup::MethodMismatch(entry.method.name());
        }
        match &mut entry.state {
            State::Running { waiters } => {
                // Every repeat is owed its own answer, but the answers owed to one run are
                // capped: past the cap a repeat is told to retry instead of being remembered.
                // A one-way repeat is owed nothing, so it never counts against the cap.
                match reply_to {
                    Some(_) if waiters.len() >= MAX_WAITERS => Lookup::WaitersFull,
                    Some(t) => {
                        waiters.push(t.to_string());
                        Lookup::Attached
                    }
                    None => Lookup::Attached,
                }
            }
            State::Done(reply) => reply.unpack().map_or(Lookup::Unreadable, Lookup::Replay),
        }
    }

    /// Whether a new id can be remembered now.
    pub fn has_room(&mut self, now: Instant) -> bool {
        self.purge(now);
        self.entries.len() < self.max
    }

    /// Marks a new id as running. Call only after `lookup` returned `New` and `has_room`.
    pub fn start(&mut self, id: RequestId, method: &'static str, reply_to: Option<&str>) {
        let waiters = reply_to.map(|t| vec![t.to_string()]).unwrap_or_default();
        let id: Arc<str> = id.as_str().into();
        self.entries.insert(
            id,
            Entry {
                method: MethodIndex::of(method),
                state: State::Running { waiters },
            },
        );
    }

    /// Puts back an id finished before a restart (from the reply journal).
    pub fn restore(&mut self, id: RequestId, method: &'static str, reply: &[u8], at: Instant) {
        let id: Arc<str> = id.as_str().into();
        self.order.push_back((at, id.clone()));
        // Removed first: `insert` would keep an earlier entry's key, and the key is what ties
        // an entry to its place in `order`.
        self.entries.remove(&*id);
        self.entries.insert(
            id,
            Entry {
                method: MethodIndex::of(method),
                state: State::Done(Packed::new(reply)),
            },
        );
    }

    /// Ends a running id and returns the topics owed its reply. With `keep` the reply is
    /// remembered for the ttl (a mutation); without, the id is forgotten at once: a read, or a
    /// retryable error, whose re-send with the same id (what a console does after one) must
    /// run again, not get that error back.
    pub fn finish(
        &mut self,
        id: &RequestId,
        reply: &[u8],
        now: Instant,
        keep: bool,
    ) -> Vec<String> {
        if !keep {
            return match self.entries.remove(id.as_str()) {
                Some(Entry {
                    state: State::Running { waiters },
                    ..
                }) => waiters,
                _ => Vec::new(),
            };
        }
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
        let old = std::mem::replace(&mut entry.state, State::Done(Packed::new(reply)));
        self.order.push_back((now, key));
        match old {
            State::Running { waiters } => waiters,
            State::Done(_) => Vec::new(),
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
        c.start(id("a"), m("sys.ping"), Some("up/1"));
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
        let waiters = c.finish(&id("a"), b"r", t0, true);
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
        c.start(id("a"), m("nfs.export.create"), Some("up/1"));
        for n in 1..100 {
            let want = if n < MAX_WAITERS {
                Lookup::Attached
            } else {
                Lookup::WaitersFull
            };
            assert_eq!(
                c.lookup(&id("a"), m("nfs.export.create"), Some("up/1"), t0),
                want
            );
        }
        // One-way repeats are owed nothing: attached, whatever the count.
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t0),
            Lookup::Attached
        );
        assert_eq!(c.finish(&id("a"), b"", t0, true).len(), MAX_WAITERS);
    }

    #[test]
    fn remembered_for_ttl_after_finishing_not_after_starting() {
        let ttl = Duration::from_secs(600);
        let t0 = Instant::now();
        let mut c = ReplyCache::new(ttl, 10);
        c.start(id("a"), m("nfs.export.create"), None);
        // A long-running request: it finishes 700 s after it started.
        let t1 = t0 + Duration::from_secs(700);
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t1),
            Lookup::Attached
        );
        c.finish(&id("a"), b"r", t1, true);
        let t2 = t1 + ttl - Duration::from_secs(1);
        assert!(matches!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t2),
            Lookup::Replay(_)
        ));
        let t3 = t1 + ttl;
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t3),
            Lookup::New
        );
        assert!(c.is_empty());
    }

    #[test]
    fn a_forgotten_id_runs_again_and_its_old_place_does_not_purge_the_new_run() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut c = ReplyCache::new(s(600), 10);
        c.start(id("a"), m("nfs.export.create"), Some("up/1"));
        assert_eq!(c.finish(&id("a"), b"e", t0, false), ["up/1"]);
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t0),
            Lookup::New
        );
        c.start(id("a"), m("nfs.export.create"), None);
        c.finish(&id("a"), b"ok", t0 + s(2), true);
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t0 + s(600)),
            Lookup::Replay(Bytes::from_static(b"ok"))
        );
        assert_eq!(
            c.lookup(&id("a"), m("nfs.export.create"), None, t0 + s(602)),
            Lookup::New
        );
    }

    #[test]
    fn an_id_restored_twice_lives_by_its_later_time_and_replays_its_later_reply() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut c = ReplyCache::new(s(600), 10);
        c.restore(id("a"), "nfs.export.create", b"first", t0);
        c.restore(id("a"), "nfs.export.create", b"second", t0 + s(300));
        fn c_lookup(c: &mut ReplyCache, t: Instant) -> Lookup {
            c.lookup(&id("a"), "nfs.export.create", None, t)
        }
        assert_eq!(
            c_lookup(&mut c, t0 + s(601)),
            Lookup::Replay(Bytes::from_static(b"second"))
        );
        assert_eq!(c_lookup(&mut c, t0 + s(900)), Lookup::New);
    }

    #[test]
    fn a_reply_comes_back_byte_for_byte() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(600), 10);
        let reply = br#"{"v":1,"id":"a","ok":true,"result":{"changed":false,"export":{"name":"vol1","desired":{"name":"vol1","path":"/srv/a"},"actual":{"path":"/srv/a"}}}}"#;
        c.start(id("a"), "nfs.export.update", None);
        c.finish(&id("a"), reply, t0, true);
        assert_eq!(
            c.lookup(&id("a"), "nfs.export.update", None, t0),
            Lookup::Replay(Bytes::copy_from_slice(reply))
        );
    }

    #[test]
    fn full_cache_refuses_rather_than_forgets() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(600), 2);
        for n in ["a", "b"] {
            assert!(c.has_room(t0));
            c.start(id(n), m("nfs.export.create"), None);
            c.finish(&id(n), b"", t0, true);
        }
        assert!(!c.has_room(t0 + Duration::from_secs(599)));
        assert!(c.has_room(t0 + Duration::from_secs(600)));
        assert_eq!(c.len(), 0);
    }
}
