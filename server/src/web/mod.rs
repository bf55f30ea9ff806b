//! The web console: server-rendered pages beside the API, in the same process and on the same
//! port, under `/ui/`.
//!
//! - pages are askama templates (`templates/`), compiled into the binary and HTML-escaped by
//!   default; every page reads without JavaScript;
//! - one small vendored script (htmx, pinned) swaps the fleet table in place when its filter
//!   changes, and `console.js` updates rows from a server-sent event stream;
//! - sign-in with a console token opens a session kept in the store ([`session`]), so every
//!   replica accepts it; every form carries a CSRF token checked on every POST;
//! - every page answers with a strict Content-Security-Policy and frame, referrer and
//!   content-type headers ([`security_headers`]).

mod assets;
mod audit;
mod fleet;
mod gateway;
mod job_form;
mod jobs;
mod live;
mod resources;
mod session;
mod view;

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::http::AppState;

/// Where the pages live.
pub const PREFIX: &str = "/ui";

/// The pages' Content-Security-Policy: scripts, styles and connections from this origin only,
/// no inline script or style, no plugins, no framing, forms posting only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The web console's routes, merged into the API's router (which adds the audit of refusals,
/// the body limit and the metrics around them).
pub fn routes(request_timeout: Duration) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(fleet::page))
        .route(
            "/ui/signin",
            get(session::signin_form).post(session::signin),
        )
        .route("/ui/signout", post(session::signout))
        .route("/ui/gateways/{id}", get(gateway::page))
        .route("/ui/gateways/{id}/reconcile", post(gateway::reconcile))
        // --- a gateway's resources, their forms, and its chart's data ---
        .route("/ui/gateways/{id}/host.json", get(resources::host))
        .route("/ui/gateways/{id}/resources", get(resources::section))
        .route("/ui/gateways/{id}/resources/{kind}", post(resources::save))
        .route(
            "/ui/gateways/{id}/resources/{kind}/new",
            get(resources::new_form),
        )
        .route(
            "/ui/gateways/{id}/resources/{kind}/{name}/edit",
            get(resources::edit_form),
        )
        .route(
            "/ui/gateways/{id}/resources/{kind}/{name}/delete",
            get(resources::confirm_delete).post(resources::delete),
        )
        // --- end of a gateway's resources ---
        // Jobs and audit.
        .route("/ui/jobs", get(jobs::list).post(job_form::create))
        .route("/ui/jobs/new", get(job_form::new_form))
        .route("/ui/jobs/{id}", get(jobs::page))
        .route("/ui/jobs/{id}/cancel", post(jobs::cancel))
        .route("/ui/jobs/{id}/resume", post(jobs::resume))
        .route("/ui/jobs/{id}/retry-failed", post(jobs::retry))
        .route("/ui/audit", get(audit::page))
        // The timeout bounds the wait for a response's head; the stream's body outlives it.
        .route("/ui/events", get(live::stream))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    Router::new()
        .route("/ui/assets/{name}", get(assets::serve))
        .merge(pages)
        .layer(axum::middleware::from_fn(security_headers))
}

/// The headers every page and asset carries. Pages are never cached (they show live state and
/// a CSRF token); assets set their own long cache lifetime.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A page's HTML with its status.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
