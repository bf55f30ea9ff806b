//! iSCSI targets end to end: the real agent over MQTT drives a private tgtd (its own control
//! socket and portal), and the libiscsi tools check from the initiator side what an initiator
//! really gets: the target, the LUN's size, refusals for initiators not on the list, CHAP.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use csg_e2e::rpc::expect_ok;
use csg_e2e::tgtd::Tgtd;
use csg_e2e::{unique, wait_until, Bed, IscsiSection, StorageDirs};
use serde_json::{json, Value};

const PREFIX: &str = "iqn.2026-11.test.csg";
const C1: &str = "iqn.2026-11.test.client:c1";
const C2: &str = "iqn.2026-11.test.client:c2";
const MIB: u64 = 1 << 20;

struct World {
    bed: Bed,
    tgtd: Tgtd,
    dirs: StorageDirs,
}

fn world(instance: &str, watch_s: u64) -> World {
    let tgtd = Tgtd::start();
    let dirs = StorageDirs::new();
    let bed = Bed::start_with(instance, |c| {
        c.storage = Some(dirs.section());
        c.iscsi = Some(IscsiSection {
            watch_interval_s: Some(watch_s),
            ..tgtd.iscsi_section(PREFIX)
        });
    });
    World { bed, tgtd, dirs }
}

impl World {
    fn call(&self, method: &str, params: Value) -> Value {
        let id = unique("iscsi");
        self.bed.call_raw(&id, method, params)
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        let id = unique("iscsi");
        let r = self.bed.call_raw(&id, method, params);
        if r["ok"] != json!(true) {
            panic!(
                "{method} failed: {r}\n{}\n{}",
                self.bed.agent.log(),
                self.tgtd.log()
            );
        }
        expect_ok(&r, &id)
    }

    fn listed(&self, initiator: &str, chap: Option<(&str, &str)>) -> String {
        let o = self.tgtd.iscsi_ls(initiator, chap);
        o.stdout + &o.stderr
    }
}

fn iqn(name: &str) -> String {
    format!("{PREFIX}:{name}")
}

#[test]
fn a_target_serves_its_lun_to_listed_initiators_only_and_goes_away_on_delete() {
    let w = world("gw-iscsi-basic", 0);
    let img = w.dirs.path("vol1.img");
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": img, "size_bytes": 8 * MIB}],
        "initiators": [C1],
    });
    let r = w.ok("iscsi.target.create", spec.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["iqn"], json!(iqn("vol1")), "{r}");
    assert_eq!(r["created_files"], json!([img]), "{r}");
    // Created sparse, with the size asked for.
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 8 * MIB);
    assert!(
        md.blocks() * 512 < MIB,
        "not sparse: {} blocks",
        md.blocks()
    );

    // The allowed initiator sees the target, its LUN and its size.
    let ls = w.listed(C1, None);
    assert!(ls.contains(&format!("Target:{}", iqn("vol1"))), "{ls}");
    assert!(ls.contains("Lun:1"), "{ls}");
    assert_eq!(w.tgtd.capacity(&iqn("vol1"), 1, C1, None), Ok(8 * MIB));
    w.tgtd.iscsi_inq(&iqn("vol1"), 1, C1, None).assert_code(0);
    // Another one does not, and cannot log in.
    let ls = w.listed(C2, None);
    assert!(!ls.contains(&iqn("vol1")), "C2 sees the target: {ls}");
    assert!(w.tgtd.capacity(&iqn("vol1"), 1, C2, None).is_err());
    assert_ne!(w.tgtd.iscsi_inq(&iqn("vol1"), 1, C2, None).code(), Some(0));
    // Exactly the listed initiator is bound; never ALL.
    let show = w.tgtd.show();
    assert!(show.contains(C1) && !show.contains("ALL"), "{show}");

    // get: desired next to actual, no drift.
    let g = w.ok("iscsi.target.get", json!({"name": "vol1"}));
    assert_eq!(g["drift"], json!([]), "{g}");
    assert_eq!(g["actual"]["luns"][0]["path"], json!(img), "{g}");
    assert_eq!(g["actual"]["luns"][0]["size_bytes"], json!(8 * MIB), "{g}");
    assert_eq!(g["actual"]["initiators"], json!([C1]), "{g}");
    assert_eq!(g["desired"]["iqn"], json!(iqn("vol1")), "{g}");

    // Same spec again: a no-op. A different one: CONFLICT.
    let again = w.ok("iscsi.target.create", spec.clone());
    assert_eq!(again["changed"], json!(false), "{again}");
    let mut other = spec.clone();
    other["initiators"] = json!([C2]);
    w.bed
        .call_err("iscsi.target.create", other.clone(), "CONFLICT");
    assert!(w.tgtd.show().contains(C1));

    // update: C2 instead of C1, the LUN read-only.
    other["luns"][0]["readonly"] = json!(true);
    let u = w.ok("iscsi.target.update", other.clone());
    assert_eq!(u["changed"], json!(true), "{u}");
    assert!(w.listed(C2, None).contains(&iqn("vol1")));
    assert!(!w.listed(C1, None).contains(&iqn("vol1")));
    let g = w.ok("iscsi.target.get", json!({"name": "vol1"}));
    assert_eq!(g["actual"]["luns"][0]["readonly"], json!(true), "{g}");
    assert_eq!(g["drift"], json!([]), "{g}");

    // Drift made by hand is named, and sys.reconcile repairs it.
    w.tgtd
        .tgtadm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL",
        ])
        .assert_code(0);
    let g = w.ok("iscsi.target.get", json!({"name": "vol1"}));
    let drift = g["drift"].to_string();
    assert!(drift.contains("ALL"), "{g}");
    let l = w.ok("iscsi.target.list", json!({}));
    assert_eq!(l["targets"].as_array().unwrap().len(), 1, "{l}");
    let rec = w.ok("sys.reconcile", json!({}));
    assert_eq!(rec["iscsi"]["ok"], json!(true), "{rec}");
    assert_eq!(
        rec["iscsi"]["changes"]["changed"][0]["target"],
        json!("vol1"),
        "{rec}"
    );
    assert!(!w.tgtd.show().contains("ALL"), "{}", w.tgtd.show());
    assert_eq!(
        w.ok("iscsi.target.get", json!({"name": "vol1"}))["drift"],
        json!([])
    );

    // update of a missing target; get of a missing one.
    let mut missing = other.clone();
    missing["name"] = json!("nope");
    missing["luns"] = json!([]);
    w.bed.call_err("iscsi.target.update", missing, "NOT_FOUND");
    w.bed
        .call_err("iscsi.target.get", json!({"name": "nope"}), "NOT_FOUND");

    // delete, with the backing file; again: existed false.
    let d = w.ok(
        "iscsi.target.delete",
        json!({"name": "vol1", "delete_backing_files": true}),
    );
    assert_eq!(d, json!({"existed": true, "deleted_files": [img]}));
    assert!(!std::path::Path::new(&img).exists());
    assert!(!w.tgtd.show().contains(&iqn("vol1")));
    assert!(!w.listed(C2, None).contains(&iqn("vol1")));
    let d = w.ok("iscsi.target.delete", json!({"name": "vol1"}));
    assert_eq!(d["existed"], json!(false), "{d}");
    assert_eq!(w.ok("iscsi.target.list", json!({}))["targets"], json!([]));
}

#[test]
fn chap_login_needs_the_secret_which_is_never_stored_in_state_or_logged() {
    let w = world("gw-iscsi-chap", 0);
    let secret = "Chap12Secret99";
    let spec = json!({
        "name": "secure",
        "luns": [{"lun": 1, "path": w.dirs.path("secure.img"), "size_bytes": 4 * MIB}],
        "networks": ["127.0.0.1"],
        "chap": {"username": "alice", "secret": secret},
    });
    w.ok("iscsi.target.create", spec.clone());
    let t = iqn("secure");
    // The network rule lets the default initiator name in, but only with CHAP.
    assert!(
        w.tgtd.capacity(&t, 1, C1, None).is_err(),
        "login without CHAP"
    );
    assert!(
        w.tgtd
            .capacity(&t, 1, C1, Some(("alice", "WrongSecret123")))
            .is_err(),
        "login with a wrong secret"
    );
    assert_eq!(
        w.tgtd.capacity(&t, 1, C1, Some(("alice", secret))),
        Ok(4 * MIB)
    );

    // A new secret through update: the old one stops working.
    let mut changed = spec.clone();
    changed["chap"]["secret"] = json!("Other12Secret7");
    w.ok("iscsi.target.update", changed.clone());
    assert!(w.tgtd.capacity(&t, 1, C1, Some(("alice", secret))).is_err());
    assert_eq!(
        w.tgtd
            .capacity(&t, 1, C1, Some(("alice", "Other12Secret7"))),
        Ok(4 * MIB)
    );
    // The same spec again is a no-op; with the old secret it is a different spec.
    assert_eq!(
        w.ok("iscsi.target.create", changed)["changed"],
        json!(false)
    );
    w.bed.call_err("iscsi.target.create", spec, "CONFLICT");

    // Never in the state file, any reply or the agent's log; the secrets file is 0600.
    let state = w.dirs.state_text();
    assert!(state.contains("alice"), "{state}");
    for s in [secret, "Other12Secret7"] {
        assert!(!state.contains(s), "secret in the state file: {state}");
        assert!(!w.bed.agent.log().contains(s), "secret in the agent log");
    }
    let g = w.ok("iscsi.target.get", json!({"name": "secure"}));
    assert!(!g.to_string().contains("Secret"), "{g}");
    assert_eq!(g["desired"]["chap_username"], json!("alice"), "{g}");
    assert_eq!(g["actual"]["chap_usernames"], json!(["alice"]), "{g}");
    let sec = w.dirs.state().join("iscsi-chap-secrets.json");
    assert_eq!(
        std::fs::metadata(&sec).unwrap().mode() & 0o777,
        0o600,
        "secrets file mode"
    );

    // A second target may not reuse the user name with another secret (tgt accounts are
    // shared by all targets).
    w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "b", "chap": {"username": "alice", "secret": "Another12Secr"}}),
        "CONFLICT",
    );
    // With the same secret it may, and deleting the first target keeps the shared account.
    w.ok(
        "iscsi.target.create",
        json!({"name": "b", "luns": [{"lun": 1, "path": w.dirs.path("b.img"), "size_bytes": MIB}],
               "networks": ["127.0.0.1"],
               "chap": {"username": "alice", "secret": "Other12Secret7"}}),
    );
    w.ok("iscsi.target.delete", json!({"name": "secure"}));
    assert_eq!(
        w.tgtd
            .capacity(&iqn("b"), 1, C1, Some(("alice", "Other12Secret7"))),
        Ok(MIB)
    );
    assert!(w.tgtd.capacity(&iqn("b"), 1, C1, None).is_err());
    w.ok("iscsi.target.delete", json!({"name": "b"}));
    let accounts = w.tgtd.tgtadm(&["--mode", "account", "--op", "show"]);
    assert!(!accounts.stdout.contains("alice"), "{}", accounts.stdout);
}

#[test]
fn a_restarted_tgtd_gets_its_targets_back_without_restarting_the_agent() {
    let mut w = world("gw-iscsi-restart", 1);
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": w.dirs.path("a.img"), "size_bytes": 2 * MIB},
                 {"lun": 2, "path": w.dirs.path("b.img"), "size_bytes": 3 * MIB, "readonly": true}],
        "initiators": [C1],
        "chap": {"username": "bob", "secret": "Restart12Sec",
                 "mutual_username": "gw", "mutual_secret": "Mutual12Secre"},
    });
    w.ok("iscsi.target.create", spec);
    let t = iqn("vol1");
    let creds = Some(("bob", "Restart12Sec"));
    assert_eq!(w.tgtd.capacity(&t, 2, C1, creds), Ok(3 * MIB));

    w.tgtd.restart();
    assert!(!w.tgtd.show().contains(&t), "a restarted tgtd starts empty");
    let back = wait_until(Duration::from_secs(15), || w.tgtd.show().contains(&t));
    assert!(
        back,
        "the agent did not put the target back\n{}",
        w.bed.agent.log()
    );
    // Wait until the whole target is back (accounts and rules come after the target).
    assert!(wait_until(Duration::from_secs(10), || {
        w.ok("iscsi.target.get", json!({"name": "vol1"}))["drift"] == json!([])
    }));
    assert_eq!(w.tgtd.capacity(&t, 1, C1, creds), Ok(2 * MIB));
    assert_eq!(w.tgtd.capacity(&t, 2, C1, creds), Ok(3 * MIB));
    // Still protected: CHAP and the initiator list came back with it.
    assert!(w.tgtd.capacity(&t, 1, C1, None).is_err());
    assert!(w.tgtd.capacity(&t, 1, C2, creds).is_err());
    let show = w.tgtd.show();
    assert!(
        !show.contains("ALL") && show.contains("gw (outgoing)"),
        "{show}"
    );
}

#[test]
fn hostile_input_is_refused_and_nothing_changes() {
    let w = world("gw-iscsi-hostile", 0);
    std::os::unix::fs::symlink(
        w.dirs.root().parent().unwrap().join("outside"),
        w.dirs.root().join("escape"),
    )
    .unwrap();
    std::fs::write(
        w.dirs.root().parent().unwrap().join("outside/secret.img"),
        b"x",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        w.dirs.root().parent().unwrap().join("outside/secret.img"),
        w.dirs.root().join("link.img"),
    )
    .unwrap();
    let lun = |p: String| json!([{"lun": 1, "path": p, "size_bytes": MIB}]);
    let cases = vec![
        json!({"name": "v", "iqn": "iqn.2026-11.test:Bad Name"}),
        json!({"name": "v", "iqn": "iqn.26-11.test:x"}),
        json!({"name": "v", "initiators": ["iqn.2026-11.test.client:c1 ALL"]}),
        json!({"name": "v", "initiators": ["ALL"]}),
        json!({"name": "v", "networks": ["10.0.0.0/8 --initiator-address ALL"]}),
        json!({"name": "v", "networks": ["10.0.0.0/8,ALL"]}),
        json!({"name": "v", "networks": ["ALL"]}),
        json!({"name": "v", "networks": ["10.0.0.1/8"]}),
        json!({"name": "v", "luns": lun(format!("{}/../outside/x.img", w.dirs.root().display()))}),
        json!({"name": "v", "luns": lun(w.dirs.path("escape/x.img"))}),
        json!({"name": "v", "luns": lun(w.dirs.path("link.img"))}),
        json!({"name": "v", "luns": lun("/etc/passwd".into())}),
        json!({"name": "v", "luns": lun(w.dirs.path("new.img") + "\n")}),
        json!({"name": "v", "luns": [{"lun": 1, "path": w.dirs.path("nosize.img")}]}),
        json!({"name": "v", "luns": [{"lun": 0, "path": w.dirs.path("x.img"), "size_bytes": MIB}]}),
        json!({"name": "v\nx"}),
        json!({"name": "v", "chap": {"username": "u", "secret": "short"}}),
        json!({"name": "v", "chap": {"username": "u;id", "secret": "Secret12chars"}}),
        json!({"name": "v", "acl": "ALL"}),
    ];
    let before: Vec<_> = std::fs::read_dir(w.dirs.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for c in cases {
        let e = w
            .bed
            .call_err("iscsi.target.create", c.clone(), "INVALID_PARAMS");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{c}: {e}");
    }
    w.bed.call_err(
        "iscsi.target.delete",
        json!({"name": "../x"}),
        "INVALID_PARAMS",
    );
    w.bed
        .call_err("iscsi.target.list", json!({"x": 1}), "INVALID_PARAMS");
    let after: Vec<_> = std::fs::read_dir(w.dirs.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "files changed in the root");
    assert_eq!(
        std::fs::read(w.dirs.root().parent().unwrap().join("outside/secret.img")).unwrap(),
        b"x"
    );
    assert!(!w.tgtd.show().contains("Target"), "{}", w.tgtd.show());
    assert!(
        !w.dirs.state_text().contains("\"v\""),
        "{}",
        w.dirs.state_text()
    );
}

#[test]
fn tgtd_down_is_unavailable_retryable_and_nothing_changes() {
    let mut w = world("gw-iscsi-down", 0);
    assert_eq!(
        w.bed.status()["services"]["iscsi"],
        json!({"backend": "tgt", "up": true})
    );
    w.tgtd.kill();
    let img = w.dirs.path("vol1.img");
    let e = w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "vol1", "luns": [{"lun": 1, "path": img, "size_bytes": MIB}]}),
        "UNAVAILABLE",
    );
    assert_eq!(e["retryable"], json!(true), "{e}");
    assert!(
        !std::path::Path::new(&img).exists(),
        "backing file left behind"
    );
    assert!(
        !w.dirs.state_text().contains("vol1"),
        "{}",
        w.dirs.state_text()
    );
    w.bed
        .call_err("iscsi.target.list", json!({}), "UNAVAILABLE");
    let st = w.bed.status();
    assert_eq!(st["services"]["iscsi"]["up"], json!(false), "{st}");

    // Back up: the same request now works.
    w.tgtd.restart();
    let r = w.ok(
        "iscsi.target.create",
        json!({"name": "vol1", "luns": [{"lun": 1, "path": img, "size_bytes": MIB}], "initiators": [C1]}),
    );
    assert_eq!(r["changed"], json!(true));
    let st = w.bed.status();
    assert_eq!(st["services"]["iscsi"]["up"], json!(true), "{st}");
    assert_eq!(
        st["storage"]["iscsi"],
        json!({"count": 1, "drift": 0}),
        "{st}"
    );
    let _ = w.call("sys.ping", json!({}));
}

/// An immutable file: the agent accepts it (a regular file under the root), tgtd cannot open
/// it read-write, so the apply fails half-way. Removed again on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn new(p: PathBuf, size: u64) -> Self {
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let o = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&p)
            .output()
            .expect("chattr (e2fsprogs) is needed to make tgtd fail on purpose");
        assert!(
            o.status.success(),
            "chattr +i {} failed (the test needs a file system with the immutable flag): {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Immutable(p)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_failed_apply_restores_the_previous_target_state_and_files() {
    let w = world("gw-iscsi-rollback", 0);
    let bad = Immutable::new(w.dirs.root().join("locked.img"), MIB);
    let bad_path = bad.0.display().to_string();
    let good = w.dirs.path("good.img");
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": good, "size_bytes": 2 * MIB}],
        "initiators": [C1],
    });
    w.ok("iscsi.target.create", spec.clone());
    let t = iqn("vol1");

    // update: C2 instead of C1 and a LUN tgtd cannot open. The rules are changed before the
    // LUN fails; all of it must be undone.
    let mut next = spec.clone();
    next["initiators"] = json!([C2]);
    next["luns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"lun": 2, "path": bad_path, "size_bytes": MIB}));
    let e = w.bed.call_err("iscsi.target.update", next, "BACKEND_ERROR");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("previous state was restored"), "{e}");
    assert!(msg.contains("tgtadm"), "{e}");
    let g = w.ok("iscsi.target.get", json!({"name": "vol1"}));
    assert_eq!(g["desired"]["initiators"], json!([C1]), "{g}");
    assert_eq!(g["drift"], json!([]), "{g}");
    assert_eq!(w.tgtd.capacity(&t, 1, C1, None), Ok(2 * MIB));
    assert!(w.tgtd.capacity(&t, 1, C2, None).is_err());

    // create: a new file plus the bad one. The target goes, and so does the new file.
    let fresh = w.dirs.path("fresh.img");
    let e = w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "vol2", "luns": [
            {"lun": 1, "path": fresh, "size_bytes": MIB},
            {"lun": 2, "path": bad_path, "size_bytes": MIB}]}),
        "BACKEND_ERROR",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("previous state was restored"),
        "{e}"
    );
    assert!(
        !std::path::Path::new(&fresh).exists(),
        "created file left behind"
    );
    assert!(!w.tgtd.show().contains(&iqn("vol2")), "{}", w.tgtd.show());
    assert!(
        !w.dirs.state_text().contains("vol2"),
        "{}",
        w.dirs.state_text()
    );
    w.bed
        .call_err("iscsi.target.get", json!({"name": "vol2"}), "NOT_FOUND");
}

#[test]
fn an_agent_started_after_tgtd_lost_its_targets_puts_them_back() {
    // No watcher: only the start-up pass can do it.
    let mut w = world("gw-iscsi-start", 0);
    w.ok(
        "iscsi.target.create",
        json!({"name": "vol1", "luns": [{"lun": 1, "path": w.dirs.path("a.img"), "size_bytes": MIB}],
               "initiators": [C1], "chap": {"username": "carol", "secret": "Startup12Sec"}}),
    );
    w.bed.agent.kill9();
    w.tgtd.restart();
    assert!(!w.tgtd.show().contains("Target"));
    let config = w.bed.agent.config.clone();
    let mark = w.bed.rec.mark();
    w.bed.agent = csg_e2e::Agent::spawn(&config);
    w.bed.wait_online(mark);
    assert!(
        wait_until(Duration::from_secs(10), || w
            .tgtd
            .show()
            .contains(&iqn("vol1"))),
        "{}",
        w.bed.agent.log()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        w.ok("iscsi.target.get", json!({"name": "vol1"}))["drift"] == json!([])
    }));
    assert_eq!(
        w.tgtd
            .capacity(&iqn("vol1"), 1, C1, Some(("carol", "Startup12Sec"))),
        Ok(MIB)
    );
    assert!(w.tgtd.capacity(&iqn("vol1"), 1, C1, None).is_err());
}

#[test]
fn a_kill_9_in_the_middle_of_applies_leaves_whole_files_and_the_next_start_reconciles() {
    let mut w = world("gw-iscsi-crash", 0);
    // A create takes a few ms here; killing at different offsets after an answered one lands
    // in different steps of the next (files, state, tgtadm calls).
    for (round, delay_ms) in [(0u32, 4u64), (1, 12), (2, 19)] {
        crash_round(&mut w, round, delay_ms);
    }
}

fn crash_round(w: &mut World, round: u32, delay_ms: u64) {
    let reply_to = w.bed.reply_to.clone();
    let mark = w.bed.rec.mark();
    for i in 0..8 {
        let n = format!("r{round}t{i}");
        let params = json!({
            "name": n,
            "luns": [{"lun": 1, "path": w.dirs.path(&format!("{n}.img")), "size_bytes": MIB}],
            "initiators": [C1],
            "chap": {"username": format!("user-{n}"), "secret": "Crash12Secret"},
        });
        let req = csg_e2e::rpc::request(
            &format!("crash-{n}"),
            "iscsi.target.create",
            params,
            Some(&reply_to),
        );
        w.bed.send_raw(csg_e2e::rpc::bytes(&req));
    }
    w.bed.reply_since(mark, &format!("crash-r{round}t2"));
    std::thread::sleep(Duration::from_millis(delay_ms));
    w.bed.agent.kill9();

    // Whatever the agent owned on disk is whole.
    let state: Value = serde_json::from_str(&w.dirs.state_text()).expect("state.json is whole");
    assert_eq!(state["version"], json!(1), "{state}");
    let secrets = std::fs::read_to_string(w.dirs.state().join("iscsi-chap-secrets.json")).unwrap();
    let secrets: Value = serde_json::from_str(&secrets).expect("secrets file is whole");
    let desired = state["families"]["iscsi"]["targets"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(desired.len() >= 3, "{state}");
    for name in desired.keys() {
        assert!(
            secrets["targets"][name]["secret"].is_string(),
            "{name} has no secret: {secrets}"
        );
    }

    // The next start puts tgtd in line with the desired state.
    let config = w.bed.agent.config.clone();
    let mark = w.bed.rec.mark();
    w.bed.agent = csg_e2e::Agent::spawn(&config);
    w.bed.wait_online(mark);
    let settled = wait_until(Duration::from_secs(10), || {
        let l = w.ok("iscsi.target.list", json!({}));
        l["unexpected"] == json!([])
            && l["targets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["drift"] == json!([]))
    });
    assert!(
        settled,
        "{}\n{}",
        w.ok("iscsi.target.list", json!({})),
        w.bed.agent.log()
    );
    let l = w.ok("iscsi.target.list", json!({}));
    // (A restarted agent may also run creates the broker still held for it: more, not fewer.)
    for name in desired.keys() {
        assert!(
            l["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == json!(name)),
            "{name} lost: {l}"
        );
    }
    for t in l["targets"].as_array().unwrap() {
        let n = t["name"].as_str().unwrap();
        assert_eq!(
            w.tgtd.capacity(
                &iqn(n),
                1,
                C1,
                Some((&format!("user-{n}"), "Crash12Secret"))
            ),
            Ok(MIB),
            "{t}"
        );
    }
}

#[test]
fn a_target_with_sessions_is_deleted_only_with_force() {
    let w = world("gw-iscsi-force", 0);
    w.ok(
        "iscsi.target.create",
        json!({"name": "busy", "luns": [{"lun": 1, "path": w.dirs.path("busy.img"), "size_bytes": MIB}],
               "initiators": [C1]}),
    );
    let t = iqn("busy");
    let mut perf = w.tgtd.hold_session(&t, 1, C1, 30);
    assert!(
        wait_until(Duration::from_secs(10), || {
            w.ok("iscsi.target.get", json!({"name": "busy"}))["actual"]["sessions"] == json!(1)
        }),
        "no session seen\n{}",
        perf.log()
    );
    let e = w
        .bed
        .call_err("iscsi.target.delete", json!({"name": "busy"}), "CONFLICT");
    assert!(e["message"].as_str().unwrap().contains("force"), "{e}");
    assert!(w.tgtd.show().contains(&t));

    let d = w.ok(
        "iscsi.target.delete",
        json!({"name": "busy", "force": true}),
    );
    assert_eq!(d["existed"], json!(true), "{d}");
    assert!(!w.tgtd.show().contains(&t), "{}", w.tgtd.show());
    assert!(
        perf.wait_exit(Duration::from_secs(10)).is_some(),
        "the initiator was not disconnected\n{}",
        perf.log()
    );
    assert_eq!(w.ok("iscsi.target.list", json!({}))["targets"], json!([]));
}
