//! The runner: on each replica, it claims runnable jobs with a lease in the store, applies the
//! engine's decisions, sends the executions through the [`Caller`] and writes their outcomes.
//!
//! Everything a job needs to go on lives in the store: the runner's memory holds only its
//! leases, the rate buckets and the calls under way. When a runner stops or dies, another one
//! (on this replica after a restart, or on another replica once the lease has expired) takes
//! the job and sends its in-progress executions again with their same request ids: an agent
//! that already ran one answers from its id memory, so a mutation never runs twice.

use crate::now_ms;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use csg_console::CallError;
use csg_protocol::envelope::Reply;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use csg_protocol::methods::Kind;

use super::engine::{self, Snapshot, Step, TokenBucket};
use super::model::JobSpec;
use crate::events::{Bus, Event};
use crate::rpc::{CallSpec, Caller};
use crate::store::{
    ExecState, ExecUpdate, ExecutionRecord, JobCounts, JobRecord, JobState, JobTransition, Region,
    Store, StoreError,
};

/// How long an agent remembers a mutation's request id: at least 10 minutes after the mutation
/// finished (docs/protocol.md, section 7, "A mutation's id"; `agent.reply_cache_ttl_s`, never
/// below 600; `sys.capabilities` reports it as `limits.id_memory_ttl_s`).
pub const AGENT_ID_MEMORY: Duration = Duration::from_secs(600);

/// The oldest in-progress mutation a runner taking a job over sends again: one whose first
/// attempt started longer ago may have been forgotten by its agent, and a re-send could run it a
/// second time. A minute under [`AGENT_ID_MEMORY`], for clocks of replicas and gateways that
/// differ. Older ones end `timed_out` with [`UNKNOWN_OUTCOME`].
pub const RESEND_LIMIT: Duration = Duration::from_secs(540);

/// The error code of an execution whose outcome is unknown (see [`RESEND_LIMIT`]).
pub const UNKNOWN_OUTCOME: &str = "UNKNOWN_OUTCOME";

/// Wakes the runners of this process: a job was created (or resumed) here, so it is claimed at
/// once instead of at the next look (`claim_every`). Process-wide because the API and the
/// runner share no handle; a runner of another region or store woken by it only costs one
/// claim query. Jobs made on another replica are found by the periodic look. A counter in a
/// watch channel, so a wake that comes while a runner is busy is not lost.
static WAKE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Tells this process's runners to look for jobs now.
pub fn wake() {
    WAKE.send_modify(|n| *n = n.wrapping_add(1));
}

/// How a runner behaves; the defaults suit a console.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This replica's name in the leases (the console id).
    pub owner: String,
    pub region: Region,
    /// How often each owned job is looked at.
    pub tick: Duration,
    /// How long a lease lasts without renewal; another replica takes the job after it.
    pub lease: Duration,
    /// How often leases are renewed (well under `lease`).
    pub renew_every: Duration,
    /// How often the runner looks for jobs to take.
    pub claim_every: Duration,
    /// The least time between two progress events of one job (a state change is never held).
    pub event_every: Duration,
    /// Jobs one runner owns at once.
    pub max_jobs: u32,
    /// Executions started per store round trip; a tick starts as many batches as the job's
    /// rate and in-flight cap allow.
    pub batch: u32,
    /// How long a stopping runner waits for calls under way.
    pub drain: Duration,
}

impl RunnerConfig {
    pub fn new(owner: impl Into<String>, region: Region) -> Self {
        RunnerConfig {
            owner: owner.into(),
            region,
            // Each tick costs an owned job one read of its row (and its counts when something
            // changed); a quarter second is quick enough for a person watching.
            tick: Duration::from_millis(250),
            lease: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            claim_every: Duration::from_secs(1),
            event_every: Duration::from_millis(500),
            max_jobs: 16,
            // Fewer, larger round trips: a SQLite store shares its one writer with the
            // heartbeat flush.
            batch: 2000,
            drain: Duration::from_secs(5),
        }
    }
}

/// The jobs runner of one replica.
pub struct Runner;

impl Runner {
    /// Runs until `stop` fires (or its sender is dropped): then it waits up to `cfg.drain` for
    /// calls under way, records their outcomes and gives its leases up. Aborting the task
    /// instead is a crash: leases expire and in-progress executions are sent again by whoever
    /// takes the jobs over.
    pub fn spawn(
        store: Arc<dyn Store>,
        caller: Arc<dyn Caller>,
        bus: Bus,
        cfg: RunnerConfig,
        stop: oneshot::Receiver<()>,
    ) -> JoinHandle<()> {
        tokio::spawn(run(store, caller, bus, cfg, stop))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A job this runner holds the lease of.
struct Owned {
    record: JobRecord,
    spec: JobSpec,
    bucket: TokenBucket,
    in_flight: HashSet<i64>,
    renewed: Instant,
    published: Option<(JobState, JobCounts)>,
    published_at: Option<Instant>,
    /// The counts as last read, and the job's row they go with; `None` once something may have
    /// changed them (a call ended, executions started, a transition), so the next tick reads
    /// them again instead of every tick.
    counts: Option<(JobCounts, JobCounts)>,
}

/// A finished call.
struct Done {
    job_id: String,
    seq: i64,
    attempts: u32,
    first_started_ms: i64,
    result: Result<Reply, CallError>,
}

struct Ctx {
    store: Arc<dyn Store>,
    caller: Arc<dyn Caller>,
    bus: Bus,
    cfg: RunnerConfig,
    jobs: HashMap<String, Owned>,
    calls: JoinSet<Done>,
    /// Outcomes the store refused to take (it was unavailable): written again each tick.
    unwritten: Vec<(String, Vec<(i64, ExecUpdate)>)>,
}

async fn run(
    store: Arc<dyn Store>,
    caller: Arc<dyn Caller>,
    bus: Bus,
    cfg: RunnerConfig,
    mut stop: oneshot::Receiver<()>,
) {
    info!(owner = %cfg.owner, "jobs runner started");
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ctx = Ctx {
        store,
        caller,
        bus,
        cfg,
        jobs: HashMap::new(),
        calls: JoinSet::new(),
        unwritten: Vec::new(),
    };
    let mut last_claim: Option<Instant> = None;
    let mut woken = WAKE.subscribe();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(done) = ctx.calls.join_next(), if !ctx.calls.is_empty() => {
                // Whatever else has finished meanwhile is written with it, in one transaction.
                let mut batch: Vec<Done> = done.into_iter().collect();
                while let Some(more) = ctx.calls.try_join_next() {
                    batch.extend(more);
                }
                let settled = ctx.record(batch).await;
                // A job whose last call under way just ended may be done (or have room for
                // more): step it now rather than at the next tick.
                for id in settled {
                    if let Err(e) = ctx.step(&id).await {
                        warn!(job = %id, error = %e, "jobs: step failed");
                    }
                }
            }
            Ok(()) = woken.changed() => {
                last_claim = Some(Instant::now());
                match ctx.claim().await {
                    Ok(taken) => {
                        for id in taken {
                            if let Err(e) = ctx.step(&id).await {
                                warn!(job = %id, error = %e, "jobs: step failed");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "jobs: claiming failed"),
                }
            }
            _ = tick.tick() => {
                if last_claim.is_none_or(|t| t.elapsed() >= ctx.cfg.claim_every) {
                    last_claim = Some(Instant::now());
                    if let Err(e) = ctx.claim().await {
                        warn!(error = %e, "jobs: claiming failed");
                    }
                }
                ctx.flush_unwritten().await;
                let ids: Vec<String> = ctx.jobs.keys().cloned().collect();
                for id in ids {
                    if let Err(e) = ctx.step(&id).await {
                        warn!(job = %id, error = %e, "jobs: step failed");
                    }
                }
            }
        }
    }
    // Stopping: let calls under way finish (bounded), record them, give the leases up.
    let deadline = tokio::time::Instant::now() + ctx.cfg.drain;
    while !ctx.calls.is_empty() {
        match tokio::time::timeout_at(deadline, ctx.calls.join_next()).await {
            Ok(Some(Ok(done))) => {
                ctx.record(vec![done]).await;
            }
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    ctx.calls.abort_all();
    ctx.flush_unwritten().await;
    for id in ctx.jobs.keys() {
        if let Err(e) = ctx.store.jobs().release_lease(id, &ctx.cfg.owner).await {
            warn!(job = %id, error = %e, "jobs: releasing the lease failed");
        }
    }
    info!(owner = %ctx.cfg.owner, "jobs runner stopped");
}

impl Ctx {
    /// Takes the jobs nobody runs; returns the ids taken.
    async fn claim(&mut self) -> Result<Vec<String>, StoreError> {
        let room = self.cfg.max_jobs.saturating_sub(self.jobs.len() as u32);
        if room == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let held: Vec<String> = self.jobs.keys().cloned().collect();
        let claimed = self
            .store
            .jobs()
            .claim_jobs(
                &self.cfg.region,
                &self.cfg.owner,
                now,
                now + ms(self.cfg.lease),
                room,
                &held,
            )
            .await?;
        let mut taken = Vec::new();
        for record in claimed {
            if self.jobs.contains_key(&record.id) {
                continue;
            }
            if self.jobs.len() as u32 >= self.cfg.max_jobs {
                self.store
                    .jobs()
                    .release_lease(&record.id, &self.cfg.owner)
                    .await?;
                continue;
            }
            let spec = match JobSpec::from_stored(&record.spec, record.created_ms) {
                Ok((spec, _)) => spec,
                Err(why) => {
                    warn!(job = %record.id, error = %why, "jobs: a stored job does not parse; failing it");
                    self.transition(
                        &record.id,
                        &[
                            JobState::Queued,
                            JobState::Running,
                            JobState::Aborted,
                            JobState::Cancelled,
                        ],
                        JobState::Failed,
                        Some(why),
                        false,
                        false,
                        None,
                    )
                    .await?;
                    continue;
                }
            };
            // Taken over: what a previous owner had in flight is sent again, same ids. Read
            // before the job counts as taken: a job held without them would wait for them
            // forever, so on a failure the lease goes back and a later claim tries again.
            let id = record.id.clone();
            let orphans = match self.orphans(&id, spec.kind, now).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(job = %id, error = %e, "jobs: reading a taken job's executions failed; lease given back");
                    if let Err(e) = self.store.jobs().release_lease(&id, &self.cfg.owner).await {
                        warn!(job = %id, error = %e, "jobs: releasing the lease failed");
                    }
                    continue;
                }
            };
            info!(job = %id, owner = %self.cfg.owner, "jobs: job taken");
            let owned = Owned {
                bucket: TokenBucket::new(spec.rate_per_minute, now),
                spec,
                record,
                in_flight: HashSet::new(),
                renewed: Instant::now(),
                published: None,
                published_at: None,
                counts: None,
            };
            self.jobs.insert(id.clone(), owned);
            for e in orphans {
                debug!(job = %id, seq = e.seq, "jobs: re-sending an in-progress execution");
                self.send(&id, e);
            }
            taken.push(id);
        }
        Ok(taken)
    }

    /// A taken job's in-progress executions that may be sent again. A mutation first sent
    /// longer than [`RESEND_LIMIT`] ago may be forgotten by its agent, which would run it
    /// again: it ends `timed_out` instead, its outcome unknown (a read is always safe to send).
    async fn orphans(
        &self,
        id: &str,
        kind: Kind,
        now: i64,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let all = self.store.jobs().in_progress_executions(id).await?;
        let limit = ms(RESEND_LIMIT);
        let (stale, fresh): (Vec<_>, Vec<_>) = all.into_iter().partition(|e| {
            kind == Kind::Mutation && e.first_started_ms.is_some_and(|t| now - t > limit)
        });
        if !stale.is_empty() {
            let message = format!(
                "outcome unknown: sent more than {} minutes ago, longer than the gateway is \
                 sure to remember the request; check the gateway",
                RESEND_LIMIT.as_secs() / 60
            );
            let updates: Vec<(i64, ExecUpdate)> = stale
                .iter()
                .map(|e| {
                    (
                        e.seq,
                        ExecUpdate::Done {
                            state: ExecState::TimedOut,
                            error_code: Some(UNKNOWN_OUTCOME.to_owned()),
                            error_message: Some(message.clone()),
                            reply: None,
                        },
                    )
                })
                .collect();
            let n = self
                .store
                .jobs()
                .finish_executions(id, &updates, now)
                .await?;
            warn!(job = %id, n, "jobs: in-progress mutations too old to send again ended timed_out");
        }
        Ok(fresh)
    }

    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        reason: Option<String>,
        active: bool,
        cancel_queued: bool,
        wave: Option<u32>,
    ) -> Result<bool, StoreError> {
        self.store
            .jobs()
            .transition_job(
                id,
                &JobTransition {
                    from: from.to_vec(),
                    to,
                    reason,
                    active,
                    now_ms: now_ms(),
                    cancel_queued,
                    wave,
                },
            )
            .await
    }

    fn send(&mut self, job_id: &str, e: ExecutionRecord) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if !job.in_flight.insert(e.seq) {
            return;
        }
        let now = now_ms();
        let first = e.first_started_ms.unwrap_or(now);
        let spec = CallSpec {
            instance: e.instance_id.clone(),
            method: job.spec.method.clone(),
            params: job.spec.params.clone(),
            id: e.request_id.clone(),
            group: Some(e.group_id.clone()),
            timeout: engine::attempt_timeout(
                &job.spec.retry,
                job.spec.execution_timeout,
                first,
                now,
            ),
        };
        let caller = self.caller.clone();
        let job_id = job_id.to_owned();
        let (seq, attempts) = (e.seq, e.attempts);
        self.calls.spawn(async move {
            let result = caller.call(&spec).await;
            Done {
                job_id,
                seq,
                attempts,
                first_started_ms: first,
                result,
            }
        });
    }

    /// Writes the outcomes; returns the jobs that have no call under way any more.
    async fn record(&mut self, batch: Vec<Done>) -> Vec<String> {
        let mut by_job: HashMap<String, Vec<(i64, ExecUpdate)>> = HashMap::new();
        for done in batch {
            let Some(update) = self.outcome(&done) else {
                continue;
            };
            if let Some(job) = self.jobs.get_mut(&done.job_id) {
                job.in_flight.remove(&done.seq);
            }
            by_job
                .entry(done.job_id)
                .or_default()
                .push((done.seq, update));
        }
        let mut settled = Vec::new();
        for (job_id, updates) in by_job {
            if self
                .jobs
                .get(&job_id)
                .is_some_and(|j| j.in_flight.is_empty())
            {
                settled.push(job_id.clone());
            }
            self.write(job_id, updates).await;
        }
        settled
    }

    fn outcome(&self, done: &Done) -> Option<ExecUpdate> {
        // The job's spec: from this runner's copy; a job given up meanwhile is left to
        // whoever holds it now (it sends the execution again).
        let job = self.jobs.get(&done.job_id)?;
        let outcome = engine::classify(&done.result);
        let delay = engine::retry_delay(&job.spec.retry, done.attempts);
        Some(engine::after_attempt(
            outcome,
            done.attempts,
            &job.spec.retry,
            done.first_started_ms,
            job.spec.execution_timeout,
            now_ms(),
            delay,
        ))
    }

    async fn write(&mut self, job_id: String, updates: Vec<(i64, ExecUpdate)>) {
        match self
            .store
            .jobs()
            .finish_executions(&job_id, &updates, now_ms())
            .await
        {
            Ok(_) => self.changed(&job_id),
            Err(e) if e.is_unavailable() => {
                warn!(job = %job_id, n = updates.len(), error = %e, "jobs: outcomes kept until the store answers");
                self.unwritten.push((job_id, updates));
            }
            Err(e) => {
                warn!(job = %job_id, n = updates.len(), error = %e, "jobs: outcomes not recorded");
            }
        }
    }

    async fn flush_unwritten(&mut self) {
        for (job_id, updates) in std::mem::take(&mut self.unwritten) {
            self.write(job_id, updates).await;
        }
    }

    /// The job's counts must be read again on its next tick.
    fn changed(&mut self, id: &str) {
        if let Some(j) = self.jobs.get_mut(id) {
            j.counts = None;
        }
    }

    /// Drops a job from this runner (finished, paused, or its lease lost).
    async fn let_go(&mut self, id: &str, release: bool) {
        if self.jobs.remove(id).is_some() && release {
            if let Err(e) = self.store.jobs().release_lease(id, &self.cfg.owner).await {
                warn!(job = %id, error = %e, "jobs: releasing the lease failed");
            }
        }
    }

    /// Looks at a job and applies the engine's decision; a job that just started or moved to
    /// its next wave is looked at again at once (it has executions to send), a few times at
    /// most.
    async fn step(&mut self, id: &str) -> Result<(), StoreError> {
        for _ in 0..3 {
            if !self.step_once(id).await? {
                break;
            }
        }
        Ok(())
    }

    /// One look at a job; true when it should be looked at again at once.
    async fn step_once(&mut self, id: &str) -> Result<bool, StoreError> {
        let lease = ms(self.cfg.lease);
        let renew_due = self
            .jobs
            .get(id)
            .is_some_and(|j| j.renewed.elapsed() >= self.cfg.renew_every);
        if renew_due {
            let kept = self
                .store
                .jobs()
                .renew_lease(id, &self.cfg.owner, now_ms() + lease)
                .await?;
            if !kept {
                warn!(job = %id, "jobs: lease lost to another runner");
                self.let_go(id, false).await;
                return Ok(false);
            }
            if let Some(j) = self.jobs.get_mut(id) {
                j.renewed = Instant::now();
            }
        }
        let Some(record) = self.store.jobs().get_job(id).await? else {
            self.let_go(id, false).await;
            return Ok(false);
        };
        if record.lease_owner.as_deref() != Some(self.cfg.owner.as_str()) {
            self.let_go(id, false).await;
            return Ok(false);
        }
        // The counts change only through this runner (outcomes, starts, expiries) or with the
        // job's row (a cancel, a resume): read them again only then.
        let cached = self.jobs.get(id).and_then(|j| {
            let same = j.record.state == record.state
                && j.record.active == record.active
                && j.record.current_wave == record.current_wave;
            j.counts.filter(|_| same)
        });
        let (counts, wave_counts) = match cached {
            Some(c) => c,
            None => {
                let counts = self.store.jobs().job_counts(id, None).await?;
                let wave_counts = self
                    .store
                    .jobs()
                    .job_counts(id, Some(record.current_wave))
                    .await?;
                (counts, wave_counts)
            }
        };
        let now = now_ms();
        let step = {
            let Some(job) = self.jobs.get_mut(id) else {
                return Ok(false);
            };
            job.record = record.clone();
            job.counts = Some((counts, wave_counts));
            engine::decide(&Snapshot {
                state: record.state,
                now_ms: now,
                deadline_ms: record.deadline_ms,
                counts,
                wave_counts,
                current_wave: record.current_wave,
                last_wave: record.last_wave,
                waves: &job.spec.waves,
                abort: job.spec.abort.as_ref(),
                max_in_flight: job.spec.max_in_flight,
            })
        };
        // Counts as of this tick; the next tick sees what this one changed.
        self.publish(id, record.state, counts, false);
        let running = [JobState::Running];
        // A transition that did not apply (a cancel or resume landed since the row was read)
        // publishes nothing and keeps the job: the next tick reads the row again.
        match step {
            Step::Start => {
                let started = self
                    .transition(
                        id,
                        &[JobState::Queued],
                        JobState::Running,
                        None,
                        true,
                        false,
                        None,
                    )
                    .await?;
                self.changed(id);
                return Ok(started);
            }
            Step::Settle => {
                if self.jobs.get(id).is_some_and(|j| j.in_flight.is_empty()) {
                    let settled = self
                        .transition(
                            id,
                            &[record.state],
                            record.state,
                            record.state_reason.clone(),
                            false,
                            false,
                            None,
                        )
                        .await?;
                    if settled {
                        self.publish(id, record.state, counts, true);
                        self.let_go(id, true).await;
                        return Ok(false);
                    }
                } else {
                    // The calls under way mark the counts changed as they end.
                    return Ok(false);
                }
            }
            Step::ExpireQueued => {
                let n = self.store.jobs().expire_queued(id, now).await?;
                info!(job = %id, expired = n, "jobs: deadline passed; executions not sent timed out");
            }
            Step::Abort(why) => {
                info!(job = %id, reason = %why, "jobs: aborting");
                self.transition(id, &running, JobState::Aborted, Some(why), true, true, None)
                    .await?;
            }
            Step::Finish(state) => {
                let finished = self
                    .transition(id, &running, state, None, false, false, None)
                    .await?;
                if finished {
                    info!(job = %id, state = state.as_str(), "jobs: job finished");
                    self.publish(id, state, counts, true);
                    self.let_go(id, true).await;
                    return Ok(false);
                }
            }
            Step::NextWave(w) => {
                info!(job = %id, wave = w, "jobs: next wave");
                let moved = self
                    .transition(id, &running, JobState::Running, None, true, false, Some(w))
                    .await?;
                self.changed(id);
                return Ok(moved);
            }
            Step::Pause(why) => {
                let paused = self
                    .transition(
                        id,
                        &running,
                        JobState::Paused,
                        Some(why.clone()),
                        false,
                        false,
                        None,
                    )
                    .await?;
                if paused {
                    info!(job = %id, reason = %why, "jobs: paused");
                    self.publish(id, JobState::Paused, counts, true);
                    self.let_go(id, true).await;
                    return Ok(false);
                }
            }
            Step::Send(room) => {
                self.start_some(id, &record, room, now).await?;
                return Ok(false);
            }
            Step::Wait => return Ok(false),
        }
        self.changed(id);
        Ok(false)
    }

    /// Starts up to `room` due executions, as many as the rate allows, `batch` per round
    /// trip.
    async fn start_some(
        &mut self,
        id: &str,
        record: &JobRecord,
        room: usize,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut room = room;
        loop {
            let Some(job) = self.jobs.get_mut(id) else {
                return Ok(());
            };
            let n = room
                .min(job.bucket.available(now))
                .min(self.cfg.batch as usize);
            if n == 0 {
                return Ok(());
            }
            let due = self
                .store
                .jobs()
                .due_executions(id, &self.cfg.region, record.current_wave, now, n as u32)
                .await?;
            if due.is_empty() {
                return Ok(());
            }
            let fewer = due.len() < n;
            let seqs: Vec<i64> = due.iter().map(|e| e.seq).collect();
            let started = self.store.jobs().start_executions(id, &seqs, now).await?;
            room = room.saturating_sub(started.len());
            if let Some(job) = self.jobs.get_mut(id) {
                job.bucket.take(started.len(), now);
                job.counts = None;
            }
            for e in started {
                self.send(id, e);
            }
            if fewer {
                return Ok(());
            }
        }
    }

    /// Publishes the job's state and counts when they changed, at most every `event_every`
    /// (a state change, or `force`, goes at once).
    fn publish(&mut self, id: &str, state: JobState, counts: JobCounts, force: bool) {
        let every = self.cfg.event_every;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let now = (state, counts);
        if job.published == Some(now) {
            return;
        }
        let state_changed = job.published.is_none_or(|(s, _)| s != state);
        let due = job.published_at.is_none_or(|t| t.elapsed() >= every);
        if !(force || state_changed || due) {
            return;
        }
        job.published = Some(now);
        job.published_at = Some(Instant::now());
        self.bus.publish(Event::Job {
            id: id.to_owned(),
            state: state.as_str().to_owned(),
            counts: serde_json::to_value(counts).unwrap_or_default(),
            created_by: job.record.created_by.clone(),
        });
    }
}
