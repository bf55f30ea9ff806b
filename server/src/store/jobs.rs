//! Jobs and their executions: the rows, and their SQL for both engines.
//!
//! A job's progress is always counted from its execution rows (`GROUP BY state`), never kept
//! as a stored total, so it cannot drift from the rows. Ownership of a running job is a lease
//! in the `jobs` row, taken with a conditional `UPDATE`: of two replicas racing for a job, at
//! most one sees its update apply.

use async_trait::async_trait;
use csg_protocol::identity::{GroupId, InstanceId, RequestId};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::types::{decode_cursor, encode_cursor, fingerprint_of};
use super::{Page, PageLimit, PgStore, Region, SqliteStore, StoreError, TokenName};

/// Where a job stands. `queued`, `running` and `paused` are open; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    /// A wave fell short of its success threshold; `resume` continues with the next wave.
    Paused,
    Succeeded,
    Failed,
    Aborted,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Paused,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Aborted,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Aborted => "aborted",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| StoreError::Invalid(format!("job state {value:?}")))
    }

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Paused
        )
    }
}

/// Where one gateway's execution stands.
///
/// `rejected`: the agent refused the request without running it (`UNAUTHORIZED`,
/// `BAD_REQUEST`, `INVALID_PARAMS`, `UNKNOWN_METHOD`, `EXPIRED`); `failed`: it ran, or may
/// have, and failed (any other error, or retryable errors past the retry policy);
/// `timed_out`: no answer within the execution's timeout, or the job's deadline passed
/// before it could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Cancelled,
}

impl ExecState {
    pub const ALL: [ExecState; 7] = [
        ExecState::Queued,
        ExecState::InProgress,
        ExecState::Succeeded,
        ExecState::Failed,
        ExecState::TimedOut,
        ExecState::Rejected,
        ExecState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Queued => "queued",
            ExecState::InProgress => "in_progress",
            ExecState::Succeeded => "succeeded",
            ExecState::Failed => "failed",
            ExecState::TimedOut => "timed_out",
            ExecState::Rejected => "rejected",
            ExecState::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| StoreError::Invalid(format!("execution state {value:?}")))
    }
}

/// A job's executions by state, counted from the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub total: u64,
    pub queued: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub rejected: u64,
    pub cancelled: u64,
}

impl JobCounts {
    fn add(&mut self, state: ExecState, n: u64) {
        let slot = match state {
            ExecState::Queued => &mut self.queued,
            ExecState::InProgress => &mut self.in_progress,
            ExecState::Succeeded => &mut self.succeeded,
            ExecState::Failed => &mut self.failed,
            ExecState::TimedOut => &mut self.timed_out,
            ExecState::Rejected => &mut self.rejected,
            ExecState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
        self.total += n;
    }
}

/// A job to store, with its executions (resolved once, at creation).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub region: Region,
    pub parent_job_id: Option<String>,
    pub method: String,
    pub spec: serde_json::Value,
    pub last_wave: u32,
    pub created_by: TokenName,
    pub created_ms: i64,
    pub deadline_ms: i64,
    /// With an Idempotency-Key: the request body's hash (see [`JobRecord::request_hash`]).
    pub request_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewExecution {
    pub instance_id: InstanceId,
    pub group_id: GroupId,
    pub wave: u32,
    pub request_id: RequestId,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub region: Region,
    pub parent_job_id: Option<String>,
    pub method: String,
    pub spec: serde_json::Value,
    pub state: JobState,
    pub state_reason: Option<String>,
    pub active: bool,
    pub current_wave: u32,
    pub last_wave: u32,
    pub created_by: String,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub deadline_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    /// The child job retry-failed made of this one (at most one).
    pub retried_by: Option<String>,
    /// Created with an Idempotency-Key: the SHA-256 (hex) of its request body.
    pub request_hash: Option<String>,
}

/// One gateway's execution of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub job_id: String,
    pub seq: i64,
    pub instance_id: InstanceId,
    pub group_id: GroupId,
    pub wave: u32,
    pub state: ExecState,
    pub request_id: RequestId,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub reply: Option<serde_json::Value>,
    pub first_started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
}

/// What an attempt's end does to an in-progress execution.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecUpdate {
    /// Final: `succeeded`, `failed`, `rejected` or `timed_out`.
    Done {
        state: ExecState,
        error_code: Option<String>,
        error_message: Option<String>,
        reply: Option<serde_json::Value>,
    },
    /// Back to `queued`, not to be sent before `next_attempt_ms`.
    Retry {
        next_attempt_ms: i64,
        error_code: String,
        error_message: String,
    },
}

/// Which jobs a list returns.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct JobFilter {
    pub region: Option<Region>,
    pub state: Option<JobState>,
    /// Only jobs created by this token.
    pub created_by: Option<String>,
}

/// A change of a job's state, applied only when the job is in one of `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTransition {
    pub from: Vec<JobState>,
    pub to: JobState,
    pub reason: Option<String>,
    pub active: bool,
    pub now_ms: i64,
    /// Also cancels the queued executions (abort, cancel).
    pub cancel_queued: bool,
    /// Also moves to this wave (resume, a wave that met its threshold).
    pub wave: Option<u32>,
}

/// The jobs half of the store.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a job and all its executions in one transaction. A job with a parent is its
    /// parent's one retry: the parent's `retried_by` is set in the same transaction, and when it
    /// was set already nothing is stored and the answer is [`StoreError::Conflict`] (as for a
    /// job id taken already).
    async fn create_job(&self, job: &NewJob, executions: &[NewExecution])
        -> Result<(), StoreError>;

    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Newest first.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<JobRecord>, StoreError>;

    /// The executions by state; of one wave only when `wave` is given.
    async fn job_counts(&self, id: &str, wave: Option<u32>) -> Result<JobCounts, StoreError>;

    /// In `seq` order; only those in `states` when it is not empty.
    async fn list_executions(
        &self,
        job_id: &str,
        states: &[ExecState],
        limit: PageLimit,
        cursor: Option<&str>,
    ) -> Result<Page<ExecutionRecord>, StoreError>;

    /// Takes the lease of up to `limit` active jobs of `region` that nobody holds (or whose
    /// lease expired, or that `owner` held before a restart), until `until_ms`, leaving out
    /// `held` (the jobs `owner` runs now: their leases are renewed, not claimed, and must not
    /// use up `limit`). Returns those taken.
    async fn claim_jobs(
        &self,
        region: &Region,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
        limit: u32,
        held: &[String],
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Extends `owner`'s lease; false when it is no longer `owner`'s.
    async fn renew_lease(&self, id: &str, owner: &str, until_ms: i64) -> Result<bool, StoreError>;

    /// Gives the lease up at once, so another replica may take the job without waiting.
    async fn release_lease(&self, id: &str, owner: &str) -> Result<(), StoreError>;

    /// Applies `t` if the job is in one of `t.from`; false (and nothing changed) otherwise.
    async fn transition_job(&self, id: &str, t: &JobTransition) -> Result<bool, StoreError>;

    /// Up to `limit` queued executions of waves up to `max_wave` that are due (`next_attempt_ms`)
    /// and whose gateway is not known to be offline, in `seq` order.
    async fn due_executions(
        &self,
        job_id: &str,
        region: &Region,
        max_wave: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// Moves these queued executions to `in_progress` (one more attempt); returns those that
    /// were still queued, as they are now.
    async fn start_executions(
        &self,
        job_id: &str,
        seqs: &[i64],
        now_ms: i64,
    ) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// The in-progress executions (a runner taking a job over sends them again).
    async fn in_progress_executions(
        &self,
        job_id: &str,
    ) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// Ends attempts of in-progress executions, in one transaction; those no longer in
    /// progress are left alone. Returns how many changed.
    async fn finish_executions(
        &self,
        job_id: &str,
        updates: &[(i64, ExecUpdate)],
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Queued executions become `timed_out` (the job's deadline passed); how many.
    async fn expire_queued(&self, job_id: &str, now_ms: i64) -> Result<u64, StoreError>;

    // --- counts of a page of jobs ---

    /// The executions by state of each of these jobs, in one query (a page of the job list).
    /// A job with no executions, or unknown, is absent from the answer.
    async fn job_counts_of(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, JobCounts>, StoreError>;
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what}: {err}"))
}

fn u32_of(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|e| corrupt(what, e))
}

const JOB_COLUMNS: &str = "id, region, parent_job_id, method, spec, state, state_reason, active, \
     current_wave, last_wave, created_by, created_ms, started_ms, finished_ms, deadline_ms, \
     lease_owner, lease_until_ms, retried_by, request_hash";

const EXEC_COLUMNS: &str = "job_id, seq, instance_id, group_id, wave, state, request_id, \
     attempts, next_attempt_ms, error_code, error_message, reply, first_started_ms, \
     finished_ms, updated_ms";

// Executions per INSERT statement: 8 binds each, under both engines' bind limits.
const EXECS_PER_STATEMENT: usize = 1000;

// Jobs per counting query: one bind each.
const JOBS_PER_COUNT: usize = 1000;

// Outcomes per UPDATE statement: 7 binds each.
const OUTCOMES_PER_STATEMENT: usize = 1000;

fn job_from<R: Row>(row: &R) -> Result<JobRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    let spec: String = row.try_get("spec")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        region: Region::new(row.try_get::<String, _>("region")?)
            .map_err(|e| corrupt("region", e))?,
        parent_job_id: row.try_get("parent_job_id")?,
        method: row.try_get("method")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("job spec", e))?,
        state: JobState::parse(&row.try_get::<String, _>("state")?)
            .map_err(|e| corrupt("job state", e))?,
        state_reason: row.try_get("state_reason")?,
        active: row.try_get::<i64, _>("active")? != 0,
        current_wave: u32_of("wave", row.try_get("current_wave")?)?,
        last_wave: u32_of("wave", row.try_get("last_wave")?)?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        deadline_ms: row.try_get("deadline_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        retried_by: row.try_get("retried_by")?,
        request_hash: row.try_get("request_hash")?,
    })
}

fn exec_from<R: Row>(row: &R) -> Result<ExecutionRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    let reply: Option<String> = row.try_get("reply")?;
    Ok(ExecutionRecord {
        job_id: row.try_get("job_id")?,
        seq: row.try_get("seq")?,
        instance_id: InstanceId::new(row.try_get::<String, _>("instance_id")?)
            .map_err(|e| corrupt("instance id", e))?,
        group_id: GroupId::new(row.try_get::<String, _>("group_id")?)
            .map_err(|e| corrupt("group id", e))?,
        wave: u32_of("wave", row.try_get("wave")?)?,
        state: ExecState::parse(&row.try_get::<String, _>("state")?)
            .map_err(|e| corrupt("execution state", e))?,
        request_id: RequestId::new(row.try_get::<String, _>("request_id")?)
            .map_err(|e| corrupt("request id", e))?,
        attempts: u32_of("attempts", row.try_get("attempts")?)?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        reply: reply
            .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("reply", e)))
            .transpose()?,
        first_started_ms: row.try_get("first_started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

macro_rules! job_store_impl {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl JobStore for $store {
            async fn create_job(
                &self,
                job: &NewJob,
                executions: &[NewExecution],
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                if let Some(parent) = &job.parent_job_id {
                    // One retry per job, even for two calls at once: only the first sets it.
                    let mut q: QueryBuilder<$db> =
                        QueryBuilder::new("UPDATE jobs SET retried_by = ");
                    q.push_bind(job.id.as_str())
                        .push(" WHERE id = ")
                        .push_bind(parent.as_str())
                        .push(" AND retried_by IS NULL");
                    if q.build().execute(&mut *tx).await?.rows_affected() != 1 {
                        return Err(StoreError::Conflict(format!(
                            "job {parent} has been retried already"
                        )));
                    }
                }
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO jobs (id, region, parent_job_id, method, spec, state, active, \
                     current_wave, last_wave, created_by, created_ms, deadline_ms, \
                     request_hash) ",
                );
                q.push_values([job], |mut b, j| {
                    b.push_bind(j.id.as_str())
                        .push_bind(j.region.as_str())
                        .push_bind(j.parent_job_id.as_deref())
                        .push_bind(j.method.as_str())
                        .push_bind(j.spec.to_string())
                        .push_bind(JobState::Queued.as_str())
                        .push_bind(1_i64)
                        .push_bind(0_i64)
                        .push_bind(i64::from(j.last_wave))
                        .push_bind(j.created_by.as_str())
                        .push_bind(j.created_ms)
                        .push_bind(j.deadline_ms)
                        .push_bind(j.request_hash.as_deref());
                });
                q.build().execute(&mut *tx).await?;
                for (n, chunk) in executions.chunks(EXECS_PER_STATEMENT).enumerate() {
                    let base = n * EXECS_PER_STATEMENT;
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO job_executions (job_id, seq, instance_id, group_id, wave, \
                         state, request_id, attempts, next_attempt_ms, updated_ms) ",
                    );
                    q.push_values(chunk.iter().enumerate(), |mut b, (i, e)| {
                        b.push_bind(job.id.as_str())
                            .push_bind(i64::try_from(base + i).unwrap_or(i64::MAX))
                            .push_bind(e.instance_id.as_str())
                            .push_bind(e.group_id.as_str())
                            .push_bind(i64::from(e.wave))
                            .push_bind(ExecState::Queued.as_str())
                            .push_bind(e.request_id.as_str())
                            .push_bind(0_i64)
                            .push_bind(0_i64)
                            .push_bind(job.created_ms);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = "));
                q.push_bind(id);
                let row = q.build().fetch_optional(self.reader()).await?;
                row.as_ref().map(job_from).transpose()
            }

            async fn list_jobs(
                &self,
                filter: &JobFilter,
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<JobRecord>, StoreError> {
                let fingerprint = fingerprint_of(&("jobs", filter));
                let before: Option<(i64, String)> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
                if let Some(region) = &filter.region {
                    q.push(" AND region = ").push_bind(region.as_str());
                }
                if let Some(state) = filter.state {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(by) = &filter.created_by {
                    q.push(" AND created_by = ").push_bind(by.as_str());
                }
                if let Some((created_ms, id)) = before {
                    q.push(" AND (created_ms, id) < (")
                        .push_bind(created_ms)
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                q.push(" ORDER BY created_ms DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows.iter().map(job_from).collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items
                        .last()
                        .map(|j| encode_cursor(&fingerprint, (j.created_ms, j.id.clone())))
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            async fn job_counts(
                &self,
                id: &str,
                wave: Option<u32>,
            ) -> Result<JobCounts, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT state, COUNT(*) AS n FROM job_executions WHERE job_id = ",
                );
                q.push_bind(id);
                if let Some(w) = wave {
                    q.push(" AND wave = ").push_bind(i64::from(w));
                }
                q.push(" GROUP BY state");
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut counts = JobCounts::default();
                for row in &rows {
                    let state = ExecState::parse(&row.try_get::<String, _>("state")?)
                        .map_err(|e| corrupt("execution state", e))?;
                    let n: i64 = row.try_get("n")?;
                    counts.add(state, u64::try_from(n).unwrap_or(0));
                }
                Ok(counts)
            }

            async fn list_executions(
                &self,
                job_id: &str,
                states: &[ExecState],
                limit: PageLimit,
                cursor: Option<&str>,
            ) -> Result<Page<ExecutionRecord>, StoreError> {
                let mut canon: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
                canon.sort_unstable();
                canon.dedup();
                let fingerprint = fingerprint_of(&("executions", job_id, &canon));
                let after: Option<i64> =
                    cursor.map(|c| decode_cursor(c, &fingerprint)).transpose()?;
                let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {EXEC_COLUMNS} FROM job_executions WHERE job_id = "
                ));
                q.push_bind(job_id);
                if !canon.is_empty() {
                    q.push(" AND state IN (");
                    let mut list = q.separated(", ");
                    for s in &canon {
                        list.push_bind(*s);
                    }
                    list.push_unseparated(")");
                }
                if let Some(seq) = after {
                    q.push(" AND seq > ").push_bind(seq);
                }
                q.push(" ORDER BY seq LIMIT ")
                    .push_bind(i64::from(limit.get()) + 1);
                let rows = q.build().fetch_all(self.reader()).await?;
                let mut items = rows.iter().map(exec_from).collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > limit.get() as usize {
                    items.truncate(limit.get() as usize);
                    items.last().map(|e| encode_cursor(&fingerprint, e.seq))
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            async fn claim_jobs(
                &self,
                region: &Region,
                owner: &str,
                now_ms: i64,
                until_ms: i64,
                limit: u32,
                held: &[String],
            ) -> Result<Vec<JobRecord>, StoreError> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT id FROM jobs WHERE active = 1 AND region = ",
                );
                q.push_bind(region.as_str())
                    .push(" AND (lease_owner IS NULL OR lease_owner = ")
                    .push_bind(owner)
                    .push(" OR lease_until_ms < ")
                    .push_bind(now_ms)
                    .push(")");
                if !held.is_empty() {
                    q.push(" AND id NOT IN (");
                    let mut list = q.separated(", ");
                    for id in held {
                        list.push_bind(id.as_str());
                    }
                    list.push_unseparated(")");
                }
                q.push(" ORDER BY created_ms, id LIMIT ")
                    .push_bind(i64::from(limit));
                let ids: Vec<String> = q
                    .build()
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>("id"))
                    .collect::<Result<_, _>>()?;
                let mut taken = Vec::new();
                for id in ids {
                    // The same condition again, in the UPDATE itself: another replica may
                    // have taken the job since the SELECT, and then this changes nothing.
                    let mut q: QueryBuilder<$db> =
                        QueryBuilder::new("UPDATE jobs SET lease_owner = ");
                    q.push_bind(owner)
                        .push(", lease_until_ms = ")
                        .push_bind(until_ms)
                        .push(" WHERE id = ")
                        .push_bind(id.as_str())
                        .push(" AND active = 1 AND (lease_owner IS NULL OR lease_owner = ")
                        .push_bind(owner)
                        .push(" OR lease_until_ms < ")
                        .push_bind(now_ms)
                        .push(")");
                    if q.build().execute(self.writer()).await?.rows_affected() == 1 {
                        if let Some(job) = self.get_job(&id).await? {
                            taken.push(job);
                        }
                    }
                }
                Ok(taken)
            }

            async fn renew_lease(
                &self,
                id: &str,
                owner: &str,
                until_ms: i64,
            ) -> Result<bool, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("UPDATE jobs SET lease_until_ms = ");
                q.push_bind(until_ms)
                    .push(" WHERE id = ")
                    .push_bind(id)
                    .push(" AND lease_owner = ")
                    .push_bind(owner);
                Ok(q.build().execute(self.writer()).await?.rows_affected() == 1)
            }

            async fn release_lease(&self, id: &str, owner: &str) -> Result<(), StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(
                    "UPDATE jobs SET lease_owner = NULL, lease_until_ms = NULL WHERE id = ",
                );
                q.push_bind(id).push(" AND lease_owner = ").push_bind(owner);
                q.build().execute(self.writer()).await?;
                Ok(())
            }

            async fn transition_job(
                &self,
                id: &str,
                t: &JobTransition,
            ) -> Result<bool, StoreError> {
                if t.from.is_empty() {
                    return Ok(false);
                }
                let mut tx = self.begin_write().await?;
                let mut q: QueryBuilder<$db> = QueryBuilder::new("UPDATE jobs SET state = ");
                q.push_bind(t.to.as_str())
                    .push(", state_reason = ")
                    .push_bind(t.reason.as_deref())
                    .push(", active = ")
                    .push_bind(i64::from(t.active));
                if let Some(w) = t.wave {
                    q.push(", current_wave = ").push_bind(i64::from(w));
                }
                if t.to == JobState::Running {
                    q.push(", started_ms = COALESCE(started_ms, ")
                        .push_bind(t.now_ms)
                        .push(")");
                }
                if t.to.is_final() {
                    q.push(", finished_ms = COALESCE(finished_ms, ")
                        .push_bind(t.now_ms)
                        .push(")");
                }
                q.push(" WHERE id = ").push_bind(id).push(" AND state IN (");
                let mut list = q.separated(", ");
                for s in &t.from {
                    list.push_bind(s.as_str());
                }
                list.push_unseparated(")");
                let changed = q.build().execute(&mut *tx).await?.rows_affected() == 1;
                if changed && t.cancel_queued {
                    let mut q: QueryBuilder<$db> =
                        QueryBuilder::new("UPDATE job_executions SET state = ");
                    q.push_bind(ExecState::Cancelled.as_str())
                        .push(", finished_ms = ")
                        .push_bind(t.now_ms)
                        .push(", updated_ms = ")
                        .push_bind(t.now_ms)
                        .push(" WHERE job_id = ")
                        .push_bind(id)
                        .push(" AND state = ")
                        .push_bind(ExecState::Queued.as_str());
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(changed)
            }

            async fn due_executions(
                &self,
                job_id: &str,
                region: &Region,
                max_wave: u32,
                now_ms: i64,
                limit: u32,
            ) -> Result<Vec<ExecutionRecord>, StoreError> {
                let cols = EXEC_COLUMNS
                    .split(", ")
                    .map(|c| format!("e.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                // A gateway the store does not know is tried (the call finds out); one known
                // to be offline waits for its presence to change.
                let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {cols} FROM job_executions e LEFT JOIN instances i \
                     ON i.region = "
                ));
                q.push_bind(region.as_str())
                    .push(" AND i.instance_id = e.instance_id WHERE e.job_id = ")
                    .push_bind(job_id)
                    .push(" AND e.state = ")
                    .push_bind(ExecState::Queued.as_str())
                    .push(" AND e.wave <= ")
                    .push_bind(i64::from(max_wave))
                    .push(" AND e.next_attempt_ms <= ")
                    .push_bind(now_ms)
                    .push(" AND (i.presence IS NULL OR i.presence <> 'offline') ORDER BY e.seq LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = q.build().fetch_all(self.reader()).await?;
                rows.iter().map(exec_from).collect()
            }

            async fn start_executions(
                &self,
                job_id: &str,
                seqs: &[i64],
                now_ms: i64,
            ) -> Result<Vec<ExecutionRecord>, StoreError> {
                if seqs.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin_write().await?;
                let mut started = Vec::with_capacity(seqs.len());
                for chunk in seqs.chunks(500) {
                    let mut q: QueryBuilder<$db> =
                        QueryBuilder::new("UPDATE job_executions SET state = ");
                    q.push_bind(ExecState::InProgress.as_str())
                        .push(", attempts = attempts + 1, first_started_ms = COALESCE(first_started_ms, ")
                        .push_bind(now_ms)
                        .push("), updated_ms = ")
                        .push_bind(now_ms)
                        .push(" WHERE job_id = ")
                        .push_bind(job_id)
                        .push(" AND state = ")
                        .push_bind(ExecState::Queued.as_str())
                        .push(" AND seq IN (");
                    let mut list = q.separated(", ");
                    for s in chunk {
                        list.push_bind(*s);
                    }
                    list.push_unseparated(format!(") RETURNING {EXEC_COLUMNS}"));
                    let rows = q.build().fetch_all(&mut *tx).await?;
                    for row in &rows {
                        started.push(exec_from(row)?);
                    }
                }
                tx.commit().await?;
                started.sort_by_key(|e| e.seq);
                Ok(started)
            }

            async fn in_progress_executions(
                &self,
                job_id: &str,
            ) -> Result<Vec<ExecutionRecord>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {EXEC_COLUMNS} FROM job_executions WHERE job_id = "
                ));
                q.push_bind(job_id)
                    .push(" AND state = ")
                    .push_bind(ExecState::InProgress.as_str())
                    .push(" ORDER BY seq");
                let rows = q.build().fetch_all(self.reader()).await?;
                rows.iter().map(exec_from).collect()
            }

            async fn finish_executions(
                &self,
                job_id: &str,
                updates: &[(i64, ExecUpdate)],
                now_ms: i64,
            ) -> Result<u64, StoreError> {
                if updates.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                let mut changed = 0;
                // One statement per chunk: the new values as a VALUES list joined on `seq`
                // (columns column1… on both engines), not one round trip per execution.
                for chunk in updates.chunks(OUTCOMES_PER_STATEMENT) {
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(
                        "UPDATE job_executions SET state = v.column2, error_code = v.column3, \
                         error_message = v.column4, reply = v.column5, \
                         finished_ms = v.column6, \
                         next_attempt_ms = COALESCE(v.column7, job_executions.next_attempt_ms), \
                         updated_ms = ",
                    );
                    q.push_bind(now_ms).push(" FROM (");
                    q.push_values(chunk, |mut b, (seq, u)| {
                        let (state, code, message, reply, finished, next): (
                            &str,
                            Option<&str>,
                            Option<&str>,
                            Option<String>,
                            Option<i64>,
                            Option<i64>,
                        ) = match u {
                            ExecUpdate::Done {
                                state,
                                error_code,
                                error_message,
                                reply,
                            } => (
                                state.as_str(),
                                error_code.as_deref(),
                                error_message.as_deref(),
                                reply.as_ref().map(serde_json::Value::to_string),
                                Some(now_ms),
                                None,
                            ),
                            ExecUpdate::Retry {
                                next_attempt_ms,
                                error_code,
                                error_message,
                            } => (
                                ExecState::Queued.as_str(),
                                Some(error_code.as_str()),
                                Some(error_message.as_str()),
                                None,
                                None,
                                Some(*next_attempt_ms),
                            ),
                        };
                        b.push_bind(*seq)
                            .push_bind(state)
                            .push_bind(code)
                            .push_bind(message)
                            .push_bind(reply)
                            .push_bind(finished)
                            .push_bind(next);
                    });
                    q.push(") AS v WHERE job_executions.job_id = ")
                        .push_bind(job_id)
                        .push(" AND job_executions.seq = v.column1 AND job_executions.state = ")
                        .push_bind(ExecState::InProgress.as_str());
                    changed += q.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(changed)
            }

            async fn expire_queued(&self, job_id: &str, now_ms: i64) -> Result<u64, StoreError> {
                let mut q: QueryBuilder<$db> =
                    QueryBuilder::new("UPDATE job_executions SET state = ");
                q.push_bind(ExecState::TimedOut.as_str())
                    .push(", error_code = 'DEADLINE', error_message = ")
                    .push_bind("the job's deadline passed before it could be sent")
                    .push(", finished_ms = ")
                    .push_bind(now_ms)
                    .push(", updated_ms = ")
                    .push_bind(now_ms)
                    .push(" WHERE job_id = ")
                    .push_bind(job_id)
                    .push(" AND state = ")
                    .push_bind(ExecState::Queued.as_str());
                Ok(q.build().execute(self.writer()).await?.rows_affected())
            }

            async fn job_counts_of(
                &self,
                ids: &[&str],
            ) -> Result<std::collections::HashMap<String, JobCounts>, StoreError> {
                let mut out = std::collections::HashMap::new();
                // A page holds at most 1000 jobs: one bind each, under both engines' limits.
                for chunk in ids.chunks(JOBS_PER_COUNT) {
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(
                        "SELECT job_id, state, COUNT(*) AS n FROM job_executions \
                         WHERE job_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(") GROUP BY job_id, state");
                    for row in &q.build().fetch_all(self.reader()).await? {
                        let state = ExecState::parse(&row.try_get::<String, _>("state")?)
                            .map_err(|e| corrupt("execution state", e))?;
                        let n: i64 = row.try_get("n")?;
                        out.entry(row.try_get::<String, _>("job_id")?)
                            .or_insert_with(JobCounts::default)
                            .add(state, u64::try_from(n).unwrap_or(0));
                    }
                }
                Ok(out)
            }
        }
    };
}

job_store_impl!(SqliteStore, Sqlite);
job_store_impl!(PgStore, Postgres);
