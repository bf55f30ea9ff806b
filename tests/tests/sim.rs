//! The fleet simulator end to end: the real `csg-sim` running many real agent runs in one
//! process, against real Mosquittos, driven and observed with the real `csgctl`, a recorder
//! and the brokers' logs.
//!
//! What makes a simulated agent worth measuring is that it is the real agent: identity,
//! clean session, paced connects, presence, request handling with id memory, NFS validation
//! and a clean stop. Each test checks one of those from the outside, with few agents (20–100)
//! so that the suite stays fast on a 2-core CI machine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use csg_e2e::csgctl::{json_lines, json_stdout};
use csg_e2e::process::{self, child_env, ChildGuard, CmdOutput};
use csg_e2e::{bins, wait_until, Broker, Csgctl, Recorder, QUIET, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A running `csg-sim`, its stdout and stderr in files. Dropping it kills it (SIGKILL).
struct Sim {
    // Declared before `dir`: the logs live there and a failing test prints them on drop.
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start(args: &[String]) -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = ChildGuard::spawn("csg-sim", sim_command(args), dir.path())
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins::sim().display()));
        Sim { child, _dir: dir }
    }

    /// Every complete stdout line, parsed (the simulator writes one JSON object per line).
    fn lines(&self) -> Vec<Value> {
        let out = self.child.stdout();
        let complete = match out.rfind('\n') {
            Some(i) => &out[..=i],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("csg-sim stdout line is not JSON ({e}): {l}\n{}", self.log())
                })
            })
            .collect()
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["event"] == json!(event))
            .collect()
    }

    /// The first `event` line, waiting up to `timeout` for it.
    fn expect_event(&mut self, event: &str, timeout: Duration) -> Value {
        let mut found = None;
        wait_until(timeout, || {
            found = self.events(event).into_iter().next();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "csg-sim printed no {event:?} line within {timeout:?} (exit: {:?})\n{}",
                self.child.try_status(),
                self.log()
            )
        })
    }

    fn log(&self) -> String {
        self.child.log()
    }
}

fn sim_command(args: &[String]) -> Command {
    let mut cmd = Command::new(bins::sim());
    cmd.args(args);
    child_env(&mut cmd);
    cmd
}

/// The arguments of a simulator of `count` agents without a template: the brokers, the
/// group, the export root, progress lines every 200 ms, and `extra`.
fn sim_args(
    brokers: &[&Broker],
    count: u32,
    group: &str,
    root: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a = Vec::new();
    for b in brokers {
        a.push("--broker".to_string());
        a.push(b.url());
    }
    a.extend(
        [
            "--count",
            &count.to_string(),
            "--group",
            group,
            "--export-root",
            &root.display().to_string(),
            "--report-ms",
            "200",
        ]
        .map(str::to_string),
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `sim-00000`, `sim-00001`, …: the instance ids of agents `range`.
fn instance_ids(range: impl IntoIterator<Item = u32>) -> BTreeSet<String> {
    range.into_iter().map(|n| format!("sim-{n:05}")).collect()
}

/// Every simulated client id (`…@@@sim-…`) the broker saw complete CONNECT, in log order,
/// repeats included.
fn sim_connects(broker: &Broker) -> Vec<String> {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected from "))
        .filter_map(|l| l.split(" as ").nth(1))
        .filter_map(|rest| rest.split(" (").next())
        .filter(|id| id.contains("@@@sim-"))
        .map(str::to_string)
        .collect()
}

/// The most simulated sessions that were between their CONNECT and the SUBACK of their
/// command subscription at once, as the broker's log orders them. A simulated agent holds a
/// connect slot of its broker from before its TCP connect until it is online (after the
/// SUBACK), so with `--connects-in-flight K` this is at most K.
fn max_connecting(broker: &Broker) -> usize {
    let mut open = BTreeSet::new();
    let mut max = 0;
    for l in broker.log().lines() {
        if l.contains("New client connected from ") {
            if let Some(id) = l
                .split(" as ")
                .nth(1)
                .and_then(|r| r.split(" (").next())
                .filter(|id| id.contains("@@@sim-"))
            {
                open.insert(id.to_string());
                max = max.max(open.len());
            }
        } else if let Some(id) = l.trim_end().split("Sending SUBACK to ").nth(1) {
            open.remove(id);
        }
    }
    max
}

/// `csgctl watch --until-online N`: exits 0 with `reached: true` once N instances on this
/// broker are online.
fn until_online(broker: &Broker, n: usize) -> Value {
    let out = Csgctl::new(&broker.url()).run(&[
        "watch",
        "--until-online",
        &n.to_string(),
        "--timeout",
        "20s",
    ]);
    out.assert_code(0);
    let line = json_stdout(&out);
    assert_eq!(line["reached"], json!(true), "{}", out.describe());
    assert_eq!(line["online"], json!(n), "{}", out.describe());
    line
}

/// The latest presence per instance in a recording, after waiting for `n` of them.
fn presences(rec: &Recorder, n: usize) -> Vec<csg_e2e::Msg> {
    let is_presence = |m: &csg_e2e::Msg| m.topic.ends_with("/presence");
    let got = rec.wait_for_count(csg_e2e::Mark::default(), n, TIMEOUT, is_presence);
    assert!(
        got.len() >= n,
        "{} of {n} presences\n{}",
        got.len(),
        rec.dump()
    );
    // Retained messages come in one burst at subscribe time; anything extra would be there by
    // now.
    std::thread::sleep(QUIET);
    rec.matching(is_presence)
}

/// A storage root with real directories (`vol1`, `vol2`), a directory outside it and a
/// symlink from inside it to there.
struct Exports {
    dir: tempfile::TempDir,
}

impl Exports {
    fn new() -> Exports {
        let e = Exports {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for v in ["vol1", "vol2"] {
            std::fs::create_dir_all(e.root().join(v)).unwrap();
        }
        std::fs::create_dir_all(e.outside()).unwrap();
        std::os::unix::fs::symlink(e.outside(), e.root().join("escape")).unwrap();
        e
    }
    /// Canonical: export paths must not go through a symlink, and /tmp may be one.
    fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }
    fn root(&self) -> PathBuf {
        self.base().join("srv")
    }
    fn outside(&self) -> PathBuf {
        self.base().join("outside")
    }
    fn path(&self, rel: &str) -> String {
        self.root().join(rel).display().to_string()
    }
}

/// One `csgctl call INSTANCE METHOD PARAMS --json`: the JSON line, after checking that the
/// exit code agrees with it. The attempt timeout is long so that csgctl never re-sends
/// (a re-send would be a duplicate and change the counters the tests compare).
fn call(
    ctl: &Csgctl,
    instance: &str,
    method: &str,
    params: &Value,
    extra: &[&str],
) -> (Value, CmdOutput) {
    let params = params.to_string();
    let mut args = vec![
        "call",
        instance,
        method,
        &params,
        "--json",
        "--timeout",
        "10s",
        "--attempt-timeout",
        "9s",
    ];
    args.extend_from_slice(extra);
    let out = ctl.run(&args);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "one JSON line\n{}", out.describe());
    let line = lines[0].clone();
    assert_eq!(line["instance"], json!(instance), "{}", out.describe());
    out.assert_code(if line["ok"] == json!(true) { 0 } else { 1 });
    (line, out)
}

fn call_ok(ctl: &Csgctl, instance: &str, method: &str, params: Value) -> Value {
    let (line, out) = call(ctl, instance, method, &params, &[]);
    assert_eq!(line["ok"], json!(true), "{}", out.describe());
    line["result"].clone()
}

/// The error of a call that must fail with `code`.
fn call_err(ctl: &Csgctl, instance: &str, method: &str, params: Value, code: &str) -> Value {
    let (line, out) = call(ctl, instance, method, &params, &[]);
    assert_eq!(
        line["ok"],
        json!(false),
        "{code} expected\n{}",
        out.describe()
    );
    assert_eq!(line["error"]["code"], json!(code), "{}", out.describe());
    assert_eq!(
        line["error"]["retryable"],
        json!(false),
        "{}",
        out.describe()
    );
    line["error"].clone()
}

fn counters(ctl: &Csgctl, instance: &str) -> Value {
    call_ok(ctl, instance, "sys.status", json!({}))["counters"].clone()
}

fn growth(before: &Value, after: &Value, key: &str) -> i64 {
    let get = |v: &Value| {
        v[key]
            .as_i64()
            .unwrap_or_else(|| panic!("counters.{key} missing: {v}"))
    };
    get(after) - get(before)
}

#[test]
fn agents_come_online_paced_with_their_ids_and_clean_sessions() {
    const N: u32 = 100;
    const GROUP: &str = "GID_e2esim1";
    let broker = Broker::start();
    let exports = Exports::new();
    let mut sim = Sim::start(&sim_args(
        &[&broker],
        N,
        GROUP,
        &exports.root(),
        &["--connects-in-flight", "8"],
    ));

    until_online(&broker, N as usize);
    let ramp = sim.expect_event("ramp", TIMEOUT);
    assert_eq!(ramp["agents"], json!(N), "{ramp}");
    assert_eq!(ramp["online"], json!(N), "{ramp}");
    // One connection per agent.
    assert!(
        ramp["open_files"].as_u64().is_some_and(|f| f >= N as u64),
        "{ramp}"
    );
    // Progress lines count the agents too.
    assert!(
        wait_until(TIMEOUT, || sim
            .events("progress")
            .iter()
            .any(|p| p["started"] == json!(N) && p["online"] == json!(N))),
        "no progress line with every agent started and online\n{}",
        sim.log()
    );

    // Every agent connected once, as GROUP@@@sim-NNNNN, numbered from 0.
    let connects = sim_connects(&broker);
    let want: BTreeSet<String> = instance_ids(0..N)
        .into_iter()
        .map(|i| format!("{GROUP}@@@{i}"))
        .collect();
    let seen: BTreeSet<String> = connects.iter().cloned().collect();
    assert_eq!(seen, want, "client ids at the broker\n{}", sim.log());
    assert_eq!(
        connects.len(),
        N as usize,
        "each agent should connect exactly once on a healthy broker\n{}",
        sim.log()
    );
    for n in [0, 1, N / 2, N - 1] {
        let id = format!("{GROUP}@@@sim-{n:05}");
        let flags = broker.connect_flags_of(&id);
        assert!(
            flags.as_deref().is_some_and(|f| f.contains("c1")),
            "{id} should connect with a clean session: {flags:?}"
        );
    }

    // Paced: never more than 8 sessions between CONNECT and SUBACK at once.
    let max = max_connecting(&broker);
    assert!(
        (1..=8).contains(&max),
        "{max} connects in flight at once with --connects-in-flight 8"
    );

    // Each presence names its own instance, on its own topic.
    let rec = Recorder::connect(broker.port(), &["csg-status/+/presence"]);
    let mut ids = BTreeSet::new();
    for m in presences(&rec, N as usize) {
        let p = m.json_or_panic();
        let id = p["instance_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            m.topic,
            format!("csg-status/{id}/presence"),
            "{}",
            m.summary()
        );
        assert_eq!(p["state"], json!("online"), "{}", m.summary());
        assert!(m.retain, "presence is retained: {}", m.summary());
        ids.insert(id);
    }
    assert_eq!(ids, instance_ids(0..N));
}

#[test]
fn simulated_agents_answer_rpc_and_validate_nfs_like_real_ones() {
    const N: u32 = 20;
    const GROUP: &str = "GID_e2esim2";
    let broker = Broker::start();
    let exports = Exports::new();
    let mut sim = Sim::start(&sim_args(&[&broker], N, GROUP, &exports.root(), &[]));
    until_online(&broker, N as usize);
    sim.expect_event("ramp", TIMEOUT);
    let ctl = Csgctl::new(&broker.url()).with_global(&["--group-id", GROUP]);

    // Fan-out: every agent answers.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.txt");
    let ids = instance_ids(0..N);
    std::fs::write(
        &file,
        ids.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let out = ctl.run(&[
        "call",
        "--instances-file",
        file.to_str().unwrap(),
        "sys.ping",
        "--json",
    ]);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), N as usize, "{}", out.describe());
    let mut answered = BTreeSet::new();
    for l in &lines {
        assert_eq!(l["ok"], json!(true), "{l}");
        assert_eq!(l["result"]["pong"], json!(true), "{l}");
        answered.insert(l["instance"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(answered, ids, "{}", out.describe());

    // sys.info: the identity, the in-memory NFS backend and its methods.
    let info = call_ok(&ctl, "sim-00003", "sys.info", json!({}));
    assert_eq!(info["instance_id"], json!("sim-00003"), "{info}");
    assert_eq!(info["group_id"], json!(GROUP), "{info}");
    assert_eq!(
        info["client_id"],
        json!(format!("{GROUP}@@@sim-00003")),
        "{info}"
    );
    assert_eq!(info["storage_backends"], json!({"nfs": "memory"}), "{info}");
    let methods: Vec<&str> = info["methods"]
        .as_array()
        .unwrap_or_else(|| panic!("no methods: {info}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in ["create", "update", "delete", "get", "list"] {
        let m = format!("nfs.export.{m}");
        assert!(methods.contains(&m.as_str()), "{m} missing: {info}");
    }
    for m in ["smb.share.create", "iscsi.target.create"] {
        assert!(!methods.contains(&m), "{m} listed: {info}");
    }

    let vol1 = exports.path("vol1");
    let spec =
        json!({"name": "vol1", "path": vol1, "clients": [{"match": "10.0.0.0/8", "access": "rw"}]});
    let client = json!([{"match": "10.0.0.0/8"}]);
    for n in [0, 7, N - 1] {
        let i = format!("sim-{n:05}");
        let r = call_ok(&ctl, &i, "nfs.export.create", spec.clone());
        assert_eq!(r["changed"], json!(true), "{i}: {r}");
        assert_eq!(r["export"]["drift"], json!([]), "{i}: {r}");
        assert_eq!(r["export"]["actual"]["path"], json!(vol1), "{i}: {r}");
        assert_eq!(
            r["export"]["desired"]["clients"][0]["access"],
            json!("rw"),
            "{i}: {r}"
        );
        // Identical: a no-op.
        let r = call_ok(&ctl, &i, "nfs.export.create", spec.clone());
        assert_eq!(r["changed"], json!(false), "{i}: {r}");
        // The same name with another spec; the same path under another name.
        let mut other = spec.clone();
        other["clients"][0]["access"] = json!("ro");
        call_err(&ctl, &i, "nfs.export.create", other, "CONFLICT");
        call_err(
            &ctl,
            &i,
            "nfs.export.create",
            json!({"name": "vol1b", "path": vol1, "clients": client}),
            "CONFLICT",
        );
        // The agent's validation: outside the roots, missing, through a symlink, unknown
        // keys, bad values.
        let outside = exports.outside().display().to_string();
        let e = call_err(
            &ctl,
            &i,
            "nfs.export.create",
            json!({"name": "vol3", "path": outside, "clients": client}),
            "INVALID_PARAMS",
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains("roots"),
            "{i}: {e}"
        );
        for (what, params) in [
            (
                "missing dir",
                json!({"name": "vol3", "path": exports.path("nope"), "clients": client}),
            ),
            (
                "symlink",
                json!({"name": "vol3", "path": exports.path("escape"), "clients": client}),
            ),
            (
                "relative",
                json!({"name": "vol3", "path": "srv/vol2", "clients": client}),
            ),
            (
                "bad name",
                json!({"name": "Vol 3", "path": exports.path("vol2"), "clients": client}),
            ),
            (
                "no clients",
                json!({"name": "vol3", "path": exports.path("vol2"), "clients": []}),
            ),
            (
                "host bits",
                json!({"name": "vol3", "path": exports.path("vol2"), "clients": [{"match": "10.0.0.1/8"}]}),
            ),
            (
                "hostname",
                json!({"name": "vol3", "path": exports.path("vol2"), "clients": [{"match": "*.example.com"}]}),
            ),
            (
                "pseudo on kernel",
                json!({"name": "vol3", "path": exports.path("vol2"), "clients": client, "pseudo": "/v3"}),
            ),
        ] {
            let e = call_err(&ctl, &i, "nfs.export.create", params, "INVALID_PARAMS");
            assert!(e["message"].is_string(), "{i} {what}: {e}");
        }
        let e = call_err(
            &ctl,
            &i,
            "nfs.export.create",
            json!({"name": "vol3", "path": exports.path("vol2"), "clients": client, "bogus": 1}),
            "INVALID_PARAMS",
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains("bogus"),
            "{i}: {e}"
        );
        call_err(&ctl, &i, "nfs.export.get", json!({}), "INVALID_PARAMS");

        // Read back: in sync; and nothing refused above was stored.
        let g = call_ok(&ctl, &i, "nfs.export.get", json!({"name": "vol1"}));
        assert_eq!(g["drift"], json!([]), "{i}: {g}");
        assert_eq!(g["actual"]["path"], json!(vol1), "{i}: {g}");
        assert_eq!(g["actual"]["clients"][0]["access"], json!("rw"), "{i}: {g}");
        let l = call_ok(&ctl, &i, "nfs.export.list", json!({}));
        let names: Vec<&Value> = l["exports"]
            .as_array()
            .unwrap_or_else(|| panic!("{i}: {l}"))
            .iter()
            .map(|e| &e["name"])
            .collect();
        assert_eq!(names, [&json!("vol1")], "{i}: {l}");
    }

    // Each agent has its own export table: agent 1 was told nothing.
    call_err(
        &ctl,
        "sim-00001",
        "nfs.export.get",
        json!({"name": "vol1"}),
        "NOT_FOUND",
    );
    let l = call_ok(&ctl, "sim-00001", "nfs.export.list", json!({}));
    assert_eq!(l["exports"], json!([]), "{l}");

    // The same request id twice executes once: the second is answered from memory.
    let i = "sim-00007";
    let id = csg_e2e::unique("sim-dup");
    let spec2 = json!({"name": "vol2", "path": exports.path("vol2"), "clients": client});
    let before = counters(&ctl, i);
    let (a, out_a) = call(&ctl, i, "nfs.export.create", &spec2, &["--id", &id]);
    let (b, out_b) = call(&ctl, i, "nfs.export.create", &spec2, &["--id", &id]);
    let after = counters(&ctl, i);
    assert_eq!(a["ok"], json!(true), "{}", out_a.describe());
    assert_eq!(a["result"]["changed"], json!(true), "{}", out_a.describe());
    assert_eq!(
        a["result"],
        b["result"],
        "a repeat gets the remembered reply (changed: true again, not false)\n{}\n{}",
        out_a.describe(),
        out_b.describe()
    );
    // Between the two snapshots: the create, its repeat and one sys.status.
    assert_eq!(growth(&before, &after, "received"), 3, "{before}\n{after}");
    assert_eq!(growth(&before, &after, "executed"), 2, "{before}\n{after}");
    assert_eq!(
        growth(&before, &after, "duplicates"),
        1,
        "{before}\n{after}"
    );
    let r = call_ok(&ctl, i, "nfs.export.create", spec2);
    assert_eq!(r["changed"], json!(false), "{r}");

    // The heartbeat body counts what this agent holds, and only that.
    let st = call_ok(&ctl, i, "sys.status", json!({}));
    assert_eq!(
        st["services"]["nfs"],
        json!({"backend": "memory", "up": true}),
        "{st}"
    );
    assert_eq!(
        st["storage"]["nfs"],
        json!({"count": 2, "drift": 0}),
        "{st}"
    );
    let st = call_ok(&ctl, "sim-00001", "sys.status", json!({}));
    assert_eq!(
        st["storage"]["nfs"],
        json!({"count": 0, "drift": 0}),
        "{st}"
    );

    // The simulator is still running every agent.
    assert!(sim.child.is_running(), "{}", sim.log());
}

#[test]
fn agent_n_goes_to_broker_n_mod_the_number_of_brokers() {
    const N: u32 = 40;
    const GROUP: &str = "GID_e2esim3";
    let a = Broker::start();
    let b = Broker::start();
    let exports = Exports::new();
    let mut sim = Sim::start(&sim_args(
        &[&a, &b],
        N,
        GROUP,
        &exports.root(),
        &["--connects-in-flight", "4"],
    ));
    until_online(&a, N as usize / 2);
    until_online(&b, N as usize / 2);
    let ramp = sim.expect_event("ramp", TIMEOUT);
    assert_eq!(ramp["online"], json!(N), "{ramp}");

    for (k, broker) in [&a, &b].into_iter().enumerate() {
        let want = instance_ids((0..N).filter(|n| n % 2 == k as u32));
        let rec = Recorder::connect(broker.port(), &["csg-status/+/presence"]);
        let online: BTreeSet<String> = presences(&rec, want.len())
            .iter()
            .filter(|m| m.field("state").as_deref() == Some("online"))
            .filter_map(|m| m.field("instance_id"))
            .collect();
        assert_eq!(online, want, "agents online at broker {k}\n{}", rec.dump());
        let connected: BTreeSet<String> = sim_connects(broker)
            .iter()
            .map(|c| c.trim_start_matches(&format!("{GROUP}@@@")).to_string())
            .collect();
        assert_eq!(connected, want, "agents that connected to broker {k}");
        // The pacing is per broker.
        let max = max_connecting(broker);
        assert!(
            (1..=4).contains(&max),
            "broker {k}: {max} connects in flight at once"
        );
    }
}

#[test]
fn sigterm_stops_every_agent_with_a_retained_offline_presence() {
    const N: u32 = 50;
    const GROUP: &str = "GID_e2esim4";
    let broker = Broker::start();
    let exports = Exports::new();
    let rec = Recorder::connect(broker.port(), &["csg-status/+/presence"]);
    let mut sim = Sim::start(&sim_args(&[&broker], N, GROUP, &exports.root(), &[]));
    until_online(&broker, N as usize);
    sim.expect_event("ramp", TIMEOUT);
    let is_online = |m: &csg_e2e::Msg| m.field("state").as_deref() == Some("online");
    let online = rec.wait_for_count(csg_e2e::Mark::default(), N as usize, TIMEOUT, is_online);
    assert_eq!(online.len(), N as usize, "{}", rec.dump());

    let mark = rec.mark();
    sim.child.signal(Signal::SIGTERM);
    let status = sim.child.wait_exit(TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "csg-sim should exit 0 after SIGTERM: {status:?}\n{}",
        sim.log()
    );
    let stopped = sim.expect_event("stopped", Duration::ZERO);
    assert_eq!(stopped["reason"], json!("SIGTERM"), "{stopped}");
    assert_eq!(stopped["all_stopped"], json!(true), "{stopped}");
    assert_eq!(stopped["agents"], json!(N), "{stopped}");
    let stderr = sim.child.stderr();
    assert!(
        stderr.contains("stopping every simulated agent"),
        "{}",
        sim.log()
    );
    assert!(
        !stderr.contains('\x1b'),
        "no terminal colours in a log that goes to a file\n{stderr}"
    );

    // Each agent announced itself offline (QoS 1, reason shutdown), exactly once.
    let offline = rec.wait_for_count(mark, N as usize, TIMEOUT, |m| {
        m.field("state").as_deref() == Some("offline")
    });
    std::thread::sleep(QUIET);
    let offline_now = rec.matching_since(mark, |m| m.field("state").as_deref() == Some("offline"));
    assert_eq!(offline_now.len(), N as usize, "{}", rec.dump());
    let mut ids = BTreeSet::new();
    for m in &offline {
        assert_eq!(
            m.field("reason").as_deref(),
            Some("shutdown"),
            "{}",
            m.summary()
        );
        assert_eq!(m.qos, 1, "{}", m.summary());
        ids.insert(m.field("instance_id").unwrap_or_default());
    }
    assert_eq!(ids, instance_ids(0..N), "{}", rec.dump());

    // The broker keeps it (retained), and every session ended with a DISCONNECT (so no Will).
    let later = Recorder::connect(broker.port(), &["csg-status/+/presence"]);
    let kept = presences(&later, N as usize);
    assert_eq!(kept.len(), N as usize, "{}", later.dump());
    for m in &kept {
        assert!(m.retain, "{}", m.summary());
        assert_eq!(
            m.field("state").as_deref(),
            Some("offline"),
            "{}",
            m.summary()
        );
        assert_eq!(
            m.field("reason").as_deref(),
            Some("shutdown"),
            "{}",
            m.summary()
        );
    }
    let log = broker.log();
    for n in 0..N {
        let id = format!("{GROUP}@@@sim-{n:05}");
        assert_eq!(
            log.matches(&format!("Received DISCONNECT from {id}\n"))
                .count(),
            1,
            "{id} should end its session with one DISCONNECT"
        );
    }
}

#[test]
fn a_bad_template_exits_non_zero_naming_the_problem_and_connects_nobody() {
    let broker = Broker::start();
    let exports = Exports::new();
    let dir = tempfile::tempdir().unwrap();
    let template = |agent: &str| {
        format!(
            "[identity]\ngroup_id = \"GID_e2esim5\"\ninstance_id = \"x\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n\
             [agent]\n{agent}\n\
             [storage]\nroots = [{:?}]\n",
            exports.root().display().to_string()
        )
    };
    let run = |name: &str, text: &str| -> CmdOutput {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let args = [
            "--broker".to_string(),
            broker.url(),
            "--count".into(),
            "5".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        process::run(sim_command(&args), Duration::from_secs(10))
    };
    let bad = [
        (
            "unknown-key.toml",
            template("heartbeat_interval = 5"),
            vec!["unknown-key.toml", "heartbeat_interval"],
        ),
        (
            "bad-value.toml",
            template("heartbeat_interval_s = 0"),
            vec!["agent.heartbeat_interval_s"],
        ),
        (
            "bad-group.toml",
            template("").replace("GID_e2esim5", "GID e2e"),
            vec!["identity.group_id"],
        ),
        (
            "not-toml.toml",
            "[identity\n".to_string(),
            vec!["not-toml.toml"],
        ),
    ];
    for (name, text, named) in &bad {
        let out = run(name, text);
        assert!(
            out.code().is_some_and(|c| c != 0),
            "{name}: csg-sim must refuse it\n{}",
            out.describe()
        );
        for n in named {
            assert!(
                out.stderr.contains(n),
                "{name}: the message should name {n}\n{}",
                out.describe()
            );
        }
        assert!(
            out.stdout.trim().is_empty(),
            "{name}: nothing on stdout\n{}",
            out.describe()
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = process::run(
        sim_command(&[
            "--broker".into(),
            broker.url(),
            "--config".into(),
            missing.display().to_string(),
        ]),
        Duration::from_secs(10),
    );
    assert!(out.code().is_some_and(|c| c != 0), "{}", out.describe());
    assert!(out.stderr.contains("missing.toml"), "{}", out.describe());
    std::thread::sleep(QUIET);
    assert_eq!(
        sim_connects(&broker),
        Vec::<String>::new(),
        "no agent may connect with a bad template\n{}",
        broker.log()
    );

    // The control: the same template, fixed, runs its agents under its own identity.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, template("heartbeat_interval_s = 5")).unwrap();
    let mut sim = Sim::start(&[
        "--broker".into(),
        broker.url(),
        "--count".into(),
        "5".into(),
        "--config".into(),
        good.display().to_string(),
    ]);
    until_online(&broker, 5);
    sim.expect_event("ramp", TIMEOUT);
    let ids: BTreeSet<String> = sim_connects(&broker).into_iter().collect();
    let want: BTreeSet<String> = instance_ids(0..5)
        .into_iter()
        .map(|i| format!("GID_e2esim5@@@{i}"))
        .collect();
    assert_eq!(ids, want, "{}", sim.log());
}

#[test]
fn bad_arguments_exit_non_zero_before_any_agent_connects() {
    let broker = Broker::start();
    for (args, named) in [
        (vec!["--count", "0"], "--count"),
        (vec!["--connects-in-flight", "0"], "--connects-in-flight"),
        // Agent numbers past u32::MAX would wrap to sim-00000 (or panic).
        (vec!["--first", "4294967295", "--count", "2"], "--first"),
    ] {
        let mut all = vec!["--broker".to_string(), broker.url()];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = process::run(sim_command(&all), Duration::from_secs(10));
        assert_eq!(out.code(), Some(1), "{}", out.describe());
        assert!(out.stderr.contains(named), "{}", out.describe());
        assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    }
    std::thread::sleep(QUIET);
    assert_eq!(
        sim_connects(&broker),
        Vec::<String>::new(),
        "{}",
        broker.log()
    );
}
