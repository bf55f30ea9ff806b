//! Server time of the web console's pages over a large fleet: N gateways (heartbeats of the
//! protocol's example size) written to a store, the real `csg-consoled` on it, a signed-in
//! client timing each page. Two measurements, not checks; run them on purpose,
//!
//!     WEB_BENCH_N=50000 cargo nextest run --release -p csg-consoled --test web_bench --run-ignored only --no-capture
//!
//! and read their lines (p50 and p95 of the time to the whole response, and its size):
//! - 20 loads of each page (the fleet, filtered, searched, in each order the table sorts by on
//!   its first page and half-way through the fleet, a gateway, the jobs list, a job of 100
//!   executions, the new-job form, the audit log), and the bytes of each page and asset;
//! - 50 loads of the fleet page and 50 of its rows alone (`x-fleet-rows: 1`, what an open page
//!   asks for every 5 s), unfiltered, offline only and searched.
//!
//! - a fleet going offline at once: `WEB_BENCH_OFFLINE` (1000) simulated agents (`csg-sim`)
//!   killed together, the broker publishing their Wills; the time from the kill to each
//!   gateway's offline event on the fleet page's own stream (`/ui/events`, the signed-in
//!   session's), which the open page redraws its rows and counts from.
//!
//! `WEB_BENCH_STORE=postgres` runs them on a private PostgreSQL instead of SQLite. A search
//! for `gw-0049` needs at least 5,000 gateways to match.

// A benchmark: a failed unwrap stops it, with its location.
#![allow(clippy::unwrap_used)]

mod common;
use csg_consoled::store::{
    self, HostSample, InstanceRow, JsonText, NewToken, Presence, Region, Scope, StorageSummary,
    TokenName, TokenSecret,
};
use csg_e2e::broker::free_port;
use csg_e2e::process::{child_env, ChildGuard};
use csg_e2e::Broker;
use csg_protocol::identity::{GroupId, InstanceId};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// A signed-in client of a real `csg-consoled` over a store of `n` gateways.
struct Bench {
    n: usize,
    engine: &'static str,
    http: reqwest::Client,
    base: String,
    /// The session's cookie (`name=value`).
    sess: String,
    secret: TokenSecret,
    _child: ChildGuard,
    broker: Broker,
    _pg: Option<common::PgServer>,
    _dir: tempfile::TempDir,
}

/// `WEB_BENCH_N` gateways (10,000 without it) on `WEB_BENCH_STORE` (sqlite, the default, or
/// postgres), the release or test profile's `csg-consoled` on them, an `admin` signed in.
async fn start_bench() -> Bench {
    // reqwest is built without a crypto provider; it speaks plain HTTP on loopback here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("WEB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let pg = match std::env::var("WEB_BENCH_STORE").as_deref() {
        Ok("postgres") => Some(
            tokio::task::spawn_blocking(common::PgServer::start)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}")),
        ),
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("WEB_BENCH_STORE={other}: sqlite or postgres"),
    };
    let url = match &pg {
        Some(server) => server.url(),
        None => format!("sqlite://{}", dir.path().join("c.db").display()),
    };
    let engine = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let st = store::open(&url).await.unwrap();
    let hb = json!({"v":1,"type":"heartbeat","instance_id":"gw","group_id":"GID_csg","seq":42,"ts_ms":1764133100000u64,
        "agent_version":"0.1.0","uptime_s":1260,"interval_s":3600,
        "system":{"cpu_pct":3.5,"load1":0.12,"mem_total":4111450112u64,"mem_used":612352000u64},
        "disks":[{"mount":"/","fs":"ext4","total":31526481920u64,"avail":20112343040u64}],
        "services":{},"storage":{}});
    let now = csg_consoled::now_ms();
    let rows: Vec<InstanceRow> = (0..n)
        .map(|i| InstanceRow {
            region: Region::new("default").unwrap(),
            instance_id: InstanceId::new(format!("gw-{i:06}")).unwrap(),
            group_id: GroupId::new(format!("GID_g{}", i % 20)).unwrap(),
            presence: if i % 10 == 0 {
                Presence::Offline
            } else {
                Presence::Online
            },
            // Each its own time of the last change, in no relation to its id.
            since_ms: 1_764_000_000_000 + ((i * 7919) % n) as i64 * 1000,
            reason: Some("connected".into()),
            // Heard from just now, heartbeating hourly: the online stay online while the pages
            // are timed (a presence changing under the cursor would move the rows timed).
            last_seen_ms: Some(now),
            agent_version: match i % 7 {
                0 => None,
                1 | 2 => Some("0.1.0".into()),
                _ => Some("0.2.0".into()),
            },
            heartbeat: Some(JsonText::of(&hb).unwrap()),
            storage: Some(StorageSummary {
                count: 3,
                drift: u64::from(i % 50 == 0),
            }),
            updated_ms: 1,
            sample: Some(HostSample::of(
                1_764_133_100_000,
                3.5,
                612_352_000,
                4_111_450_112,
            )),
        })
        .collect();
    for c in rows.chunks(5000) {
        st.upsert_instances(c).await.unwrap();
    }
    // The gateway page timed shows a full chart: its row written with 60 heartbeats.
    let mut timed = rows[123].clone();
    for k in 1..HostSample::KEPT as i64 {
        timed.updated_ms = 1 + k;
        timed.sample = Some(HostSample::of(
            u64::try_from(now).unwrap() - (60 - k as u64) * 3_600_000,
            (k % 50) as f32,
            612_352_000 + k as u64 * 1_000_000,
            4_111_450_112,
        ));
        st.upsert_instances(std::slice::from_ref(&timed))
            .await
            .unwrap();
    }
    let secret = TokenSecret::generate().unwrap();
    st.create_token(&NewToken {
        name: TokenName::new("b").unwrap(),
        hash: secret.hash(),
        // Admin: every page (the audit log, the new-job form) and the API's job creation.
        scopes: vec![Scope::Admin],
        groups: vec![],
        created_ms: 1,
    })
    .await
    .unwrap();
    st.close().await;
    let broker = Broker::start();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[identity]\ngroup_id = \"GID_console\"\nconsole_id = \"bench\"\n[mqtt]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{url}\"\n[fleet]\nshare_group = \"b\"\n", broker.url())).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_csg-consoled"));
    cmd.arg("--config").arg(&cfg);
    child_env(&mut cmd);
    let child = ChildGuard::spawn("csg-consoled", cmd, dir.path()).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "csg-consoled never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http.get(format!("{base}/ui/signin")).send().await.unwrap();
    let ck = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = r.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &html[at..at + html[at..].find('"').unwrap()];
    let r = http
        .post(format!("{base}/ui/signin"))
        .header("cookie", &ck)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token={}", secret.expose()))
        .send()
        .await
        .unwrap();
    let sess = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    Bench {
        n,
        engine,
        http,
        base,
        sess,
        secret,
        _child: child,
        broker,
        _pg: pg,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: WEB_BENCH_N=50000 … --run-ignored only --no-capture"]
async fn fleet_and_gateway_pages_over_a_large_fleet() {
    let b = start_bench().await;
    let (n, engine, secret) = (b.n, b.engine, &b.secret);
    let (http, base, sess) = (b.http.clone(), b.base.clone(), b.sess.clone());
    // Two jobs over 100 gateways each, through the API, at a rate that leaves them running:
    // a job's page shows a full page of executions, the list and the audit log have rows.
    let ids: Vec<String> = (0..100).map(|i| format!("gw-{:06}", i * 7 + 1)).collect();
    let mut job_id = String::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(secret.expose())
            .header("content-type", "application/json")
            .body(
                json!({"method": "sys.ping", "target": {"instances": ids},
                    "rate_per_minute": 1, "max_in_flight": 1, "execution_timeout_ms": 30000})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        job_id = v["id"].as_str().unwrap().to_owned();
    }
    let job_path = format!("/ui/jobs/{job_id}");
    // The fleet page half-way through the fleet in each order: the cursor after n/2 rows, as
    // the API pages the same query (a page's cursor is bound to its filter and order only).
    let mut deep: Vec<String> = Vec::new();
    for sort in ["id", "-since", "version", "-presence", "-drift"] {
        let mut cursor: Option<String> = None;
        for _ in 0..(n / 2 / 1000).max(1) {
            let mut q = format!("/v1/instances?sort={sort}&limit=1000&fields=presence");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let r = http
                .get(format!("{base}{q}"))
                .bearer_auth(secret.expose())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{q}");
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            cursor = v["next_cursor"].as_str().map(str::to_owned);
        }
        let c = cursor.unwrap();
        deep.push(format!("/ui/?sort={sort}&cursor={c}"));
    }
    let page = http
        .get(format!("{base}/ui/"))
        .header("cookie", &sess)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (at, _) in page.match_indices("/ui/assets/") {
        let url = &page[at..at + page[at..].find('"').unwrap()];
        let len = http
            .get(format!("{base}{url}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        eprintln!("asset {url}: {len} bytes");
    }
    for path in [
        "/ui/",
        "/ui/?presence=offline",
        "/ui/?q=gw-0049",
        "/ui/?drift=true",
        "/ui/?sort=-since",
        "/ui/?sort=version",
        "/ui/?sort=-presence",
        "/ui/?sort=-drift",
        "/ui/?sort=group&presence=offline",
        "/ui/?sort=-since&drift=true",
        deep[0].as_str(),
        deep[1].as_str(),
        deep[2].as_str(),
        deep[3].as_str(),
        deep[4].as_str(),
        "/ui/gateways/gw-000123",
        "/ui/jobs",
        job_path.as_str(),
        "/ui/jobs/new?presence=online",
        "/ui/audit",
    ] {
        let mut t = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let t1 = Instant::now();
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", &sess)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.unwrap();
            bytes = body.len();
            // A fleet page timed must be one that lists gateways, not one that says why not.
            if path.starts_with("/ui/?") || path == "/ui/" {
                let text = String::from_utf8_lossy(&body);
                assert!(
                    text.contains("data-gw="),
                    "{path}: no rows\n{}",
                    text.find("flash")
                        .map_or("", |at| &text[at..(at + 300).min(text.len())])
                );
            }
            t.push(t1.elapsed().as_secs_f64() * 1000.0);
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // A deep page's cursor is long and says nothing to a reader: its order and depth do.
        let shown = match path.find("&cursor=") {
            Some(at) => format!("{} (page {} of 100 rows)", &path[..at], n / 2 / 100 + 1),
            None => path.to_owned(),
        };
        eprintln!(
            "{engine} N={n} {shown}: p50 {:.1} ms, p95 {:.1} ms, {bytes} bytes",
            t[10], t[18]
        );
    }
}

/// What the fleet page's own refresh costs the server: 50 loads of the fleet page and 50 of
/// its rows alone (`x-fleet-rows: 1`, what the open page asks for every 5 s), unfiltered,
/// offline only, and a text search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: WEB_BENCH_N=50000 … --run-ignored only --no-capture"]
async fn the_fleet_pages_rows_alone_against_the_whole_page() {
    let b = start_bench().await;
    for path in ["/ui/", "/ui/?presence=offline", "/ui/?q=gw-0049"] {
        for rows in [false, true] {
            let mut t = Vec::new();
            let mut bytes = 0;
            for _ in 0..50 {
                let mut req = b
                    .http
                    .get(format!("{}{path}", b.base))
                    .header("cookie", &b.sess);
                if rows {
                    req = req.header("x-fleet-rows", "1");
                }
                let t1 = Instant::now();
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers().contains_key("x-fleet-rows"), rows);
                bytes = r.bytes().await.unwrap().len();
                t.push(t1.elapsed().as_secs_f64() * 1000.0);
            }
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            eprintln!(
                "{} N={} {path} {}: p50 {:.1} ms, p95 {:.1} ms, {bytes} bytes",
                b.engine,
                b.n,
                if rows { "rows alone" } else { "whole page" },
                t[25],
                t[47]
            );
        }
    }
}

/// A fleet going offline at once: from the kill of `WEB_BENCH_OFFLINE` simulated agents (their
/// Wills published by the broker) to each one's offline event on the page's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: WEB_BENCH_OFFLINE=1000 … --run-ignored only --no-capture"]
async fn a_fleet_going_offline_at_once_reaches_the_pages_stream() {
    let b = start_bench().await;
    let count: usize = std::env::var("WEB_BENCH_OFFLINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut cmd = Command::new(csg_e2e::bins::sim());
    cmd.arg("--broker")
        .arg(b.broker.url())
        .args([
            "--count",
            &count.to_string(),
            "--prefix",
            "will-",
            "--heartbeat-s",
            "5",
        ])
        .args(["--report-ms", "0"]);
    child_env(&mut cmd);
    let mut sim = ChildGuard::spawn("csg-sim", cmd, b._dir.path()).unwrap();
    // Every simulated gateway online in the service first.
    let t0 = Instant::now();
    loop {
        let mut online = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut q =
                "/v1/instances?presence=online&q=will-&limit=1000&fields=presence".to_owned();
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let r = b
                .http
                .get(format!("{}{q}", b.base))
                .bearer_auth(b.secret.expose())
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            online += v["items"].as_array().map_or(0, Vec::len);
            cursor = v["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        if online == count {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{online} of {count} simulated gateways online"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{count} simulated gateways online after {:?}", t0.elapsed());
    // The page's stream, as the open fleet page holds it.
    let mut stream = b
        .http
        .get(format!("{}/ui/events", b.base))
        .header("cookie", &b.sess)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            // One event ends with a blank line; an offline event of a simulated gateway counts.
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if event.contains("event: presence")
                    && event.contains("\"to\":\"offline\"")
                    && event.contains("will-")
                {
                    let _ = tx.send(Instant::now());
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    sim.kill9();
    let mut at: Vec<f64> = Vec::with_capacity(count);
    while at.len() < count {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(t)) => at.push(t.duration_since(killed).as_secs_f64() * 1000.0),
            _ => panic!("{} of {count} offline events within 60 s", at.len()),
        }
    }
    reader.abort();
    at.sort_by(|x, y| x.partial_cmp(y).unwrap());
    eprintln!(
        "{} N={} {count} gateways killed at once: offline on the page's stream first {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
        b.engine,
        b.n,
        at[0],
        at[count / 2],
        at[count * 99 / 100],
        at[count - 1]
    );
}
