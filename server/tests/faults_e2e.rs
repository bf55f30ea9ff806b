//! Faults with real parts: the real `csg-consoled` binary, a real Mosquitto, real agents, and
//! a private PostgreSQL killed and restarted, a replica killed with SIGKILL, a client that leaves
//! in the middle of a call, a stop while a call waits, and a call left pending by a console that
//! died. "Ran once" is the agents' own counters (`sys.status`: `executed`, `duplicates`).
//!
//! Build the agent first: `cargo build -p csg-agent --bins` (cargo builds `csg-consoled`).

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::consoled::{wait_for, Consoled, Options};
use common::PgServer;
use csg_e2e::{Agent, AgentConfig, Broker, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A gateway that sends a heartbeat a second, with a keep-alive long enough that a few seconds
/// stopped (SIGSTOP) do not cost it its connection.
fn agent(broker: &Broker, id: &str) -> Agent {
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.keep_alive_s = 60;
    Agent::spawn(&cfg)
}

fn wait_online(c: &Consoled, token: &str, id: &str) {
    wait_for(TIMEOUT, || {
        let r = c.get(&format!("/v1/instances/{id}"), Some(token));
        r.status == 200 && r.json()["presence"]["state"] == "online"
    })
    .unwrap_or_else(|| panic!("{id} never online via the API\n{}", c.log()));
}

/// The agent's request counters, read through the console (a read: runs every time).
fn counters(c: &Consoled, id: &str, token: &str) -> Value {
    let r = c.call(id, &json!({"method": "sys.status"}), None, token);
    let reply = r.assert_ok(200);
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"]["counters"].clone()
}

fn grew(before: &Value, after: &Value, key: &str) -> i64 {
    after[key].as_i64().unwrap() - before[key].as_i64().unwrap()
}

/// The stored call, once its state is not `pending` (within `limit`).
fn wait_call_done(c: &Consoled, token: &str, id: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(limit, || {
        let r = c.get(&format!("/v1/calls/{id}"), Some(token));
        if r.status != 200 {
            return false;
        }
        last = r.json();
        last["state"] != "pending"
    })
    .unwrap_or_else(|| panic!("call {id} still not finished: {last}\n{}", c.log()));
    last
}

/// `POST …/calls` from a client that gives up after `client_s` seconds (curl's --max-time).
fn call_and_leave(
    c: &Consoled,
    instance: &str,
    body: &Value,
    key: &str,
    token: &str,
    client_s: u32,
) {
    let f = c.dir.path().join(format!("{key}.json"));
    std::fs::write(&f, body.to_string()).unwrap();
    let key_header = format!("Idempotency-Key: {key}");
    let data = format!("@{}", f.display());
    let max = client_s.to_string();
    let r = c.curl(
        &[
            "-X",
            "POST",
            "-H",
            &key_header,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
            "--max-time",
            &max,
        ],
        &format!("/v1/instances/{instance}/calls"),
        Some(token),
    );
    assert_eq!(
        r.status, 0,
        "the client was answered before it left: {}",
        r.body
    );
}

/// A client that disconnects while `POST …/calls` waits: the call goes on, and its outcome
/// (the agent's reply) is stored. Then a stop (SIGTERM) while a call waits on a stopped agent:
/// the process records the call's outcome before it exits.
#[test]
fn a_call_outlives_its_client_and_a_stop_records_the_call_under_way() {
    let broker = Broker::start();
    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token_with(&["--name", "ops", "--scope", "operate", "--scope", "audit"]);
    c.start();
    let mut gw = agent(&broker, "gw-leave-1");
    wait_online(&c, &ops, "gw-leave-1");
    let before = counters(&c, "gw-leave-1", &ops);

    // The agent is stopped: the call waits. The client leaves after 1 s; the agent runs again
    // after 2 s, within the call's 8 s budget.
    gw.signal(Signal::SIGSTOP);
    let body = json!({"method": "sys.reconcile", "timeout_ms": 8000});
    call_and_leave(&c, "gw-leave-1", &body, "key-leave-1", &ops, 1);
    std::thread::sleep(Duration::from_secs(1));
    gw.signal(Signal::SIGCONT);
    let stored = wait_call_done(&c, &ops, "key-leave-1", TIMEOUT);
    assert_eq!(stored["state"], "answered", "{stored}");
    assert_eq!(stored["reply"]["ok"], true, "{stored}");
    assert_eq!(stored["reply"]["id"], "key-leave-1", "{stored}");
    let after = counters(&c, "gw-leave-1", &ops);
    assert_eq!(
        grew(&before, &after, "executed"),
        2,
        "the reconcile and one status read: {before} → {after}"
    );

    // A stop while a call waits: its client has left (so the HTTP side has nothing to drain)
    // and the agent is stopped. The call ends when the MQTT session closes, and its outcome
    // is stored before the process exits.
    gw.signal(Signal::SIGSTOP);
    let body = json!({"method": "sys.reconcile", "timeout_ms": 60000});
    call_and_leave(&c, "gw-leave-1", &body, "key-stop-1", &ops, 1);
    let t0 = Instant::now();
    let status = c.stop().expect("csg-consoled did not exit");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the stop took {:?}",
        t0.elapsed()
    );
    gw.signal(Signal::SIGCONT);
    // Read back through a new process on the same store (the stored row, not the process's
    // memory); the sweeper cannot have touched it yet (it is far within its 60 s budget).
    c.start();
    let stored = c.json("/v1/calls/key-stop-1", &ops);
    assert_eq!(stored["state"], "failed", "{stored}");
    assert!(
        stored["error"].as_str().unwrap().contains("lost"),
        "{stored}"
    );
    // The whole bookkeeping, the audit event after the stored outcome included.
    let audit = c.json("/v1/audit?action=call&outcome=connection_lost", &ops);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["request_id"] == "key-stop-1"),
        "{audit}"
    );
    assert!(c.stop().is_some_and(|s| s.success()));
}

/// A console killed (SIGKILL) while a call waits on a stopped agent leaves the call pending;
/// started again, its sweeper takes the call once it is past its budget and the margin, sends
/// it again under its id, and stores the agent's reply. The agent ran it once.
#[test]
fn a_call_left_pending_by_a_killed_console_is_swept_and_ends_with_the_agents_reply() {
    let broker = Broker::start();
    let mut c = Consoled::new(&broker.url(), "");
    let ops = c.token_with(&["--name", "ops", "--scope", "operate", "--scope", "audit"]);
    c.start();
    let mut gw = agent(&broker, "gw-sweep-1");
    wait_online(&c, &ops, "gw-sweep-1");
    let before = counters(&c, "gw-sweep-1", &ops);

    gw.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    let body = json!({"method": "sys.reconcile", "timeout_ms": 2000});
    std::thread::scope(|s| {
        let waiting = s.spawn(|| c.call("gw-sweep-1", &body, Some("key-sweep-1"), &ops));
        wait_for(TIMEOUT, || {
            c.get("/v1/calls/key-sweep-1", Some(&ops)).status == 200
        })
        .expect("the call was never stored");
        let row = c.json("/v1/calls/key-sweep-1", &ops);
        assert_eq!(row["state"], "pending", "{row}");
        // SIGKILL by pid: the waiting client still holds the harness (reaped below).
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.pid()).unwrap()),
            Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(
            waiting.join().unwrap().status,
            0,
            "answered by a dead process"
        );
    });
    c.kill();
    // Back, the agent too: it now runs the request it had received (its reply reaches no one
    // waiting), and the sweeper's re-send is answered from its id memory.
    c.start();
    gw.signal(Signal::SIGCONT);
    let stored = wait_call_done(&c, &ops, "key-sweep-1", Duration::from_secs(40));
    let took = t0.elapsed();
    assert_eq!(stored["state"], "answered", "{stored}\n{}", c.log());
    assert_eq!(stored["reply"]["ok"], true, "{stored}");
    assert_eq!(stored["reply"]["id"], "key-sweep-1", "{stored}");
    // Not before its budget (2 s) and the margin (10 s) had passed.
    assert!(took >= Duration::from_secs(12), "swept after {took:?}");
    let after = counters(&c, "gw-sweep-1", &ops);
    assert_eq!(
        grew(&before, &after, "executed"),
        2,
        "the reconcile ran once (and one status read): {before} → {after}"
    );
    assert!(
        grew(&before, &after, "duplicates") >= 1,
        "{before} → {after}"
    );
    let audit = c.json("/v1/audit?action=call.sweep", &ops);
    let items = audit["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|a| a["request_id"] == "key-sweep-1" && a["outcome"] == "ok"),
        "{audit}"
    );
    assert!(
        c.log().contains("calls left pending taken up"),
        "{}",
        c.log()
    );
    eprintln!(
        "a call left pending by a killed console was stored answered {took:?} after it was sent"
    );
    assert!(c.stop().is_some_and(|s| s.success()));
}

/// A job body slow enough to be caught in the middle: one execution at a time, one every 2 s.
fn slow_job(targets: &[&str]) -> Value {
    json!({"method": "sys.reconcile", "params": {}, "target": {"instances": targets},
           "rate_per_minute": 30, "max_in_flight": 1, "execution_timeout_ms": 10000,
           "retry": {"max_attempts": 5, "base_ms": 500, "max_ms": 2000}})
}

fn job(c: &Consoled, token: &str, id: &str) -> Value {
    c.json(&format!("/v1/jobs/{id}"), token)
}

fn executions(c: &Consoled, token: &str, id: &str) -> Vec<Value> {
    c.json(&format!("/v1/jobs/{id}/executions?limit=100"), token)["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn wait_job(c: &Consoled, token: &str, id: &str, state: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(limit, || {
        let r = c.get(&format!("/v1/jobs/{id}"), Some(token));
        if r.status != 200 {
            return false;
        }
        last = r.json();
        last["state"] == state
    })
    .unwrap_or_else(|| panic!("job {id} never {state}: {last}\n{}", c.log()));
    last
}

/// Waits until some but not all of a job's executions have succeeded.
fn wait_midway(c: &Consoled, token: &str, id: &str) -> Value {
    let mut last = Value::Null;
    wait_for(TIMEOUT, || {
        last = job(c, token, id);
        let done = last["counts"]["succeeded"].as_i64().unwrap();
        done >= 1 && done < last["counts"]["total"].as_i64().unwrap()
    })
    .unwrap_or_else(|| panic!("job {id} never midway: {last}"));
    last
}

/// PostgreSQL killed (SIGKILL of the postmaster) in the middle of a job on real agents: while
/// it is down, requests that need the store answer 503 with Retry-After and /readyz says the
/// store is why; restarted on the same data directory and port, the job finishes; nothing the
/// API acknowledged before the kill is lost, and no agent ran its request twice.
#[test]
fn postgresql_killed_mid_job_loses_nothing_acknowledged_and_runs_nothing_twice() {
    let broker = Broker::start();
    let mut pg = PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let mut c = Consoled::with(
        &broker.url(),
        Options {
            store: Some(pg.url()),
            ..Options::default()
        },
    );
    let ops = c.token_with(&["--name", "ops", "--scope", "admin", "--scope", "audit"]);
    c.start();
    let ids = ["gw-pg-1", "gw-pg-2", "gw-pg-3", "gw-pg-4"];
    let _agents: Vec<Agent> = ids.iter().map(|id| agent(&broker, id)).collect();
    for id in ids {
        wait_online(&c, &ops, id);
    }
    let before: Vec<Value> = ids.iter().map(|id| counters(&c, id, &ops)).collect();
    // One keyed mutation through the calls route, acknowledged before the kill.
    let keyed = c
        .call(
            "gw-pg-1",
            &json!({"method": "sys.ping"}),
            Some("key-before-kill"),
            &ops,
        )
        .assert_ok(200);
    assert_eq!(keyed["ok"], true, "{keyed}");

    let created = c
        .request("POST", "/v1/jobs", Some(&slow_job(&ids)), &[], Some(&ops))
        .assert_ok(201);
    let job_id = created["id"].as_str().unwrap().to_owned();
    wait_midway(&c, &ops, &job_id);
    // What the API acknowledged before the kill.
    let execs_before = executions(&c, &ops, &job_id);
    let audit_before = c.json("/v1/audit?limit=1000", &ops)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!audit_before.is_empty());
    let calls_before: Vec<Value> = ids
        .iter()
        .flat_map(|id| {
            c.json(&format!("/v1/instances/{id}/calls?limit=100"), &ops)["items"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(calls_before.len(), ids.len() + 1, "{calls_before:?}");

    pg.kill();
    let down_at = Instant::now();
    // Each of these waits for the store's 5 s connection timeout.
    for path in [
        format!("/v1/jobs/{job_id}"),
        "/v1/calls/key-before-kill".to_owned(),
    ] {
        let r = c.get(&path, Some(&ops));
        r.assert_problem(503);
        assert_eq!(r.header("retry-after").as_deref(), Some("5"), "{path}");
    }
    let refused = c.request("POST", "/v1/jobs", Some(&slow_job(&ids)), &[], Some(&ops));
    refused.assert_problem(503);
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    let ready = c.get("/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_ne!(ready.json()["store"], "ok", "{}", ready.body);
    assert_eq!(ready.json()["broker"], "ready", "{}", ready.body);
    // Down long enough that the runner's writes fail while executions are under way.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(down_at.elapsed()));

    pg.restart().unwrap();
    let t0 = Instant::now();
    let done = wait_job(&c, &ops, &job_id, "succeeded", Duration::from_secs(45));
    eprintln!(
        "PostgreSQL down {:?}; the job finished {:?} after it came back",
        t0.duration_since(down_at),
        t0.elapsed()
    );
    assert_eq!(done["counts"]["succeeded"], json!(ids.len()), "{done}");
    assert_eq!(c.get("/readyz", None).status, 200);

    // Nothing acknowledged before the kill is lost.
    let execs_after = executions(&c, &ops, &job_id);
    assert_eq!(execs_after.len(), ids.len());
    for e in &execs_before {
        let same = execs_after
            .iter()
            .find(|a| a["instance_id"] == e["instance_id"])
            .unwrap_or_else(|| panic!("execution lost: {e}"));
        assert_eq!(same["request_id"], e["request_id"], "{e} → {same}");
        if e["state"] == "succeeded" {
            assert_eq!(same["state"], "succeeded", "{e} → {same}");
            assert_eq!(same["finished_ms"], e["finished_ms"], "{e} → {same}");
        }
    }
    for e in &execs_after {
        assert_eq!(e["state"], "succeeded", "{e}");
    }
    let audit_after: HashSet<i64> = c.json("/v1/audit?limit=1000", &ops)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    for a in &audit_before {
        assert!(
            audit_after.contains(&a["id"].as_i64().unwrap()),
            "audit event lost: {a}"
        );
    }
    for call in &calls_before {
        let id = call["id"].as_str().unwrap();
        let now = c.json(&format!("/v1/calls/{id}"), &ops);
        assert_eq!(&now, call, "call {id} changed or lost");
    }
    // Each agent ran the job's request once (and the one status read after it).
    for (i, id) in ids.iter().enumerate() {
        let after = counters(&c, id, &ops);
        let ping = usize::from(i == 0);
        assert_eq!(
            grew(&before[i], &after, "executed"),
            i64::try_from(2 + ping).unwrap(),
            "{id} ran the job's request once: {} → {after}",
            before[i]
        );
    }
    assert!(c.stop().is_some_and(|s| s.success()));
}

/// Two replicas on one PostgreSQL; the one that holds a job's lease is killed (SIGKILL) in the
/// middle of it; the other takes the lease over once it has expired and finishes the job.
/// Every execution succeeds and no agent ran its request twice.
#[test]
fn a_replica_killed_mid_job_is_taken_over_and_nothing_runs_twice() {
    let broker = Broker::start();
    let pg = PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let group = csg_e2e::unique("faults");
    let replica = |name: &str| {
        Consoled::with(
            &broker.url(),
            Options {
                store: Some(pg.url()),
                share_group: Some(group.clone()),
                console_id: Some(csg_e2e::unique(name)),
                ..Options::default()
            },
        )
    };
    let mut replicas = [replica("rep-a"), replica("rep-b")];
    let ops = replicas[0].token("ops", "operate");
    for r in &mut replicas {
        r.start();
    }
    let ids = ["gw-rep-1", "gw-rep-2", "gw-rep-3", "gw-rep-4"];
    let _agents: Vec<Agent> = ids.iter().map(|id| agent(&broker, id)).collect();
    for id in ids {
        wait_online(&replicas[0], &ops, id);
    }
    let before: Vec<Value> = ids
        .iter()
        .map(|id| counters(&replicas[0], id, &ops))
        .collect();

    let created = replicas[0]
        .request("POST", "/v1/jobs", Some(&slow_job(&ids)), &[], Some(&ops))
        .assert_ok(201);
    let job_id = created["id"].as_str().unwrap().to_owned();
    wait_midway(&replicas[0], &ops, &job_id);
    // The lease holder, as the store has it: its console id is the lease owner.
    let owner = pg
        .query(&format!(
            "SELECT lease_owner FROM jobs WHERE id = '{job_id}'"
        ))
        .unwrap();
    let holder = replicas
        .iter()
        .position(|r| {
            std::fs::read_to_string(&r.config)
                .unwrap()
                .contains(&format!("console_id = \"{owner}\""))
        })
        .unwrap_or_else(|| panic!("no replica holds the job: owner {owner:?}"));
    let other = 1 - holder;
    replicas[holder].kill();
    let killed = Instant::now();

    let done = wait_job(
        &replicas[other],
        &ops,
        &job_id,
        "succeeded",
        Duration::from_secs(45),
    );
    eprintln!(
        "the lease holder killed; the other replica finished the job {:?} later",
        killed.elapsed()
    );
    assert_eq!(done["counts"]["succeeded"], json!(ids.len()), "{done}");
    for e in executions(&replicas[other], &ops, &job_id) {
        assert_eq!(e["state"], "succeeded", "{e}");
    }
    for (i, id) in ids.iter().enumerate() {
        let after = counters(&replicas[other], id, &ops);
        assert_eq!(
            grew(&before[i], &after, "executed"),
            2,
            "{id} ran the job's request once (and one status read): {} → {after}",
            before[i]
        );
    }
    assert!(replicas[other].stop().is_some_and(|s| s.success()));
}
