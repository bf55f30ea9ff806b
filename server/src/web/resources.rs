//! The gateway page's storage resources and their forms: NFS exports, SMB shares and users,
//! iSCSI targets, read from the agent and changed through the same code as the API's resource
//! routes (`http::resources`: the call path, stored and audited), and the agent's
//! capabilities.
//!
//! The forms are built from the agent's own params schemas (`sys.capabilities`, protocol 1.1):
//! one input per top-level member of the create method, so a field the agent gains shows up
//! without a change here, and an `INVALID_PARAMS` naming a member lands next to its input.
//! The new-job form's per-method fields are built by the same code ([`method_fields`]), from
//! the console's own protocol crate's schemas.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use futures_util::future::join_all;
use serde_json::{Map, Value};

use super::fleet::gateway_href;
use super::session::{reader, sender, Signed};
use super::view::{render, Chrome, PageError};
use crate::http::calls::visible_instance;
use crate::http::problem::Problem;
use crate::http::resources::{
    self as api, delete_named, put_spec, result_of, Ctx, ISCSI_TARGETS, NFS_EXPORTS, SMB_SHARES,
    SMB_USERS,
};
use crate::http::{AppState, RemoteAddr};
use crate::now_ms;
use crate::store::{HostSample, InstanceRow, Presence, Scope, TokenRecord};

/// One kind of resource as the pages name it.
pub struct Kind {
    /// The URL segment (`nfs-exports`).
    pub slug: &'static str,
    /// The storage family it belongs to (`nfs`, `smb`, `iscsi`), as heartbeats and
    /// `sys.capabilities` name it.
    pub family: &'static str,
    pub label: &'static str,
    pub one: &'static str,
    pub api: &'static api::Family,
}

pub const KINDS: [Kind; 4] = [
    Kind {
        slug: "nfs-exports",
        family: "nfs",
        label: "NFS exports",
        one: "NFS export",
        api: &NFS_EXPORTS,
    },
    Kind {
        slug: "smb-shares",
        family: "smb",
        label: "SMB shares",
        one: "SMB share",
        api: &SMB_SHARES,
    },
    Kind {
        slug: "smb-users",
        family: "smb",
        label: "SMB users",
        one: "SMB user",
        api: &SMB_USERS,
    },
    Kind {
        slug: "iscsi-targets",
        family: "iscsi",
        label: "iSCSI targets",
        one: "iSCSI target",
        api: &ISCSI_TARGETS,
    },
];

fn kind(slug: &str) -> Result<&'static Kind, PageError> {
    KINDS.iter().find(|k| k.slug == slug).ok_or_else(|| {
        PageError::reading(Problem::not_found(format!(
            "no resource kind {:?}",
            slug.chars().take(64).collect::<String>()
        )))
    })
}

impl Kind {
    /// The method a new one is made with (`create`, or `set` for SMB users).
    fn create_method(&self) -> &'static str {
        self.api.create.or(self.api.set).unwrap_or(self.api.list)
    }
}

/// One resource as its list reports it.
pub struct Entry {
    pub name: String,
    /// What it is about at a glance (its path, its comment…), from the desired spec.
    pub summary: String,
    /// Each difference between desired and actual, as the agent words it.
    pub drift: Vec<String>,
    /// Whether the backend has it at all.
    pub present: bool,
}

/// One kind's section on the gateway page.
pub struct Section {
    pub slug: &'static str,
    pub label: &'static str,
    pub entries: Vec<Entry>,
    /// Why it could not be read, when it could not.
    pub error: Option<String>,
    pub backend: String,
}

/// The agent's capabilities, as the page shows them.
pub struct Capabilities {
    pub protocol: String,
    pub families: Vec<(String, String, String)>,
    pub limits: Vec<(String, String)>,
    pub roots: String,
    pub methods: usize,
    pub signing: String,
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The capabilities reply, made readable.
pub fn capabilities_of(c: &Value) -> Capabilities {
    let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
    let protocol = c.get("protocol");
    let versions = protocol
        .and_then(|p| p.get("versions"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    Capabilities {
        protocol: format!(
            "{} (answers {versions})",
            protocol
                .and_then(|p| p.get("current"))
                .map(scalar)
                .unwrap_or_default()
        ),
        families: obj(c.get("families"))
            .iter()
            .map(|(name, f)| {
                let options = obj(f.get("options"))
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", scalar(v)))
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    name.clone(),
                    f.get("backend").map(scalar).unwrap_or_default(),
                    options,
                )
            })
            .collect(),
        limits: obj(c.get("limits"))
            .iter()
            .map(|(k, v)| (k.clone(), scalar(v)))
            .collect(),
        roots: c
            .get("storage")
            .and_then(|s| s.get("roots"))
            .and_then(Value::as_array)
            .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        methods: obj(c.get("methods")).len(),
        signing: match c
            .get("signing")
            .and_then(|s| s.get("required"))
            .and_then(Value::as_bool)
        {
            Some(true) => "required".to_owned(),
            Some(false) => "not required".to_owned(),
            None => String::new(),
        },
    }
}

/// A list result's entries: the one array among its members (`exports`, `shares`, `users`,
/// `targets`), so each family's list reads the same way.
fn entries_of(k: &Kind, result: &Value) -> (Vec<Entry>, String) {
    let backend = result.get("backend").map(scalar).unwrap_or_default();
    let items = result
        .as_object()
        .and_then(|m| m.values().find_map(Value::as_array))
        .cloned()
        .unwrap_or_default();
    let entries = items
        .iter()
        .map(|e| {
            let desired = e.get("desired").unwrap_or(e);
            let summary = ["path", "comment", "iqn"]
                .iter()
                .find_map(|f| desired.get(*f).or_else(|| e.get(*f)).map(scalar))
                .unwrap_or_default();
            Entry {
                name: e
                    .get(k.api.key)
                    .or_else(|| e.get("name"))
                    .map(scalar)
                    .unwrap_or_default(),
                summary,
                drift: e
                    .get("drift")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(scalar).collect())
                    .unwrap_or_default(),
                present: !e.get("actual").is_some_and(Value::is_null),
            }
        })
        .collect();
    (entries, backend)
}

/// A problem from the call path as one line for the page: what happened, its code (the
/// agent's, else the console's status) and whether reading again is worth it. A read changes
/// nothing, so sending it again is always safe; only a timeout, a busy or absent agent or
/// broker may answer otherwise the next time.
fn said(p: &Problem) -> String {
    let code = p
        .agent_error
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("{} {}", p.status, p.title), str::to_owned);
    let retry = if p.retryable == Some(true) || matches!(p.status, 502..=504) {
        "Reading again is safe (a read changes nothing) and may succeed."
    } else {
        "Reading again is safe (a read changes nothing) but is answered the same until its cause changes."
    };
    // The call path's timeout speaks to an API client (the request id to retry a change
    // with); a read on the page is simply sent again.
    let what = if p.status == 504 {
        "the agent did not answer within the call path's timeout"
    } else {
        p.detail.as_str()
    };
    // An agent's error reads "CODE: message" already.
    if what.starts_with(&format!("{code}: ")) {
        format!("{what}. {retry}")
    } else {
        format!("{what} (code {code}). {retry}")
    }
}

/// What the gateway page shows of the agent: its capabilities and each configured family's
/// resources, read concurrently (reads through the call path, as the API's `GET`s are).
pub async fn read_all(
    state: &AppState,
    remote: &RemoteAddr,
    token: &TokenRecord,
    row: &InstanceRow,
    families: &[String],
) -> (Result<Capabilities, String>, Vec<Section>) {
    let ctx = Ctx {
        state: state.clone(),
        remote: remote.clone(),
        instance: row.instance_id.as_str().to_owned(),
    };
    let caps = async {
        let answer = ctx
            .call(token, "sys.capabilities", Map::new(), None, "read")
            .await
            .map_err(|p| said(&p))?;
        result_of(&answer)
            .map(|v| capabilities_of(&v))
            .map_err(|p| said(&p))
    };
    let kinds: Vec<&Kind> = KINDS
        .iter()
        .filter(|k| families.iter().any(|f| f == k.family))
        .collect();
    let lists = join_all(kinds.iter().map(|k| {
        let ctx = &ctx;
        async move {
            let mut params = Map::new();
            params.insert("limit".into(), Value::from(1000));
            let read = match ctx.call(token, k.api.list, params, None, "read").await {
                Ok(a) => result_of(&a),
                Err(p) => Err(p),
            };
            match read {
                Ok(v) => {
                    let (entries, backend) = entries_of(k, &v);
                    Section {
                        slug: k.slug,
                        label: k.label,
                        entries,
                        error: None,
                        backend,
                    }
                }
                Err(p) => Section {
                    slug: k.slug,
                    label: k.label,
                    entries: Vec::new(),
                    error: Some(said(&p)),
                    backend: String::new(),
                },
            }
        }
    }));
    let (caps, sections) = futures_util::future::join(caps, lists).await;
    (caps, sections)
}

#[derive(Template)]
#[template(path = "gateway_resources.html")]
struct ResourcesPage {
    chrome: Chrome,
    id: String,
    back: String,
    base: String,
    rq: String,
    can_operate: bool,
    sections: Vec<Section>,
    caps: Result<Capabilities, String>,
}

/// `GET …/resources`: the resources of each family the last heartbeat names, and the
/// capabilities, as the agent reports them now. The gateway page swaps this page's
/// `#resources` into itself once it has loaded (htmx), and links to it without JavaScript.
pub async fn section(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let (row, back) = gateway(&state, &signed, &id).await?;
    let families: Vec<String> = row
        .heartbeat
        .as_ref()
        .and_then(|h| serde_json::from_str::<Value>(h.as_str()).ok())
        .and_then(|hb| {
            hb.get("storage")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
        })
        .unwrap_or_default();
    let (caps, sections) = read_all(&state, &remote, &signed.token, &row, &families).await;
    let rq = back
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(render(&ResourcesPage {
        chrome: Chrome::new(
            format!("{id}: resources"),
            Some(&signed.token),
            signed.csrf.clone(),
        ),
        id: row.instance_id.as_str().to_owned(),
        back,
        base: format!("/ui/gateways/{}", row.instance_id.as_str()),
        rq,
        can_operate: signed.can(Scope::Operate),
        sections,
        caps,
    }))
}

// --- forms ---

/// One input of a form.
pub struct Field {
    pub name: String,
    /// `text`, `password`, `number`, `bool` (a choice of default, true, false) or `json` (a
    /// list or an object, written as JSON).
    pub input: &'static str,
    pub required: bool,
    pub value: String,
    pub hint: String,
    pub error: Option<String>,
    /// The resource's name on a change form: shown, not editable.
    pub fixed: bool,
}

/// The JSON Schema of `method`'s params in a capabilities reply.
fn params_schema<'a>(caps: &'a Value, method: &str) -> Option<&'a Value> {
    caps.get("methods")?.get(method)?.get("params")
}

/// A member's schema with one `$ref` into the schema's `$defs` followed.
fn resolved<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    s.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| root.get("$defs")?.get(name))
        .unwrap_or(s)
}

fn types(s: &Value) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The fields of a method's params as the console's own protocol crate describes them (the
/// schemas an agent of this build hands in `sys.capabilities`), for a form that is about no
/// one gateway (a job's); `None` when the protocol has no such method. A resource family's
/// method puts its key first, as its resource form does.
pub fn method_fields(method: &str) -> Option<Vec<Field>> {
    let schema = csg_protocol::methods::schema::describe(method)?.params;
    let key = KINDS
        .iter()
        .find(|k| {
            let a = k.api;
            [a.list, a.delete].contains(&method)
                || [a.get, a.set, a.create, a.update].contains(&Some(method))
        })
        .map(|k| k.api.key);
    Some(fields_of(key, &schema))
}

/// The form's fields, one per member of the params schema: the key (when given) first, then
/// the required ones, then the rest, each in the schema's order.
fn fields_of(key: Option<&str>, schema: &Value) -> Vec<Field> {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut fields: Vec<Field> = props
        .iter()
        .map(|(name, s)| {
            let s = resolved(schema, s);
            let t = types(s);
            let has = |x: &str| t.iter().any(|y| y == x);
            let secret = name.contains("password") || name.contains("secret");
            let input = if secret {
                "password"
            } else if has("boolean") {
                "bool"
            } else if has("integer") && !has("array") && !has("object") {
                "number"
            } else if (has("string") && !has("array") && !has("object"))
                || s.get("enum").is_some()
                || s.get("oneOf").is_some()
            {
                "text"
            } else {
                "json"
            };
            let mut hint = Vec::new();
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                hint.push(format!(
                    "one of {}",
                    e.iter().map(scalar).collect::<Vec<_>>().join(", ")
                ));
            }
            if input == "number" {
                if let (Some(lo), Some(hi)) = (s.get("minimum"), s.get("maximum")) {
                    hint.push(format!("{} to {}", scalar(lo), scalar(hi)));
                }
            }
            if let Some(d) = schema
                .get("properties")
                .and_then(|p| p.get(name))
                .and_then(|p| p.get("default"))
            {
                hint.push(format!("default {}", scalar(d)));
            }
            if input == "json" {
                // What goes in it: a list's entries' members, the required ones first.
                let item = s.get("items").map(|i| resolved(schema, i));
                let members = item
                    .and_then(|i| i.get("properties"))
                    .and_then(Value::as_object)
                    .map(|m| {
                        let req: Vec<&str> = item
                            .and_then(|i| i.get("required"))
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        let mut names: Vec<&String> = m.keys().collect();
                        names.sort_by_key(|n| {
                            (
                                n.as_str() != "match" && n.as_str() != "name",
                                !req.contains(&n.as_str()),
                            )
                        });
                        names
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    });
                hint.push(match members {
                    Some(m) => format!("a JSON list of objects ({m})"),
                    None if t.iter().any(|x| x == "array") => "a JSON list".to_owned(),
                    None => "JSON".to_owned(),
                });
            }
            Field {
                name: name.clone(),
                input,
                required: required.contains(&name.as_str()),
                value: String::new(),
                hint: hint.join("; "),
                error: None,
                fixed: false,
            }
        })
        .collect();
    // The key, then the required members in the schema's `required` order, then the rest.
    let rank = |f: &Field| {
        if Some(f.name.as_str()) == key {
            0
        } else {
            required
                .iter()
                .position(|r| *r == f.name)
                .map_or(usize::MAX, |i| i + 1)
        }
    };
    fields.sort_by_key(rank);
    fields
}

/// A field's value as the form shows it, from a spec the agent reported.
fn shown(input: &str, v: &Value) -> String {
    match (input, v) {
        ("password", _) | (_, Value::Null) => String::new(),
        ("json", v) => serde_json::to_string(v).unwrap_or_default(),
        (_, v) => scalar(v),
    }
}

/// The submitted values as params, or the fields with what is wrong next to each.
pub fn params_of(fields: &mut [Field], pairs: &[(String, String)]) -> Option<Map<String, Value>> {
    let mut params = Map::new();
    let mut ok = true;
    for f in fields.iter_mut() {
        let raw = pairs
            .iter()
            .find(|(k, _)| *k == format!("f.{}", f.name))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        // A secret is never sent back to the browser, even in a form shown again.
        f.value = if f.input == "password" {
            String::new()
        } else {
            raw.clone()
        };
        if raw.is_empty() {
            if f.required && f.input != "bool" {
                f.error = Some("required".to_owned());
                ok = false;
            }
            continue;
        }
        let value = match f.input {
            "number" => raw
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| "a whole number".to_owned()),
            "bool" => match raw.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err("true or false".to_owned()),
            },
            "json" => serde_json::from_str::<Value>(&raw).map_err(|e| format!("not JSON: {e}")),
            _ => Ok(Value::String(raw)),
        };
        match value {
            Ok(v) => {
                params.insert(f.name.clone(), v);
            }
            Err(why) => {
                f.error = Some(why);
                ok = false;
            }
        }
    }
    ok.then_some(params)
}

/// The member an agent's (or the console's own) validation message names: `missing field
/// \`path\``, `path "/x" is invalid: …`, `path /x: does not exist`, `clients[0].match: …`,
/// after any `params: ` and method-name prefixes.
pub fn member_named(message: &str) -> Option<String> {
    let mut m = message.trim();
    // The console's prefix, then a method's (`nfs.export.create: `).
    while let Some((head, rest)) = m.split_once(": ") {
        let is_prefix = head == "params"
            || head == "INVALID_PARAMS"
            || head == "BAD_REQUEST"
            || (head.contains('.') && head.chars().all(|c| c.is_ascii_lowercase() || c == '.'));
        if !is_prefix {
            break;
        }
        m = rest;
    }
    if let Some(at) = m.find("field `") {
        let rest = &m[at + "field `".len()..];
        return rest.split('`').next().map(str::to_owned);
    }
    let lead: String = m
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!lead.is_empty()).then_some(lead)
}

#[derive(Template)]
#[template(path = "gateway_form.html")]
struct FormPage {
    chrome: Chrome,
    id: String,
    back: String,
    label: String,
    action: String,
    /// `create` or `update`.
    mode: String,
    fields: Vec<Field>,
    /// What the agent (or the console) said that names no field of the form.
    general: Vec<String>,
}

#[derive(Template)]
#[template(path = "gateway_delete.html")]
struct DeletePage {
    chrome: Chrome,
    id: String,
    back: String,
    label: String,
    name: String,
    action: String,
    flags: Vec<&'static str>,
    error: Option<String>,
}

/// The gateway a form is about, visible to the token; its actions must be possible now.
async fn gateway(
    state: &AppState,
    signed: &Signed,
    id: &str,
) -> Result<(InstanceRow, String), PageError> {
    let (row, _) = visible_instance(state, &signed.token, id)
        .await
        .map_err(|p| PageError::reading(p).by(&signed.token))?;
    let several = state.regions.len() > 1;
    let back = gateway_href(row.region.as_str(), row.instance_id.as_str(), several);
    if row.presence == Presence::Offline {
        return Err(PageError::reading(Problem::unavailable(format!(
            "gateway {id} is offline; its resources can be changed when it is back"
        )))
        .by(&signed.token));
    }
    Ok((row, back))
}

async fn capabilities(ctx: &Ctx, token: &TokenRecord) -> Result<Value, PageError> {
    let answer = ctx
        .call(token, "sys.capabilities", Map::new(), None, "read")
        .await
        .map_err(|p| PageError::reading(p).by(token))?;
    result_of(&answer).map_err(|p| PageError::reading(p).by(token))
}

fn ctx_for(state: &AppState, remote: RemoteAddr, row: &InstanceRow) -> Ctx {
    Ctx {
        state: state.clone(),
        remote,
        instance: row.instance_id.as_str().to_owned(),
    }
}

fn form_fields(k: &Kind, caps: &Value) -> Result<Vec<Field>, PageError> {
    let schema = params_schema(caps, k.create_method()).ok_or_else(|| {
        PageError::reading(Problem::not_found(format!(
            "this gateway does not serve {} (no {} method)",
            k.label,
            k.create_method()
        )))
    })?;
    Ok(fields_of(Some(k.api.key), schema))
}

fn form_page(
    signed: &Signed,
    k: &Kind,
    row: &InstanceRow,
    back: String,
    mode: &str,
    fields: Vec<Field>,
    general: Vec<String>,
) -> FormPage {
    let name = fields
        .iter()
        .find(|f| f.name == k.api.key)
        .map(|f| f.value.clone())
        .unwrap_or_default();
    let label = if mode == "update" {
        format!("Change {} {name}", k.one)
    } else {
        format!("New {}", k.one)
    };
    FormPage {
        chrome: Chrome::new(label.clone(), Some(&signed.token), signed.csrf.clone()),
        id: row.instance_id.as_str().to_owned(),
        back,
        label,
        action: format!(
            "/ui/gateways/{}/resources/{}",
            row.instance_id.as_str(),
            k.slug
        ),
        mode: mode.to_owned(),
        fields,
        general,
    }
}

/// `GET …/resources/{kind}/new`: an empty form.
pub async fn new_form(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path((id, slug)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let k = kind(&slug)?;
    let (row, back) = gateway(&state, &signed, &id).await?;
    let caps = capabilities(&ctx_for(&state, remote, &row), &signed.token).await?;
    let fields = form_fields(k, &caps)?;
    Ok(render(&form_page(
        &signed,
        k,
        &row,
        back,
        "create",
        fields,
        Vec::new(),
    )))
}

/// `GET …/resources/{kind}/{name}/edit`: the form filled with the desired spec the agent
/// holds.
pub async fn edit_form(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path((id, slug, name)): Path<(String, String, String)>,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let k = kind(&slug)?;
    let (row, back) = gateway(&state, &signed, &id).await?;
    let ctx = ctx_for(&state, remote, &row);
    let caps = capabilities(&ctx, &signed.token).await?;
    let mut fields = form_fields(k, &caps)?;
    let by = |p: Problem| PageError::reading(p).by(&signed.token);
    // The list holds every kind's desired spec (SMB users have no get method).
    let mut params = Map::new();
    params.insert("limit".into(), Value::from(1000));
    let list = result_of(
        &ctx.call(&signed.token, k.api.list, params, None, "read")
            .await
            .map_err(by)?,
    )
    .map_err(by)?;
    let entry = list
        .as_object()
        .and_then(|m| m.values().find_map(Value::as_array))
        .and_then(|a| {
            a.iter()
                .find(|e| e.get(k.api.key).and_then(Value::as_str) == Some(name.as_str()))
        })
        .ok_or_else(|| by(Problem::not_found(format!("no {} {name:?} on {id}", k.one))))?;
    let desired = entry.get("desired").unwrap_or(entry);
    for f in &mut fields {
        if let Some(v) = desired.get(&f.name).or_else(|| entry.get(&f.name)) {
            f.value = shown(f.input, v);
        }
        f.fixed = f.name == k.api.key;
    }
    Ok(render(&form_page(
        &signed,
        k,
        &row,
        back,
        "update",
        fields,
        Vec::new(),
    )))
}

/// `POST …/resources/{kind}`: create (`mode=create`: the create method, so an existing one
/// with another spec is the agent's `CONFLICT`, never replaced unasked) or change
/// (`mode=update`: the API's PUT). 303 back to the gateway page; refused input shows the form
/// again with the values and each error next to its field.
pub async fn save(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path((id, slug)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, PageError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
        PageError::reading(Problem::bad_request(format!("the form does not read: {e}")))
    })?;
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let signed = sender(&state, &headers, get("csrf"), Scope::Operate).await?;
    let k = kind(&slug)?;
    let update = match get("mode") {
        Some("create") => false,
        Some("update") => true,
        _ => {
            return Err(
                PageError::reading(Problem::bad_request("mode: create or update"))
                    .by(&signed.token),
            )
        }
    };
    let (row, back) = gateway(&state, &signed, &id).await?;
    let ctx = ctx_for(&state, remote, &row);
    let caps = capabilities(&ctx, &signed.token).await?;
    let mut fields = form_fields(k, &caps)?;
    for f in &mut fields {
        f.fixed = update && f.name == k.api.key;
    }
    let mode = if update { "update" } else { "create" };
    let again = |fields: Vec<Field>, general: Vec<String>| {
        let mut resp = render(&form_page(
            &signed,
            k,
            &row,
            back.clone(),
            mode,
            fields,
            general,
        ));
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        resp
    };
    let Some(spec) = params_of(&mut fields, &pairs) else {
        return Ok(again(fields, Vec::new()));
    };
    let name = spec
        .get(k.api.key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let saved = if update {
        put_spec(k.api, &ctx, &signed.token, spec, None, "web.resource.put")
            .await
            .map(|(created, _)| if created { "created" } else { "updated" })
    } else {
        match ctx
            .call(
                &signed.token,
                k.create_method(),
                spec,
                None,
                "web.resource.create",
            )
            .await
            .and_then(|a| result_of(&a))
        {
            Ok(r) if r.get("changed") == Some(&Value::Bool(false)) => Ok("unchanged"),
            Ok(_) => Ok("created"),
            Err(p) => Err(p),
        }
    };
    match saved {
        Ok(done) => {
            let q = serde_urlencoded::to_string([
                ("done", done),
                ("kind", k.slug),
                ("name", name.as_str()),
            ])
            .unwrap_or_default();
            let sep = if back.contains('?') { '&' } else { '?' };
            Ok(Redirect::to(&format!("{back}{sep}{q}")).into_response())
        }
        // Invalid input, the agent's or the console's own check: next to its field.
        Err(p) if p.status == 422 || p.status == 400 || p.status == 409 => {
            let message = p
                .agent_error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map_or_else(|| p.detail.clone(), str::to_owned);
            let invalid = p.status != 409;
            match member_named(&message)
                .filter(|_| invalid)
                .and_then(|m| fields.iter_mut().find(|f| f.name == m))
            {
                Some(f) => {
                    f.error = Some(message);
                    Ok(again(fields, Vec::new()))
                }
                None => Ok(again(fields, vec![p.detail])),
            }
        }
        Err(p) => Err(failed(p, &signed.token)),
    }
}

/// A change that failed for another reason than its input: a page saying whether sending it
/// again is safe.
fn failed(p: Problem, token: &TokenRecord) -> PageError {
    let retry = if p.retryable == Some(true) {
        "Retrying is safe: every change here is idempotent, and the agent restored the previous state."
    } else {
        "The change was refused; sending it again is refused the same way until its cause changes."
    };
    PageError::Problem {
        problem: Box::new(p),
        retry,
        token: Some(token.name.as_str().to_owned()),
    }
}

/// `GET …/resources/{kind}/{name}/delete`: the confirmation.
pub async fn confirm_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, slug, name)): Path<(String, String, String)>,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let k = kind(&slug)?;
    let (row, back) = gateway(&state, &signed, &id).await?;
    Ok(render(&delete_page(&signed, k, &row, back, &name, None)))
}

fn delete_page(
    signed: &Signed,
    k: &Kind,
    row: &InstanceRow,
    back: String,
    name: &str,
    error: Option<String>,
) -> DeletePage {
    let label = format!("Delete {} {name}", k.one);
    DeletePage {
        chrome: Chrome::new(label.clone(), Some(&signed.token), signed.csrf.clone()),
        id: row.instance_id.as_str().to_owned(),
        back,
        label,
        name: name.to_owned(),
        action: format!(
            "/ui/gateways/{}/resources/{}/{}/delete",
            row.instance_id.as_str(),
            k.slug,
            path_segment(name)
        ),
        flags: k.api.delete_flags.to_vec(),
        error,
    }
}

/// A name as a path segment (names are checked by the agent; this only keeps the URL whole).
fn path_segment(name: &str) -> String {
    serde_urlencoded::to_string([("", name)])
        .map(|s| s.trim_start_matches('=').replace('+', "%20"))
        .unwrap_or_default()
}

/// `POST …/resources/{kind}/{name}/delete`: deletes it when `confirm=yes` is ticked, then
/// back to the gateway page.
pub async fn delete(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path((id, slug, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, PageError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
        PageError::reading(Problem::bad_request(format!("the form does not read: {e}")))
    })?;
    let get = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let signed = sender(&state, &headers, get("csrf"), Scope::Operate).await?;
    let k = kind(&slug)?;
    let (row, back) = gateway(&state, &signed, &id).await?;
    if get("confirm") != Some("yes") {
        let mut resp = render(&delete_page(
            &signed,
            k,
            &row,
            back,
            &name,
            Some("Tick the box to confirm the deletion.".to_owned()),
        ));
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return Ok(resp);
    }
    // The family's options, ticked or not, as the API's DELETE query takes them.
    let query = serde_urlencoded::to_string(
        k.api
            .delete_flags
            .iter()
            .filter(|f| get(f) == Some("true"))
            .map(|f| (*f, "true"))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    let options = api::delete_options(k.api, Some(&query))
        .map_err(|p| PageError::reading(p).by(&signed.token))?;
    let mut params = Map::new();
    params.insert(k.api.key.to_owned(), Value::String(name.clone()));
    params.extend(options);
    let ctx = ctx_for(&state, remote, &row);
    delete_named(
        k.api,
        &ctx,
        &signed.token,
        &name,
        params,
        None,
        "web.resource.delete",
    )
    .await
    .map_err(|p| failed(p, &signed.token))?;
    let q = serde_urlencoded::to_string([
        ("done", "deleted"),
        ("kind", k.slug),
        ("name", name.as_str()),
    ])
    .unwrap_or_default();
    let sep = if back.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{back}{sep}{q}")).into_response())
}

/// `GET …/host.json`: the last heartbeat's time, CPU and memory use, for the page's chart
/// (console.js asks every few seconds and keeps the recent points), and `figures`: the
/// page's version, last heartbeat, host figures, disks, resources and drift as the page
/// writes them, which the same poll redraws (no second request).
pub async fn host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let (row, _) = visible_instance(&state, &signed.token, &id)
        .await
        .map_err(|p| PageError::reading(p).by(&signed.token))?;
    let mut point = host_point(&row);
    let figures = super::gateway::figures(&row, &super::gateway::heartbeat(&row), now_ms());
    if let (Some(p), Ok(f)) = (point.as_object_mut(), serde_json::to_value(figures)) {
        p.insert("figures".to_owned(), f);
    }
    Ok(Json(point).into_response())
}

/// One point of the chart from a gateway's last heartbeat: `{at_ms, ts_ms, cpu_pct, mem_pct,
/// presence}`: `at_ms` when it arrived (the console's clock), `ts_ms` its own time, which the
/// chart's points are known by (the figures `null` when there is no heartbeat).
pub fn host_point(row: &InstanceRow) -> Value {
    let s = host_sample(row);
    serde_json::json!({
        "at_ms": row.last_seen_ms,
        "ts_ms": s.map(|s| s.ts_ms),
        "cpu_pct": s.map(|s| f64::from(s.cpu_permille) / 10.0),
        "mem_pct": s.and_then(|s| s.mem_permille).map(|m| f64::from(m) / 10.0),
        "presence": row.presence.as_str(),
    })
}

/// The host figures of a gateway's last heartbeat, as the store keeps them for its chart.
pub fn host_sample(row: &InstanceRow) -> Option<HostSample> {
    let hb: Value = serde_json::from_str(row.heartbeat.as_ref()?.as_str()).ok()?;
    let system = hb.get("system")?;
    let get = |k: &str| system.get(k).and_then(Value::as_f64);
    Some(HostSample::of(
        hb.get("ts_ms")?.as_u64()?,
        get("cpu_pct")? as f32,
        get("mem_used").unwrap_or(0.0) as u64,
        get("mem_total").unwrap_or(0.0) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_says_its_code_and_whether_reading_again_may_help() {
        let timeout = said(&Problem::gateway_timeout(
            "no reply within the timeout",
            "r-1",
        ));
        assert_eq!(
            timeout,
            "the agent did not answer within the call path's timeout (code 504 Gateway timeout). \
             Reading again is safe (a read changes nothing) and may succeed."
        );
        let mut refused = Problem::not_found("no export vol9");
        let mut agent = Problem::not_found("NOT_FOUND: no export vol9");
        agent.agent_error = Some(Box::new(
            serde_json::json!({"code": "NOT_FOUND", "message": "no export vol9"}),
        ));
        assert!(said(&agent).starts_with("NOT_FOUND: no export vol9. Reading again is safe"));
        refused.agent_error = Some(Box::new(
            serde_json::json!({"code": "NOT_FOUND", "message": "no export vol9"}),
        ));
        let s = said(&refused);
        assert!(s.starts_with("no export vol9 (code NOT_FOUND). "), "{s}");
        assert!(
            s.ends_with("answered the same until its cause changes."),
            "{s}"
        );
        let away = said(&Problem::unavailable(
            "the broker of region eu is unreachable",
        ));
        assert!(
            s != away && away.contains("(code 503 ") && away.ends_with("may succeed."),
            "{away}"
        );
    }

    #[test]
    fn the_member_a_message_names() {
        for (msg, want) in [
            (
                "params: nfs.export.create: missing field `path`",
                Some("path"),
            ),
            (
                "INVALID_PARAMS: path /srv/nope: does not exist",
                Some("path"),
            ),
            ("path \"x y\" is invalid: not absolute", Some("path")),
            (
                "params: nfs.export.create: unknown field `paht`, expected one of `name`",
                Some("paht"),
            ),
            ("clients[0].match: not an address", Some("clients")),
            ("", None),
        ] {
            assert_eq!(member_named(msg).as_deref(), want, "{msg}");
        }
    }

    #[test]
    fn a_methods_fields_come_from_the_protocols_own_schema() {
        let list = method_fields("nfs.export.list").unwrap();
        let names: Vec<&str> = list.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["cursor", "limit"]);
        let limit = &list[1];
        assert_eq!((limit.input, limit.required), ("number", false));
        assert_eq!(limit.hint, "1 to 1000");
        let delete = method_fields("nfs.export.delete").unwrap();
        assert_eq!(delete.len(), 1);
        assert!(delete[0].name == "name" && delete[0].required);
        // The key first, as on the resource form.
        let user = method_fields("smb.user.set").unwrap();
        assert_eq!(user[0].name, "username");
        assert!(user
            .iter()
            .any(|f| f.name == "password" && f.input == "password"));
        assert!(method_fields("sys.ping").unwrap().is_empty());
        assert!(method_fields("sys.nope").is_none());
    }

    #[test]
    fn a_form_reads_its_values_by_the_schema() {
        let schema = serde_json::json!({
            "properties": {
                "clients": {"type": "array"},
                "name": {"type": "string"},
                "path": {"type": "string"},
                "sync": {"type": "boolean", "default": true},
                "anonuid": {"type": "integer"},
            },
            "required": ["name", "path", "clients"],
        });
        let mut fields = fields_of(Some(KINDS[0].api.key), &schema);
        assert_eq!(fields[0].name, "name");
        let pairs: Vec<(String, String)> = [
            ("f.name", "vol1"),
            ("f.path", "/srv/vol1"),
            ("f.clients", "[{\"match\": \"10.0.0.0/8\"}]"),
            ("f.sync", "false"),
            ("f.anonuid", ""),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        let p = params_of(&mut fields, &pairs).unwrap();
        assert_eq!(p["sync"], Value::Bool(false));
        assert_eq!(p["clients"][0]["match"], "10.0.0.0/8");
        assert!(!p.contains_key("anonuid"));
        let bad: Vec<(String, String)> =
            [("f.name", "v"), ("f.clients", "[oops"), ("f.anonuid", "x")]
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
        assert!(params_of(&mut fields, &bad).is_none());
        let err = |n: &str| fields.iter().find(|f| f.name == n).unwrap().error.clone();
        assert_eq!(err("path").as_deref(), Some("required"));
        assert!(err("clients").unwrap().starts_with("not JSON"));
        assert_eq!(err("anonuid").as_deref(), Some("a whole number"));
        assert_eq!(err("name"), None);
    }
}
