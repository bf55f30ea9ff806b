//! `GET /v1/webhooks/deliveries`: the stored webhook deliveries, newest first (scope admin).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::authorize;
use super::problem::Problem;
use super::AppState;
use crate::store::{DeliveryFilter, DeliveryRow, DeliveryState, PageLimit, Scope};

/// One delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: i64,
    /// The webhook's configured name.
    pub webhook: String,
    /// `presence`, `call` or `job`.
    pub event_type: String,
    /// The body POSTed (the event as JSON).
    #[schema(value_type = Object)]
    pub payload: Value,
    /// `pending` (sent or retried when due), `delivered` or `failed` (given up).
    #[schema(pattern = "^(pending|delivered|failed)$")]
    pub state: &'static str,
    pub attempts: u32,
    /// The last attempt's HTTP status, if one came.
    #[schema(required = true)]
    pub last_status: Option<u16>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_ms: i64,
    /// When a pending delivery is next due; null once settled.
    #[schema(required = true)]
    pub next_attempt_ms: Option<i64>,
    pub updated_ms: i64,
    #[schema(required = true)]
    pub delivered_ms: Option<i64>,
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryOut>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn view(d: DeliveryRow) -> DeliveryOut {
    DeliveryOut {
        id: d.id,
        webhook: d.webhook,
        event_type: d.event_type,
        // Stored by the service as JSON; anything else shows as a string.
        payload: serde_json::from_str(&d.payload).unwrap_or(Value::String(d.payload)),
        state: d.state.as_str(),
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        created_ms: d.created_ms,
        next_attempt_ms: (d.state == DeliveryState::Pending).then_some(d.next_attempt_ms),
        updated_ms: d.updated_ms,
        delivered_ms: d.delivered_ms,
    }
}

fn parse(raw: Option<&str>) -> Result<(DeliveryFilter, PageLimit, Option<String>), Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut filter = DeliveryFilter::default();
    let mut limit = None;
    let mut cursor = None;
    for (k, v) in pairs {
        let dup = || Problem::bad_request(format!("{k}: given more than once"));
        match k.as_str() {
            "state" if filter.state.is_none() => {
                filter.state = Some(
                    DeliveryState::parse(&v).map_err(|e| Problem::bad_request(e.to_string()))?,
                );
            }
            "webhook" if filter.webhook.is_none() => filter.webhook = Some(v),
            "limit" if limit.is_none() => {
                let n: u32 = v.parse().map_err(|_| {
                    Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
                })?;
                limit = Some(PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))?);
            }
            "cursor" if cursor.is_none() => cursor = Some(v),
            "state" | "webhook" | "limit" | "cursor" => return Err(dup()),
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: state, webhook, limit, cursor",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    let limit = match limit {
        Some(l) => l,
        None => PageLimit::new(100)?,
    };
    Ok((filter, limit, cursor))
}

/// A page of webhook deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    params(
        ("state" = Option<String>, Query, description = "pending, delivered or failed"),
        ("webhook" = Option<String>, Query, description = "the webhook's name"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page", body = DeliveryPage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeliveryPage>, Problem> {
    let token = authorize(&state, &headers, Scope::Admin).await?;
    // Deliveries carry every group's events.
    if !token.groups.is_empty() {
        return Err(Problem::forbidden("webhook deliveries carry every group's events; a token limited to groups cannot read them",).by_token(token.name.as_str()));
    }
    let (filter, limit, cursor) = parse(raw.as_deref())?;
    let page = state
        .store
        .list_deliveries(&filter, limit, cursor.as_deref())
        .await?;
    Ok(Json(DeliveryPage {
        items: page.items.into_iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}
