//! Request id generation.
//!
//! Agents remember request ids for at least ten minutes and answer a repeated id from their
//! reply cache, so an id is the console's promise that two messages mean the same command.
//! Generated ids therefore have to be unique across consoles and across restarts of one
//! console: they combine the console id, the wall clock, a per-process counter and a few random
//! characters. Ids derived for a fan-out are deterministic instead, so that repeating a
//! fan-out with the same base id is as safe as repeating a single call.

use std::sync::atomic::{AtomicU64, Ordering};

use csg_protocol::identity::MAX_REQUEST_ID_LEN;
use csg_protocol::{InstanceId, RequestId};

/// Longest suffix [`IdGenerator`] appends: `-` + ms (≤13) + `-` + counter (≤13) + `-` + 4 random.
const MAX_SUFFIX_LEN: usize = 1 + 13 + 1 + 13 + 1 + RANDOM_LEN;
const RANDOM_LEN: usize = 4;
const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Makes unique request ids of the form `{console_id}-{unix_ms base36}-{counter base36}-{random}`.
///
/// The console id is cut short when needed so that every id fits the 64-character limit; the
/// clock, the counter and the random part still keep ids apart.
#[derive(Debug)]
pub struct IdGenerator {
    prefix: String,
    counter: AtomicU64,
}

impl IdGenerator {
    pub fn new(console_id: &str) -> Self {
        // Keep only characters that are valid in a request id, so `next` can never fail.
        let mut prefix: String = console_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
            .collect();
        prefix.truncate(MAX_REQUEST_ID_LEN - MAX_SUFFIX_LEN);
        if prefix.is_empty() {
            prefix.push_str("csg");
        }
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh id. Allocates one string.
    pub fn next_id(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut s = String::with_capacity(self.prefix.len() + MAX_SUFFIX_LEN);
        s.push_str(&self.prefix);
        s.push('-');
        push_base36(&mut s, csg_protocol::now_ms());
        s.push('-');
        push_base36(&mut s, n);
        s.push('-');
        for _ in 0..RANDOM_LEN {
            s.push(BASE36[fastrand::usize(..BASE36.len())] as char);
        }
        RequestId::new(s).expect("generated ids use only the id charset and fit 64 characters")
    }
}

/// The id a fan-out uses for one instance: `{base}:{instance}`.
///
/// Deterministic, so running the same fan-out again with the same base id re-sends the same id
/// to every instance, which the agents answer from their reply cache. Each instance keeps its own
/// id cache, but all replies arrive on the console's one reply topic, so the ids must still
/// differ per instance for the console to tell the replies apart. When `{base}:{instance}` is
/// longer than 64 characters, the instance part is replaced by a hash of the whole.
pub fn derive_instance_id(base: &RequestId, instance: &InstanceId) -> RequestId {
    let (b, i) = (base.as_str(), instance.as_str());
    if b.len() + 1 + i.len() <= MAX_REQUEST_ID_LEN {
        return RequestId::new(format!("{b}:{i}")).expect("joined ids keep the id charset");
    }
    let mut hash = String::new();
    push_base36(&mut hash, fnv1a64(&[b.as_bytes(), b":", i.as_bytes()]));
    let keep = MAX_REQUEST_ID_LEN - 1 - hash.len();
    RequestId::new(format!("{}:{hash}", &b[..keep.min(b.len())]))
        .expect("hashed ids keep the id charset and fit 64 characters")
}

fn push_base36(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = BASE36[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits and letters were written.
    out.push_str(std::str::from_utf8(&buf[i..]).expect("base36 digits are ASCII"));
}

/// FNV-1a: tiny, stable across versions and platforms (unlike `DefaultHasher`), which matters
/// because a derived id must come out the same when the fan-out is repeated later.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_valid_and_unique() {
        let g = IdGenerator::new("csgctl-1234-abcd");
        let ids: HashSet<String> = (0..10_000).map(|_| g.next_id().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        let one = g.next_id();
        assert!(one.as_str().starts_with("csgctl-1234-abcd-"), "{one}");
        assert_eq!(one.as_str().split('-').count(), 3 + 3);
    }

    #[test]
    fn two_generators_with_one_console_id_differ() {
        let a = IdGenerator::new("c");
        let b = IdGenerator::new("c");
        // Same clock millisecond and counter: the random part keeps them apart (1 in 1.7M).
        assert_ne!(a.next_id(), b.next_id());
    }

    #[test]
    fn long_console_ids_are_cut_to_fit() {
        let g = IdGenerator::new(&"x".repeat(60));
        for _ in 0..100 {
            assert!(g.next_id().as_str().len() <= MAX_REQUEST_ID_LEN);
        }
        // Worst case for the suffix: the largest counter and clock values.
        g.counter.store(u64::MAX, Ordering::Relaxed);
        let id = g.next_id();
        assert!(id.as_str().len() <= MAX_REQUEST_ID_LEN, "{id}");
        assert!(IdGenerator::new("").next_id().as_str().starts_with("csg-"));
        assert!(IdGenerator::new("a/b c")
            .next_id()
            .as_str()
            .starts_with("abc-"));
    }

    #[test]
    fn base36() {
        for (n, s) in [(0, "0"), (35, "z"), (36, "10"), (u64::MAX, "3w5e11264sgsf")] {
            let mut out = String::new();
            push_base36(&mut out, n);
            assert_eq!(out, s);
        }
    }

    #[test]
    fn derived_ids_are_deterministic_and_distinct() {
        let base = RequestId::new("op-1").unwrap();
        let a = InstanceId::new("gw-1").unwrap();
        let b = InstanceId::new("gw-2").unwrap();
        assert_eq!(derive_instance_id(&base, &a).as_str(), "op-1:gw-1");
        assert_eq!(derive_instance_id(&base, &a), derive_instance_id(&base, &a));
        assert_ne!(derive_instance_id(&base, &a), derive_instance_id(&base, &b));
    }

    #[test]
    fn derived_ids_hash_when_too_long() {
        let base = RequestId::new("b".repeat(64)).unwrap();
        let a = InstanceId::new("i".repeat(60)).unwrap();
        let b = InstanceId::new(format!("{}j", "i".repeat(59))).unwrap();
        let (da, db) = (derive_instance_id(&base, &a), derive_instance_id(&base, &b));
        assert!(da.as_str().len() <= MAX_REQUEST_ID_LEN);
        assert_ne!(da, db);
        assert_eq!(da, derive_instance_id(&base, &a));
    }
}
