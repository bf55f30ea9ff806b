//! `GET /v1/instances` and `GET /v1/instances/{id}`, read from the store (the whole fleet,
//! whichever replica saw each gateway).

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use csg_protocol::identity::{GroupId, InstanceId};
use serde_json::{json, Value};

use super::auth::authorize;
use super::problem::Problem;
use super::AppState;
use crate::store::{InstanceFilter, InstanceRow, PageLimit, Presence, Scope, TokenRecord};

pub const DEFAULT_LIMIT: u32 = 100;

/// The list's query: `presence`, `group` and `id` (repeatable), `version`, `q`, `limit`,
/// `cursor`. Unknown or repeated single parameters are refused, never ignored.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub filter: InstanceFilter,
    pub limit: Option<PageLimit>,
    pub cursor: Option<String>,
}

pub fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut q = ListQuery::default();
    let once = |slot: &Option<String>, key: &str| {
        if slot.is_some() {
            Err(Problem::bad_request(format!("{key}: given more than once")))
        } else {
            Ok(())
        }
    };
    let mut limit: Option<String> = None;
    let mut presence: Option<String> = None;
    for (k, v) in pairs {
        match k.as_str() {
            "presence" => {
                once(&presence, "presence")?;
                presence = Some(v);
            }
            "group" => q.filter.groups.push(
                GroupId::new(v.as_str()).map_err(|e| Problem::bad_request(format!("group: {e}")))?,
            ),
            "id" => q.filter.ids.push(
                InstanceId::new(v.as_str()).map_err(|e| Problem::bad_request(format!("id: {e}")))?,
            ),
            "version" => {
                once(&q.filter.version, "version")?;
                q.filter.version = Some(v);
            }
            "q" => {
                once(&q.filter.q, "q")?;
                q.filter.q = Some(v);
            }
            "limit" => {
                once(&limit, "limit")?;
                limit = Some(v);
            }
            "cursor" => {
                once(&q.cursor, "cursor")?;
                q.cursor = Some(v);
            }
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: presence, group, version, q, id, limit, cursor",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    if let Some(p) = presence {
        q.filter.presence = Some(
            Presence::parse(&p)
                .map_err(|_| Problem::bad_request("presence: one of online, stale, offline"))?,
        );
    }
    if let Some(l) = limit {
        let n: u32 = l.parse().map_err(|_| {
            Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
        })?;
        q.limit = Some(PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))?);
    }
    Ok(q)
}

/// The instance as the API shows it. `detail` adds the last heartbeat as it came.
pub fn view(row: &InstanceRow, detail: bool) -> Value {
    let hb = row.heartbeat.as_ref();
    let host = hb.map(|h| {
        json!({
            "uptime_s": h.get("uptime_s"),
            "system": h.get("system"),
            "disks": h.get("disks"),
            "services": h.get("services"),
        })
    });
    let mut storage = row
        .storage
        .clone()
        .unwrap_or_else(|| json!({"count": 0, "drift": 0}));
    if let (Some(obj), Some(families)) =
        (storage.as_object_mut(), hb.and_then(|h| h.get("storage")))
    {
        obj.insert("families".into(), families.clone());
    }
    let mut v = json!({
        "instance_id": row.instance_id.as_str(),
        "group_id": row.group_id.as_str(),
        "region": row.region.as_str(),
        "presence": {
            "state": row.presence.as_str(),
            "since_ms": row.since_ms,
            "reason": row.reason,
        },
        "last_seen_ms": row.last_seen_ms,
        "agent_version": row.agent_version,
        "host": host,
        "storage": storage,
    });
    if detail {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("heartbeat".into(), hb.cloned().unwrap_or(Value::Null));
        }
    }
    v
}

/// A token limited to groups sees only theirs: its groups narrow (or replace) the filter's.
fn restrict(filter: &mut InstanceFilter, token: &TokenRecord) -> bool {
    if token.groups.is_empty() {
        return true;
    }
    if filter.groups.is_empty() {
        filter.groups = token.groups.clone();
    } else {
        filter.groups.retain(|g| token.groups.contains(g));
    }
    !filter.groups.is_empty()
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let mut q = parse_list_query(raw.as_deref())?;
    q.filter.region = Some(state.region.clone());
    if !restrict(&mut q.filter, &token) {
        return Ok(Json(json!({"items": [], "next_cursor": null})));
    }
    let limit = match q.limit {
        Some(l) => l,
        None => PageLimit::new(DEFAULT_LIMIT)?,
    };
    let page = state
        .store
        .list_instances(&q.filter, limit, q.cursor.as_deref())
        .await?;
    let items: Vec<Value> = page.items.iter().map(|r| view(r, false)).collect();
    Ok(Json(
        json!({"items": items, "next_cursor": page.next_cursor}),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let id = InstanceId::new(id.as_str())
        .map_err(|e| Problem::bad_request(format!("instance id: {e}")))?;
    let unknown = || Problem::not_found(format!("no instance {} has been seen", id.as_str()));
    let row = state
        .store
        .get_instance(&state.region, &id)
        .await?
        .ok_or_else(unknown)?;
    // Outside the token's groups it does not exist, so as not to tell which ids do.
    if !token.groups.is_empty() && !token.groups.contains(&row.group_id) {
        return Err(unknown());
    }
    Ok(Json(view(&row, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_parses_repeated_lists_and_refuses_the_rest() {
        let q = parse_list_query(Some("presence=online&group=GID_a&group=GID_b&id=gw-1&id=gw-2&q=gw&version=1.2.0&limit=5&cursor=abc")).unwrap();
        assert_eq!(q.filter.presence, Some(Presence::Online));
        assert_eq!(q.filter.groups.len(), 2);
        assert_eq!(q.filter.ids.len(), 2);
        assert_eq!(q.filter.q.as_deref(), Some("gw"));
        assert_eq!(q.filter.version.as_deref(), Some("1.2.0"));
        assert_eq!(q.limit.map(PageLimit::get), Some(5));
        assert_eq!(q.cursor.as_deref(), Some("abc"));
        assert_eq!(parse_list_query(None).unwrap(), ListQuery::default());

        for bad in [
            "limit=0",
            "limit=1001",
            "limit=ten",
            "limit=-1",
            "limit=1&limit=2",
            "presence=up",
            "id=a%2Fb",
            "group=",
            "colour=red",
        ] {
            let p = parse_list_query(Some(bad)).unwrap_err();
            assert_eq!(p.status, 400, "{bad}");
        }
    }
}
