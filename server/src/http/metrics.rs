//! `GET /metrics` (no token) and the middleware counting every request by route and status.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::{error, warn};

use super::AppState;
use crate::metrics::{Metrics, CONTENT_TYPE};

/// How long a scrape waits for the store's counts before answering without them.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// The metrics route alone, for `[metrics] listen` or to merge into the API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// The service's metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus (OpenMetrics) text; may be served on an address of its own (`[metrics] listen`)", content_type = "application/openmetrics-text", body = String)))]
pub async fn scrape(State(state): State<AppState>) -> Response {
    // The counts of the whole fleet come from the store; a slow or down store delays the
    // scrape by at most STORE_WAIT and leaves the last counts.
    match tokio::time::timeout(STORE_WAIT, state.store.count_instances_by_presence()).await {
        Ok(Ok(counts)) => {
            let counts = counts
                .into_iter()
                .map(|(r, p, n)| (r, p.as_str().to_owned(), n))
                .collect();
            state.metrics.set_instances(&counts);
        }
        Ok(Err(e)) => warn!(error = %e, "metrics: instances not counted"),
        Err(_) => warn!("metrics: the store did not count instances within 2 s"),
    }
    state
        .metrics
        .set_webhook_events_dropped(state.bus.queue_dropped());
    match state.metrics.encode() {
        Ok(text) => {
            let mut resp = text.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        Err(e) => {
            error!(error = %e, "metrics not encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Counts each request under its route's pattern (never the raw path, whose ids would make
/// the label unbounded); requests no route matched count as `unmatched`.
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD => req.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    metrics.observe_http(&route, &method, resp.status().as_u16(), t0.elapsed());
    resp
}
