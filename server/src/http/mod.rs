//! The HTTP API: JSON, RFC 9457 problems for errors (one mapping place: [`problem`]), bearer
//! tokens with scopes ([`auth`]).

pub mod auth;
pub mod instances;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use csg_transport::LinkState;
use serde_json::json;
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the store answers and the broker link is subscribed; otherwise 503 saying which.
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
    let body = json!({
        "ready": ready,
        "store": store.err().unwrap_or("ok"),
        "broker": broker.err().unwrap_or_else(|| "ready".to_owned()),
    });
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
