//! What a job is, parsed from its request: every value built checked, so the engine and the
//! runner never see a rate of zero or a method the protocol does not know.
//!
//! The request as accepted (defaults filled in) is what the store keeps; loading a job parses
//! it again through the same checks ([`JobSpec::from_stored`]).

use std::time::Duration;

use csg_protocol::identity::{GroupId, InstanceId, MethodName};
use csg_protocol::methods::{Kind, Method};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Why a job request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field out of range or malformed: 400.
    #[error("{0}")]
    Invalid(String),
    /// The method or its params, as the protocol judges them: 422.
    #[error("{0}")]
    Method(String),
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// The most gateways one job may target.
pub const MAX_TARGETS: usize = 100_000;
/// The most waves a job may declare (a last wave with the rest is implicit).
pub const MAX_WAVES: usize = 20;
/// The deadline when none is given: a day after creation.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// The furthest deadline: 30 days after creation.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Selects gateways from the store, as `GET /v1/instances` does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectorIn {
    /// `online`, `stale` or `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<String>,
    /// Any of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub group: Vec<GroupId>,
    /// Exact agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A case-sensitive substring of the instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Exactly these instance ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ids: Vec<InstanceId>,
    /// `true`: only gateways with drift (a reconcile over them); `false`: only those without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<bool>,
}

/// Which gateways a job runs on: a list of instance ids, or a selector over the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetIn {
    #[schema(value_type = Vec<String>)]
    Instances(Vec<InstanceId>),
    Selector(SelectorIn),
}

/// One wave: a share of the job's gateways, and the success rate it must reach for the job to
/// go on to the next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveIn {
    /// Percent of the job's gateways (1–100); or give `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Number of gateways (at least 1); or give `percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Percent (0–100) of the wave's executions (cancelled ones aside) that must succeed.
    pub success_threshold_pct: u32,
}

/// Stop the job when more than `threshold_pct` % of the executed have failed this way, once at
/// least `min_executed` have finished.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortIn {
    /// `failed`, `rejected`, `timed_out` or `any` (all three).
    pub failure_type: FailureType,
    pub threshold_pct: u32,
    pub min_executed: u32,
}

/// Which failures an abort rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureType {
    Failed,
    Rejected,
    TimedOut,
    Any,
}

/// Retries of retryable errors (`BUSY`, `UNAVAILABLE`, `TIMEOUT`, no reply), with exponential
/// back-off and full jitter, within the execution's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryIn {
    /// Attempts in all, the first included (1–10).
    pub max_attempts: u32,
    /// The first back-off's ceiling, ms (10 – 600000).
    pub base_ms: u64,
    /// The largest back-off ceiling, ms (≥ base_ms, ≤ 600000).
    pub max_ms: u64,
}

impl Default for RetryIn {
    fn default() -> Self {
        RetryIn {
            max_attempts: 3,
            base_ms: 1000,
            max_ms: 30_000,
        }
    }
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The region whose gateways it runs on; required when the console serves several, else
    /// the one it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[schema(example = "sys.ping")]
    pub method: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub target: TargetIn,
    /// Executions started per minute at most (1 – 1000000).
    pub rate_per_minute: u32,
    /// Executions in progress at once at most (1 – 10000).
    pub max_in_flight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortIn>,
    /// One execution's budget, retries included, ms (1000 – 3600000).
    pub execution_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryIn>,
    /// When executions not yet sent (a gateway offline) give up, ms since the Unix epoch;
    /// default a day after creation, at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

/// A percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pct(u32);

impl Pct {
    pub fn new(what: &str, v: u32) -> Result<Self, SpecError> {
        if v <= 100 {
            Ok(Pct(v))
        } else {
            Err(invalid(format!("{what}: a percentage, 0 to 100")))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A wave's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Percent(u32),
    Count(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave {
    pub size: WaveSize,
    pub success_threshold: Pct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortRule {
    pub failure_type: FailureType,
    pub threshold: Pct,
    pub min_executed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

/// A job's checked specification.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub method: MethodName,
    pub kind: Kind,
    pub params: Map<String, Value>,
    pub rate_per_minute: u32,
    pub max_in_flight: u32,
    pub waves: Vec<Wave>,
    pub abort: Option<AbortRule>,
    pub execution_timeout: Duration,
    pub retry: RetryPolicy,
    pub deadline_ms: i64,
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    what: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, SpecError> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(invalid(format!("{what}: {lo} to {hi}, got {v}")))
    }
}

impl JobSpec {
    /// Checks a request made at `now_ms`; returns the spec and the request as it is stored
    /// (the deadline and retry defaults filled in).
    pub fn parse(mut req: JobRequest, now_ms: i64) -> Result<(JobSpec, JobRequest), SpecError> {
        // The protocol's own parse: a method or params the agents would refuse are refused here,
        // before anything is stored.
        let method = Method::parse(&req.method, req.params.clone())
            .map_err(|e| SpecError::Method(e.to_string()))?;
        let method_name = MethodName::new(method.name()).map_err(|e| invalid(e.to_string()))?;
        let rate_per_minute = in_range("rate_per_minute", req.rate_per_minute, 1, 1_000_000)?;
        let max_in_flight = in_range("max_in_flight", req.max_in_flight, 1, 10_000)?;
        let timeout_ms = in_range(
            "execution_timeout_ms",
            req.execution_timeout_ms,
            1000,
            3_600_000,
        )?;
        if req.waves.len() > MAX_WAVES {
            return Err(invalid(format!("waves: at most {MAX_WAVES}")));
        }
        let waves = req
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let size = match (w.percent, w.count) {
                    (Some(p), None) => {
                        WaveSize::Percent(in_range(&format!("waves[{i}].percent"), p, 1, 100)?)
                    }
                    (None, Some(c)) => WaveSize::Count(in_range(
                        &format!("waves[{i}].count"),
                        c,
                        1,
                        MAX_TARGETS as u32,
                    )?),
                    _ => return Err(invalid(format!("waves[{i}]: give either percent or count"))),
                };
                Ok(Wave {
                    size,
                    success_threshold: Pct::new(
                        &format!("waves[{i}].success_threshold_pct"),
                        w.success_threshold_pct,
                    )?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let abort = req
            .abort
            .map(|a| {
                Ok::<_, SpecError>(AbortRule {
                    failure_type: a.failure_type,
                    threshold: Pct::new("abort.threshold_pct", a.threshold_pct)?,
                    min_executed: in_range(
                        "abort.min_executed",
                        a.min_executed,
                        1,
                        MAX_TARGETS as u32,
                    )?,
                })
            })
            .transpose()?;
        let r = *req.retry.get_or_insert_with(RetryIn::default);
        let retry = RetryPolicy {
            max_attempts: in_range("retry.max_attempts", r.max_attempts, 1, 10)?,
            base: Duration::from_millis(in_range("retry.base_ms", r.base_ms, 10, 600_000)?),
            max: Duration::from_millis(in_range("retry.max_ms", r.max_ms, r.base_ms, 600_000)?),
        };
        let default_deadline = now_ms.saturating_add(DEFAULT_DEADLINE.as_millis() as i64);
        let deadline_ms = *req.deadline_ms.get_or_insert(default_deadline);
        in_range(
            "deadline_ms",
            deadline_ms,
            now_ms.saturating_add(1000),
            now_ms.saturating_add(MAX_DEADLINE.as_millis() as i64),
        )?;
        match &req.target {
            TargetIn::Instances(ids) if ids.is_empty() => {
                return Err(invalid("target.instances: at least one instance id"))
            }
            TargetIn::Instances(ids) if ids.len() > MAX_TARGETS => {
                return Err(invalid(format!("target.instances: at most {MAX_TARGETS}")))
            }
            _ => {}
        }
        let spec = JobSpec {
            method: method_name,
            kind: method.kind(),
            params: method.params(),
            rate_per_minute,
            max_in_flight,
            waves,
            abort,
            execution_timeout: Duration::from_millis(timeout_ms),
            retry,
            deadline_ms,
        };
        Ok((spec, req))
    }

    /// A stored job's spec, parsed again (as at creation; the deadline is already fixed).
    pub fn from_stored(stored: &Value, created_ms: i64) -> Result<(JobSpec, JobRequest), String> {
        let req: JobRequest =
            serde_json::from_value(stored.clone()).map_err(|e| format!("stored job: {e}"))?;
        // The deadline was checked against the creation time; it may have passed since.
        JobSpec::parse(req, created_ms).map_err(|e| format!("stored job: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> JobRequest {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({"method": "sys.ping", "target": {"instances": ["gw-1"]},
               "rate_per_minute": 60, "max_in_flight": 5, "execution_timeout_ms": 10000})
    }

    #[test]
    fn a_minimal_request_gets_defaults() {
        let (spec, stored) = JobSpec::parse(req(base()), 1_000).unwrap();
        assert_eq!(spec.method.as_str(), "sys.ping");
        assert_eq!(spec.kind, Kind::Read);
        assert_eq!(spec.retry.max_attempts, 3);
        assert_eq!(spec.deadline_ms, 1_000 + 86_400_000);
        assert_eq!(stored.deadline_ms, Some(spec.deadline_ms));
        let back = JobSpec::from_stored(&serde_json::to_value(&stored).unwrap(), 1_000).unwrap();
        assert_eq!(back.0, spec);
    }

    #[test]
    fn the_protocol_judges_method_and_params() {
        let mut v = base();
        v["method"] = json!("sys.nope");
        assert!(matches!(
            JobSpec::parse(req(v), 0),
            Err(SpecError::Method(_))
        ));
        let mut v = base();
        v["params"] = json!({"x": 1});
        assert!(matches!(
            JobSpec::parse(req(v), 0),
            Err(SpecError::Method(_))
        ));
        let mut v = base();
        v["method"] = json!("sys.reconcile");
        assert_eq!(JobSpec::parse(req(v), 0).unwrap().0.kind, Kind::Mutation);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (k, bad) in [
            ("rate_per_minute", json!(0)),
            ("max_in_flight", json!(0)),
            ("execution_timeout_ms", json!(10)),
            (
                "waves",
                json!([{"percent": 10, "count": 3, "success_threshold_pct": 90}]),
            ),
            (
                "waves",
                json!([{"percent": 0, "success_threshold_pct": 90}]),
            ),
            ("waves", json!([{"count": 1, "success_threshold_pct": 101}])),
            (
                "abort",
                json!({"failure_type": "any", "threshold_pct": 10, "min_executed": 0}),
            ),
            (
                "retry",
                json!({"max_attempts": 0, "base_ms": 100, "max_ms": 1000}),
            ),
            (
                "retry",
                json!({"max_attempts": 2, "base_ms": 1000, "max_ms": 100}),
            ),
            ("deadline_ms", json!(5)),
            ("target", json!({"instances": []})),
        ] {
            let mut v = base();
            v[k] = bad.clone();
            assert!(
                matches!(
                    JobSpec::parse(req(v), 1_000_000),
                    Err(SpecError::Invalid(_))
                ),
                "{k} = {bad}"
            );
        }
        let mut v = base();
        v["colour"] = json!("red");
        assert!(serde_json::from_value::<JobRequest>(v).is_err());
        let mut v = base();
        v["target"] = json!({"instances": ["a/b"]});
        assert!(serde_json::from_value::<JobRequest>(v).is_err());
    }
}
