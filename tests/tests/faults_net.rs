//! Network faults between the agent and the broker, end to end: the real agent in its own
//! network namespace behind a veth link that the test breaks (see `csg_e2e::netns`: nftables
//! drops for partitions and packet loss, a delaying relay for latency, since this kernel has
//! no netem), the real Mosquitto on the host end, and the real csgctl as the console.
//!
//! What must hold through every fault is the protocol's promise (docs/protocol.md §7): a
//! command runs at most once, and a console that re-sends it with the same id gets its answer.
//! Executions are counted where they happen: the agent's audit line (one per executed
//! mutation, naming the request id) and the `-ra` runs of the exportfs stand-in (one per
//! applied change). A second run of an `nfs.export.create` would also betray itself in its
//! reply, `changed: false` (the export was already there).

use std::thread;
use std::time::{Duration, Instant};

use csg_e2e::csgctl::json_stdout;
use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::netns::{DelayRelay, Netns};
use csg_e2e::{
    unique, wait_until, AgentConfig, Bed, Broker, CmdOutput, Csgctl, Mark, StorageDirs, TIMEOUT,
};
use serde_json::{json, Value};

/// The shortest keep-alive the agent accepts: a dead link is noticed by the broker after
/// 1.5 × this and by the agent after about 2 × this.
const KEEP_ALIVE_S: u64 = 5;

/// How long the broker may take to give up on a silent agent: 1.5 × keep-alive, plus
/// Mosquitto's once-a-second check and a loaded CI machine.
const WILL_WAIT: Duration = Duration::from_secs(3 * KEEP_ALIVE_S);

/// How long the agent may take to notice a dead link on its own: about 2 × keep-alive.
const NOTICE_WAIT: Duration = Duration::from_secs(4 * KEEP_ALIVE_S);

/// How long the agent may take to come back once the link is whole: the connect attempt the
/// partition swallowed runs out (`connect_timeout_s`, 5 s in tests) or its SYN is retried,
/// then back-off (at most 1 s in tests), then CONNECT, SUBSCRIBE, online.
const BACK_WAIT: Duration = Duration::from_secs(20);

/// Storage dirs whose root `srv/` holds `vol1`…`volN`.
struct World {
    dirs: StorageDirs,
}

impl World {
    fn new(vols: usize) -> World {
        let dirs = StorageDirs::with_root("srv");
        for i in 1..=vols {
            std::fs::create_dir_all(dirs.root().join(format!("vol{i}"))).unwrap();
        }
        World { dirs }
    }
    fn base(&self) -> &std::path::Path {
        self.dirs.base()
    }
    /// `[storage]` and the kernel NFS backend with the exportfs stand-in.
    fn configure(&self, c: &mut AgentConfig, stub: &Stub) {
        c.storage = Some(self.dirs.section());
        c.nfs = Some(stub.nfs_section());
    }
    /// `nfs.export.create` params for `vol`, one client.
    fn export(&self, vol: &str) -> String {
        json!({"name": vol, "path": self.dirs.path(vol), "clients": [{"match": "10.0.0.0/8", "access": "rw"}]})
            .to_string()
    }
}

/// Waits for the start-up reconcile (it runs exportfs once) and a round trip, so counts taken
/// afterwards see only what the test causes.
fn settle(bed: &Bed, stub: &Stub) {
    assert!(
        wait_until(TIMEOUT, || !stub.argv().is_empty()),
        "start-up reconcile did not run exportfs\n{}",
        bed.agent.log()
    );
    bed.barrier();
}

/// How many changes were applied: one `exportfs -ra` each.
fn reexports(stub: &Stub) -> usize {
    stub.argv().iter().filter(|l| *l == "-ra").count()
}

/// How many times the agent executed request `id`: its audit lines for that id.
fn executions(bed: &Bed, id: &str) -> usize {
    let needle = format!(" id={id} ");
    bed.agent
        .stderr()
        .lines()
        .filter(|l| l.contains("mutation executed") && l.contains(&needle))
        .count()
}

/// `csgctl call INSTANCE METHOD PARAMS --id ID {extra}`: one instance, the human output (the
/// result as JSON on stdout), the way an operator re-runs a command by hand.
fn call(
    ctl: &Csgctl,
    instance: &str,
    method: &str,
    params: &str,
    id: &str,
    extra: &[&str],
) -> CmdOutput {
    let mut args = vec!["call", instance, method, params, "--id", id];
    args.extend_from_slice(extra);
    ctl.run(&args)
}

/// [`call`] `nfs.export.create` on a thread of its own, for a console that waits while the
/// test breaks the link.
fn spawn_create(
    bed: &Bed,
    params: String,
    id: &str,
    extra: &'static [&'static str],
) -> thread::JoinHandle<CmdOutput> {
    let (ctl, inst, id) = (bed.csgctl(), bed.instance().to_string(), id.to_string());
    thread::spawn(move || call(&ctl, &inst, "nfs.export.create", &params, &id, extra))
}

/// The result of a call that must have succeeded (exit 0, the result on stdout).
fn ok_result(out: &CmdOutput) -> Value {
    out.assert_code(0);
    json_stdout(out)
}

/// Whether a call ended as "timed out" (exit 3: no reply in time, or the broker did not
/// acknowledge the request; exit 4 when csgctl's own connection was lost meanwhile), telling
/// the user that re-running it with its id is safe.
fn timed_out_safely(out: &CmdOutput, id: &str) -> bool {
    // 3: no reply in time; 4: csgctl's own connection was lost meanwhile (and it says so).
    let why_ok = match out.code() {
        Some(3) => true,
        Some(4) => out.stderr.contains("the connection to the broker was lost"),
        _ => false,
    };
    why_ok && out.stdout.trim().is_empty() && out.stderr.contains(&format!("--id {id} is safe"))
}

/// "New client connected from ADDR:port as CLIENT (" lines of the broker's log.
fn connects_from(log: &str, client_id: &str, addr: &str) -> usize {
    let (from, as_) = (format!(" from {addr}:"), format!(" as {client_id} ("));
    log.lines()
        .filter(|l| l.contains("New client connected") && l.contains(&from) && l.contains(&as_))
        .count()
}

/// Waits for the agent's online presence after `mark`, allowing for a reconnect.
fn wait_back_online(bed: &Bed, mark: Mark, why: &str) {
    if csg_e2e::bed::wait_online(&bed.rec, mark, bed.config(), BACK_WAIT).is_none() {
        panic!(
            "agent not back online within {BACK_WAIT:?} {why}\n{}\n{}",
            bed.agent.log(),
            bed.dump()
        );
    }
}

#[test]
fn a_partition_beyond_twice_the_keep_alive_is_survived_and_a_resent_command_runs_once() {
    let net = Netns::create();
    let w = World::new(1);
    let stub = Stub::new(w.base());
    let mut bed = net.bed("gw-net-part", |c| {
        c.keep_alive_s = KEEP_ALIVE_S;
        w.configure(c, &stub);
    });
    settle(&bed, &stub);
    let cid = bed.client_id();
    let agent_addr = net.ns_ip().to_string();
    // The agent really talks to the broker over the link the test is about to cut.
    assert_eq!(
        connects_from(&bed.broker.log(), &cid, &agent_addr),
        1,
        "{}",
        bed.broker.log()
    );
    let (ra, log_at) = (reexports(&stub), bed.agent.stderr().len());
    let mark = bed.rec.mark();
    net.partition();
    let cut = Instant::now();

    // A console sends a change while the link is down; csgctl re-sends it (same id) every
    // 2 s until it gets an answer.
    let id = unique("part");
    let call_thread = spawn_create(
        &bed,
        w.export("vol1"),
        &id,
        &["--timeout", "45s", "--attempt-timeout", "2s"],
    );

    // The broker hears nothing from the agent for 1.5 × keep-alive, drops it and publishes
    // its Will: the fleet sees the gateway offline.
    let will = bed
        .rec
        .expect_since(mark, "the agent's Will (offline)", WILL_WAIT, |m| {
            bed.is_presence(m, "offline")
        });
    assert_eq!(
        will.field("reason").as_deref(),
        Some("connection_lost"),
        "{}",
        will.summary()
    );
    let broker_log = bed.broker.log();
    assert!(
        broker_log
            .lines()
            .any(|l| l.contains(&cid) && l.contains("exceeded timeout")),
        "the broker should have dropped the agent for its keep-alive\n{broker_log}"
    );
    // The agent notices on its own too (no PINGRESP within a keep-alive period), at about
    // 2 × keep-alive.
    let noticed = wait_until(NOTICE_WAIT, || {
        bed.agent.stderr()[log_at..].contains("connection lost")
    });
    assert!(
        noticed,
        "the agent did not notice the dead link within {NOTICE_WAIT:?}\n{}",
        bed.agent.log()
    );
    // Part of the scenario, not an assertion: the partition lasts more than 2 × keep-alive
    // in any case, so the agent also tries to reconnect into the dead link.
    let hold = Duration::from_secs(2 * KEEP_ALIVE_S + 1);
    thread::sleep(hold.saturating_sub(cut.elapsed()));
    bed.agent.assert_running("during the partition");
    // Nothing crossed the link: the command has not run, the console is still waiting.
    assert_eq!(reexports(&stub), ra, "{:?}", stub.argv());
    assert_eq!(executions(&bed, &id), 0, "{}", bed.agent.log());
    assert!(
        !call_thread.is_finished(),
        "csgctl cannot have had an answer yet"
    );

    let back = bed.rec.mark();
    net.heal();
    // It reconnects over the same link, subscribes again (clean session) and says online;
    // online comes only after the SUBACK, so from here it takes commands.
    wait_back_online(&bed, back, "after the partition healed");
    let log = bed.broker.log();
    assert_eq!(connects_from(&log, &cid, &agent_addr), 2, "{log}");
    let reconnect = log
        .rfind(&format!(" as {cid} ("))
        .expect("the second CONNECT is in the log");
    assert!(
        log[reconnect..].contains(&format!("Received SUBSCRIBE from {cid}")),
        "the agent did not re-subscribe after reconnecting\n{log}"
    );

    // The console's re-sends reach it now: exactly one run, and the answer.
    let out = call_thread.join().unwrap();
    let result = ok_result(&out);
    assert_eq!(result["changed"], json!(true), "{}", out.describe());
    assert_eq!(result["export"]["drift"], json!([]), "{result}");
    assert_eq!(executions(&bed, &id), 1, "{}", bed.agent.log());
    assert_eq!(reexports(&stub), ra + 1, "{:?}", stub.argv());

    // Re-running the same command with the same id is safe: the remembered answer, no run.
    let again = call(
        &bed.csgctl(),
        bed.instance(),
        "nfs.export.create",
        &w.export("vol1"),
        &id,
        &["--timeout", "10s"],
    );
    assert_eq!(ok_result(&again), result, "{}", again.describe());
    assert_eq!(executions(&bed, &id), 1, "{}", bed.agent.log());
    assert_eq!(reexports(&stub), ra + 1, "{:?}", stub.argv());
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
}

#[test]
fn a_reply_lost_with_the_link_is_recovered_by_a_retry_with_the_same_id_without_a_second_run() {
    let net = Netns::create();
    let w = World::new(1);
    let stub = Stub::new(w.base());
    let mut bed = net.bed("gw-net-lost", |c| {
        c.keep_alive_s = KEEP_ALIVE_S;
        w.configure(c, &stub);
    });
    settle(&bed, &stub);
    let ra = reexports(&stub);
    // Applying the change takes 2 s: the window in which the link breaks.
    stub.set_reexport_delay(Duration::from_secs(2));

    let id = unique("lost");
    let ctl = bed.csgctl();
    let first = spawn_create(
        &bed,
        w.export("vol1"),
        &id,
        &["--timeout", "5s", "--attempt-timeout", "2s"],
    );
    // The agent has the command and is applying it (the stub logs its argv first, then
    // takes its time) when the link goes.
    assert!(
        wait_until(TIMEOUT, || reexports(&stub) > ra),
        "the agent did not start applying\n{}",
        bed.agent.log()
    );
    let mark = bed.rec.mark();
    net.partition();
    // It finishes and answers, into the dead link.
    assert!(
        wait_until(TIMEOUT, || executions(&bed, &id) == 1),
        "the agent did not finish the command\n{}",
        bed.agent.log()
    );
    // The console gets no answer in time and says that re-sending is safe (exit 3).
    let out = first.join().unwrap();
    assert!(
        out.code() == Some(3) && timed_out_safely(&out, &id),
        "{}",
        out.describe()
    );
    // Keep the link down until the broker has dropped the agent (its Will): the reply in the
    // agent's socket can then never be delivered late, not even by TCP retransmission after
    // the heal; the agent's next session (clean) starts without it.
    bed.rec
        .expect_since(mark, "the agent's Will (offline)", WILL_WAIT, |m| {
            bed.is_presence(m, "offline")
        });
    stub.set_reexport_delay(Duration::ZERO);
    let back = bed.rec.mark();
    net.heal();
    wait_back_online(&bed, back, "after the partition healed");
    bed.agent.assert_running("after the partition");

    // The console's retry with the same id: answered from the agent's memory, not run again.
    let retry = call(
        &ctl,
        bed.instance(),
        "nfs.export.create",
        &w.export("vol1"),
        &id,
        &["--timeout", "20s", "--attempt-timeout", "2s"],
    );
    let result = ok_result(&retry);
    // The reply of the one run: it created the export (a second run would say unchanged).
    assert_eq!(result["changed"], json!(true), "{}", retry.describe());
    assert_eq!(result["export"]["drift"], json!([]), "{result}");
    assert_eq!(executions(&bed, &id), 1, "{}", bed.agent.log());
    assert_eq!(reexports(&stub), ra + 1, "{:?}", stub.argv());
    let file = stub.file().unwrap_or_default();
    assert_eq!(file.matches("# export vol1\n").count(), 1, "{file}");
    // And again: the same answer.
    let again = call(
        &ctl,
        bed.instance(),
        "nfs.export.create",
        &w.export("vol1"),
        &id,
        &["--timeout", "10s"],
    );
    assert_eq!(ok_result(&again), result, "{}", again.describe());
    assert_eq!(executions(&bed, &id), 1, "{}", bed.agent.log());
}

#[test]
fn with_30_percent_loss_and_500_ms_latency_each_way_commands_complete_within_the_retry_budget() {
    let net = Netns::create();
    let w = World::new(2);
    let stub = Stub::new(w.base());
    // Mosquitto on loopback only: the agent's one way in is the relay on the link.
    let broker = Broker::start();
    let relay = DelayRelay::start(
        net.host_ip().into(),
        ([127, 0, 0, 1], broker.port()).into(),
        Duration::ZERO,
    );
    let bed = net.bed_on(
        broker,
        &format!("mqtt://{}", relay.addr()),
        "gw-net-lossy",
        |c| {
            // A gateway on a bad WAN link: a keep-alive that a slow PINGRESP does not break,
            // and room for a connect whose packets are lost (as the README advises for WAN).
            c.keep_alive_s = 10;
            c.connect_timeout_s = 30;
            w.configure(c, &stub);
        },
    );
    settle(&bed, &stub);
    relay.set_delay(Duration::from_millis(500));
    net.loss(30);

    let ctl = bed.csgctl();
    let inst = bed.instance().to_string();
    let steps: Vec<(&str, String)> = vec![
        ("sys.ping", "{}".into()),
        ("nfs.export.create", w.export("vol1")),
        ("nfs.export.create", w.export("vol2")),
        ("nfs.export.get", json!({"name": "vol1"}).to_string()),
        ("nfs.export.delete", json!({"name": "vol2"}).to_string()),
        ("nfs.export.list", "{}".into()),
    ];
    let mut results = Vec::new();
    for (method, params) in &steps {
        let id = unique("lossy");
        // The budget: 30 s overall, a re-send (same id) after 3 s without an answer.
        let out = call(
            &ctl,
            &inst,
            method,
            params,
            &id,
            &["--timeout", "30s", "--attempt-timeout", "3s"],
        );
        let result = ok_result(&out);
        // The latency is real: the request and the reply each wait 500 ms in the relay.
        assert!(
            out.elapsed >= Duration::from_secs(1),
            "{method} answered in {:?}, faster than the link allows\n{}",
            out.elapsed,
            out.describe()
        );
        // Re-sends (same id) after 3 s are likely here; the change still runs once.
        if matches!(*method, "nfs.export.create" | "nfs.export.delete") {
            assert_eq!(
                executions(&bed, &id),
                1,
                "{method} {id}\n{}",
                bed.agent.log()
            );
        }
        results.push((method, result, out.elapsed));
    }
    assert_eq!(results[1].1["changed"], json!(true), "{:?}", results[1]);
    assert_eq!(results[2].1["changed"], json!(true), "{:?}", results[2]);
    assert_eq!(results[3].1["drift"], json!([]), "{:?}", results[3]);
    assert_eq!(results[4].1["existed"], json!(true), "{:?}", results[4]);
    let list = &results[5].1["exports"];
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], json!("vol1"), "{list}");
    assert_eq!(list[0]["drift"], json!([]), "{list}");
    // And the loss was real too.
    let dropped = net.dropped();
    assert!(
        dropped > 0,
        "no packet was dropped: the loss rule did not apply"
    );
    eprintln!(
        "lossy link: {dropped} packets dropped, {} connection(s) through the relay, round trips {:?}",
        relay.accepted(),
        results.iter().map(|r| r.2).collect::<Vec<_>>()
    );
}

#[test]
fn broker_restarts_amid_a_stream_of_changes_each_is_answered_or_safely_retried_and_run_once() {
    // No namespace needed: a broker crash is a fault of its own.
    const N: usize = 8;
    let w = World::new(N);
    let stub = Stub::new(w.base());
    let mut bed = Bed::start_with("gw-net-restarts", |c| w.configure(c, &stub));
    settle(&bed, &stub);
    // Each change takes a moment to apply, so crashes also land while one is running.
    stub.set_reexport_delay(Duration::from_millis(500));
    let ctl = bed.csgctl();
    let inst = bed.instance().to_string();
    let cmds: Vec<(String, String)> = (1..=N)
        .map(|i| (unique(&format!("stream{i}")), w.export(&format!("vol{i}"))))
        .collect();

    // The stream: one csgctl per command, each with its own id and a short budget, so some
    // run into a dead broker.
    let stream = {
        let (ctl, inst, cmds) = (ctl.clone(), inst.clone(), cmds.clone());
        thread::spawn(move || {
            let mut outs = Vec::new();
            for (id, params) in &cmds {
                outs.push(call(
                    &ctl,
                    &inst,
                    "nfs.export.create",
                    params,
                    id,
                    &[
                        "--timeout",
                        "3s",
                        "--attempt-timeout",
                        "1s",
                        "--connect-timeout",
                        "10s",
                    ],
                ));
                // Spreads the stream over several restarts.
                thread::sleep(Duration::from_millis(300));
            }
            outs
        })
    };
    // Meanwhile the broker crashes (SIGKILL, nothing kept) and comes back, again and again,
    // mostly within 300 ms. Once, it crashes while a change is being applied and stays down
    // longer than csgctl's budget (3 s): that command ran, its reply died with the broker, and
    // its console gave up, so at least one command takes the "timed out, retry" path.
    let mut restarts = 0u32;
    let mut long_outage = false;
    while !stream.is_finished() {
        let down = if restarts == 1 {
            let base = reexports(&stub);
            if !wait_until(TIMEOUT, || reexports(&stub) > base || stream.is_finished())
                || stream.is_finished()
            {
                break;
            }
            long_outage = true;
            Duration::from_secs(4)
        } else {
            thread::sleep(Duration::from_millis(500 + 200 * u64::from(restarts % 3)));
            Duration::from_millis(300)
        };
        bed.broker.kill();
        thread::sleep(down);
        bed.broker.restart();
        restarts += 1;
    }
    let outs = stream.join().unwrap();
    assert!(
        restarts >= 3 && long_outage,
        "the stream outran the faults: {restarts} restarts, long outage: {long_outage}"
    );

    // Every command ended answered, or timed out saying a retry with its id is safe.
    let mut answered = Vec::new();
    let mut timed_out = Vec::new();
    for ((id, params), out) in cmds.iter().zip(&outs) {
        match out.code() {
            Some(0) => answered.push((id.clone(), json_stdout(out))),
            // A remote error is an answer too, but none of these creates may fail.
            Some(1) => panic!("a create was refused\n{}", out.describe()),
            Some(3 | 4) if timed_out_safely(out, id) => {
                timed_out.push((id.clone(), params.clone()));
            }
            _ => panic!(
                "neither answered nor safely retryable (after {restarts} broker restarts)\n{}",
                out.describe()
            ),
        }
    }
    eprintln!(
        "{restarts} broker restarts: {} answered, {} timed out",
        answered.len(),
        timed_out.len()
    );
    assert!(
        !timed_out.is_empty(),
        "the long outage during a change should have timed its console out\n{}",
        bed.agent.log()
    );
    // The broker is steady now: the timed-out ones, re-sent with their ids, are answered.
    for (id, params) in &timed_out {
        let out = call(
            &ctl,
            &inst,
            "nfs.export.create",
            params,
            id,
            &["--timeout", "20s", "--attempt-timeout", "2s"],
        );
        answered.push((id.clone(), ok_result(&out)));
    }
    // Each one ran exactly once, and that run created its export.
    for (id, result) in &answered {
        assert_eq!(result["changed"], json!(true), "{id}: {result}");
        assert_eq!(result["export"]["drift"], json!([]), "{id}: {result}");
        assert_eq!(executions(&bed, id), 1, "{id}\n{}", bed.agent.log());
    }
    assert_eq!(answered.len(), N);

    // A final reconcile, then the gateway's actual state is the desired state, which is
    // what the console asked for.
    let id = unique("reconcile");
    let rec = ok_result(&call(
        &ctl,
        &inst,
        "sys.reconcile",
        "{}",
        &id,
        &["--timeout", "20s"],
    ));
    assert_eq!(rec["nfs"]["ok"], json!(true), "{rec}");
    let id = unique("list");
    let list = ok_result(&call(
        &ctl,
        &inst,
        "nfs.export.list",
        "{}",
        &id,
        &["--timeout", "20s"],
    ));
    let exports = list["exports"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = exports
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = (1..=N).map(|i| format!("vol{i}")).collect();
    want.sort();
    assert_eq!(names, want, "{list}");
    let mut desired: Vec<(String, String)> = Vec::new();
    for e in &exports {
        assert_eq!(e["drift"], json!([]), "{e}");
        assert!(!e["actual"].is_null(), "{e}");
        for c in e["desired"]["clients"].as_array().unwrap() {
            desired.push((
                e["desired"]["path"].as_str().unwrap().to_string(),
                c["match"].as_str().unwrap().to_string(),
            ));
        }
    }
    // The kernel's table (the stub's, `exportfs -s` lines `path client(options)`).
    let mut actual: Vec<(String, String)> = stub
        .etab()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(path, client)| {
            (
                path.to_string(),
                client.split('(').next().unwrap().to_string(),
            )
        })
        .collect();
    desired.sort();
    actual.sort();
    assert_eq!(actual, desired, "etab:\n{}", stub.etab());
    let file = stub.file().unwrap_or_default();
    for i in 1..=N {
        assert_eq!(
            file.matches(&format!("# export vol{i}\n")).count(),
            1,
            "{file}"
        );
    }
    bed.agent.assert_running("after the broker restarts");
}
