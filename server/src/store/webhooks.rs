//! Webhook deliveries and the counts metrics read: their types, and their SQL for both engines
//! (a macro expanded inside each engine's `Store` implementation, so the text is written once).
//!
//! A delivery is claimed by moving its `next_attempt_ms` past now (a lease) in the same
//! statement that selects it: a process that dies while sending leaves it due again when the
//! lease ends, and replicas sharing PostgreSQL skip rows another one holds (`SKIP LOCKED`).

use serde::Serialize;

use super::StoreError;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; sent (again) when due.
    Pending,
    Delivered,
    /// Given up: attempts exhausted, or the webhook is no longer configured.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(StoreError::Invalid(format!(
                "delivery state {:?}: pending, delivered or failed",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// A delivery to store, pending and due at `created_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The configured webhook's name.
    pub webhook: String,
    pub event_type: String,
    /// The JSON body to POST, as text (signed byte for byte).
    pub payload: String,
    pub created_ms: i64,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: i64,
    pub webhook: String,
    pub event_type: String,
    pub payload: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub next_attempt_ms: i64,
    pub updated_ms: i64,
    pub delivered_ms: Option<i64>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        status: u16,
        at_ms: i64,
    },
    /// Failed; due again at `next_attempt_ms`.
    Retry {
        status: Option<u16>,
        error: String,
        at_ms: i64,
        next_attempt_ms: i64,
    },
    /// Failed for good.
    Failed {
        status: Option<u16>,
        error: String,
        at_ms: i64,
    },
}

/// Which deliveries to list (newest first).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    pub webhook: Option<String>,
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, webhook, event_type, payload, state, attempts, \
     last_status, last_error, created_ms, next_attempt_ms, updated_ms, delivered_ms";

pub(crate) fn delivery_from<R: sqlx::Row>(row: &R) -> Result<DeliveryRow, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database>,
{
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Other(format!("stored delivery {what}: {e}"))
    };
    let attempts: i32 = row.try_get("attempts")?;
    let status: Option<i32> = row.try_get("last_status")?;
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        webhook: row.try_get("webhook")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        state: DeliveryState::parse(&row.try_get::<String, _>("state")?)
            .map_err(|e| corrupt("state", &e))?,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("attempts", &e))?,
        last_status: status
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("status", &e))?,
        last_error: row.try_get("last_error")?,
        created_ms: row.try_get("created_ms")?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        delivered_ms: row.try_get("delivered_ms")?,
    })
}

/// The SQL of the webhook and metrics methods of [`super::Store`], as inherent methods of one
/// engine's store (`$store` on `$db`); the trait's methods call them.
macro_rules! webhook_sql {
    ($store:ty, $db:ty) => {
        impl $store {
        pub(crate) async fn sql_count_instances_by_presence(
            &self,
        ) -> Result<Vec<(String, $crate::store::Presence, u64)>, StoreError> {
            let rows = sqlx::query(
                "SELECT region, presence, COUNT(*) AS n FROM instances GROUP BY region, presence \
                 ORDER BY region, presence",
            )
            .fetch_all(self.reader())
            .await?;
            rows.iter()
                .map(|r| {
                    let n: i64 = r.try_get("n")?;
                    let presence = $crate::store::Presence::parse(&r.try_get::<String, _>("presence")?)
                        .map_err(|e| StoreError::Other(format!("stored presence: {e}")))?;
                    Ok((r.try_get("region")?, presence, u64::try_from(n).unwrap_or(0)))
                })
                .collect()
        }

        pub(crate) async fn sql_enqueue_deliveries(
            &self,
            deliveries: &[$crate::store::NewDelivery],
        ) -> Result<(), StoreError> {
            if deliveries.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin_write().await?;
            for chunk in deliveries.chunks(ROWS_PER_STATEMENT) {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO webhook_deliveries (webhook, event_type, payload, state, \
                     attempts, created_ms, next_attempt_ms, updated_ms) ",
                );
                q.push_values(chunk, |mut b, d| {
                    b.push_bind(d.webhook.as_str())
                        .push_bind(d.event_type.as_str())
                        .push_bind(d.payload.as_str())
                        .push_bind("pending")
                        .push_bind(0_i32)
                        .push_bind(d.created_ms)
                        .push_bind(d.created_ms)
                        .push_bind(d.created_ms);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(crate) async fn sql_claim_due_deliveries(
            &self,
            now_ms: i64,
            lease_until_ms: i64,
            limit: u32,
        ) -> Result<Vec<$crate::store::DeliveryRow>, StoreError> {
            let skip_locked = if self.engine() == Engine::Postgres {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let mut q: QueryBuilder<$db> =
                QueryBuilder::new("UPDATE webhook_deliveries SET next_attempt_ms = ");
            q.push_bind(lease_until_ms)
                .push(
                    " WHERE id IN (SELECT id FROM webhook_deliveries \
                     WHERE state = 'pending' AND next_attempt_ms <= ",
                )
                .push_bind(now_ms)
                .push(" ORDER BY next_attempt_ms, id LIMIT ")
                .push_bind(i64::from(limit))
                .push(skip_locked)
                .push(format!(") RETURNING {}", $crate::store::webhooks::DELIVERY_COLUMNS));
            let rows = q.build().fetch_all(self.writer()).await?;
            let mut out = rows
                .iter()
                .map($crate::store::webhooks::delivery_from)
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|d| d.id);
            Ok(out)
        }

        pub(crate) async fn sql_record_delivery_attempt(
            &self,
            id: i64,
            attempt: &$crate::store::Attempt,
        ) -> Result<(), StoreError> {
            use $crate::store::Attempt;
            let (state, status, error, at_ms, next, delivered) = match attempt {
                Attempt::Delivered { status, at_ms } => {
                    ("delivered", Some(*status), None, *at_ms, *at_ms, Some(*at_ms))
                }
                Attempt::Retry { status, error, at_ms, next_attempt_ms } => {
                    ("pending", *status, Some(error.as_str()), *at_ms, *next_attempt_ms, None)
                }
                Attempt::Failed { status, error, at_ms } => {
                    ("failed", *status, Some(error.as_str()), *at_ms, *at_ms, None)
                }
            };
            let mut q: QueryBuilder<$db> =
                QueryBuilder::new("UPDATE webhook_deliveries SET attempts = attempts + 1, state = ");
            q.push_bind(state)
                .push(", last_status = ")
                .push_bind(status.map(i32::from))
                .push(", last_error = ")
                .push_bind(error)
                .push(", updated_ms = ")
                .push_bind(at_ms)
                .push(", next_attempt_ms = ")
                .push_bind(next)
                .push(", delivered_ms = ")
                .push_bind(delivered)
                .push(" WHERE id = ")
                .push_bind(id);
            q.build().execute(self.writer()).await?;
            Ok(())
        }

        pub(crate) async fn sql_list_deliveries(
            &self,
            filter: &$crate::store::DeliveryFilter,
            limit: PageLimit,
            cursor: Option<&str>,
        ) -> Result<Page<$crate::store::DeliveryRow>, StoreError> {
            let fingerprint = fingerprint_of(&("webhook_deliveries", filter));
            let before: Option<i64> = cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
            let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                "SELECT {} FROM webhook_deliveries WHERE 1 = 1",
                $crate::store::webhooks::DELIVERY_COLUMNS
            ));
            if let Some(state) = filter.state {
                q.push(" AND state = ").push_bind(state.as_str());
            }
            if let Some(webhook) = &filter.webhook {
                q.push(" AND webhook = ").push_bind(webhook.as_str());
            }
            if let Some(id) = before {
                q.push(" AND id < ").push_bind(id);
            }
            q.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(limit.get()) + 1);
            let rows = q.build().fetch_all(self.reader()).await?;
            let mut items = rows
                .iter()
                .map($crate::store::webhooks::delivery_from)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if items.len() > limit.get() as usize {
                items.truncate(limit.get() as usize);
                items.last().map(|d| encode_cursor(&fingerprint, d.id))
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        }

        pub(crate) async fn sql_pending_deliveries(&self) -> Result<(u64, Option<i64>), StoreError> {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(next_attempt_ms) AS due FROM webhook_deliveries \
                 WHERE state = 'pending'",
            )
            .fetch_one(self.reader())
            .await?;
            let n: i64 = row.try_get("n")?;
            Ok((u64::try_from(n).unwrap_or(0), row.try_get("due")?))
        }
        }
    };
}

pub(crate) use webhook_sql;
