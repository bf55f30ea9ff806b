//! The new-job form (`GET /ui/jobs/new`, `POST /ui/jobs`): a job over the fleet page's filter,
//! a dry run first, then confirm.
//!
//! Planning and creation are the API's (`http::jobs`, the `jobs` module): the same checks, the
//! same audit record (`job.create`).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use csg_protocol::identity::GroupId;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jobs::{change_refused, target_text, with_flash};
use super::session::{form, reader, sender, Signed};
use super::view::{render, Chrome, PageError};
use crate::http::jobs::{audit_job, create_problem};
use crate::http::problem::Refusal;
use crate::http::{AppState, RemoteAddr};
use crate::jobs::model::{JobRequest, SelectorIn, TargetIn};
use crate::jobs::{self, CreateError};
use crate::now_ms;
use crate::store::{Scope, TokenRecord};

/// Gateways a dry run names on the page (it counts them all).
const PREVIEW_LIST: usize = 100;

/// The new-job form's fields, as sent and as shown again.
#[derive(Deserialize, Default, Clone)]
pub struct NewJobForm {
    #[serde(default)]
    pub csrf: Option<String>,
    /// `preview` (a dry run) or `start`.
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub params: String,
    #[serde(default)]
    pub rate: String,
    #[serde(default)]
    pub in_flight: String,
    #[serde(default)]
    pub timeout_s: String,
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
        fill(&mut self.rate, "600");
        fill(&mut self.in_flight, "10");
        fill(&mut self.timeout_s, "30");
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
}

/// Which field a message is about, so the page shows it next to that field.
#[derive(Debug, Default)]
pub struct FieldErrors {
    pub method: Option<String>,
    pub params: Option<String>,
    pub rate: Option<String>,
    pub in_flight: Option<String>,
    pub timeout_s: Option<String>,
    /// About the whole request (the selection, the protocol's refusal of the params).
    pub general: Option<String>,
}

impl FieldErrors {
    fn any(&self) -> bool {
        self.method.is_some()
            || self.params.is_some()
            || self.rate.is_some()
            || self.in_flight.is_some()
            || self.timeout_s.is_some()
            || self.general.is_some()
    }
}

#[derive(Template)]
#[template(path = "job_new.html")]
struct NewJobPage {
    chrome: Chrome,
    f: NewJobForm,
    selection: String,
    errors: FieldErrors,
    /// After a dry run: how many, and the first of them.
    preview: Option<(usize, Vec<String>)>,
    back: String,
    methods: Vec<&'static str>,
}

/// Methods offered in the form's list (any the protocol knows is accepted).
const METHODS: [&str; 4] = ["sys.ping", "sys.reconcile", "sys.info", "sys.health"];

/// The request the form describes, or what is wrong with each field.
fn request_of(f: &NewJobForm) -> Result<JobRequest, Box<FieldErrors>> {
    let mut errors = FieldErrors::default();
    let method = f.method.trim().to_owned();
    if method.is_empty() {
        errors.method = Some("name a method, such as sys.ping".to_owned());
    }
    let params: Map<String, Value> = match serde_json::from_str::<Value>(f.params.trim()) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            errors.params = Some("a JSON object, such as {} or {\"name\": \"x\"}".to_owned());
            Map::new()
        }
        Err(e) => {
            errors.params = Some(format!("not JSON: {e}"));
            Map::new()
        }
    };
    let number = |s: &str, slot: &mut Option<String>, what: &str| -> u64 {
        match s.trim().parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                *slot = Some(format!("{what}: a whole number"));
                0
            }
        }
    };
    let rate = number(&f.rate, &mut errors.rate, "rate");
    let in_flight = number(&f.in_flight, &mut errors.in_flight, "in flight");
    let timeout_s = number(&f.timeout_s, &mut errors.timeout_s, "timeout");
    let mut sel = SelectorIn {
        presence: (!f.presence.is_empty()).then(|| f.presence.clone()),
        version: (!f.version.is_empty()).then(|| f.version.clone()),
        q: (!f.q.is_empty()).then(|| f.q.clone()),
        ..SelectorIn::default()
    };
    if !f.group.is_empty() {
        match GroupId::new(f.group.as_str()) {
            Ok(g) => sel.group.push(g),
            Err(e) => errors.general = Some(format!("the filter's group: {e}")),
        }
    }
    sel.drift = match f.drift.as_str() {
        "" => None,
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            errors.general = Some("the filter's drift: true or false".to_owned());
            None
        }
    };
    if errors.any() {
        return Err(Box::new(errors));
    }
    Ok(JobRequest {
        region: (!f.region.is_empty()).then(|| f.region.clone()),
        method,
        params,
        target: TargetIn::Selector(sel),
        // Out of range is the job spec's to say (it names the field and the range).
        rate_per_minute: u32::try_from(rate).unwrap_or(u32::MAX),
        max_in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
        waves: Vec::new(),
        abort: None,
        execution_timeout_ms: timeout_s.saturating_mul(1000),
        retry: None,
        deadline_ms: None,
    })
}

/// The job spec's refusal, next to the field it names when it names one.
fn spec_errors(message: String) -> FieldErrors {
    let mut e = FieldErrors::default();
    if message.contains("rate_per_minute") {
        e.rate = Some(message);
    } else if message.contains("max_in_flight") {
        e.in_flight = Some(message);
    } else if message.contains("execution_timeout_ms") {
        e.timeout_s = Some(message);
    } else if message.contains("method") {
        e.method = Some(message);
    } else if message.contains("param") {
        e.params = Some(message);
    } else {
        e.general = Some(message);
    }
    e
}

fn new_page(
    state: &AppState,
    signed: &Signed,
    f: NewJobForm,
    errors: FieldErrors,
    preview: Option<(usize, Vec<String>)>,
) -> NewJobPage {
    // The selection from the filter alone, whatever is wrong with the other fields.
    let probe = request_of(
        &NewJobForm {
            method: String::new(),
            params: String::new(),
            rate: String::new(),
            in_flight: String::new(),
            timeout_s: String::new(),
            ..f.clone()
        }
        .defaults(),
    )
    .ok();
    let selection = probe.as_ref().map_or_else(
        || "the fleet page's filter".to_owned(),
        |r| target_text(&r.target),
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
        errors,
        preview,
        back: if fleet_q.is_empty() {
            "/ui/".to_owned()
        } else {
            format!("/ui/?{fleet_q}")
        },
        methods: METHODS.to_vec(),
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
    let f: NewJobForm =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let page = new_page(&state, &signed, f.defaults(), FieldErrors::default(), None);
    Ok(render(&page))
}

/// The form shown again with what is wrong, as `status`; the audit of refusals records it
/// under the token's name and the reason (not as an anonymous refusal without one).
fn with_status(page: &NewJobPage, status: StatusCode, token: &TokenRecord) -> Response {
    let e = &page.errors;
    let detail = [
        &e.method,
        &e.params,
        &e.rate,
        &e.in_flight,
        &e.timeout_s,
        &e.general,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect::<Vec<_>>()
    .join("; ");
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
    let req = match request_of(&f) {
        Ok(r) => r,
        Err(errors) => {
            let page = new_page(&state, &signed, f, *errors, None);
            return Ok(with_status(&page, StatusCode::BAD_REQUEST, token));
        }
    };
    let region = match state.regions.chosen(req.region.as_deref(), "region") {
        Ok(h) => h.region.clone(),
        // Several regions and none chosen in the fleet filter, or one not served.
        Err(p) => {
            let errors = FieldErrors {
                general: Some(format!("{}; choose one in the fleet filter", p.detail)),
                ..FieldErrors::default()
            };
            let page = new_page(&state, &signed, f, errors, None);
            return Ok(with_status(&page, StatusCode::BAD_REQUEST, token));
        }
    };
    let now = now_ms();
    let plan = match jobs::plan(state.store.as_ref(), &region, req, token, now).await {
        Ok(p) => p,
        Err(CreateError::Store(e)) => return Err(PageError::from(e).by(token)),
        Err(e) => {
            let p = create_problem(e);
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
            let page = new_page(&state, &signed, f, spec_errors(p.detail), None);
            return Ok(with_status(&page, status, token));
        }
    };
    if f.step != "start" {
        let total = plan.targets.len();
        let names = plan
            .targets
            .iter()
            .take(PREVIEW_LIST)
            .map(|t| t.instance_id.as_str().to_owned())
            .collect();
        let page = new_page(
            &state,
            &signed,
            f,
            FieldErrors::default(),
            Some((total, names)),
        );
        return Ok(render(&page));
    }
    if plan.targets.is_empty() {
        let errors = FieldErrors {
            general: Some("no gateway matches the filter now; nothing was started".to_owned()),
            ..FieldErrors::default()
        };
        let page = new_page(&state, &signed, f, errors, Some((0, Vec::new())));
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

    #[test]
    fn the_form_reads_into_a_selector_request_or_says_which_field_is_wrong() {
        let f = NewJobForm {
            presence: "online".into(),
            drift: "true".into(),
            ..NewJobForm::default()
        }
        .defaults();
        let r = request_of(&f).unwrap();
        assert_eq!(r.method, "sys.ping");
        assert_eq!(r.execution_timeout_ms, 30_000);
        match r.target {
            TargetIn::Selector(s) => {
                assert_eq!(s.presence.as_deref(), Some("online"));
                assert_eq!(s.drift, Some(true));
            }
            TargetIn::Instances(_) => panic!("a selector"),
        }
        let bad = NewJobForm {
            params: "[1]".into(),
            rate: "fast".into(),
            ..f
        };
        let e = request_of(&bad).unwrap_err();
        assert!(e.params.is_some() && e.rate.is_some() && e.method.is_none());
    }
}
