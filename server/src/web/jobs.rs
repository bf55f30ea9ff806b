//! The jobs pages: the list (state filter, keyset paging, newest first), one job (its spec,
//! counts, its waves, a progress bar, its executions paged, live from the job events),
//! cancelling one, resuming a paused one and retrying its failures. Starting one is
//! [`super::job_form`].
//!
//! Cancel, resume and retry are the API's (`http::jobs`): the same checks, the same audit
//! records (`job.cancel`, `job.resume`, `job.retry_failed`).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use csg_protocol::identity::{GroupId, InstanceId};
use serde::Deserialize;
use serde_json::Value;

use super::fleet::gateway_href;
use super::session::{form, reader, sender};
use super::view::{render, utc, Chrome, PageError};
use crate::http::jobs::{cancel_job, job_view, resume_job, retry_job, visible_job, JobOut};
use crate::http::problem::Problem;
use crate::http::{AppState, RemoteAddr};
use crate::jobs::engine;
use crate::jobs::model::{FailureType, JobSpec, TargetIn, WaveSize};
use crate::store::{
    JobCounts, JobFilter, JobRecord, JobState, PageLimit, Scope, StoreError, TokenRecord,
};

/// Jobs and executions a page.
const PAGE_ROWS: u32 = 50;

const JOB_STATES: [&str; 7] = [
    "queued",
    "running",
    "paused",
    "succeeded",
    "failed",
    "aborted",
    "cancelled",
];

fn problem_page(p: Problem, token: &TokenRecord) -> PageError {
    PageError::reading(p).by(token)
}

/// Finished executions of the total, and the percentage, for the bar.
fn progress(c: &JobCounts) -> (u64, u64) {
    let done = c.total.saturating_sub(c.queued + c.in_progress);
    let pct = done.saturating_mul(100).checked_div(c.total).unwrap_or(0);
    (done, pct)
}

pub struct JobLine {
    pub id: String,
    pub href: String,
    pub method: String,
    pub region: String,
    pub state: &'static str,
    pub done: u64,
    pub total: u64,
    pub failed: u64,
    pub by: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    jobs: Vec<JobLine>,
    state: String,
    states: [&'static str; 7],
    next: Option<String>,
    first: Option<String>,
    error: Option<String>,
}

fn job_href(id: &str) -> String {
    // Job ids are request ids ([A-Za-z0-9._-]), safe in a path.
    format!("/ui/jobs/{id}")
}

/// `GET /ui/jobs`: newest first, `?state=` and `?cursor=`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let token = &signed.token;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let mut st = String::new();
    let mut cursor = None;
    for (k, v) in pairs {
        match k.as_str() {
            "state" => st = v,
            "cursor" if !v.is_empty() => cursor = Some(v),
            _ => {}
        }
    }
    let mut page = JobsPage {
        chrome: Chrome::new("Jobs", Some(token), signed.csrf.clone()),
        jobs: Vec::new(),
        state: st.clone(),
        states: JOB_STATES,
        next: None,
        first: None,
        error: None,
    };
    let job_state = if st.is_empty() {
        None
    } else {
        match JobState::parse(&st) {
            Ok(s) => Some(s),
            Err(_) => {
                page.error = Some(format!("no job state {st:?}"));
                return Ok(render(&page));
            }
        }
    };
    let filter = JobFilter {
        region: None,
        state: job_state,
        // A token limited to groups sees the jobs it created, as in the API.
        created_by: (!token.groups.is_empty()).then(|| token.name.as_str().to_owned()),
    };
    let limit = PageLimit::new(PAGE_ROWS).map_err(PageError::from)?;
    let listed = match state
        .store
        .jobs()
        .list_jobs(&filter, limit, cursor.as_deref())
        .await
    {
        Ok(p) => p,
        Err(crate::store::StoreError::Invalid(why)) => {
            page.error = Some(why);
            return Ok(render(&page));
        }
        Err(e) => return Err(PageError::from(e).by(token)),
    };
    let ids: Vec<&str> = listed.items.iter().map(|r| r.id.as_str()).collect();
    let mut counts = state
        .store
        .jobs()
        .job_counts_of(&ids)
        .await
        .map_err(|e| PageError::from(e).by(token))?;
    page.jobs = listed
        .items
        .iter()
        .map(|r| {
            let c = counts.remove(&r.id).unwrap_or_default();
            let (done, _) = progress(&c);
            JobLine {
                id: r.id.clone(),
                href: job_href(&r.id),
                method: r.method.clone(),
                region: r.region.as_str().to_owned(),
                state: r.state.as_str(),
                done,
                total: c.total,
                failed: c.failed + c.timed_out + c.rejected,
                by: r.created_by.clone(),
                created: utc(r.created_ms),
            }
        })
        .collect();
    let base = if st.is_empty() {
        String::new()
    } else {
        serde_urlencoded::to_string([("state", st.as_str())]).unwrap_or_default()
    };
    (page.next, page.first) =
        super::view::pager("/ui/jobs", &base, listed.next_cursor, cursor.is_some());
    Ok(render(&page))
}

pub struct ExecLine {
    pub instance: String,
    pub href: String,
    pub wave: u32,
    pub state: &'static str,
    pub request_id: String,
    pub attempts: u32,
    pub error: String,
    pub finished: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobOut,
    params: String,
    target: String,
    done: u64,
    pct: u64,
    is_final: bool,
    failures: u64,
    created: String,
    started: String,
    finished: String,
    execs: Vec<ExecLine>,
    next: Option<String>,
    first: Option<String>,
    can_operate: bool,
    /// What the page was reached by: a job just started, cancelled, resumed or retried.
    flash: Option<String>,
    /// Its waves, when it declared some (a job without is one wave of all).
    waves: Vec<WaveLine>,
    /// Paused: which wave fell short, by how much, and what resuming sends.
    paused: Option<String>,
    /// The wave a resume sends, from 1.
    resume_wave: u32,
    /// The abort rule, in words (empty: none).
    abort: String,
    deadline: String,
}

/// One wave of a job as its page shows it. Waves are numbered from 1 on the pages (the API
/// and the store number them from 0).
pub struct WaveLine {
    pub n: u32,
    /// As declared: `1 gateway`, `25 %`, or `the rest`.
    pub declared: String,
    /// Its executions.
    pub gateways: usize,
    /// The share that must succeed for the job to go on (the last wave has none).
    pub threshold: Option<u32>,
    /// `waiting`, `running`, `paused`, `done`, `stopped` (the job was cancelled or aborted
    /// in it) or `not sent` (the job ended before it).
    pub status: &'static str,
    /// For a wave sent: `1 of 3 succeeded (33 %)`.
    pub result: String,
}

/// `s` succeeded of the wave's executions but the cancelled, and the share, in per cent.
fn succeeded_of(c: &JobCounts) -> (u64, u64, u64) {
    let counted = c.total.saturating_sub(c.cancelled);
    let pct = c
        .succeeded
        .saturating_mul(100)
        .checked_div(counted)
        .unwrap_or(0);
    (c.succeeded, counted, pct)
}

/// A job's waves: the sizes as the engine cut them at creation, and the counts of each wave
/// sent so far (one count a wave, at most 21).
async fn waves_of(
    state: &AppState,
    record: &JobRecord,
    job: &JobOut,
) -> Result<Vec<WaveLine>, StoreError> {
    if job.waves.is_empty() {
        return Ok(Vec::new());
    }
    let spec = match JobSpec::from_stored(&record.spec, record.created_ms) {
        Ok((spec, _)) => spec,
        Err(e) => {
            // The job page shows the rest; the runner says the same when it loads the job.
            tracing::error!(job = %record.id, error = %e, "a stored job does not parse");
            return Ok(Vec::new());
        }
    };
    let total = usize::try_from(job.counts.total).unwrap_or(usize::MAX);
    let (assigned, last) = engine::assign_waves(total, &spec.waves);
    let mut lines = Vec::new();
    for w in 0..=last {
        let current = record.current_wave;
        let status = match (w.cmp(&current), record.state) {
            (std::cmp::Ordering::Less, _) => "done",
            (std::cmp::Ordering::Equal, JobState::Queued) => "waiting",
            (std::cmp::Ordering::Equal, JobState::Running) => "running",
            (std::cmp::Ordering::Equal, JobState::Paused) => "paused",
            (std::cmp::Ordering::Equal, JobState::Succeeded | JobState::Failed) => "done",
            (std::cmp::Ordering::Equal, _) => "stopped",
            (std::cmp::Ordering::Greater, s) if s.is_final() => "not sent",
            (std::cmp::Ordering::Greater, _) => "waiting",
        };
        let result = if w <= current && record.state != JobState::Queued {
            let c = state.store.jobs().job_counts(&record.id, Some(w)).await?;
            let (ok, counted, pct) = succeeded_of(&c);
            format!("{ok} of {counted} succeeded ({pct} %)")
        } else {
            String::new()
        };
        let wave = spec.waves.get(w as usize);
        lines.push(WaveLine {
            n: w + 1,
            declared: match wave.map(|x| x.size) {
                Some(WaveSize::Count(1)) => "1 gateway".to_owned(),
                Some(WaveSize::Count(n)) => format!("{n} gateways"),
                Some(WaveSize::Percent(p)) => format!("{p} %"),
                None => "the rest".to_owned(),
            },
            gateways: assigned.iter().filter(|a| **a == w).count(),
            threshold: wave.map(|x| x.success_threshold.get()),
            status,
            result,
        });
    }
    Ok(lines)
}

/// Why a paused job paused: the wave that fell short, its share succeeded and its threshold.
fn pause_text(waves: &[WaveLine], current: u32) -> Option<String> {
    let w = waves.get(current as usize)?;
    let next = waves.get(current as usize + 1)?;
    let gateways = if next.gateways == 1 {
        "gateway"
    } else {
        "gateways"
    };
    Some(format!(
        "Paused after wave {} of {}: {}, below its threshold of {} %. Resuming sends wave {} \
         ({} {gateways}); cancelling stops the job here.",
        w.n,
        waves.len(),
        w.result,
        w.threshold.unwrap_or(0),
        next.n,
        next.gateways,
    ))
}

fn abort_text(job: &JobOut) -> String {
    job.abort.map_or_else(String::new, |a| {
        let what = match a.failure_type {
            FailureType::Failed => "failed",
            FailureType::Rejected => "rejected",
            FailureType::TimedOut => "timed out",
            FailureType::Any => "failed, rejected or timed out",
        };
        format!(
            "when more than {} % of those executed {what}, once at least {} have run",
            a.threshold_pct, a.min_executed
        )
    })
}

pub(super) fn target_text(t: &TargetIn) -> String {
    match t {
        TargetIn::Instances(ids) => format!(
            "{} listed: {}",
            ids.len(),
            ids.iter()
                .take(10)
                .map(InstanceId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TargetIn::Selector(s) => {
            let mut parts = Vec::new();
            if let Some(p) = &s.presence {
                parts.push(format!("presence {p}"));
            }
            if !s.group.is_empty() {
                let g: Vec<&str> = s.group.iter().map(GroupId::as_str).collect();
                parts.push(format!("group {}", g.join(" or ")));
            }
            if let Some(v) = &s.version {
                parts.push(format!("version {v}"));
            }
            if let Some(q) = &s.q {
                parts.push(format!("id containing {q:?}"));
            }
            if let Some(d) = s.drift {
                parts.push(if d { "with drift" } else { "without drift" }.to_owned());
            }
            if parts.is_empty() {
                "every gateway".to_owned()
            } else {
                format!("gateways with {}", parts.join(", "))
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct JobQuery {
    cursor: Option<String>,
    flash: Option<String>,
}

/// `GET /ui/jobs/{id}`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let token = &signed.token;
    let q: JobQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let record = visible_job(&state, token, &id)
        .await
        .map_err(|p| problem_page(p, token))?;
    let counts = state
        .store
        .jobs()
        .job_counts(&record.id, None)
        .await
        .map_err(|e| PageError::from(e).by(token))?;
    let job = job_view(&record, counts).map_err(|p| problem_page(p, token))?;
    let limit = PageLimit::new(PAGE_ROWS).map_err(PageError::from)?;
    let execs = match state
        .store
        .jobs()
        .list_executions(&record.id, &[], limit, q.cursor.as_deref())
        .await
    {
        Ok(p) => p,
        Err(e) => return Err(PageError::from(e).by(token)),
    };
    let several = state.regions.len() > 1;
    let (done, pct) = progress(&job.counts);
    let waves = waves_of(&state, &record, &job)
        .await
        .map_err(|e| PageError::from(e).by(token))?;
    let paused = (record.state == JobState::Paused)
        .then(|| pause_text(&waves, record.current_wave))
        .flatten();
    let page = JobPage {
        chrome: Chrome::new(format!("Job {}", job.id), Some(token), signed.csrf.clone()),
        params: serde_json::to_string_pretty(&Value::Object(job.params.clone()))
            .unwrap_or_default(),
        target: target_text(&job.target),
        done,
        pct,
        is_final: record.state.is_final(),
        failures: job.counts.failed + job.counts.timed_out,
        created: utc(job.created_ms),
        started: job.started_ms.map(utc).unwrap_or_default(),
        finished: job.finished_ms.map(utc).unwrap_or_default(),
        execs: execs
            .items
            .into_iter()
            .map(|e| ExecLine {
                href: gateway_href(record.region.as_str(), e.instance_id.as_str(), several),
                instance: e.instance_id.as_str().to_owned(),
                wave: e.wave + 1,
                state: e.state.as_str(),
                request_id: e.request_id.as_str().to_owned(),
                attempts: e.attempts,
                error: match (e.error_code, e.error_message) {
                    (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
                    (Some(c), _) => c,
                    _ => String::new(),
                },
                finished: e.finished_ms.map(utc).unwrap_or_default(),
            })
            .collect(),
        next: execs.next_cursor.map(|c| {
            let c = serde_urlencoded::to_string([("cursor", c.as_str())]).unwrap_or_default();
            format!("{}?{c}", job_href(&record.id))
        }),
        first: q.cursor.as_ref().map(|_| job_href(&record.id)),
        can_operate: signed.can(Scope::Operate),
        flash: q.flash.filter(|f| f.len() <= 200),
        waves,
        paused,
        resume_wave: record.current_wave.saturating_add(1).min(record.last_wave) + 1,
        abort: abort_text(&job),
        deadline: utc(job.deadline_ms),
        job,
    };
    Ok(render(&page))
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

pub(super) fn with_flash(id: &str, text: &str) -> String {
    let f = serde_urlencoded::to_string([("flash", text)]).unwrap_or_default();
    format!("{}?{f}", job_href(id))
}

/// A change refused or failed, as a page saying whether to repeat it.
pub(super) fn change_refused(p: Problem, token: &TokenRecord) -> PageError {
    let retry = if p.status == 503 {
        "Retrying is safe: nothing was changed. Try again in a few seconds."
    } else {
        "The same request will be refused the same way until its cause changes."
    };
    PageError::Problem {
        problem: Box::new(p),
        retry,
        token: Some(token.name.as_str().to_owned()),
    }
}

/// `POST /ui/jobs/{id}/cancel`: as `POST /v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: CsrfForm = form(&body)?;
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Operate).await?;
    // The job page shows the outcome, read again.
    let _cancelled = cancel_job(&state, &signed.token, &remote, &id)
        .await
        .map_err(|p| change_refused(p, &signed.token))?;
    Ok(Redirect::to(&with_flash(&id, "cancelled")).into_response())
}

/// `POST /ui/jobs/{id}/resume`: as `POST /v1/jobs/{id}/resume` (the same code and audit
/// record, `job.resume`), back to the job's page.
pub async fn resume(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: CsrfForm = form(&body)?;
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Operate).await?;
    // The job page shows the outcome, read again.
    let _resumed = resume_job(&state, &signed.token, &remote, &id)
        .await
        .map_err(|p| change_refused(p, &signed.token))?;
    Ok(Redirect::to(&with_flash(&id, "resumed")).into_response())
}

/// `POST /ui/jobs/{id}/retry-failed`: as `POST /v1/jobs/{id}/retry-failed`; on to the child.
pub async fn retry(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: CsrfForm = form(&body)?;
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Operate).await?;
    let (_, child) = retry_job(&state, &signed.token, &remote, &id, None)
        .await
        .map_err(|p| change_refused(p, &signed.token))?;
    let text = format!("retry of job {id}");
    Ok(Redirect::to(&with_flash(&child.id, &text)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_the_finished_executions() {
        let c = JobCounts {
            total: 4,
            succeeded: 1,
            failed: 1,
            queued: 2,
            ..JobCounts::default()
        };
        assert_eq!(progress(&c), (2, 50));
        assert_eq!(progress(&JobCounts::default()), (0, 0));
    }
}
