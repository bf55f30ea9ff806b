//! The two engines. Their queries are the same text: sqlx's `QueryBuilder` writes each engine's
//! placeholders, and the few differences (how a write transaction begins, the substring
//! function, the pools) are the macro's arguments or the structs' own methods.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use csg_protocol::identity::{GroupId, InstanceId};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite, Transaction};

use super::token_cache::TokenCache;
use super::tokens::{groups_from_text, groups_to_text, scopes_from_text, scopes_to_text};
use super::types::{decode_cursor, encode_cursor, fingerprint_of, SortValue};
use super::{
    Engine, HostSample, InstanceFilter, InstanceOrder, InstanceRow, JsonText, NewToken, Page,
    PageLimit, Presence, PresenceEvent, Region, SortKey, StorageSummary, Store, StoreError,
    StoreOptions, TokenHash, TokenName, TokenRecord,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const INSTANCE_COLUMNS: &str = "region, instance_id, group_id, presence, since_ms, reason, \
     last_seen_ms, agent_version, heartbeat, storage, updated_ms";

/// The columns written: those read, and `drift` (kept apart so it can be filtered on).
const INSTANCE_WRITE_COLUMNS: &str = "region, instance_id, group_id, presence, since_ms, reason, \
     last_seen_ms, agent_version, heartbeat, storage, updated_ms, drift, recent";

// Rows per INSERT statement: 13 binds each, well under SQLite's 32766 and PostgreSQL's 65535.
const ROWS_PER_STATEMENT: usize = 500;

/// SQLite: one file in WAL mode. Writes go through a pool of one connection and begin with
/// `BEGIN IMMEDIATE`, so the write lock is taken at the start of a transaction (waiting up to
/// the busy timeout for another process) rather than failing halfway through it; readers have
/// their own read-only pool and never wait for the writer.
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    tokens: TokenCache,
}

impl SqliteStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        // sqlx names an in-memory database with a generated file URI, so look at the URL.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Invalid(
                "store url: SQLite needs a file (readers and the writer use separate connections)"
                    .to_owned(),
            ));
        }
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses at most the last transactions on power loss, never
            // consistency; FULL would fsync every batch.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        // Another process creating the same new file may hold it locked for the moment it
        // takes to switch it to WAL, and SQLite then refuses at once rather than waiting out
        // the busy timeout: try again until that timeout has passed.
        let deadline = Instant::now() + options.busy_timeout;
        let write = loop {
            match Self::open_writer(&base, options).await {
                Ok(pool) => break pool,
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let read = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.read_only(true))
            .await?;
        Ok(SqliteStore {
            write,
            read,
            tokens: TokenCache::default(),
        })
    }

    async fn open_writer(
        base: &SqliteConnectOptions,
        options: &StoreOptions,
    ) -> Result<SqlitePool, StoreError> {
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        // sqlx takes no lock to migrate SQLite: two processes opening a new file together both
        // find a migration missing, and the second to apply it fails ("table already exists")
        // after the first committed. Its transaction rolled back, so running again finds that
        // migration applied and goes on with the next. Each such failure means another process
        // applied one more migration, so there can be at most one per migration: a failure
        // beyond that is a real one.
        let mut retries = SQLITE_MIGRATIONS.iter().count();
        loop {
            match SQLITE_MIGRATIONS.run(&write).await {
                Ok(()) => break,
                Err(_) if retries > 0 => retries -= 1,
                Err(e) => return Err(e.into()),
            }
        }
        SQLITE_MIGRATIONS.run(&write).await?;
        Ok(write)
    }

    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub(super) fn reader(&self) -> &SqlitePool {
        &self.read
    }

    pub(super) fn writer(&self) -> &SqlitePool {
        &self.write
    }

    async fn close_pools(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// A pooled PostgreSQL connection idle this long is checked (one round trip) before use.
const PG_CHECK_IDLE: Duration = Duration::from_secs(1);

/// PostgreSQL: one pool. Several replicas may share the database; migrations take sqlx's
/// advisory lock, so replicas starting together migrate once.
pub struct PgStore {
    pool: PgPool,
    tokens: TokenCache,
}

impl PgStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // A connection may have died with a restarted server. sqlx checks each one as it
            // goes back to the pool (a round trip, off the request's path) and closes those
            // that fail; one idle for longer than PG_CHECK_IDLE (a server restart takes
            // longer) is checked again before use. Checking every one before use would add a
            // round trip to every query.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PG_CHECK_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        PG_MIGRATIONS.run(&pool).await?;
        Ok(PgStore {
            pool,
            tokens: TokenCache::default(),
        })
    }

    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    pub(super) fn reader(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what}: {err}"))
}

fn storage_text(s: Option<StorageSummary>) -> Option<String> {
    s.map(|s| format!(r#"{{"count":{},"drift":{}}}"#, s.count, s.drift))
}

fn storage_of(text: Option<String>) -> Result<Option<StorageSummary>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("storage", e)))
        .transpose()
}

/// A stored document is checked (a scan, no tree) and kept as text.
fn json_text(what: &str, text: Option<String>) -> Result<Option<JsonText>, StoreError> {
    text.map(|t| JsonText::parse(t).map_err(|e| corrupt(what, e)))
        .transpose()
}

/// The newest row of each instance, in the order first seen: one statement may not touch a row
/// twice (PostgreSQL refuses it), and the newest must win.
fn newest_per_instance(rows: &[InstanceRow]) -> Vec<&InstanceRow> {
    let mut at: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    let mut out: Vec<&InstanceRow> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (row.region.as_str(), row.instance_id.as_str());
        match at.get(&key) {
            Some(&i) => {
                if row.updated_ms >= out[i].updated_ms {
                    out[i] = row;
                }
            }
            None => {
                at.insert(key, out.len());
                out.push(row);
            }
        }
    }
    out
}

/// The column of a sort key, which its index (migration 0012) holds after the region, so the
/// planner walks that index; `None` for the primary key's order. `SortKey::value_of` computes the
/// same value from a row, for the cursor.
fn sort_expression(key: SortKey) -> Option<&'static str> {
    match key {
        SortKey::Id => None,
        SortKey::Group => Some("group_id"),
        SortKey::Presence => Some("presence_rank"),
        SortKey::Since => Some("since_ms"),
        SortKey::Version => Some("version_key"),
        SortKey::Drift => Some("drift"),
    }
}

/// Every column of a stored row, when it is not older than the stored one; its host sample
/// is appended to the recent ones ([`recent_set`]).
fn upsert_all(engine: Engine) -> String {
    format!(
        " ON CONFLICT (region, instance_id) DO UPDATE SET \
         group_id = excluded.group_id, presence = excluded.presence, \
         since_ms = excluded.since_ms, reason = excluded.reason, \
         last_seen_ms = excluded.last_seen_ms, agent_version = excluded.agent_version, \
         heartbeat = excluded.heartbeat, storage = excluded.storage, \
         updated_ms = excluded.updated_ms, drift = excluded.drift, {} \
         WHERE instances.updated_ms <= excluded.updated_ms",
        recent_set(engine)
    )
}

/// The columns no index holds, for a stored row whose indexed columns (`group_id`,
/// `presence`, `since_ms`, `agent_version`, `drift`) keep their values; other rows are left
/// alone. (Those change with a presence, a group, an upgrade or a change of drift; the
/// columns set here change with every heartbeat.) SQLite's alone: see `upsert_instances`.
fn upsert_unindexed() -> String {
    format!(
        " ON CONFLICT (region, instance_id) DO UPDATE SET \
         reason = excluded.reason, last_seen_ms = excluded.last_seen_ms, \
         heartbeat = excluded.heartbeat, storage = excluded.storage, \
         updated_ms = excluded.updated_ms, {} \
         WHERE instances.updated_ms <= excluded.updated_ms \
         AND instances.group_id = excluded.group_id \
         AND instances.presence = excluded.presence AND instances.drift = excluded.drift \
         AND instances.since_ms = excluded.since_ms \
         AND instances.agent_version IS excluded.agent_version",
        recent_set(Engine::Sqlite)
    )
}

/// `recent` (migration 0013) with the row's sample appended and the oldest cut past
/// [`HostSample::KEPT`]: a row written without a new heartbeat (a presence, a replica's
/// rewrite) carries the sample already last, or none, and leaves the column as it is.
fn recent_set(engine: Engine) -> String {
    let (len, keep) = (HostSample::LEN, HostSample::LEN * HostSample::KEPT);
    match engine {
        Engine::Sqlite => format!(
            "recent = CASE WHEN excluded.recent = '' \
             OR substr(instances.recent, -{len}) = excluded.recent THEN instances.recent \
             ELSE substr(instances.recent || excluded.recent, -{keep}) END"
        ),
        Engine::Postgres => format!(
            "recent = CASE WHEN excluded.recent = '' \
             OR right(instances.recent, {len}) = excluded.recent THEN instances.recent \
             ELSE right(instances.recent || excluded.recent, {keep}) END"
        ),
    }
}

/// `INSERT` of these rows, then `on_conflict`.
fn upsert_statement<'a, DB>(rows: &'a [&'a InstanceRow], on_conflict: &str) -> QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q: QueryBuilder<DB> =
        QueryBuilder::new(format!("INSERT INTO instances ({INSTANCE_WRITE_COLUMNS}) "));
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.region.as_str())
            .push_bind(r.instance_id.as_str())
            .push_bind(r.group_id.as_str())
            .push_bind(r.presence.as_str())
            .push_bind(r.since_ms)
            .push_bind(r.reason.as_deref())
            .push_bind(r.last_seen_ms)
            .push_bind(r.agent_version.as_deref())
            .push_bind(r.heartbeat.as_ref().map(JsonText::as_str))
            .push_bind(storage_text(r.storage))
            .push_bind(r.updated_ms)
            .push_bind(r.drift())
            .push_bind(r.sample.map(|h| h.encode()).unwrap_or_default());
    });
    q.push(on_conflict);
    q
}

fn instance_from<R: Row>(row: &R) -> Result<InstanceRow, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    Ok(InstanceRow {
        region: Region::new(row.try_get::<String, _>("region")?)
            .map_err(|e| corrupt("region", e))?,
        instance_id: InstanceId::new(row.try_get::<String, _>("instance_id")?)
            .map_err(|e| corrupt("instance id", e))?,
        group_id: GroupId::new(row.try_get::<String, _>("group_id")?)
            .map_err(|e| corrupt("group id", e))?,
        presence: Presence::parse(&row.try_get::<String, _>("presence")?)
            .map_err(|e| corrupt("presence", e))?,
        since_ms: row.try_get("since_ms")?,
        reason: row.try_get("reason")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        agent_version: row.try_get("agent_version")?,
        heartbeat: json_text("heartbeat", row.try_get("heartbeat")?)?,
        storage: storage_of(row.try_get("storage")?)?,
        updated_ms: row.try_get("updated_ms")?,
        sample: None,
    })
}

fn event_from<R: Row>(row: &R) -> Result<(PresenceEvent, i64), StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
{
    let event = PresenceEvent {
        region: Region::new(row.try_get::<String, _>("region")?)
            .map_err(|e| corrupt("region", e))?,
        instance_id: InstanceId::new(row.try_get::<String, _>("instance_id")?)
            .map_err(|e| corrupt("instance id", e))?,
        state: Presence::parse(&row.try_get::<String, _>("state")?)
            .map_err(|e| corrupt("presence", e))?,
        reason: row.try_get("reason")?,
        at_ms: row.try_get("at_ms")?,
    };
    Ok((event, row.try_get("id")?))
}

pub(super) fn token_from<R: Row>(row: &R) -> Result<TokenRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    Ok(TokenRecord {
        name: TokenName::new(row.try_get::<String, _>("name")?)
            .map_err(|e| corrupt("token name", e))?,
        scopes: scopes_from_text(&row.try_get::<String, _>("scopes")?)?,
        groups: groups_from_text(&row.try_get::<String, _>("groups")?)?,
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

macro_rules! store_impl {
    ($store:ty, $db:ty, $engine:expr, $substr:literal) => {
        #[async_trait]
        impl Store for $store {
            fn engine(&self) -> Engine {
                $engine
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn upsert_instances(&self, rows: &[InstanceRow]) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let rows = newest_per_instance(rows);
                let all = upsert_all($engine);
                let mut tx = self.begin_write().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    // SQLite rewrites the entries of every index whose columns an UPDATE
                    // sets, changed or not (PostgreSQL compares the values). Most rows keep
                    // their indexed columns, so on SQLite a first statement sets
                    // only the other columns, for rows whose indexed ones are unchanged; when
                    // it did not write every row of the chunk (a presence or group changed, a
                    // row older than the stored one), the whole chunk is written again in
                    // full, which gives the same rows as the full statement alone.
                    if $engine == Engine::Sqlite {
                        let written = upsert_statement::<$db>(chunk, &upsert_unindexed())
                            .build()
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        if written == chunk.len() as u64 {
                            continue;
                        }
                    }
                    upsert_statement::<$db>(chunk, &all)
                        .build()
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_instance(
                &self,
                region: &Region,
                id: &InstanceId,
            ) -> Result<Option<InstanceRow>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances WHERE region = "
                ));
                q.push_bind(region.as_str())
                    .push(" AND instance_id = ")
                    .push_bind(id.as_str());
                let row = q.build().fetch_optional(self.reader()).await?;
                row.as_ref().map(instance_from).transpose()
            }

            async fn host_samples(
                &self,
                region: &Region,
                id: &InstanceId,
                now_ms: u64,
            ) -> Result<Vec<HostSample>, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT recent FROM instances WHERE region = ");
                q.push_bind(region.as_str())
                    .push(" AND instance_id = ")
                    .push_bind(id.as_str());
                let text: Option<String> =
                    q.build_query_scalar().fetch_optional(self.reader()).await?;
                Ok(text
                    .map(|t| HostSample::parse_all(&t, now_ms))
                    .unwrap_or_default())
            }

            async fn list_instances(
                &self,
                filter: &InstanceFilter,
                order: InstanceOrder,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<InstanceRow>, StoreError> {
                filter.check()?;
                // The order is part of what a cursor was made under: a key from one order
                // resumes nowhere sensible in another.
                let fingerprint = format!("{}.{}", filter.fingerprint(), order.as_param());
                let after: Option<(Option<SortValue>, String, String)> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let expr = sort_expression(order.key);
                let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1"
                ));
                if let Some(region) = &filter.region {
                    q.push(" AND region = ").push_bind(region.as_str());
                }
                if let Some(presence) = filter.presence {
                    q.push(" AND presence = ").push_bind(presence.as_str());
                }
                if !filter.groups.is_empty() {
                    q.push(" AND group_id IN (");
                    let mut list = q.separated(", ");
                    for g in &filter.groups {
                        list.push_bind(g.as_str());
                    }
                    list.push_unseparated(")");
                }
                if let Some(version) = &filter.version {
                    q.push(" AND agent_version = ").push_bind(version.as_str());
                }
                match filter.drift {
                    Some(true) => {
                        q.push(" AND drift > 0");
                    }
                    Some(false) => {
                        q.push(" AND drift = 0");
                    }
                    None => {}
                }
                if !filter.ids.is_empty() {
                    q.push(" AND instance_id IN (");
                    let mut list = q.separated(", ");
                    for id in &filter.ids {
                        list.push_bind(id.as_str());
                    }
                    list.push_unseparated(")");
                }
                if let Some(text) = &filter.q {
                    q.push(concat!(" AND ", $substr, "(instance_id, "))
                        .push_bind(text.as_str())
                        .push(") > 0");
                }
                // Keyset paging: the order's index (region, its column, instance id) finds
                // where the page starts, so page 1000 costs what page 1 does (OFFSET would read
                // and drop every row before it). With the region fixed by the filter (the
                // usual list: a console lists its own region) the index is walked after the
                // region's equality, so the region leaves the comparison and the order.
                let (cmp, dir) = if order.descending {
                    (" < ", " DESC")
                } else {
                    (" > ", "")
                };
                let mut columns: Vec<&str> = Vec::with_capacity(3);
                if filter.region.is_none() {
                    columns.push("region");
                }
                columns.extend(expr);
                columns.push("instance_id");
                if let Some((value, region, id)) = after {
                    q.push(" AND (")
                        .push(columns.join(", "))
                        .push(")")
                        .push(cmp)
                        .push("(");
                    if filter.region.is_none() {
                        q.push_bind(region).push(", ");
                    }
                    match (expr, value) {
                        (None, None) => {}
                        (Some(_), Some(SortValue::Int(v))) => {
                            q.push_bind(v).push(", ");
                        }
                        (Some(_), Some(SortValue::Text(v))) => {
                            q.push_bind(v).push(", ");
                        }
                        _ => {
                            return Err(StoreError::Invalid(
                                "cursor: made for another order; start again without it".to_owned(),
                            ))
                        }
                    }
                    q.push_bind(id).push(")");
                }
                q.push(" ORDER BY ")
                    .push(
                        columns
                            .iter()
                            .map(|c| format!("{c}{dir}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                    .push(" LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows
                    .iter()
                    .map(instance_from)
                    .collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items.last().map(|last| {
                        encode_cursor(
                            &fingerprint,
                            (
                                order.key.value_of(last),
                                last.region.as_str(),
                                last.instance_id.as_str(),
                            ),
                        )
                    })
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            async fn record_presence_events(
                &self,
                events: &[PresenceEvent],
            ) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write().await?;
                for chunk in events.chunks(ROWS_PER_STATEMENT) {
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO presence_events (region, instance_id, state, reason, at_ms) ",
                    );
                    q.push_values(chunk, |mut b, e| {
                        b.push_bind(e.region.as_str())
                            .push_bind(e.instance_id.as_str())
                            .push_bind(e.state.as_str())
                            .push_bind(e.reason.as_deref())
                            .push_bind(e.at_ms);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_presence_events(
                &self,
                region: &Region,
                id: &InstanceId,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<PresenceEvent>, StoreError> {
                let fingerprint = fingerprint_of(&("presence_events", region, id));
                let before: Option<(i64, i64)> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT id, region, instance_id, state, reason, at_ms FROM presence_events \
                     WHERE region = ",
                );
                q.push_bind(region.as_str())
                    .push(" AND instance_id = ")
                    .push_bind(id.as_str());
                if let Some((at_ms, event_id)) = before {
                    q.push(" AND (at_ms, id) < (")
                        .push_bind(at_ms)
                        .push(", ")
                        .push_bind(event_id)
                        .push(")");
                }
                q.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items
                        .last()
                        .map(|(e, event_id)| encode_cursor(&fingerprint, (e.at_ms, *event_id)))
                } else {
                    None
                };
                Ok(Page {
                    items: items.into_iter().map(|(e, _)| e).collect(),
                    next_cursor,
                })
            }

            async fn create_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError> {
                if token.scopes.is_empty() {
                    return Err(StoreError::Invalid("a token needs a scope".to_owned()));
                }
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO tokens (name, secret_hash, scopes, groups, created_ms) ",
                );
                q.push_values([token], |mut b, t| {
                    b.push_bind(t.name.as_str())
                        .push_bind(t.hash.as_bytes().to_vec())
                        .push_bind(scopes_to_text(&t.scopes))
                        .push_bind(groups_to_text(&t.groups))
                        .push_bind(t.created_ms);
                });
                q.build().execute(self.writer()).await?;
                Ok(TokenRecord {
                    name: token.name.clone(),
                    scopes: scopes_from_text(&scopes_to_text(&token.scopes))?,
                    groups: token.groups.clone(),
                    created_ms: token.created_ms,
                    revoked_ms: None,
                })
            }

            async fn find_token(
                &self,
                hash: &TokenHash,
            ) -> Result<Option<TokenRecord>, StoreError> {
                // Remembered for a moment (store/token_cache.rs): at most that late a
                // revocation made elsewhere takes effect.
                if let Some(token) = self.tokens.get(hash) {
                    return Ok(Some(token));
                }
                let asked = Instant::now();
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT name, scopes, groups, created_ms, revoked_ms FROM tokens \
                     WHERE revoked_ms IS NULL AND secret_hash = ",
                );
                q.push_bind(hash.as_bytes().to_vec());
                let row = q.build().fetch_optional(self.reader()).await?;
                let token = row.as_ref().map(token_from).transpose()?;
                if let Some(t) = &token {
                    self.tokens.put(*hash, asked, t.clone());
                }
                Ok(token)
            }

            async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT name, scopes, groups, created_ms, revoked_ms FROM tokens ORDER BY name",
                )
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(token_from).collect()
            }

            async fn revoke_token(
                &self,
                name: &TokenName,
                now_ms: i64,
            ) -> Result<bool, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new("UPDATE tokens SET revoked_ms = ");
                q.push_bind(now_ms)
                    .push(" WHERE revoked_ms IS NULL AND name = ")
                    .push_bind(name.as_str());
                let done = q.build().execute(self.writer()).await?;
                self.tokens.clear();
                Ok(done.rows_affected() == 1)
            }

            async fn close(&self) {
                self.close_pools().await;
            }

            // --- metrics and webhooks (SQL in store/webhooks.rs) ---

            async fn count_instances_by_presence(
                &self,
            ) -> Result<Vec<(String, Presence, u64)>, StoreError> {
                self.sql_count_instances_by_presence().await
            }

            async fn enqueue_deliveries(
                &self,
                deliveries: &[super::NewDelivery],
            ) -> Result<(), StoreError> {
                self.sql_enqueue_deliveries(deliveries).await
            }

            async fn claim_due_deliveries(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: u32,
            ) -> Result<Vec<super::DeliveryRow>, StoreError> {
                self.sql_claim_due_deliveries(now_ms, lease_until_ms, limit)
                    .await
            }

            async fn record_delivery_attempt(
                &self,
                id: i64,
                attempt: &super::Attempt,
            ) -> Result<(), StoreError> {
                self.sql_record_delivery_attempt(id, attempt).await
            }

            async fn list_deliveries(
                &self,
                filter: &super::DeliveryFilter,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<super::DeliveryRow>, StoreError> {
                self.sql_list_deliveries(filter, limit, cursor).await
            }

            async fn pending_deliveries(&self) -> Result<(u64, Option<i64>), StoreError> {
                self.sql_pending_deliveries().await
            }

            // --- calls and audit (SQL in calls.rs) ---

            async fn insert_call(
                &self,
                call: &super::CallRecord,
            ) -> Result<super::CallInsert, StoreError> {
                self.sql_insert_call(call).await
            }

            async fn finish_call(
                &self,
                id: &csg_protocol::identity::RequestId,
                state: super::CallState,
                reply: Option<&serde_json::Value>,
                error: Option<&str>,
                finished_ms: i64,
            ) -> Result<(), StoreError> {
                self.sql_finish_call(id, state, reply, error, finished_ms)
                    .await
            }

            async fn get_call(
                &self,
                id: &csg_protocol::identity::RequestId,
            ) -> Result<Option<super::CallRecord>, StoreError> {
                self.sql_get_call(id.as_str()).await
            }

            async fn list_calls(
                &self,
                region: &Region,
                instance: &InstanceId,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<super::CallRecord>, StoreError> {
                self.sql_list_calls(region, instance, limit, cursor).await
            }

            async fn record_audit(&self, event: &super::AuditEvent) -> Result<(), StoreError> {
                self.sql_record_audit(event).await
            }

            async fn list_audit(
                &self,
                filter: &super::AuditFilter,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<super::AuditRecord>, StoreError> {
                self.sql_list_audit(filter, limit, cursor).await
            }

            // --- jobs ---
            fn jobs(&self) -> &dyn super::JobStore {
                self
            }

            // --- pending-call sweeper (SQL in calls.rs) ---
            async fn claim_stale_calls(
                &self,
                claim: &super::StaleCalls,
            ) -> Result<Vec<super::CallRecord>, StoreError> {
                self.sql_claim_stale_calls(claim).await
            }

            // --- event log ---
            fn event_log(&self) -> &dyn super::EventLogStore {
                self
            }

            // --- web console: sessions and the fleet's summary (SQL in store/sessions.rs) ---

            async fn create_session(
                &self,
                session: &super::NewSession,
            ) -> Result<bool, StoreError> {
                self.sql_create_session(session).await
            }

            async fn find_session(
                &self,
                hash: &super::SessionHash,
                now_ms: i64,
            ) -> Result<Option<super::SessionRecord>, StoreError> {
                self.sql_find_session(hash, now_ms).await
            }

            async fn delete_session(&self, hash: &super::SessionHash) -> Result<(), StoreError> {
                self.sql_delete_session(hash).await
            }

            async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
                self.sql_delete_expired_sessions(now_ms).await
            }

            async fn fleet_summary(
                &self,
                region: Option<&Region>,
                groups: &[GroupId],
            ) -> Result<super::FleetSummary, StoreError> {
                self.sql_fleet_summary(region, groups).await
            }
        }
    };
}

store_impl!(SqliteStore, Sqlite, Engine::Sqlite, "instr");
store_impl!(PgStore, Postgres, Engine::Postgres, "strpos");
super::webhooks::webhook_sql!(SqliteStore, Sqlite);
super::webhooks::webhook_sql!(PgStore, Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, updated_ms: i64) -> InstanceRow {
        InstanceRow {
            region: Region::new("r1").unwrap(),
            instance_id: InstanceId::new(id).unwrap(),
            group_id: GroupId::new("GID_x").unwrap(),
            presence: Presence::Online,
            since_ms: 0,
            reason: None,
            last_seen_ms: None,
            agent_version: None,
            heartbeat: None,
            storage: None,
            updated_ms,
            sample: None,
        }
    }

    #[test]
    fn newest_row_of_an_instance_wins_within_a_batch() {
        let rows = [row("a", 5), row("b", 1), row("a", 3), row("a", 7)];
        let out = newest_per_instance(&rows);
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.instance_id.as_str(), r.updated_ms))
            .collect();
        assert_eq!(got, vec![("a", 7), ("b", 1)]);
    }
}
