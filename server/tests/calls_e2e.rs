//! Calls through the console service end to end: the real `csg-consoled` binary with a SQLite
//! file, a real Mosquitto, real agents (NFS on the kernel backend with the harness's exportfs
//! stub, so mutations are observable), and HTTP through `curl`.
//!
//! Build the agent first: `cargo build -p csg-agent --bins` (cargo builds `csg-consoled`).

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

mod common;

use common::consoled::{wait_for, Consoled};
use csg_e2e::broker::free_port;
use csg_e2e::exportfs_stub::ExportfsStub;
use csg_e2e::{Agent, AgentConfig, Broker, SecuritySection, StorageSection, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A gateway with NFS on the kernel backend over the exportfs stub, under `base`.
fn nfs_agent(broker: &Broker, id: &str, base: &Path) -> (AgentConfig, ExportfsStub) {
    for d in ["srv/vol1", "srv/vol2", "state"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let stub = ExportfsStub::new(base);
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.storage = Some(StorageSection::new(&base.join("srv"), &base.join("state")));
    cfg.nfs = Some(stub.nfs_section());
    (cfg, stub)
}

fn wait_online(c: &Consoled, token: &str, id: &str) {
    wait_for(TIMEOUT, || {
        let r = c.get(&format!("/v1/instances/{id}"), Some(token));
        r.status == 200 && r.json()["presence"]["state"] == "online"
    })
    .unwrap_or_else(|| panic!("{id} never online via the API\n{}", c.log()));
}

/// The served document's schema `name` accepts `value`.
fn conforms(doc: &Value, name: &str, value: &Value) {
    let root = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    let v = jsonschema::draft202012::new(&root).unwrap();
    let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{value}");
}

/// The agent's counters, read through the console (a read: runs every time).
fn counters(c: &Consoled, id: &str, token: &str) -> Value {
    let r = c.call(id, &json!({"method": "sys.status"}), None, token);
    let reply = r.assert_ok(200);
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"]["counters"].clone()
}

#[test]
fn calls_are_stored_idempotent_audited_and_mapped() {
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(work.path()).unwrap();
    let (cfg, stub) = nfs_agent(&broker, "gw-call-1", &base);
    let mut agent = Agent::spawn(&cfg);

    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token("ops", "operate");
    let reader = c.token("reader", "read");
    let auditor = c.token("auditor", "audit");
    c.start();
    wait_online(&c, &reader, "gw-call-1");
    let doc = c.get("/v1/openapi.json", None).json();
    for path in [
        "/v1/instances/{id}/calls",
        "/v1/calls/{id}",
        "/v1/audit",
        "/v1/instances/{id}/nfs/exports/{name}",
        "/v1/instances/{id}/smb/users/{name}",
        "/v1/instances/{id}/iscsi/targets",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} not documented");
    }

    // A read: the reply envelope as it came.
    let ping = c
        .call("gw-call-1", &json!({"method": "sys.ping"}), None, &reader)
        .assert_ok(200);
    assert_eq!(ping["ok"], true, "{ping}");
    assert_eq!(ping["v"], 1, "{ping}");
    let ping_id = ping["id"].as_str().unwrap().to_owned();
    let stored = c.get(&format!("/v1/calls/{ping_id}"), Some(&reader)).json();
    assert_eq!(stored["state"], "answered", "{stored}");
    assert_eq!(stored["reply"], ping);
    assert_eq!(stored["token_name"], "reader");
    conforms(&doc, "CallOut", &stored);
    // A figure, not a limit: how long the console holds a sys.ping, from before its row is
    // written to its outcome stored (store writes and the MQTT round trip), and what curl sees.
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = c
            .call("gw-call-1", &json!({"method": "sys.ping"}), None, &reader)
            .assert_ok(200);
        seen.push(t0.elapsed().as_millis());
        let s = c
            .get(
                &format!("/v1/calls/{}", r["id"].as_str().unwrap()),
                Some(&reader),
            )
            .json();
        held.push(s["finished_ms"].as_i64().unwrap() - s["started_ms"].as_i64().unwrap());
    }
    held.sort_unstable();
    seen.sort_unstable();
    eprintln!(
        "sys.ping through POST /calls: held by the console p50 {} ms, max {} ms; curl's round trip p50 {} ms, max {} ms",
        held[10], held[19], seen[10], seen[19]
    );

    // A mutation with an Idempotency-Key while the agent is stopped: 504, retryable, with the
    // key as the id to retry with. Sent again with the same key once the agent runs: it ran
    // once (the agent's counters), the repeat answered from the agent's id memory.
    let before = counters(&c, "gw-call-1", &reader);
    let mut create = json!({"method": "nfs.export.create", "params": {
        "name": "vol1", "path": base.join("srv/vol1").display().to_string(),
        "clients": [{"match": "10.0.0.0/8", "access": "rw"}]}});
    agent.signal(Signal::SIGSTOP);
    create["timeout_ms"] = json!(1500);
    let p = c
        .call("gw-call-1", &create, Some("key-create-1"), &ops)
        .assert_problem(504);
    assert_eq!(p["retryable"], true, "{p}");
    assert_eq!(p["request_id"], "key-create-1", "{p}");
    conforms(&doc, "Problem", &p);
    let stored = c.get("/v1/calls/key-create-1", Some(&reader)).json();
    assert_eq!(stored["state"], "failed", "{stored}");
    agent.signal(Signal::SIGCONT);
    create["timeout_ms"] = json!(10_000);
    let first = c
        .call("gw-call-1", &create, Some("key-create-1"), &ops)
        .assert_ok(200);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["id"], "key-create-1");
    let after = counters(&c, "gw-call-1", &reader);
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    // Between the two status reads: the create ran once, the status read itself once; the
    // second sending of the create was a duplicate.
    assert_eq!(
        count(&after, "executed") - count(&before, "executed"),
        2,
        "before {before}, after {after}"
    );
    assert!(
        count(&after, "duplicates") > count(&before, "duplicates"),
        "before {before}, after {after}"
    );
    assert!(
        stub.file().unwrap_or_default().contains("vol1"),
        "the export was not applied"
    );
    let stored = c.get("/v1/calls/key-create-1", Some(&reader)).json();
    assert_eq!(stored["state"], "answered", "{stored}");
    // The stored call answered: a third sending is answered from the store, not sent.
    let third = c
        .call("gw-call-1", &create, Some("key-create-1"), &ops)
        .assert_ok(200);
    assert_eq!(third, first);
    let again = counters(&c, "gw-call-1", &reader);
    assert_eq!(
        count(&again, "executed") - count(&after, "executed"),
        1,
        "{again}"
    );
    assert_eq!(count(&again, "received") - count(&after, "received"), 1);

    // The same key with other params: 409, nothing sent.
    let mut other = create.clone();
    other["params"]["clients"][0]["access"] = json!("ro");
    c.call("gw-call-1", &other, Some("key-create-1"), &ops)
        .assert_problem(409);
    // And for another instance.
    let mut cfg2 = AgentConfig::new("gw-call-2", &broker.url());
    cfg2.heartbeat_interval_s = 1;
    let _agent2 = Agent::spawn(&cfg2);
    wait_online(&c, &reader, "gw-call-2");
    c.call("gw-call-2", &create, Some("key-create-1"), &ops)
        .assert_problem(409);

    // Bad input: a key against the id rules, bad JSON, unknown fields, bad params, unknown
    // method, a timeout out of range, an unknown instance.
    c.call(
        "gw-call-1",
        &json!({"method": "sys.ping"}),
        Some("bad key!"),
        &ops,
    )
    .assert_problem(400);
    c.request(
        "POST",
        "/v1/instances/gw-call-1/calls",
        None,
        &["content-type: application/json", "x-pad: 1"],
        Some(&ops),
    )
    .assert_problem(400);
    c.call(
        "gw-call-1",
        &json!({"method": "sys.ping", "colour": 1}),
        None,
        &ops,
    )
    .assert_problem(422);
    let p = c
        .call(
            "gw-call-1",
            &json!({"method": "nfs.export.create", "params": {"name": "BAD NAME"}}),
            None,
            &ops,
        )
        .assert_problem(422);
    assert!(p["detail"].as_str().unwrap().contains("params"), "{p}");
    conforms(&doc, "Problem", &p);
    let p = c
        .call("gw-call-1", &json!({"method": "sys.reboot"}), None, &ops)
        .assert_problem(422);
    assert!(p["detail"].as_str().unwrap().contains("method"), "{p}");
    c.call(
        "gw-call-1",
        &json!({"method": "sys.ping", "timeout_ms": 0}),
        None,
        &ops,
    )
    .assert_problem(422);
    c.call(
        "gw-call-1",
        &json!({"method": "sys.ping", "timeout_ms": 120_001}),
        None,
        &ops,
    )
    .assert_problem(422);
    c.call("gw-never-seen", &json!({"method": "sys.ping"}), None, &ops)
        .assert_problem(404);

    // A mutation without operate: 403, audited as refused with the token's name.
    let delete = json!({"method": "nfs.export.delete", "params": {"name": "vol1"}});
    c.call("gw-call-1", &delete, None, &reader)
        .assert_problem(403);
    assert!(stub.file().unwrap_or_default().contains("vol1"));

    // Resource routes: PUT creates (201) then replaces (200), GET, DELETE (204), then 404.
    let export = "/v1/instances/gw-call-1/nfs/exports/vol2";
    let spec = json!({"path": base.join("srv/vol2").display().to_string(),
                      "clients": [{"match": "10.1.0.0/16", "access": "rw"}]});
    let created = c
        .request(
            "PUT",
            export,
            Some(&spec),
            &["Idempotency-Key: put-vol2-a"],
            Some(&ops),
        )
        .assert_ok(201);
    assert_eq!(created["export"]["name"], "vol2", "{created}");
    // The same PUT again (same key): both steps answered from the agent's id memory.
    c.request(
        "PUT",
        export,
        Some(&spec),
        &["Idempotency-Key: put-vol2-a"],
        Some(&ops),
    )
    .assert_ok(201);
    let mut changed = spec.clone();
    changed["clients"][0]["access"] = json!("ro");
    let replaced = c
        .request("PUT", export, Some(&changed), &[], Some(&ops))
        .assert_ok(200);
    assert_eq!(replaced["changed"], true, "{replaced}");
    let got = c.get(export, Some(&reader)).assert_ok(200);
    assert_eq!(got["name"], "vol2", "{got}");
    let listed = c
        .get("/v1/instances/gw-call-1/nfs/exports", Some(&reader))
        .assert_ok(200);
    assert_eq!(listed["exports"].as_array().unwrap().len(), 2, "{listed}");
    // Another name on a path already exported: the agent's CONFLICT is 409.
    let p = c
        .request(
            "PUT",
            "/v1/instances/gw-call-1/nfs/exports/vol3",
            Some(&spec),
            &[],
            Some(&ops),
        )
        .assert_problem(409);
    assert_eq!(p["agent_error"]["code"], "CONFLICT", "{p}");
    // A path outside the roots: INVALID_PARAMS is 422.
    let p = c
        .request(
            "PUT",
            "/v1/instances/gw-call-1/nfs/exports/vol4",
            Some(&json!({"path": "/etc", "clients": [{"match": "10.0.0.1"}]})),
            &[],
            Some(&ops),
        )
        .assert_problem(422);
    conforms(&doc, "Problem", &p);
    // A name in the body that is not the path's.
    c.request(
        "PUT",
        export,
        Some(&json!({"name": "other", "path": "/srv", "clients": []})),
        &[],
        Some(&ops),
    )
    .assert_problem(422);
    c.request("PUT", export, Some(&spec), &[], Some(&reader))
        .assert_problem(403);
    c.request("DELETE", export, None, &[], Some(&ops))
        .assert_ok(204);
    c.request("DELETE", export, None, &[], Some(&ops))
        .assert_problem(404);
    c.get(export, Some(&reader)).assert_problem(404);
    assert!(!stub.file().unwrap_or_default().contains("vol2"));

    // The instance's calls, newest first, paged by key.
    let page = c
        .get("/v1/instances/gw-call-1/calls?limit=2", Some(&reader))
        .json();
    conforms(&doc, "CallPage", &page);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = c
        .get(
            &format!("/v1/instances/gw-call-1/calls?limit=2&cursor={cursor}"),
            Some(&reader),
        )
        .json();
    assert!(
        next["items"][0]["started_ms"].as_i64() <= page["items"][1]["started_ms"].as_i64(),
        "{page}\n{next}"
    );
    assert_ne!(next["items"][0]["id"], page["items"][1]["id"]);

    // The audit log: only with the audit scope; the mutations and the refusals are there,
    // secrets never.
    c.get("/v1/audit", Some(&ops)).assert_problem(403);
    let audit = c.get("/v1/audit?limit=1000", Some(&auditor)).json();
    conforms(&doc, "AuditPage", &audit);
    let items = audit["items"].as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        items
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {audit}"))
    };
    let created_event = items
        .iter()
        .find(|e| e["request_id"] == "key-create-1")
        .unwrap_or_else(|| panic!("the create is not audited: {audit}"));
    assert_eq!(created_event["action"], "call");
    assert_eq!(created_event["outcome"], "ok");
    assert_eq!(created_event["token_name"], "ops");
    assert_eq!(created_event["method"], "nfs.export.create");
    assert!(created_event["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let refused = items
        .iter()
        .find(|e| e["action"] == "refused" && e["token_name"] == "reader")
        .unwrap_or_else(|| panic!("the reader's 403 is not audited: {audit}"));
    assert_eq!(refused["outcome"], "403", "{refused}");
    assert_eq!(refused["instance_id"], "gw-call-1", "{refused}");
    find("refused", "409");
    find("refused", "422");
    find("resource.put", "ok");
    find("resource.put", "CONFLICT");
    find("resource.delete", "ok");
    // Reads are not audited.
    assert!(
        !items.iter().any(|e| e["method"] == "sys.ping"),
        "a read was audited: {audit}"
    );
    // A 401 on any route is a refusal too.
    c.get("/v1/instances", Some("csgc_wrong"))
        .assert_problem(401);
    let refused401 = c
        .get("/v1/audit?action=refused&outcome=401", Some(&auditor))
        .json();
    assert_eq!(
        refused401["items"].as_array().unwrap().len(),
        1,
        "{refused401}"
    );
    // Paging through the log, newest first, each event once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/audit?limit=3&cursor={c}"),
            None => "/v1/audit?limit=3".to_owned(),
        };
        let page = c.get(&q, Some(&auditor)).json();
        for e in page["items"].as_array().unwrap() {
            seen.push(e["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let total = c.get("/v1/audit?limit=1000", Some(&auditor)).json()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(seen.len(), total);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "not newest first");
    c.get("/v1/audit?colour=red", Some(&auditor))
        .assert_problem(400);
    // The JSON lines in the log.
    assert!(
        c.log().contains("csg_consoled::audit"),
        "no audit line in the log"
    );

    // The agent gone: a call times out as 504, retryable, with the id to retry with.
    agent.kill9();
    let p = c
        .call(
            "gw-call-1",
            &json!({"method": "sys.ping", "timeout_ms": 1500}),
            None,
            &reader,
        )
        .assert_problem(504);
    assert_eq!(p["retryable"], true, "{p}");
    let id = p["request_id"].as_str().unwrap().to_owned();
    conforms(&doc, "Problem", &p);
    let stored = c.get(&format!("/v1/calls/{id}"), Some(&reader)).json();
    assert_eq!(stored["state"], "failed", "{stored}");
    conforms(&doc, "CallOut", &stored);

    assert!(!c.log().contains(&ops), "a token reached the log");
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn smb_passwords_are_redacted_in_calls_and_audit() {
    // No Samba here: the agent refuses smb.user.set (no smb backend configured), which is
    // still a stored, audited call whose params carry the password.
    let broker = Broker::start();
    let mut cfg = AgentConfig::new("gw-call-smb", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let _agent = Agent::spawn(&cfg);
    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token("ops", "admin");
    c.start();
    wait_online(&c, &ops, "gw-call-smb");
    let secret = "Very-Secret-9876";
    let reply = c
        .call(
            "gw-call-smb",
            &json!({"method": "smb.user.set", "timeout_ms": 3000,
                    "params": {"username": "alice", "password": secret}}),
            Some("smb-set-1"),
            &ops,
        )
        .assert_ok(200);
    assert_eq!(reply["id"], "smb-set-1", "{reply}");
    let stored = c.get("/v1/calls/smb-set-1", Some(&ops)).json();
    assert_eq!(stored["params"]["password"], "<redacted>", "{stored}");
    let audit = c.get("/v1/audit", Some(&ops));
    assert_eq!(audit.status, 200);
    assert!(!audit.body.contains(secret), "{}", audit.body);
    assert!(audit.body.contains("<redacted>"), "{}", audit.body);
    assert!(!c.log().contains(secret), "the password reached the log");
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn every_command_is_signed_for_an_agent_that_requires_it() {
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(work.path()).unwrap();
    std::fs::create_dir_all(base.join("keys")).unwrap();
    let key = csg_console::sign::generate_key();
    let (kid, private, public) =
        csg_console::sign::write_key_pair(&key, &base.join("keys/console"), false).unwrap();
    let (mut cfg, stub) = nfs_agent(&broker, "gw-signed-1", &base);
    cfg.security = Some(SecuritySection {
        max_command_validity_s: Some(300),
        clock_skew_s: Some(30),
        ..SecuritySection::signed().trust(&kid, &public, &["*"])
    });
    let _agent = Agent::spawn(&cfg);

    // Unsigned first: the agent refuses.
    let mut unsigned = Consoled::new(&broker.url(), "");
    let ops = unsigned.token("ops", "operate");
    unsigned.start();
    wait_online(&unsigned, &ops, "gw-signed-1");
    let refused = unsigned
        .call("gw-signed-1", &json!({"method": "sys.ping"}), None, &ops)
        .assert_ok(200);
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "UNAUTHORIZED", "{refused}");
    assert!(unsigned.stop().is_some_and(|s| s.success()));

    // With [signing]: accepted, mutations too.
    let signing = format!(
        "[signing]\nkey_file = \"{}\"\nkey_id = \"{kid}\"\n",
        private.display()
    );
    let mut c = Consoled::new(&broker.url(), &signing);
    c.command(&["check-config"]).assert_code(0);
    let ops = c.token("ops", "operate");
    c.start();
    wait_online(&c, &ops, "gw-signed-1");
    let ping = c
        .call("gw-signed-1", &json!({"method": "sys.ping"}), None, &ops)
        .assert_ok(200);
    assert_eq!(ping["ok"], true, "{ping}");
    let spec = json!({"path": base.join("srv/vol1").display().to_string(),
                      "clients": [{"match": "10.0.0.0/8"}]});
    c.request(
        "PUT",
        "/v1/instances/gw-signed-1/nfs/exports/vol1",
        Some(&spec),
        &[],
        Some(&ops),
    )
    .assert_ok(201);
    assert!(stub.file().unwrap_or_default().contains("vol1"));
    assert!(c.stop().is_some_and(|s| s.success()));

    // A bad key file is reported by check-config, which exits 1.
    let bad = base.join("keys/bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let c = Consoled::new(
        &broker.url(),
        &format!("[signing]\nkey_file = \"{}\"\n", bad.display()),
    );
    let out = c.command(&["check-config"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("signing.key_file"), "{}", out.stderr);
}

#[test]
fn a_broker_down_is_503_with_retry_after_and_nothing_is_stored() {
    let mut broker = Broker::start();
    let mut cfg = AgentConfig::new("gw-call-b", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let _agent = Agent::spawn(&cfg);
    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token("ops", "operate");
    c.start();
    wait_online(&c, &ops, "gw-call-b");
    broker.kill();
    wait_for(TIMEOUT, || c.get("/readyz", None).status == 503).expect("still ready");
    let r = c.call(
        "gw-call-b",
        &json!({"method": "sys.ping"}),
        Some("while-down-1"),
        &ops,
    );
    r.assert_problem(503);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    c.get("/v1/calls/while-down-1", Some(&ops))
        .assert_problem(404);
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn the_service_runs_without_its_broker_and_says_so() {
    // Nothing listens on this port: the one MQTT session starts without waiting for it.
    let mut c = Consoled::new(&format!("mqtt://127.0.0.1:{}", free_port()), "");
    let token = c.token("ops", "operate");
    c.spawn();
    wait_for(TIMEOUT, || c.get("/healthz", None).status == 200)
        .unwrap_or_else(|| panic!("not serving without a broker\n{}", c.log()));
    let ready = c.get("/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["store"], "ok", "{body}");
    assert_ne!(body["broker"], "ready", "{body}");
    assert_eq!(c.get("/v1/instances", Some(&token)).status, 200);
    assert!(c.stop().is_some_and(|s| s.success()));
}

#[test]
fn an_iscsi_target_with_chap_through_the_resource_routes_keeps_its_secrets() {
    // LIO cannot run here (no configfs): the agent drives the harness's targetcli stand-in,
    // which keeps a fake configfs tree the agent reads back (see csg_e2e::targetcli_stub).
    let broker = Broker::start();
    let dirs = csg_e2e::StorageDirs::new();
    let stub = csg_e2e::targetcli_stub::TargetcliStub::new(dirs.base());
    let mut cfg = AgentConfig::new("gw-call-iscsi", &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.storage = Some(dirs.section());
    cfg.iscsi = Some(stub.iscsi_section("iqn.2026-11.test.csg"));
    let _agent = Agent::spawn(&cfg);
    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token("ops", "admin");
    c.start();
    wait_online(&c, &ops, "gw-call-iscsi");

    let target = "/v1/instances/gw-call-iscsi/iscsi/targets/vol1";
    let spec = json!({
        "luns": [{"lun": 1, "path": dirs.path("a.img"), "size_bytes": 1 << 20}],
        "initiators": ["iqn.2026-11.test.client:c1"],
        "chap": {"username": "alice", "secret": "Secret12chars"},
    });
    let created = c
        .request(
            "PUT",
            target,
            Some(&spec),
            &["Idempotency-Key: iscsi-put-1"],
            Some(&ops),
        )
        .assert_ok(201);
    assert_eq!(created["changed"], true, "{created}");
    let got = c.get(target, Some(&ops)).assert_ok(200);
    assert_eq!(got["name"], "vol1", "{got}");
    let list = c
        .get("/v1/instances/gw-call-iscsi/iscsi/targets", Some(&ops))
        .assert_ok(200);
    assert!(list.to_string().contains("vol1"), "{list}");
    // Bad input the protocol refuses: 422 before anything is sent.
    c.request(
        "PUT",
        "/v1/instances/gw-call-iscsi/iscsi/targets/vol2",
        Some(&json!({"luns": [], "chap": {"username": "a", "secret": "short"}})),
        &[],
        Some(&ops),
    )
    .assert_problem(422);
    // The delete options are query parameters; bad ones are refused and change nothing.
    let backing = std::path::PathBuf::from(dirs.path("a.img"));
    assert!(backing.exists(), "the target's backing file was not made");
    for bad in [
        "?force=yes",
        "?delete_backing_files=1",
        "?purge=true",
        "?force=true&force=true",
    ] {
        c.request("DELETE", &format!("{target}{bad}"), None, &[], Some(&ops))
            .assert_problem(400);
    }
    c.get(target, Some(&ops)).assert_ok(200);
    c.request(
        "DELETE",
        &format!("{target}?force=true&delete_backing_files=true"),
        None,
        &[],
        Some(&ops),
    )
    .assert_ok(204);
    assert!(
        !backing.exists(),
        "delete_backing_files=true left the backing file"
    );
    c.request("DELETE", target, None, &[], Some(&ops))
        .assert_problem(404);
    c.get(target, Some(&ops)).assert_problem(404);

    // The secret is in neither the stored calls, the audit log nor the console's log.
    let calls = c
        .get("/v1/instances/gw-call-iscsi/calls?limit=100", Some(&ops))
        .json();
    let audit = c.get("/v1/audit?limit=1000", Some(&ops)).json();
    for text in [calls.to_string(), audit.to_string(), c.log()] {
        assert!(
            !text.contains("Secret12chars"),
            "a CHAP secret leaked: {text}"
        );
    }
    assert!(calls.to_string().contains("<redacted>"), "{calls}");
    // The options reached the agent as the method's params.
    let deleted = calls["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "iscsi.target.delete" && e["params"]["force"] == true)
        .unwrap_or_else(|| panic!("no forced delete in {calls}"));
    assert_eq!(deleted["params"]["delete_backing_files"], true, "{deleted}");
    let put = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "resource.put" && e["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no resource.put in {audit}"));
    assert_eq!(put["params"]["chap"]["secret"], "<redacted>", "{put}");
    assert!(c.stop().is_some_and(|s| s.success()));
}
