//! RFC 9457 problem details: every error the API answers goes through [`Problem`], and every
//! store error is mapped onto one here, in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;

use crate::store::StoreError;

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_S: u16 = 5;

/// What a problem response tells the audit of refusals (a response extension, never sent).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub detail: String,
    pub token_name: Option<String>,
    /// The call behind it was audited already.
    pub audited: bool,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (documented in docs/console.md).
    #[serde(rename = "type")]
    #[schema(example = "urn:csg:problem:bad-request")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Whether the same request may be sent again (a call that timed out): with `request_id`,
    /// the id to retry with, as `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// The request id of the call concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub request_id: Option<Box<str>>,
    /// The agent's error (`{code, message}`) behind a resource route's problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub agent_error: Option<Box<serde_json::Value>>,
    // The fields below are small on purpose: a `Problem` is the error of most handlers'
    // results, and stays under clippy's large-error size.
    #[serde(skip)]
    retry_after: Option<u16>,
    /// The token that made the refused request, for the audit of refusals.
    #[serde(skip)]
    token_name: Option<Box<str>>,
    #[serde(skip)]
    bearer_challenge: bool,
    /// Made from an agent's answer to a call the call path audited already.
    #[serde(skip)]
    audited: bool,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("urn:csg:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retryable: None,
            request_id: None,
            agent_error: None,
            retry_after: None,
            token_name: None,
            bearer_challenge: false,
            audited: false,
        }
    }

    /// 422: the request is well formed but cannot be acted on (a method or params the
    /// protocol refuses, targets that do not exist).
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "Unprocessable content",
            detail,
        )
    }

    /// 409: a key reused for another request, a resource not in a state that allows it.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// A call without an answer in time: retry with the same id.
    pub fn gateway_timeout(detail: impl Into<String>, request_id: &str) -> Self {
        let mut p = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway-timeout",
            "Gateway timeout",
            detail,
        );
        p.retryable = Some(true);
        p.request_id = Some(request_id.into());
        p
    }

    /// The same problem, retryable with this request id.
    pub fn retry_with(mut self, request_id: &str) -> Self {
        self.retryable = Some(true);
        self.request_id = Some(request_id.into());
        self
    }

    /// The same problem, with `Retry-After`.
    pub fn retry_after(mut self, seconds: u16) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Made from the answer of a call that is audited already: not audited again as a
    /// refusal.
    pub fn audited(mut self) -> Self {
        self.audited = true;
        self
    }

    /// The token that made the request, for the audit of a refusal.
    pub fn by_token(mut self, name: &str) -> Self {
        self.token_name = Some(name.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        );
        p.bearer_challenge = true;
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        p.retry_after = Some(RETRY_AFTER_S);
        p
    }

    pub fn internal() -> Self {
        // The cause is logged, never sent: it may name tables, paths or hosts.
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the console failed; see its log",
        )
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "store unavailable");
                Problem::unavailable("the store is unavailable; retry later")
            }
            StoreError::Invalid(why) => Problem::bad_request(why),
            StoreError::Conflict(why) => Problem::conflict(why),
            StoreError::Other(why) => {
                error!(error = %why, "store error");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.extensions_mut().insert(Refusal {
            detail: self.detail.clone(),
            token_name: self.token_name.as_deref().map(str::to_owned),
            audited: self.audited,
        });
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.bearer_challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"csg-consoled\""),
            );
        }
        resp
    }
}
