//! The HTTP API: JSON, RFC 9457 problems for errors (one mapping place: [`problem`]), bearer
//! tokens with scopes ([`auth`]).

pub mod audit;
pub mod auth;
pub mod calls;
pub mod events;
pub mod instances;
pub mod jobs;
pub mod metrics;
pub mod problem;
pub mod resources;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use csg_transport::LinkState;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::calls::{CallService, MAX_TIMEOUT};
use crate::now_ms;
use crate::store::{AuditEvent, Region, Store};
use problem::{Problem, Refusal};

/// How long `/readyz` waits for the store's answer.
const READY_PING: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub regions: Regions,
    pub bus: crate::events::Bus,
    /// The stored events, as `GET /v1/events` replays and follows them.
    pub log: crate::eventlog::LogTail,
    pub metrics: crate::metrics::Metrics,
}

/// One region as the API reaches it.
#[derive(Clone)]
pub struct RegionHandle {
    pub region: Region,
    /// The region's MQTT link (its calls and status ingest share it).
    pub link: watch::Receiver<LinkState>,
    /// Calls to the region's gateways.
    pub calls: Arc<CallService>,
}

/// The regions this process serves: at least one, the first being the home region (what
/// belongs to no region, such as a refused request that names no gateway, is recorded under
/// it).
#[derive(Clone)]
pub struct Regions {
    home: Arc<RegionHandle>,
    rest: Arc<[RegionHandle]>,
}

impl Regions {
    pub fn new(home: RegionHandle, rest: Vec<RegionHandle>) -> Self {
        Self {
            home: Arc::new(home),
            rest: rest.into(),
        }
    }

    pub fn one(home: RegionHandle) -> Self {
        Self::new(home, Vec::new())
    }

    pub fn home(&self) -> &RegionHandle {
        &self.home
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegionHandle> {
        std::iter::once(self.home.as_ref()).chain(self.rest.iter())
    }

    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Never: there is always a home region.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn get(&self, region: &Region) -> Option<&RegionHandle> {
        self.iter().find(|r| &r.region == region)
    }

    /// A region a request names (`?region=`, a job's `region`): 400 unless it is one of
    /// those served, naming them.
    pub fn named(&self, name: &str) -> Result<&RegionHandle, Problem> {
        Region::new(name)
            .ok()
            .and_then(|r| self.get(&r))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "region {:?}: not served here; the regions are {}",
                    name.chars().take(64).collect::<String>(),
                    self.names()
                ))
            })
    }

    /// The region a request may leave out: the named one, or the only one; with several
    /// served, naming one is required (400, naming them).
    pub fn chosen(&self, name: Option<&str>, what: &str) -> Result<&RegionHandle, Problem> {
        match name {
            Some(n) => self.named(n),
            None if self.rest.is_empty() => Ok(self.home()),
            None => Err(Problem::bad_request(format!(
                "{what}: this console serves several regions; name one ({})",
                self.names()
            ))),
        }
    }

    fn names(&self) -> String {
        self.iter()
            .map(|r| r.region.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The peer of a connection, plain TCP or HTTPS (the second field: true over HTTPS), what
/// `into_make_service_with_connect_info` gives the handlers (axum knows a plain TCP
/// listener's peer only as `SocketAddr`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr, pub bool);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr(), false)
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr(), true)
    }
}

/// The client's address, when the server knows it (for the audit log).
#[derive(Debug, Clone, Default)]
pub struct RemoteAddr(pub Option<String>);

/// Room a call route leaves above the longest call for storing and answering.
const CALL_ROUTE_MARGIN: Duration = Duration::from_secs(5);

/// The time limit of the routes that call gateways: the longest call and room to store and
/// answer it, or the request timeout when that is longer.
pub fn call_route_timeout(request_timeout: Duration) -> Duration {
    request_timeout.max(MAX_TIMEOUT + CALL_ROUTE_MARGIN)
}

pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    use resources as r;
    // The routes that call gateways wait for a reply up to a call's own budget (at most
    // MAX_TIMEOUT), which may be longer than `http.request_timeout_ms`: their layer is raised
    // to fit the longest call, so the request timeout never cuts a call short.
    let call_timeout = call_route_timeout(limits.request_timeout);
    let calling = Router::new()
        .route(
            "/v1/instances/{id}/calls",
            post(calls::post).get(calls::list),
        )
        .route("/v1/instances/{id}/nfs/exports", get(r::nfs_list))
        .route(
            "/v1/instances/{id}/nfs/exports/{name}",
            get(r::nfs_get).put(r::nfs_put).delete(r::nfs_delete),
        )
        .route("/v1/instances/{id}/smb/shares", get(r::smb_share_list))
        .route(
            "/v1/instances/{id}/smb/shares/{name}",
            get(r::smb_share_get)
                .put(r::smb_share_put)
                .delete(r::smb_share_delete),
        )
        .route("/v1/instances/{id}/smb/users", get(r::smb_user_list))
        .route(
            "/v1/instances/{id}/smb/users/{name}",
            axum::routing::put(r::smb_user_put).delete(r::smb_user_delete),
        )
        .route("/v1/instances/{id}/iscsi/targets", get(r::iscsi_list))
        .route(
            "/v1/instances/{id}/iscsi/targets/{name}",
            get(r::iscsi_get).put(r::iscsi_put).delete(r::iscsi_delete),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            call_timeout,
        ));
    let reading = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/instances", get(instances::list))
        .route("/v1/instances/{id}", get(instances::get))
        .route("/v1/calls/{id}", get(calls::get))
        .route("/v1/audit", get(audit::list))
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/executions", get(jobs::executions))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/v1/jobs/{id}/retry-failed", post(jobs::retry_failed))
        .route("/v1/openapi.json", get(openapi))
        // The timeout bounds the wait for a response's head; an event stream's body outlives it.
        .route("/v1/events", get(events::stream))
        .route("/v1/webhooks/deliveries", get(webhooks::deliveries))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let metrics = state.metrics.clone();
    calling
        .merge(reading)
        .merge(crate::web::routes(limits.request_timeout))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_refusals,
        ))
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // axum's extractors keep their own 2 MiB default beside the layer: the configured
        // limit is the one that holds.
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::map_response(as_problem))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

/// At most one refusal without a known token kept per second, process-wide.
static ANONYMOUS_REFUSALS: RefusalGate = RefusalGate::new(1000);

/// Lets one event through per period and counts the rest.
struct RefusalGate {
    period_ms: i64,
    /// The time of the last event let through, and how many were held back since.
    state: std::sync::Mutex<(i64, u64)>,
}

impl RefusalGate {
    const fn new(period_ms: i64) -> Self {
        Self {
            period_ms,
            state: std::sync::Mutex::new((i64::MIN, 0)),
        }
    }

    /// `Some(held back since the last one)` when this event may pass.
    fn admit(&self, now_ms: i64) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now_ms.saturating_sub(s.0) >= self.period_ms {
            let held = s.1;
            *s = (now_ms, 0);
            Some(held)
        } else {
            s.1 += 1;
            None
        }
    }
}

/// Records refused requests in the audit log: 401 and 403 on any route, and any other 4xx
/// answer to a request that would change something (not GET or HEAD). Also hands the
/// handlers the client's address.
async fn audit_refusals(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let remote = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.to_string());
    req.extensions_mut().insert(RemoteAddr(remote.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let change = !(method == Method::GET || method == Method::HEAD);
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        || (change && status.is_client_error());
    let refusal = resp.extensions().get::<Refusal>().cloned();
    let audited = refusal.as_ref().is_some_and(|r| r.audited);
    let token_name = refusal.as_ref().and_then(|r| r.token_name.clone());
    // A 401 is the one refusal without a known token, and anyone can cause it: those are kept
    // at most once a second (the next one kept says how many were not), so anonymous traffic
    // cannot grow the audit table and the log at its own pace. Every other refusal comes after
    // a valid token was checked.
    let suppressed = if refused && !audited && status == StatusCode::UNAUTHORIZED {
        match ANONYMOUS_REFUSALS.admit(now_ms()) {
            Some(skipped) => skipped,
            None => return resp,
        }
    } else {
        0
    };
    if refused && !audited {
        let instance = path
            .strip_prefix("/v1/instances/")
            .and_then(|rest| rest.split('/').next())
            .map(|s| s.chars().take(128).collect::<String>());
        let event = AuditEvent {
            at_ms: now_ms(),
            region: state.regions.home().region.clone(),
            token_name,
            remote_addr: remote,
            action: "refused".to_owned(),
            instance_id: instance,
            method: None,
            params: Some(json!({
                "http": format!("{method} {}", path.chars().take(256).collect::<String>()),
                "detail": refusal.map(|r| r.detail).unwrap_or_default(),
                "anonymous_refusals_not_kept": suppressed,
            })),
            outcome: status.as_u16().to_string(),
            request_id: None,
        };
        // Recorded on the way out; a store outage is logged by `record` and the line stays in
        // the log.
        let _ = crate::audit::record(state.store.as_ref(), &event).await;
    }
    resp
}

/// Errors made below the handlers (the body limit's 413, the timeout's 408, a path the
/// router cannot decode) come as bare text; they leave as problems like every other error.
async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/"));
    // The web console's pages answer their errors as pages.
    let page = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if json || page {
        return resp;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    Problem::new(
        status,
        &title.to_ascii_lowercase().replace(' ', "-"),
        title,
        format!("{title} ({})", status.as_u16()),
    )
    .into_response()
}

/// The API's OpenAPI 3.1 document, generated from the handlers' annotations and the types
/// they answer with.
#[derive(OpenApi)]
#[openapi(
    info(title = "csg-consoled", description = "The console service of csg-agent: the fleet of storage gateways over HTTP."),
    paths(healthz, readyz, openapi, instances::list, instances::get,
          events::stream, metrics::scrape, webhooks::deliveries,
          calls::post, calls::get, calls::list, audit::list,
          resources::nfs_list, resources::nfs_get, resources::nfs_put, resources::nfs_delete,
          resources::smb_share_list, resources::smb_share_get, resources::smb_share_put, resources::smb_share_delete,
          resources::smb_user_list, resources::smb_user_put, resources::smb_user_delete,
          resources::iscsi_list, resources::iscsi_get, resources::iscsi_put, resources::iscsi_delete,
          jobs::create, jobs::list, jobs::get, jobs::executions, jobs::cancel, jobs::resume, jobs::retry_failed),
    components(schemas(Problem, Ready, RegionReady, events::StreamEvent, instances::InstancePage, instances::InstanceDetail,
          webhooks::DeliveryPage,
          calls::CallBody, calls::ReplyEnvelope, calls::CallOut, calls::CallPage,
          audit::AuditOut, audit::AuditPage,
          jobs::JobOut, jobs::JobPage, jobs::ExecutionOut, jobs::ExecutionPage, jobs::DryRunOut, jobs::ExecError,
          crate::jobs::model::JobRequest, crate::jobs::model::TargetIn, crate::jobs::model::SelectorIn,
          crate::jobs::model::WaveIn, crate::jobs::model::AbortIn, crate::jobs::model::FailureType,
          crate::jobs::model::RetryIn, crate::store::JobCounts)),
    modifiers(&BearerAuth),
    tags((name = "instances", description = "the gateways the console knows"), (name = "service", description = "the service itself"),
         (name = "events", description = "live events"), (name = "webhooks", description = "events POSTed to configured URLs"),
         (name = "calls", description = "calls to gateways, stored"), (name = "audit", description = "changes and refusals"),
         (name = "nfs", description = "NFS exports on a gateway"), (name = "smb", description = "SMB shares and users on a gateway"),
         (name = "iscsi", description = "iSCSI targets on a gateway"),
         (name = "jobs", description = "one method over many gateways, rate-limited, in waves, resumable"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a token from `csg-consoled token create`; scopes read ⊂ operate ⊂ admin",
                    ))
                    .build(),
            ),
        );
    }
}

/// This document; no token needed.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "up", content_type = "application/json")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness and what is missing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// `ok`, or why the store does not answer.
    pub store: String,
    /// `ready` when every region's broker link is; otherwise `REGION: state` for each region
    /// whose link is not, joined by `; `.
    pub broker: String,
    /// Each region's broker link, in the configuration's order.
    pub regions: Vec<RegionReady>,
}

/// One region's broker link.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionReady {
    pub region: String,
    pub ready: bool,
    /// `ready`, or the link's state (`connecting`, or why it dropped).
    pub broker: String,
}

/// 200 when the store answers and a region's broker link is subscribed; otherwise 503 saying
/// which. With several regions, one region's broker being away degrades only that region: the
/// answer stays 200 while any region's link is up, and `regions` says which are down.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "ready (with several regions: at least one region's broker link is up; `regions` names any that are not)", body = Ready),
    (status = 503, description = "not ready; the body says which part", body = Ready),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    let store = match tokio::time::timeout(READY_PING, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(if e.is_unavailable() {
            "unavailable"
        } else {
            "failing"
        }),
        Err(_) => Err("no answer within 2 s"),
    };
    let regions: Vec<RegionReady> = state
        .regions
        .iter()
        .map(|r| {
            let link = r.link.borrow().clone();
            let broker = match &link {
                LinkState::Ready(_) => Ok(()),
                LinkState::Down(Some(f)) => Err(f.describe()),
                LinkState::Down(None) => Err("connecting".to_owned()),
            };
            RegionReady {
                region: r.region.as_str().to_owned(),
                ready: broker.is_ok(),
                broker: broker.err().unwrap_or_else(|| "ready".to_owned()),
            }
        })
        .collect();
    let down: Vec<String> = regions
        .iter()
        .filter(|r| !r.ready)
        .map(|r| {
            if state.regions.len() == 1 {
                r.broker.clone()
            } else {
                format!("{}: {}", r.region, r.broker)
            }
        })
        .collect();
    let ready = store.is_ok() && regions.iter().any(|r| r.ready);
    let body = Ready {
        ready,
        store: store.err().unwrap_or("ok").to_owned(),
        broker: if down.is_empty() {
            "ready".to_owned()
        } else {
            down.join("; ")
        },
        regions,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod gate_tests {
    use super::RefusalGate;

    #[test]
    fn one_refusal_a_period_passes_and_the_next_says_how_many_did_not() {
        let g = RefusalGate::new(1000);
        assert_eq!(g.admit(10_000), Some(0));
        assert_eq!(g.admit(10_001), None);
        assert_eq!(g.admit(10_999), None);
        assert_eq!(g.admit(11_000), Some(2));
        assert_eq!(g.admit(11_500), None);
        assert_eq!(g.admit(20_000), Some(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the API fixes are in the document, as required fields.
    #[test]
    fn the_document_is_openapi_3_1_with_the_fixed_names() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        let schemas = &doc["components"]["schemas"];
        let required = |name: &str| -> Vec<String> {
            serde_json::from_value(schemas[name]["required"].clone()).unwrap()
        };
        for field in [
            "instance_id",
            "group_id",
            "region",
            "presence",
            "last_seen_ms",
            "agent_version",
            "host",
            "storage",
        ] {
            assert!(
                required("InstanceOut").contains(&field.to_owned()),
                "{field}"
            );
        }
        assert_eq!(required("InstancePage"), ["items", "next_cursor"]);
        for field in ["type", "title", "status", "detail"] {
            assert!(required("Problem").contains(&field.to_owned()), "{field}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/v1/instances"]["get"]["security"].is_array());
        assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    }
}
