//! Jobs: one method sent to many gateways, with a rate limit, a cap on executions in flight,
//! optional waves, an abort rule, retries and a deadline (AWS IoT Jobs is the model).
//!
//! - [`model`]: the request, parsed into a checked [`model::JobSpec`];
//! - [`engine`]: the decisions, pure functions (tested without I/O);
//! - [`runner`]: claims jobs with a lease in the store and runs them through the
//!   [`crate::rpc::Caller`] seam;
//! - this module: creating a job (targets resolved once, at creation), and its child job over
//!   the failures of a finished one.

pub mod engine;
pub mod model;
pub mod runner;

use csg_console::derive_instance_id;
use csg_protocol::identity::{GroupId, InstanceId, RequestId};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::store::{
    ExecState, InstanceFilter, InstanceOrder, JobRecord, NewExecution, NewJob, PageLimit, Presence,
    Region, Store, StoreError, TokenName, TokenRecord,
};
use model::{JobRequest, JobSpec, SpecError, TargetIn, MAX_TARGETS};
pub use runner::{Runner, RunnerConfig};

/// Why a job cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Targets that are unknown (or outside the token's groups): 422.
    #[error("{0}")]
    Targets(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One gateway a job would run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance_id: InstanceId,
    pub group_id: GroupId,
}

/// A new job's id: `job-` then the time and 64 random bits, usable as a request id base.
pub fn new_job_id(now_ms: i64) -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Other(format!("random source: {e}")))?;
    Ok(format!(
        "job-{:x}-{}",
        now_ms.max(0),
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(format!(
                "Idempotency-Key: 1 to {} characters",
                Self::MAX_LEN
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("Idempotency-Key: visible ASCII characters only".to_owned());
        }
        Ok(IdempotencyKey(value.to_owned()))
    }
}

/// The id of the job an Idempotency-Key stands for: the same for the same key, region, token
/// and purpose (`create`, or `retry:` and the parent's id), so a repeat finds the job the first
/// call made and two tokens' keys never meet.
pub fn keyed_job_id(
    region: &Region,
    token: &TokenName,
    purpose: &str,
    key: &IdempotencyKey,
) -> String {
    let mut h = Sha256::new();
    for part in [region.as_str(), token.as_str(), purpose, key.0.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("job-k{}", &hex::encode(h.finalize())[..32])
}

/// What a repeat with the same Idempotency-Key must match: the SHA-256 (hex) of the request
/// body as JSON (keys in order, no spaces), so layout alone does not make two requests differ.
pub fn request_hash(body: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

/// A job's id and request hash when an Idempotency-Key names it.
pub struct Keyed {
    pub id: String,
    pub request_hash: Option<String>,
}

/// The request id of a job's execution on one gateway: the same for every re-send (after a
/// restart or a takeover too), so the agent answers a repeat from its id memory.
pub fn execution_request_id(job_id: &str, instance: &InstanceId) -> Result<RequestId, StoreError> {
    let base = RequestId::new(job_id).map_err(|e| StoreError::Invalid(format!("job id: {e}")))?;
    Ok(derive_instance_id(&base, instance))
}

/// The filter a token may see through: a token limited to groups sees only theirs.
fn restrict(filter: &mut InstanceFilter, token: &TokenRecord) -> bool {
    if token.groups.is_empty() {
        return true;
    }
    if filter.groups.is_empty() {
        filter.groups = token.groups.clone();
    } else {
        filter.groups.retain(|g| token.groups.contains(g));
    }
    !filter.groups.is_empty()
}

/// Resolves a job's target to gateways, once: an explicit list must name gateways the store
/// knows (within the token's groups); a selector takes what matches now, in id order.
pub async fn resolve(
    store: &dyn Store,
    region: &Region,
    target: &TargetIn,
    token: &TokenRecord,
) -> Result<Vec<Target>, CreateError> {
    let page_limit = PageLimit::new(PageLimit::MAX)?;
    let mut out: Vec<Target> = Vec::new();
    let scan = |mut filter: InstanceFilter| async move {
        filter.region = Some(region.clone());
        let mut found = Vec::new();
        if !restrict(&mut filter, token) {
            return Ok::<_, CreateError>(found);
        }
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .list_instances(
                    &filter,
                    InstanceOrder::default(),
                    page_limit,
                    cursor.as_deref(),
                )
                .await?;
            found.extend(page.items.into_iter().map(|r| Target {
                instance_id: r.instance_id,
                group_id: r.group_id,
            }));
            if found.len() > MAX_TARGETS {
                return Err(CreateError::Targets(format!(
                    "the target selects more than {MAX_TARGETS} gateways; narrow it"
                )));
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(found),
            }
        }
    };
    match target {
        TargetIn::Instances(ids) => {
            let mut wanted: Vec<InstanceId> = ids.clone();
            wanted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            wanted.dedup();
            for chunk in wanted.chunks(InstanceFilter::MAX_IDS) {
                let filter = InstanceFilter {
                    ids: chunk.to_vec(),
                    ..InstanceFilter::default()
                };
                out.extend(scan(filter).await?);
            }
            if out.len() < wanted.len() {
                let known: std::collections::HashSet<&str> =
                    out.iter().map(|t| t.instance_id.as_str()).collect();
                let missing: Vec<&str> = wanted
                    .iter()
                    .map(InstanceId::as_str)
                    .filter(|i| !known.contains(i))
                    .collect();
                return Err(CreateError::Targets(format!(
                    "{} instance(s) never seen (or outside the token's groups): {}{}",
                    missing.len(),
                    missing
                        .iter()
                        .take(10)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                    if missing.len() > 10 { ", …" } else { "" }
                )));
            }
            // In the order given.
            let at: std::collections::HashMap<&str, usize> = ids
                .iter()
                .enumerate()
                .rev()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            out.sort_by_key(|t| {
                at.get(t.instance_id.as_str())
                    .copied()
                    .unwrap_or(usize::MAX)
            });
        }
        TargetIn::Selector(s) => {
            let presence = s
                .presence
                .as_deref()
                .map(Presence::parse)
                .transpose()
                .map_err(|_| {
                    SpecError::Invalid(
                        "target.selector.presence: one of online, stale, offline".to_owned(),
                    )
                })?;
            let filter = InstanceFilter {
                region: None,
                presence,
                groups: s.group.clone(),
                version: s.version.clone(),
                ids: s.ids.clone(),
                q: s.q.clone(),
                drift: s.drift,
            };
            out = scan(filter).await?;
            if out.is_empty() {
                return Err(CreateError::Targets(
                    "the selector matches no gateway".to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// A checked request and its resolved targets, not yet stored (what a dry run shows).
pub struct Plan {
    pub spec: JobSpec,
    pub stored: JobRequest,
    pub targets: Vec<Target>,
}

pub async fn plan(
    store: &dyn Store,
    region: &Region,
    req: JobRequest,
    token: &TokenRecord,
    now_ms: i64,
) -> Result<Plan, CreateError> {
    let (spec, stored) = JobSpec::parse(req, now_ms)?;
    let targets = resolve(store, region, &stored.target, token).await?;
    Ok(Plan {
        spec,
        stored,
        targets,
    })
}

/// Stores a planned job with one execution row per gateway, under a new id.
pub async fn create(
    store: &dyn Store,
    region: &Region,
    plan: Plan,
    token: &TokenRecord,
    parent_job_id: Option<String>,
    now_ms: i64,
) -> Result<JobRecord, CreateError> {
    create_as(store, region, plan, token, parent_job_id, now_ms, None).await
}

/// [`create`], under the id an Idempotency-Key gives when there is one. A job with that id
/// already (a repeat racing the first call), or a parent retried already, is
/// [`StoreError::Conflict`].
pub async fn create_as(
    store: &dyn Store,
    region: &Region,
    plan: Plan,
    token: &TokenRecord,
    parent_job_id: Option<String>,
    now_ms: i64,
    keyed: Option<Keyed>,
) -> Result<JobRecord, CreateError> {
    let (id, request_hash) = match keyed {
        Some(k) => (k.id, k.request_hash),
        None => (new_job_id(now_ms)?, None),
    };
    let (waves, last_wave) = engine::assign_waves(plan.targets.len(), &plan.spec.waves);
    let executions = plan
        .targets
        .iter()
        .zip(waves)
        .map(|(t, wave)| {
            Ok(NewExecution {
                instance_id: t.instance_id.clone(),
                group_id: t.group_id.clone(),
                wave,
                request_id: execution_request_id(&id, &t.instance_id)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let spec = serde_json::to_value(&plan.stored)
        .map_err(|e| StoreError::Other(format!("job spec: {e}")))?;
    let job = NewJob {
        id: id.clone(),
        region: region.clone(),
        parent_job_id,
        method: plan.spec.method.as_str().to_owned(),
        spec,
        last_wave,
        created_by: token.name.clone(),
        created_ms: now_ms,
        deadline_ms: plan.spec.deadline_ms,
        request_hash,
    };
    store.jobs().create_job(&job, &executions).await?;
    runner::wake();
    store
        .jobs()
        .get_job(&id)
        .await?
        .ok_or_else(|| CreateError::Store(StoreError::Other("a created job vanished".into())))
}

/// The gateways whose executions of `job_id` failed or timed out, in order.
pub async fn failures(store: &dyn Store, job_id: &str) -> Result<Vec<Target>, StoreError> {
    let limit = PageLimit::new(PageLimit::MAX)?;
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .jobs()
            .list_executions(
                job_id,
                &[ExecState::Failed, ExecState::TimedOut],
                limit,
                cursor.as_deref(),
            )
            .await?;
        out.extend(page.items.into_iter().map(|e| Target {
            instance_id: e.instance_id,
            group_id: e.group_id,
        }));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// A parent's request again, over `targets`, with a new deadline (the parent's may be past).
pub fn child_request(parent: &JobRecord, targets: &[Target]) -> Result<JobRequest, StoreError> {
    let mut req: JobRequest = serde_json::from_value(parent.spec.clone())
        .map_err(|e| StoreError::Other(format!("stored job {}: {e}", parent.id)))?;
    req.target = TargetIn::Instances(targets.iter().map(|t| t.instance_id.clone()).collect());
    req.deadline_ms = None;
    Ok(req)
}
