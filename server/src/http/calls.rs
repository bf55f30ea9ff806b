//! `POST /v1/instances/{id}/calls`, `GET /v1/calls/{id}`, `GET /v1/instances/{id}/calls`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use csg_protocol::methods::{Kind, Method, MethodError};
use csg_protocol::{InstanceId, RequestId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::{authorize, forbidden, grants};
use super::problem::Problem;
use super::{AppState, RegionHandle, RemoteAddr};
use crate::calls::{CallAnswer, CallFailure, CallRequest, CallTimeout};
use crate::store::{CallRecord, InstanceRow, PageLimit, Scope, TokenRecord};

/// The header whose value becomes the request id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A call to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// A protocol method, e.g. `sys.ping`, `nfs.export.create`.
    #[schema(example = "sys.ping")]
    pub method: String,
    /// The method's params (an object); none when absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    /// The call's budget, re-sends included: 1 to 120000, default 10000.
    #[schema(minimum = 1, maximum = 120000)]
    pub timeout_ms: Option<u64>,
}

/// The agent's reply envelope as it came: `{v, id, ok, result}` or `{v, id, ok, error}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct ReplyEnvelope(pub Value);

/// A call as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallOut {
    pub id: String,
    pub region: String,
    pub instance_id: String,
    pub method: String,
    /// With secrets redacted.
    #[schema(value_type = Object)]
    pub params: Value,
    #[schema(required = true)]
    pub token_name: Option<String>,
    /// `pending`, `answered` or `failed`.
    #[schema(pattern = "^(pending|answered|failed)$")]
    pub state: &'static str,
    /// The agent's reply envelope, once answered.
    #[schema(required = true, value_type = Option<Object>)]
    pub reply: Option<Value>,
    /// Why no answer came, when failed.
    #[schema(required = true)]
    pub error: Option<String>,
    pub started_ms: i64,
    #[schema(required = true)]
    pub finished_ms: Option<i64>,
}

/// A page of calls, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallPage {
    pub items: Vec<CallOut>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

pub fn call_view(c: &CallRecord) -> CallOut {
    CallOut {
        id: c.id.as_str().to_owned(),
        region: c.region.as_str().to_owned(),
        instance_id: c.instance_id.as_str().to_owned(),
        method: c.method.clone(),
        params: c.params.clone(),
        token_name: c.token_name.clone(),
        state: c.state.as_str(),
        reply: c.reply.clone(),
        error: c.error.clone(),
        started_ms: c.started_ms,
        finished_ms: c.finished_ms,
    }
}

/// The instance a request names, if the token may see it: 400 for a malformed id, 404 for
/// one never seen or outside the token's groups (as if never seen).
///
/// Instance ids are the cloud's, unique across its regions, so a route names a gateway by id
/// alone and it is looked up in every region served. The same id in two regions is a gateway
/// that moved (its old region keeps its last state): the region where it was seen last wins.
pub async fn visible_instance(
    state: &AppState,
    token: &TokenRecord,
    id: &str,
) -> Result<(InstanceRow, RegionHandle), Problem> {
    let id = InstanceId::new(id).map_err(|e| Problem::bad_request(format!("instance id: {e}")))?;
    let unknown = || Problem::not_found(format!("no instance {} has been seen", id.as_str()));
    let mut found: Option<(InstanceRow, &RegionHandle)> = None;
    for region in state.regions.iter() {
        let Some(row) = state.store.get_instance(&region.region, &id).await? else {
            continue;
        };
        if !token.groups.is_empty() && !token.groups.contains(&row.group_id) {
            continue;
        }
        let later = found.as_ref().is_none_or(|(f, _)| {
            row.last_seen_ms.unwrap_or(i64::MIN) > f.last_seen_ms.unwrap_or(i64::MIN)
        });
        if later {
            found = Some((row, region));
        }
    }
    found
        .map(|(row, region)| (row, region.clone()))
        .ok_or_else(unknown)
}

/// How job ids, and so their executions' request ids, begin (`jobs::new_job_id`).
pub const JOB_ID_PREFIX: &str = "job-";

/// The `Idempotency-Key` header's text, if there is one: 400 when it is given twice or is not
/// visible ASCII. Each route then parses it by its own rules.
pub fn idempotency_key_text(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::bad_request(
            "Idempotency-Key: given more than once",
        ));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| Problem::bad_request("Idempotency-Key: visible ASCII characters only"))
}

/// `Idempotency-Key`, checked by the protocol's request id rules (400 otherwise).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<RequestId>, Problem> {
    let Some(text) = idempotency_key_text(headers)? else {
        return Ok(None);
    };
    // A job's executions have request ids of this shape, listed by the API: a call under one
    // would take that execution's place in the agent's id memory.
    if text.starts_with(JOB_ID_PREFIX) {
        return Err(Problem::bad_request(format!(
            "Idempotency-Key: keys starting with {JOB_ID_PREFIX:?} are the console's own (job executions)"
        )));
    }
    RequestId::new(text)
        .map(Some)
        .map_err(|e| Problem::bad_request(format!("Idempotency-Key: {e}")))
}

/// The problem for a call without a reply.
pub fn failure_problem(f: CallFailure) -> Problem {
    match f {
        CallFailure::OutcomeUnknown(why) => Problem::conflict(why),
        CallFailure::IdReused(id) => Problem::conflict(format!(
            "Idempotency-Key {} was used for another request (instance, method or params)",
            id.as_str()
        )),
        CallFailure::BrokerDown(why) => {
            Problem::unavailable(format!("the broker is unreachable ({why}); nothing was sent"))
        }
        CallFailure::Timeout(id) => Problem::gateway_timeout(
            format!(
                "no reply within the timeout; retry with Idempotency-Key {} (a mutation runs at most once)",
                id.as_str()
            ),
            id.as_str(),
        ),
        CallFailure::ConnectionLost(id) => Problem::unavailable(format!(
            "the connection to the broker was lost while waiting; retry with Idempotency-Key {}",
            id.as_str()
        ))
        .retry_with(id.as_str()),
        CallFailure::InFlight(id) => Problem::conflict(format!(
            "a request with id {} is waiting for its reply right now; retry when it has finished",
            id.as_str()
        ))
        .retry_with(id.as_str()),
        CallFailure::TooLarge(why) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            why,
        ),
        CallFailure::Store(e) => e.into(),
        CallFailure::Other(why) => {
            tracing::error!(error = %why, "call failed");
            Problem::internal()
        }
    }
}

/// A method and params parsed by the protocol: 422 naming the method or the field.
pub fn parse_method(name: &str, params: &Map<String, Value>) -> Result<Method, Problem> {
    Method::parse(name, params.clone()).map_err(|e| match e {
        MethodError::Unknown(m) => Problem::unprocessable(format!(
            "method: unknown method {:?}",
            m.chars().take(64).collect::<String>()
        )),
        MethodError::InvalidParams(why) => Problem::unprocessable(format!("params: {why}")),
    })
}

/// The scope a method needs: `operate` for a mutation, `read` otherwise.
pub fn scope_for(method: &Method) -> Scope {
    match method.kind() {
        Kind::Mutation => Scope::Operate,
        Kind::Read => Scope::Read,
    }
}

/// A JSON body: 400 when it is not JSON, 422 when it does not fit the shape.
pub fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Problem::unprocessable(format!("body: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::bad_request(format!("body: not JSON: {e}"))
            }
        }
    })
}

/// Sends a call to a gateway and answers with the agent's reply envelope as it came (200
/// whether `ok` is true or false). Only the console's own failures are problems.
#[utoipa::path(
    post,
    path = "/v1/instances/{id}/calls",
    tag = "calls",
    params(
        ("id" = String, Path, description = "the instance id"),
        ("Idempotency-Key" = Option<String>, Header, description = "becomes the request id (1-64 of [A-Za-z0-9_.:-]); the same key again never runs a mutation twice"),
    ),
    request_body = CallBody,
    responses(
        (status = 200, description = "the agent's reply envelope, ok or not", body = ReplyEnvelope),
        (status = 400, description = "bad JSON, a bad instance id or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "a mutation needs operate, a read needs read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "an instance never seen (or outside the token's groups)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the Idempotency-Key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "an unknown method, bad params or timeout_ms", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker or the store is unavailable; with Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "no reply in time; retryable, with the request id to retry with", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn post(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let key = idempotency_key(&headers)?;
    let body: CallBody = json_body(&body)?;
    let params = body.params.unwrap_or_default();
    let method = parse_method(&body.method, &params)?;
    let needed = scope_for(&method);
    if !grants(&token.scopes, needed) {
        return Err(forbidden(&token, needed));
    }
    let timeout = match body.timeout_ms {
        Some(ms) => CallTimeout::from_ms(ms).map_err(Problem::unprocessable)?,
        None => CallTimeout::default(),
    };
    let (row, region) = visible_instance(&state, &token, &id).await?;
    let answer = region
        .calls
        .call(CallRequest {
            instance: row.instance_id,
            group: Some(row.group_id),
            method,
            params,
            id: key,
            timeout,
            token_name: Some(token.name.as_str().to_owned()),
            remote_addr: remote.0,
            action: "call",
        })
        .await
        .map_err(failure_problem)?;
    Ok(reply_response(answer))
}

fn reply_response(answer: CallAnswer) -> Response {
    (StatusCode::OK, Json(answer.reply)).into_response()
}

/// One call made through the console.
#[utoipa::path(
    get,
    path = "/v1/calls/{id}",
    tag = "calls",
    params(("id" = String, Path, description = "the request id")),
    responses(
        (status = 200, description = "the call", body = CallOut),
        (status = 400, description = "a malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such call (or its gateway is outside the token's groups)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CallOut>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let id = RequestId::new(id.as_str())
        .map_err(|e| Problem::bad_request(format!("request id: {e}")))?;
    let unknown = || Problem::not_found(format!("no call {}", id.as_str()));
    let call = state.store.get_call(&id).await?.ok_or_else(unknown)?;
    if state.regions.get(&call.region).is_none() {
        return Err(unknown());
    }
    // Group limits: the call's gateway must be one the token sees.
    if !token.groups.is_empty() {
        visible_instance(&state, &token, call.instance_id.as_str())
            .await
            .map_err(|_| unknown())?;
    }
    Ok(Json(call_view(&call)))
}

/// `limit` and `cursor`, nothing else.
pub fn page_query(raw: Option<&str>) -> Result<(PageLimit, Option<String>), Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut limit = None;
    let mut cursor = None;
    for (k, v) in pairs {
        match k.as_str() {
            "limit" if limit.is_none() => {
                let n: u32 = v.parse().map_err(|_| {
                    Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
                })?;
                limit = Some(PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))?);
            }
            "cursor" if cursor.is_none() => cursor = Some(v),
            "limit" | "cursor" => {
                return Err(Problem::bad_request(format!("{k}: given more than once")))
            }
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: limit, cursor",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    let limit = match limit {
        Some(l) => l,
        None => PageLimit::new(super::instances::DEFAULT_LIMIT)?,
    };
    Ok((limit, cursor))
}

/// An instance's calls, newest first.
#[utoipa::path(
    get,
    path = "/v1/instances/{id}/calls",
    tag = "calls",
    params(
        ("id" = String, Path, description = "the instance id"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page", body = CallPage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "an instance never seen (or outside the token's groups)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CallPage>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let (limit, cursor) = page_query(raw.as_deref())?;
    let (row, _) = visible_instance(&state, &token, &id).await?;
    let page = state
        .store
        .list_calls(&row.region, &row.instance_id, limit, cursor.as_deref())
        .await?;
    Ok(Json(CallPage {
        items: page.items.iter().map(call_view).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_follow_the_id_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(IDEMPOTENCY_KEY, "deploy-42.a:b_c".parse().unwrap());
        assert_eq!(
            idempotency_key(&h).unwrap().unwrap().as_str(),
            "deploy-42.a:b_c"
        );
        // The last: the shape of a job execution's request id, which a call must not take.
        for bad in ["bad key", "x/y", "", &"k".repeat(65), "job-19a2b-0011:gw-1"] {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, bad.parse().unwrap());
            assert_eq!(idempotency_key(&h).unwrap_err().status, 400, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.append(IDEMPOTENCY_KEY, "a".parse().unwrap());
        h.append(IDEMPOTENCY_KEY, "b".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap_err().status, 400);
    }

    #[test]
    fn job_ids_begin_as_the_key_check_expects() {
        assert!(crate::jobs::new_job_id(1)
            .unwrap()
            .starts_with(JOB_ID_PREFIX));
    }

    #[test]
    fn bodies_and_methods_are_refused_with_the_right_status() {
        let bad_json = json_body::<CallBody>(&Bytes::from_static(b"{"));
        assert_eq!(bad_json.unwrap_err().status, 400);
        let unknown_field =
            json_body::<CallBody>(&Bytes::from_static(b"{\"method\":\"sys.ping\",\"x\":1}"));
        assert_eq!(unknown_field.unwrap_err().status, 422);
        assert_eq!(
            parse_method("sys.nope", &Map::new()).unwrap_err().status,
            422
        );
        let m = parse_method(
            "nfs.export.delete",
            &serde_json::from_str(r#"{"name":"vol1"}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(scope_for(&m), Scope::Operate);
        let m = parse_method("sys.ping", &Map::new()).unwrap();
        assert_eq!(scope_for(&m), Scope::Read);
    }
}
