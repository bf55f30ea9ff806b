//! Resource routes with HTTP semantics over the storage methods: NFS exports, SMB shares and
//! users, iSCSI targets. Every one goes through the same call path as `POST …/calls` (stored,
//! audited when it changes something, idempotent with `Idempotency-Key`); the agent's error
//! codes map onto statuses in [`agent_problem`].

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use csg_protocol::RequestId;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::auth::{authorize, forbidden, grants};
use super::calls::{
    failure_problem, idempotency_key, json_body, page_query, parse_method, scope_for,
    visible_instance,
};
use super::problem::{Problem, RETRY_AFTER_S};
use super::{AppState, RemoteAddr};
use crate::calls::{CallAnswer, CallRequest, CallTimeout};
use crate::store::Scope;

/// One kind of resource and the methods behind its routes.
pub struct Family {
    /// The params key naming one (`name`, `username`).
    pub key: &'static str,
    pub list: &'static str,
    pub get: Option<&'static str>,
    /// Create-or-replace in one method (`smb.user.set`).
    pub set: Option<&'static str>,
    pub create: Option<&'static str>,
    pub update: Option<&'static str>,
    pub delete: &'static str,
    /// The delete method's boolean options, taken from the DELETE's query (`?force=true`).
    pub delete_flags: &'static [&'static str],
}

pub const NFS_EXPORTS: Family = Family {
    key: "name",
    list: "nfs.export.list",
    get: Some("nfs.export.get"),
    set: None,
    create: Some("nfs.export.create"),
    update: Some("nfs.export.update"),
    delete: "nfs.export.delete",
    delete_flags: &[],
};

pub const SMB_SHARES: Family = Family {
    key: "name",
    list: "smb.share.list",
    get: Some("smb.share.get"),
    set: None,
    create: Some("smb.share.create"),
    update: Some("smb.share.update"),
    delete: "smb.share.delete",
    delete_flags: &[],
};

pub const SMB_USERS: Family = Family {
    key: "username",
    list: "smb.user.list",
    get: None,
    set: Some("smb.user.set"),
    create: None,
    update: None,
    delete: "smb.user.delete",
    delete_flags: &[],
};

pub const ISCSI_TARGETS: Family = Family {
    key: "name",
    list: "iscsi.target.list",
    get: Some("iscsi.target.get"),
    set: None,
    create: Some("iscsi.target.create"),
    update: Some("iscsi.target.update"),
    delete: "iscsi.target.delete",
    delete_flags: &["force", "delete_backing_files"],
};

/// The HTTP status for an agent's error code, and whether the client may retry.
pub fn status_for(code: &str) -> (StatusCode, &'static str, &'static str) {
    match code {
        "NOT_FOUND" => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        "CONFLICT" => (StatusCode::CONFLICT, "conflict", "Conflict"),
        "INVALID_PARAMS" | "BAD_REQUEST" => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "Unprocessable content",
        ),
        "BUSY" | "UNAVAILABLE" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        ),
        "TIMEOUT" | "EXPIRED" => (
            StatusCode::GATEWAY_TIMEOUT,
            "gateway-timeout",
            "Gateway timeout",
        ),
        "UNAUTHORIZED" => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
        // The gateway does not serve this family (not configured there, or an agent too old
        // for it): for this gateway the collection does not exist. Not a 5xx: nothing failed.
        "UNKNOWN_METHOD" => (
            StatusCode::NOT_FOUND,
            "not-supported",
            "Not served by this gateway",
        ),
        // BACKEND_ERROR, INTERNAL, REPLY_TOO_LARGE, codes of newer agents: the gateway failed.
        _ => (StatusCode::BAD_GATEWAY, "agent-error", "The gateway failed"),
    }
}

/// The problem for an agent's error reply on a resource route.
pub fn agent_problem(answer: &CallAnswer) -> Problem {
    let error = answer.reply.get("error").cloned().unwrap_or(Value::Null);
    let code = error.get("code").and_then(Value::as_str).unwrap_or("");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the agent refused the request");
    let (status, kind, title) = status_for(code);
    let mut p = Problem::new(status, kind, title, format!("{code}: {message}")).audited();
    p.agent_error = Some(Box::new(error.clone()));
    p.request_id = Some(answer.id.as_str().into());
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            p.retry_with(answer.id.as_str()).retry_after(RETRY_AFTER_S)
        }
        StatusCode::GATEWAY_TIMEOUT => p.retry_with(answer.id.as_str()),
        _ => p,
    }
}

/// The id of a PUT's second step (create after an update found nothing): derived from the
/// key, so a retried PUT with the same key re-sends both steps under the same ids.
fn second_id(key: &RequestId) -> Result<RequestId, Problem> {
    let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(key.as_str().as_bytes()));
    RequestId::new(format!("put2-{}", &digest[..32])).map_err(|e| {
        tracing::error!(error = %e, "derived id");
        Problem::internal()
    })
}

/// What a resource call needs besides its params: the service, the client's address and the
/// gateway (the API's routes and the web console's forms both go through it).
pub struct Ctx {
    pub state: AppState,
    pub remote: RemoteAddr,
    pub instance: String,
}

impl Ctx {
    /// One call through the call path.
    pub async fn call(
        &self,
        token: &crate::store::TokenRecord,
        method: &str,
        params: Map<String, Value>,
        id: Option<RequestId>,
        action: &'static str,
    ) -> Result<CallAnswer, Problem> {
        let parsed = parse_method(method, &params)?;
        let needed = scope_for(&parsed);
        if !grants(&token.scopes, needed) {
            return Err(forbidden(token, needed));
        }
        let (row, region) = visible_instance(&self.state, token, &self.instance).await?;
        region
            .calls
            .call(CallRequest {
                instance: row.instance_id,
                group: Some(row.group_id),
                method: parsed,
                params,
                id,
                timeout: CallTimeout::default(),
                token_name: Some(token.name.as_str().to_owned()),
                remote_addr: self.remote.0.clone(),
                action,
            })
            .await
            .map_err(failure_problem)
    }
}

pub fn result_of(answer: &CallAnswer) -> Result<Value, Problem> {
    if answer.error_code.is_some() {
        return Err(agent_problem(answer));
    }
    Ok(answer.reply.get("result").cloned().unwrap_or(Value::Null))
}

fn one(key: &str, name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), Value::String(name.to_owned()));
    m
}

pub async fn list(
    fam: &Family,
    state: AppState,
    remote: RemoteAddr,
    headers: HeaderMap,
    instance: String,
    raw: Option<String>,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let (limit, cursor) = page_query(raw.as_deref())?;
    let mut params = Map::new();
    params.insert("limit".into(), Value::from(limit.get()));
    if let Some(c) = cursor {
        params.insert("cursor".into(), Value::String(c));
    }
    let key = idempotency_key(&headers)?;
    let ctx = Ctx {
        state,
        remote,
        instance,
    };
    let answer = ctx.call(&token, fam.list, params, key, "read").await?;
    Ok(Json(result_of(&answer)?).into_response())
}

pub async fn get(
    fam: &Family,
    state: AppState,
    remote: RemoteAddr,
    headers: HeaderMap,
    instance: String,
    name: String,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let Some(method) = fam.get else {
        return Err(Problem::not_found("no such route"));
    };
    let key = idempotency_key(&headers)?;
    let ctx = Ctx {
        state,
        remote,
        instance,
    };
    let answer = ctx
        .call(&token, method, one(fam.key, &name), key, "read")
        .await?;
    Ok(Json(result_of(&answer)?).into_response())
}

/// Create or replace. With a create-or-replace method (`smb.user.set`) that one call;
/// otherwise `update` first (it replaces the whole spec) and, when the agent says
/// `NOT_FOUND`, `create`. Both are safe to repeat: an identical spec is `changed: false`, and
/// with `Idempotency-Key` both steps keep their ids across retries, so the agent answers a
/// repeat from its id memory. 201 when created, 200 when replaced (or unchanged).
pub async fn put(
    fam: &Family,
    state: AppState,
    remote: RemoteAddr,
    headers: HeaderMap,
    instance: String,
    name: String,
    body: Bytes,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let key = idempotency_key(&headers)?;
    let mut spec: Map<String, Value> = json_body(&body)?;
    match spec.get(fam.key) {
        None => {
            spec.insert(fam.key.to_owned(), Value::String(name.clone()));
        }
        Some(Value::String(n)) if *n == name => {}
        Some(_) => {
            return Err(Problem::unprocessable(format!(
                "params: {} must be {name:?}, the name in the path",
                fam.key
            )))
        }
    }
    let ctx = Ctx {
        state,
        remote,
        instance,
    };
    let (created, result) = put_spec(fam, &ctx, &token, spec, key, "resource.put").await?;
    Ok(with_status(created, result))
}

/// The whole of a PUT once its spec names the resource: `set`, or `update` then `create` when
/// the agent says `NOT_FOUND`. Whether it was created, and the agent's result.
pub async fn put_spec(
    fam: &Family,
    ctx: &Ctx,
    token: &crate::store::TokenRecord,
    spec: Map<String, Value>,
    key: Option<RequestId>,
    action: &'static str,
) -> Result<(bool, Value), Problem> {
    if let Some(set) = fam.set {
        let answer = ctx.call(token, set, spec, key, action).await?;
        let result = result_of(&answer)?;
        let created = result.get("created") == Some(&Value::Bool(true));
        return Ok((created, result));
    }
    let (Some(update), Some(create)) = (fam.update, fam.create) else {
        return Err(Problem::not_found("no such route"));
    };
    let second = key.as_ref().map(second_id).transpose()?;
    let answer = ctx.call(token, update, spec.clone(), key, action).await?;
    if answer.error_code.as_deref() != Some("NOT_FOUND") {
        return Ok((false, result_of(&answer)?));
    }
    let answer = ctx.call(token, create, spec, second, action).await?;
    Ok((true, result_of(&answer)?))
}

fn with_status(created: bool, result: Value) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(result)).into_response()
}

/// Deletes one: 204, or 404 when the agent says it did not exist (`existed: false`). A retry
/// with the same `Idempotency-Key` is answered from the agent's id memory (204 again).
pub async fn delete(
    fam: &Family,
    state: AppState,
    remote: RemoteAddr,
    headers: HeaderMap,
    instance: String,
    name: String,
    raw: Option<String>,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let key = idempotency_key(&headers)?;
    let mut params = one(fam.key, &name);
    params.extend(delete_options(fam, raw.as_deref())?);
    let ctx = Ctx {
        state,
        remote,
        instance,
    };
    delete_named(fam, &ctx, &token, &name, params, key, "resource.delete").await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes one (`params` names it, with the delete's options); a `NOT_FOUND` problem when the
/// agent says it did not exist.
pub async fn delete_named(
    fam: &Family,
    ctx: &Ctx,
    token: &crate::store::TokenRecord,
    name: &str,
    params: Map<String, Value>,
    key: Option<RequestId>,
    action: &'static str,
) -> Result<(), Problem> {
    let answer = ctx.call(token, fam.delete, params, key, action).await?;
    let result = result_of(&answer)?;
    if result.get("existed") == Some(&Value::Bool(false)) {
        let mut p =
            Problem::not_found(format!("no {} {name:?} on this gateway", fam.key)).audited();
        p.request_id = Some(answer.id.as_str().into());
        return Err(p);
    }
    Ok(())
}

/// A DELETE's query: the family's boolean options (`true` or `false`, each at most once), as
/// the delete method's params. Anything else is refused before a call is made.
pub fn delete_options(fam: &Family, raw: Option<&str>) -> Result<Map<String, Value>, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut options = Map::new();
    for (k, v) in pairs {
        let shown = || k.chars().take(64).collect::<String>();
        if !fam.delete_flags.contains(&k.as_str()) {
            let known = if fam.delete_flags.is_empty() {
                "none".to_owned()
            } else {
                fam.delete_flags.join(", ")
            };
            return Err(Problem::bad_request(format!(
                "unknown query parameter {:?}; known: {known}",
                shown()
            )));
        }
        let flag = match v.as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Problem::bad_request(format!(
                    "{}: true or false, not {:?}",
                    shown(),
                    v.chars().take(64).collect::<String>()
                )))
            }
        };
        if options.insert(k.clone(), Value::Bool(flag)).is_some() {
            return Err(Problem::bad_request(format!("{} given twice", shown())));
        }
    }
    Ok(options)
}

/// The routes' handlers, one set per family, with their OpenAPI descriptions.
macro_rules! family_routes {
    ($fam:expr, $tag:literal, $list_path:literal, $one_path:literal,
     $list:ident, $put:ident, $delete:ident $(, $delete_param:tt)*) => {
        #[utoipa::path(get, path = $list_path, tag = $tag,
            params(("id" = String, Path, description = "the instance id"),
                   ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
                   ("cursor" = Option<String>, Query, description = "the previous page's next_cursor")),
            responses(
                (status = 200, description = "the agent's list result", content_type = "application/json"),
                (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "too small a scope", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "an instance never seen", body = Problem, content_type = "application/problem+json"),
                (status = 503, description = "broker, store or backend unavailable; Retry-After", body = Problem, content_type = "application/problem+json"),
                (status = 504, description = "no reply in time", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "the agent's CONFLICT", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "invalid params, limit or cursor", body = Problem, content_type = "application/problem+json"),
                (status = 502, description = "the gateway's backend failed", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $list(
            State(state): State<AppState>,
            Extension(remote): Extension<RemoteAddr>,
            headers: HeaderMap,
            Path(instance): Path<String>,
            RawQuery(raw): RawQuery,
        ) -> Result<Response, Problem> {
            list(&$fam, state, remote, headers, instance, raw).await
        }

        #[utoipa::path(put, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = "the instance id"),
                   ("name" = String, Path, description = "the resource's name"),
                   ("Idempotency-Key" = Option<String>, Header, description = "the request id of the change")),
            request_body(content = Object, description = "the whole spec (the name may be left out)"),
            responses(
                (status = 200, description = "replaced (or unchanged)", content_type = "application/json"),
                (status = 201, description = "created", content_type = "application/json"),
                (status = 400, description = "bad JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "an instance never seen", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "the agent's CONFLICT, or a reused Idempotency-Key", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "invalid params", body = Problem, content_type = "application/problem+json"),
                (status = 502, description = "the gateway's backend failed", body = Problem, content_type = "application/problem+json"),
                (status = 503, description = "BUSY/UNAVAILABLE, broker or store down; Retry-After", body = Problem, content_type = "application/problem+json"),
                (status = 504, description = "TIMEOUT or no reply in time; retryable", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $put(
            State(state): State<AppState>,
            Extension(remote): Extension<RemoteAddr>,
            headers: HeaderMap,
            Path((instance, name)): Path<(String, String)>,
            body: Bytes,
        ) -> Result<Response, Problem> {
            put(&$fam, state, remote, headers, instance, name, body).await
        }

        #[utoipa::path(delete, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = "the instance id"),
                   ("name" = String, Path, description = "the resource's name"),
                   ("Idempotency-Key" = Option<String>, Header, description = "the request id of the change")
                   $(, $delete_param)*),
            responses(
                (status = 204, description = "deleted"),
                (status = 400, description = "bad Idempotency-Key, or an unknown or bad query parameter", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "the token lacks the operate scope", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "no such resource (or instance)", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "the agent's CONFLICT (e.g. in use)", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "invalid name", body = Problem, content_type = "application/problem+json"),
                (status = 503, description = "BUSY/UNAVAILABLE, broker or store down; Retry-After", body = Problem, content_type = "application/problem+json"),
                (status = 504, description = "TIMEOUT or no reply in time; retryable", body = Problem, content_type = "application/problem+json"),
                (status = 502, description = "the gateway's backend failed", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $delete(
            State(state): State<AppState>,
            Extension(remote): Extension<RemoteAddr>,
            headers: HeaderMap,
            Path((instance, name)): Path<(String, String)>,
            RawQuery(raw): RawQuery,
        ) -> Result<Response, Problem> {
            delete(&$fam, state, remote, headers, instance, name, raw).await
        }

    };
}

/// `GET` of one resource, for the families that have a get method.
macro_rules! family_get {
    ($fam:expr, $tag:literal, $one_path:literal, $get:ident) => {
        #[utoipa::path(get, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = "the instance id"),
                   ("name" = String, Path, description = "the resource's name")),
            responses(
                (status = 200, description = "the agent's get result", content_type = "application/json"),
                (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "too small a scope", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "no such resource (or instance)", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "invalid name", body = Problem, content_type = "application/problem+json"),
                (status = 503, description = "broker, store or backend unavailable; Retry-After", body = Problem, content_type = "application/problem+json"),
                (status = 504, description = "no reply in time", body = Problem, content_type = "application/problem+json"),
                (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "the agent's CONFLICT", body = Problem, content_type = "application/problem+json"),
                (status = 502, description = "the gateway's backend failed", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $get(
            State(state): State<AppState>,
            Extension(remote): Extension<RemoteAddr>,
            headers: HeaderMap,
            Path((instance, name)): Path<(String, String)>,
        ) -> Result<Response, Problem> {
            get(&$fam, state, remote, headers, instance, name).await
        }
    };
}

family_routes!(
    NFS_EXPORTS,
    "nfs",
    "/v1/instances/{id}/nfs/exports",
    "/v1/instances/{id}/nfs/exports/{name}",
    nfs_list,
    nfs_put,
    nfs_delete
);
family_routes!(
    SMB_SHARES,
    "smb",
    "/v1/instances/{id}/smb/shares",
    "/v1/instances/{id}/smb/shares/{name}",
    smb_share_list,
    smb_share_put,
    smb_share_delete
);
family_routes!(
    SMB_USERS,
    "smb",
    "/v1/instances/{id}/smb/users",
    "/v1/instances/{id}/smb/users/{name}",
    smb_user_list,
    smb_user_put,
    smb_user_delete
);
family_routes!(
    ISCSI_TARGETS,
    "iscsi",
    "/v1/instances/{id}/iscsi/targets",
    "/v1/instances/{id}/iscsi/targets/{name}",
    iscsi_list,
    iscsi_put,
    iscsi_delete,
    ("force" = Option<bool>, Query, description = "delete even while initiators are logged in (their sessions are closed); without it such a target is 409"),
    ("delete_backing_files" = Option<bool>, Query, description = "also remove the target's backing files (regular files inside a storage root only)")
);
family_get!(
    NFS_EXPORTS,
    "nfs",
    "/v1/instances/{id}/nfs/exports/{name}",
    nfs_get
);
family_get!(
    SMB_SHARES,
    "smb",
    "/v1/instances/{id}/smb/shares/{name}",
    smb_share_get
);
family_get!(
    ISCSI_TARGETS,
    "iscsi",
    "/v1/instances/{id}/iscsi/targets/{name}",
    iscsi_get
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_are_the_familys_flags_and_nothing_else() {
        let got = delete_options(
            &ISCSI_TARGETS,
            Some("force=true&delete_backing_files=false"),
        )
        .unwrap();
        assert_eq!(got["force"], Value::Bool(true));
        assert_eq!(got["delete_backing_files"], Value::Bool(false));
        assert!(delete_options(&ISCSI_TARGETS, None).unwrap().is_empty());
        for bad in [
            "force=yes",
            "force=1",
            "force=true&force=false",
            "forced=true",
            "force",
        ] {
            let p = delete_options(&ISCSI_TARGETS, Some(bad)).unwrap_err();
            assert_eq!(p.status, 400, "{bad}");
        }
        let p = delete_options(&NFS_EXPORTS, Some("force=true")).unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("known: none"), "{}", p.detail);
    }

    #[test]
    fn agent_codes_map_onto_statuses() {
        for (code, status) in [
            ("NOT_FOUND", 404),
            ("CONFLICT", 409),
            ("INVALID_PARAMS", 422),
            ("BUSY", 503),
            ("UNAVAILABLE", 503),
            ("TIMEOUT", 504),
            ("EXPIRED", 504),
            ("UNAUTHORIZED", 403),
            ("UNKNOWN_METHOD", 404),
            ("BACKEND_ERROR", 502),
            ("SOMETHING_NEW", 502),
        ] {
            assert_eq!(status_for(code).0.as_u16(), status, "{code}");
        }
    }

    #[test]
    fn a_busy_agent_is_retryable_503_with_retry_after() {
        let answer = CallAnswer {
            id: RequestId::new("r-1").unwrap(),
            reply: serde_json::json!({"v": 1, "id": "r-1", "ok": false,
                "error": {"code": "BUSY", "message": "too many", "retryable": true}}),
            error_code: Some("BUSY".to_owned()),
        };
        let p = agent_problem(&answer);
        assert_eq!(p.status, 503);
        assert_eq!(p.retryable, Some(true));
        assert_eq!(p.request_id.as_deref(), Some("r-1"));
        let resp = p.into_response();
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(axum::http::HeaderValue::as_bytes),
            Some(&b"5"[..])
        );
    }

    #[test]
    fn the_second_step_of_a_put_has_a_stable_valid_id() {
        let k = RequestId::new("deploy-42").unwrap();
        let a = second_id(&k).unwrap();
        assert_eq!(a, second_id(&k).unwrap());
        assert_ne!(a, k);
        let long = RequestId::new("x".repeat(64)).unwrap();
        assert!(second_id(&long).is_ok());
    }
}
