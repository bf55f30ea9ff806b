//! `GET /v1/events`: the stored events as server-sent events, replayed from `Last-Event-ID`
//! and then followed live.
//!
//! Each event is `id: <event id>`, `event: presence|call|job`, `data: <JSON>`; the id is the
//! event log's (see [`crate::eventlog`]): the same on every replica and across restarts. A
//! client that reconnects with `Last-Event-ID: N` (or `?last_event_id=N`, for clients that
//! cannot set headers) first gets every stored event after N that its token may see, then the
//! live ones. When N is older than what the log keeps (or is an id the log never gave out) the
//! stream opens with `event: replay_incomplete`. The stream opens with a comment (`: open`);
//! comments (`: keep-alive`) every 15 s keep proxies from closing an idle stream. Nothing
//! compresses or buffers the response (`X-Accel-Buffering: no` asks the same of a proxy); the
//! stream ends when the service stops.
//!
//! The seam between replay and live: the stream subscribes to the replica's tail first, then
//! reads the store from N until a page comes back short. Everything stored before that read is
//! in it; everything stored after reaches the tail, which hands events out in id order. The
//! stream remembers the last id it passed and skips anything at or below it: no gap, no
//! duplicate. A stream that falls behind the tail (its buffer of 16,384 events overflows)
//! does the same from its last id instead of losing events.

use std::collections::VecDeque;
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
use crate::eventlog::{Entry, LogTail};
use crate::events::{EventKinds, Viewer};
use crate::metrics::StreamGuard;
use crate::store::{LogBounds, Scope, Store, TokenHash};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the query asks: the types (every type by default) and where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamQuery {
    pub kinds: EventKinds,
    pub last_event_id: Option<i64>,
}

fn event_id(what: &str, v: &str) -> Result<i64, Problem> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "{what}: an event id (a whole number from 0), not {:?}",
                v.chars().take(64).collect::<String>()
            ))
        })
}

/// `types=presence,call,job` (comma-separated, or repeated) and `last_event_id=N`.
pub fn parse_query(raw: Option<&str>) -> Result<StreamQuery, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    let mut names: Vec<String> = Vec::new();
    let mut last_event_id = None;
    for (k, v) in pairs {
        match k.as_str() {
            "types" => names.extend(v.split(',').map(str::to_owned)),
            "last_event_id" if last_event_id.is_none() => {
                last_event_id = Some(event_id("last_event_id", &v)?);
            }
            "last_event_id" => return Err(Problem::bad_request("last_event_id given twice")),
            _ => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {:?}; known: types, last_event_id",
                    k.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    let kinds = if names.is_empty() {
        EventKinds::ALL
    } else {
        EventKinds::parse(names.iter().map(String::as_str))
            .map_err(|e| Problem::bad_request(format!("types: {e}")))?
    };
    Ok(StreamQuery {
        kinds,
        last_event_id,
    })
}

/// Where to resume: the `Last-Event-ID` header (what a browser's EventSource sends when it
/// reconnects) wins over the query; an empty header is no header, as EventSource never sends
/// one.
fn resume_from(headers: &HeaderMap, query: Option<i64>) -> Result<Option<i64>, Problem> {
    match headers.get("last-event-id") {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| Problem::bad_request("Last-Event-ID: not text"))?;
            if v.trim().is_empty() {
                Ok(query)
            } else {
                event_id("Last-Event-ID", v).map(Some)
            }
        }
        None => Ok(query),
    }
}

/// How often an open stream checks that its token is still valid: a revoked token's stream
/// ends within this long.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(5);

/// How long a stream waits before reading the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The token a stream was opened with, looked up again now and then.
struct Recheck {
    store: Arc<dyn Store>,
    hash: TokenHash,
    every: tokio::time::Interval,
}

struct Listener {
    recheck: Option<Recheck>,
    log: LogTail,
    rx: broadcast::Receiver<Arc<Entry>>,
    /// The last id this stream passed (sent, or filtered out): it goes on after it.
    last: i64,
    /// Read from the store, not passed yet.
    backlog: VecDeque<Arc<Entry>>,
    /// Reading the store (a replay, or catching up after falling behind the tail) rather
    /// than following the tail.
    catching_up: bool,
    /// Sent before anything else.
    notice: Option<SseEvent>,
    closed: watch::Receiver<bool>,
    kinds: EventKinds,
    viewer: Viewer,
    metrics: crate::metrics::Metrics,
    _open: StreamGuard,
    /// Set when the `revoked` event was sent: the stream ends after it.
    closed_by_revocation: bool,
}

fn frame(e: &Entry) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.as_str())
        .data(e.body.as_str())
}

/// `replay_incomplete`: events after `asked` are missing from what follows, because the log
/// no longer holds them (pruned) or never gave that id out.
fn incomplete(asked: i64, b: LogBounds, reason: &str) -> SseEvent {
    let data = serde_json::json!({
        "last_event_id": asked,
        "reason": reason,
        "pruned_through": b.pruned_through,
        "newest": b.newest,
    });
    SseEvent::default()
        .event("replay_incomplete")
        .data(data.to_string())
}

/// Where a stream resuming after `asked` starts, and the notice it opens with, if any.
fn start_after(asked: i64, b: LogBounds) -> (i64, Option<SseEvent>) {
    if asked > b.newest {
        (
            b.newest,
            Some(incomplete(
                asked,
                b,
                "unknown: the log never gave out this id; going on from its newest",
            )),
        )
    } else if asked < b.pruned_through {
        (
            asked,
            Some(incomplete(
                asked,
                b,
                "pruned: events up to pruned_through are no longer kept",
            )),
        )
    } else {
        (asked, None)
    }
}

impl Listener {
    fn wants(&self, e: &Entry) -> bool {
        self.kinds.contains(e.kind) && e.visible_to(&self.viewer)
    }
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
            if let Some(n) = l.notice.take() {
                return Some((Ok(n), l));
            }
            if let Some(e) = l.backlog.pop_front() {
                l.last = e.id;
                if l.wants(&e) {
                    return Some((Ok(frame(&e)), l));
                }
                continue;
            }
            if l.catching_up {
                match l.log.after(l.last).await {
                    Ok((entries, complete)) => {
                        l.backlog.extend(entries);
                        l.catching_up = !complete;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "an event stream could not read the log; retried");
                        tokio::select! {
                            _ = tokio::time::sleep(STORE_RETRY) => {}
                            _ = l.closed.wait_for(|c| *c) => return None,
                        }
                    }
                }
                continue;
            }
            enum Next {
                Got(Result<Arc<Entry>, RecvError>),
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
                Ok(e) => {
                    // At or below the last passed: read from the store already.
                    if e.id <= l.last {
                        continue;
                    }
                    l.last = e.id;
                    if l.wants(&e) {
                        return Some((Ok(frame(&e)), l));
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    // Fell behind the tail: what it dropped is in the store.
                    l.metrics.stream_lagged(n);
                    l.catching_up = true;
                    if let Ok(b) = l.log.bounds().await {
                        if l.last < b.pruned_through {
                            l.notice = Some(incomplete(
                                l.last,
                                b,
                                "pruned: events up to pruned_through are no longer kept",
                            ));
                        }
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }))
}

/// The stored events, replayed from `Last-Event-ID` and followed live, as server-sent events.
/// One server-sent event of `GET /v1/events`, as an event-stream parser reads it: the
/// document's schema of that route describes each event (OpenAPI 3.1 has no item schema for
/// streams), so a checker reading the stream validates every event against this.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    /// `presence`, `call`, `job`, `replay_incomplete` or `revoked`.
    pub event: Option<String>,
    /// The event id (the event log's), for `Last-Event-ID`.
    pub id: Option<String>,
    /// The event as JSON.
    pub data: String,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("types" = Option<String>, Query, description = "comma-separated: presence, call, job (all by default)"),
        ("last_event_id" = Option<i64>, Query, description = "resume after this event id (as the Last-Event-ID header, which wins when both are given)", minimum = 0),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id: every stored event after it the token may see, then the live ones"),
    ),
    responses(
        (status = 200, description = "a stream of server-sent events: `event:` presence, call, job, replay_incomplete (first, when the events after Last-Event-ID are no longer all kept) or revoked (last); `id:` the event id; `data:` the event as JSON", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "an unknown type or parameter, or a bad event id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the store (which holds the tokens and the events) is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let token = authorize(&state, &headers, Scope::Read).await?;
    let query = parse_query(raw.as_deref())?;
    let resume = resume_from(&headers, query.last_event_id)?;
    let mut every = tokio::time::interval(TOKEN_RECHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.reset();
    // Subscribed before the store is read: nothing stored from here on is missed.
    let rx = state.log.subscribe();
    let (last, notice, catching_up) = match resume {
        None => (state.log.head(), None, false),
        Some(asked) => {
            let (last, notice) = start_after(asked, state.log.bounds().await?);
            (last, notice, true)
        }
    };
    let listener = Listener {
        recheck: Some(Recheck {
            store: state.store.clone(),
            hash: presented_hash(&headers)?,
            every,
        }),
        closed_by_revocation: false,
        log: state.log.clone(),
        rx,
        last,
        backlog: VecDeque::new(),
        catching_up,
        notice,
        closed: state.bus.close_signal(),
        kinds: query.kinds,
        viewer: Viewer::of(&token),
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
    use crate::eventlog::{EventLogConfig, Service};
    use crate::events::{Bus, Event, EventKind};
    use crate::metrics::Metrics;
    use std::sync::Arc;
    use tokio::sync::Notify;

    fn presence(group: &str, id: usize) -> Event {
        Event::Presence {
            region: "default".into(),
            instance_id: format!("gw-{id}"),
            group_id: Some(group.into()),
            from: None,
            to: "online".into(),
            reason: Some("connected".into()),
            since_ms: i64::try_from(id).unwrap(),
            // Now: older events would be the pruner's (24 h retention).
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .try_into()
                .unwrap(),
        }
    }

    /// A real SQLite store, its log's writer and tail running, and the bus they log from.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        bus: Bus,
        log: LogTail,
        service: Option<Service>,
        metrics: Metrics,
    }

    impl Fixture {
        async fn new(tail_capacity: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("c.db").display());
            let store = crate::store::open(&url).await.unwrap();
            let bus = Bus::default();
            let log = LogTail::with_capacity(store.clone(), tail_capacity);
            let service = Service::start(
                &log,
                &bus,
                Vec::new(),
                "console-1".into(),
                EventLogConfig {
                    poll: Duration::from_millis(20),
                    ..EventLogConfig::default()
                },
                Arc::new(Notify::new()),
            )
            .await
            .unwrap();
            Fixture {
                _dir: dir,
                store,
                bus,
                log,
                service: Some(service),
                metrics: Metrics::new(),
            }
        }

        /// Waits until the log holds `n` events.
        async fn logged(&self, n: i64) {
            for _ in 0..500 {
                if self.log.bounds().await.unwrap().newest >= n && self.log.head() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{n} events were not logged");
        }

        async fn listener(
            &self,
            kinds: EventKinds,
            viewer: Viewer,
            resume: Option<i64>,
        ) -> Listener {
            let rx = self.log.subscribe();
            let (last, notice, catching_up) = match resume {
                None => (self.log.head(), None, false),
                Some(asked) => {
                    let (last, notice) = start_after(asked, self.log.bounds().await.unwrap());
                    (last, notice, true)
                }
            };
            Listener {
                recheck: None,
                closed_by_revocation: false,
                log: self.log.clone(),
                rx,
                last,
                backlog: VecDeque::new(),
                catching_up,
                notice,
                closed: self.bus.close_signal(),
                kinds,
                viewer,
                metrics: self.metrics.clone(),
                _open: self.metrics.stream_opened(),
            }
        }

        async fn stop(mut self) {
            if let Some(s) = self.service.take() {
                s.stop().await;
            }
            self.store.close().await;
        }
    }

    /// A token named `name` limited to `groups` (none: every group).
    fn viewer(name: &str, groups: &[&str]) -> Viewer {
        Viewer {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn text(e: SseEvent) -> String {
        format!("{e:?}")
    }

    /// The id of a frame (`id: N`), if it has one.
    fn id_of(t: &str) -> Option<i64> {
        let at = t.find("id: ")? + 4;
        let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    async fn next(s: &mut (impl Stream<Item = Result<SseEvent, Infallible>> + Unpin)) -> String {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("no event in 10 s")
            .expect("the stream ended")
            .unwrap();
        text(e)
    }

    /// A stream opened with a token that is then revoked ends with a `revoked` event at the
    /// next check (a real SQLite store holds the token).
    #[tokio::test]
    async fn a_revoked_tokens_stream_ends() {
        use crate::store::{NewToken, TokenName, TokenSecret};
        let fx = Fixture::new(64).await;
        let secret = TokenSecret::generate().unwrap();
        let name = TokenName::new("watcher").unwrap();
        fx.store
            .create_token(&NewToken {
                name: name.clone(),
                hash: secret.hash(),
                scopes: vec![Scope::Read],
                groups: vec![],
                created_ms: 0,
            })
            .await
            .unwrap();
        let mut l = fx.listener(EventKinds::ALL, viewer("ops", &[]), None).await;
        l.recheck = Some(Recheck {
            store: fx.store.clone(),
            hash: secret.hash(),
            every: tokio::time::interval(Duration::from_millis(50)),
        });
        let s = events(l);
        tokio::pin!(s);
        assert!(next(&mut s).await.contains(": open"));
        // Still valid: events flow.
        fx.bus.publish(presence("GID_a", 1));
        let e = next(&mut s).await;
        assert!(e.contains("presence"), "{e}");
        assert!(fx.store.revoke_token(&name, 1).await.unwrap());
        let e = next(&mut s).await;
        assert!(e.contains("revoked"), "{e}");
        assert!(
            s.next().await.is_none(),
            "the stream goes on after revocation"
        );
        fx.stop().await;
    }

    /// Resuming after an id replays every later stored event the token may see, then goes on
    /// live across the seam with no gap and no duplicate, while events keep coming.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_joins_the_live_events_without_gap_or_duplicate() {
        let fx = Fixture::new(64).await;
        for i in 1..=30 {
            fx.bus
                .publish(presence(if i % 3 == 0 { "GID_b" } else { "GID_a" }, i));
        }
        fx.logged(30).await;
        let all = events(
            fx.listener(EventKinds::ALL, viewer("ops", &[]), Some(10))
                .await,
        );
        let limited = events(
            fx.listener(EventKinds::ALL, viewer("team-b", &["GID_b"]), Some(10))
                .await,
        );
        tokio::pin!(all, limited);
        assert!(next(&mut all).await.contains(": open"));
        assert!(next(&mut limited).await.contains(": open"));
        // More events while the replay is read: they come after it, once.
        let bus = fx.bus.clone();
        let publisher = tokio::spawn(async move {
            for i in 31..=60 {
                bus.publish(presence(if i % 3 == 0 { "GID_b" } else { "GID_a" }, i));
                tokio::task::yield_now().await;
            }
            bus.publish(Event::Job {
                id: "j".into(),
                state: "running".into(),
                counts: serde_json::json!({}),
                created_by: "ops".into(),
            });
        });
        let mut ids = Vec::new();
        while ids.len() < 51 {
            let t = next(&mut all).await;
            ids.push(id_of(&t).unwrap_or_else(|| panic!("{t}")));
        }
        assert_eq!(ids, (11..=61).collect::<Vec<i64>>());
        // The limited token: only GID_b's events (every third), never the job.
        let mut seen = Vec::new();
        while seen.len() < 17 {
            let t = next(&mut limited).await;
            assert!(t.contains("GID_b") && !t.contains("GID_a"), "{t}");
            seen.push(id_of(&t).unwrap());
        }
        assert_eq!(seen, (12..=60).step_by(3).collect::<Vec<i64>>());
        publisher.await.unwrap();
        // The body carries the same id.
        fx.bus.publish(presence("GID_b", 99));
        let t = next(&mut limited).await;
        assert!(t.contains("\\\"event_id\\\":62"), "{t}");
        fx.stop().await;
    }

    fn job(id: &str, state: &str, created_by: &str) -> Event {
        Event::Job {
            id: id.into(),
            state: state.into(),
            counts: serde_json::json!({"succeeded": 0}),
            created_by: created_by.into(),
        }
    }

    /// A token limited to groups gets, beside its groups' gateways, the events of the jobs it
    /// created, replayed from the store and then live; never another token's job (one of the
    /// same groups included). The body is the documented one: the creator is not in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_limited_token_gets_the_events_of_its_own_jobs_replayed_and_live() {
        let fx = Fixture::new(64).await;
        fx.bus.publish(job("j-a", "running", "team-a"));
        fx.bus.publish(job("j-b", "running", "team-b"));
        fx.bus.publish(presence("GID_a", 1));
        fx.bus.publish(job("j-ops", "running", "ops"));
        fx.bus.publish(job("j-a", "succeeded", "team-a"));
        fx.logged(5).await;
        let team_a = || viewer("team-a", &["GID_a"]);
        let jobs = EventKinds::parse(["job"]).unwrap();
        let all = events(fx.listener(EventKinds::ALL, team_a(), Some(0)).await);
        let only_jobs = events(fx.listener(jobs, team_a(), Some(0)).await);
        let ops = events(fx.listener(jobs, viewer("ops", &[]), Some(0)).await);
        tokio::pin!(all, only_jobs, ops);
        for s in [&mut all, &mut only_jobs, &mut ops] {
            assert!(next(s).await.contains(": open"));
        }
        let first = next(&mut all).await;
        assert_eq!(id_of(&first), Some(1), "{first}");
        assert!(
            first.contains("j-a") && !first.contains("team-a") && !first.contains("created_by"),
            "{first}"
        );
        for want in [3, 5] {
            assert_eq!(id_of(&next(&mut all).await), Some(want));
        }
        for want in [1, 5] {
            assert_eq!(id_of(&next(&mut only_jobs).await), Some(want));
        }
        // An unlimited token gets every job's events.
        for want in [1, 2, 4, 5] {
            assert_eq!(id_of(&next(&mut ops).await), Some(want));
        }
        // Live: another token's job passes by, the token's next job comes through.
        fx.bus.publish(job("j-b", "succeeded", "team-b"));
        fx.bus.publish(job("j-a2", "running", "team-a"));
        for s in [&mut all, &mut only_jobs] {
            let t = next(s).await;
            assert!(id_of(&t) == Some(7) && t.contains("j-a2"), "{t}");
        }
        assert_eq!(id_of(&next(&mut ops).await), Some(6));
        fx.stop().await;
    }

    /// A stream that falls behind the tail reads what it missed from the store: every event,
    /// in order, none twice; the lag is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_stream_catches_up_from_the_store() {
        let fx = Fixture::new(4).await;
        let s = events(fx.listener(EventKinds::ALL, viewer("ops", &[]), None).await);
        tokio::pin!(s);
        assert!(next(&mut s).await.contains(": open"));
        for i in 1..=200 {
            fx.bus.publish(presence("GID_a", i));
        }
        fx.logged(200).await;
        let mut ids = Vec::new();
        while ids.len() < 200 {
            let t = next(&mut s).await;
            ids.push(id_of(&t).unwrap_or_else(|| panic!("{t}")));
        }
        assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
        let m = crate::metrics::parse_text(&fx.metrics.encode().unwrap()).unwrap();
        assert!(m["csg_event_stream_lagged_events_total"] > 0.0, "{m:?}");
        fx.stop().await;
    }

    /// Resuming from an id the log no longer keeps opens with `replay_incomplete`, then gives
    /// what is kept; an id the log never gave out is said so too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_from_before_retention_says_it_is_incomplete() {
        let fx = Fixture::new(64).await;
        for i in 1..=20 {
            fx.bus.publish(presence("GID_a", i));
        }
        fx.logged(20).await;
        // Keep the 5 newest.
        assert_eq!(fx.store.event_log().prune_events(0, 5).await.unwrap(), 15);
        let s = events(
            fx.listener(EventKinds::ALL, viewer("ops", &[]), Some(3))
                .await,
        );
        tokio::pin!(s);
        assert!(next(&mut s).await.contains(": open"));
        let n = next(&mut s).await;
        assert!(
            n.contains("replay_incomplete") && n.contains("pruned_through\\\":15"),
            "{n}"
        );
        assert_eq!(id_of(&next(&mut s).await), Some(16));
        // From the last kept id on: complete, no notice.
        let s = events(
            fx.listener(EventKinds::ALL, viewer("ops", &[]), Some(15))
                .await,
        );
        tokio::pin!(s);
        next(&mut s).await;
        assert_eq!(id_of(&next(&mut s).await), Some(16));
        let s = events(
            fx.listener(EventKinds::ALL, viewer("ops", &[]), Some(500))
                .await,
        );
        tokio::pin!(s);
        next(&mut s).await;
        let n = next(&mut s).await;
        assert!(
            n.contains("replay_incomplete") && n.contains("unknown"),
            "{n}"
        );
        fx.bus.publish(presence("GID_a", 21));
        assert_eq!(id_of(&next(&mut s).await), Some(21));
        fx.bus.close();
        assert!(s.next().await.is_none(), "closing the bus ends a stream");
        fx.stop().await;
    }

    #[test]
    fn the_query_parses_and_bad_input_is_refused() {
        assert_eq!(parse_query(None).unwrap().kinds, EventKinds::ALL);
        let q = parse_query(Some("types=presence,job&last_event_id=42")).unwrap();
        assert!(q.kinds.contains(EventKind::Presence) && !q.kinds.contains(EventKind::Call));
        assert_eq!(q.last_event_id, Some(42));
        let k = parse_query(Some("types=call&types=job")).unwrap().kinds;
        assert!(k.contains(EventKind::Call) && k.contains(EventKind::Job));
        for bad in [
            "types=presence,nope",
            "type=job",
            "types=",
            "last_event_id=-1",
            "last_event_id=x",
            "last_event_id=1&last_event_id=2",
        ] {
            assert_eq!(parse_query(Some(bad)).unwrap_err().status, 400, "{bad}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(resume_from(&h, Some(3)).unwrap(), Some(3));
        h.insert("last-event-id", HeaderValue::from_static("7"));
        assert_eq!(
            resume_from(&h, Some(3)).unwrap(),
            Some(7),
            "the header wins"
        );
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(resume_from(&h, None).unwrap(), None);
        h.insert("last-event-id", HeaderValue::from_static("abc"));
        assert_eq!(resume_from(&h, None).unwrap_err().status, 400);
    }
}
