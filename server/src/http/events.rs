//! `GET /v1/events`: the live events as server-sent events.
//!
//! Each event is `id: <event id>`, `event: presence|call|job`, `data: <JSON>`. A listener that
//! falls behind the bus gets `event: lagged` with `{"missed": n}` instead of the events it
//! lost, never a silent gap. The stream opens with a comment (`: open`); comments (`: keep-alive`) every 15 s keep proxies from closing an
//! idle stream. Nothing compresses or buffers the response (`X-Accel-Buffering: no` asks the
//! same of a proxy); the stream ends when the service stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::auth::{authorize, presented_hash};
use super::problem::Problem;
use super::AppState;
use crate::events::{EventKinds, Published};
use crate::metrics::StreamGuard;
use crate::store::{Scope, Store, TokenHash};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `types=presence,call,job` (comma-separated, or repeated); every type by default.
pub fn parse_types(raw: Option<&str>) -> Result<EventKinds, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut names: Vec<String> = Vec::new();
    for (k, v) in pairs {
        if k != "types" {
            return Err(Problem::bad_request(format!(
                "unknown query parameter {:?}; known: types",
                k.chars().take(64).collect::<String>()
            )));
        }
        names.extend(v.split(',').map(str::to_owned));
    }
    if names.is_empty() {
        return Ok(EventKinds::ALL);
    }
    EventKinds::parse(names.iter().map(String::as_str))
        .map_err(|e| Problem::bad_request(format!("types: {e}")))
}

/// How often an open stream checks that its token is still valid: a revoked token's stream
/// ends within this long.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(5);

/// The token a stream was opened with, looked up again now and then.
struct Recheck {
    store: Arc<dyn Store>,
    hash: TokenHash,
    every: tokio::time::Interval,
}

struct Listener {
    recheck: Option<Recheck>,
    rx: broadcast::Receiver<Arc<Published>>,
    closed: watch::Receiver<bool>,
    kinds: EventKinds,
    groups: Vec<String>,
    metrics: crate::metrics::Metrics,
    _open: StreamGuard,
    /// Set when the `revoked` event was sent: the stream ends after it.
    closed_by_revocation: bool,
}

fn frame(p: &Published) -> SseEvent {
    let data = serde_json::to_string(p).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default()
        .id(p.event_id.to_string())
        .event(p.event.kind().as_str())
        .data(data)
}

fn events(l: Listener) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // A comment first: the server writes the response head with the first bytes of the body,
    // so without it a client would not know the stream is open until the first event.
    let opened = stream::once(async { Ok(SseEvent::default().comment("open")) });
    opened.chain(stream::unfold(l, |mut l| async move {
        if l.closed_by_revocation {
            return None;
        }
        loop {
            enum Next {
                Got(Result<Arc<Published>, RecvError>),
                Closed,
                Recheck(Arc<dyn Store>, TokenHash),
            }
            let next = {
                let (rx, closed, recheck) = (&mut l.rx, &mut l.closed, &mut l.recheck);
                let due = async {
                    match recheck {
                        Some(r) => {
                            r.every.tick().await;
                            (r.store.clone(), r.hash)
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = rx.recv() => Next::Got(r),
                    _ = closed.wait_for(|c| *c) => Next::Closed,
                    (store, hash) = due => Next::Recheck(store, hash),
                }
            };
            let got = match next {
                Next::Got(r) => r,
                Next::Closed => return None,
                Next::Recheck(store, hash) => {
                    // A store that cannot answer says nothing about the token: go on.
                    if let Ok(None) = store.find_token(&hash).await {
                        let e = SseEvent::default()
                            .event("revoked")
                            .data("{\"reason\":\"the token is unknown or revoked\"}");
                        l.recheck = None;
                        l.closed_by_revocation = true;
                        return Some((Ok(e), l));
                    }
                    continue;
                }
            };
            match got {
                Ok(p) => {
                    if l.kinds.contains(p.event.kind()) && p.event.visible_to(&l.groups) {
                        return Some((Ok(frame(&p)), l));
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    l.metrics.stream_lagged(n);
                    let e = SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(e), l));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }))
}

/// The live events, as server-sent events.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(("types" = Option<String>, Query, description = "comma-separated: presence, call, job (all by default)")),
    responses(
        (status = 200, description = "a stream of server-sent events: `event:` presence, call, job or lagged; `id:` the event id; `data:` the event as JSON", content_type = "text/event-stream", body = String),
        (status = 400, description = "an unknown type or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store (which holds the tokens) is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let kinds = parse_types(raw.as_deref())?;
    let mut every = tokio::time::interval(TOKEN_RECHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.reset();
    // Subscribed before answering: nothing published from here on is missed.
    let listener = Listener {
        recheck: Some(Recheck {
            store: state.store.clone(),
            hash: presented_hash(&headers)?,
            every,
        }),
        closed_by_revocation: false,
        rx: state.bus.subscribe(),
        closed: state.bus.close_signal(),
        kinds,
        groups: token.groups.iter().map(|g| g.as_str().to_owned()).collect(),
        metrics: state.metrics.clone(),
        _open: state.metrics.stream_opened(),
    };
    let mut resp = Sse::new(events(listener))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Bus, Event, EventKind};
    use crate::metrics::Metrics;

    fn presence(group: &str) -> Event {
        Event::Presence {
            region: "default".into(),
            instance_id: "gw-1".into(),
            group_id: Some(group.into()),
            from: None,
            to: "online".into(),
            reason: Some("connected".into()),
            since_ms: 1,
            at_ms: 2,
        }
    }

    fn listener(bus: &Bus, kinds: EventKinds, groups: &[&str], metrics: &Metrics) -> Listener {
        Listener {
            recheck: None,
            closed_by_revocation: false,
            rx: bus.subscribe(),
            closed: bus.close_signal(),
            kinds,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            metrics: metrics.clone(),
            _open: metrics.stream_opened(),
        }
    }

    /// A stream opened with a token that is then revoked ends with a `revoked` event at the
    /// next check (a real SQLite store holds the token).
    #[tokio::test]
    async fn a_revoked_tokens_stream_ends() {
        use crate::store::{self, NewToken, TokenName, TokenSecret};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let st = store::open(&url).await.unwrap();
        let secret = TokenSecret::generate().unwrap();
        let name = TokenName::new("watcher").unwrap();
        st.create_token(&NewToken {
            name: name.clone(),
            hash: secret.hash(),
            scopes: vec![Scope::Read],
            groups: vec![],
            created_ms: 0,
        })
        .await
        .unwrap();
        let bus = Bus::new(16);
        let metrics = Metrics::new();
        let mut l = listener(&bus, EventKinds::ALL, &[], &metrics);
        l.recheck = Some(Recheck {
            store: st.clone(),
            hash: secret.hash(),
            every: tokio::time::interval(Duration::from_millis(50)),
        });
        let s = events(l);
        tokio::pin!(s);
        assert!(format!("{:?}", s.next().await.unwrap().unwrap()).contains(": open"));
        // Still valid: events flow.
        bus.publish(presence("GID_a"));
        let e = format!("{:?}", s.next().await.unwrap().unwrap());
        assert!(e.contains("presence"), "{e}");
        assert!(st.revoke_token(&name, 1).await.unwrap());
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("no revoked event")
            .unwrap()
            .unwrap();
        assert!(format!("{e:?}").contains("revoked"), "{e:?}");
        assert!(
            s.next().await.is_none(),
            "the stream goes on after revocation"
        );
        st.close().await;
    }

    /// A listener that falls behind is told how many events it missed, then goes on; its
    /// groups and types filter what it sees; closing the bus ends the stream.
    #[tokio::test]
    async fn a_lagging_listener_gets_a_lagged_event_and_filters_apply() {
        let bus = Bus::new(4);
        let metrics = Metrics::new();
        let all = events(listener(&bus, EventKinds::ALL, &[], &metrics));
        let limited = events(listener(&bus, EventKinds::ALL, &["GID_b"], &metrics));
        let jobs = events(listener(
            &bus,
            EventKinds::parse(["job"]).unwrap(),
            &[],
            &metrics,
        ));
        tokio::pin!(all, limited, jobs);
        for s in [&mut all, &mut limited, &mut jobs] {
            let first = format!("{:?}", s.next().await.unwrap().unwrap());
            assert!(first.contains(": open"), "{first}");
        }
        for i in 0..10 {
            bus.publish(presence(if i == 9 { "GID_b" } else { "GID_a" }));
        }
        bus.publish(Event::Job {
            id: "j".into(),
            state: "running".into(),
            counts: serde_json::json!({}),
        });
        // 11 published, 4 kept: 7 missed, then ids 8 to 11.
        let text = |e: SseEvent| format!("{e:?}");
        let first = text(all.next().await.unwrap().unwrap());
        assert!(
            first.contains("lagged") && first.contains("missed\\\":7"),
            "{first}"
        );
        let next = text(all.next().await.unwrap().unwrap());
        assert!(next.contains("id: 8\\nevent: presence\\ndata: {"), "{next}");
        let s = crate::metrics::parse_text(&metrics.encode().unwrap()).unwrap();
        assert_eq!(s["csg_event_stream_lagged_events_total"], 7.0);
        assert_eq!(s["csg_event_stream_listeners"], 3.0);

        // The limited listener: its lag, then only GID_b's event (id 10), not the job.
        assert!(text(limited.next().await.unwrap().unwrap()).contains("lagged"));
        let b = text(limited.next().await.unwrap().unwrap());
        assert!(b.contains("GID_b") && !b.contains("GID_a"), "{b}");
        // The job-only listener: its lag, then the job.
        assert!(text(jobs.next().await.unwrap().unwrap()).contains("lagged"));
        let j = text(jobs.next().await.unwrap().unwrap());
        assert!(j.contains("job") && !j.contains("presence"), "{j}");

        bus.close();
        assert!(
            limited.next().await.is_none(),
            "closing the bus ends a stream"
        );
    }

    #[test]
    fn types_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse_types(None).unwrap(), EventKinds::ALL);
        let k = parse_types(Some("types=presence,job")).unwrap();
        assert!(k.contains(EventKind::Presence) && !k.contains(EventKind::Call));
        let k = parse_types(Some("types=call&types=job")).unwrap();
        assert!(k.contains(EventKind::Call) && k.contains(EventKind::Job));
        for bad in ["types=presence,nope", "type=job", "types="] {
            assert_eq!(parse_types(Some(bad)).unwrap_err().status, 400, "{bad}");
        }
    }
}
