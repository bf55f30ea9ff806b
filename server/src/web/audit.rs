//! The audit page: who did what, newest first, filtered by token, action, instance, outcome,
//! time range and region, in keyset pages. It needs the `audit` scope, and a token limited to
//! groups is refused as in the API (the log spans every group).

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::session::{reader, refused};
use super::view::{render, utc, Chrome, PageError};
use crate::http::audit::parse_query;
use crate::http::instances::region_filter;
use crate::http::AppState;
use crate::store::{AuditRecord, PageLimit, Region, Scope};

const PAGE_ROWS: u32 = 50;

/// The filter as the form shows it again; times as `datetime-local` writes them (UTC).
#[derive(Default)]
pub struct AuditForm {
    pub token: String,
    pub action: String,
    pub instance: String,
    pub outcome: String,
    pub since: String,
    pub until: String,
    pub region: String,
}

impl AuditForm {
    fn query(&self) -> String {
        super::view::query_of(&[
            ("token", self.token.as_str()),
            ("action", self.action.as_str()),
            ("instance", self.instance.as_str()),
            ("outcome", self.outcome.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
            ("region", self.region.as_str()),
        ])
    }
}

pub struct AuditLine {
    pub at: String,
    pub region: String,
    pub token: String,
    pub remote: String,
    pub action: String,
    pub instance: String,
    pub method: String,
    pub outcome: String,
    pub ok: bool,
    pub request_id: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    f: AuditForm,
    lines: Vec<AuditLine>,
    regions: Vec<String>,
    next: Option<String>,
    first: Option<String>,
    error: Option<String>,
}

/// Days from 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-05T20:30` or `2026-12-05T20:30:15` (UTC, as the page shows times) → ms.
pub fn parse_utc(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T').or_else(|| s.split_once(' '))?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (t.next()??, t.next()??);
    let sec = match t.next() {
        Some(v) => v?,
        None => 0,
    };
    let valid = (1970..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&da)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..60).contains(&sec);
    if !valid {
        return None;
    }
    let days = days_from_civil(y, mo, da);
    Some(((days * 86_400) + h * 3600 + mi * 60 + sec) * 1000)
}

fn line(a: &AuditRecord) -> AuditLine {
    let e = &a.event;
    AuditLine {
        at: utc(e.at_ms),
        region: e.region.as_str().to_owned(),
        token: e.token_name.clone().unwrap_or_default(),
        remote: e.remote_addr.clone().unwrap_or_default(),
        action: e.action.clone(),
        instance: e.instance_id.clone().unwrap_or_default(),
        method: e.method.clone().unwrap_or_default(),
        ok: e.outcome == "ok",
        outcome: e.outcome.clone(),
        request_id: e.request_id.clone().unwrap_or_default(),
        // Params are redacted when recorded; shown short, as the API gives them.
        detail: e
            .params
            .as_ref()
            .map(|p| {
                let s = p.to_string();
                if s.len() > 160 {
                    let cut = (0..=160)
                        .rev()
                        .find(|i| s.is_char_boundary(*i))
                        .unwrap_or(0);
                    format!("{}…", &s[..cut])
                } else {
                    s
                }
            })
            .unwrap_or_default(),
    }
}

/// `GET /ui/audit`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let signed = reader(&state, &headers).await?;
    let token = &signed.token;
    if !signed.can(Scope::Audit) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the audit log needs a token with the audit scope",
        )
        .by(token));
    }
    if !token.groups.is_empty() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the audit log spans every group; a token limited to groups cannot read it",
        )
        .by(token));
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let mut f = AuditForm::default();
    let mut cursor = None;
    for (k, v) in pairs {
        let v = v.trim().to_owned();
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "token" => f.token = v,
            "action" => f.action = v,
            "instance" => f.instance = v,
            "outcome" => f.outcome = v,
            "since" => f.since = v,
            "until" => f.until = v,
            "region" => f.region = v,
            "cursor" => cursor = Some(v),
            _ => {}
        }
    }
    let several = state.regions.len() > 1;
    let mut page = AuditPage {
        chrome: Chrome::new("Audit", Some(token), signed.csrf.clone()),
        lines: Vec::new(),
        regions: if several {
            state
                .regions
                .iter()
                .map(|r| r.region.as_str().to_owned())
                .collect()
        } else {
            Vec::new()
        },
        next: None,
        first: None,
        error: None,
        f,
    };
    // The API's query parser checks the values; the page's times become its milliseconds.
    let mut api: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("token", &page.f.token),
        ("action", &page.f.action),
        ("instance", &page.f.instance),
        ("outcome", &page.f.outcome),
        ("region", &page.f.region),
    ] {
        if !v.is_empty() {
            api.push((k, v.clone()));
        }
    }
    for (k, v, what) in [
        ("since_ms", &page.f.since, "from"),
        ("until_ms", &page.f.until, "until"),
    ] {
        if v.is_empty() {
            continue;
        }
        match parse_utc(v) {
            Some(ms) => api.push((k, ms.to_string())),
            None => {
                page.error = Some(format!(
                    "{what}: a date and time in UTC, as 2026-12-05T20:30"
                ));
                return Ok(render(&page));
            }
        }
    }
    let query = serde_urlencoded::to_string(&api).unwrap_or_default();
    let parsed = parse_query(Some(&query)).and_then(|(mut filter, _, _)| {
        filter.region = region_filter(&state, filter.region.as_ref().map(Region::as_str))?;
        Ok(filter)
    });
    let filter = match parsed {
        Ok(f) => f,
        Err(p) => {
            page.error = Some(p.detail);
            return Ok(render(&page));
        }
    };
    let limit = PageLimit::new(PAGE_ROWS).map_err(PageError::from)?;
    let listed = match state
        .store
        .list_audit(&filter, limit, cursor.as_deref())
        .await
    {
        Ok(p) => p,
        Err(crate::store::StoreError::Invalid(why)) => {
            page.error = Some(why);
            return Ok(render(&page));
        }
        Err(e) => return Err(PageError::from(e).by(token)),
    };
    page.lines = listed.items.iter().map(line).collect();
    let base = page.f.query();
    (page.next, page.first) =
        super::view::pager("/ui/audit", &base, listed.next_cursor, cursor.is_some());
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_form_read_as_utc_milliseconds() {
        assert_eq!(parse_utc("1970-01-01T00:00"), Some(0));
        assert_eq!(parse_utc("2025-11-26T04:58:20"), Some(1_764_133_100_000));
        assert_eq!(parse_utc("2000-02-29 00:00"), Some(951_782_400_000));
        assert_eq!(parse_utc("2026-13-01T00:00"), None);
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc("2026-01-01T25:00"), None);
    }
}
