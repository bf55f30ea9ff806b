//! The fleet page: counts by presence, version and drift, and the table of gateways with its
//! filter, text search and keyset paging (the store's `list_instances`, as the API lists).

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use csg_transport::LinkState;

use super::session::reader;
use super::view::{ago, render, utc, Chrome, PageError};
use crate::http::instances::{parse_list_query, region_filter};
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::now_ms;
use crate::store::{InstanceOrder, InstanceRow, PageLimit, SortKey};

/// Rows per page.
pub const PAGE_ROWS: u32 = 100;

/// The filter's values as the form shows them again.
#[derive(Default)]
pub struct FilterForm {
    pub presence: String,
    pub group: String,
    pub version: String,
    pub drift: String,
    pub q: String,
    pub region: String,
    /// The table's order as `sort=` writes it (`-since`); empty: by region and id.
    pub sort: String,
}

impl FilterForm {
    /// The query of this filter, without the order (the new-job form takes the filter only).
    fn query(&self) -> String {
        self.query_with_sort("")
    }

    /// The query of this filter in the order `sort` (`sort=` as the URL writes it; empty: the
    /// default order, no parameter), for the pager's and the headers' links.
    fn query_with_sort(&self, sort: &str) -> String {
        super::view::query_of(&[
            ("presence", self.presence.as_str()),
            ("group", self.group.as_str()),
            ("version", self.version.as_str()),
            ("drift", self.drift.as_str()),
            ("q", self.q.as_str()),
            ("region", self.region.as_str()),
            ("sort", sort),
        ])
    }

    pub fn is_empty(&self) -> bool {
        self.query().is_empty()
    }
}

/// A sortable column's header: its link, and its state for `aria-sort`.
pub struct SortHead {
    pub label: &'static str,
    pub href: String,
    /// `ascending`, `descending` or `none` (`aria-sort`'s words).
    pub state: &'static str,
    /// What the link does, for its title and screen readers.
    pub hint: String,
}

/// The columns the table sorts by, with the direction a first click gives: the one an
/// operator looks for first (offline first, most drift first); a second click reverses it.
const SORTABLE: [(SortKey, &str, bool); 6] = [
    (SortKey::Id, "Instance", false),
    (SortKey::Group, "Group", false),
    (SortKey::Presence, "Presence", true),
    (SortKey::Since, "Since", false),
    (SortKey::Version, "Version", false),
    (SortKey::Drift, "Drift", true),
];

fn sort_heads(f: &FilterForm, current: InstanceOrder) -> Vec<SortHead> {
    SORTABLE
        .iter()
        .map(|&(key, label, first_descending)| {
            let active = current.key == key;
            let next = InstanceOrder {
                key,
                descending: if active {
                    !current.descending
                } else {
                    first_descending
                },
            };
            // The default order needs no parameter: "/ui/" stays the plain fleet page.
            let sort = if next == InstanceOrder::default() {
                String::new()
            } else {
                next.as_param()
            };
            let query = f.query_with_sort(&sort);
            let query = if query.is_empty() {
                query
            } else {
                format!("?{query}")
            };
            let way = if next.descending {
                "descending"
            } else {
                "ascending"
            };
            SortHead {
                label,
                href: format!("/ui/{query}"),
                state: match (active, current.descending) {
                    (false, _) => "none",
                    (true, false) => "ascending",
                    (true, true) => "descending",
                },
                hint: format!("Sort by {}, {way}", label.to_lowercase()),
            }
        })
        .collect()
}

/// One row of the table.
pub struct Row {
    /// `region/instance`: what live updates find the row by.
    pub key: String,
    pub id: String,
    pub href: String,
    pub region: String,
    pub group: String,
    pub presence: &'static str,
    pub since: String,
    pub since_title: String,
    pub last_seen: String,
    pub version: String,
    pub count: u64,
    pub drift: u64,
}

pub fn gateway_href(region: &str, id: &str, several: bool) -> String {
    let id_q = serde_urlencoded::to_string([("region", region)]).unwrap_or_default();
    // Instance ids are checked ([A-Za-z0-9._-]), so they need no escaping in a path.
    if several {
        format!("/ui/gateways/{id}?{id_q}")
    } else {
        format!("/ui/gateways/{id}")
    }
}

fn row(r: &InstanceRow, now: i64, several: bool) -> Row {
    Row {
        key: format!("{}/{}", r.region, r.instance_id.as_str()),
        id: r.instance_id.as_str().to_owned(),
        href: gateway_href(r.region.as_str(), r.instance_id.as_str(), several),
        region: r.region.as_str().to_owned(),
        group: r.group_id.as_str().to_owned(),
        presence: r.presence.as_str(),
        since: ago(now, r.since_ms),
        since_title: utc(r.since_ms),
        last_seen: r.last_seen_ms.map(|t| ago(now, t)).unwrap_or_default(),
        version: r.agent_version.clone().unwrap_or_default(),
        count: r.storage.map_or(0, |s| s.count),
        drift: r.storage.map_or(0, |s| s.drift),
    }
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    chrome: Chrome,
    total: u64,
    online: u64,
    stale: u64,
    offline: u64,
    drifting: u64,
    versions: Vec<(String, u64)>,
    rows: Vec<Row>,
    next: Option<String>,
    first: Option<String>,
    f: FilterForm,
    /// The sortable columns' headers.
    heads: Vec<SortHead>,
    /// The regions served, when there are several (the filter offers them).
    regions: Vec<String>,
    /// Regions whose broker is unreachable, with why.
    down: Vec<(String, String)>,
    /// A filter that does not read: why (the table is empty).
    error: Option<String>,
    /// "Run a method on these N gateways": the new-job form over this filter, and its text
    /// (`operate` only).
    run: Option<(String, String)>,
}

/// The table's rows alone (`fleet_rows.html`, which the fleet page includes), answered to the
/// page's own refresh: the request carries [`ROWS_HEADER`] and the page's whole query, the
/// answer [`ROWS_HEADER`] too (a page answered instead, say for a filter that does not read,
/// is left alone by the script). The counts are most of the page's time and the page keeps
/// its presence counts live from its events, so they are read only when asked for
/// (`x-fleet-rows: counts`, one refresh in six), for the drift and version counts, and
/// answered as JSON in [`COUNTS_HEADER`].
#[derive(Template)]
#[template(path = "fleet_rows.html")]
struct FleetRows {
    rows: Vec<Row>,
    regions: Vec<String>,
}

/// Names the rows-only request and its answer.
pub const ROWS_HEADER: &str = "x-fleet-rows";
/// The counts with the rows, when asked for.
pub const COUNTS_HEADER: &str = "x-fleet-counts";

fn rows_only(rows: Vec<Row>, regions: Vec<String>, counts: Option<&FleetPage>) -> Response {
    let mut resp = render(&FleetRows { rows, regions });
    let h = resp.headers_mut();
    h.insert(ROWS_HEADER, HeaderValue::from_static("1"));
    if let Some(p) = counts {
        let json = serde_json::json!({
            "total": p.total, "online": p.online, "stale": p.stale, "offline": p.offline,
            "drift": p.drifting, "versions": p.versions,
        });
        // Version strings are the agents' own: one that cannot be a header value leaves the
        // counts out rather than failing the rows.
        if let Ok(v) = HeaderValue::from_str(&json.to_string()) {
            h.insert(COUNTS_HEADER, v);
        }
    }
    resp
}

/// Regions whose broker link is not up, with its state.
pub fn brokers_down(state: &AppState) -> Vec<(String, String)> {
    state
        .regions
        .iter()
        .filter_map(|r| match &*r.link.borrow() {
            LinkState::Ready(_) => None,
            LinkState::Down(Some(f)) => Some((r.region.as_str().to_owned(), f.describe())),
            LinkState::Down(None) => Some((r.region.as_str().to_owned(), "connecting".to_owned())),
        })
        .collect()
}

/// The link to start a job over the table's filter. The number is the summary's when the
/// filter is one the counts answer (none, or presence alone); otherwise the form's dry run
/// says how many.
fn run_link(page: &FleetPage, base: &str) -> (String, String) {
    let f = &page.f;
    let others_empty =
        f.group.is_empty() && f.version.is_empty() && f.drift.is_empty() && f.q.is_empty();
    let n = match (others_empty, f.presence.as_str()) {
        (true, "") => Some(page.total),
        (true, "online") => Some(page.online),
        (true, "stale") => Some(page.stale),
        (true, "offline") => Some(page.offline),
        _ => None,
    };
    let text = match n {
        Some(1) => "Run a method on this 1 gateway".to_owned(),
        Some(n) => format!("Run a method on these {n} gateways"),
        None => "Run a method on the gateways matching this filter".to_owned(),
    };
    let href = if base.is_empty() {
        "/ui/jobs/new".to_owned()
    } else {
        format!("/ui/jobs/new?{base}")
    };
    (href, text)
}

pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let token = &signed.token;
    // The form sends every field; an empty one means "any".
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let mut f = FilterForm::default();
    let mut cursor: Option<String> = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "presence" => f.presence.clone_from(&v),
            "group" => f.group.clone_from(&v),
            "version" => f.version.clone_from(&v),
            "drift" => f.drift.clone_from(&v),
            "q" => f.q.clone_from(&v),
            "region" => f.region.clone_from(&v),
            "sort" => f.sort.clone_from(&v),
            "cursor" => {
                cursor = Some(v);
                continue;
            }
            _ => {}
        }
        kept.push((k, v));
    }
    let several = state.regions.len() > 1;
    let now = now_ms();
    let mut page = FleetPage {
        chrome: Chrome::new("Fleet", Some(token), signed.csrf.clone()),
        total: 0,
        online: 0,
        stale: 0,
        offline: 0,
        drifting: 0,
        versions: Vec::new(),
        rows: Vec::new(),
        next: None,
        first: None,
        regions: if several {
            state
                .regions
                .iter()
                .map(|r| r.region.as_str().to_owned())
                .collect()
        } else {
            Vec::new()
        },
        down: brokers_down(&state),
        error: None,
        run: None,
        heads: sort_heads(&f, InstanceOrder::default()),
        f,
    };
    let query = serde_urlencoded::to_string(&kept).unwrap_or_default();
    let parsed = parse_list_query(Some(&query)).and_then(|mut q| {
        q.filter.region = region_filter(&state, q.region.as_deref())?;
        Ok(q)
    });
    let mut q = match parsed {
        Ok(q) => q,
        Err(p) => {
            page.error = Some(p.detail);
            return Ok(render(&page));
        }
    };
    page.heads = sort_heads(&page.f, q.order);
    // A token limited to groups sees only theirs (the summary too).
    if !token.groups.is_empty() {
        if q.filter.groups.is_empty() {
            q.filter.groups.clone_from(&token.groups);
        } else {
            q.filter.groups.retain(|g| token.groups.contains(g));
            if q.filter.groups.is_empty() {
                return Ok(render(&page));
            }
        }
    }
    let rows_wanted = headers.get(ROWS_HEADER).map(HeaderValue::as_bytes);
    let summary = if rows_wanted == Some(b"1") {
        Default::default()
    } else {
        state
            .store
            .fleet_summary(q.filter.region.as_ref(), &token.groups)
            .await
            .map_err(|e| PageError::from(e).by(token))?
    };
    let limit = PageLimit::new(PAGE_ROWS).map_err(PageError::from)?;
    let listed = state
        .store
        .list_instances(&q.filter, q.order, limit, cursor.as_deref())
        .await;
    let listed = match listed {
        Ok(p) => p,
        // A cursor from another filter, or a text too long: said on the page.
        Err(crate::store::StoreError::Invalid(why)) => {
            page.error = Some(why);
            return Ok(render(&page));
        }
        Err(e) => return Err(PageError::reading(Problem::from(e)).by(token)),
    };
    page.total = summary.total;
    page.online = summary.online;
    page.stale = summary.stale;
    page.offline = summary.offline;
    page.drifting = summary.drifting;
    page.versions = summary
        .versions
        .into_iter()
        .map(|(v, n)| (v.unwrap_or_else(|| "unknown".to_owned()), n))
        .collect();
    if let Some(asked) = rows_wanted {
        let rows = listed.items.iter().map(|r| row(r, now, several)).collect();
        let counts = (asked != b"1").then_some(&page);
        return Ok(rows_only(rows, page.regions.clone(), counts));
    }
    page.rows = listed.items.iter().map(|r| row(r, now, several)).collect();
    let base = page.f.query();
    if signed.can(crate::store::Scope::Operate) && !page.rows.is_empty() {
        page.run = Some(run_link(&page, &base));
    }
    (page.next, page.first) = super::view::pager(
        "/ui/",
        &page.f.query_with_sort(&page.f.sort),
        listed.next_cursor,
        cursor.is_some(),
    );
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_template_renders_the_rows_alone() {
        let r = Row {
            key: "default/gw-1".into(),
            id: "gw-1".into(),
            href: "/ui/gateways/gw-1".into(),
            region: "default".into(),
            group: "GID_a".into(),
            presence: "online",
            since: "3 s".into(),
            since_title: "t".into(),
            last_seen: "1 s".into(),
            version: "0.1.0".into(),
            count: 2,
            drift: 1,
        };
        let html = FleetRows {
            rows: vec![r],
            regions: Vec::new(),
        }
        .render()
        .unwrap();
        assert!(html.contains("<tr data-gw=\"default/gw-1\">"), "{html}");
        assert!(html.contains("has-drift"), "{html}");
        assert!(
            !html.contains("<tbody") && !html.contains("<html"),
            "{html}"
        );
    }
}
