//! One gateway's page: identity, presence and its history, host figures and storage from the
//! last heartbeat with a live chart of CPU and memory, the changes made to it, its live
//! presence, and `reconcile`. The resources and capabilities the agent reports are a page of
//! their own ([`super::resources`]) that this one loads into itself when it can: reading them
//! asks the agent, and the page must not wait on a gateway that does not answer.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use csg_transport::LinkState;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fleet::gateway_href;
use super::session::{form, reader, sender, Signed};
use super::view::{ago, bytes, render, utc, Chrome, PageError};
use crate::calls::{CallRequest, CallTimeout};
use crate::http::calls::{failure_problem, parse_method, visible_instance};
use crate::http::problem::Problem;
use crate::http::{AppState, RegionHandle, RemoteAddr};
use crate::now_ms;
use crate::store::{HostSample, InstanceRow, PageLimit, Presence, Scope};

use super::resources::KINDS;

/// Presence changes and calls shown.
const HISTORY_ROWS: u32 = 20;

/// Calls read to find the last changes among them.
const CALLS_READ: u32 = 200;

pub struct Transition {
    pub state: &'static str,
    pub reason: String,
    pub at: String,
}

pub struct CallLine {
    pub id: String,
    pub method: String,
    pub state: String,
    pub outcome: String,
    pub by: String,
    pub at: String,
}

#[derive(Serialize)]
pub struct Disk {
    pub mount: String,
    pub fs: String,
    pub total: String,
    pub avail: String,
    pub used_pct: String,
}

#[derive(Serialize)]
pub struct Family {
    pub name: String,
    pub count: String,
    pub drift: String,
    pub backend: String,
    pub up: String,
}

#[derive(Template)]
#[template(path = "gateway.html")]
struct GatewayPage {
    chrome: Chrome,
    key: String,
    id: String,
    region: String,
    group: String,
    presence: &'static str,
    reason: String,
    since: String,
    since_ago: String,
    /// Version, last heartbeat, host figures, disks, resources and drift.
    fig: Figures,
    history: Vec<Transition>,
    calls: Vec<CallLine>,
    /// The region's broker, when it is unreachable.
    broker_down: Option<String>,
    can_operate: bool,
    /// Why actions are off (offline, broker down), when they are.
    disabled: Option<String>,
    action: String,
    /// The request id of a reconcile just sent.
    sent: Option<String>,
    /// What a form just did (`NFS export vol1 created`).
    done: Option<String>,
    /// Where forms and the chart's data are.
    base: String,
    /// `?region=…` for links, with several regions.
    rq: String,
    /// The chart of the recent heartbeats.
    chart: Chart,
}

/// The gateway page's chart of its recent heartbeats' CPU and memory use, drawn here so it is
/// there without the script, which goes on from the same points ([`Chart::points`]).
pub struct Chart {
    /// `x,y` pairs of the SVG (300 × 100), the newest on the right edge, [`HostSample::KEPT`]
    /// points filling the width.
    pub cpu: String,
    pub mem: String,
    /// The points as JSON (`[{ts_ms, cpu_pct, mem_pct}]`, oldest first), for the script.
    pub points: String,
    /// `12 heartbeats, 19:12:03 to 19:17:33 UTC`, or that there is none yet.
    pub span: String,
    /// Points drawn, and at most ([`HostSample::KEPT`]).
    pub count: usize,
    pub kept: usize,
}

impl Chart {
    pub fn of(samples: &[HostSample]) -> Chart {
        let n = samples.len();
        let line = |value: fn(&HostSample) -> Option<u16>| {
            let mut out: Vec<String> = samples
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    let v = f64::from(value(s)?.min(1000)) / 10.0;
                    let x = 300.0 - 300.0 * (n - 1 - j) as f64 / (HostSample::KEPT - 1) as f64;
                    // 0–100 % drawn from y = 95 up to y = 5, so 0 and 100 stay in sight.
                    Some(format!("{x:.1},{:.1}", 95.0 - 0.9 * v))
                })
                .collect();
            // One point alone draws nothing: a short stroke at the right edge shows it.
            if let [only] = out.as_slice() {
                let y = only.split_once(',').map_or("", |(_, y)| y);
                out.insert(0, format!("295.0,{y}"));
            }
            out.join(" ")
        };
        let points: Vec<Value> = samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "ts_ms": s.ts_ms,
                    "cpu_pct": f64::from(s.cpu_permille) / 10.0,
                    "mem_pct": s.mem_permille.map(|m| f64::from(m) / 10.0),
                })
            })
            .collect();
        let clock = |ms: u64| {
            let t = utc(i64::try_from(ms).unwrap_or(i64::MAX));
            // `2026-12-05 19:42:49 UTC`: the time of day, the day being the page's.
            t.get(11..19).map(str::to_owned).unwrap_or(t)
        };
        let span = match samples {
            [] => "no heartbeat yet".to_owned(),
            [one] => format!("1 heartbeat, {} UTC", clock(one.ts_ms)),
            [first, .., last] => format!(
                "{n} heartbeats, {} to {} UTC",
                clock(first.ts_ms),
                clock(last.ts_ms)
            ),
        };
        Chart {
            cpu: line(|s| Some(s.cpu_permille)),
            mem: line(|s| s.mem_permille),
            points: Value::Array(points).to_string(),
            span,
            count: n,
            kept: HostSample::KEPT,
        }
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn size(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64).map(bytes).unwrap_or_default()
}

/// The region a page or form names, or the one the gateway is found in.
async fn locate(
    state: &AppState,
    signed: &Signed,
    id: &str,
    region: Option<&str>,
) -> Result<(InstanceRow, RegionHandle), PageError> {
    let by = |p: Problem| PageError::reading(p).by(&signed.token);
    match region {
        Some(name) => {
            let handle = state.regions.named(name).map_err(by)?.clone();
            let iid = csg_protocol::identity::InstanceId::new(id)
                .map_err(|e| by(Problem::bad_request(format!("instance id: {e}"))))?;
            let row = state
                .store
                .get_instance(&handle.region, &iid)
                .await
                .map_err(|e| PageError::from(e).by(&signed.token))?
                .filter(|r| {
                    signed.token.groups.is_empty() || signed.token.groups.contains(&r.group_id)
                })
                .ok_or_else(|| {
                    by(Problem::not_found(format!(
                        "no instance {id} has been seen in region {name}"
                    )))
                })?;
            Ok((row, handle))
        }
        None => visible_instance(state, &signed.token, id).await.map_err(by),
    }
}

/// What the page shows from the gateway's row and its last heartbeat, which moves with each
/// heartbeat: written here for the page and for `host.json`, which the page's script asks for
/// every 2 s (the chart's poll) to redraw them, so both say the same in the same words.
#[derive(Serialize)]
pub struct Figures {
    pub version: String,
    /// `2026-12-05 19:42:49 UTC (3 s ago)`.
    pub last_seen: String,
    pub uptime: String,
    pub cpu: String,
    pub load: String,
    pub memory: String,
    pub disks: Vec<Disk>,
    pub count: u64,
    pub drift: u64,
    /// Per storage family: backend, service up or down, resources, drift.
    pub families: Vec<Family>,
}

/// The last heartbeat as stored (an object; empty when there is none or it does not read).
pub fn heartbeat(row: &InstanceRow) -> Map<String, Value> {
    row.heartbeat
        .as_ref()
        .and_then(|h| serde_json::from_str(h.as_str()).ok())
        .unwrap_or_default()
}

pub fn figures(row: &InstanceRow, hb: &Map<String, Value>, now: i64) -> Figures {
    let system = hb.get("system");
    let memory = match (
        system
            .and_then(|s| s.get("mem_used"))
            .and_then(Value::as_u64),
        system
            .and_then(|s| s.get("mem_total"))
            .and_then(Value::as_u64),
    ) {
        (Some(u), Some(t)) => format!("{} of {}", bytes(u), bytes(t)),
        _ => String::new(),
    };
    let disks = hb
        .get("disks")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|d| {
                    let total = d.get("total").and_then(Value::as_u64).unwrap_or(0);
                    let avail = d.get("avail").and_then(Value::as_u64).unwrap_or(0);
                    Disk {
                        mount: text(d.get("mount")),
                        fs: text(d.get("fs")),
                        total: size(d.get("total")),
                        avail: size(d.get("avail")),
                        // No percentage for a disk of size 0.
                        used_pct: total
                            .saturating_sub(avail)
                            .saturating_mul(100)
                            .checked_div(total)
                            .map(|p| format!("{p}%"))
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let services = hb.get("services").and_then(Value::as_object);
    let families: Vec<Family> = hb
        .get("storage")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, v)| {
                    let svc = services.and_then(|s| s.get(name));
                    Family {
                        name: name.clone(),
                        count: text(v.get("count")),
                        drift: text(v.get("drift")),
                        backend: text(svc.and_then(|s| s.get("backend"))),
                        up: match svc.and_then(|s| s.get("up")).and_then(Value::as_bool) {
                            Some(true) => "up".to_owned(),
                            Some(false) => "down".to_owned(),
                            None => String::new(),
                        },
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Figures {
        version: row.agent_version.clone().unwrap_or_default(),
        last_seen: row
            .last_seen_ms
            .map(|t| format!("{} ({} ago)", utc(t), ago(now, t)))
            .unwrap_or_default(),
        uptime: hb
            .get("uptime_s")
            .and_then(Value::as_i64)
            .map(|s| ago(s.saturating_mul(1000), 0))
            .unwrap_or_default(),
        cpu: system
            .and_then(|s| s.get("cpu_pct"))
            .and_then(Value::as_f64)
            .map(|c| format!("{c:.1}%"))
            .unwrap_or_default(),
        load: text(system.and_then(|s| s.get("load1"))),
        memory,
        disks,
        count: row.storage.map_or(0, |s| s.count),
        drift: row.storage.map_or(0, |s| s.drift),
        families,
    }
}

#[derive(Deserialize, Default)]
struct PageQuery {
    region: Option<String>,
    sent: Option<String>,
    done: Option<String>,
    kind: Option<String>,
    name: Option<String>,
}

/// The flash line for what a form did, from its redirect's query (only known verbs and kinds
/// are shown, so a crafted link cannot write arbitrary text on the page).
fn done_text(q: &PageQuery) -> Option<String> {
    let verb = q.done.as_deref()?;
    if !["created", "updated", "unchanged", "deleted"].contains(&verb) {
        return None;
    }
    let kind = KINDS.iter().find(|k| Some(k.slug) == q.kind.as_deref())?;
    let name: String = q.name.as_deref()?.chars().take(64).collect();
    Some(format!("{} {name} {verb}.", kind.one))
}

pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let q: PageQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let (row, handle) = locate(&state, &signed, &id, q.region.as_deref()).await?;
    let limit = PageLimit::new(HISTORY_ROWS).map_err(PageError::from)?;
    let history = state
        .store
        .list_presence_events(&row.region, &row.instance_id, limit, None)
        .await?;
    // The changes made to it: reads (this page's own among them, a few per load) would push
    // them out of sight, so the last calls are read and their reads left out.
    let calls = state
        .store
        .list_calls(
            &row.region,
            &row.instance_id,
            PageLimit::new(CALLS_READ).map_err(PageError::from)?,
            None,
        )
        .await?;
    let now = now_ms();
    let hb = heartbeat(&row);
    let fig = figures(&row, &hb, now);
    let broker_down = match &*handle.link.borrow() {
        LinkState::Ready(_) => None,
        LinkState::Down(Some(f)) => Some(f.describe()),
        LinkState::Down(None) => Some("connecting".to_owned()),
    };
    let disabled = if row.presence == Presence::Offline {
        Some(format!(
            "the gateway is offline (since {}); actions wait until it is back",
            utc(row.since_ms)
        ))
    } else {
        broker_down.as_ref().map(|why| {
            format!(
                "the broker of region {} is unreachable ({why}); nothing can be sent",
                row.region
            )
        })
    };
    let mut samples = state
        .store
        .host_samples(
            &row.region,
            &row.instance_id,
            u64::try_from(now).unwrap_or(0),
        )
        .await?;
    // The samples draw the recent past only when they reach the last heartbeat (read just
    // before them, so they may have one more): a row written before the store kept them, or
    // since `[fleet] host_samples` was turned off, has the last heartbeat alone.
    let last = super::resources::host_sample(&row);
    if samples.last().map(|s| s.ts_ms) < last.map(|s| s.ts_ms) {
        samples = last.into_iter().collect();
    }
    let several = state.regions.len() > 1;
    let rq = if several {
        format!(
            "?{}",
            serde_urlencoded::to_string([("region", row.region.as_str())]).unwrap_or_default()
        )
    } else {
        String::new()
    };
    let done = done_text(&q);
    let page = GatewayPage {
        chrome: Chrome::new(
            row.instance_id.as_str(),
            Some(&signed.token),
            signed.csrf.clone(),
        ),
        key: format!("{}/{}", row.region, row.instance_id.as_str()),
        id: row.instance_id.as_str().to_owned(),
        region: row.region.as_str().to_owned(),
        group: row.group_id.as_str().to_owned(),
        presence: row.presence.as_str(),
        reason: row.reason.clone().unwrap_or_default(),
        since: utc(row.since_ms),
        since_ago: ago(now, row.since_ms),
        fig,
        history: history
            .items
            .iter()
            .map(|e| Transition {
                state: e.state.as_str(),
                reason: e.reason.clone().unwrap_or_default(),
                at: utc(e.at_ms),
            })
            .collect(),
        calls: calls
            .items
            .iter()
            .filter(|c| {
                csg_protocol::methods::schema::kind(&c.method)
                    != Some(csg_protocol::methods::Kind::Read)
            })
            .take(HISTORY_ROWS as usize)
            .map(|c| CallLine {
                id: c.id.as_str().to_owned(),
                method: c.method.clone(),
                state: c.state.as_str().to_owned(),
                outcome: c
                    .reply
                    .as_ref()
                    .map(|r| {
                        if r.get("error").is_some_and(|e| !e.is_null()) {
                            text(r.get("error").and_then(|e| e.get("code")))
                        } else {
                            "ok".to_owned()
                        }
                    })
                    .or_else(|| c.error.clone())
                    .unwrap_or_default(),
                by: c.token_name.clone().unwrap_or_default(),
                at: utc(c.started_ms),
            })
            .collect(),
        broker_down,
        can_operate: signed.can(Scope::Operate),
        disabled,
        action: format!("/ui/gateways/{}/reconcile", row.instance_id.as_str()),
        sent: q.sent.filter(|s| s.len() <= 128),
        done,
        base: format!("/ui/gateways/{}", row.instance_id.as_str()),
        rq,
        chart: Chart::of(&samples),
    };
    Ok(render(&page))
}

#[derive(Deserialize)]
struct ReconcileForm {
    csrf: Option<String>,
    region: Option<String>,
}

/// `sys.reconcile` on the gateway (operate scope, CSRF checked first), then back to its page
/// naming the call.
pub async fn reconcile(
    State(state): State<AppState>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: ReconcileForm = form(&body)?;
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Operate).await?;
    let (row, handle) = locate(&state, &signed, &id, f.region.as_deref()).await?;
    let params = Map::new();
    let method = parse_method("sys.reconcile", &params)
        .map_err(|p| PageError::reading(p).by(&signed.token))?;
    let answer = handle
        .calls
        .call(CallRequest {
            instance: row.instance_id.clone(),
            group: Some(row.group_id.clone()),
            method,
            params,
            id: None,
            timeout: CallTimeout::default(),
            token_name: Some(signed.token.name.as_str().to_owned()),
            remote_addr: remote.0,
            action: "web.reconcile",
        })
        .await
        .map_err(|e| {
            let problem = failure_problem(e).audited();
            let retry = if problem.retryable == Some(true) {
                "Retrying is safe: the gateway remembers the request and will not run it twice."
            } else {
                "The call was refused; sending it again is refused the same way until its cause changes."
            };
            PageError::Problem {
                problem: Box::new(problem),
                retry,
                token: Some(signed.token.name.as_str().to_owned()),
            }
        })?;
    let several = state.regions.len() > 1;
    let mut to = gateway_href(row.region.as_str(), row.instance_id.as_str(), several);
    to.push(if several { '&' } else { '?' });
    to.push_str(&serde_urlencoded::to_string([("sent", answer.id.as_str())]).unwrap_or_default());
    Ok(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64, cpu: f32, mem: Option<u64>) -> HostSample {
        // 19:42:00 UTC on 2026-12-05, a heartbeat every 30 s.
        let t = 1_796_499_720_000 + n * 30_000;
        match mem {
            Some(m) => HostSample::of(t, cpu, m, 100),
            None => HostSample::of(t, cpu, 0, 0),
        }
    }

    #[test]
    fn the_chart_draws_the_recent_heartbeats_newest_on_the_right_edge() {
        let none = Chart::of(&[]);
        assert_eq!((none.cpu.as_str(), none.mem.as_str()), ("", ""));
        assert_eq!(none.points, "[]");
        assert_eq!(none.span, "no heartbeat yet");

        // One point alone: a short stroke at the right edge; a memory size not reported
        // draws no memory line.
        let one = Chart::of(&[sample(0, 50.0, None)]);
        assert_eq!(one.cpu, "295.0,50.0 300.0,50.0");
        assert_eq!(one.mem, "");
        assert_eq!(one.count, 1);
        assert_eq!(one.span, "1 heartbeat, 19:42:00 UTC");
        assert_eq!(
            one.points,
            r#"[{"cpu_pct":50.0,"mem_pct":null,"ts_ms":1796499720000}]"#
        );

        let all: Vec<HostSample> = (0..60)
            .map(|n| sample(n, n as f32, Some(100 - n)))
            .collect();
        let full = Chart::of(&all);
        let xs: Vec<&str> = full
            .cpu
            .split(' ')
            .map(|p| p.split_once(',').unwrap().0)
            .collect();
        assert_eq!(xs.len(), 60);
        assert_eq!((xs[0], xs[59]), ("0.0", "300.0"));
        // 0 % at y = 95, 100 % at y = 5; the first point's memory is 100 %.
        assert!(full.cpu.starts_with("0.0,95.0 5.1,94.1 "), "{}", full.cpu);
        assert!(full.mem.starts_with("0.0,5.0 "), "{}", full.mem);
        assert_eq!(full.span, "60 heartbeats, 19:42:00 to 20:11:30 UTC");
        assert_eq!(full.kept, 60);

        // Fewer than the width: the newest still on the right edge, spaced as when full.
        let two = Chart::of(&all[..2]);
        assert_eq!(two.cpu, "294.9,95.0 300.0,94.1");
    }
}
