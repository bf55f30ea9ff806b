//! Local faults, end to end: a storage daemon killed while the agent is in the middle of a
//! command, and the agent's state directory running out of space. Real smbd and tgtd (the
//! harness's private ones), the real agent, a real Mosquitto.
//!
//! "In the middle" is made exact with a wrapper around one of the agent's programs that stops
//! at a chosen call (`csg_e2e::fsfault::Gate`): the agent has found the daemon up and saved the
//! new desired state when the daemon is SIGKILLed, then the call goes on against the dead
//! daemon. For Samba it stops at the real `net conf import` (after its dry run): the import
//! still lands in the registry (a file), the reload finds no smbd, and the agent has to take
//! the share back. For tgt it stops at the LUN add: the target already exists in tgtd. More
//! commands queued behind it (a stream, serialized by the family's lock) meet the dead daemon.
//!
//! The full state directory is a small tmpfs filled to the last page (`fsfault::Tmpfs`),
//! unmounted when the test ends, however it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csg_e2e::fsfault::{Gate, Tmpfs};
use csg_e2e::rpc::{self, expect_err, expect_ok};
use csg_e2e::smbd::Smbd;
use csg_e2e::tgtd::Tgtd;
use csg_e2e::{unique, wait_until, Bed, IscsiSection, StorageDirs, TIMEOUT};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// shared
// ---------------------------------------------------------------------------------------------

/// A user smbd does not know: with `map to guest = Bad User` it lists shares as the guest, so
/// the client-side check needs no account on the machine.
const GUEST: (&str, &str) = ("csg-nobody", "x");

/// Sends a request without waiting; its reply is collected later with `Bed::reply_since`.
fn send(bed: &Bed, id: &str, method: &str, params: Value) {
    bed.send_raw(rpc::bytes(&rpc::request(
        id,
        method,
        params,
        Some(&bed.reply_to),
    )));
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// The state file parses as JSON (it is never torn).
fn parses(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "state file is not JSON ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// SMB
// ---------------------------------------------------------------------------------------------

struct SmbWorld {
    // Drop order: the agent first (it holds files on the tmpfs), then smbd, then the mount,
    // then the directories under it.
    bed: Bed,
    smbd: Smbd,
    gate: Option<Gate>,
    fs: Option<Tmpfs>,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

/// smbd plus an agent driving it. `tmpfs`: the state directory lives on a tmpfs of that size.
/// `gate`: the agent's `net` stops at the real (not the dry-run) `net conf import`.
fn smb_world(instance: &str, tmpfs: Option<u64>, gate: bool) -> SmbWorld {
    let smbd = Smbd::start();
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let fs = tmpfs.map(|size| Tmpfs::mount(&base.join("fs"), size));
    let state = match &fs {
        Some(fs) => fs.path().join("state"),
        None => base.join("state"),
    };
    let gate = gate.then(|| {
        Gate::wrap(
            &base,
            "net",
            Path::new("/usr/bin/net"),
            &["import"],
            &["-T"],
        )
    });
    let bed = Bed::start_with(instance, |c| {
        smbd.configure(c, &state);
        if let (Some(smb), Some(g)) = (&mut c.smb, &gate) {
            smb.net = Some(g.program().into());
        }
    });
    SmbWorld {
        bed,
        smbd,
        gate,
        fs,
        state,
        _dir: dir,
    }
}

impl SmbWorld {
    fn share_dir(&self, name: &str) -> String {
        let d = self.smbd.root().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.display().to_string()
    }

    fn spec(&self, name: &str) -> Value {
        json!({"name": name, "path": self.share_dir(name), "comment": format!("share {name}")})
    }

    fn state_file(&self) -> PathBuf {
        self.state.join("state.json")
    }

    /// The registry as `net conf list` prints it (read straight from the registry file, so it
    /// works with smbd down too).
    fn registry(&self) -> String {
        let o = self.smbd.net_conf(&["list"]);
        o.assert_code(0);
        o.stdout
    }

    /// The share names a client sees (`smbclient -L`).
    fn client_shares(&self) -> Vec<String> {
        let o = self.smbd.list_shares(GUEST.0, GUEST.1);
        assert_eq!(o.code(), Some(0), "{}\n{}", o.describe(), self.smbd.log());
        o.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("Disk|"))
            .filter_map(|l| l.split('|').next())
            .map(String::from)
            .collect()
    }

    fn call(&self, method: &str, params: Value) -> (String, Value) {
        let id = unique("smb");
        let r = self.bed.call_raw(&id, method, params);
        (id, r)
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        let (id, r) = self.call(method, params);
        if r["ok"] != json!(true) {
            panic!(
                "{method} failed: {r}\n{}\n{}",
                self.bed.agent.log(),
                self.smbd.log()
            );
        }
        expect_ok(&r, &id)
    }
}

#[test]
fn smbd_killed_mid_command_is_unavailable_nothing_half_applied_and_the_retry_works() {
    let mut w = smb_world("gw-fault-smbd", None, true);
    w.ok("smb.share.create", w.spec("alpha"));
    assert_eq!(w.client_shares(), ["alpha"]);
    let state_before = read(&w.state_file());
    let registry_before = w.registry();

    // beta stops at its registry import: smbd was up for the pre-flight, the new desired state
    // is saved, the dry run passed. Two more commands queue behind it.
    let gate = w.gate.as_ref().unwrap();
    gate.arm();
    let mark = w.bed.rec.mark();
    let ids: Vec<String> = (0..3).map(|_| unique("mid")).collect();
    send(&w.bed, &ids[0], "smb.share.create", w.spec("beta"));
    send(&w.bed, &ids[1], "smb.share.create", w.spec("gamma"));
    send(
        &w.bed,
        &ids[2],
        "smb.share.update",
        json!({"name": "alpha", "path": w.share_dir("alpha"), "comment": "changed"}),
    );
    assert!(
        gate.wait_reached(TIMEOUT),
        "the create never reached its import\n{}",
        w.bed.agent.log()
    );
    w.smbd.kill();
    gate.release();

    let replies: Vec<Value> = ids.iter().map(|id| w.bed.reply_since(mark, id)).collect();
    for (id, r) in ids.iter().zip(&replies) {
        let e = expect_err(r, Some(id), "UNAVAILABLE");
        assert_eq!(e["retryable"], json!(true), "{r}");
    }
    // Nothing half-applied: the desired state is the one from before, byte for byte, and so
    // is the registry smbd will read when it comes back.
    assert_eq!(
        String::from_utf8_lossy(&read(&w.state_file())),
        String::from_utf8_lossy(&state_before)
    );
    assert_eq!(w.registry(), registry_before);

    // smbd comes back: the same commands (new ids, as a new attempt) succeed and clients see
    // them.
    w.smbd.restart();
    assert_eq!(w.client_shares(), ["alpha"]);
    let r = w.ok("smb.share.create", w.spec("beta"));
    assert_eq!(r["changed"], json!(true), "{r}");
    w.ok("smb.share.create", w.spec("gamma"));
    w.ok(
        "smb.share.update",
        json!({"name": "alpha", "path": w.share_dir("alpha"), "comment": "changed"}),
    );
    let mut seen = w.client_shares();
    seen.sort();
    assert_eq!(seen, ["alpha", "beta", "gamma"]);
    let l = w.ok("smb.share.list", json!({}));
    for s in l["shares"].as_array().unwrap() {
        assert_eq!(s["drift"], json!([]), "{l}");
    }
}

// ---------------------------------------------------------------------------------------------
// iSCSI (tgt)
// ---------------------------------------------------------------------------------------------

const PREFIX: &str = "iqn.2026-11.test.csg";
const C1: &str = "iqn.2026-11.test.client:c1";
const MIB: u64 = 1 << 20;

fn iqn(name: &str) -> String {
    format!("{PREFIX}:{name}")
}

struct TgtWorld {
    bed: Bed,
    tgtd: Tgtd,
    gate: Gate,
    dirs: StorageDirs,
}

/// tgtd plus an agent whose `tgtadm` stops at the first `--mode logicalunit --op new` once
/// armed (the target itself exists in tgtd by then), with the watcher that puts targets back
/// after a tgtd restart checking every second.
fn tgt_world(instance: &str) -> TgtWorld {
    let tgtd = Tgtd::start();
    let dirs = StorageDirs::new();
    let gate = Gate::wrap(
        dirs.base(),
        "tgtadm",
        Path::new("/usr/sbin/tgtadm"),
        &["logicalunit", "new"],
        &[],
    );
    let bed = Bed::start_with(instance, |c| {
        c.storage = Some(dirs.section());
        c.iscsi = Some(IscsiSection {
            tgtadm: Some(gate.program().into()),
            watch_interval_s: Some(1),
            ..tgtd.iscsi_section(PREFIX)
        });
    });
    TgtWorld {
        bed,
        tgtd,
        gate,
        dirs,
    }
}

impl TgtWorld {
    fn img(&self, name: &str) -> PathBuf {
        self.dirs.root().join(format!("{name}.img"))
    }

    fn spec(&self, name: &str) -> Value {
        json!({
            "name": name,
            "luns": [{"lun": 1, "path": self.img(name).display().to_string(), "size_bytes": MIB}],
            "initiators": [C1],
        })
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        let id = unique("tgt");
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

    /// What the initiator C1 is offered (`iscsi-ls`).
    fn listed(&self) -> String {
        let o = self.tgtd.iscsi_ls(C1, None);
        o.stdout + &o.stderr
    }
}

#[test]
fn tgtd_killed_mid_command_is_unavailable_and_its_targets_come_back_with_it() {
    let mut w = tgt_world("gw-fault-tgtd");
    for n in ["pre1", "pre2"] {
        w.ok("iscsi.target.create", w.spec(n));
    }
    let ls = w.listed();
    assert!(
        ls.contains(&iqn("pre1")) && ls.contains(&iqn("pre2")),
        "{ls}"
    );
    let state_path = w.dirs.state().join("state.json");
    let state_before = read(&state_path);

    // "mid" stops between creating its target and adding its LUN; a create, an update and a
    // delete queue behind it.
    w.gate.arm();
    let mark = w.bed.rec.mark();
    let ids: Vec<String> = (0..4).map(|_| unique("mid")).collect();
    send(&w.bed, &ids[0], "iscsi.target.create", w.spec("mid"));
    send(&w.bed, &ids[1], "iscsi.target.create", w.spec("queued"));
    let mut pre1 = w.spec("pre1");
    pre1["luns"][0]["readonly"] = json!(true);
    send(&w.bed, &ids[2], "iscsi.target.update", pre1.clone());
    send(
        &w.bed,
        &ids[3],
        "iscsi.target.delete",
        json!({"name": "pre2"}),
    );
    assert!(
        w.gate.wait_reached(TIMEOUT),
        "the create never reached its LUN\n{}",
        w.bed.agent.log()
    );
    // Half-applied in tgtd at the moment of the kill: the target without its LUN.
    assert!(w.tgtd.show().contains(&iqn("mid")), "{}", w.tgtd.show());
    w.tgtd.kill();
    w.gate.release();

    for (i, id) in ids.iter().enumerate() {
        let r = w.bed.reply_since(mark, id);
        let e = expect_err(&r, Some(id), "UNAVAILABLE");
        assert_eq!(e["retryable"], json!(true), "{r}");
        if i == 0 {
            // It failed inside its transaction (the rollback could not reach tgtd either);
            // the queued ones were refused before changing anything.
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains("restoring the previous state failed"), "{r}");
        }
    }
    // Nothing half-applied on the agent's side: the desired state is byte for byte the one
    // from before, and the backing files the failed creates made are gone again.
    assert_eq!(
        String::from_utf8_lossy(&read(&state_path)),
        String::from_utf8_lossy(&state_before)
    );
    parses(&read(&state_path));
    for n in ["mid", "queued"] {
        assert!(!w.img(n).exists(), "{n}.img left behind");
    }

    // tgtd comes back empty; the watcher puts back what was desired before the kill (pre2
    // too: its delete failed), and not the half-made "mid".
    w.tgtd.restart();
    let back = wait_until(Duration::from_secs(15), || {
        let ls = w.listed();
        ls.contains(&iqn("pre1")) && ls.contains(&iqn("pre2"))
    });
    assert!(back, "{}\n{}", w.listed(), w.bed.agent.log());
    assert!(!w.tgtd.show().contains(&iqn("mid")), "{}", w.tgtd.show());
    assert_eq!(w.tgtd.capacity(&iqn("pre2"), 1, C1, None), Ok(MIB));

    // The same commands (new ids, as a new attempt) now work.
    w.ok("iscsi.target.create", w.spec("mid"));
    w.ok("iscsi.target.create", w.spec("queued"));
    w.ok("iscsi.target.update", pre1);
    let d = w.ok("iscsi.target.delete", json!({"name": "pre2"}));
    assert_eq!(d["existed"], json!(true), "{d}");
    let ls = w.listed();
    for n in ["pre1", "mid", "queued"] {
        assert!(ls.contains(&format!("Target:{}", iqn(n))), "{n}: {ls}");
    }
    assert!(!ls.contains(&iqn("pre2")), "{ls}");
    assert_eq!(w.tgtd.capacity(&iqn("mid"), 1, C1, None), Ok(MIB));
    let l = w.ok("iscsi.target.list", json!({}));
    assert_eq!(l["unexpected"], json!([]), "{l}");
    for t in l["targets"].as_array().unwrap() {
        assert_eq!(t["drift"], json!([]), "{l}");
    }
}

// ---------------------------------------------------------------------------------------------
// A full state directory (SMB: the agent drives a real smbd; its state directory, with the
// desired state, the reply journal and the file it hands to `net conf import`, is a tmpfs)
// ---------------------------------------------------------------------------------------------

const FS_SIZE: u64 = 256 * 1024;

/// What the agent logs when a reply cannot be journaled.
const JOURNAL_WARN: &str = "reply journal not written";

/// A mutation refused because its desired state could not be written: an error, and not one
/// that blames the request (the same request works once there is space), saying what could
/// not be written and why.
fn refused_for_space(r: &Value, id: &str) -> Value {
    let code = r["error"]["code"].as_str().unwrap_or_default().to_string();
    let e = expect_err(r, Some(id), &code);
    assert!(
        ["INTERNAL", "BACKEND_ERROR", "UNAVAILABLE"].contains(&code.as_str()),
        "{r}"
    );
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("No space left on device") && msg.contains("state.json"),
        "{r}"
    );
    e
}

impl SmbWorld {
    fn fs(&self) -> &Tmpfs {
        self.fs.as_ref().expect("a world on a tmpfs")
    }

    fn journal_len(&self) -> u64 {
        std::fs::metadata(self.state.join("replies.journal"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The files in the state directory.
    fn state_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// kill -9 and start again on the same config and state directory.
    fn restart_agent(&mut self) {
        self.bed.agent.kill9();
        let config = self.bed.agent.config.clone();
        let mark = self.bed.rec.mark();
        self.bed.agent = csg_e2e::Agent::spawn(&config);
        self.bed.wait_online(mark);
    }

    /// Re-sends a request with the id it had: the agent must answer it from memory.
    fn resend(&self, id: &str, method: &str, params: Value) -> Value {
        self.bed.call_raw(id, method, params)
    }
}

#[test]
fn a_full_state_directory_refuses_mutations_changes_nothing_and_recovers() {
    let w = smb_world("gw-fault-full", Some(FS_SIZE), false);
    w.ok("smb.share.create", w.spec("alpha"));
    let state_before = read(&w.state_file());
    let registry_before = w.registry();
    let names_before = w.state_names();

    w.fs().fill();
    let alpha_changed =
        json!({"name": "alpha", "path": w.share_dir("alpha"), "comment": "changed"});
    let attempts = [
        ("smb.share.create", w.spec("beta")),
        ("smb.share.update", alpha_changed.clone()),
        ("smb.share.delete", json!({"name": "alpha"})),
    ];
    for (method, params) in &attempts {
        let (id, r) = w.call(method, params.clone());
        refused_for_space(&r, &id);
    }
    // Not torn, not changed: the file is the old one byte for byte, no temp file is left
    // behind, and Samba (the registry, what clients see) is as it was.
    let state_now = read(&w.state_file());
    parses(&state_now);
    assert_eq!(
        String::from_utf8_lossy(&state_now),
        String::from_utf8_lossy(&state_before)
    );
    assert_eq!(w.state_names(), names_before);
    assert_eq!(w.registry(), registry_before);
    assert_eq!(w.client_shares(), ["alpha"]);
    // Reads still work.
    let l = w.ok("smb.share.list", json!({}));
    assert_eq!(l["shares"].as_array().unwrap().len(), 1, "{l}");

    // Space again: the same mutations (new ids, as a new attempt) work.
    w.fs().free();
    let r = w.ok("smb.share.create", w.spec("beta"));
    assert_eq!(r["changed"], json!(true), "{r}");
    let r = w.ok("smb.share.update", alpha_changed);
    assert_eq!(r["share"]["actual"]["comment"], json!("changed"), "{r}");
    let mut seen = w.client_shares();
    seen.sort();
    assert_eq!(seen, ["alpha", "beta"]);
    let r = w.ok("smb.share.delete", json!({"name": "alpha"}));
    assert_eq!(r, json!({"existed": true}));
    assert_eq!(w.client_shares(), ["beta"]);
    parses(&read(&w.state_file()));
}

#[test]
fn a_full_disk_never_tears_the_reply_journal_and_the_agent_still_starts_on_it() {
    let mut w = smb_world("gw-fault-journal", Some(FS_SIZE), false);
    let create_alpha = w.spec("alpha");
    let alpha_id = unique("alpha");
    let alpha_reply = w.resend(&alpha_id, "smb.share.create", create_alpha.clone());
    expect_ok(&alpha_reply, &alpha_id);

    // Cheap mutations (deletes of a share that does not exist: nothing to change, but
    // journaled like any mutation) until one does not fit. The disk is full to the last page,
    // so the one that does not fit is written in part (the rest of the journal's last page)
    // before the disk says no.
    w.fs().fill();
    let ghost = json!({"name": "ghost"});
    let mut len = w.journal_len();
    let mut record = 0;
    let mut hit = None;
    for i in 0..40 {
        // A record that would end exactly on the page boundary fits without a tear: one
        // character more in the id then.
        let room = csg_e2e::fsfault::PAGE - len % csg_e2e::fsfault::PAGE;
        let id = if room == record {
            format!("tear-{i:05}")
        } else {
            format!("tear-{i:04}")
        };
        let r = w.resend(&id, "smb.share.delete", ghost.clone());
        expect_ok(&r, &id);
        let now = w.journal_len();
        if w.bed.agent.log().contains(JOURNAL_WARN) {
            hit = Some((len, now));
            break;
        }
        record = now - len;
        len = now;
    }
    let (before, after) = hit.unwrap_or_else(|| {
        panic!(
            "the journal never ran out of space ({len} bytes)\n{}",
            w.bed.agent.log()
        )
    });
    assert_ne!(
        before % csg_e2e::fsfault::PAGE,
        0,
        "no partial write was possible"
    );
    // The part written is cut off again: the journal ends with its last whole record.
    assert_eq!(after, before, "the failed append left a torn record behind");

    // Space again. A delete is answered and journaled (behind where the torn record was).
    w.fs().free();
    let del_id = unique("delete");
    let del = w.resend(&del_id, "smb.share.delete", json!({"name": "alpha"}));
    assert_eq!(expect_ok(&del, &del_id), json!({"existed": true}));

    // After a restart, re-sending both ids gets the remembered replies, byte for byte: the
    // delete is not run again (a second run would say existed: false).
    w.restart_agent();
    assert_eq!(
        w.resend(&del_id, "smb.share.delete", json!({"name": "alpha"})),
        del
    );
    assert_eq!(
        w.resend(&alpha_id, "smb.share.create", create_alpha.clone()),
        alpha_reply
    );

    // A restart on a full disk: the journal cannot be rewritten (compacted) then; the agent
    // must still start, answer, remember, and refuse mutations cleanly.
    let state_before = read(&w.state_file());
    w.fs().fill();
    w.restart_agent();
    assert!(w.bed.status()["uptime_s"].is_u64());
    assert_eq!(
        w.resend(&del_id, "smb.share.delete", json!({"name": "alpha"})),
        del
    );
    let (id, r) = w.call("smb.share.create", w.spec("beta"));
    refused_for_space(&r, &id);
    assert_eq!(read(&w.state_file()), state_before);
    w.fs().free();
    w.ok("smb.share.create", w.spec("beta"));
    assert_eq!(w.client_shares(), ["beta"]);
}

#[test]
fn a_disk_that_fills_up_during_the_apply_is_rolled_back_or_reported_then_converges() {
    // A fresh state directory (no state file yet) with one page left: the new desired state
    // takes it, then the agent finds no room for the file it hands to `net conf import` (in
    // the same directory). The apply fails after the desired state was saved, and putting the
    // old desired state back needs room too.
    let w = smb_world("gw-fault-apply", Some(FS_SIZE), false);
    assert!(!w.state_file().exists(), "{:?}", w.state_names());
    let registry_before = w.registry();
    w.fs().fill_leaving(1);
    let (id, r) = w.call("smb.share.create", w.spec("beta"));
    let code = r["error"]["code"].as_str().unwrap_or_default().to_string();
    let e = expect_err(&r, Some(&id), &code);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("No space left on device"), "{r}");

    // Samba never got the share, and nothing torn or stray is left in the state directory.
    assert_eq!(w.registry(), registry_before);
    assert!(w.client_shares().is_empty());
    for n in w.state_names() {
        assert!(
            ["agent.lock", "replies.journal", "state.json"].contains(&n.as_str()),
            "stray file {n} in the state directory: {:?}",
            w.state_names()
        );
    }
    // Either the old desired state is back and the reply says so, or the desired state still
    // holds the share, the reply says it could not be restored, and the share is reported as
    // drift: never a desired state that quietly differs from what the console was told.
    let desired = w
        .state_file()
        .exists()
        .then(|| parses(&read(&w.state_file())));
    let kept = desired.is_some_and(|d| d["families"]["smb"]["shares"]["beta"].is_object());
    if kept {
        assert!(msg.contains("restoring the previous state failed"), "{r}");
        let g = w.ok("smb.share.get", json!({"name": "beta"}));
        assert_ne!(g["drift"], json!([]), "{g}");
    } else {
        assert!(msg.contains("the previous state was restored"), "{r}");
    }

    // Space again: a reconcile brings Samba in line with the desired state, whichever it is,
    // and the create (a new id) then holds.
    w.fs().free();
    let rec = w.ok("sys.reconcile", json!({}));
    assert_eq!(rec["smb"]["ok"], json!(true), "{rec}");
    let l = w.ok("smb.share.list", json!({}));
    for s in l["shares"].as_array().unwrap() {
        assert_eq!(s["drift"], json!([]), "{l}");
    }
    let r = w.ok("smb.share.create", w.spec("beta"));
    assert_eq!(r["changed"], json!(!kept), "{r}");
    assert_eq!(w.client_shares(), ["beta"]);
}
