//! `GET /ui/events`: the pages' live updates, as server-sent events. Each presence change the
//! signed-in token may see becomes `event: presence` with what a row shows (`key`, `group`,
//! `from`, `to`, `reason`, `since`), and each change of a job it may see `event: job` (`id`,
//! `state`, `counts`): every job for a token of every group, the jobs it created for a token
//! limited to groups ([`Viewer::sees`]). A page that fell behind gets `event: lagged` (it
//! reloads); a session that ended (signed out, expired, its token revoked) gets `event: ended`
//! within [`SESSION_RECHECK`] and the stream closes. Nothing compresses or buffers the stream
//! (`X-Accel-Buffering: no` asks the same of a proxy); a comment every 15 s keeps it open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::session::{refused, session};
use super::view::{ago, utc, PageError};
use crate::events::{Event, Published, Viewer};
use crate::http::AppState;
use crate::now_ms;
use crate::store::{Scope, SessionHash, SessionSecret, Store};

/// How often an open stream checks that its session is still live.
pub const SESSION_RECHECK: Duration = Duration::from_secs(5);

struct Listener {
    store: Arc<dyn Store>,
    session: SessionHash,
    every: tokio::time::Interval,
    rx: broadcast::Receiver<Arc<Published>>,
    closed: watch::Receiver<bool>,
    viewer: Viewer,
    ended: bool,
}

/// What a page needs to redraw a gateway's presence.
fn presence_frame(p: &Published) -> Option<SseEvent> {
    let Event::Presence {
        region,
        instance_id,
        group_id,
        from,
        to,
        reason,
        since_ms,
        ..
    } = &p.event
    else {
        return None;
    };
    let data = json!({
        "key": format!("{region}/{instance_id}"),
        // A page tells by it whether a gateway new to the console matches its filter.
        "group": group_id,
        "from": from,
        "to": to,
        "reason": reason,
        "since": ago(now_ms(), *since_ms),
        "since_utc": utc(*since_ms),
    });
    Some(
        SseEvent::default()
            .id(p.event_id.to_string())
            .event("presence")
            .data(data.to_string()),
    )
}

/// A job's state and counts, for its page's progress (the runner publishes counts at most
/// every `event_every`, 500 ms by default, and every change of state at once).
fn job_frame(p: &Published) -> Option<SseEvent> {
    let Event::Job {
        id, state, counts, ..
    } = &p.event
    else {
        return None;
    };
    let data = json!({"id": id, "state": state, "counts": counts});
    Some(
        SseEvent::default()
            .id(p.event_id.to_string())
            .event("job")
            .data(data.to_string()),
    )
}

fn events(l: Listener) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // A comment first: the response head goes out with the first bytes of the body.
    let opened = stream::once(async { Ok(SseEvent::default().comment("open")) });
    opened.chain(stream::unfold(l, |mut l| async move {
        if l.ended {
            return None;
        }
        loop {
            enum Next {
                Got(Result<Arc<Published>, RecvError>),
                Closed,
                Recheck,
            }
            let next = tokio::select! {
                r = l.rx.recv() => Next::Got(r),
                _ = l.closed.wait_for(|c| *c) => Next::Closed,
                _ = l.every.tick() => Next::Recheck,
            };
            match next {
                Next::Got(Ok(p)) => {
                    if p.event.visible_to(&l.viewer) {
                        if let Some(frame) = presence_frame(&p).or_else(|| job_frame(&p)) {
                            return Some((Ok(frame), l));
                        }
                    }
                }
                Next::Got(Err(RecvError::Lagged(n))) => {
                    let e = SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(e), l));
                }
                Next::Got(Err(RecvError::Closed)) | Next::Closed => return None,
                Next::Recheck => {
                    // A store that cannot answer says nothing about the session: go on.
                    if let Ok(None) = l.store.find_session(&l.session, now_ms()).await {
                        l.ended = true;
                        let e = SseEvent::default()
                            .event("ended")
                            .data("{\"reason\":\"the session ended\"}");
                        return Some((Ok(e), l));
                    }
                }
            }
        }
    }))
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let signed = session(&state, &headers)
        .await?
        .ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "not signed in"))?;
    if !signed.can(Scope::Read) {
        return Err(
            refused(StatusCode::FORBIDDEN, "the token lacks the read scope").by(&signed.token),
        );
    }
    let Some(hash) = super::session::cookie_value(&headers).map(|s: SessionSecret| s.hash()) else {
        return Err(refused(StatusCode::UNAUTHORIZED, "not signed in"));
    };
    let mut every = tokio::time::interval(SESSION_RECHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.reset();
    // Subscribed before answering: nothing published from here on is missed.
    let listener = Listener {
        store: state.store.clone(),
        session: hash,
        every,
        rx: state.bus.subscribe(),
        closed: state.bus.close_signal(),
        viewer: Viewer::of(&signed.token),
        ended: false,
    };
    let mut resp = Sse::new(events(listener))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
