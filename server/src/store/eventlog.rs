//! The event log: every live event stored in order, with the ids clients resume from, and the
//! webhook deliveries of each event stored with it. Types, and the SQL for both engines (a
//! macro expanded for each engine's store).
//!
//! Ids must become visible in increasing order, or a reader asking for "ids above the last I
//! saw" could pass one that commits late. SQLite has one writer at a time (`BEGIN IMMEDIATE`);
//! on PostgreSQL an appending transaction takes the table's `EXCLUSIVE` lock first (plain reads
//! go on; other appends and the pruning wait), so its ids are drawn and committed before the
//! next writer draws any.
//!
//! Every replica sees the same presence change and stores it; the copies after the first are
//! recognised in the same transaction and left out (see [`EventLogStore::append_events`]).

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::{PgStore, SqliteStore, StoreError};

/// An event to log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLogEvent {
    /// `presence`, `call` or `job`.
    pub kind: &'static str,
    pub region: Option<String>,
    pub instance_id: Option<String>,
    pub group_id: Option<String>,
    /// Job events: the token that created the job, what a token limited to groups is
    /// filtered by for them (it sees the jobs it created). Never in `data`.
    pub created_by: Option<String>,
    /// Presence only: the state entered and since when.
    pub presence: Option<(String, i64)>,
    /// The event as a JSON object, without its id.
    pub data: String,
    /// The replica storing it.
    pub origin: String,
    pub at_ms: i64,
}

/// A logged event.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub id: i64,
    pub kind: String,
    pub group_id: Option<String>,
    /// Job events: the token that created the job (`None` for one logged before migration
    /// 0014).
    pub created_by: Option<String>,
    /// The event as a JSON object, without its id.
    pub data: String,
    pub at_ms: i64,
}

/// A webhook and the kinds of event it takes (`presence`, `call`, `job`).
#[derive(Debug, Clone, PartialEq)]
pub struct HookKinds {
    pub webhook: String,
    pub kinds: Vec<&'static str>,
}

/// The log's extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The highest id stored (0: none ever).
    pub newest: i64,
    /// The highest id removed by pruning (0: none).
    pub pruned_through: i64,
}

/// The body of an event as clients get it: `{"event_id": ID, …the event…}`. `data` is a JSON
/// object (the log stores nothing else), so the id goes in front of its first member.
pub fn with_id(id: i64, data: &str) -> String {
    let rest = data.trim_start().strip_prefix('{').unwrap_or("}");
    if rest.trim_start().starts_with('}') {
        format!("{{\"event_id\":{id}}}")
    } else {
        format!("{{\"event_id\":{id},{rest}")
    }
}

#[async_trait]
pub trait EventLogStore: Send + Sync {
    /// Logs events in this order, in one transaction, with a pending webhook delivery of each
    /// to every hook that takes its kind (payload [`with_id`]; at most one per webhook and
    /// event). A presence change is left out (`None` in its place) when the log has the same
    /// change of the same gateway already (state and since), or when the gateway's last logged
    /// presence is that state already: another replica stored it first.
    async fn append_events(
        &self,
        events: &[NewLogEvent],
        hooks: &[HookKinds],
    ) -> Result<Vec<Option<i64>>, StoreError>;

    /// Up to `limit` events with ids above `after`, in id order.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<LogRow>, StoreError>;

    async fn log_bounds(&self) -> Result<LogBounds, StoreError>;

    /// Removes events older than `older_than_ms` and all but the newest `keep`; returns how
    /// many went. Records the highest id removed.
    async fn prune_events(&self, older_than_ms: i64, keep: u64) -> Result<u64, StoreError>;
}

macro_rules! event_log_impl {
    ($store:ty, $db:ty, $lock:expr) => {
        #[async_trait]
        impl EventLogStore for $store {
            async fn append_events(
                &self,
                events: &[NewLogEvent],
                hooks: &[HookKinds],
            ) -> Result<Vec<Option<i64>>, StoreError> {
                let mut ids = Vec::with_capacity(events.len());
                if events.is_empty() {
                    return Ok(ids);
                }
                let mut tx = self.begin_write().await?;
                if let Some(lock) = $lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                for e in events {
                    if let (Some((to, since)), Some(region), Some(instance)) =
                        (&e.presence, &e.region, &e.instance_id)
                    {
                        let mut q: QueryBuilder<$db> = QueryBuilder::new(
                            "SELECT presence_to FROM event_log WHERE kind = 'presence' AND region = ",
                        );
                        q.push_bind(region.as_str())
                            .push(" AND instance_id = ")
                            .push_bind(instance.as_str())
                            .push(" AND ((presence_to = ")
                            .push_bind(to.as_str())
                            .push(" AND since_ms = ")
                            .push_bind(*since)
                            .push(") OR id = (SELECT MAX(id) FROM event_log WHERE kind = 'presence' AND region = ")
                            .push_bind(region.as_str())
                            .push(" AND instance_id = ")
                            .push_bind(instance.as_str())
                            .push("))");
                        let rows = q.build().fetch_all(&mut *tx).await?;
                        let mut seen = false;
                        for r in &rows {
                            let state: Option<String> = r.try_get("presence_to")?;
                            seen |= state.as_deref() == Some(to.as_str());
                        }
                        if seen {
                            ids.push(None);
                            continue;
                        }
                    }
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO event_log (kind, region, instance_id, group_id, created_by, \
                         presence_to, since_ms, origin, at_ms, data) ",
                    );
                    q.push_values([e], |mut b, e| {
                        b.push_bind(e.kind)
                            .push_bind(e.region.as_deref())
                            .push_bind(e.instance_id.as_deref())
                            .push_bind(e.group_id.as_deref())
                            .push_bind(e.created_by.as_deref())
                            .push_bind(e.presence.as_ref().map(|p| p.0.as_str()))
                            .push_bind(e.presence.as_ref().map(|p| p.1))
                            .push_bind(e.origin.as_str())
                            .push_bind(e.at_ms)
                            .push_bind(e.data.as_str());
                    });
                    q.push(" RETURNING id");
                    let id: i64 = q.build().fetch_one(&mut *tx).await?.try_get("id")?;
                    let takers: Vec<&HookKinds> =
                        hooks.iter().filter(|h| h.kinds.contains(&e.kind)).collect();
                    if !takers.is_empty() {
                        let payload = with_id(id, &e.data);
                        let mut q: QueryBuilder<$db> = QueryBuilder::new(
                            "INSERT INTO webhook_deliveries (webhook, event_type, payload, state, \
                             attempts, created_ms, next_attempt_ms, updated_ms, event_id) ",
                        );
                        q.push_values(takers, |mut b, h| {
                            b.push_bind(h.webhook.as_str())
                                .push_bind(e.kind)
                                .push_bind(payload.as_str())
                                .push_bind("pending")
                                .push_bind(0_i32)
                                .push_bind(e.at_ms)
                                .push_bind(e.at_ms)
                                .push_bind(e.at_ms)
                                .push_bind(id);
                        });
                        q.push(" ON CONFLICT (webhook, event_id) DO NOTHING");
                        q.build().execute(&mut *tx).await?;
                    }
                    ids.push(Some(id));
                }
                tx.commit().await?;
                Ok(ids)
            }

            async fn events_after(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<LogRow>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT id, kind, group_id, created_by, data, at_ms FROM event_log WHERE id > ",
                );
                q.push_bind(after)
                    .push(" ORDER BY id LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = q.build().fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|r| {
                        Ok(LogRow {
                            id: r.try_get("id")?,
                            kind: r.try_get("kind")?,
                            group_id: r.try_get("group_id")?,
                            created_by: r.try_get("created_by")?,
                            data: r.try_get("data")?,
                            at_ms: r.try_get("at_ms")?,
                        })
                    })
                    .collect()
            }

            async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
                let row = sqlx::query(
                    "SELECT (SELECT MAX(id) FROM event_log) AS newest, \
                     (SELECT pruned_through FROM event_log_meta WHERE one = 1) AS pruned",
                )
                .fetch_one(self.reader())
                .await?;
                let newest: Option<i64> = row.try_get("newest")?;
                let pruned: Option<i64> = row.try_get("pruned")?;
                let pruned_through = pruned.unwrap_or(0);
                Ok(LogBounds {
                    // Everything may have been pruned: the newest id given out is then the
                    // highest removed.
                    newest: newest.unwrap_or(0).max(pruned_through),
                    pruned_through,
                })
            }

            async fn prune_events(&self, older_than_ms: i64, keep: u64) -> Result<u64, StoreError> {
                let keep = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
                let mut tx = self.begin_write().await?;
                if let Some(lock) = $lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                // The highest id to remove: the newest that is too old, or the one just below
                // the `keep` newest, whichever is higher.
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT MAX(id) AS id FROM event_log WHERE at_ms < ");
                q.push_bind(older_than_ms);
                let by_age: Option<i64> = q.build().fetch_one(&mut *tx).await?.try_get("id")?;
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT id FROM event_log ORDER BY id DESC LIMIT 1 OFFSET ");
                q.push_bind(keep);
                let by_count: Option<i64> = match q.build().fetch_optional(&mut *tx).await? {
                    Some(r) => Some(r.try_get("id")?),
                    None => None,
                };
                let Some(through) = by_age.max(by_count) else {
                    return Ok(0);
                };
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("DELETE FROM event_log WHERE id <= ");
                q.push_bind(through);
                let n = q.build().execute(&mut *tx).await?.rows_affected();
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("UPDATE event_log_meta SET pruned_through = ");
                q.push_bind(through)
                    .push(" WHERE one = 1 AND pruned_through < ")
                    .push_bind(through);
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(n)
            }
        }
    };
}

event_log_impl!(SqliteStore, Sqlite, None::<&str>);
event_log_impl!(
    PgStore,
    Postgres,
    Some("LOCK TABLE event_log IN EXCLUSIVE MODE")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_goes_first_in_the_body() {
        assert_eq!(
            with_id(7, "{\"type\":\"job\",\"id\":\"j\"}"),
            "{\"event_id\":7,\"type\":\"job\",\"id\":\"j\"}"
        );
        assert_eq!(with_id(3, "{}"), "{\"event_id\":3}");
        let v: serde_json::Value = serde_json::from_str(&with_id(9, " { \"a\" : 1 }")).unwrap();
        assert_eq!(v, serde_json::json!({"event_id": 9, "a": 1}));
    }
}
