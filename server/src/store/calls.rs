//! Calls made through the console and the audit log: their types and their SQL (both engines,
//! the same text through `QueryBuilder`).

use csg_protocol::identity::{InstanceId, RequestId};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::engines::{PgStore, SqliteStore};
use super::types::{decode_cursor, encode_cursor, fingerprint_of};
use super::{Page, PageLimit, Region, Store as _, StoreError};

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Stored, sent (or about to be), no answer yet.
    Pending,
    /// The agent answered (`ok` true or false); the reply is kept.
    Answered,
    /// No answer came (timeout, the broker); the error is kept.
    Failed,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Pending => "pending",
            CallState::Answered => "answered",
            CallState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(CallState::Pending),
            "answered" => Ok(CallState::Answered),
            "failed" => Ok(CallState::Failed),
            other => Err(StoreError::Other(format!("stored call state {other:?}"))),
        }
    }
}

/// A call as stored: written before its request is sent, finished once.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub id: RequestId,
    pub region: Region,
    pub instance_id: InstanceId,
    pub method: String,
    /// With secrets redacted.
    pub params: Value,
    /// SHA-256 of instance, method and the whole params: a repeated id must ask the same.
    pub request_hash: String,
    pub token_name: Option<String>,
    pub state: CallState,
    /// The agent's reply envelope as it came.
    pub reply: Option<Value>,
    pub error: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// The call's budget; `None` for calls stored before it was kept.
    pub timeout_ms: Option<i64>,
}

/// What [`crate::store::Store::insert_call`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum CallInsert {
    /// The row is new.
    Inserted,
    /// A call with this id was stored already: this one.
    Existing(Box<CallRecord>),
}

/// Which pending calls a sweeper takes ([`crate::store::Store::claim_stale_calls`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StaleCalls {
    pub region: Region,
    pub now_ms: i64,
    /// Past the end of a call's budget: no process can still be waiting for its answer.
    pub margin_ms: i64,
    /// The budget of calls stored without one.
    pub default_timeout_ms: i64,
    /// The claimed calls are the claimer's until then.
    pub lease_until_ms: i64,
    pub limit: u32,
}

/// One audit event: a change made through the console, or a refused request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEvent {
    pub at_ms: i64,
    pub region: Region,
    pub token_name: Option<String>,
    pub remote_addr: Option<String>,
    /// `call`, `resource.put`, `resource.delete`, `job.create`, … or `refused`.
    pub action: String,
    pub instance_id: Option<String>,
    pub method: Option<String>,
    /// With secrets redacted.
    pub params: Option<Value>,
    /// `ok`, the agent's error code, the console's failure (`timeout`, `unavailable`), or the
    /// HTTP status of a refusal.
    pub outcome: String,
    pub request_id: Option<String>,
}

/// A stored audit event and its id (increasing).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub event: AuditEvent,
}

/// Which audit events a list returns; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AuditFilter {
    pub region: Option<Region>,
    pub token_name: Option<String>,
    pub instance_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// At or after, ms.
    pub since_ms: Option<i64>,
    /// Before, ms.
    pub until_ms: Option<i64>,
}

const CALL_COLUMNS: &str = "id, region, instance_id, method, params, request_hash, token_name, \
     state, reply, error, started_ms, finished_ms, timeout_ms";

const AUDIT_COLUMNS: &str = "id, at_ms, region, token_name, remote_addr, action, instance_id, \
     method, params, outcome, request_id";

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what}: {err}"))
}

fn json_of(what: &str, text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(what, e)))
        .transpose()
}

fn call_from<R: Row>(row: &R) -> Result<CallRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    Ok(CallRecord {
        id: RequestId::new(row.try_get::<String, _>("id")?).map_err(|e| corrupt("call id", e))?,
        region: Region::new(row.try_get::<String, _>("region")?)
            .map_err(|e| corrupt("region", e))?,
        instance_id: InstanceId::new(row.try_get::<String, _>("instance_id")?)
            .map_err(|e| corrupt("instance id", e))?,
        method: row.try_get("method")?,
        params: json_of("call params", Some(row.try_get("params")?))?.unwrap_or(Value::Null),
        request_hash: row.try_get("request_hash")?,
        token_name: row.try_get("token_name")?,
        state: CallState::parse(&row.try_get::<String, _>("state")?)?,
        reply: json_of("call reply", row.try_get("reply")?)?,
        error: row.try_get("error")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        timeout_ms: row.try_get("timeout_ms")?,
    })
}

fn audit_from<R: Row>(row: &R) -> Result<AuditRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
{
    Ok(AuditRecord {
        id: row.try_get("id")?,
        event: AuditEvent {
            at_ms: row.try_get("at_ms")?,
            region: Region::new(row.try_get::<String, _>("region")?)
                .map_err(|e| corrupt("region", e))?,
            token_name: row.try_get("token_name")?,
            remote_addr: row.try_get("remote_addr")?,
            action: row.try_get("action")?,
            instance_id: row.try_get("instance_id")?,
            method: row.try_get("method")?,
            params: json_of("audit params", row.try_get("params")?)?,
            outcome: row.try_get("outcome")?,
            request_id: row.try_get("request_id")?,
        },
    })
}

macro_rules! calls_sql {
    ($store:ty, $db:ty) => {
        impl $store {
            pub(super) async fn sql_insert_call(
                &self,
                c: &CallRecord,
            ) -> Result<CallInsert, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("INSERT INTO calls ({CALL_COLUMNS}) "));
                q.push_values([c], |mut b, c| {
                    b.push_bind(c.id.as_str())
                        .push_bind(c.region.as_str())
                        .push_bind(c.instance_id.as_str())
                        .push_bind(c.method.as_str())
                        .push_bind(c.params.to_string())
                        .push_bind(c.request_hash.as_str())
                        .push_bind(c.token_name.as_deref())
                        .push_bind(c.state.as_str())
                        .push_bind(c.reply.as_ref().map(Value::to_string))
                        .push_bind(c.error.as_deref())
                        .push_bind(c.started_ms)
                        .push_bind(c.finished_ms)
                        .push_bind(c.timeout_ms);
                });
                // The id is the key: a second insert of it (a retried Idempotency-Key, two
                // replicas) finds the first row instead of failing.
                q.push(" ON CONFLICT (id) DO NOTHING");
                let done = q.build().execute(self.writer()).await?;
                if done.rows_affected() == 1 {
                    return Ok(CallInsert::Inserted);
                }
                match self.sql_get_call(c.id.as_str()).await? {
                    Some(found) => Ok(CallInsert::Existing(Box::new(found))),
                    None => Err(StoreError::Other(format!(
                        "call {} neither inserted nor found",
                        c.id.as_str()
                    ))),
                }
            }

            pub(super) async fn sql_finish_call(
                &self,
                id: &RequestId,
                state: CallState,
                reply: Option<&Value>,
                error: Option<&str>,
                finished_ms: i64,
            ) -> Result<(), StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new("UPDATE calls SET state = ");
                q.push_bind(state.as_str())
                    .push(", reply = ")
                    .push_bind(reply.map(Value::to_string))
                    .push(", error = ")
                    .push_bind(error)
                    .push(", finished_ms = ")
                    .push_bind(finished_ms)
                    .push(" WHERE id = ")
                    .push_bind(id.as_str())
                    // An answer is final: a later failure of a re-send never overwrites it.
                    .push(" AND state <> 'answered'");
                q.build().execute(self.writer()).await?;
                Ok(())
            }

            pub(super) async fn sql_get_call(
                &self,
                id: &str,
            ) -> Result<Option<CallRecord>, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = "));
                q.push_bind(id);
                let row = q.build().fetch_optional(self.reader()).await?;
                row.as_ref().map(call_from).transpose()
            }

            pub(super) async fn sql_list_calls(
                &self,
                region: &Region,
                instance: &InstanceId,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<CallRecord>, StoreError> {
                let fingerprint = fingerprint_of(&("calls", region, instance.as_str()));
                let before: Option<(i64, String)> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE region = "));
                q.push_bind(region.as_str())
                    .push(" AND instance_id = ")
                    .push_bind(instance.as_str());
                if let Some((started_ms, id)) = before {
                    q.push(" AND (started_ms, id) < (")
                        .push_bind(started_ms)
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                q.push(" ORDER BY started_ms DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows.iter().map(call_from).collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items.last().map(|c| {
                        encode_cursor(&fingerprint, (c.started_ms, c.id.as_str().to_owned()))
                    })
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            pub(super) async fn sql_claim_stale_calls(
                &self,
                claim: &StaleCalls,
            ) -> Result<Vec<CallRecord>, StoreError> {
                // PostgreSQL: a row another replica is claiming right now is skipped, not
                // waited for (its UPDATE holds the row lock); SQLite has one writer at a time.
                let skip_locked = if self.engine() == super::Engine::Postgres {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    ""
                };
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("UPDATE calls SET swept_until_ms = ");
                q.push_bind(claim.lease_until_ms)
                    .push(
                        " WHERE id IN (SELECT id FROM calls WHERE state = 'pending' AND region = ",
                    )
                    .push_bind(claim.region.as_str())
                    // The index's range: every call it takes started at least a margin ago.
                    .push(" AND started_ms <= ")
                    .push_bind(claim.now_ms.saturating_sub(claim.margin_ms))
                    .push(" AND started_ms + COALESCE(timeout_ms, ")
                    .push_bind(claim.default_timeout_ms)
                    .push(") + ")
                    .push_bind(claim.margin_ms)
                    .push(" <= ")
                    .push_bind(claim.now_ms)
                    .push(" AND (swept_until_ms IS NULL OR swept_until_ms <= ")
                    .push_bind(claim.now_ms)
                    .push(") ORDER BY started_ms, id LIMIT ")
                    .push_bind(i64::from(claim.limit))
                    .push(skip_locked)
                    .push(format!(") RETURNING {CALL_COLUMNS}"));
                let rows = q.build().fetch_all(self.writer()).await?;
                let mut out = rows.iter().map(call_from).collect::<Result<Vec<_>, _>>()?;
                out.sort_by(|a, b| {
                    (a.started_ms, a.id.as_str()).cmp(&(b.started_ms, b.id.as_str()))
                });
                Ok(out)
            }

            pub(super) async fn sql_record_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO audit (at_ms, region, token_name, remote_addr, action, \
                     instance_id, method, params, outcome, request_id) ",
                );
                q.push_values([e], |mut b, e| {
                    b.push_bind(e.at_ms)
                        .push_bind(e.region.as_str())
                        .push_bind(e.token_name.as_deref())
                        .push_bind(e.remote_addr.as_deref())
                        .push_bind(e.action.as_str())
                        .push_bind(e.instance_id.as_deref())
                        .push_bind(e.method.as_deref())
                        .push_bind(e.params.as_ref().map(Value::to_string))
                        .push_bind(e.outcome.as_str())
                        .push_bind(e.request_id.as_deref());
                });
                q.build().execute(self.writer()).await?;
                Ok(())
            }

            pub(super) async fn sql_list_audit(
                &self,
                filter: &AuditFilter,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<AuditRecord>, StoreError> {
                let fingerprint = fingerprint_of(&("audit", filter));
                let before: Option<(i64, i64)> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1 = 1"));
                if let Some(r) = &filter.region {
                    q.push(" AND region = ").push_bind(r.as_str());
                }
                for (column, value) in [
                    ("token_name", &filter.token_name),
                    ("instance_id", &filter.instance_id),
                    ("action", &filter.action),
                    ("outcome", &filter.outcome),
                ] {
                    if let Some(v) = value {
                        q.push(format!(" AND {column} = ")).push_bind(v.as_str());
                    }
                }
                if let Some(s) = filter.since_ms {
                    q.push(" AND at_ms >= ").push_bind(s);
                }
                if let Some(u) = filter.until_ms {
                    q.push(" AND at_ms < ").push_bind(u);
                }
                if let Some((at_ms, id)) = before {
                    q.push(" AND (at_ms, id) < (")
                        .push_bind(at_ms)
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                q.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows.iter().map(audit_from).collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items
                        .last()
                        .map(|a| encode_cursor(&fingerprint, (a.event.at_ms, a.id)))
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }
        }
    };
}

calls_sql!(SqliteStore, Sqlite);
calls_sql!(PgStore, Postgres);
