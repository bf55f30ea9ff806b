//! What every page shares: its frame ([`Chrome`]), errors as pages ([`PageError`]), and how
//! times and sizes are written.

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::assets::{url, ASSETS};
use crate::http::problem::{Problem, Refusal, RETRY_AFTER_S};
use crate::store::{Scope, TokenRecord};

/// The frame of a page: where its files are, who is signed in, the form token.
pub struct Chrome {
    pub title: String,
    pub css: String,
    pub htmx: String,
    pub js: String,
    /// The signed-in token's name; `None` on the sign-in page.
    pub user: Option<String>,
    /// `read`, `operate`, `admin` or `audit`: the strongest scope held.
    pub scope: &'static str,
    pub csrf: String,
    /// Whether the token may read the audit log (the nav links it only then).
    pub audit: bool,
}

impl Chrome {
    pub fn new(title: impl Into<String>, token: Option<&TokenRecord>, csrf: String) -> Self {
        Chrome {
            title: title.into(),
            css: url(&ASSETS.css),
            htmx: url(&ASSETS.htmx),
            js: url(&ASSETS.js),
            user: token.map(|t| t.name.as_str().to_owned()),
            scope: token.map_or("", |t| strongest(&t.scopes)),
            csrf,
            audit: token.is_some_and(|t| {
                t.groups.is_empty() && crate::http::auth::grants(&t.scopes, Scope::Audit)
            }),
        }
    }
}

fn strongest(scopes: &[Scope]) -> &'static str {
    [Scope::Admin, Scope::Operate, Scope::Read, Scope::Audit]
        .into_iter()
        .find(|s| scopes.contains(s))
        .map_or("", Scope::as_str)
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    status: u16,
    title: &'a str,
    detail: &'a str,
    /// What a person may do: whether sending the same request again is safe.
    retry: &'a str,
}

/// Why a page could not be shown: a redirect (to sign in), or a problem shown as a page.
#[derive(Debug)]
pub enum PageError {
    /// 303 to this location.
    Redirect(String),
    /// The problem as a page; `retry` says whether repeating the request is safe.
    Problem {
        problem: Box<Problem>,
        retry: &'static str,
        token: Option<String>,
    },
}

impl PageError {
    /// A problem met while reading: repeating a read is always safe.
    pub fn reading(problem: Problem) -> Self {
        let retry = if problem.status == 503 {
            "Retrying is safe: this page only reads. Try again in a few seconds."
        } else {
            "Retrying the same request gives the same answer."
        };
        PageError::Problem {
            problem: Box::new(problem),
            retry,
            token: None,
        }
    }

    pub fn by(mut self, token: &TokenRecord) -> Self {
        if let PageError::Problem { token: t, .. } = &mut self {
            *t = Some(token.name.as_str().to_owned());
        }
        self
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError::reading(Problem::from(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Redirect(to) => axum::response::Redirect::to(&to).into_response(),
            PageError::Problem {
                problem,
                retry,
                token,
            } => {
                let status = StatusCode::from_u16(problem.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let page = ErrorPage {
                    chrome: Chrome::new(problem.title, None, String::new()),
                    status: problem.status,
                    title: problem.title,
                    detail: &problem.detail,
                    retry,
                };
                let body = page.render().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "the error page did not render");
                    format!("{} {}", problem.status, problem.title)
                });
                let mut resp = super::html(status, body);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
                }
                // The audit of refusals reads this, as it does for the API's problems.
                resp.extensions_mut().insert(Refusal {
                    detail: problem.detail.clone(),
                    token_name: token,
                    audited: false,
                });
                resp
            }
        }
    }
}

/// A template rendered as a 200 page (a template that fails to render is logged and is a 500
/// page).
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => super::html(StatusCode::OK, body),
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            PageError::reading(Problem::internal()).into_response()
        }
    }
}

/// `2026-12-05 19:42:49 UTC` (times are shown in UTC, so every operator reads the same).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's algorithm: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// How long ago, roughly: `12 s`, `5 min`, `3 h`, `2 d`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Bytes in binary units, one decimal: `3.8 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    // Precision beyond one decimal is not shown, so f64's rounding does not matter.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A query string of the members that are set (empty ones left out), for links that keep a
/// page's filter.
pub fn query_of(pairs: &[(&str, &str)]) -> String {
    let set: Vec<&(&str, &str)> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(set).unwrap_or_default()
}

/// A list page's pager: "Next page" (the store's cursor after `query`, the page's filter) and
/// "First page" (when this page was reached by a cursor), both on `path`.
pub fn pager(
    path: &str,
    query: &str,
    next_cursor: Option<String>,
    paged: bool,
) -> (Option<String>, Option<String>) {
    let sep = if query.is_empty() { "" } else { "&" };
    let next = next_cursor.map(|c| {
        let c = serde_urlencoded::to_string([("cursor", c.as_str())]).unwrap_or_default();
        format!("{path}?{query}{sep}{c}")
    });
    let first = paged.then(|| format!("{path}?{query}"));
    (next, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_764_133_100_000), "2025-11-26 04:58:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(ago(10_000, 0), "10 s");
        assert_eq!(ago(7_200_000, 0), "2 h");
        assert_eq!(ago(0, 5), "0 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4_111_450_112), "3.8 GiB");
    }
}
