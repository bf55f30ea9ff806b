//! Signing in with a console token, the session that follows, and the CSRF tokens of forms.
//!
//! - `POST /ui/signin` checks the token as the API does; a good one opens a session in the
//!   store (its secret's SHA-256 only) and sets the `csg_session` cookie: HttpOnly,
//!   SameSite=Strict, Path=/, Secure over HTTPS, for [`SESSION_TTL`];
//! - every page looks the session up in the store: an expired session, or one whose token was
//!   revoked, is gone at once on every replica (the lookup joins the token);
//! - each form carries a CSRF token derived from the session's secret (only the cookie's holder
//!   can know it); every POST checks it, and the sign-in form's from a short-lived cookie of
//!   its own (double submit), before anything else;
//! - sign-in attempts, refusals and sign-outs reach the audit log as the API's do.

use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::view::{render, Chrome, PageError};
use crate::http::problem::Problem;
use crate::http::{AppState, PeerAddr, RemoteAddr};
use crate::now_ms;
use crate::store::{AuditEvent, NewSession, Scope, SessionSecret, TokenHash, TokenRecord};

/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long the sign-in form's CSRF cookie lasts.
const SIGNIN_TTL: Duration = Duration::from_secs(3600);

pub const SESSION_COOKIE: &str = "csg_session";
const SIGNIN_COOKIE: &str = "csg_signin";

/// Longer presented tokens are refused unhashed (a real one is 48 characters).
const MAX_TOKEN_LEN: usize = 512;

/// A signed-in request: its token and the CSRF token its forms carry.
pub struct Signed {
    pub token: TokenRecord,
    pub csrf: String,
    secret: SessionSecret,
}

impl Signed {
    pub fn can(&self, scope: Scope) -> bool {
        crate::http::auth::grants(&self.token.scopes, scope)
    }
}

/// The value of cookie `name`, if the request carries one.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The session secret the request's cookie carries, if it reads as one.
pub fn cookie_value(headers: &HeaderMap) -> Option<SessionSecret> {
    cookie(headers, SESSION_COOKIE).and_then(SessionSecret::presented)
}

/// The CSRF token of forms under a secret (the session's, or the sign-in cookie's).
fn csrf_of(secret: &SessionSecret, purpose: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"csg-web-csrf\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret.expose().as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Equal without telling by its time how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session a request presents, if it is live.
pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Signed>, PageError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE).and_then(SessionSecret::presented) else {
        return Ok(None);
    };
    let found = state.store.find_session(&secret.hash(), now_ms()).await?;
    Ok(found.map(|s| Signed {
        csrf: csrf_of(&secret, "session"),
        token: s.token,
        secret,
    }))
}

/// A page's reader: signed in with the read scope, or sent to sign in.
pub async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Signed, PageError> {
    let signed = session(state, headers)
        .await?
        .ok_or_else(|| PageError::Redirect("/ui/signin".to_owned()))?;
    if !signed.can(Scope::Read) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("token {} lacks the read scope", signed.token.name),
        )
        .by(&signed.token));
    }
    Ok(signed)
}

/// A form's sender: signed in, the form's CSRF token right, and the scope held; otherwise a
/// refusal (audited), never a redirect that could hide it.
pub async fn sender(
    state: &AppState,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
    needed: Scope,
) -> Result<Signed, PageError> {
    let signed = session(state, headers).await?.ok_or_else(|| {
        refused(
            StatusCode::UNAUTHORIZED,
            "not signed in (or the session ended); sign in again",
        )
    })?;
    if !form_csrf.is_some_and(|c| same(c, &signed.csrf)) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and try again",
        )
        .by(&signed.token));
    }
    if !signed.can(needed) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!(
                "token {} lacks the {} scope",
                signed.token.name,
                needed.as_str()
            ),
        )
        .by(&signed.token));
    }
    Ok(signed)
}

pub fn refused(status: StatusCode, detail: impl Into<String>) -> PageError {
    let title = match status {
        StatusCode::UNAUTHORIZED => "Not signed in",
        StatusCode::FORBIDDEN => "Not allowed",
        _ => "Refused",
    };
    PageError::Problem {
        problem: Box::new(Problem::new(status, "web-refused", title, detail)),
        retry: "Sending the same request again is refused the same way.",
        token: None,
    }
}

/// A form body (`application/x-www-form-urlencoded`), 400 when it does not read.
pub fn form<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, PageError> {
    serde_urlencoded::from_bytes(body).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the form does not read: {e}"),
        )
    })
}

fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    // The value is URL-safe base64 (or empty), so the header is always valid.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn https(peer: Option<&ConnectInfo<PeerAddr>>) -> bool {
    peer.is_some_and(|p| p.0 .1)
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    chrome: Chrome,
    error: Option<String>,
}

/// The sign-in form; a signed-in browser goes to the fleet.
pub async fn signin_form(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    // A store that cannot answer shows the form anyway: signing in will say what is wrong.
    if let Ok(Some(_)) = session(&state, &headers).await {
        return Ok(Redirect::to("/ui/").into_response());
    }
    signin_page(peer.as_deref(), StatusCode::OK, None)
}

fn signin_page(
    peer: Option<&ConnectInfo<PeerAddr>>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, PageError> {
    let secret = SessionSecret::generate().map_err(PageError::from)?;
    let page = SigninPage {
        chrome: Chrome::new("Sign in", None, csrf_of(&secret, "signin")),
        error,
    };
    let mut resp = render(&page);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SIGNIN_COOKIE, secret.expose(), SIGNIN_TTL, https(peer)),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct SigninForm {
    token: String,
    csrf: Option<String>,
}

async fn audit(
    state: &AppState,
    remote: Option<String>,
    token: Option<&str>,
    action: &str,
    outcome: &str,
) {
    let event = AuditEvent {
        at_ms: now_ms(),
        region: state.regions.home().region.clone(),
        token_name: token.map(str::to_owned),
        remote_addr: remote,
        action: action.to_owned(),
        instance_id: None,
        method: None,
        params: Some(json!({"via": "web"})),
        outcome: outcome.to_owned(),
        request_id: None,
    };
    // A store outage is logged by `record`, and the line stays in the log.
    let _ = crate::audit::record(state.store.as_ref(), &event).await;
}

/// Checks the token and opens a session. A wrong token is a 401 page (audited as a refusal,
/// like the API's); the token itself is never logged or echoed.
pub async fn signin(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: SigninForm = form(&body)?;
    let expected = cookie(&headers, SIGNIN_COOKIE)
        .and_then(SessionSecret::presented)
        .map(|s| csrf_of(&s, "signin"));
    let csrf_ok = matches!((&expected, &f.csrf), (Some(e), Some(c)) if same(e, c));
    if !csrf_ok {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the sign-in form's CSRF token is missing or wrong; reload the page and try again",
        ));
    }
    let presented = f.token.trim();
    if presented.is_empty() || presented.len() > MAX_TOKEN_LEN {
        return signin_refused(peer.as_deref(), "enter a console token");
    }
    let hash = TokenHash::of(presented);
    let Some(token) = state.store.find_token(&hash).await? else {
        return signin_refused(peer.as_deref(), "the token is unknown or revoked");
    };
    let secret = SessionSecret::generate().map_err(PageError::from)?;
    let now = now_ms();
    let ttl_ms = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
    // Expired sessions go at each sign-in: the table holds live ones and a few more.
    if let Err(e) = state.store.delete_expired_sessions(now).await {
        tracing::warn!(error = %e, "expired sessions not removed");
    }
    let opened = state
        .store
        .create_session(&NewSession {
            hash: secret.hash(),
            token: hash,
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
        })
        .await?;
    if !opened {
        return signin_refused(peer.as_deref(), "the token is unknown or revoked");
    }
    audit(
        &state,
        remote.0,
        Some(token.name.as_str()),
        "web.signin",
        "ok",
    )
    .await;
    let secure = https(peer.as_deref());
    let mut resp = Redirect::to("/ui/").into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, secret.expose(), SESSION_TTL, secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(SIGNIN_COOKIE, "", Duration::ZERO, secure),
    );
    Ok(resp)
}

/// The form again with the reason, as a 401 the audit of refusals records.
fn signin_refused(peer: Option<&ConnectInfo<PeerAddr>>, why: &str) -> Result<Response, PageError> {
    let mut resp = signin_page(peer, StatusCode::UNAUTHORIZED, Some(why.to_owned()))?;
    resp.extensions_mut().insert(crate::http::problem::Refusal {
        detail: format!("web sign-in: {why}"),
        token_name: None,
        audited: false,
    });
    Ok(resp)
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

/// Ends the session (the form's CSRF token checked first) and clears the cookie.
pub async fn signout(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    Extension(remote): Extension<RemoteAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let f: CsrfOnly = form(&body)?;
    // Any token that can read the pages can sign out.
    let signed = sender(&state, &headers, f.csrf.as_deref(), Scope::Read).await?;
    state.store.delete_session(&signed.secret.hash()).await?;
    audit(
        &state,
        remote.0,
        Some(signed.token.name.as_str()),
        "web.signout",
        "ok",
    )
    .await;
    let mut resp = Redirect::to("/ui/signin").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Duration::ZERO, https(peer.as_deref())),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_and_csrf_tokens_differ_by_secret_and_purpose() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; csg_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "csg_session"), Some("abc"));
        assert_eq!(cookie(&h, "csg_signin"), None);
        let s1 = SessionSecret::generate().unwrap();
        let s2 = SessionSecret::generate().unwrap();
        assert_ne!(csrf_of(&s1, "session"), csrf_of(&s2, "session"));
        assert_ne!(csrf_of(&s1, "session"), csrf_of(&s1, "signin"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let c = set_cookie(SESSION_COOKIE, "v", SESSION_TTL, true);
        assert_eq!(
            c.to_str().unwrap(),
            "csg_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200; Secure"
        );
    }
}
