//! The store: the one module that speaks SQL.
//!
//! One [`Store`] trait, two engines behind it: [`SqliteStore`] (one file, the embedded default)
//! and [`PgStore`] (PostgreSQL, for several replicas). Both use sqlx's runtime queries (not its
//! compile-time macros, not its `Any` driver, which cover the two engines unevenly), the same
//! logical schema with migrations embedded per engine, and times as integer milliseconds.
//! [`open`] picks the engine from the URL and migrates.

mod calls;
mod engines;
mod error;
mod eventlog;
mod jobs;
mod sessions;
mod token_cache;
mod tokens;
mod types;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use csg_protocol::identity::{InstanceId, RequestId};

pub use crate::json::JsonText;
pub use calls::{
    AuditEvent, AuditFilter, AuditRecord, CallInsert, CallRecord, CallState, StaleCalls,
};
pub use engines::{PgStore, SqliteStore};
pub use error::StoreError;
pub use eventlog::{with_id, EventLogStore, HookKinds, LogBounds, LogRow, NewLogEvent};
pub use jobs::{
    ExecState, ExecUpdate, ExecutionRecord, JobCounts, JobFilter, JobRecord, JobState, JobStore,
    JobTransition, NewExecution, NewJob,
};
pub use sessions::{FleetSummary, NewSession, SessionHash, SessionRecord, SessionSecret};
pub use token_cache::TOKEN_TTL;
pub use tokens::{NewToken, Scope, TokenHash, TokenName, TokenRecord, TokenSecret};
pub use types::{
    HostSample, InstanceFilter, InstanceOrder, InstanceRow, Page, PageLimit, Presence,
    PresenceEvent, Region, SortKey, StorageSummary,
};
pub use webhooks::{Attempt, DeliveryFilter, DeliveryRow, DeliveryState, NewDelivery};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Tuning of the connection pools; the defaults suit a console.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a query waits for a connection before [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
    /// Connections for readers (SQLite) or for everything (PostgreSQL).
    pub max_connections: u32,
    /// How long SQLite waits for another process's write lock.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            acquire_timeout: Duration::from_secs(5),
            max_connections: 8,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything the console keeps in its database.
#[async_trait]
pub trait Store: Send + Sync {
    fn engine(&self) -> Engine;

    /// One round trip to the database, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes changed instances in one transaction. A row older (`updated_ms`) than the stored
    /// one is ignored; within the batch the newest row of an instance wins.
    async fn upsert_instances(&self, rows: &[InstanceRow]) -> Result<(), StoreError>;

    async fn get_instance(
        &self,
        region: &Region,
        id: &InstanceId,
    ) -> Result<Option<InstanceRow>, StoreError>;

    /// A gateway's last [`HostSample::KEPT`] heartbeats' host figures, oldest first (none for
    /// a gateway not stored); their times placed near `now_ms` ([`HostSample::parse_all`]).
    async fn host_samples(
        &self,
        region: &Region,
        id: &InstanceId,
        now_ms: u64,
    ) -> Result<Vec<HostSample>, StoreError>;

    /// One page of instances in `order` (then region and instance id, which make every key
    /// unique), after `cursor` (which must come from the previous page of the same filter and
    /// order).
    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        order: InstanceOrder,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<InstanceRow>, StoreError>;

    /// Appends presence transitions, in one transaction.
    async fn record_presence_events(&self, events: &[PresenceEvent]) -> Result<(), StoreError>;

    /// One instance's presence transitions, newest first.
    async fn list_presence_events(
        &self,
        region: &Region,
        id: &InstanceId,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<PresenceEvent>, StoreError>;

    /// [`StoreError::Conflict`] when the name (or the secret) is taken.
    async fn create_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError>;

    /// The unrevoked token with this hash. A token found is remembered for [`TOKEN_TTL`]: a
    /// revocation made through another store (another replica, the `token revoke` command)
    /// takes effect here within that time; one made through this store at once.
    async fn find_token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;

    /// Every token, revoked ones too, by name.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// False when there is no such unrevoked token.
    async fn revoke_token(&self, name: &TokenName, now_ms: i64) -> Result<bool, StoreError>;

    /// Closes the pools, waiting for queries under way.
    async fn close(&self);

    // --- metrics and webhooks (SQL in store/webhooks.rs) ---

    /// How many instances are in each (region, presence), for metrics.
    async fn count_instances_by_presence(&self)
        -> Result<Vec<(String, Presence, u64)>, StoreError>;

    /// Stores deliveries, pending and due at once, in one transaction.
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<(), StoreError>;

    /// Up to `limit` pending deliveries due at `now_ms`, oldest due first, leased until
    /// `lease_until_ms` (due again then, should their attempt never be recorded).
    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError>;

    /// Records one attempt of a delivery (counts it, sets its state and next due time).
    async fn record_delivery_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError>;

    /// A page of deliveries, newest first.
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<DeliveryRow>, StoreError>;

    /// How many deliveries are pending, and when the earliest is due.
    async fn pending_deliveries(&self) -> Result<(u64, Option<i64>), StoreError>;

    // --- calls and audit ---

    /// Stores a call before its request is sent. A call with the same id stored already is
    /// returned instead (the id is the key; nothing is overwritten).
    async fn insert_call(&self, call: &CallRecord) -> Result<CallInsert, StoreError>;

    /// Ends a call: answered with the agent's reply, or failed with the console's error. An
    /// answered call stays answered.
    async fn finish_call(
        &self,
        id: &RequestId,
        state: CallState,
        reply: Option<&serde_json::Value>,
        error: Option<&str>,
        finished_ms: i64,
    ) -> Result<(), StoreError>;

    async fn get_call(&self, id: &RequestId) -> Result<Option<CallRecord>, StoreError>;

    /// One instance's calls, newest first (keyset on `(started_ms, id)`).
    async fn list_calls(
        &self,
        region: &Region,
        instance: &InstanceId,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<CallRecord>, StoreError>;

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Audit events, newest first (keyset on `(at_ms, id)`).
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<AuditRecord>, StoreError>;

    // --- jobs ---
    /// Jobs and their executions (store/jobs.rs).
    fn jobs(&self) -> &dyn JobStore;

    // --- pending-call sweeper (SQL in store/calls.rs) ---

    /// Takes, atomically, up to `limit` calls of the region still `pending` whose budget
    /// (`timeout_ms`, or the default) plus the margin has passed and that no other claim holds,
    /// oldest first, and leases them until `lease_until_ms`: two replicas never take one call at
    /// once, and a claimer that dies leaves it to be taken again once its lease has passed.
    async fn claim_stale_calls(&self, claim: &StaleCalls) -> Result<Vec<CallRecord>, StoreError>;

    // --- event log ---
    /// The stored events and their webhook deliveries (store/eventlog.rs).
    fn event_log(&self) -> &dyn EventLogStore;

    // --- web console: sessions and the fleet's summary (SQL in store/sessions.rs) ---

    /// Opens a session for the unrevoked token with hash `session.token`; false (nothing
    /// stored) when there is no such token.
    async fn create_session(&self, session: &NewSession) -> Result<bool, StoreError>;

    /// The session with this hash, if it has not expired at `now_ms` and its token is
    /// unrevoked.
    async fn find_session(
        &self,
        hash: &SessionHash,
        now_ms: i64,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Ends a session (nothing when there is none).
    async fn delete_session(&self, hash: &SessionHash) -> Result<(), StoreError>;

    /// Removes the sessions expired at `now_ms`; how many.
    async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Gateways counted by presence and agent version, and those with drift, in one region
    /// (or all) and any of `groups` (empty: every group).
    async fn fleet_summary(
        &self,
        region: Option<&Region>,
        groups: &[csg_protocol::identity::GroupId],
    ) -> Result<FleetSummary, StoreError>;
}

/// Opens the store a URL names (`sqlite://PATH`, `postgres://…`) and brings its schema up to
/// date. Opening twice, or from several replicas at once, is safe.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match engine_of(url)? {
        Engine::Sqlite => Ok(Arc::new(SqliteStore::open(url, options).await?)),
        Engine::Postgres => Ok(Arc::new(PgStore::open(url, options).await?)),
    }
}

fn engine_of(url: &str) -> Result<Engine, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Engine::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Engine::Postgres)
    } else {
        Err(StoreError::Invalid(
            "store url: sqlite://PATH or postgres://…".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_from_url() {
        assert_eq!(engine_of("sqlite:///var/lib/x.db").unwrap(), Engine::Sqlite);
        assert_eq!(engine_of("postgres://u@h/db").unwrap(), Engine::Postgres);
        assert_eq!(engine_of("postgresql://u@h/db").unwrap(), Engine::Postgres);
        assert!(engine_of("mysql://h/db").is_err());
    }
}
