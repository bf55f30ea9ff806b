//! Jobs over HTTP: `POST /v1/jobs` (with `?dry_run=true`), `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//! `GET /v1/jobs/{id}/executions`, and `POST /v1/jobs/{id}/cancel|resume|retry-failed`.
//!
//! Scopes: `read` for the GETs, `operate` for the rest. A token limited to groups targets only
//! gateways of its groups and sees only the jobs it created itself (a job over other groups
//! would tell it which gateways exist there).

use crate::now_ms;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use csg_protocol::identity::RequestId;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::auth::authorize;
use super::problem::Problem;
use super::{AppState, RemoteAddr};
use crate::jobs::model::{AbortIn, JobRequest, RetryIn, SpecError, TargetIn, WaveIn};
use crate::jobs::{self, CreateError, IdempotencyKey, Keyed};
use crate::store::{
    AuditEvent, ExecState, ExecutionRecord, JobCounts, JobFilter, JobRecord, JobState,
    JobTransition, PageLimit, Region, Scope, StoreError, TokenRecord,
};

pub const DEFAULT_LIMIT: u32 = 100;
/// Gateways a dry run names (it counts them all).
pub const DRY_RUN_LIST: usize = 100;

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobOut {
    pub id: String,
    #[schema(required = true)]
    pub parent_job_id: Option<String>,
    pub region: String,
    pub method: String,
    /// As given, with secrets (`password`, …) redacted.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub target: TargetIn,
    /// `queued`, `running`, `paused`, `succeeded`, `failed`, `aborted` or `cancelled`.
    #[schema(pattern = "^(queued|running|paused|succeeded|failed|aborted|cancelled)$")]
    pub state: &'static str,
    /// Why it paused, aborted or failed.
    #[schema(required = true)]
    pub state_reason: Option<String>,
    /// Counted from the execution rows.
    pub counts: JobCounts,
    pub rate_per_minute: u32,
    pub max_in_flight: u32,
    pub waves: Vec<WaveIn>,
    /// The wave being sent (waves are numbered from 0; the last holds the rest).
    pub current_wave: u32,
    #[schema(required = true)]
    pub abort: Option<AbortIn>,
    pub execution_timeout_ms: u64,
    pub retry: RetryIn,
    pub deadline_ms: i64,
    /// The token that created it.
    pub created_by: String,
    pub created_ms: i64,
    #[schema(required = true)]
    pub started_ms: Option<i64>,
    #[schema(required = true)]
    pub finished_ms: Option<i64>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobOut>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// An execution's error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecError {
    /// The agent's code (`BUSY`, `CONFLICT`, …), `NO_REPLY`, `DEADLINE` or `CONSOLE`.
    pub code: String,
    pub message: String,
}

/// One gateway's execution of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionOut {
    pub instance_id: String,
    pub group_id: String,
    pub wave: u32,
    /// `queued`, `in_progress`, `succeeded`, `failed`, `timed_out`, `rejected` or `cancelled`.
    #[schema(pattern = "^(queued|in_progress|succeeded|failed|timed_out|rejected|cancelled)$")]
    pub state: &'static str,
    /// The same on every re-send.
    pub request_id: String,
    pub attempts: u32,
    /// The last attempt's error (also kept while queued for a retry).
    #[schema(required = true)]
    pub error: Option<ExecError>,
    /// The reply's result when it succeeded (over 2 KB: its size only).
    #[schema(required = true, value_type = Option<Object>)]
    pub reply: Option<Value>,
    /// Not sent again before this (a retry's back-off), ms since the Unix epoch.
    pub next_attempt_ms: i64,
    #[schema(required = true)]
    pub first_started_ms: Option<i64>,
    #[schema(required = true)]
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
}

/// A page of executions, in the job's order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionPage {
    pub items: Vec<ExecutionOut>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// What a job would touch; nothing stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunOut {
    pub dry_run: bool,
    /// How many gateways it would run on.
    pub total: usize,
    /// The first of them, in the order they would be sent (at most 100).
    pub instances: Vec<String>,
    /// True when `instances` does not list them all.
    pub truncated: bool,
}

/// A 200 of `POST /v1/jobs`: a dry run, or the job an Idempotency-Key made already (the
/// document's type; the handlers answer with either directly).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum JobOrDryRun {
    Job(Box<JobOut>),
    DryRun(DryRunOut),
}

/// The request's `Idempotency-Key`, if it has one (400 when malformed or repeated).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(v) = super::calls::idempotency_key_text(headers)? else {
        return Ok(None);
    };
    IdempotencyKey::parse(v)
        .map(Some)
        .map_err(Problem::bad_request)
}

/// The answer to a repeat of an Idempotency-Key: the job it made (200) when the body is the
/// same, 409 when it is another.
async fn repeat_of(state: &AppState, job: &JobRecord, hash: &str) -> Result<Response, Problem> {
    if job.request_hash.as_deref() != Some(hash) {
        return Err(Problem::conflict(format!(
            "this Idempotency-Key made job {} with another request body; use a new key for a new job",
            job.id
        )));
    }
    Ok((StatusCode::OK, Json(view_of(state, job).await?)).into_response())
}

/// Whether the token may see the job (see [`visible_job`]).
fn may_see(state: &AppState, token: &TokenRecord, job: &JobRecord) -> bool {
    state.regions.get(&job.region).is_some()
        && (token.groups.is_empty() || job.created_by == token.name.as_str())
}

/// The child a retry-failed of `parent` made already: 200 with it, or 409 naming it when the
/// token may not see it.
async fn existing_retry(
    state: &AppState,
    token: &TokenRecord,
    parent: &JobRecord,
) -> Result<Option<JobOut>, Problem> {
    let Some(child_id) = &parent.retried_by else {
        return Ok(None);
    };
    let child = state.store.jobs().get_job(child_id).await?;
    match child {
        Some(c) if may_see(state, token, &c) => Ok(Some(view_of(state, &c).await?)),
        _ => Err(Problem::conflict(format!(
            "job {} has been retried already, as job {child_id}",
            parent.id
        ))),
    }
}

/// Records a change to a job in the audit log (the log line and the store), as every change
/// made through the console is. `detail` says which job (and its parent, method and redacted
/// params where there are some).
pub(crate) async fn audit_job(
    state: &AppState,
    region: &Region,
    token: &TokenRecord,
    remote: &RemoteAddr,
    action: &str,
    method: Option<&str>,
    detail: Value,
) {
    let event = AuditEvent {
        at_ms: now_ms(),
        region: region.clone(),
        token_name: Some(token.name.as_str().to_owned()),
        remote_addr: remote.0.clone(),
        action: action.to_owned(),
        instance_id: None,
        method: method.map(str::to_owned),
        params: Some(crate::audit::redact(&detail)),
        outcome: "ok".to_owned(),
        request_id: None,
    };
    // Logged even when the store cannot keep it (audit::record says so).
    let _ = crate::audit::record(state.store.as_ref(), &event).await;
}

/// A stored job's params as its request gave them (redacted by the audit record).
fn job_params(r: &JobRecord) -> Value {
    r.spec.get("params").cloned().unwrap_or(Value::Null)
}

pub(crate) fn job_view(r: &JobRecord, counts: JobCounts) -> Result<JobOut, Problem> {
    let req: JobRequest = serde_json::from_value(r.spec.clone()).map_err(|e| {
        tracing::error!(job = %r.id, error = %e, "a stored job does not parse");
        Problem::internal()
    })?;
    Ok(JobOut {
        id: r.id.clone(),
        parent_job_id: r.parent_job_id.clone(),
        region: r.region.as_str().to_owned(),
        method: r.method.clone(),
        params: match crate::audit::redact(&Value::Object(req.params.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        target: req.target,
        state: r.state.as_str(),
        state_reason: r.state_reason.clone(),
        counts,
        rate_per_minute: req.rate_per_minute,
        max_in_flight: req.max_in_flight,
        waves: req.waves,
        current_wave: r.current_wave,
        abort: req.abort,
        execution_timeout_ms: req.execution_timeout_ms,
        retry: req.retry.unwrap_or_default(),
        deadline_ms: r.deadline_ms,
        created_by: r.created_by.clone(),
        created_ms: r.created_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
    })
}

fn execution_view(e: ExecutionRecord) -> ExecutionOut {
    ExecutionOut {
        instance_id: e.instance_id.as_str().to_owned(),
        group_id: e.group_id.as_str().to_owned(),
        wave: e.wave,
        state: e.state.as_str(),
        request_id: e.request_id.as_str().to_owned(),
        attempts: e.attempts,
        error: e.error_code.map(|code| ExecError {
            code,
            message: e.error_message.unwrap_or_default(),
        }),
        reply: e.reply,
        next_attempt_ms: e.next_attempt_ms,
        first_started_ms: e.first_started_ms,
        finished_ms: e.finished_ms,
        updated_ms: e.updated_ms,
    }
}

pub(crate) async fn view_of(state: &AppState, r: &JobRecord) -> Result<JobOut, Problem> {
    let counts = state.store.jobs().job_counts(&r.id, None).await?;
    job_view(r, counts)
}

/// The job, if the token may see it; 404 otherwise (not telling which ids exist).
pub(crate) async fn visible_job(
    state: &AppState,
    token: &TokenRecord,
    id: &str,
) -> Result<JobRecord, Problem> {
    let unknown = || Problem::not_found(format!("no job {id}"));
    RequestId::new(id).map_err(|e| Problem::bad_request(format!("job id: {e}")))?;
    let job = state.store.jobs().get_job(id).await?.ok_or_else(unknown)?;
    if !may_see(state, token, &job) {
        return Err(unknown());
    }
    Ok(job)
}

pub(crate) fn create_problem(e: CreateError) -> Problem {
    match e {
        CreateError::Spec(SpecError::Invalid(m)) => Problem::bad_request(m),
        CreateError::Spec(SpecError::Method(m)) => Problem::unprocessable(m),
        CreateError::Targets(m) => Problem::unprocessable(m),
        CreateError::Store(e) => e.into(),
    }
}

type Pairs = Vec<(String, String)>;

fn pairs(raw: Option<&str>) -> Result<Pairs, Problem> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))
}

fn unknown_param(k: &str, known: &str) -> Problem {
    Problem::bad_request(format!(
        "unknown query parameter {:?}; known: {known}",
        k.chars().take(64).collect::<String>()
    ))
}

fn once(slot: &mut Option<String>, key: &str, v: String) -> Result<(), Problem> {
    if slot.replace(v).is_some() {
        return Err(Problem::bad_request(format!("{key}: given more than once")));
    }
    Ok(())
}

fn limit_of(l: Option<String>) -> Result<PageLimit, Problem> {
    let n = match l {
        None => DEFAULT_LIMIT,
        Some(l) => l.parse().map_err(|_| {
            Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
        })?,
    };
    PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))
}

/// Creates a job (201), or with `dry_run=true` says which gateways it would touch (200).
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        ("dry_run" = Option<bool>, Query, description = "count and name the gateways it would touch; store nothing"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat with the same key and body returns the job the first call made (200); with another body, 409"),
    ),
    request_body = JobRequest,
    responses(
        (status = 201, description = "the job, stored; executions resolved now", body = JobOut),
        (status = 200, description = "a dry run (DryRunOut), or the job this Idempotency-Key made already (JobOut)", body = JobOrDryRun),
        (status = 400, description = "malformed JSON, an unknown field, a value out of range, a malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the Idempotency-Key made a job with another request body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "the protocol refuses the method or params; unknown targets", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Operate).await?;
    let mut dry: Option<String> = None;
    for (k, v) in pairs(raw.as_deref())? {
        match k.as_str() {
            "dry_run" => once(&mut dry, "dry_run", v)?,
            other => return Err(unknown_param(other, "dry_run")),
        }
    }
    let dry_run = match dry.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Problem::bad_request("dry_run: true or false")),
    };
    let key = idempotency_key(&headers)?;
    let req: JobRequest =
        serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("body: {e}")))?;
    let region = state
        .regions
        .chosen(req.region.as_deref(), "region")?
        .region
        .clone();
    // A dry run stores nothing: its key, if any, binds nothing.
    let keyed = match key.filter(|_| !dry_run) {
        None => None,
        Some(key) => {
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| Problem::bad_request(format!("body: {e}")))?;
            let keyed = Keyed {
                id: jobs::keyed_job_id(&region, &token.name, "create", &key),
                request_hash: Some(jobs::request_hash(&value)),
            };
            if let Some(job) = state.store.jobs().get_job(&keyed.id).await? {
                return repeat_of(&state, &job, keyed.request_hash.as_deref().unwrap_or("")).await;
            }
            Some(keyed)
        }
    };
    let now = now_ms();
    let plan = jobs::plan(state.store.as_ref(), &region, req, &token, now)
        .await
        .map_err(create_problem)?;
    if dry_run {
        let total = plan.targets.len();
        return Ok(Json(DryRunOut {
            dry_run: true,
            total,
            instances: plan
                .targets
                .iter()
                .take(DRY_RUN_LIST)
                .map(|t| t.instance_id.as_str().to_owned())
                .collect(),
            truncated: total > DRY_RUN_LIST,
        })
        .into_response());
    }
    let key_of = keyed
        .as_ref()
        .map(|k| (k.id.clone(), k.request_hash.clone()));
    let job = match jobs::create_as(
        state.store.as_ref(),
        &region,
        plan,
        &token,
        None,
        now,
        keyed,
    )
    .await
    {
        Ok(job) => job,
        // The same key at the same time: the other call stored it first.
        Err(CreateError::Store(StoreError::Conflict(why))) => match key_of {
            Some((id, hash)) => match state.store.jobs().get_job(&id).await? {
                Some(job) => return repeat_of(&state, &job, hash.as_deref().unwrap_or("")).await,
                None => return Err(Problem::conflict(why)),
            },
            None => return Err(Problem::conflict(why)),
        },
        Err(e) => return Err(create_problem(e)),
    };
    audit_job(
        &state,
        &job.region,
        &token,
        &remote,
        "job.create",
        Some(&job.method),
        json!({"job_id": job.id, "params": job_params(&job)}),
    )
    .await;
    tracing::info!(job = %job.id, by = %token.name, method = %job.method, "job created");
    Ok((StatusCode::CREATED, Json(view_of(&state, &job).await?)).into_response())
}

/// Jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        ("state" = Option<String>, Query, description = "queued, running, paused, succeeded, failed, aborted or cancelled"),
        ("region" = Option<String>, Query, description = "one region served by this console; without it, every region"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page", body = JobPage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<JobPage>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let (mut st, mut limit, mut cursor, mut region) = (None, None, None, None);
    for (k, v) in pairs(raw.as_deref())? {
        match k.as_str() {
            "state" => once(&mut st, "state", v)?,
            "region" => once(&mut region, "region", v)?,
            "limit" => once(&mut limit, "limit", v)?,
            "cursor" => once(&mut cursor, "cursor", v)?,
            other => return Err(unknown_param(other, "state, region, limit, cursor")),
        }
    }
    let filter = JobFilter {
        region: super::instances::region_filter(&state, region.as_deref())?,
        state: st.map(|s| JobState::parse(&s)).transpose().map_err(|_| {
            Problem::bad_request(
                "state: queued, running, paused, succeeded, failed, aborted or cancelled",
            )
        })?,
        created_by: (!token.groups.is_empty()).then(|| token.name.as_str().to_owned()),
    };
    let page = state
        .store
        .jobs()
        .list_jobs(&filter, limit_of(limit)?, cursor.as_deref())
        .await?;
    // The page's counts in one query, not one per job.
    let ids: Vec<&str> = page.items.iter().map(|r| r.id.as_str()).collect();
    let mut counts = state.store.jobs().job_counts_of(&ids).await?;
    let items = page
        .items
        .iter()
        .map(|r| job_view(r, counts.remove(&r.id).unwrap_or_default()))
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(Json(JobPage {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// One job, with its counts.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "the job id")),
    responses(
        (status = 200, description = "the job", body = JobOut),
        (status = 400, description = "a malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job (or not the token's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let job = visible_job(&state, &token, &id).await?;
    Ok(Json(view_of(&state, &job).await?))
}

/// A job's executions, in its order.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/executions",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "the job id"),
        ("state" = Option<Vec<String>>, Query, description = "only these states (repeatable)"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page", body = ExecutionPage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job (or not the token's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn executions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ExecutionPage>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let (mut states, mut limit, mut cursor) = (Vec::new(), None, None);
    for (k, v) in pairs(raw.as_deref())? {
        match k.as_str() {
            "state" => states.push(ExecState::parse(&v).map_err(|_| {
                Problem::bad_request(
                    "state: queued, in_progress, succeeded, failed, timed_out, rejected or cancelled",
                )
            })?),
            "limit" => once(&mut limit, "limit", v)?,
            "cursor" => once(&mut cursor, "cursor", v)?,
            other => return Err(unknown_param(other, "state, limit, cursor")),
        }
    }
    let limit = limit_of(limit)?;
    let job = visible_job(&state, &token, &id).await?;
    let page = state
        .store
        .jobs()
        .list_executions(&job.id, &states, limit, cursor.as_deref())
        .await?;
    Ok(Json(ExecutionPage {
        items: page.items.into_iter().map(execution_view).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn change(
    state: &AppState,
    job: &JobRecord,
    t: JobTransition,
    refused: &str,
) -> Result<Json<JobOut>, Problem> {
    if !state.store.jobs().transition_job(&job.id, &t).await? {
        return Err(Problem::conflict(format!("job {} {refused}", job.id)));
    }
    let job = state
        .store
        .jobs()
        .get_job(&job.id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no job {}", job.id)))?;
    Ok(Json(view_of(state, &job).await?))
}

/// Cancels a job: its queued executions are cancelled now; those in progress finish.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "the job id")),
    responses(
        (status = 200, description = "the job, cancelled", body = JobOut),
        (status = 400, description = "a malformed job id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job (or not the token's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job has already ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, Problem> {
    let token = authorize(&state, &headers, Scope::Operate).await?;
    cancel_job(&state, &token, &remote, &id).await
}

/// Cancels a job the token may see, audited as `job.cancel` (the API and the web console's
/// button both come here).
pub(crate) async fn cancel_job(
    state: &AppState,
    token: &TokenRecord,
    remote: &RemoteAddr,
    id: &str,
) -> Result<Json<JobOut>, Problem> {
    let job = visible_job(state, token, id).await?;
    let out = change(
        state,
        &job,
        JobTransition {
            from: vec![JobState::Queued, JobState::Running, JobState::Paused],
            to: JobState::Cancelled,
            reason: Some(format!("cancelled by {}", token.name)),
            // A runner lets go of it once what is in flight has finished.
            active: true,
            now_ms: now_ms(),
            cancel_queued: true,
            wave: None,
        },
        "has already ended",
    )
    .await?;
    audit_job(
        state,
        &job.region,
        token,
        remote,
        "job.cancel",
        Some(&job.method),
        json!({"job_id": job.id}),
    )
    .await;
    tracing::info!(job = %job.id, by = %token.name, "job cancelled");
    Ok(out)
}

/// Resumes a paused job with its next wave.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/resume",
    tag = "jobs",
    params(("id" = String, Path, description = "the job id")),
    responses(
        (status = 200, description = "the job, running again", body = JobOut),
        (status = 400, description = "a malformed job id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job (or not the token's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job is not paused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, Problem> {
    let token = authorize(&state, &headers, Scope::Operate).await?;
    resume_job(&state, &token, &remote, &id).await
}

/// Resumes a paused job the token may see with its next wave, audited as `job.resume` (the
/// API and the web console's button both come here).
pub(crate) async fn resume_job(
    state: &AppState,
    token: &TokenRecord,
    remote: &RemoteAddr,
    id: &str,
) -> Result<Json<JobOut>, Problem> {
    let job = visible_job(state, token, id).await?;
    let out = change(
        state,
        &job,
        JobTransition {
            from: vec![JobState::Paused],
            to: JobState::Running,
            reason: None,
            active: true,
            now_ms: now_ms(),
            cancel_queued: false,
            wave: Some(job.current_wave.saturating_add(1).min(job.last_wave)),
        },
        "is not paused",
    )
    .await?;
    jobs::runner::wake();
    audit_job(
        state,
        &job.region,
        token,
        remote,
        "job.resume",
        Some(&job.method),
        json!({"job_id": job.id}),
    )
    .await;
    tracing::info!(job = %job.id, by = %token.name, "job resumed");
    Ok(out)
}

/// A child job over the failed and timed-out executions of an ended job, with new request ids.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry-failed",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "the parent job's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; the child's id derives from it (a job is retried at most once in any case)"),
    ),
    responses(
        (status = 201, description = "the child job (parent_job_id set)", body = JobOut),
        (status = 200, description = "the child this job's one retry made already", body = JobOut),
        (status = 400, description = "a malformed job id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job (or not the token's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job has not ended, or nothing failed, or its retry is a job the token may not see", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a failed gateway is no longer known", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn retry_failed(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Operate).await?;
    let key = idempotency_key(&headers)?;
    let (status, out) = retry_job(&state, &token, &remote, &id, key).await?;
    Ok((status, Json(out)).into_response())
}

/// A child job over the failures of job `id` (201), or the child its one retry made already
/// (200); audited as `job.retry_failed` (the API and the web console's button both come here).
pub(crate) async fn retry_job(
    state: &AppState,
    token: &TokenRecord,
    remote: &RemoteAddr,
    id: &str,
    key: Option<IdempotencyKey>,
) -> Result<(StatusCode, JobOut), Problem> {
    let parent = visible_job(state, token, id).await?;
    // At most one child per job: a repeat (a client retrying, a second operator) gets it.
    if let Some(out) = existing_retry(state, token, &parent).await? {
        return Ok((StatusCode::OK, out));
    }
    if !parent.state.is_final() {
        return Err(Problem::conflict(format!(
            "job {} is {}; retry its failures once it has ended",
            parent.id,
            parent.state.as_str()
        )));
    }
    let failed = jobs::failures(state.store.as_ref(), &parent.id).await?;
    if failed.is_empty() {
        return Err(Problem::conflict(format!(
            "job {} has no failed or timed-out execution",
            parent.id
        )));
    }
    let req = jobs::child_request(&parent, &failed)?;
    let now = now_ms();
    let plan = jobs::plan(state.store.as_ref(), &parent.region, req, token, now)
        .await
        .map_err(create_problem)?;
    let keyed = key.map(|key| Keyed {
        id: jobs::keyed_job_id(
            &parent.region,
            &token.name,
            &format!("retry:{}", parent.id),
            &key,
        ),
        request_hash: None,
    });
    let child = match jobs::create_as(
        state.store.as_ref(),
        &parent.region,
        plan,
        token,
        Some(parent.id.clone()),
        now,
        keyed,
    )
    .await
    {
        Ok(child) => child,
        // Another call retried it meanwhile: the child it made.
        Err(CreateError::Store(StoreError::Conflict(why))) => {
            let parent = visible_job(state, token, id).await?;
            return match existing_retry(state, token, &parent).await? {
                Some(out) => Ok((StatusCode::OK, out)),
                None => Err(Problem::conflict(why)),
            };
        }
        Err(e) => return Err(create_problem(e)),
    };
    audit_job(
        state,
        &child.region,
        token,
        remote,
        "job.retry_failed",
        Some(&child.method),
        json!({"job_id": child.id, "parent_job_id": parent.id}),
    )
    .await;
    tracing::info!(job = %child.id, parent = %parent.id, by = %token.name, "retry job created");
    Ok((StatusCode::CREATED, view_of(state, &child).await?))
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    /// The names the issue fixes for jobs are in the document, as required fields.
    #[test]
    fn the_document_has_the_fixed_job_names() {
        let doc = serde_json::to_value(super::super::ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let required = |name: &str| -> Vec<String> {
            serde_json::from_value(schemas[name]["required"].clone()).unwrap()
        };
        for field in ["id", "state", "counts", "parent_job_id", "target", "method"] {
            assert!(required("JobOut").contains(&field.to_owned()), "{field}");
        }
        for field in [
            "total",
            "queued",
            "in_progress",
            "succeeded",
            "failed",
            "timed_out",
            "rejected",
            "cancelled",
        ] {
            assert!(required("JobCounts").contains(&field.to_owned()), "{field}");
        }
        for field in [
            "method",
            "target",
            "rate_per_minute",
            "max_in_flight",
            "execution_timeout_ms",
        ] {
            assert!(
                required("JobRequest").contains(&field.to_owned()),
                "{field}"
            );
        }
        assert_eq!(required("JobPage"), ["items", "next_cursor"]);
        assert_eq!(required("ExecutionPage"), ["items", "next_cursor"]);
        for path in ["/v1/jobs", "/v1/jobs/{id}/retry-failed"] {
            assert!(doc["paths"][path]["post"]["security"].is_array(), "{path}");
            let params = doc["paths"][path]["post"]["parameters"].to_string();
            assert!(params.contains("Idempotency-Key"), "{path}: {params}");
        }
        assert!(
            schemas["JobOrDryRun"]["oneOf"].is_array(),
            "{}",
            schemas["JobOrDryRun"]
        );
    }
}
