//! The store: the one module that speaks SQL.
//!
//! One [`Store`] trait, two engines behind it: [`SqliteStore`] (one file, the embedded default)
//! and [`PgStore`] (PostgreSQL, for several replicas). Both use sqlx's runtime queries (not its
//! compile-time macros, not its `Any` driver, which cover the two engines unevenly), the same
//! logical schema with migrations embedded per engine, and times as integer milliseconds.
//! [`open`] picks the engine from the URL and migrates.

mod engines;
mod error;
mod jobs;
mod tokens;
mod types;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use csg_protocol::identity::InstanceId;

pub use engines::{PgStore, SqliteStore};
pub use error::StoreError;
pub use jobs::{
    ExecState, ExecUpdate, ExecutionRecord, JobCounts, JobFilter, JobRecord, JobState, JobStore,
    JobTransition, NewExecution, NewJob,
};
pub use tokens::{NewToken, Scope, TokenHash, TokenName, TokenRecord, TokenSecret};
pub use types::{InstanceFilter, InstanceRow, Page, PageLimit, Presence, PresenceEvent, Region};

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

    /// One page of instances in (region, instance_id) order, after `cursor` (which must come
    /// from the previous page of the same filter).
    async fn list_instances(
        &self,
        filter: &InstanceFilter,
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

    /// The unrevoked token with this hash.
    async fn find_token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;

    /// Every token, revoked ones too, by name.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// False when there is no such unrevoked token.
    async fn revoke_token(&self, name: &TokenName, now_ms: i64) -> Result<bool, StoreError>;

    /// Closes the pools, waiting for queries under way.
    async fn close(&self);

    // --- jobs ---
    /// Jobs and their executions (store/jobs.rs).
    fn jobs(&self) -> &dyn JobStore;
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
