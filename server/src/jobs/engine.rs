//! The job engine's decisions, as pure functions of what the store counted and the clock: what
//! a job does next, how many executions may start, which wave an execution belongs to, what an
//! answer does to an execution, how long to wait before a retry. No I/O here; the runner
//! applies the decisions.

use std::time::Duration;

use csg_console::CallError;
use csg_protocol::envelope::{ErrorCode, Reply, ReplyBody};
use csg_transport::Backoff;
use serde_json::{json, Value};

use super::model::{AbortRule, FailureType, RetryPolicy, Wave, WaveSize};
use crate::store::{ExecState, ExecUpdate, JobCounts, JobState};

/// A token bucket: `rate_per_minute` tokens a minute, holding at most a second's worth (at
/// least one), starting with one token. It lives in the runner's memory: a runner taking a job
/// over starts a fresh bucket, so across a takeover the rate may be exceeded by one bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    // In integers, so no rounding loses tokens: one token is 60 000 units and every
    // millisecond adds `rate_per_minute` units.
    per_ms: u64,
    capacity: u64,
    units: u64,
    last_ms: i64,
}

const UNITS_PER_TOKEN: u64 = 60_000;

impl TokenBucket {
    pub fn new(rate_per_minute: u32, now_ms: i64) -> Self {
        let per_ms = u64::from(rate_per_minute);
        TokenBucket {
            per_ms,
            capacity: (per_ms * 1000).max(UNITS_PER_TOKEN),
            units: UNITS_PER_TOKEN,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        if now_ms > self.last_ms {
            let elapsed = u64::try_from(now_ms - self.last_ms).unwrap_or(0);
            self.units = self
                .units
                .saturating_add(elapsed.saturating_mul(self.per_ms))
                .min(self.capacity);
            self.last_ms = now_ms;
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now_ms: i64) -> usize {
        self.refill(now_ms);
        usize::try_from(self.units / UNITS_PER_TOKEN).unwrap_or(usize::MAX)
    }

    /// Takes up to `n` tokens; returns how many were taken.
    pub fn take(&mut self, n: usize, now_ms: i64) -> usize {
        let got = n.min(self.available(now_ms));
        self.units -= got as u64 * UNITS_PER_TOKEN;
        got
    }
}

/// The wave of each of `total` executions, in order: the declared waves first (each at least
/// one execution while any are left), then a last wave with the rest. Also returns the last
/// wave's index.
pub fn assign_waves(total: usize, waves: &[Wave]) -> (Vec<u32>, u32) {
    let mut out = Vec::with_capacity(total);
    for (i, w) in waves.iter().enumerate() {
        let size = match w.size {
            WaveSize::Count(c) => c as usize,
            WaveSize::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        };
        let room = total - out.len();
        out.extend(std::iter::repeat_n(i as u32, size.min(room)));
    }
    let last = waves.len() as u32;
    let room = total - out.len();
    out.extend(std::iter::repeat_n(last, room));
    (out, last)
}

/// What the runner sees of a job at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub state: JobState,
    pub now_ms: i64,
    pub deadline_ms: i64,
    /// The whole job.
    pub counts: JobCounts,
    /// The current wave alone.
    pub wave_counts: JobCounts,
    pub current_wave: u32,
    pub last_wave: u32,
    pub waves: &'a [Wave],
    pub abort: Option<&'a AbortRule>,
    pub max_in_flight: u32,
}

/// What a job does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A queued job starts running.
    Start,
    /// Cancelled or aborted, nothing in flight any more: the runner lets go of it.
    Settle,
    /// The deadline passed: executions not yet sent time out.
    ExpireQueued,
    /// The abort rule holds: stop (queued executions are cancelled, in-flight ones finish).
    Abort(String),
    /// Everything finished.
    Finish(JobState),
    /// The current wave is done and met its threshold.
    NextWave(u32),
    /// The current wave is done and fell short.
    Pause(String),
    /// Start up to this many executions (the in-flight cap's room; the rate comes after).
    Send(usize),
    /// Nothing to do now.
    Wait,
}

/// Executions that have run to an end (cancelled ones aside).
pub fn executed(c: &JobCounts) -> u64 {
    c.succeeded + c.failed + c.timed_out + c.rejected
}

/// Whether the abort rule holds: more than `threshold` % of the executed failed this way, and at
/// least `min_executed` executed.
pub fn abort_triggered(rule: &AbortRule, c: &JobCounts) -> Option<String> {
    let done = executed(c);
    if done < u64::from(rule.min_executed) || done == 0 {
        return None;
    }
    let (bad, what) = match rule.failure_type {
        FailureType::Failed => (c.failed, "failed"),
        FailureType::Rejected => (c.rejected, "rejected"),
        FailureType::TimedOut => (c.timed_out, "timed out"),
        FailureType::Any => (
            c.failed + c.rejected + c.timed_out,
            "failed, rejected or timed out",
        ),
    };
    // bad / done > threshold / 100, in integers.
    (bad * 100 > u64::from(rule.threshold.get()) * done).then(|| {
        format!(
            "abort rule: {bad} of {done} executed {what} (more than {} %)",
            rule.threshold.get()
        )
    })
}

/// The final state of a job with nothing queued or in flight.
pub fn final_state(c: &JobCounts) -> JobState {
    if c.succeeded + c.cancelled == c.total {
        JobState::Succeeded
    } else {
        JobState::Failed
    }
}

/// Whether a finished wave met its threshold: succeeded ≥ threshold % of its executions,
/// cancelled ones aside. An empty wave passes.
pub fn wave_passes(wave: &Wave, c: &JobCounts) -> bool {
    let counted = c.total - c.cancelled;
    counted == 0 || c.succeeded * 100 >= u64::from(wave.success_threshold.get()) * counted
}

/// The next step of a job.
pub fn decide(s: &Snapshot<'_>) -> Step {
    let c = &s.counts;
    match s.state {
        JobState::Cancelled | JobState::Aborted => {
            return if c.in_progress == 0 {
                Step::Settle
            } else {
                Step::Wait
            };
        }
        JobState::Queued => return Step::Start,
        JobState::Running => {}
        // Paused and final jobs are not the runner's.
        _ => return Step::Settle,
    }
    if c.queued > 0 && s.now_ms >= s.deadline_ms {
        return Step::ExpireQueued;
    }
    if let Some(why) = s.abort.and_then(|r| abort_triggered(r, c)) {
        return Step::Abort(why);
    }
    if c.queued == 0 && c.in_progress == 0 {
        return Step::Finish(final_state(c));
    }
    let w = &s.wave_counts;
    if w.queued == 0 && w.in_progress == 0 && s.current_wave < s.last_wave {
        let passes = s
            .waves
            .get(s.current_wave as usize)
            .is_none_or(|wave| wave_passes(wave, w));
        return if passes {
            Step::NextWave(s.current_wave + 1)
        } else {
            Step::Pause(format!(
                "wave {}: {} of {} succeeded, below its threshold of {} %",
                s.current_wave,
                w.succeeded,
                w.total - w.cancelled,
                s.waves
                    .get(s.current_wave as usize)
                    .map_or(0, |x| x.success_threshold.get())
            ))
        };
    }
    let room = u64::from(s.max_in_flight).saturating_sub(c.in_progress);
    if room == 0 || c.queued == 0 {
        Step::Wait
    } else {
        Step::Send(room as usize)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Refused without running.
    Rejected {
        code: String,
        message: String,
    },
    /// Ran (or may have) and failed.
    Failed {
        code: String,
        message: String,
    },
    /// Worth another attempt with the same id; `no_answer` when nothing came back.
    Retryable {
        code: String,
        message: String,
        no_answer: bool,
    },
}

/// The most bytes of a reply's result kept in an execution row.
pub const MAX_SUMMARY_BYTES: usize = 2048;

/// A reply's result as kept in the row: as it came when small, else its size.
pub fn summary(result: &Value) -> Value {
    let text = result.to_string();
    if text.len() <= MAX_SUMMARY_BYTES {
        result.clone()
    } else {
        json!({"truncated": true, "bytes": text.len()})
    }
}

/// Sorts an answer (or its absence) into an outcome.
pub fn classify(result: &Result<Reply, CallError>) -> Outcome {
    match result {
        Ok(reply) => match &reply.body {
            ReplyBody::Ok(v) => Outcome::Succeeded(summary(v)),
            ReplyBody::Err(e) => {
                let code = e.code.as_str().to_owned();
                let message = e.message.clone();
                match e.code {
                    ErrorCode::Unauthorized
                    | ErrorCode::BadRequest
                    | ErrorCode::InvalidParams
                    | ErrorCode::UnknownMethod
                    | ErrorCode::Expired => Outcome::Rejected { code, message },
                    ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Timeout => {
                        Outcome::Retryable {
                            code,
                            message,
                            no_answer: false,
                        }
                    }
                    _ => Outcome::Failed { code, message },
                }
            }
        },
        Err(e) => match e {
            // The request can never be sent as it is.
            CallError::Address { .. } | CallError::TooLarge { .. } => Outcome::Failed {
                code: "CONSOLE".to_owned(),
                message: e.to_string(),
            },
            _ => Outcome::Retryable {
                code: "NO_REPLY".to_owned(),
                message: e.to_string(),
                no_answer: true,
            },
        },
    }
}

/// The back-off before attempt `attempts + 1` (after `attempts` made): full jitter under
/// `base · 2^(attempts-1)`, capped at `max`.
pub fn retry_delay(policy: &RetryPolicy, attempts: u32) -> Duration {
    let mut b = Backoff::new(policy.base, policy.max);
    for _ in 1..attempts {
        b.next_delay();
    }
    b.next_delay()
}

/// What an attempt's outcome does to the execution: done, or queued again for a retry when the
/// error is retryable, attempts remain and the retry can start within the execution's budget
/// (from its first start).
pub fn after_attempt(
    outcome: Outcome,
    attempts: u32,
    policy: &RetryPolicy,
    first_started_ms: i64,
    execution_timeout: Duration,
    now_ms: i64,
    delay: Duration,
) -> ExecUpdate {
    let done =
        |state: ExecState, code: Option<String>, message: Option<String>, reply| ExecUpdate::Done {
            state,
            error_code: code,
            error_message: message,
            reply,
        };
    match outcome {
        Outcome::Succeeded(v) => done(ExecState::Succeeded, None, None, Some(v)),
        Outcome::Rejected { code, message } => {
            done(ExecState::Rejected, Some(code), Some(message), None)
        }
        Outcome::Failed { code, message } => {
            done(ExecState::Failed, Some(code), Some(message), None)
        }
        Outcome::Retryable {
            code,
            message,
            no_answer,
        } => {
            let budget_end = first_started_ms + execution_timeout.as_millis() as i64;
            let next = now_ms + delay.as_millis() as i64;
            if attempts < policy.max_attempts && next < budget_end {
                ExecUpdate::Retry {
                    next_attempt_ms: next,
                    error_code: code,
                    error_message: message,
                }
            } else {
                let state = if no_answer || code == ErrorCode::Timeout.as_str() {
                    ExecState::TimedOut
                } else {
                    ExecState::Failed
                };
                done(state, Some(code), Some(message), None)
            }
        }
    }
}

/// One attempt's timeout: the execution's budget shared among its attempts (at least 1 s), and
/// never past what is left of it (but at least 1 s, so an execution taken over late still gets
/// its answer, which the agent gives from its id memory).
pub fn attempt_timeout(
    policy: &RetryPolicy,
    execution_timeout: Duration,
    first_started_ms: i64,
    now_ms: i64,
) -> Duration {
    let share = (execution_timeout / policy.max_attempts.max(1)).max(Duration::from_secs(1));
    let left_ms = first_started_ms + execution_timeout.as_millis() as i64 - now_ms;
    let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
    share.min(left).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::Pct;
    use csg_protocol::envelope::RpcError;
    use csg_protocol::{InstanceId, RequestId};

    fn counts(q: u64, ip: u64, ok: u64, failed: u64, to: u64, rej: u64, can: u64) -> JobCounts {
        JobCounts {
            total: q + ip + ok + failed + to + rej + can,
            queued: q,
            in_progress: ip,
            succeeded: ok,
            failed,
            timed_out: to,
            rejected: rej,
            cancelled: can,
        }
    }

    fn wave(pct: u32, threshold: u32) -> Wave {
        Wave {
            size: WaveSize::Percent(pct),
            success_threshold: Pct::new("t", threshold).unwrap(),
        }
    }

    fn snap<'a>(c: JobCounts, w: JobCounts, waves: &'a [Wave], cur: u32) -> Snapshot<'a> {
        Snapshot {
            state: JobState::Running,
            now_ms: 1000,
            deadline_ms: 10_000,
            counts: c,
            wave_counts: w,
            current_wave: cur,
            last_wave: waves.len() as u32,
            waves,
            abort: None,
            max_in_flight: 4,
        }
    }

    #[test]
    fn the_bucket_gives_the_rate_and_no_more() {
        let mut b = TokenBucket::new(600, 0); // 10 a second, holds 10
        assert_eq!(b.take(100, 0), 1);
        assert_eq!(b.take(100, 0), 0);
        assert_eq!(b.take(100, 100), 1);
        assert_eq!(
            b.take(100, 10_000),
            10,
            "a full bucket holds a second's worth"
        );
        // Over a minute of ticks, no more than the rate (plus the first token).
        let mut b = TokenBucket::new(60, 0);
        let sent: usize = (0..=600).map(|t| b.take(1000, t * 100)).sum();
        assert_eq!(sent, 61);
        let mut slow = TokenBucket::new(1, 0);
        assert_eq!(slow.take(5, 0), 1);
        assert_eq!(slow.take(5, 59_999), 0);
        assert_eq!(slow.take(5, 60_000), 1);
    }

    #[test]
    fn waves_split_the_targets_in_order() {
        let (w, last) = assign_waves(10, &[wave(10, 100), wave(50, 80)]);
        assert_eq!(w, vec![0, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(last, 2);
        let counted = Wave {
            size: WaveSize::Count(20),
            success_threshold: Pct::new("t", 0).unwrap(),
        };
        let (w, _) = assign_waves(3, &[counted, wave(50, 0)]);
        assert_eq!(w, vec![0, 0, 0]);
        let (w, last) = assign_waves(3, &[]);
        assert_eq!((w, last), (vec![0, 0, 0], 0));
    }

    #[test]
    fn a_job_sends_within_its_in_flight_cap_and_finishes_by_its_counts() {
        let c = counts(10, 1, 0, 0, 0, 0, 0);
        assert_eq!(decide(&snap(c, c, &[], 0)), Step::Send(3));
        let c = counts(10, 4, 0, 0, 0, 0, 0);
        assert_eq!(decide(&snap(c, c, &[], 0)), Step::Wait);
        let c = counts(0, 0, 5, 0, 0, 0, 1);
        assert_eq!(
            decide(&snap(c, c, &[], 0)),
            Step::Finish(JobState::Succeeded)
        );
        let c = counts(0, 0, 5, 0, 1, 0, 0);
        assert_eq!(decide(&snap(c, c, &[], 0)), Step::Finish(JobState::Failed));
        let mut s = snap(c, c, &[], 0);
        s.state = JobState::Queued;
        assert_eq!(decide(&s), Step::Start);
    }

    #[test]
    fn a_finished_wave_goes_on_or_pauses_by_its_threshold() {
        let waves = [wave(20, 80)];
        let job = counts(8, 0, 2, 0, 0, 0, 0);
        // Wave 0 done, 2 of 2 succeeded: next wave.
        let w = counts(0, 0, 2, 0, 0, 0, 0);
        assert_eq!(decide(&snap(job, w, &waves, 0)), Step::NextWave(1));
        // 1 of 2: 50 % < 80 %: pause.
        let job = counts(8, 0, 1, 1, 0, 0, 0);
        let w = counts(0, 0, 1, 1, 0, 0, 0);
        assert!(matches!(decide(&snap(job, w, &waves, 0)), Step::Pause(_)));
        // A wave still running sends.
        let w = counts(1, 0, 1, 0, 0, 0, 0);
        assert_eq!(decide(&snap(job, w, &waves, 0)), Step::Send(4));
    }

    #[test]
    fn the_abort_rule_waits_for_its_minimum() {
        let rule = AbortRule {
            failure_type: FailureType::Failed,
            threshold: Pct::new("t", 10).unwrap(),
            min_executed: 50,
        };
        // 49 executed, 10 failed: not yet.
        assert_eq!(abort_triggered(&rule, &counts(0, 0, 39, 10, 0, 0, 0)), None);
        // 50 executed, 5 failed = 10 %: not more than 10 %.
        assert_eq!(abort_triggered(&rule, &counts(0, 0, 45, 5, 0, 0, 0)), None);
        // 50 executed, 6 failed: abort.
        assert!(abort_triggered(&rule, &counts(0, 0, 44, 6, 0, 0, 0)).is_some());
        // Another failure type does not count for `failed`.
        assert_eq!(abort_triggered(&rule, &counts(0, 0, 40, 0, 10, 0, 0)), None);
        let any = AbortRule {
            failure_type: FailureType::Any,
            ..rule
        };
        assert!(abort_triggered(&any, &counts(0, 0, 40, 0, 5, 5, 0)).is_some());
        let c = counts(10, 0, 44, 6, 0, 0, 0);
        let mut s = snap(c, c, &[], 0);
        s.abort = Some(&rule);
        assert!(matches!(decide(&s), Step::Abort(_)));
    }

    #[test]
    fn the_deadline_expires_what_was_never_sent() {
        let c = counts(3, 0, 1, 0, 0, 0, 0);
        let mut s = snap(c, c, &[], 0);
        s.now_ms = s.deadline_ms;
        assert_eq!(decide(&s), Step::ExpireQueued);
    }

    #[test]
    fn cancelled_jobs_settle_once_nothing_is_in_flight() {
        let c = counts(0, 2, 1, 0, 0, 0, 5);
        let mut s = snap(c, c, &[], 0);
        s.state = JobState::Cancelled;
        assert_eq!(decide(&s), Step::Wait);
        let c = counts(0, 0, 3, 0, 0, 0, 5);
        s.counts = c;
        assert_eq!(decide(&s), Step::Settle);
    }

    fn reply_err(code: ErrorCode) -> Result<Reply, CallError> {
        Ok(Reply::err(
            Some(RequestId::new("r").unwrap()),
            RpcError::new(code, "m"),
        ))
    }

    #[test]
    fn answers_sort_into_rejected_failed_and_retryable() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::BadRequest,
            ErrorCode::InvalidParams,
            ErrorCode::UnknownMethod,
        ] {
            assert!(matches!(
                classify(&reply_err(code)),
                Outcome::Rejected { .. }
            ));
        }
        for code in [
            ErrorCode::Conflict,
            ErrorCode::BackendError,
            ErrorCode::NotFound,
        ] {
            assert!(matches!(classify(&reply_err(code)), Outcome::Failed { .. }));
        }
        for code in [ErrorCode::Busy, ErrorCode::Unavailable, ErrorCode::Timeout] {
            assert!(matches!(
                classify(&reply_err(code)),
                Outcome::Retryable { .. }
            ));
        }
        let none: Result<Reply, CallError> = Err(CallError::NoReply {
            instance: InstanceId::new("gw").unwrap(),
            id: RequestId::new("r").unwrap(),
            attempts: 1,
            waited: Duration::from_secs(1),
        });
        assert!(matches!(
            classify(&none),
            Outcome::Retryable {
                no_answer: true,
                ..
            }
        ));
        let ok = Ok(Reply::ok(
            RequestId::new("r").unwrap(),
            json!({"pong": true}),
        ));
        assert_eq!(classify(&ok), Outcome::Succeeded(json!({"pong": true})));
        let big = json!({"x": "y".repeat(5000)});
        assert_eq!(summary(&big)["truncated"], json!(true));
    }

    #[test]
    fn retries_back_off_within_the_policy_and_the_budget() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            max: Duration::from_millis(250),
        };
        for _ in 0..200 {
            assert!(retry_delay(&p, 1) <= Duration::from_millis(100));
            assert!(retry_delay(&p, 2) <= Duration::from_millis(200));
            assert!(retry_delay(&p, 5) <= Duration::from_millis(250));
        }
        let busy = || Outcome::Retryable {
            code: "BUSY".into(),
            message: "m".into(),
            no_answer: false,
        };
        let t = Duration::from_secs(10);
        let d = Duration::from_millis(50);
        assert!(matches!(
            after_attempt(busy(), 1, &p, 0, t, 100, d),
            ExecUpdate::Retry {
                next_attempt_ms: 150,
                ..
            }
        ));
        // Attempts used up: failed (BUSY), or timed out when no answer came.
        assert!(matches!(
            after_attempt(busy(), 3, &p, 0, t, 100, d),
            ExecUpdate::Done {
                state: ExecState::Failed,
                ..
            }
        ));
        let silent = Outcome::Retryable {
            code: "NO_REPLY".into(),
            message: "m".into(),
            no_answer: true,
        };
        assert!(matches!(
            after_attempt(silent, 3, &p, 0, t, 100, d),
            ExecUpdate::Done {
                state: ExecState::TimedOut,
                ..
            }
        ));
        // Past the budget: no retry.
        assert!(matches!(
            after_attempt(busy(), 1, &p, 0, t, 9_990, d),
            ExecUpdate::Done { .. }
        ));
        assert_eq!(
            attempt_timeout(&p, t, 0, 0),
            t / 3,
            "a third of the budget each"
        );
        assert_eq!(attempt_timeout(&p, t, 0, 9_500), Duration::from_secs(1));
    }
}
