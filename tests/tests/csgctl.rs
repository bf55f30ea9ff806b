//! The console CLI against real agents: exit codes, idempotent retries by id, one-way
//! calls, fan-out, watch and bench.

use csg_e2e::csgctl::{json_lines, json_stdout};
use csg_e2e::{Bed, TIMEOUT};
use serde_json::json;

#[test]
fn call_prints_the_result_as_json_and_exits_0() {
    let bed = Bed::start("gw-ctl");
    let ctl = bed.csgctl();

    let out = ctl.run(&["call", "gw-ctl", "sys.ping"]);
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());

    let out = ctl.run(&["call", "gw-ctl", "sys.info", "{}"]);
    out.assert_code(0);
    let info = json_stdout(&out);
    assert_eq!(info["instance_id"], json!("gw-ctl"), "{}", out.describe());
    assert_eq!(
        info["client_id"],
        json!("GID_csg@@@gw-ctl"),
        "{}",
        out.describe()
    );

    let out = ctl.run(&["call", "gw-ctl", "sys.status"]);
    out.assert_code(0);
    csg_e2e::rpc::check_heartbeat_body(&json_stdout(&out), "gw-ctl", "GID_csg");
}

#[test]
fn a_remote_error_exits_1_with_code_and_message_on_stderr() {
    let bed = Bed::start("gw-ctl-err");
    let out = bed.csgctl().run(&["call", "gw-ctl-err", "nope.nothing"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("UNKNOWN_METHOD: "),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.trim().is_empty(),
        "nothing on stdout for an error\n{}",
        out.describe()
    );
}

#[test]
fn no_reply_in_time_exits_3_and_says_retrying_with_the_same_id_is_safe() {
    let bed = Bed::start("gw-ctl-present");
    let out = bed.csgctl().run(&[
        "call",
        "gw-absent",
        "sys.ping",
        "--timeout",
        "2s",
        "--attempt-timeout",
        "1s",
    ]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("--id"),
        "the message should mention --id\n{}",
        out.describe()
    );
    assert!(
        out.elapsed.as_secs_f64() >= 1.5 && out.elapsed < TIMEOUT,
        "--timeout 2s took {:?}\n{}",
        out.elapsed,
        out.describe()
    );
}

#[test]
fn calls_with_the_same_id_execute_once() {
    let bed = Bed::start("gw-ctl-id");
    let base = bed.counters();
    let ctl = bed.csgctl();
    // A mutation: only a mutation's id is remembered once it has finished.
    let a = ctl.run(&["call", "gw-ctl-id", "sys.reconcile", "--id", "ctl-fixed-1"]);
    a.assert_code(0);
    let b = ctl.run(&["call", "gw-ctl-id", "sys.reconcile", "--id", "ctl-fixed-1"]);
    b.assert_code(0);
    assert_eq!(
        json_stdout(&a),
        json_stdout(&b),
        "the same id must give the remembered result\n{}\n{}",
        a.describe(),
        b.describe()
    );
    // `--json` prints differently but must send the same id: a script and a person re-running
    // the same command must not execute it twice.
    let c = ctl.run(&[
        "call",
        "gw-ctl-id",
        "sys.reconcile",
        "--id",
        "ctl-fixed-1",
        "--json",
    ]);
    c.assert_code(0);
    let line = &json_lines(&c)[0];
    assert_eq!(line["id"], json!("ctl-fixed-1"), "{}", c.describe());
    assert_eq!(line["result"], json_stdout(&a), "{}", c.describe());
    bed.assert_growth(&base, &[("executed", 1), ("duplicates", 2)]);
}

#[test]
fn noreply_executes_and_nothing_is_sent_back() {
    let bed = Bed::start("gw-ctl-noreply");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let out = bed.csgctl().run(&[
        "call",
        "gw-ctl-noreply",
        "sys.ping",
        "--noreply",
        "--id",
        "ctl-ow-1",
    ]);
    out.assert_code(0);
    bed.assert_growth(&base, &[("executed", 1)]);
    bed.barrier();
    let sent: Vec<_> = bed
        .rec
        .matching_since(mark, |m| m.field("id").as_deref() == Some("ctl-ow-1"))
        .into_iter()
        .filter(|m| m.topic != bed.config().command_topic())
        .map(|m| m.summary())
        .collect();
    assert!(sent.is_empty(), "a one-way call was answered: {sent:?}");
    let req = bed
        .rec
        .expect_since(mark, "the one-way request", TIMEOUT, |m| {
            m.topic == bed.config().command_topic() && m.field("id").as_deref() == Some("ctl-ow-1")
        });
    let req = req.json_or_panic();
    assert!(
        req.get("reply_to").is_none() || req["reply_to"] == json!("noreply"),
        "a one-way request names no reply topic: {req}"
    );
}

#[test]
fn fan_out_reports_every_instance_and_fails_for_a_missing_one() {
    let bed = Bed::start("gw-fan-a");
    let _b = bed.spawn_agent("gw-fan-b", |_| {});
    let ctl = bed.csgctl();

    // All present: exit 0.
    let out = ctl.run(&["call", "gw-fan-a,gw-fan-b", "sys.ping", "--timeout", "10s"]);
    out.assert_code(0);
    let text = format!("{}{}", out.stdout, out.stderr);
    for i in ["gw-fan-a", "gw-fan-b"] {
        assert!(
            text.contains(i),
            "summary should name {i}\n{}",
            out.describe()
        );
    }

    // One missing: non-zero, and the summary names it.
    let out = ctl.run(&[
        "call",
        "gw-fan-a,gw-fan-missing,gw-fan-b",
        "sys.ping",
        "--timeout",
        "3s",
        "--attempt-timeout",
        "1s",
    ]);
    assert!(
        out.code().is_some_and(|c| c != 0),
        "a fan-out with a missing instance must fail\n{}",
        out.describe()
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    for i in ["gw-fan-a", "gw-fan-b", "gw-fan-missing"] {
        assert!(
            text.contains(i),
            "summary should name {i}\n{}",
            out.describe()
        );
    }

    // --json: one line per instance, saying which and how it went.
    let out = ctl.run(&[
        "call",
        "gw-fan-a,gw-fan-missing,gw-fan-b",
        "sys.ping",
        "--timeout",
        "3s",
        "--attempt-timeout",
        "1s",
        "--json",
    ]);
    assert!(out.code().is_some_and(|c| c != 0), "{}", out.describe());
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        3,
        "one JSON line per instance\n{}",
        out.describe()
    );
    let line = |i: &str| {
        let mine: Vec<_> = lines.iter().filter(|l| l["instance"] == json!(i)).collect();
        assert_eq!(
            mine.len(),
            1,
            "exactly one line for {i}\n{}",
            out.describe()
        );
        mine[0].clone()
    };
    for i in ["gw-fan-a", "gw-fan-b"] {
        let l = line(i);
        assert_eq!(l["ok"], json!(true), "{l}");
        assert_eq!(l["result"]["pong"], json!(true), "{l}");
    }
    let missing = line("gw-fan-missing");
    assert_eq!(missing["ok"], json!(false), "{missing}");
    assert!(missing.get("result").is_none(), "{missing}");
}

#[test]
fn fan_out_reads_instances_from_a_file() {
    let bed = Bed::start("gw-file-a");
    let _b = bed.spawn_agent("gw-file-b", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instances.txt");
    std::fs::write(&file, "gw-file-a\ngw-file-b\n").unwrap();
    let out = bed.csgctl().run(&[
        "call",
        "--instances-file",
        file.to_str().unwrap(),
        "sys.ping",
        "--json",
    ]);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{}", out.describe());
    for l in &lines {
        assert_eq!(l["ok"], json!(true), "{l}");
    }
}

#[test]
fn watch_prints_json_events_and_stops_after_count() {
    let bed = Bed::start_with("gw-watch", |c| c.heartbeat_interval_s = 1);
    let out = bed
        .csgctl()
        .run(&["watch", "gw-watch", "--json", "--count", "3"]);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{}", out.describe());
    for l in &lines {
        let topic = l["topic"]
            .as_str()
            .unwrap_or_else(|| panic!("no topic: {l}"));
        assert!(
            topic == "csg-status/gw-watch" || topic == "csg-status/gw-watch/presence",
            "watch of gw-watch reported {topic}"
        );
        let event = &l["event"];
        assert_eq!(event["instance_id"], json!("gw-watch"), "{l}");
        let kind = if topic.ends_with("/presence") {
            "presence"
        } else {
            "heartbeat"
        };
        assert_eq!(
            event["type"],
            json!(kind),
            "the event is the {kind} body: {l}"
        );
    }
}

#[test]
fn bench_runs_the_requests_and_reports_json() {
    let bed = Bed::start("gw-bench");
    let base = bed.counters();
    let out = bed.csgctl().run(&[
        "bench",
        "gw-bench",
        "--count",
        "200",
        "--concurrency",
        "8",
        "--json",
    ]);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert!(
        !lines.is_empty(),
        "bench printed no JSON\n{}",
        out.describe()
    );
    let g = bed.counters_growth(&base, &[("executed", 200)]);
    assert!(
        g["executed"].as_i64().unwrap() >= 200,
        "bench executed {g}\n{}",
        out.describe()
    );
}

#[test]
fn the_console_connects_as_group_at_console_id_with_a_clean_session() {
    let bed = Bed::start("gw-ctl-cid");
    let out = bed
        .csgctl()
        .with_global(&["--console-id", "e2e-ctl-7"])
        .run(&["call", "gw-ctl-cid", "sys.ping"]);
    out.assert_code(0);
    let flags = bed.broker.connect_flags_of("GID_csg@@@e2e-ctl-7");
    assert!(
        flags.as_deref().is_some_and(|f| f.contains("c1")),
        "csgctl should connect as GID_csg@@@e2e-ctl-7 with clean session: {flags:?}\n{}",
        bed.broker.log()
    );
}

#[test]
fn custom_parent_topics_work_end_to_end() {
    let bed = Bed::start_with("gw-topics", |c| {
        c.down = "acme/down".into();
        c.up = "acme/up".into();
        c.status = "acme/status".into();
    });
    assert!(bed.reply_to.starts_with("acme/up/"));
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
    let out = bed
        .csgctl()
        .with_global(&[
            "--topic-down",
            "acme/down",
            "--topic-up",
            "acme/up",
            "--topic-status",
            "acme/status",
        ])
        .run(&["call", "gw-topics", "sys.ping"]);
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true));
    // Nothing of this agent's appears under the default parents.
    let strays: Vec<_> = bed
        .rec
        .matching(|m| m.topic.starts_with("csg-"))
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert!(
        strays.is_empty(),
        "default parents used despite the config: {strays:?}"
    );
}

#[test]
fn a_broker_back_within_the_connect_timeout_is_found_before_the_deadline() {
    // A broker that is down when csgctl starts and back before its connect deadline is found:
    // csgctl keeps retrying while it waits (its back-off doubles from 200 ms, capped at 1 s
    // until the first connection, so it does not sleep past a broker that is back).
    let mut bed = Bed::start("gw-ctl-late-broker");
    bed.broker.kill();
    let ctl = bed.csgctl();
    let call = std::thread::spawn(move || {
        ctl.run(&[
            "--connect-timeout",
            "5s",
            "call",
            "gw-ctl-late-broker",
            "sys.ping",
            "--timeout",
            "10s",
        ])
    });
    std::thread::sleep(std::time::Duration::from_millis(3200));
    bed.broker.restart();
    let out = call.join().expect("csgctl thread");
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());
}

/// csgctl's own connection drops while it waits: it says so, does not blame the gateway, and
/// exits 4 rather than 3 ("no reply").
#[test]
fn the_broker_dying_during_a_call_exits_4_and_does_not_blame_the_gateway() {
    let mut broker = csg_e2e::Broker::start();
    let ctl = csg_e2e::Csgctl::new(&broker.url());
    let waiting = std::thread::spawn(move || {
        ctl.run(&[
            "call",
            "gw-nobody",
            "sys.ping",
            "--timeout",
            "4s",
            "--attempt-timeout",
            "1s",
        ])
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    broker.kill();
    let out = waiting.join().unwrap();
    out.assert_code(4);
    for want in [
        "the connection to the broker was lost (",
        "the gateway was not necessarily offline",
        "--id",
    ] {
        assert!(out.stderr.contains(want), "{want:?}\n{}", out.describe());
    }
    assert!(!out.stderr.contains("may be offline"), "{}", out.describe());
}

/// A request above the broker's packet limit: Mosquitto closes csgctl's connection on every
/// send. csgctl names the packet limit as the likely cause and exits 4.
#[test]
fn a_request_above_the_brokers_packet_limit_exits_4_naming_the_limit() {
    let broker = csg_e2e::Broker::start_with(|port| {
        format!("{}max_packet_size 20000\n", csg_e2e::broker::config(port))
    });
    let big = json!({"pad": "x".repeat(30_000)}).to_string();
    let out = csg_e2e::Csgctl::new(&broker.url()).run(&[
        "call",
        "gw-nobody",
        "sys.ping",
        &big,
        "--timeout",
        "3s",
        "--attempt-timeout",
        "1s",
    ]);
    out.assert_code(4);
    for want in [
        "the connection to the broker was lost (",
        "the gateway was not necessarily offline",
        "packet limit",
        "max_packet_size",
    ] {
        assert!(out.stderr.contains(want), "{want:?}\n{}", out.describe());
    }
    // A small request on the same broker still gets through (to nobody: exit 3).
    let out = csg_e2e::Csgctl::new(&broker.url()).run(&[
        "call",
        "gw-nobody",
        "sys.ping",
        "--timeout",
        "2s",
        "--attempt-timeout",
        "1s",
    ]);
    out.assert_code(3);
}

/// `watch --until-online` whose own connection dies: what it missed is the connection's doing,
/// so it exits 4 saying so, not 3 ("not enough instances online").
#[test]
fn watch_until_online_exits_4_when_its_connection_was_lost() {
    let mut broker = csg_e2e::Broker::start();
    let ctl = csg_e2e::Csgctl::new(&broker.url());
    let waiting =
        std::thread::spawn(move || ctl.run(&["watch", "--until-online", "1", "--timeout", "4s"]));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    broker.kill();
    let out = waiting.join().unwrap();
    out.assert_code(4);
    for want in [
        "note: the connection to the broker was lost (",
        "the connection to the broker was lost",
        "not necessarily offline",
    ] {
        assert!(out.stderr.contains(want), "{want:?}\n{}", out.describe());
    }
    assert_eq!(
        csg_e2e::csgctl::json_stdout(&out)["reached"],
        json!(false),
        "{}",
        out.describe()
    );
}
