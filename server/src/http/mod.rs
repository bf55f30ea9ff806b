//! The HTTP API: JSON, RFC 9457 problems for errors (one mapping place: [`problem`]), bearer
//! tokens with scopes ([`auth`]).

pub mod auth;
pub mod instances;
pub mod jobs;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
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

use crate::store::{Region, Store};
use problem::Problem;

/// How long `/readyz` waits for the store's answer.
const READY_PING: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub region: Region,
    /// The status ingest's MQTT link.
    pub link: watch::Receiver<LinkState>,
}

pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/instances", get(instances::list))
        .route("/v1/instances/{id}", get(instances::get))
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/executions", get(jobs::executions))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/v1/jobs/{id}/retry-failed", post(jobs::retry_failed))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(as_problem))
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
    if json {
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
        jobs::create, jobs::list, jobs::get, jobs::executions, jobs::cancel, jobs::resume, jobs::retry_failed),
    components(schemas(Problem, Ready, instances::InstancePage, instances::InstanceDetail,
        jobs::JobOut, jobs::JobPage, jobs::ExecutionOut, jobs::ExecutionPage, jobs::DryRunOut, jobs::ExecError,
        crate::jobs::model::JobRequest, crate::jobs::model::TargetIn, crate::jobs::model::SelectorIn,
        crate::jobs::model::WaveIn, crate::jobs::model::AbortIn, crate::jobs::model::FailureType,
        crate::jobs::model::RetryIn, crate::store::JobCounts)),
    modifiers(&BearerAuth),
    tags((name = "instances", description = "the gateways the console knows"), (name = "jobs", description = "one method over many gateways, rate-limited, in waves, resumable"), (name = "service", description = "the service itself"))
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
    /// `ready`, or the broker link's state.
    pub broker: String,
}

/// 200 when the store answers and the broker link is subscribed; otherwise 503 saying which.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "ready", body = Ready),
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
    let link = state.link.borrow().clone();
    let broker = match &link {
        LinkState::Ready(_) => Ok(()),
        LinkState::Down(Some(f)) => Err(f.describe()),
        LinkState::Down(None) => Err("connecting".to_owned()),
    };
    let ready = store.is_ok() && broker.is_ok();
    let body = Ready {
        ready,
        store: store.err().unwrap_or("ok").to_owned(),
        broker: broker.err().unwrap_or_else(|| "ready".to_owned()),
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
