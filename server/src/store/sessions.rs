//! The web console's sessions and the fleet's summary counts: their types, and their SQL for
//! both engines (a macro expanded for each engine's store, so the text is written once).
//!
//! A session's secret lives only in the browser's cookie; the store keeps its SHA-256, like a
//! token's. A session is found only while it has not expired and the token it was opened with
//! is unrevoked (the lookup joins the token), so revoking a token ends its sessions at once,
//! on every replica.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::{Presence, StoreError, TokenHash, TokenRecord};

/// A session's secret as the cookie carries it: 256 random bits. Never stored, never logged.
pub struct SessionSecret(String);

impl SessionSecret {
    /// Longer cookie values are not looked up (a real one is 43 characters).
    pub const MAX_LEN: usize = 128;

    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| StoreError::Other(format!("random source: {e}")))?;
        Ok(SessionSecret(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A value a browser presented: 1 to [`Self::MAX_LEN`] URL-safe base64 characters.
    pub fn presented(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        ok.then(|| SessionSecret(value.to_owned()))
    }

    /// The text of the cookie.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SessionHash {
        SessionHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(…)")
    }
}

/// SHA-256 of a session's secret: what the store keeps and looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHash([u8; 32]);

impl SessionHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A session to open for the token whose hash is `token`.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub hash: SessionHash,
    pub token: TokenHash,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A live session and the (unrevoked) token it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub token: TokenRecord,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// How many gateways there are, by presence and by agent version, and how many drift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSummary {
    pub total: u64,
    pub online: u64,
    pub stale: u64,
    pub offline: u64,
    /// Gateways with at least one resource away from its desired state.
    pub drifting: u64,
    /// Agent version (`None`: never reported) → gateways.
    pub versions: BTreeMap<Option<String>, u64>,
}

impl FleetSummary {
    pub(crate) fn add(&mut self, presence: Presence, version: Option<String>, n: u64, drift: u64) {
        self.total += n;
        match presence {
            Presence::Online => self.online += n,
            Presence::Stale => self.stale += n,
            Presence::Offline => self.offline += n,
        }
        self.drifting += drift;
        *self.versions.entry(version).or_default() += n;
    }
}

/// The SQL of the session and summary methods of [`super::Store`], as inherent methods of one
/// engine's store (`$store` on `$db`); the trait's methods call them.
macro_rules! session_sql {
    ($store:ty, $db:ty) => {
        impl $store {
            pub(crate) async fn sql_create_session(
                &self,
                s: &NewSession,
            ) -> Result<bool, StoreError> {
                // The token is looked up in the same statement: a token revoked between the
                // sign-in's check and this insert opens nothing.
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO web_sessions (id_hash, token_id, created_ms, expires_ms) SELECT ",
                );
                q.push_bind(s.hash.as_bytes().to_vec())
                    .push(", id, ")
                    .push_bind(s.created_ms)
                    .push(", ")
                    .push_bind(s.expires_ms)
                    .push(" FROM tokens WHERE revoked_ms IS NULL AND secret_hash = ")
                    .push_bind(s.token.as_bytes().to_vec());
                let done = q.build().execute(self.writer()).await?;
                Ok(done.rows_affected() == 1)
            }

            pub(crate) async fn sql_find_session(
                &self,
                hash: &SessionHash,
                now_ms: i64,
            ) -> Result<Option<SessionRecord>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT t.name, t.scopes, t.groups, t.created_ms, t.revoked_ms, \
                     s.created_ms AS session_created_ms, s.expires_ms \
                     FROM web_sessions s JOIN tokens t ON t.id = s.token_id \
                     WHERE t.revoked_ms IS NULL AND s.id_hash = ",
                );
                q.push_bind(hash.as_bytes().to_vec())
                    .push(" AND s.expires_ms > ")
                    .push_bind(now_ms);
                let Some(row) = q.build().fetch_optional(self.reader()).await? else {
                    return Ok(None);
                };
                Ok(Some(SessionRecord {
                    token: token_from(&row)?,
                    created_ms: row.try_get("session_created_ms")?,
                    expires_ms: row.try_get("expires_ms")?,
                }))
            }

            pub(crate) async fn sql_delete_session(
                &self,
                hash: &SessionHash,
            ) -> Result<(), StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("DELETE FROM web_sessions WHERE id_hash = ");
                q.push_bind(hash.as_bytes().to_vec());
                q.build().execute(self.writer()).await?;
                Ok(())
            }

            pub(crate) async fn sql_delete_expired_sessions(
                &self,
                now_ms: i64,
            ) -> Result<u64, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("DELETE FROM web_sessions WHERE expires_ms <= ");
                q.push_bind(now_ms);
                Ok(q.build().execute(self.writer()).await?.rows_affected())
            }

            pub(crate) async fn sql_fleet_summary(
                &self,
                region: Option<&Region>,
                groups: &[GroupId],
            ) -> Result<FleetSummary, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT presence, agent_version, COUNT(*) AS n, \
                     SUM(CASE WHEN drift > 0 THEN 1 ELSE 0 END) AS d \
                     FROM instances WHERE 1 = 1",
                );
                if let Some(region) = region {
                    q.push(" AND region = ").push_bind(region.as_str());
                }
                if !groups.is_empty() {
                    q.push(" AND group_id IN (");
                    let mut list = q.separated(", ");
                    for g in groups {
                        list.push_bind(g.as_str());
                    }
                    list.push_unseparated(")");
                }
                q.push(" GROUP BY presence, agent_version");
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut summary = FleetSummary::default();
                for r in &rows {
                    let presence = Presence::parse(&r.try_get::<String, _>("presence")?)
                        .map_err(|e| StoreError::Other(format!("stored presence: {e}")))?;
                    let n: i64 = r.try_get("n")?;
                    // SUM over no rows is NULL; a group has at least one row, but say so.
                    let d: Option<i64> = r.try_get("d")?;
                    summary.add(
                        presence,
                        r.try_get("agent_version")?,
                        u64::try_from(n).unwrap_or(0),
                        u64::try_from(d.unwrap_or(0)).unwrap_or(0),
                    );
                }
                Ok(summary)
            }
        }
    };
}

mod sql {
    use csg_protocol::identity::GroupId;
    use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

    use super::super::engines::{token_from, PgStore, SqliteStore};
    use super::super::{Presence, Region, StoreError};
    use super::{FleetSummary, NewSession, SessionHash, SessionRecord};

    session_sql!(SqliteStore, Sqlite);
    session_sql!(PgStore, Postgres);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_presented_values_checked_and_hashes_stable() {
        let a = SessionSecret::generate().unwrap();
        let b = SessionSecret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
        assert_eq!(
            SessionSecret::presented(a.expose()).unwrap().hash(),
            a.hash()
        );
        for bad in ["", "a b", "x;y", &"a".repeat(129)] {
            assert!(SessionSecret::presented(bad).is_none(), "{bad}");
        }
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
