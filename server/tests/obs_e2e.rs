//! Live events, metrics and webhooks of the running service: the real `csg-consoled` binary
//! with a SQLite file, a real Mosquitto and a real agent; the event stream and the scrapes
//! through `curl`, `promtool` checking the metrics text, and a webhook receiver (an axum
//! server in the test) that verifies every signature.
//!
//! Build the agent first: `cargo build -p csg-agent --bins` (cargo builds `csg-consoled`).

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::consoled::{http, wait_for, Consoled, Options};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use csg_consoled::metrics::parse_text;
use csg_consoled::webhooks::{verify, Secret};
use csg_e2e::broker::free_port;
use csg_e2e::process::{self, ChildGuard};
use csg_e2e::{Agent, AgentConfig, Broker, TIMEOUT};
use serde_json::Value;

const SECRET: &str = "e2e-webhook-secret-0123456789";

/// `curl -N` on the event stream, its output (head and events) going to a file as it arrives.
fn stream(c: &Consoled, name: &str, query: &str, token: &str) -> Stream {
    stream_with(c, name, query, token, "")
}

/// As [`stream`], with `extra` header lines.
fn stream_with(c: &Consoled, name: &str, query: &str, token: &str, extra: &str) -> Stream {
    let header = c.dir.path().join(format!("{name}.header"));
    std::fs::write(&header, format!("Authorization: Bearer {token}\n{extra}")).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "-i", "--max-time", "120", "-H"])
        .arg(format!("@{}", header.display()))
        .arg(format!("http://127.0.0.1:{}/v1/events{query}", c.port));
    let child = ChildGuard::spawn(name, cmd, c.dir.path()).unwrap();
    let s = Stream { child };
    // The head arrives at once (the stream is subscribed before it is answered).
    wait_for(TIMEOUT, || s.text().contains("\r\n\r\n"))
        .unwrap_or_else(|| panic!("no stream head: {}", s.child.log()));
    s
}

/// The configuration of these tests: `extra` appended, and a request timeout shorter than the
/// event streams stay open (it must not cut a stream).
fn consoled(broker: &Broker, extra: &str) -> Consoled {
    Consoled::with(
        &broker.url(),
        Options {
            http: "request_timeout_ms = 2000".to_owned(),
            extra: extra.to_owned(),
            ..Options::default()
        },
    )
}

struct Stream {
    child: ChildGuard,
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

impl Stream {
    fn text(&self) -> String {
        self.child.stdout()
    }

    fn head(&self) -> String {
        let t = self.text();
        t.split_once("\r\n\r\n")
            .map(|(h, _)| h.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The complete events so far (comments left out).
    fn events(&self) -> Vec<Sse> {
        let t = self.text();
        let Some((_, body)) = t.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Only blocks ended by a blank line are complete.
        let complete = body.rfind("\n\n").map_or("", |i| &body[..i]);
        for block in complete.split("\n\n") {
            let mut e = Sse {
                id: None,
                event: String::new(),
                data: Value::Null,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    e.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    e.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    e.data = serde_json::from_str(v).unwrap();
                }
            }
            if !e.event.is_empty() {
                out.push(e);
            }
        }
        out
    }

    fn presence_of(&self, id: &str, to: &str) -> Option<Sse> {
        self.events()
            .into_iter()
            .find(|e| e.event == "presence" && e.data["instance_id"] == id && e.data["to"] == to)
    }
}

/// Scrapes `/metrics` on `port`: the text, checked by `promtool check metrics` (Debian's
/// `prometheus` package, installed by scripts/install-deps.sh) and by the crate's own parser.
fn scrape(dir: &Path, port: u16) -> HashMap<String, f64> {
    let r = http(dir, port, &[], "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body;
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap());
    let out = process::run(cmd, Duration::from_secs(20));
    // 0: clean; 3: lint remarks only. promtool reads the classic text format, where an
    // OpenMetrics counter's `_total` sample looks like a family of its own without HELP: that
    // remark, and only it, is expected. A parse error is exit 1.
    assert!(
        matches!(out.code(), Some(0 | 3)),
        "promtool refused the metrics: {}\n{text}",
        out.describe()
    );
    for remark in out.stdout.lines().chain(out.stderr.lines()) {
        assert!(
            remark.ends_with("_total no help text") || remark.trim().is_empty(),
            "promtool: {remark}\n{text}"
        );
    }
    parse_text(&text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .into_iter()
        .collect()
}

#[test]
fn the_event_stream_sees_an_agent_go_offline_and_the_metrics_move() {
    let broker = Broker::start();
    let metrics_port = free_port();
    let mut c = consoled(
        &broker,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let reader = c.token_with(&["--name", "reader", "--scope", "read"]);
    let others = c.token_with(&[
        "--name",
        "others",
        "--scope",
        "read",
        "--group",
        "GID_other",
    ]);
    let ours = c.token_with(&["--name", "ours", "--scope", "read", "--group", "GID_csg"]);
    c.start();

    // Refused before any stream: no token, an unknown type.
    assert_eq!(c.get("/v1/events", None).status, 401);
    assert_eq!(
        c.get("/v1/events?types=presence,nope", Some(&reader))
            .status,
        400
    );
    // /metrics has its own address, so the API's answers 404.
    assert_eq!(c.get("/metrics", None).status, 404);

    let mut all = stream(&c, "sse-all", "", &reader);
    let mine = stream(&c, "sse-ours", "?types=presence", &ours);
    let foreign = stream(&c, "sse-others", "", &others);
    let jobs = stream(&c, "sse-jobs", "?types=job", &reader);
    let head = all.head();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(
        !head.contains("content-encoding"),
        "nothing may compress (buffer) the stream: {head}"
    );
    assert!(!head.contains("content-length"), "{head}");

    let mut cfg = AgentConfig::new("gw-obs-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    wait_for(TIMEOUT, || all.presence_of("gw-obs-1", "online").is_some())
        .unwrap_or_else(|| panic!("no online event\n{}\n{}", all.text(), c.log()));
    let online = all.presence_of("gw-obs-1", "online").unwrap();
    assert_eq!(online.data["group_id"], "GID_csg", "{online:?}");
    assert_eq!(online.data["region"], "default");
    assert_eq!(online.data["type"], "presence");
    assert_eq!(
        online.id.as_deref(),
        Some(online.data["event_id"].to_string().as_str())
    );
    wait_for(TIMEOUT, || mine.presence_of("gw-obs-1", "online").is_some())
        .expect("a token of the gateway's group sees its event");

    // The metrics move: heartbeats at 1 s.
    let m0 = scrape(c.dir.path(), metrics_port);
    let beats0 = m0["csg_heartbeats_ingested_total{region=\"default\"}"];
    std::thread::sleep(Duration::from_millis(3_500));
    let _ = c.json("/v1/instances", &reader);
    let m1 = scrape(c.dir.path(), metrics_port);
    let beats1 = m1["csg_heartbeats_ingested_total{region=\"default\"}"];
    eprintln!("heartbeats ingested: {beats0} then {beats1} 3.5 s later");
    assert!(beats1 >= beats0 + 2.0, "{beats0} → {beats1}");
    assert_eq!(
        m1["csg_instances{region=\"default\",presence=\"online\"}"],
        1.0
    );
    assert_eq!(m1["csg_event_stream_listeners"], 4.0);
    assert!(m1["csg_events_published_total{type=\"presence\"}"] >= 1.0);
    assert!(m1["csg_store_write_duration_seconds_count{outcome=\"ok\"}"] >= 1.0);
    assert!(
        m1["csg_http_requests_total{route=\"/v1/instances\",method=\"GET\",status=\"200\"}"] >= 1.0
    );
    assert_eq!(
        m1["csg_status_dropped_total{region=\"default\",reason=\"bad_payload\"}"],
        0.0
    );

    // kill -9: the broker's Will, then the event on the stream (open for longer than the
    // request timeout by now). Timed from the kill.
    assert!(all.child.is_running(), "{}", all.child.log());
    let killed = Instant::now();
    agent.kill9();
    wait_for(Duration::from_secs(30), || {
        all.presence_of("gw-obs-1", "offline").is_some()
    })
    .unwrap_or_else(|| panic!("no offline event\n{}\n{}", all.text(), c.log()));
    let took = killed.elapsed();
    let offline = all.presence_of("gw-obs-1", "offline").unwrap();
    eprintln!(
        "offline event {} ms after kill -9 (reason {})",
        took.as_millis(),
        offline.data["reason"]
    );
    assert_eq!(offline.data["from"], "online");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let m2 = scrape(c.dir.path(), metrics_port);
    assert_eq!(
        m2["csg_instances{region=\"default\",presence=\"offline\"}"],
        1.0
    );
    assert_eq!(
        m2["csg_instances{region=\"default\",presence=\"online\"}"],
        0.0
    );

    // Another group's token and a job-only stream saw none of it.
    assert!(foreign.events().is_empty(), "{}", foreign.text());
    assert!(jobs.events().is_empty(), "{}", jobs.text());
    let ids: Vec<u64> = all
        .events()
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // SIGTERM with streams open: they end, and the service exits 0 promptly.
    let t = Instant::now();
    let status = c
        .stop()
        .expect("csg-consoled did not exit with streams open");
    assert!(status.success(), "{status:?}");
    eprintln!("stopped with 4 streams open in {:?}", t.elapsed());
    assert!(
        all.child.wait_exit(TIMEOUT).is_some(),
        "the stream did not end at shutdown"
    );
}

/// What the receiver saw of one delivery.
#[derive(Debug, Default, Clone)]
struct Seen {
    attempts: u32,
    accepted: Option<Value>,
    event: String,
}

struct Receiver {
    secret: Secret,
    /// Attempts of each delivery refused before one is accepted.
    fail_first: u32,
    /// Refuse everything (503): the receiver is "down".
    down: AtomicBool,
    seen: Mutex<HashMap<String, Seen>>,
    bad_signatures: Mutex<u32>,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now_s = csg_e2e::now_ms() / 1000;
    if !verify(&r.secret, &h("x-csg-signature"), &body, now_s, 300) {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    assert_eq!(h("content-type"), "application/json");
    let mut seen = r.seen.lock().unwrap();
    let s = seen.entry(h("x-csg-delivery")).or_default();
    s.attempts += 1;
    s.event = h("x-csg-event");
    if r.down.load(Ordering::SeqCst) || s.attempts <= r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if s.accepted.is_none() {
        s.accepted = Some(serde_json::from_slice(&body).unwrap());
    }
    StatusCode::OK
}

fn start_receiver(rt: &tokio::runtime::Runtime, receiver: Arc<Receiver>) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver);
    rt.spawn(async move { axum::serve(listener, app).await });
    port
}

fn deliveries(c: &Consoled, admin: &str, query: &str) -> Vec<Value> {
    c.json(&format!("/v1/webhooks/deliveries{query}"), admin)["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn webhooks_are_signed_retried_and_a_pending_one_survives_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver {
        secret: Secret::from_bytes(SECRET.as_bytes()),
        fail_first: 2,
        down: AtomicBool::new(false),
        seen: Mutex::new(HashMap::new()),
        bad_signatures: Mutex::new(0),
    });
    let port = start_receiver(&rt, receiver.clone());

    let broker = Broker::start();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("hook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut c = consoled(
        &broker,
        &format!(
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\nevents = [\"presence\"]\nmax_attempts = 8\ntimeout_ms = 2000\n",
            secret_file.display()
        ),
    );
    let admin = c.token_with(&["--name", "admin", "--scope", "admin"]);
    let reader = c.token_with(&["--name", "reader", "--scope", "read"]);
    c.start();
    assert_eq!(c.get("/v1/webhooks/deliveries", Some(&reader)).status, 403);
    assert_eq!(
        c.get("/v1/webhooks/deliveries?state=lost", Some(&admin))
            .status,
        400
    );

    // The agent's online: refused twice by the receiver, accepted at the third attempt.
    let mut cfg = AgentConfig::new("gw-hook-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    let accepted = |to: &str| {
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| s.accepted.as_ref().is_some_and(|b| b["to"] == to))
            .map(|(id, s)| (id.clone(), s.clone()))
    };
    wait_for(Duration::from_secs(30), || accepted("online").is_some())
        .unwrap_or_else(|| panic!("online never delivered\n{}", c.log()));
    let (id, seen) = accepted("online").unwrap();
    let id_n: i64 = id.parse().unwrap();
    assert_eq!(
        seen.attempts, 3,
        "two refusals, then the third attempt: {seen:?}"
    );
    assert_eq!(seen.event, "presence");
    let body = seen.accepted.unwrap();
    assert_eq!(body["type"], "presence");
    assert_eq!(body["instance_id"], "gw-hook-1");
    assert_eq!(body["group_id"], "GID_csg");
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);

    // The API shows it delivered after three attempts.
    wait_for(TIMEOUT, || {
        deliveries(&c, &admin, "?state=delivered")
            .iter()
            .any(|d| d["id"] == id_n)
    })
    .expect("the delivery never showed delivered");
    let d = deliveries(&c, &admin, "?state=delivered")
        .into_iter()
        .find(|d| d["id"] == id_n)
        .unwrap();
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["last_status"], 200, "{d}");
    assert_eq!(d["webhook"], "ops");
    assert_eq!(d["payload"]["instance_id"], "gw-hook-1");
    assert!(d["next_attempt_ms"].is_null(), "{d}");
    // Its live response matches the OpenAPI document's schema.
    let doc: Value = serde_json::from_str(&c.get("/v1/openapi.json", None).body).unwrap();
    let root = serde_json::json!({
        "$ref": "#/components/schemas/DeliveryPage",
        "components": doc["components"],
    });
    let page = c.json("/v1/webhooks/deliveries", &admin);
    let v = jsonschema::draft202012::new(&root).unwrap();
    let errors: Vec<String> = v.iter_errors(&page).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{page}");
    assert!(doc["paths"]["/v1/events"]["get"].is_object());
    assert!(doc["paths"]["/metrics"]["get"].is_object());

    // The receiver goes down; the agent dies; its offline is attempted and stays pending.
    receiver.down.store(true, Ordering::SeqCst);
    agent.kill9();
    wait_for(Duration::from_secs(30), || {
        deliveries(&c, &admin, "?state=pending")
            .iter()
            .any(|d| d["payload"]["to"] == "offline" && d["attempts"].as_u64() >= Some(1))
    })
    .unwrap_or_else(|| panic!("the offline delivery was never attempted\n{}", c.log()));
    let pending = deliveries(&c, &admin, "?state=pending");
    let offline_id = pending
        .iter()
        .find(|d| d["payload"]["to"] == "offline")
        .unwrap()["id"]
        .to_string();
    let offline_n: i64 = offline_id.parse().unwrap();

    // Stopped with it pending; the receiver comes back; started again, it is sent.
    assert!(c.stop().is_some_and(|s| s.success()));
    let refused_before = receiver.seen.lock().unwrap()[&offline_id].attempts;
    receiver.down.store(false, Ordering::SeqCst);
    c.start();
    wait_for(Duration::from_secs(30), || {
        receiver.seen.lock().unwrap()[&offline_id]
            .accepted
            .is_some()
    })
    .unwrap_or_else(|| {
        panic!(
            "the pending delivery was not sent after the restart\n{}",
            c.log()
        )
    });
    let seen = receiver.seen.lock().unwrap()[&offline_id].clone();
    assert!(seen.attempts > refused_before, "{seen:?}");
    assert_eq!(seen.accepted.unwrap()["instance_id"], "gw-hook-1");
    wait_for(TIMEOUT, || {
        deliveries(&c, &admin, "?state=delivered")
            .iter()
            .any(|d| d["id"] == offline_n)
    })
    .expect("the API never showed the resent delivery delivered");
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    let metrics = scrape(c.dir.path(), c.port);
    assert!(
        metrics["csg_webhook_deliveries_total{webhook=\"ops\",outcome=\"delivered\"}"] >= 1.0,
        "{metrics:?}"
    );
    assert!(c.stop().is_some_and(|s| s.success()));
    assert!(
        !c.log().contains(SECRET),
        "the webhook secret must never reach the log"
    );
}

/// Two replicas on one PostgreSQL database, each with the same webhook, a real receiver and
/// a real agent: every presence change is delivered once (not once per replica), both
/// replicas' streams carry the same events under the same ids, and a stream resumed with
/// `Last-Event-ID` (or `?last_event_id=`) on either replica, or after a restart, replays what
/// came after that id and nothing before.
#[test]
fn two_replicas_deliver_each_presence_change_once_and_stream_one_log() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver {
        secret: Secret::from_bytes(SECRET.as_bytes()),
        fail_first: 0,
        down: AtomicBool::new(false),
        seen: Mutex::new(HashMap::new()),
        bad_signatures: Mutex::new(0),
    });
    let port = start_receiver(&rt, receiver.clone());
    let pg = common::PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let url = pg.url();
    let broker = Broker::start();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("hook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let hook = format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\nevents = [\"presence\"]\n",
        secret_file.display()
    );
    let group = csg_e2e::unique("obs-rep");
    let replica = || {
        Consoled::with(
            &broker.url(),
            Options {
                store: Some(url.clone()),
                share_group: Some(group.clone()),
                http: "request_timeout_ms = 2000".to_owned(),
                extra: hook.clone(),
                ..Options::default()
            },
        )
    };
    let mut a = replica();
    let mut b = replica();
    // Tokens live in the database: one made through A works on B.
    let reader = a.token_with(&["--name", "reader", "--scope", "read"]);
    let others = a.token_with(&[
        "--name",
        "others",
        "--scope",
        "read",
        "--group",
        "GID_other",
    ]);
    a.start();
    b.start();
    let on_a = stream(&a, "rep-a", "?types=presence", &reader);
    let on_b = stream(&b, "rep-b", "?types=presence", &reader);

    let mut cfg = AgentConfig::new("gw-rep-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    for s in [&on_a, &on_b] {
        wait_for(Duration::from_secs(30), || {
            s.presence_of("gw-rep-1", "online").is_some()
        })
        .unwrap_or_else(|| panic!("no online event\n{}\n{}\n{}", s.text(), a.log(), b.log()));
    }
    std::thread::sleep(Duration::from_secs(2));
    agent.kill9();
    for s in [&on_a, &on_b] {
        wait_for(Duration::from_secs(30), || {
            s.presence_of("gw-rep-1", "offline").is_some()
        })
        .unwrap_or_else(|| panic!("no offline event\n{}\n{}\n{}", s.text(), a.log(), b.log()));
    }
    // Both replicas saw both changes; each had time to store its copy and its deliveries.
    std::thread::sleep(Duration::from_secs(3));
    let ours = |s: &Stream| -> Vec<(String, String)> {
        s.events()
            .into_iter()
            .filter(|e| e.event == "presence" && e.data["instance_id"] == "gw-rep-1")
            .map(|e| {
                (
                    e.id.clone().unwrap(),
                    e.data["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (seen_a, seen_b) = (ours(&on_a), ours(&on_b));
    eprintln!("replica A streamed {seen_a:?}, replica B {seen_b:?}");
    assert_eq!(seen_a, seen_b, "the replicas' streams differ");
    let tos: Vec<&str> = seen_a.iter().map(|(_, to)| to.as_str()).collect();
    assert_eq!(tos, ["online", "offline"], "each change once: {seen_a:?}");

    // The receiver got each change once, under the stream's ids.
    let delivered: Vec<(i64, String)> = {
        let seen = receiver.seen.lock().unwrap();
        let mut v: Vec<(i64, String)> = seen
            .values()
            .filter_map(|s| s.accepted.as_ref())
            .filter(|b| b["instance_id"] == "gw-rep-1")
            .map(|b| {
                (
                    b["event_id"].as_i64().unwrap(),
                    b["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let streamed: Vec<(i64, String)> = seen_a
        .iter()
        .map(|(id, to)| (id.parse().unwrap(), to.clone()))
        .collect();
    assert_eq!(delivered, streamed, "one delivery per presence change");
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);

    // Resumed after the online: the offline and nothing before, on either replica, by header
    // or by query; a token of another group gets nothing of it.
    let online_id = &seen_a[0].0;
    let resumed_b = stream_with(
        &b,
        "resume-b",
        "?types=presence",
        &reader,
        &format!("Last-Event-ID: {online_id}\n"),
    );
    let resumed_a = stream(
        &a,
        "resume-a",
        &format!("?types=presence&last_event_id={online_id}"),
        &reader,
    );
    let foreign = stream(&a, "resume-foreign", "?last_event_id=0", &others);
    for s in [&resumed_a, &resumed_b] {
        wait_for(TIMEOUT, || !ours(s).is_empty())
            .unwrap_or_else(|| panic!("nothing replayed: {}", s.text()));
        assert_eq!(ours(s), seen_a[1..], "{}", s.text());
        assert!(
            s.events()
                .iter()
                .all(|e| e.id.as_deref().unwrap().parse::<i64>().unwrap()
                    > online_id.parse::<i64>().unwrap()),
            "{}",
            s.text()
        );
    }
    // Ids survive a restart: A stopped and started again replays the same events, same ids.
    assert!(a.stop().is_some_and(|s| s.success()));
    a.start();
    let after_restart = stream(&a, "restart-a", "?types=presence&last_event_id=0", &reader);
    wait_for(TIMEOUT, || ours(&after_restart).len() >= 2).unwrap_or_else(|| {
        panic!(
            "nothing replayed after the restart: {}",
            after_restart.text()
        )
    });
    assert_eq!(ours(&after_restart), seen_a);
    assert!(foreign.events().is_empty(), "{}", foreign.text());
    assert!(a.stop().is_some_and(|s| s.success()));
    assert!(b.stop().is_some_and(|s| s.success()));
}

/// Job events per token: two tokens limited to the same group each run a job over the group's
/// gateway (a real agent answers `sys.ping`). Each token's stream carries the events of the
/// jobs it created, live and replayed from `Last-Event-ID`, never the other's; a token of every
/// group gets all of them. The bodies are as documented: the creator is not in them.
#[test]
fn a_group_limited_token_streams_the_events_of_the_jobs_it_created_and_no_other() {
    let broker = Broker::start();
    let mut c = consoled(&broker, "");
    let reader = c.token_with(&["--name", "reader", "--scope", "read"]);
    let limited =
        |name: &str| c.token_with(&["--name", name, "--scope", "operate", "--group", "GID_csg"]);
    let (alice, bob) = (limited("alice"), limited("bob"));
    c.start();
    let mut cfg = AgentConfig::new("gw-own-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    wait_for(TIMEOUT, || {
        c.json("/v1/instances?id=gw-own-1", &reader)["items"][0]["presence"]["state"] == "online"
    })
    .unwrap_or_else(|| panic!("the agent never came online\n{}", c.log()));

    let all = stream(&c, "jobs-all", "?types=job", &reader);
    let of_alice = stream(&c, "jobs-alice", "?types=job", &alice);
    let of_bob = stream(&c, "jobs-bob", "?types=job", &bob);
    // A job started and run to its end.
    let run = |token: &str| -> String {
        let body = serde_json::json!({"method": "sys.ping", "params": {},
            "target": {"instances": ["gw-own-1"]}, "rate_per_minute": 6000, "max_in_flight": 1,
            "execution_timeout_ms": 10000});
        let id = c
            .request("POST", "/v1/jobs", Some(&body), &[], Some(token))
            .assert_ok(201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_for(TIMEOUT, || {
            c.json(&format!("/v1/jobs/{id}"), token)["state"] == "succeeded"
        })
        .unwrap_or_else(|| panic!("job {id} never succeeded\n{}", c.log()));
        id
    };
    let (a1, b1, a2) = (run(&alice), run(&bob), run(&alice));
    let ended = |s: &Stream, job: &str| {
        s.events()
            .iter()
            .any(|e| e.data["id"] == job && e.data["state"] == "succeeded")
    };
    // Events come in the log's order: once a job's end is on a stream, every earlier event
    // the stream was to carry is on it too.
    for (s, last) in [(&all, &a2), (&of_alice, &a2), (&of_bob, &b1)] {
        wait_for(TIMEOUT, || ended(s, last))
            .unwrap_or_else(|| panic!("{last} never ended on the stream: {}", s.text()));
    }
    let jobs_on = |s: &Stream| -> Vec<String> {
        let mut ids: Vec<String> = s
            .events()
            .iter()
            .map(|e| e.data["id"].as_str().unwrap().to_owned())
            .collect();
        ids.dedup();
        ids
    };
    assert_eq!(
        jobs_on(&all),
        [a1.as_str(), b1.as_str(), a2.as_str()],
        "{}",
        all.text()
    );
    assert_eq!(
        jobs_on(&of_alice),
        [a1.as_str(), a2.as_str()],
        "{}",
        of_alice.text()
    );
    assert_eq!(jobs_on(&of_bob), [b1.as_str()], "{}", of_bob.text());
    assert!(ended(&of_alice, &a1), "{}", of_alice.text());
    for e in of_alice.events() {
        let mut keys: Vec<&str> = e
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["counts", "event_id", "id", "state", "type"], "{e:?}");
        assert_eq!(e.event, "job");
    }

    // Replayed from the start of the log: the same events under the same ids, nothing of bob's.
    let replayed = stream_with(
        &c,
        "jobs-alice-replay",
        "?types=job",
        &alice,
        "Last-Event-ID: 0\n",
    );
    wait_for(TIMEOUT, || ended(&replayed, &a2))
        .unwrap_or_else(|| panic!("the replay never reached {a2}: {}", replayed.text()));
    let seen = |s: &Stream| -> Vec<(Option<String>, Value)> {
        s.events().into_iter().map(|e| (e.id, e.data)).collect()
    };
    assert_eq!(seen(&replayed), seen(&of_alice));
    agent.kill9();
    assert!(c.stop().is_some_and(|s| s.success()));
}
