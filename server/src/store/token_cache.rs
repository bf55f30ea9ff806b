//! Token lookups kept for a moment: every API request presents a token, and looking it up costs
//! a query (a round trip to PostgreSQL), so a token found is remembered for [`TOKEN_TTL`].
//!
//! A revocation reaches every replica through the store alone: an entry is never older than
//! [`TOKEN_TTL`], so a token revoked anywhere (another replica, `csg-consoled token revoke`)
//! stops working here within that time. A revocation through this store also forgets every
//! entry at once. Unknown tokens are not remembered: a token just created works at once, and
//! requests with made-up tokens cannot fill the memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{TokenHash, TokenRecord};

/// How long a token found is used without asking the store again: the bound on how late a
/// revocation takes effect (docs/console.md, "Tokens").
pub const TOKEN_TTL: Duration = Duration::from_millis(500);

/// Entries kept at most; past it the memory is emptied (there are few tokens in practice).
const MAX_ENTRIES: usize = 1024;

#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<TokenHash, (Instant, TokenRecord)>>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, (Instant, TokenRecord)>> {
        // A panic while holding the lock leaves a map that is still whole: use it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token found for `hash` less than [`TOKEN_TTL`] ago.
    pub(crate) fn get(&self, hash: &TokenHash) -> Option<TokenRecord> {
        let mut entries = self.lock();
        match entries.get(hash) {
            Some((at, token)) if at.elapsed() < TOKEN_TTL => Some(token.clone()),
            Some(_) => {
                entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers a token found by a query that started at `asked`: its age counts from
    /// before the query, so a revocation committed while it ran is not missed for longer.
    pub(crate) fn put(&self, hash: TokenHash, asked: Instant, token: TokenRecord) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (asked, token));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Scope, TokenName};

    fn token() -> TokenRecord {
        TokenRecord {
            name: TokenName::new("t").unwrap(),
            scopes: vec![Scope::Read],
            groups: vec![],
            created_ms: 1,
            revoked_ms: None,
        }
    }

    #[test]
    fn entries_expire_and_clear() {
        let cache = TokenCache::default();
        let h = TokenHash::of("a");
        assert!(cache.get(&h).is_none());
        cache.put(h, Instant::now(), token());
        assert_eq!(cache.get(&h), Some(token()));
        assert!(cache.get(&TokenHash::of("b")).is_none());
        cache.clear();
        assert!(cache.get(&h).is_none());
        // Asked longer ago than the TTL: not used.
        let old = Instant::now().checked_sub(TOKEN_TTL).unwrap();
        cache.put(h, old, token());
        assert!(cache.get(&h).is_none());
    }

    #[test]
    fn the_memory_is_bounded() {
        let cache = TokenCache::default();
        for i in 0..(MAX_ENTRIES + 10) {
            cache.put(TokenHash::of(&i.to_string()), Instant::now(), token());
        }
        assert!(cache.lock().len() <= MAX_ENTRIES);
    }
}
