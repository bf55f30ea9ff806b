//! SIGHUP: the agent re-reads its config. What can change under a running session (heartbeat
//! interval, log level, backend settings) changes without a reconnect; a broken file is refused
//! and the running config kept; a new identity gets a new session.

use std::time::{Duration, Instant};

use csg_e2e::{Bed, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::json;

/// Rewrites the agent's config file with `adjust` applied, then sends SIGHUP.
fn reload(bed: &mut Bed, adjust: impl FnOnce(&mut csg_e2e::AgentConfig)) {
    let mut cfg = bed.agent.config.clone();
    adjust(&mut cfg);
    std::fs::write(bed.agent.config_path(), cfg.to_toml()).expect("rewrite the config");
    bed.agent.config = cfg;
    bed.agent.signal(Signal::SIGHUP);
}

fn wait_log(bed: &mut Bed, needle: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if bed.agent.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the agent never logged {needle:?}\n{}", bed.agent.log());
}

#[test]
fn a_new_heartbeat_interval_applies_without_a_reconnect() {
    // 30 s: only the heartbeat right after connecting can come within the test's waits.
    let mut bed = Bed::start_with("gw-reload-hb", |c| c.heartbeat_interval_s = 30);
    let hb_topic = bed.config().heartbeat_topic();
    bed.rec
        .wait_for(TIMEOUT, |m| m.topic == hb_topic)
        .expect("the first heartbeat");
    let mark = bed.rec.mark();
    reload(&mut bed, |c| {
        c.heartbeat_interval_s = 1;
        c.log = "debug".into();
    });
    let beats = bed
        .rec
        .wait_for_count(mark, 3, TIMEOUT, |m| m.topic == hb_topic);
    assert_eq!(
        beats.len(),
        3,
        "one heartbeat a second after the reload\n{}",
        bed.rec.dump()
    );
    for pair in beats.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(2500),
            "gap {gap:?}\n{}",
            bed.rec.dump()
        );
    }
    let seqs: Vec<u64> = beats
        .iter()
        .map(|m| m.json_or_panic()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs[1],
        seqs[0] + 1,
        "same process, same sequence: {seqs:?}"
    );
    // The same session: one CONNECT in the broker's log, one online presence.
    assert_eq!(
        bed.broker.connects_of(&bed.client_id()),
        1,
        "{}",
        bed.broker.current_log()
    );
    let onlines = bed.rec.matching(|m| bed.is_presence(m, "online"));
    assert_eq!(
        onlines.len(),
        1,
        "no second online presence\n{}",
        bed.rec.dump()
    );
    wait_log(&mut bed, "configuration reloaded");
    // And it still answers.
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], true);
}

#[test]
fn a_broken_config_is_refused_and_the_running_one_kept() {
    let mut bed = Bed::start_with("gw-reload-bad", |c| c.heartbeat_interval_s = 30);
    let path = bed.agent.config_path().to_path_buf();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nnot_a_key = 1\n")).unwrap();
    bed.agent.signal(Signal::SIGHUP);
    wait_log(&mut bed, "configuration reload refused");
    assert!(bed.agent.log().contains("not_a_key"), "{}", bed.agent.log());
    bed.agent.assert_running("after a broken reload");
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], true);
    // An invalid value (not a parse error) is refused the same way.
    std::fs::write(&path, good.replace("max_len = 64", "max_len = 2")).unwrap();
    bed.agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    while bed
        .agent
        .log()
        .matches("configuration reload refused")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", bed.agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], true);
    assert_eq!(bed.broker.connects_of(&bed.client_id()), 1);
}

#[test]
fn a_new_identity_gets_a_new_session() {
    let mut bed = Bed::start_with("gw-reload-old", |c| c.heartbeat_interval_s = 30);
    let old_presence = bed.config().presence_topic();
    let mark = bed.rec.mark();
    reload(&mut bed, |c| c.instance_id = "gw-reload-new".into());
    // The old identity says goodbye itself; the new one comes online and answers.
    bed.rec
        .expect_since(mark, "offline from the old identity", TIMEOUT, |m| {
            m.topic == old_presence && m.field("state").as_deref() == Some("offline")
        });
    bed.wait_online(mark);
    let info = bed.call_ok("sys.info", json!({}));
    assert_eq!(info["instance_id"], "gw-reload-new");
    bed.agent
        .assert_running("after a reload with a new identity");
}

/// Backend settings apply live: a storage root added by a reload is usable at once, on the
/// same session, by the families rebuilt on the same state.
#[test]
fn new_backend_settings_apply_without_a_reconnect() {
    use csg_e2e::exportfs_stub::ExportfsStub;
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    for d in ["srv-a/vol1", "srv-b/vol2", "state"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    // A mock exportfs: this kernel has no nfsd (see tests/src/exportfs_stub.rs).
    let stub = ExportfsStub::new(&base);
    let storage = |c: &mut csg_e2e::AgentConfig, roots: &[&str]| {
        c.storage = Some(csg_e2e::StorageSection {
            roots: roots.iter().map(|r| base.join(r)).collect(),
            state_dir: base.join("state"),
            command_timeout_s: None,
        });
        c.nfs = Some(stub.nfs_section());
    };
    let mut bed = Bed::start_with("gw-reload-nfs", |c| storage(c, &["srv-a"]));
    let export = |vol: &str, root: &str| {
        json!({"name": vol, "path": base.join(root).join(vol).display().to_string(),
               "clients": [{"match": "10.0.0.0/8", "access": "rw", "squash": "root"}]})
    };
    let refused = bed.call_raw("r1", "nfs.export.create", export("vol2", "srv-b"));
    assert_eq!(refused["error"]["code"], "INVALID_PARAMS", "{refused}");

    reload(&mut bed, |c| storage(c, &["srv-a", "srv-b"]));
    wait_log(&mut bed, "configuration reloaded");
    let created = bed.call_raw("r2", "nfs.export.create", export("vol2", "srv-b"));
    assert_eq!(created["ok"], true, "{created}");
    assert!(
        stub.file().unwrap_or_default().contains("srv-b/vol2"),
        "{:?}",
        stub.file()
    );
    // The desired state survived the rebuild: the next list still knows vol2.
    let list = bed.call_ok("nfs.export.list", json!({}));
    assert!(list.to_string().contains("vol2"), "{list}");
    assert_eq!(
        bed.broker.connects_of(&bed.client_id()),
        1,
        "{}",
        bed.broker.current_log()
    );
}
