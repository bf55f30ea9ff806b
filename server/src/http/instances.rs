//! `GET /v1/instances` and `GET /v1/instances/{id}`, read from the store (the whole fleet,
//! whichever replica saw each gateway).

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use csg_protocol::identity::{GroupId, InstanceId};
use serde::{Deserialize, Serialize};
use serde_json::value::{to_raw_value, RawValue};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::authorize;
use super::problem::Problem;
use super::AppState;
use crate::store::{
    InstanceFilter, InstanceOrder, InstanceRow, JsonText, PageLimit, Presence, Region, Scope,
    TokenRecord,
};

pub const DEFAULT_LIMIT: u32 = 100;

/// The list's query: `presence`, `group` and `id` (repeatable), `version`, `drift`, `q`,
/// `fields`, `limit`, `cursor`. Unknown or repeated single parameters are refused, never ignored.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub filter: InstanceFilter,
    pub limit: Option<PageLimit>,
    pub cursor: Option<String>,
    pub fields: Option<Fields>,
    /// `region=`: checked against the regions served by the handler.
    pub region: Option<String>,
    /// `sort=`: the order of the list (by region and instance id without it).
    pub order: InstanceOrder,
}

/// The top-level members of an instance a list may be narrowed to (`fields=presence,host`);
/// `instance_id` is always included, as the key a client pages and matches by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(Vec<&'static str>);

impl Fields {
    pub const KNOWN: [&'static str; 8] = [
        "instance_id",
        "group_id",
        "region",
        "presence",
        "last_seen_ms",
        "agent_version",
        "host",
        "storage",
    ];

    pub fn parse(text: &str) -> Result<Self, Problem> {
        let mut chosen = vec!["instance_id"];
        for name in text.split(',') {
            let known = Self::KNOWN.iter().find(|k| **k == name).ok_or_else(|| {
                Problem::bad_request(format!(
                    "fields: unknown member {:?}; known: {}",
                    name.chars().take(64).collect::<String>(),
                    Self::KNOWN.join(", ")
                ))
            })?;
            if !chosen.contains(known) {
                chosen.push(known);
            }
        }
        Ok(Self(chosen))
    }

    /// The instance with only the chosen members.
    fn project(&self, instance: &InstanceOut) -> Value {
        // An InstanceOut always serializes (string keys, finite numbers from the store).
        let mut v = serde_json::to_value(instance).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.retain(|k, _| self.0.contains(&k.as_str()));
        }
        v
    }
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
    let mut drift: Option<String> = None;
    let mut sort: Option<String> = None;
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
            "drift" => {
                once(&drift, "drift")?;
                drift = Some(v);
            }
            "fields" => {
                if q.fields.is_some() {
                    return Err(Problem::bad_request("fields: given more than once"));
                }
                q.fields = Some(Fields::parse(&v)?);
            }
            "limit" => {
                once(&limit, "limit")?;
                limit = Some(v);
            }
            "cursor" => {
                once(&q.cursor, "cursor")?;
                q.cursor = Some(v);
            }
            "region" => {
                once(&q.region, "region")?;
                q.region = Some(v);
            }
            "sort" => {
                once(&sort, "sort")?;
                sort = Some(v);
            }
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: presence, group, version, drift, q, id, region, sort, fields, limit, cursor",
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
    if let Some(d) = drift {
        q.filter.drift = Some(match d.as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(Problem::bad_request("drift: true or false")),
        });
    }
    if let Some(s) = sort {
        q.order = InstanceOrder::parse(&s).map_err(|e| Problem::bad_request(e.to_string()))?;
    }
    if let Some(l) = limit {
        let n: u32 = l.parse().map_err(|_| {
            Problem::bad_request(format!("limit: an integer from 1 to {}", PageLimit::MAX))
        })?;
        q.limit = Some(PageLimit::new(n).map_err(|e| Problem::bad_request(e.to_string()))?);
    }
    Ok(q)
}

/// A gateway's presence as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceOut<'a> {
    /// `online`, `stale` (no heartbeat for the configured number of intervals) or `offline`.
    #[schema(example = "online", pattern = "^(online|stale|offline)$")]
    pub state: &'static str,
    /// When the state began, ms since the Unix epoch.
    pub since_ms: i64,
    /// `connected`, `heartbeat`, `shutdown`, `connection_lost` or `no_heartbeat`.
    #[schema(required = true)]
    pub reason: Option<&'a str>,
}

/// Resources managed by the gateway, summed over its storage families.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageOut<'a> {
    pub count: u64,
    /// Resources whose state differs from the desired one.
    pub drift: u64,
    /// Per family (`nfs`, `smb`, `iscsi`), from the last heartbeat.
    #[schema(required = true, value_type = Option<Object>)]
    pub families: Option<&'a RawValue>,
}

/// Host facts from a heartbeat, embedded from its stored text.
#[derive(Debug, Serialize)]
pub struct HostOut<'a> {
    pub uptime_s: Option<&'a RawValue>,
    pub system: Option<&'a RawValue>,
    pub disks: Option<&'a RawValue>,
    pub services: Option<&'a RawValue>,
}

/// One gateway, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceOut<'a> {
    pub instance_id: &'a str,
    pub group_id: &'a str,
    pub region: &'a str,
    pub presence: PresenceOut<'a>,
    /// When the console last heard from it, ms since the Unix epoch.
    #[schema(required = true)]
    pub last_seen_ms: Option<i64>,
    #[schema(required = true)]
    pub agent_version: Option<&'a str>,
    /// Host facts from the last heartbeat (`uptime_s`, `system`, `disks`, `services`); null
    /// before the first.
    #[schema(required = true, value_type = Option<Object>)]
    pub host: Option<HostOut<'a>>,
    pub storage: StorageOut<'a>,
}

/// One gateway with its last heartbeat as the agent sent it (protocol.md §8).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceDetail<'a> {
    #[serde(flatten)]
    pub instance: InstanceOut<'a>,
    #[schema(required = true, value_type = Option<Object>)]
    pub heartbeat: Option<&'a JsonText>,
}

/// A page of instances. With `fields`, each item holds only the members chosen (and
/// `instance_id`); without it, every member.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstancePage {
    // Each item is serialized as it is built, embedding the stored texts' parts: no tree of
    // the page is made (with `fields`, one of the item, to drop the members not chosen).
    #[schema(value_type = Vec<InstanceOut>)]
    pub items: Vec<Box<RawValue>>,
    /// Pass as `cursor` for the next page, with the same filters; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The members of a stored heartbeat the API shows, borrowed from its text: one scan, no
/// tree, nothing copied until the response is written.
#[derive(Debug, Default, Deserialize)]
struct HeartbeatParts<'a> {
    #[serde(borrow)]
    uptime_s: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    disks: Option<&'a RawValue>,
    #[serde(borrow)]
    services: Option<&'a RawValue>,
    #[serde(borrow)]
    storage: Option<&'a RawValue>,
}

/// The instance as the API shows it.
pub fn view(row: &InstanceRow) -> InstanceOut<'_> {
    // The store checked the text; one that still does not read as an object shows no parts.
    let parts = row
        .heartbeat
        .as_ref()
        .map(|h| serde_json::from_str::<HeartbeatParts<'_>>(h.as_str()).unwrap_or_default());
    let storage = row.storage.unwrap_or_default();
    let families = parts.as_ref().and_then(|p| p.storage);
    let host = parts.map(|p| HostOut {
        uptime_s: p.uptime_s,
        system: p.system,
        disks: p.disks,
        services: p.services,
    });
    InstanceOut {
        instance_id: row.instance_id.as_str(),
        group_id: row.group_id.as_str(),
        region: row.region.as_str(),
        presence: PresenceOut {
            state: row.presence.as_str(),
            since_ms: row.since_ms,
            reason: row.reason.as_deref(),
        },
        last_seen_ms: row.last_seen_ms,
        agent_version: row.agent_version.as_deref(),
        host,
        storage: StorageOut {
            count: storage.count,
            drift: storage.drift,
            families,
        },
    }
}

fn unserializable(row: &InstanceRow, e: &serde_json::Error) -> Problem {
    tracing::error!(instance = row.instance_id.as_str(), error = %e, "an instance does not serialize");
    Problem::internal()
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

/// The store filter's region for a list's `region=`: the named one (400 unless served), or
/// with none named, the only region served, or every region when several are.
pub fn region_filter(state: &AppState, named: Option<&str>) -> Result<Option<Region>, Problem> {
    Ok(match named {
        Some(n) => Some(state.regions.named(n)?.region.clone()),
        None if state.regions.len() == 1 => Some(state.regions.home().region.clone()),
        None => None,
    })
}

/// A page of instances, in the order `sort=` names (instance id by default; region first when
/// several are listed).
#[utoipa::path(
    get,
    path = "/v1/instances",
    tag = "instances",
    params(
        ("presence" = Option<String>, Query, description = "online, stale or offline"),
        ("group" = Option<Vec<String>>, Query, description = "any of these groups (repeatable)"),
        ("version" = Option<String>, Query, description = "exact agent version"),
        ("drift" = Option<bool>, Query, description = "true: only gateways with drift; false: only those without"),
        ("q" = Option<String>, Query, description = "a case-sensitive substring of the instance id"),
        ("id" = Option<Vec<String>>, Query, description = "exactly these instance ids (repeatable, at most 1000)"),
        ("region" = Option<String>, Query, description = "one region served by this console; without it, every region"),
        ("sort" = Option<String>, Query, description = "the order: id (region, then instance id; the default), group, presence (online, stale, offline), since (when the presence last changed), version or drift; a leading - for descending. Ties are ordered by instance id in the same direction; several regions listed are in region order first", pattern = "^-?(id|group|presence|since|version|drift)$"),
        ("fields" = Option<String>, Query, description = "comma-separated members to return (instance_id always): group_id, region, presence, last_seen_ms, agent_version, host, storage"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "the previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "a page", body = InstancePage),
        (status = 400, description = "a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<InstancePage>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let mut q = parse_list_query(raw.as_deref())?;
    q.filter.region = region_filter(&state, q.region.as_deref())?;
    if !restrict(&mut q.filter, &token) {
        return Ok(Json(InstancePage {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let limit = match q.limit {
        Some(l) => l,
        None => PageLimit::new(DEFAULT_LIMIT)?,
    };
    let page = state
        .store
        .list_instances(&q.filter, q.order, limit, q.cursor.as_deref())
        .await?;
    let items = page
        .items
        .iter()
        .map(|row| {
            let out = view(row);
            // An InstanceOut always serializes (string keys, checked JSON, finite numbers).
            match &q.fields {
                Some(f) => to_raw_value(&f.project(&out)),
                None => to_raw_value(&out),
            }
            .map_err(|e| unserializable(row, &e))
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(InstancePage {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// One instance, with its last heartbeat.
#[utoipa::path(
    get,
    path = "/v1/instances/{id}",
    tag = "instances",
    params(("id" = String, Path, description = "the instance id")),
    responses(
        (status = 200, description = "the instance", body = InstanceDetail),
        (status = 400, description = "a malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "never seen (or outside the token's groups)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Box<RawValue>>, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    // Outside the token's groups it does not exist, so as not to tell which ids do.
    let (row, _) = super::calls::visible_instance(&state, &token, &id).await?;
    let detail = InstanceDetail {
        instance: view(&row),
        heartbeat: row.heartbeat.as_ref(),
    };
    // Serialized here: the detail borrows the row.
    let body = to_raw_value(&detail).map_err(|e| unserializable(&row, &e))?;
    Ok(Json(body))
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
        let q = parse_list_query(Some("drift=true&fields=presence,host,presence")).unwrap();
        assert_eq!(q.filter.drift, Some(true));
        assert_eq!(
            q.fields,
            Some(Fields(vec!["instance_id", "presence", "host"]))
        );
        assert_eq!(
            parse_list_query(Some("drift=false")).unwrap().filter.drift,
            Some(false)
        );

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
            "drift=yes",
            "drift=true&drift=false",
            "fields=presence,colour",
            "fields=",
            "fields=host&fields=region",
        ] {
            let p = parse_list_query(Some(bad)).unwrap_err();
            assert_eq!(p.status, 400, "{bad}");
        }
    }
}
