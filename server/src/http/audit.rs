//! `GET /v1/audit`: the audit log, newest first, for tokens with the `audit` scope.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::authorize;
use super::problem::Problem;
use super::AppState;
use crate::store::{AuditFilter, AuditRecord, PageLimit, Scope};

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOut {
    pub id: i64,
    pub at_ms: i64,
    pub region: String,
    #[schema(required = true)]
    pub token_name: Option<String>,
    #[schema(required = true)]
    pub remote_addr: Option<String>,
    /// `call`, `resource.put`, `resource.delete`, … or `refused`.
    pub action: String,
    #[schema(required = true)]
    pub instance_id: Option<String>,
    #[schema(required = true)]
    pub method: Option<String>,
    /// With secrets redacted.
    #[schema(required = true, value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// `ok`, the agent's error code, the console's failure (`timeout`, …) or a refusal's HTTP status.
    pub outcome: String,
    #[schema(required = true)]
    pub request_id: Option<String>,
}

/// A page of audit events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditOut>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn view(a: &AuditRecord) -> AuditOut {
    let e = &a.event;
    AuditOut {
        id: a.id,
        at_ms: e.at_ms,
        region: e.region.as_str().to_owned(),
        token_name: e.token_name.clone(),
        remote_addr: e.remote_addr.clone(),
        action: e.action.clone(),
        instance_id: e.instance_id.clone(),
        method: e.method.clone(),
        params: e.params.clone(),
        outcome: e.outcome.clone(),
        request_id: e.request_id.clone(),
    }
}

/// Longest text filter value.
const MAX_TEXT: usize = 128;

pub fn parse_query(
    raw: Option<&str>,
) -> Result<(AuditFilter, Option<PageLimit>, Option<String>), Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut f = AuditFilter::default();
    let mut limit = None;
    let mut cursor = None;
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in pairs {
        if seen.contains(&k) {
            return Err(Problem::bad_request(format!(
                "{}: given more than once",
                k.chars().take(64).collect::<String>()
            )));
        }
        seen.push(k.clone());
        let text = |v: String| {
            if v.is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                Err(Problem::bad_request(format!(
                    "{k}: 1 to {MAX_TEXT} printable bytes"
                )))
            } else {
                Ok(Some(v))
            }
        };
        let ms = |v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| Problem::bad_request(format!("{k}: milliseconds since the epoch")))
        };
        match k.as_str() {
            "token" => f.token_name = text(v)?,
            "region" => {
                f.region = Some(
                    crate::store::Region::new(v.as_str())
                        .map_err(|e| Problem::bad_request(format!("region: {e}")))?,
                );
            }
            "instance" => f.instance_id = text(v)?,
            "action" => f.action = text(v)?,
            "outcome" => f.outcome = text(v)?,
            "since_ms" => f.since_ms = ms(&v)?,
            "until_ms" => f.until_ms = ms(&v)?,
            "limit" => {
                let n: u32 = v.parse().map_err(|_| {
                    Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
                })?;
                limit = Some(PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))?);
            }
            "cursor" => cursor = Some(v),
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: token, region, instance, action, outcome, since_ms, until_ms, limit, cursor",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    Ok((f, limit, cursor))
}

/// The audit log: every change made through the console and every refused request.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(
        ("token" = Option<String>, Query, description = "a token's name"),
        ("region" = Option<String>, Query, description = "one region served by this console; without it, every region"),
        ("instance" = Option<String>, Query, description = "an instance id"),
        ("action" = Option<String>, Query, description = "call, resource.put, resource.delete, refused, …"),
        ("outcome" = Option<String>, Query, description = "ok, an agent error code, timeout, or an HTTP status"),
        ("since_ms" = Option<i64>, Query, description = "at or after, ms since the epoch"),
        ("until_ms" = Option<i64>, Query, description = "before, ms since the epoch"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page, newest first", body = AuditPage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the audit scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditPage>, Problem> {
    let token = authorize(&state, &headers, Scope::Audit).await?;
    // The log spans every group (refusals name no gateway at all): a token limited to groups
    // cannot be shown it without showing other groups' gateways.
    if !token.groups.is_empty() {
        return Err(Problem::forbidden(
            "the audit log spans every group; a token limited to groups cannot read it",
        )
        .by_token(token.name.as_str()));
    }
    let (mut filter, limit, cursor) = parse_query(raw.as_deref())?;
    filter.region = super::instances::region_filter(
        &state,
        filter.region.as_ref().map(crate::store::Region::as_str),
    )?;
    let limit = match limit {
        Some(l) => l,
        None => PageLimit::new(super::instances::DEFAULT_LIMIT)?,
    };
    let page = state
        .store
        .list_audit(&filter, limit, cursor.as_deref())
        .await?;
    Ok(Json(AuditPage {
        items: page.items.iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}
