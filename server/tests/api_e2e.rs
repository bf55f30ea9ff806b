//! The console service as an operator runs it: the real `csg-consoled` binary on a loopback
//! port with a SQLite file, a real Mosquitto and a real agent, and HTTP through `curl`.
//!
//! Build the agent first: `cargo build -p csg-agent --bins` (cargo builds `csg-consoled`).

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

mod common;

use common::consoled::{wait_for, Consoled, Options, CONSOLED};
use csg_e2e::process;
use csg_e2e::{now_ms, Agent, AgentConfig, Broker, TIMEOUT, WORKSPACE_VERSION};
use serde_json::Value;

fn presence_of(c: &Consoled, token: &str, id: &str) -> Option<String> {
    let r = c.get(&format!("/v1/instances?id={id}"), Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["items"][0]["presence"]["state"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn the_api_lists_an_agent_online_then_offline_and_keeps_it_across_a_restart() {
    let broker = Broker::start();
    let mut c = Consoled::new(&broker.url(), "");
    // The token is created before the service ever ran: `token create` migrates the store.
    let token = c.token("e2e-reader", "read");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(c.dir.path().join("state"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o700,
        "the store's directory is for its owner only"
    );
    c.start();
    assert_eq!(c.get("/healthz", None).status, 200);
    let ready = c.get("/readyz", None).json();
    assert_eq!(ready["ready"], true, "{ready}");

    let mut cfg = AgentConfig::new("gw-api-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);

    // Online through the API: the lag from the agent's own evidence (its online presence's
    // time, or its heartbeat's) to the API showing it.
    wait_for(TIMEOUT, || {
        presence_of(&c, &token, "gw-api-1").as_deref() == Some("online")
    })
    .unwrap_or_else(|| panic!("never online via the API\n{}", c.log()));
    let seen = now_ms();
    let listed = c.get("/v1/instances", Some(&token)).json();
    assert!(listed["next_cursor"].is_null(), "{listed}");
    let item = &listed["items"][0];
    assert_eq!(item["instance_id"], "gw-api-1");
    assert_eq!(item["group_id"], "GID_csg");
    assert_eq!(item["region"], "default");
    let since = item["presence"]["since_ms"].as_u64().unwrap();
    let lag = seen.saturating_sub(since);
    eprintln!(
        "online visible through the API {lag} ms after the agent's evidence ({})",
        item["presence"]["reason"]
    );
    assert!(
        lag <= 2_000,
        "online visible {lag} ms after the agent said so"
    );

    // The detail carries the heartbeat's figures, and they move.
    let seq_of = |c: &Consoled| {
        let d = c.get("/v1/instances/gw-api-1", Some(&token));
        assert_eq!(d.status, 200, "{}", d.body);
        d.json()
    };
    let first = seq_of(&c);
    assert_eq!(first["agent_version"], WORKSPACE_VERSION);
    assert!(
        first["host"]["system"]["mem_total"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert!(first["storage"]["count"].is_u64(), "{first}");
    assert!(first["last_seen_ms"].as_u64().unwrap() > 0);
    let seq0 = first["heartbeat"]["seq"].as_u64().unwrap();
    wait_for(TIMEOUT, || {
        seq_of(&c)["heartbeat"]["seq"].as_u64().unwrap() > seq0
    })
    .expect("the heartbeat's figures never moved");

    // The OpenAPI document, served without a token, describes what the API answers.
    let doc = c.get("/v1/openapi.json", None);
    assert_eq!(doc.status, 200, "{}", doc.body);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in ["/healthz", "/readyz", "/v1/instances", "/v1/instances/{id}"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    let conforms = |schema: &str, value: &Value| {
        let root = serde_json::json!({
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"],
        });
        let v = jsonschema::draft202012::new(&root).unwrap();
        let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{schema}: {errors:?}\n{value}");
    };
    conforms("InstancePage", &listed);
    conforms("InstanceDetail", &first);
    conforms("Ready", &ready);
    conforms(
        "Problem",
        &c.get("/v1/instances?limit=0", Some(&token)).json(),
    );

    // Keyset paging through the API: a second gateway, pages of one.
    let mut cfg2 = AgentConfig::new("gw-api-2", &broker.url());
    cfg2.heartbeat_interval_s = 1;
    let _agent2 = Agent::spawn(&cfg2);
    wait_for(TIMEOUT, || {
        presence_of(&c, &token, "gw-api-2").as_deref() == Some("online")
    })
    .expect("the second agent never came online via the API");
    let page1 = c.get("/v1/instances?limit=1&q=gw-api", Some(&token)).json();
    assert_eq!(page1["items"][0]["instance_id"], "gw-api-1", "{page1}");
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let page2 = c
        .get(
            &format!("/v1/instances?limit=1&q=gw-api&cursor={cursor}"),
            Some(&token),
        )
        .json();
    assert_eq!(page2["items"][0]["instance_id"], "gw-api-2", "{page2}");
    if let Some(next) = page2["next_cursor"].as_str() {
        let page3 = c
            .get(
                &format!("/v1/instances?limit=1&q=gw-api&cursor={next}"),
                Some(&token),
            )
            .json();
        assert_eq!(page3["items"].as_array().unwrap().len(), 0, "{page3}");
    }
    // Field selection: only the members asked for, and the key.
    let narrow = c
        .get(
            "/v1/instances?q=gw-api&fields=presence,agent_version",
            Some(&token),
        )
        .json();
    let item = narrow["items"][0].as_object().expect("an item");
    let mut keys: Vec<&str> = item.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["agent_version", "instance_id", "presence"],
        "{narrow}"
    );
    // Drift: fresh agents have none, so they are listed without drift and not with it.
    let with = c
        .get("/v1/instances?q=gw-api&drift=true", Some(&token))
        .json();
    assert_eq!(with["items"].as_array().unwrap().len(), 0, "{with}");
    let without = c
        .get("/v1/instances?q=gw-api&drift=false", Some(&token))
        .json();
    assert_eq!(without["items"].as_array().unwrap().len(), 2, "{without}");
    c.get("/v1/instances?fields=colour", Some(&token))
        .assert_problem(400);

    // A cursor under another filter would skip rows silently: refused.
    c.get(
        &format!("/v1/instances?limit=1&q=gw&cursor={cursor}"),
        Some(&token),
    )
    .assert_problem(400);

    // Tokens limited to groups, created while the service runs (a second SQLite writer).
    let others = c.token_with(&[
        "--name",
        "e2e-others",
        "--scope",
        "read",
        "--group",
        "GID_other",
    ]);
    let ours = c.token_with(&[
        "--name",
        "e2e-ours",
        "--scope",
        "operate",
        "--group",
        "GID_other",
        "--group",
        "GID_csg",
    ]);
    let seen = c.get("/v1/instances", Some(&others)).json();
    assert_eq!(seen["items"].as_array().unwrap().len(), 0, "{seen}");
    c.get("/v1/instances/gw-api-1", Some(&others))
        .assert_problem(404);
    let seen = c.get("/v1/instances?group=GID_csg", Some(&others)).json();
    assert_eq!(seen["items"].as_array().unwrap().len(), 0, "{seen}");
    let seen = c.get("/v1/instances", Some(&ours)).json();
    assert_eq!(seen["items"].as_array().unwrap().len(), 2, "{seen}");
    assert_eq!(c.get("/v1/instances/gw-api-1", Some(&ours)).status, 200);

    // Authentication and bad input.
    let none = c.get("/v1/instances", None);
    none.assert_problem(401);
    assert!(none
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    c.get("/v1/instances", Some("csgc_not-a-token"))
        .assert_problem(401);
    c.get("/v1/instances/gw-api-1", Some("csgc_not-a-token"))
        .assert_problem(401);
    for bad in [
        "limit=0",
        "limit=5000",
        "limit=x",
        "presence=up",
        "colour=red",
        "cursor=zz",
    ] {
        c.get(&format!("/v1/instances?{bad}"), Some(&token))
            .assert_problem(400);
    }
    c.get("/v1/instances/gw-never-seen", Some(&token))
        .assert_problem(404);
    c.get("/v1/nothing", Some(&token)).assert_problem(404);
    c.get("/v1/instances/bad%20id", Some(&token))
        .assert_problem(400);
    c.curl(&["-X", "DELETE"], "/v1/instances", Some(&token))
        .assert_problem(405);
    // A body over the limit (1 MiB by default) is refused before any handler reads it.
    let big = c.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let data = format!("@{}", big.display());
    c.curl(
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
        ],
        "/v1/instances",
        Some(&token),
    )
    .assert_problem(413);

    // kill -9: the Will (or before it, staleness) and then offline through the API.
    agent.kill9();
    let t = wait_for(Duration::from_secs(30), || {
        presence_of(&c, &token, "gw-api-1").as_deref() == Some("offline")
    })
    .unwrap_or_else(|| panic!("never offline via the API\n{}", c.log()));
    eprintln!("offline through the API {t:?} after kill -9");

    // SIGTERM: exit 0; a restart on the same file still lists the gateway, offline.
    let status = c
        .stop()
        .expect("csg-consoled did not exit within the timeout");
    assert!(status.success(), "csg-consoled exited {status:?}");
    c.start();
    let d = c.get("/v1/instances/gw-api-1", Some(&token));
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.json()["presence"]["state"], "offline");
    let listed = c.get("/v1/instances?presence=offline", Some(&token)).json();
    assert_eq!(listed["items"][0]["instance_id"], "gw-api-1", "{listed}");
    let listed = c.get("/v1/instances", Some(&token)).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn tokens_are_listed_and_revoked_and_a_revoked_one_is_refused() {
    let broker = Broker::start();
    let mut c = Consoled::new(&broker.url(), "");
    let token = c.token("e2e-admin", "admin");
    c.start();
    assert_eq!(c.get("/v1/instances", Some(&token)).status, 200);
    // `audit` alone does not include `read`: too small a scope is 403, not 401.
    let auditor = c.token("e2e-auditor", "audit");
    let p = c.get("/v1/instances", Some(&auditor)).assert_problem(403);
    assert!(p["detail"].as_str().unwrap().contains("read"), "{p}");

    let dup = c.command(&["token", "create", "--name", "e2e-admin", "--scope", "read"]);
    assert_ne!(dup.code(), Some(0), "a taken name must be refused");
    assert!(dup.stdout.is_empty(), "{dup:?}");
    let bad = c.command(&["token", "create", "--name", "x", "--scope", "root"]);
    assert_ne!(bad.code(), Some(0));

    let list = c.command(&["token", "list"]);
    list.assert_code(0);
    assert!(
        list.stdout.contains("e2e-admin\tscopes=admin"),
        "{}",
        list.stdout
    );
    assert!(
        !list.stdout.contains(&token),
        "token list must not show secrets"
    );

    // The service remembers a token it found for a moment (the lookup is a query): a
    // revocation made by another process, as by another replica, through the store alone,
    // must still be refused within a second. The request right before it has the token
    // remembered.
    assert_eq!(c.get("/v1/instances", Some(&token)).status, 200);
    c.command(&["token", "revoke", "--name", "e2e-admin"])
        .assert_code(0);
    let waited = wait_for(Duration::from_secs(3), || {
        c.get("/v1/instances", Some(&token)).status == 401
    })
    .expect("a revoked token was still accepted 3 s after its revocation");
    assert!(
        waited <= Duration::from_secs(1),
        "a revoked token was accepted for {waited:?} after its revocation (bound: 1 s)"
    );
    c.get("/v1/instances", Some(&token)).assert_problem(401);
    assert_ne!(
        c.command(&["token", "revoke", "--name", "e2e-admin"])
            .code(),
        Some(0)
    );
    c.command(&["check-config"]).assert_code(0);

    // The broker gone: not ready, and the body says which part.
    let mut broker = broker;
    broker.kill();
    let mut last = Value::Null;
    wait_for(TIMEOUT, || {
        let r = c.get("/readyz", None);
        last = r.json();
        r.status == 503
    })
    .unwrap_or_else(|| panic!("/readyz stayed ready without a broker: {last}"));
    assert_eq!(last["store"], "ok", "{last}");
    assert_ne!(last["broker"], "ready", "{last}");
    assert_eq!(c.get("/healthz", None).status, 200);
    let status = c
        .stop()
        .expect("csg-consoled did not exit within the timeout");
    assert!(
        status.success(),
        "csg-consoled exited {status:?} without its broker"
    );
}

#[test]
fn the_api_answers_503_with_retry_after_while_postgresql_is_down_and_recovers() {
    let broker = Broker::start();
    let mut pg =
        common::PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let mut c = Consoled::with(
        &broker.url(),
        Options {
            store: Some(pg.url()),
            ..Options::default()
        },
    );
    let token = c.token("e2e-pg", "read");
    c.start();
    assert_eq!(c.get("/v1/instances", Some(&token)).status, 200);

    pg.kill();
    let down = c.get("/v1/instances", Some(&token));
    down.assert_problem(503);
    assert_eq!(down.header("retry-after").as_deref(), Some("5"));
    let ready = c.get("/readyz", None);
    assert_eq!(ready.status, 503);
    assert_ne!(ready.json()["store"], "ok", "{}", ready.body);
    assert_eq!(ready.json()["broker"], "ready", "{}", ready.body);

    // Back without a restart of the service; the token was kept.
    pg.restart().unwrap();
    wait_for(Duration::from_secs(30), || {
        c.get("/v1/instances", Some(&token)).status == 200
    })
    .unwrap_or_else(|| panic!("the API did not recover with PostgreSQL\n{}", c.log()));
    assert_eq!(c.get("/readyz", None).status, 200);
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[identity]\ngroup_id = \"bad group\"\nconsole_id = \"c\"\n[mqtt]\nurl = \"http://x\"\n[http]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(CONSOLED);
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = process::run(cmd, TIMEOUT);
    assert_ne!(out.code(), Some(0));
    for key in ["identity.group_id", "mqtt.url", "http.listen"] {
        assert!(
            out.stderr.contains(key),
            "{key} not reported:\n{}",
            out.stderr
        );
    }
}

/// The value of one sample in a replica's `/metrics` (0 when absent).
fn metric(c: &Consoled, name: &str) -> f64 {
    let r = c.get("/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Two replicas on one PostgreSQL database in one share group: each gets part of every
/// gateway's heartbeats, yet neither turns a live gateway stale (before turning one it asks the
/// store what the other saw), and both serve the whole fleet.
#[test]
fn two_replicas_on_postgresql_split_heartbeats_and_both_serve_the_fleet() {
    let broker = Broker::start();
    let pg = common::PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let group = csg_e2e::unique("replicas");
    let mut a = Consoled::with(
        &broker.url(),
        Options {
            store: Some(pg.url()),
            share_group: Some(group.clone()),
            ..Options::default()
        },
    );
    let mut b = Consoled::with(
        &broker.url(),
        Options {
            store: Some(pg.url()),
            share_group: Some(group.clone()),
            ..Options::default()
        },
    );
    let token = a.token("e2e-replicas", "read");
    a.start();
    b.start();
    // Two gateways: Mosquitto hands a shared subscription's messages out in turn, so the
    // heartbeats of two gateways sent about together tend to go one to each replica, and each
    // replica hears nothing of the other's gateway for many seconds.
    let ids = ["gw-rep-1", "gw-rep-2"];
    let _agents: Vec<Agent> = ids
        .iter()
        .map(|id| {
            let mut cfg = AgentConfig::new(id, &broker.url());
            cfg.heartbeat_interval_s = 1;
            Agent::spawn(&cfg)
        })
        .collect();
    for c in [&a, &b] {
        for id in ids {
            wait_for(TIMEOUT, || {
                presence_of(c, &token, id).as_deref() == Some("online")
            })
            .unwrap_or_else(|| panic!("{id} never online through a replica\n{}", c.log()));
        }
    }
    let since = |c: &Consoled, id: &str| {
        let r = c.get(&format!("/v1/instances/{id}"), Some(&token)).json();
        (
            r["presence"]["state"].clone(),
            r["presence"]["since_ms"].clone(),
        )
    };
    let before: Vec<_> = ids.iter().map(|id| since(&a, id)).collect();
    // Twelve stale windows' worth of heartbeats (3 missed 1 s intervals each): with the
    // heartbeats split at random, a replica alone would often miss three in a row.
    std::thread::sleep(Duration::from_secs(12));
    for c in [&a, &b] {
        let seen: Vec<_> = ids.iter().map(|id| since(c, id)).collect();
        assert_eq!(
            seen,
            before,
            "a gateway's presence changed while it ran\n{}",
            c.log()
        );
    }
    // Neither replica turned one stale even for a moment (the other's next write would hide
    // it from the API; the store keeps every transition).
    let stale = pg
        .query("SELECT count(*) FROM presence_events WHERE state = 'stale'")
        .unwrap();
    assert_eq!(stale, "0", "a replica turned a live gateway stale");
    // The heartbeats really were split: each replica ingested some, neither all.
    let (ha, hb) = (
        metric(&a, "csg_heartbeats_ingested_total{region=\"default\"}"),
        metric(&b, "csg_heartbeats_ingested_total{region=\"default\"}"),
    );
    assert!(ha > 0.0 && hb > 0.0, "heartbeats not split: {ha} and {hb}");
    assert!(a.stop().is_some_and(|s| s.success()));
    assert!(b.stop().is_some_and(|s| s.success()));
}
