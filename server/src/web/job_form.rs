//! The new-job form (`GET /ui/jobs/new`, `POST /ui/jobs`): a job over the fleet page's filter,
//! a dry run first, then confirm. A method's params are one field per member of its params
//! schema, from the console's own protocol crate (the resource forms' code:
//! [`resources::method_fields`]), beside a JSON text area for the rest.
//!
//! Planning and creation are the API's (`http::jobs`, the `jobs` module): the same checks, the
//! same audit record (`job.create`).

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use csg_protocol::identity::GroupId;
use csg_protocol::methods::ALL;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jobs::{change_refused, target_text, with_flash};
use super::resources::{self, member_named, Field};
use super::session::{form, reader, sender, Signed};
use super::view::{render, Chrome, PageError};
use crate::http::jobs::{audit_job, create_problem};
use crate::http::problem::Refusal;
use crate::http::{AppState, RemoteAddr};
use crate::jobs::model::{
    AbortIn, FailureType, JobRequest, JobSpec, RetryIn, SelectorIn, SpecError, TargetIn, WaveIn,
    DEFAULT_DEADLINE,
};
use crate::jobs::{self, engine, CreateError};
use crate::now_ms;
use crate::store::{Scope, TokenRecord};

/// Gateways a dry run names on the page (it counts them all).
const PREVIEW_LIST: usize = 100;

/// What an empty field stands for where the API has no default (`rate_per_minute`,
/// `max_in_flight` and `execution_timeout_ms` are required there); the form shows them in the
/// fields.
const DEFAULT_RATE: u32 = 600;
const DEFAULT_IN_FLIGHT: u32 = 10;
const DEFAULT_TIMEOUT_S: u64 = 30;
/// A wave's threshold left empty: every execution of the wave must succeed.
const DEFAULT_WAVE_PCT: u32 = 100;

/// The new-job form's fields, as sent and as shown again. The rollout's are text as typed:
/// empty is the default, and what does not read is said next to the field.
#[derive(Deserialize, Default, Clone)]
pub struct NewJobForm {
    #[serde(default)]
    pub csrf: Option<String>,
    /// `choose` (the form again, with the chosen method's fields), `preview` (a dry run) or
    /// `start`.
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub params: String,
    // The rollout.
    #[serde(default)]
    pub rate: String,
    #[serde(default)]
    pub in_flight: String,
    #[serde(default)]
    pub timeout_s: String,
    /// Attempts in all (the retry policy's `max_attempts`).
    #[serde(default)]
    pub attempts: String,
    /// Hours from now, or a UTC time (`2026-12-31T18:00`, as `datetime-local` writes it).
    #[serde(default)]
    pub deadline: String,
    /// The first wave: its size, `count` or `percent`, and its success threshold (%).
    #[serde(default)]
    pub w1_size: String,
    #[serde(default)]
    pub w1_unit: String,
    #[serde(default)]
    pub w1_pct: String,
    #[serde(default)]
    pub w2_size: String,
    #[serde(default)]
    pub w2_unit: String,
    #[serde(default)]
    pub w2_pct: String,
    /// The abort rule: which failures count (empty: no rule), above which share, once how many
    /// have run.
    #[serde(default)]
    pub abort_type: String,
    #[serde(default)]
    pub abort_pct: String,
    #[serde(default)]
    pub abort_min: String,
    // The fleet page's filter.
    #[serde(default)]
    pub presence: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub drift: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub region: String,
}

impl NewJobForm {
    fn defaults(mut self) -> Self {
        let fill = |s: &mut String, v: &str| {
            if s.is_empty() {
                *s = v.to_owned();
            }
        };
        fill(&mut self.method, "sys.ping");
        fill(&mut self.params, "{}");
        self
    }

    /// The fleet filter's query, to go back to the same table.
    fn fleet_query(&self) -> String {
        super::view::query_of(&[
            ("presence", self.presence.as_str()),
            ("group", self.group.as_str()),
            ("version", self.version.as_str()),
            ("drift", self.drift.as_str()),
            ("q", self.q.as_str()),
            ("region", self.region.as_str()),
        ])
    }

    /// The rollout's fields as typed (empty ones left at their defaults).
    fn rollout(&self) -> [&str; 12] {
        [
            &self.rate,
            &self.in_flight,
            &self.timeout_s,
            &self.attempts,
            &self.deadline,
            &self.w1_size,
            &self.w1_pct,
            &self.w2_size,
            &self.w2_pct,
            &self.abort_type,
            &self.abort_pct,
            &self.abort_min,
        ]
        .map(|s| s.trim())
    }

    /// The fleet filter as the job's selector, or what is wrong with it.
    fn selector(&self) -> Result<SelectorIn, String> {
        let mut sel = SelectorIn {
            presence: (!self.presence.is_empty()).then(|| self.presence.clone()),
            version: (!self.version.is_empty()).then(|| self.version.clone()),
            q: (!self.q.is_empty()).then(|| self.q.clone()),
            ..SelectorIn::default()
        };
        if !self.group.is_empty() {
            let g = GroupId::new(self.group.as_str())
                .map_err(|e| format!("the filter's group: {e}"))?;
            sel.group.push(g);
        }
        sel.drift = match self.drift.as_str() {
            "" => None,
            "true" => Some(true),
            "false" => Some(false),
            _ => return Err("the filter's drift: true or false".to_owned()),
        };
        Ok(sel)
    }
}

/// Rounds of the API's checks at most: each settles one field of the rollout for good (there
/// are 11, and the method), so this is a bound that is never reached.
const CHECK_ROUNDS: usize = 16;

/// What is wrong, by field, so the page shows each message next to its field.
#[derive(Debug, Default)]
pub struct FieldErrors {
    by_field: BTreeMap<String, String>,
}

impl FieldErrors {
    /// The message about `field`, if any.
    pub fn get(&self, field: &str) -> Option<&String> {
        self.by_field.get(field)
    }

    /// Says `message` about `field`, unless something was said about it already (the first
    /// reason is the one to fix first).
    fn set(&mut self, field: &str, message: impl Into<String>) {
        self.by_field
            .entry(field.to_owned())
            .or_insert_with(|| message.into());
    }

    fn any(&self) -> bool {
        !self.by_field.is_empty()
    }

    fn merge(&mut self, other: FieldErrors) {
        for (k, v) in other.by_field {
            self.set(&k, v);
        }
    }

    fn general(message: impl Into<String>) -> Self {
        let mut e = FieldErrors::default();
        e.set("general", message);
        e
    }

    /// Whether the rollout's fields have something wrong (the rollout is then shown open).
    fn in_rollout(&self) -> bool {
        self.by_field
            .keys()
            .any(|k| !matches!(k.as_str(), "method" | "params" | "general"))
    }

    /// Every message, for the audit record of the refusal.
    fn detail(&self) -> String {
        self.by_field
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A dry run's answer: how many gateways, the first of them, and each wave's size.
pub struct Preview {
    pub total: usize,
    pub names: Vec<String>,
    pub waves: Vec<String>,
}

#[derive(Template)]
#[template(path = "job_new.html")]
struct NewJobPage {
    chrome: Chrome,
    f: NewJobForm,
    selection: String,
    errors: FieldErrors,
    preview: Option<Preview>,
    back: String,
    /// Every method the protocol knows, by family.
    method_groups: Vec<(&'static str, Vec<&'static str>)>,
    /// Whether the form's method is one of them (another is kept, and refused by the API).
    method_known: bool,
    /// The method's params, one field each (none: the method takes none, or is unknown).
    fields: Vec<Field>,
    /// The JSON text area shown open beside the fields (something in it, or wrong).
    params_open: bool,
    /// Reached by "Choose": the first field takes the focus.
    chosen: bool,
    /// The rollout's fields shown (something set in them, or wrong).
    rollout_open: bool,
    /// The rollout as the form stands, in a line (what the empty fields mean included).
    rollout_summary: String,
    default_attempts: u32,
    default_deadline_h: u64,
}

/// A whole number typed in `field`: `None` when empty; what is wrong said next to it.
fn whole(e: &mut FieldErrors, field: &str, text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    match t.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            e.set(field, "a whole number, such as 10");
            None
        }
    }
}

/// As [`whole`], for a field the API takes as a 32-bit number (a larger one is out of its
/// range, which the API's check says).
fn whole32(e: &mut FieldErrors, field: &str, text: &str) -> Option<u32> {
    whole(e, field, text).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// One wave from its fields; `None` when they are all empty.
fn wave_of(e: &mut FieldErrors, n: u32, size: &str, unit: &str, pct: &str) -> Option<WaveIn> {
    let size_field = format!("w{n}_size");
    let size = whole32(e, &size_field, size);
    let pct = whole32(e, &format!("w{n}_pct"), pct);
    let Some(size) = size else {
        if pct.is_some() {
            e.set(
                &size_field,
                "give the wave's size, or leave its threshold empty",
            );
        }
        return None;
    };
    let (percent, count) = match unit {
        "" | "count" => (None, Some(size)),
        "percent" => (Some(size), None),
        _ => {
            e.set(&format!("w{n}_unit"), "gateways or %");
            return None;
        }
    };
    Some(WaveIn {
        percent,
        count,
        success_threshold_pct: pct.unwrap_or(DEFAULT_WAVE_PCT),
    })
}

/// The deadline typed: hours from `now_ms`, or a UTC time; ms since the Unix epoch.
fn deadline_of(e: &mut FieldErrors, text: &str, now_ms: i64) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(h) = t.parse::<f64>() {
        if h.is_finite() {
            // Out of range (past, or beyond 30 days) is the API's check to say.
            return Some(now_ms.saturating_add((h * 3_600_000.0).round() as i64));
        }
    }
    match super::audit::parse_utc(t) {
        Some(ms) => Some(ms),
        None => {
            e.set(
                "deadline",
                "hours from now (such as 6), or a UTC time (such as 2026-12-31T18:00)",
            );
            None
        }
    }
}

/// The request the form describes (its params given), as the API's own type; or what does
/// not read in each field. Ranges are not checked here: that is the API's ([`spec_errors`]).
fn request_of(
    f: &NewJobForm,
    params: Map<String, Value>,
    now_ms: i64,
) -> Result<JobRequest, Box<FieldErrors>> {
    let mut e = FieldErrors::default();
    let method = f.method.trim().to_owned();
    if method.is_empty() {
        e.set("method", "choose a method, such as sys.ping");
    }
    let rate = whole32(&mut e, "rate", &f.rate).unwrap_or(DEFAULT_RATE);
    let in_flight = whole32(&mut e, "in_flight", &f.in_flight).unwrap_or(DEFAULT_IN_FLIGHT);
    let timeout_s = whole(&mut e, "timeout_s", &f.timeout_s).unwrap_or(DEFAULT_TIMEOUT_S);
    let retry = whole32(&mut e, "attempts", &f.attempts).map(|n| RetryIn {
        max_attempts: n,
        ..RetryIn::default()
    });
    let deadline_ms = deadline_of(&mut e, &f.deadline, now_ms);
    let first = wave_of(&mut e, 1, &f.w1_size, &f.w1_unit, &f.w1_pct);
    let second = wave_of(&mut e, 2, &f.w2_size, &f.w2_unit, &f.w2_pct);
    if first.is_none() && second.is_some() {
        e.set("w1_size", "give the first wave before a second one");
    }
    let waves: Vec<WaveIn> = first.into_iter().chain(second).collect();
    let abort_pct = whole32(&mut e, "abort_pct", &f.abort_pct);
    let abort_min = whole32(&mut e, "abort_min", &f.abort_min);
    let abort = match f.abort_type.as_str() {
        "" => {
            if abort_pct.is_some() || abort_min.is_some() {
                e.set(
                    "abort_type",
                    "choose which failures count, or leave the rule's fields empty",
                );
            }
            None
        }
        t => match serde_json::from_value::<FailureType>(Value::String(t.to_owned())) {
            Ok(failure_type) => {
                for (field, text) in [("abort_pct", &f.abort_pct), ("abort_min", &f.abort_min)] {
                    if text.trim().is_empty() {
                        e.set(field, "required with a failure type");
                    }
                }
                match (abort_pct, abort_min) {
                    (Some(threshold_pct), Some(min_executed)) => Some(AbortIn {
                        failure_type,
                        threshold_pct,
                        min_executed,
                    }),
                    _ => None,
                }
            }
            Err(_) => {
                e.set("abort_type", "failed, rejected, timed_out or any");
                None
            }
        },
    };
    let target = match f.selector() {
        Ok(s) => TargetIn::Selector(s),
        Err(why) => {
            e.set("general", why);
            TargetIn::Selector(SelectorIn::default())
        }
    };
    if e.any() {
        return Err(Box::new(e));
    }
    Ok(JobRequest {
        region: (!f.region.is_empty()).then(|| f.region.clone()),
        method,
        params,
        target,
        rate_per_minute: rate,
        max_in_flight: in_flight,
        waves,
        abort,
        execution_timeout_ms: timeout_s.saturating_mul(1000),
        retry,
        deadline_ms,
    })
}

/// The form's field an API message is about (the API names its fields first: `rate_per_minute:
/// 1 to 1000000, got 0`, `waves[1].success_threshold_pct: …`), and the message as shown there.
fn field_of(message: &str) -> Option<(&'static str, String)> {
    let (name, _) = message.split_once(':')?;
    let field = match name {
        "rate_per_minute" => "rate",
        "max_in_flight" => "in_flight",
        "execution_timeout_ms" => "timeout_s",
        "retry.max_attempts" => "attempts",
        "deadline_ms" => "deadline",
        "waves[0].percent" | "waves[0].count" => "w1_size",
        "waves[0].success_threshold_pct" => "w1_pct",
        "waves[1].percent" | "waves[1].count" => "w2_size",
        "waves[1].success_threshold_pct" => "w2_pct",
        "abort.threshold_pct" => "abort_pct",
        "abort.min_executed" => "abort_min",
        _ => return None,
    };
    // The API counts in ms since the Unix epoch and in ms; the form in hours and seconds.
    let shown = match field {
        "deadline" => format!("from 1 second to 30 days from now ({message})"),
        "timeout_s" => format!("from 1 to 3600 seconds ({message})"),
        _ => message.to_owned(),
    };
    Some((field, shown))
}

/// A value the API's checks take, in place of one they refused, so the request is checked
/// again for the other fields.
fn put_back(req: &mut JobRequest, field: &str) {
    match field {
        "rate" => req.rate_per_minute = 1,
        "in_flight" => req.max_in_flight = 1,
        "timeout_s" => req.execution_timeout_ms = 1000,
        "attempts" => req.retry = None,
        "deadline" => req.deadline_ms = None,
        "w1_size" | "w2_size" | "w1_pct" | "w2_pct" => {
            let i = usize::from(field.starts_with("w2"));
            if let Some(w) = req.waves.get_mut(i) {
                if field.ends_with("_pct") {
                    w.success_threshold_pct = 0;
                } else if w.percent.is_some() {
                    w.percent = Some(1);
                } else {
                    w.count = Some(1);
                }
            }
        }
        "abort_pct" | "abort_min" => {
            if let Some(a) = req.abort.as_mut() {
                if field == "abort_pct" {
                    a.threshold_pct = 0;
                } else {
                    a.min_executed = 1;
                }
            }
        }
        _ => {}
    }
}

/// Every refusal of the API's own checks (`JobSpec::parse`, the code `POST /v1/jobs` runs),
/// each next to its field. The checks stop at the first refusal, so the refused value is put
/// back to one they take and the request checked again: one round trip shows every field out
/// of range, not the first alone.
fn spec_errors(mut req: JobRequest, now_ms: i64) -> FieldErrors {
    let mut e = FieldErrors::default();
    for _ in 0..CHECK_ROUNDS {
        match JobSpec::parse(req.clone(), now_ms) {
            Ok(_) => break,
            Err(SpecError::Method(m)) => {
                let field = if m.starts_with("unknown method") {
                    "method"
                } else {
                    "params"
                };
                e.set(field, m);
                // Known to pass, so the rest is checked too.
                req.method = "sys.ping".to_owned();
                req.params = Map::new();
            }
            Err(SpecError::Invalid(m)) => match field_of(&m) {
                Some((field, shown)) if e.get(field).is_none() => {
                    e.set(field, shown);
                    put_back(&mut req, field);
                }
                _ => {
                    e.set("general", m);
                    break;
                }
            },
        }
    }
    e
}

/// The rollout in a line: what is typed, and the default of what is not.
fn rollout_summary(f: &NewJobForm) -> String {
    let or = |s: &str, d: String| {
        if s.trim().is_empty() {
            d
        } else {
            s.trim().to_owned()
        }
    };
    let mut parts = vec![
        format!("{} a minute", or(&f.rate, DEFAULT_RATE.to_string())),
        format!(
            "at most {} in flight",
            or(&f.in_flight, DEFAULT_IN_FLIGHT.to_string())
        ),
        format!(
            "{} s an execution",
            or(&f.timeout_s, DEFAULT_TIMEOUT_S.to_string())
        ),
        format!(
            "{} attempts",
            or(&f.attempts, RetryIn::default().max_attempts.to_string())
        ),
    ];
    let deadline = f.deadline.trim();
    parts.push(if deadline.is_empty() {
        format!("deadline in {} h", DEFAULT_DEADLINE.as_secs() / 3600)
    } else if deadline.parse::<f64>().is_ok() {
        format!("deadline in {deadline} h")
    } else {
        format!("deadline {deadline} UTC")
    });
    let wave = |size: &str, unit: &str, pct: &str| {
        let size = size.trim();
        let unit = match (unit, size) {
            ("percent", _) => " %",
            (_, "1") => " gateway",
            _ => " gateways",
        };
        format!(
            "{size}{unit} at {} %",
            or(pct, DEFAULT_WAVE_PCT.to_string())
        )
    };
    parts.push(match (f.w1_size.trim(), f.w2_size.trim()) {
        ("", "") => "no waves".to_owned(),
        (_, "") => format!(
            "waves: {}, then the rest",
            wave(&f.w1_size, &f.w1_unit, &f.w1_pct)
        ),
        _ => format!(
            "waves: {}, {}, then the rest",
            wave(&f.w1_size, &f.w1_unit, &f.w1_pct),
            wave(&f.w2_size, &f.w2_unit, &f.w2_pct)
        ),
    });
    parts.push(if f.abort_type.is_empty() {
        "no abort rule".to_owned()
    } else {
        format!(
            "abort when more than {} % {}",
            f.abort_pct.trim(),
            f.abort_type.replace('_', " ")
        )
    });
    parts.join(", ")
}

/// The protocol's methods by family (`sys` first), as the form offers them.
fn method_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for family in ["sys", "nfs", "smb", "iscsi"] {
        let names: Vec<&'static str> = ALL
            .iter()
            .copied()
            .filter(|m| m.split('.').next() == Some(family))
            .collect();
        if !names.is_empty() {
            groups.push((family, names));
        }
    }
    groups
}

/// The method's fields with the values sent (`f.{member}`), unchecked: the form shown again
/// as it was (a secret is never written back).
fn fields_as_sent(method: &str, pairs: &[(String, String)]) -> Vec<Field> {
    let mut fields = resources::method_fields(method.trim()).unwrap_or_default();
    for fl in &mut fields {
        if fl.input != "password" {
            let key = format!("f.{}", fl.name);
            if let Some((_, v)) = pairs.iter().find(|(k, _)| *k == key) {
                fl.value = v.clone();
            }
        }
    }
    fields
}

fn new_page(
    state: &AppState,
    signed: &Signed,
    f: NewJobForm,
    fields: Vec<Field>,
    errors: FieldErrors,
    preview: Option<Preview>,
) -> NewJobPage {
    // The selection from the filter alone, whatever is wrong with the other fields.
    let selection = f.selector().map_or_else(
        |_| "the fleet page's filter".to_owned(),
        |s| target_text(&TargetIn::Selector(s)),
    );
    let region = if state.regions.len() > 1 && !f.region.is_empty() {
        format!(" in region {}", f.region)
    } else {
        String::new()
    };
    let fleet_q = f.fleet_query();
    NewJobPage {
        chrome: Chrome::new("Start a job", Some(&signed.token), signed.csrf.clone()),
        selection: format!("{selection}{region}"),
        rollout_open: errors.in_rollout() || f.rollout().iter().any(|s| !s.is_empty()),
        rollout_summary: rollout_summary(&f),
        preview,
        back: if fleet_q.is_empty() {
            "/ui/".to_owned()
        } else {
            format!("/ui/?{fleet_q}")
        },
        method_groups: method_groups(),
        method_known: ALL.contains(&f.method.as_str()),
        params_open: errors.get("params").is_some() || !matches!(f.params.trim(), "" | "{}"),
        chosen: f.step == "choose",
        fields,
        errors,
        default_attempts: RetryIn::default().max_attempts,
        default_deadline_h: DEFAULT_DEADLINE.as_secs() / 3600,
        f,
    }
}

/// `GET /ui/jobs/new?{fleet filter}`: the form, over the fleet page's filter.
pub async fn new_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    if !signed.can(Scope::Operate) {
        return Err(super::session::refused(
            StatusCode::FORBIDDEN,
            "starting a job needs the operate scope",
        )
        .by(&signed.token));
    }
    let query = raw.as_deref().unwrap_or("");
    let f: NewJobForm = serde_urlencoded::from_str(query).unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let f = f.defaults();
    let fields = fields_as_sent(&f.method, &pairs);
    let page = new_page(&state, &signed, f, fields, FieldErrors::default(), None);
    Ok(render(&page))
}

/// The form shown again with what is wrong, as `status`; the audit of refusals records it
/// under the token's name and the reason (not as an anonymous refusal without one).
fn with_status(page: &NewJobPage, status: StatusCode, token: &TokenRecord) -> Response {
    let mut detail = page.errors.detail();
    for fl in &page.fields {
        if let Some(e) = &fl.error {
            let sep = if detail.is_empty() { "" } else { "; " };
            detail.push_str(&format!("{sep}f.{}: {e}", fl.name));
        }
    }
    let mut r = render(page);
    if r.status() == StatusCode::OK {
        *r.status_mut() = status;
        r.extensions_mut().insert(Refusal {
            detail,
            token_name: Some(token.name.as_str().to_owned()),
            audited: false,
        });
    }
    r
}

/// The members the JSON text area gives (empty: none), or why it does not read.
fn params_json(f: &NewJobForm) -> Result<Map<String, Value>, String> {
    let text = f.params.trim();
    if text.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("a JSON object, such as {} or {\"name\": \"x\"}".to_owned()),
        Err(err) => Err(format!("not JSON: {err}")),
    }
}

/// The params the form gives: the JSON text area's members, then each field filled in (in
/// place of the same member in the JSON). A required member the JSON gives is not required
/// of its field. `None` when something does not read (said in the fields and `errors`).
fn params_of(
    f: &NewJobForm,
    fields: &mut [Field],
    pairs: &[(String, String)],
    errors: &mut FieldErrors,
) -> Option<Map<String, Value>> {
    let json = params_json(f);
    if let Ok(m) = &json {
        for fl in fields.iter_mut() {
            if m.contains_key(&fl.name) {
                fl.required = false;
            }
        }
    }
    let typed = resources::params_of(fields, pairs);
    match (json, typed) {
        (Ok(mut m), Some(typed)) => {
            m.extend(typed);
            Some(m)
        }
        (Err(why), _) => {
            errors.set("params", why);
            None
        }
        (Ok(_), None) => None,
    }
}

/// Each wave's size for `total` gateways, as the job would make them (the engine's own
/// assignment), in words.
fn wave_sizes(spec: &JobSpec, total: usize) -> Vec<String> {
    if spec.waves.is_empty() {
        return Vec::new();
    }
    let (assigned, last) = engine::assign_waves(total, &spec.waves);
    (0..=last)
        .map(|w| {
            let n = assigned.iter().filter(|a| **a == w).count();
            let gateways = if n == 1 { "gateway" } else { "gateways" };
            match spec.waves.get(w as usize) {
                Some(wave) => format!(
                    "wave {}: {n} {gateways}, going on at {} % succeeded",
                    w + 1,
                    wave.success_threshold.get()
                ),
                None => format!("wave {} (the rest): {n} {gateways}", w + 1),
            }
        })
        .collect()
}

/// `POST /ui/jobs`: `step=preview` is the API's dry run (nothing stored); `step=start` plans
/// again (the fleet may have changed since) and creates the job, then its page.
pub async fn create(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: NewJobForm = form(&body)?;
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Operate).await?;
    let token = &signed.token;
    // The method's fields (`f.{member}`), which the struct above leaves out.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if f.step == "choose" {
        let fields = fields_as_sent(&f.method, &pairs);
        let page = new_page(&state, &signed, f, fields, FieldErrors::default(), None);
        return Ok(render(&page));
    }
    let mut fields = resources::method_fields(f.method.trim()).unwrap_or_default();
    let now = now_ms();
    let mut errors = FieldErrors::default();
    let params = params_of(&f, &mut fields, &pairs, &mut errors);
    let read = request_of(&f, params.clone().unwrap_or_default(), now);
    let req = match read {
        Ok(r) if params.is_some() && !errors.any() => r,
        Ok(_) => {
            let page = new_page(&state, &signed, f, fields, errors, None);
            return Ok(with_status(&page, StatusCode::BAD_REQUEST, token));
        }
        Err(more) => {
            errors.merge(*more);
            let page = new_page(&state, &signed, f, fields, errors, None);
            return Ok(with_status(&page, StatusCode::BAD_REQUEST, token));
        }
    };
    // The API's checks, every field's refusal at once (400 out of range, 422 the protocol's).
    let mut refused = spec_errors(req.clone(), now);
    // The protocol's refusal naming one member (`limit 5000 is out of range…`): next to its
    // field, when the form has one.
    if let Some(m) = refused.by_field.remove("params") {
        match member_named(&m).and_then(|n| fields.iter_mut().find(|fl| fl.name == n)) {
            Some(fl) => fl.error = Some(m),
            None => refused.set("params", m),
        }
    }
    if refused.any() || fields.iter().any(|fl| fl.error.is_some()) {
        let status = if refused.in_rollout() || refused.get("general").is_some() {
            StatusCode::BAD_REQUEST
        } else {
            // The protocol's refusal of the method or its params alone.
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let page = new_page(&state, &signed, f, fields, refused, None);
        return Ok(with_status(&page, status, token));
    }
    let region = match state.regions.chosen(req.region.as_deref(), "region") {
        Ok(h) => h.region.clone(),
        // Several regions and none chosen in the fleet filter, or one not served.
        Err(p) => {
            let errors =
                FieldErrors::general(format!("{}; choose one in the fleet filter", p.detail));
            let page = new_page(&state, &signed, f, fields, errors, None);
            return Ok(with_status(&page, StatusCode::BAD_REQUEST, token));
        }
    };
    let plan = match jobs::plan(state.store.as_ref(), &region, req, token, now).await {
        Ok(p) => p,
        Err(CreateError::Store(e)) => return Err(PageError::from(e).by(token)),
        Err(e) => {
            let p = create_problem(e);
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
            let page = new_page(
                &state,
                &signed,
                f,
                fields,
                FieldErrors::general(p.detail),
                None,
            );
            return Ok(with_status(&page, status, token));
        }
    };
    if f.step != "start" {
        let preview = Preview {
            total: plan.targets.len(),
            names: plan
                .targets
                .iter()
                .take(PREVIEW_LIST)
                .map(|t| t.instance_id.as_str().to_owned())
                .collect(),
            waves: wave_sizes(&plan.spec, plan.targets.len()),
        };
        let page = new_page(
            &state,
            &signed,
            f,
            fields,
            FieldErrors::default(),
            Some(preview),
        );
        return Ok(render(&page));
    }
    if plan.targets.is_empty() {
        let errors = FieldErrors::general("no gateway matches the filter now; nothing was started");
        let preview = Preview {
            total: 0,
            names: Vec::new(),
            waves: Vec::new(),
        };
        let page = new_page(&state, &signed, f, fields, errors, Some(preview));
        return Ok(with_status(&page, StatusCode::UNPROCESSABLE_ENTITY, token));
    }
    let job = jobs::create_as(state.store.as_ref(), &region, plan, token, None, now, None)
        .await
        .map_err(|e| change_refused(create_problem(e), token))?;
    audit_job(
        &state,
        &job.region,
        token,
        &remote,
        "job.create",
        Some(&job.method),
        json!({"job_id": job.id, "params": job.spec.get("params"), "via": "web"}),
    )
    .await;
    tracing::info!(job = %job.id, by = %token.name, method = %job.method, "job created (web)");
    Ok(Redirect::to(&with_flash(&job.id, "started")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000_000;

    fn read(f: &NewJobForm) -> Result<JobRequest, Box<FieldErrors>> {
        let params = params_json(f).map_err(|why| {
            let mut e = FieldErrors::default();
            e.set("params", why);
            Box::new(e)
        })?;
        request_of(f, params, NOW)
    }

    fn keys(e: &FieldErrors) -> Vec<&str> {
        e.by_field.keys().map(String::as_str).collect()
    }

    #[test]
    fn an_empty_rollout_is_the_apis_defaults_over_the_filters_selector() {
        let f = NewJobForm {
            presence: "online".into(),
            drift: "true".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let r = read(&f).unwrap();
        assert_eq!(r.method, "sys.ping");
        assert_eq!(
            (r.rate_per_minute, r.max_in_flight, r.execution_timeout_ms),
            (600, 10, 30_000)
        );
        assert!(r.waves.is_empty() && r.abort.is_none());
        assert_eq!((r.retry, r.deadline_ms), (None, None));
        match &r.target {
            TargetIn::Selector(s) => {
                assert_eq!(s.presence.as_deref(), Some("online"));
                assert_eq!(s.drift, Some(true));
            }
            TargetIn::Instances(_) => panic!("a selector"),
        }
        assert!(spec_errors(r, NOW).by_field.is_empty());
        assert_eq!(
            rollout_summary(&f),
            "600 a minute, at most 10 in flight, 30 s an execution, 3 attempts, \
             deadline in 24 h, no waves, no abort rule"
        );
    }

    #[test]
    fn the_rollout_fields_map_onto_the_apis_request() {
        let f = NewJobForm {
            rate: "30".into(),
            in_flight: " 2 ".into(),
            timeout_s: "45".into(),
            attempts: "5".into(),
            deadline: "2".into(),
            w1_size: "1".into(),
            w1_unit: "count".into(),
            w1_pct: "100".into(),
            w2_size: "25".into(),
            w2_unit: "percent".into(),
            abort_type: "timed_out".into(),
            abort_pct: "10".into(),
            abort_min: "5".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let r = read(&f).unwrap();
        assert_eq!(
            (r.rate_per_minute, r.max_in_flight, r.execution_timeout_ms),
            (30, 2, 45_000)
        );
        assert_eq!(
            r.waves,
            [
                WaveIn {
                    percent: None,
                    count: Some(1),
                    success_threshold_pct: 100
                },
                // An empty threshold: all of the wave.
                WaveIn {
                    percent: Some(25),
                    count: None,
                    success_threshold_pct: 100
                },
            ]
        );
        assert_eq!(
            r.abort,
            Some(AbortIn {
                failure_type: FailureType::TimedOut,
                threshold_pct: 10,
                min_executed: 5
            })
        );
        assert_eq!(
            r.retry,
            Some(RetryIn {
                max_attempts: 5,
                ..RetryIn::default()
            })
        );
        assert_eq!(r.deadline_ms, Some(NOW + 2 * 3_600_000));
        // As the API would store it: the same JSON a client sends.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["waves"][0],
            json!({"count": 1, "success_threshold_pct": 100})
        );
        assert_eq!(json["abort"]["failure_type"], "timed_out");
        let (spec, _) = JobSpec::parse(r, NOW).unwrap();
        assert_eq!(
            wave_sizes(&spec, 4),
            [
                "wave 1: 1 gateway, going on at 100 % succeeded",
                "wave 2: 1 gateway, going on at 100 % succeeded",
                "wave 3 (the rest): 2 gateways",
            ]
        );
        assert!(
            rollout_summary(&f).contains("waves: 1 gateway at 100 %, 25 % at 100 %, then the rest")
        );
        // A UTC time, as `datetime-local` writes it.
        let at = NewJobForm {
            deadline: "2025-12-06T18:00".into(),
            ..f
        };
        assert_eq!(read(&at).unwrap().deadline_ms, Some(1_765_044_000_000));
    }

    #[test]
    fn what_does_not_read_is_said_next_to_its_field() {
        let f = NewJobForm {
            rate: "fast".into(),
            w1_pct: "90".into(),
            w2_size: "3".into(),
            deadline: "soon".into(),
            abort_min: "4".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let e = read(&f).unwrap_err();
        assert_eq!(
            keys(&e),
            ["abort_type", "deadline", "rate", "w1_size"],
            "{}",
            e.detail()
        );
        assert_eq!(e.get("rate").unwrap(), "a whole number, such as 10");
        assert!(e.in_rollout());
        let abort = NewJobForm {
            abort_type: "any".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let e = read(&abort).unwrap_err();
        assert_eq!(keys(&e), ["abort_min", "abort_pct"]);
        let e = read(&NewJobForm {
            params: "[1]".into(),
            abort_type: "sometimes".into(),
            ..NewJobForm::default()
        })
        .unwrap_err();
        assert_eq!(keys(&e), ["params"], "the params first");
        assert!(!e.in_rollout());
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn a_methods_fields_and_its_json_make_its_params() {
        let f = NewJobForm {
            method: "nfs.export.list".into(),
            params: r#"{"cursor": "abc", "limit": 5}"#.into(),
            ..NewJobForm::default()
        };
        let mut fields = resources::method_fields(&f.method).unwrap();
        let mut e = FieldErrors::default();
        // A field filled in takes the place of the JSON's member; an empty one leaves it.
        let p = params_of(
            &f,
            &mut fields,
            &pairs(&[("f.limit", "10"), ("f.cursor", "")]),
            &mut e,
        )
        .unwrap();
        assert_eq!(Value::Object(p), json!({"cursor": "abc", "limit": 10}));
        // A required member the JSON gives is not required of its field.
        let delete = NewJobForm {
            method: "nfs.export.delete".into(),
            params: r#"{"name": "vol1"}"#.into(),
            ..NewJobForm::default()
        };
        let mut fields = resources::method_fields(&delete.method).unwrap();
        let p = params_of(&delete, &mut fields, &pairs(&[("f.name", "")]), &mut e).unwrap();
        assert_eq!(Value::Object(p), json!({"name": "vol1"}));
        let mut fields = resources::method_fields(&delete.method).unwrap();
        let none = NewJobForm {
            params: String::new(),
            ..delete
        };
        assert!(params_of(&none, &mut fields, &pairs(&[("f.name", "")]), &mut e).is_none());
        assert_eq!(fields[0].error.as_deref(), Some("required"));
        assert!(!e.any());
        // The protocol's refusal of a member names it, for its field.
        let req = read(&NewJobForm {
            method: "nfs.export.list".into(),
            params: r#"{"limit": 5000}"#.into(),
            ..NewJobForm::default()
        })
        .unwrap();
        let refused = spec_errors(req, NOW);
        let m = refused.get("params").unwrap();
        assert_eq!(
            m,
            "nfs.export.list: limit 5000 is out of range; it must be from 1 to 1000"
        );
        assert_eq!(member_named(m).as_deref(), Some("limit"));
        let groups = method_groups();
        assert_eq!(groups[0].0, "sys");
        assert_eq!(
            groups.iter().map(|g| g.1.len()).sum::<usize>(),
            ALL.len(),
            "every method offered"
        );
    }

    #[test]
    fn every_refusal_of_the_apis_checks_lands_next_to_its_field_at_once() {
        let f = NewJobForm {
            rate: "0".into(),
            timeout_s: "0".into(),
            deadline: "1000".into(),
            w1_size: "150".into(),
            w1_unit: "percent".into(),
            w1_pct: "150".into(),
            abort_type: "any".into(),
            abort_pct: "101".into(),
            abort_min: "0".into(),
            attempts: "11".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let e = spec_errors(read(&f).unwrap(), NOW);
        assert_eq!(
            keys(&e),
            [
                "abort_min",
                "abort_pct",
                "attempts",
                "deadline",
                "rate",
                "timeout_s",
                "w1_pct",
                "w1_size"
            ],
            "{}",
            e.detail()
        );
        // The API's own words.
        assert_eq!(
            e.get("rate").unwrap(),
            "rate_per_minute: 1 to 1000000, got 0"
        );
        assert_eq!(
            e.get("w1_pct").unwrap(),
            "waves[0].success_threshold_pct: a percentage, 0 to 100"
        );
        assert!(e
            .get("deadline")
            .unwrap()
            .starts_with("from 1 second to 30 days from now (deadline_ms: "));
        // The protocol's refusal of the method or its params, with the rest checked too.
        let e = spec_errors(
            read(&NewJobForm {
                method: "sys.nope".into(),
                in_flight: "0".into(),
                ..NewJobForm::default()
            })
            .unwrap(),
            NOW,
        );
        assert_eq!(keys(&e), ["in_flight", "method"]);
        let e = spec_errors(
            read(&NewJobForm {
                method: "sys.ping".into(),
                params: r#"{"x": 1}"#.into(),
                ..NewJobForm::default()
            })
            .unwrap(),
            NOW,
        );
        assert_eq!(keys(&e), ["params"]);
        assert!(!e.in_rollout());
    }
}
