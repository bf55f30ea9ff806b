//! The store's one error type, and the one place that maps sqlx's errors onto it.

use thiserror::Error;

/// What went wrong, sorted by what a caller does about it.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database cannot be reached now (connection refused or lost, pool timeout, the server
    /// shutting down, SQLite busy past its timeout). Retry later: the API answers 503 with
    /// `Retry-After`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write collides with what is stored (a token name or secret already taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request itself is wrong (a bad cursor, a limit out of range, a bad URL).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything else: a bug, a corrupt row, a failed migration.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// True when retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

// SQLSTATE classes and codes that mean "not reachable now" rather than "wrong request":
// 08 connection exception, 53 insufficient resources, 57P01..57P03 shutdown / cannot connect now.
fn pg_unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

// SQLite's primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6), possibly extended
// (e.g. 261 = SQLITE_BUSY_RECOVERY): another writer held the lock past the busy timeout.
fn sqlite_unavailable(code: &str) -> bool {
    code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &err {
            // A server that died mid-message leaves a protocol error, not an I/O one. TLS
            // errors are not here: a refused certificate stays refused however often retried.
            E::Io(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                StoreError::Unavailable(err.to_string())
            }
            E::Database(db) => {
                let code = db
                    .code()
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default();
                if db.is_unique_violation() {
                    StoreError::Conflict(db.message().to_owned())
                } else if pg_unavailable(&code) || sqlite_unavailable(&code) {
                    StoreError::Unavailable(err.to_string())
                } else {
                    StoreError::Other(err.to_string())
                }
            }
            E::Configuration(_) => StoreError::Invalid(err.to_string()),
            _ => StoreError::Other(err.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            other => StoreError::Other(format!("migration: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeout_and_io_are_unavailable() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::from(sqlx::Error::Io(io)).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
    }

    #[test]
    fn codes() {
        assert!(pg_unavailable("08006"));
        assert!(pg_unavailable("57P01"));
        assert!(!pg_unavailable("23505"));
        assert!(sqlite_unavailable("5"));
        assert!(sqlite_unavailable("261"));
        assert!(!sqlite_unavailable("2067"));
    }
}
