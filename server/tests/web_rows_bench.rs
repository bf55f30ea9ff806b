//! What the fleet page's own refresh costs the server: N gateways written to a SQLite store
//! (as `web_bench.rs` writes them), the real `csg-consoled` on it, a signed-in client timing
//! 50 loads of the fleet page and 50 of its rows alone (`x-fleet-rows: 1`, what the open page
//! asks for every 5 s), unfiltered, offline only, and a text search. A measurement, not a
//! check: run it on purpose,
//!
//!     cargo build --release -p csg-consoled
//!     WEB_BENCH_N=50000 CSG_CONSOLED=target/release/csg-consoled \
//!       cargo nextest run -p csg-consoled --test web_rows_bench --run-ignored only --no-capture
//!
//! and read its lines (p50 and p95 of the time to the whole response, and its size).
//! `CSG_CONSOLED` names the service's binary (a release build for figures worth quoting);
//! without it the test profile's own is timed.

// A benchmark: a failed unwrap stops it, with its location.
#![allow(clippy::unwrap_used)]
use csg_consoled::store::{
    self, InstanceRow, JsonText, NewToken, Presence, Region, Scope, StorageSummary, TokenName,
    TokenSecret,
};
use csg_e2e::broker::free_port;
use csg_e2e::process::{child_env, ChildGuard};
use csg_e2e::Broker;
use csg_protocol::identity::{GroupId, InstanceId};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: WEB_BENCH_N=50000 CSG_CONSOLED=… --run-ignored only --no-capture"]
async fn the_fleet_pages_rows_alone_against_the_whole_page() {
    // reqwest is built without a crypto provider; it speaks plain HTTP on loopback here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("WEB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let bin = std::env::var("CSG_CONSOLED")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_csg-consoled").to_owned());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let st = store::open(&url).await.unwrap();
    let hb = json!({"v":1,"type":"heartbeat","instance_id":"gw","group_id":"GID_csg","seq":42,"ts_ms":1764133100000u64,
        "agent_version":"0.1.0","uptime_s":1260,"interval_s":30,
        "system":{"cpu_pct":3.5,"load1":0.12,"mem_total":4111450112u64,"mem_used":612352000u64},
        "disks":[{"mount":"/","fs":"ext4","total":31526481920u64,"avail":20112343040u64}],
        "services":{},"storage":{}});
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
            since_ms: 1_764_000_000_000,
            reason: Some("connected".into()),
            last_seen_ms: Some(1_764_000_000_000),
            agent_version: Some(if i % 3 == 0 { "0.1.0" } else { "0.2.0" }.into()),
            heartbeat: Some(JsonText::of(&hb).unwrap()),
            storage: Some(StorageSummary {
                count: 3,
                drift: u64::from(i % 50 == 0),
            }),
            updated_ms: 1,
        })
        .collect();
    for c in rows.chunks(5000) {
        st.upsert_instances(c).await.unwrap();
    }
    let secret = TokenSecret::generate().unwrap();
    st.create_token(&NewToken {
        name: TokenName::new("b").unwrap(),
        hash: secret.hash(),
        scopes: vec![Scope::Read],
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
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&cfg);
    child_env(&mut cmd);
    let _c = ChildGuard::spawn("csg-consoled", cmd, dir.path()).unwrap();
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
    eprintln!("timing {bin}");
    for path in ["/ui/", "/ui/?presence=offline", "/ui/?q=gw-0049"] {
        for rows in [false, true] {
            let mut t = Vec::new();
            let mut bytes = 0;
            for _ in 0..50 {
                let mut req = http.get(format!("{base}{path}")).header("cookie", &sess);
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
                "N={n} {path} {}: p50 {:.1} ms, p95 {:.1} ms, {bytes} bytes",
                if rows { "rows alone" } else { "whole page" },
                t[25],
                t[47]
            );
        }
    }
}
