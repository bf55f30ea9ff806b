//! Several regions in one `csg-consoled`: two real Mosquitto brokers (one per region, as a
//! cloud region has its own broker instance), a real agent in each, one service with two
//! `[[regions]]`. Every gateway, call, job and audit event carries its region; one region's
//! broker going away degrades only that region, and `/readyz` says which.

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::consoled::{http, wait_for};
use csg_e2e::broker::free_port;
use csg_e2e::process::{self, child_env, ChildGuard};
use csg_e2e::{Agent, AgentConfig, Broker, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const CONSOLED: &str = env!("CARGO_BIN_EXE_csg-consoled");

/// Whether `cond` held within `limit`.
fn waited(limit: std::time::Duration, cond: impl FnMut() -> bool) -> bool {
    wait_for(limit, cond).is_some()
}

#[test]
fn two_regions_each_with_its_broker_and_one_going_down_degrades_only_itself() {
    let mut hz_broker = Broker::start();
    let mut sh_broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("console.toml");
    let toml = format!(
        r#"
[identity]
console_id = "{console}"
[http]
listen = "127.0.0.1:{port}"
[store]
url = "sqlite://{db}"
[fleet]
share_group = "{group}"
default_interval_s = 1

[[regions]]
name = "hangzhou"
group_id = "GID_hz"
[regions.mqtt]
url = "{hz}"
protocol = "{protocol}"
keep_alive_s = 5

[[regions]]
name = "shanghai"
group_id = "GID_sh"
[regions.mqtt]
url = "{sh}"
protocol = "{protocol}"
keep_alive_s = 5
"#,
        console = csg_e2e::unique("consoled"),
        db = dir.path().join("console.db").display(),
        group = csg_e2e::unique("regions"),
        hz = hz_broker.url(),
        sh = sh_broker.url(),
        protocol = csg_e2e::mqtt_protocol(),
    );
    std::fs::write(&config, toml).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(CONSOLED);
        cmd.args(args).arg("--config").arg(&config);
        child_env(&mut cmd);
        process::run(cmd, TIMEOUT)
    };
    let checked = run(&["check-config"]);
    checked.assert_code(0);
    let out = run(&["token", "create", "--name", "ops", "--scope", "admin"]);
    out.assert_code(0);
    let token = out.stdout.trim().to_owned();

    let mut cmd = Command::new(CONSOLED);
    cmd.arg("--config").arg(&config);
    child_env(&mut cmd);
    let service = ChildGuard::spawn("csg-consoled", cmd, dir.path()).unwrap();
    let get = |path: &str| http(dir.path(), port, &[], path, Some(&token));
    let post = |path: &str, body: &Value| {
        http(
            dir.path(),
            port,
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                &body.to_string(),
            ],
            path,
            Some(&token),
        )
    };
    assert!(
        waited(TIMEOUT, || get("/readyz").status == 200),
        "never ready\n{}",
        service.log()
    );
    let ready = get("/readyz").json();
    assert_eq!(ready["regions"].as_array().unwrap().len(), 2, "{ready}");

    // One gateway in each region, each on its region's broker with its region's group id.
    let mut agents = Vec::new();
    for (id, group, broker) in [
        ("gw-hz-1", "GID_hz", &hz_broker),
        ("gw-sh-1", "GID_sh", &sh_broker),
    ] {
        let mut cfg = AgentConfig::new(id, &broker.url());
        cfg.group_id = group.into();
        cfg.heartbeat_interval_s = 1;
        agents.push(Agent::spawn(&cfg));
    }
    let online = |id: &str| {
        let r = get(&format!("/v1/instances/{id}"));
        r.status == 200 && r.json()["presence"]["state"] == "online"
    };
    assert!(
        waited(TIMEOUT, || online("gw-hz-1") && online("gw-sh-1")),
        "both gateways never online\n{}",
        service.log()
    );
    assert_eq!(get("/v1/instances/gw-hz-1").json()["region"], "hangzhou");
    assert_eq!(get("/v1/instances/gw-sh-1").json()["region"], "shanghai");

    // Lists span every region unless one is named; a region not served is refused.
    let all = get("/v1/instances").json();
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-hz-1", "gw-sh-1"], "{all}");
    let sh = get("/v1/instances?region=shanghai").json();
    assert_eq!(sh["items"].as_array().unwrap().len(), 1, "{sh}");
    assert_eq!(sh["items"][0]["instance_id"], "gw-sh-1");
    let nowhere = get("/v1/instances?region=beijing");
    assert_eq!(nowhere.status, 400, "{}", nowhere.body);
    assert!(
        nowhere.body.contains("hangzhou, shanghai"),
        "{}",
        nowhere.body
    );

    // A call reaches each gateway through its own region's session.
    for id in ["gw-hz-1", "gw-sh-1"] {
        let r = post(
            &format!("/v1/instances/{id}/calls"),
            &json!({"method": "sys.ping"}),
        );
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        assert_eq!(r.json()["ok"], true, "{id}: {}", r.body);
    }
    let calls = get("/v1/instances/gw-sh-1/calls").json();
    assert_eq!(calls["items"][0]["region"], "shanghai", "{calls}");

    // A job must name its region when there are several, and runs there only.
    let job = json!({"method": "sys.ping", "target": {"selector": {}}, "rate_per_minute": 600,
                     "max_in_flight": 4, "execution_timeout_ms": 10000});
    let refused = post("/v1/jobs", &job);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("several regions"), "{}", refused.body);
    let mut named = job.clone();
    named["region"] = json!("shanghai");
    let created = post("/v1/jobs", &named);
    assert_eq!(created.status, 201, "{}", created.body);
    let job_id = created.json()["id"].as_str().unwrap().to_owned();
    let finished = waited(TIMEOUT, || {
        get(&format!("/v1/jobs/{job_id}")).json()["state"] == "succeeded"
    });
    let done = get(&format!("/v1/jobs/{job_id}")).json();
    assert!(finished, "{done}\n{}", service.log());
    assert_eq!(done["region"], "shanghai");
    assert_eq!(done["counts"]["total"], 1, "{done}");
    let execs = get(&format!("/v1/jobs/{job_id}/executions")).json();
    assert_eq!(execs["items"][0]["instance_id"], "gw-sh-1", "{execs}");
    let audit = get("/v1/audit?region=shanghai&action=job.create").json();
    assert_eq!(audit["items"][0]["region"], "shanghai", "{audit}");

    // Metrics are per region.
    let metrics = get("/metrics").body;
    for region in ["hangzhou", "shanghai"] {
        assert!(
            metrics.contains(&format!("csg_broker_up{{region=\"{region}\"}} 1")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "csg_heartbeats_ingested_total{{region=\"{region}\"}}"
            )),
            "{metrics}"
        );
    }

    // Shanghai's broker goes away: the service stays ready (Hangzhou still works), /readyz
    // names the region that is down, a call into Shanghai is 503, into Hangzhou 200.
    sh_broker.kill();
    assert!(
        waited(TIMEOUT, || {
            let r = get("/readyz");
            let body = r.json();
            r.status == 200
                && body["regions"][1]["region"] == "shanghai"
                && body["regions"][1]["ready"] == false
                && body["regions"][0]["ready"] == true
        }),
        "readyz never said shanghai is down: {}",
        get("/readyz").body
    );
    assert!(get("/readyz").json()["broker"]
        .as_str()
        .unwrap()
        .starts_with("shanghai: "));
    let down = post(
        "/v1/instances/gw-sh-1/calls",
        &json!({"method": "sys.ping", "timeout_ms": 2000}),
    );
    assert_eq!(down.status, 503, "{}", down.body);
    let up = post(
        "/v1/instances/gw-hz-1/calls",
        &json!({"method": "sys.ping"}),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    assert!(
        get("/metrics")
            .body
            .contains("csg_broker_up{region=\"shanghai\"} 0"),
        "the metric never showed the region down"
    );
    // Hangzhou's gateway stays online while Shanghai's falls stale (no heartbeats reach the
    // console; Mosquitto's Will never left the dead broker).
    assert!(
        waited(TIMEOUT, || get("/v1/instances/gw-sh-1").json()["presence"]
            ["state"]
            != "online"),
        "the silent region's gateway stayed online"
    );
    assert!(online("gw-hz-1"), "the healthy region was degraded too");

    // The broker comes back: the region recovers on its own.
    sh_broker.restart();
    assert!(
        waited(TIMEOUT, || get("/readyz").json()["broker"] == "ready"),
        "shanghai never came back: {}",
        get("/readyz").body
    );
    assert!(
        waited(TIMEOUT, || online("gw-sh-1")),
        "gw-sh-1 never online again"
    );
    let mut service = service;
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(TIMEOUT);
    service.set_dump_on_panic(false);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    drop(agents);
    hz_broker.kill();
}

#[test]
fn several_regions_refuse_the_top_level_region_keys_and_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("console.toml");
    std::fs::write(
        &config,
        r#"
[identity]
group_id = "GID_top"
console_id = "c1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[regions]]
name = "hangzhou"
group_id = "GID_hz"
[regions.mqtt]
url = "mqtt://127.0.0.1:1883"
[[regions]]
name = "hangzhou"
group_id = "GID_hz"
[regions.mqtt]
url = "mqtt://127.0.0.1:1883"
"#,
    )
    .unwrap();
    let mut cmd = Command::new(CONSOLED);
    cmd.args(["check-config", "--config"]).arg(&config);
    child_env(&mut cmd);
    let out = process::run(cmd, TIMEOUT);
    out.assert_code(1);
    for needle in [
        "[mqtt]: with [[regions]]",
        "identity.group_id: with [[regions]]",
        "regions[1].name = \"hangzhou\": the same as regions[0]",
        "regions[1]: the same broker and group_id",
        "regions[1].topics.status",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
}
