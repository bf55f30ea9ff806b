//! NFS exports end to end: the real agent over MQTT, with
//! - NFS-Ganesha: a private ganesha.nfsd + dbus-daemon per test, checked from the client side
//!   with `nfs-ls` over NFSv4;
//! - kernel nfsd: this kernel has no nfsd, so `exportfs` cannot apply anything here (and the
//!   real one would rewrite the host's /var/lib/nfs/etab, shared by parallel tests). These
//!   tests point `nfs.exportfs` at a recording stand-in (see `Stub`) and check the exports
//!   file the agent writes and the argv it runs, rollback included.

use std::path::Path;

use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::ganesha::Ganesha;
use csg_e2e::{wait_until, Bed, NfsSection, StorageDirs as World, TIMEOUT};
use serde_json::{json, Value};

/// A storage root `srv/` with `vol1`..`vol3` (each with a file), a file, and a symlink that leads
/// out, next to the state dir.
fn world() -> World {
    let w = World::with_root("srv");
    for v in ["vol1", "vol2", "vol3"] {
        std::fs::create_dir_all(w.root().join(v)).unwrap();
        std::fs::write(w.root().join(v).join(format!("hello-{v}.txt")), "hi\n").unwrap();
    }
    std::fs::write(w.root().join("file.txt"), "x").unwrap();
    std::os::unix::fs::symlink(w.base().join("outside"), w.root().join("escape")).unwrap();
    w
}

const HEADER: &str =
    "# Managed by csg-agent: this file is rewritten on every change; edits here are lost.\n";

fn kernel_bed(name: &str, w: &World, stub: &Stub) -> Bed {
    let bed = Bed::start_with(name, |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    // The start-up reconcile reads the table once; wait for it so argv checks start clean.
    assert!(
        wait_until(TIMEOUT, || !stub.argv().is_empty()),
        "start-up reconcile did not run exportfs\n{}",
        bed.agent.log()
    );
    bed.barrier();
    bed
}

fn line(path: &str, clients: &[&str]) -> String {
    let mut s = path.to_string();
    for c in clients {
        s.push(' ');
        s.push_str(c);
    }
    s.push('\n');
    s
}

const OPTS_RW_ROOT: &str = "(rw,sync,root_squash,no_subtree_check,anonuid=65534,anongid=65534)";
const OPTS_RO_ROOT: &str = "(ro,sync,root_squash,no_subtree_check,anonuid=65534,anongid=65534)";

#[test]
fn kernel_writes_the_exports_file_and_runs_exportfs() {
    let w = world();
    let stub = Stub::new(w.base());
    let bed = kernel_bed("nfs-k1", &w, &stub);
    assert_eq!(stub.file(), None, "no exports yet: no file written");
    let base = stub.argv().len();

    let spec = json!({"name": "vol1", "path": w.path("vol1"), "clients": [
        {"match": "10.0.0.0/8", "access": "rw"},
        {"match": "192.0.2.7/32"},
        {"match": "2001:db8::/32", "access": "rw", "squash": "all", "anonuid": 1000, "anongid": 1001}]});
    let r = bed.call_ok("nfs.export.create", spec.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["export"]["drift"], json!([]), "{r}");
    assert_eq!(
        r["export"]["actual"]["clients"].as_array().unwrap().len(),
        3,
        "{r}"
    );
    let vol1_line = line(
        &w.path("vol1"),
        &[
            &format!("10.0.0.0/8{OPTS_RW_ROOT}"),
            &format!("192.0.2.7{OPTS_RO_ROOT}"),
            "2001:db8::/32(rw,sync,all_squash,no_subtree_check,anonuid=1000,anongid=1001)",
        ],
    );
    assert_eq!(
        stub.file().unwrap(),
        format!("{HEADER}# export vol1\n{vol1_line}")
    );
    // Re-export, verify with -s, then -s again for the result.
    assert_eq!(stub.argv()[base..], ["-ra", "-s", "-s"]);
    assert!(stub
        .etab()
        .contains(&format!("{} 10.0.0.0/8(rw,", w.path("vol1"))));

    // The same spec again: nothing applied.
    let n = stub.argv().len();
    let r = bed.call_ok("nfs.export.create", spec.clone());
    assert_eq!(r["changed"], json!(false), "{r}");
    assert!(
        !stub.argv()[n..].contains(&"-ra".to_string()),
        "{:?}",
        stub.argv()
    );

    // A different spec under the same name: CONFLICT, file unchanged.
    let before = stub.file();
    let mut other = spec.clone();
    other["clients"] = json!([{"match": "10.0.0.0/8"}]);
    bed.call_err("nfs.export.create", other.clone(), "CONFLICT");
    assert_eq!(stub.file(), before);
    // The same path under another name: CONFLICT.
    let mut dup = other.clone();
    dup["name"] = json!("vol1b");
    bed.call_err("nfs.export.create", dup, "CONFLICT");

    // A second export, then an update of the first.
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol2", "path": w.path("vol2"), "sync": false,
               "clients": [{"match": "192.0.2.0/24", "access": "rw", "squash": "none"}]}),
    );
    let r = bed.call_ok("nfs.export.update", other);
    assert_eq!(r["changed"], json!(true), "{r}");
    let vol2_line = line(
        &w.path("vol2"),
        &["192.0.2.0/24(rw,async,no_root_squash,no_subtree_check,anonuid=65534,anongid=65534)"],
    );
    assert_eq!(
        stub.file().unwrap(),
        format!(
            "{HEADER}# export vol1\n{}# export vol2\n{vol2_line}",
            line(&w.path("vol1"), &[&format!("10.0.0.0/8{OPTS_RO_ROOT}")])
        )
    );
    let l = bed.call_ok("nfs.export.list", json!({}));
    assert_eq!(l["backend"], json!("kernel"), "{l}");
    let names: Vec<&str> = l["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vol1", "vol2"], "{l}");
    assert!(w.state_text().contains("\"vol2\""), "{}", w.state_text());

    // Drift: the kernel table loses a client behind the agent's back; get names it and
    // sys.reconcile re-exports.
    std::fs::write(stub.dir.join("etab"), "").unwrap();
    let g = bed.call_ok("nfs.export.get", json!({"name": "vol2"}));
    assert_eq!(g["actual"], Value::Null, "{g}");
    assert_eq!(g["drift"], json!(["missing on the server"]), "{g}");
    let n = stub.argv().len();
    let rec = bed.call_ok("sys.reconcile", json!({}));
    assert!(rec.to_string().contains("vol2"), "{rec}");
    assert!(stub.argv()[n..].contains(&"-ra".to_string()));
    let g = bed.call_ok("nfs.export.get", json!({"name": "vol2"}));
    assert_eq!(g["drift"], json!([]), "{g}");

    // Delete: the line goes; a second delete finds nothing; update of a missing one.
    let d = bed.call_ok("nfs.export.delete", json!({"name": "vol2"}));
    assert_eq!(d, json!({"name": "vol2", "existed": true}));
    assert!(!stub.file().unwrap().contains("vol2"));
    let d = bed.call_ok("nfs.export.delete", json!({"name": "vol2"}));
    assert_eq!(d, json!({"name": "vol2", "existed": false}));
    bed.call_err(
        "nfs.export.update",
        json!({"name": "vol2", "path": w.path("vol2"), "clients": [{"match": "10.0.0.0/8"}]}),
        "NOT_FOUND",
    );
    bed.call_err("nfs.export.get", json!({"name": "vol2"}), "NOT_FOUND");
    bed.call_ok("nfs.export.delete", json!({"name": "vol1"}));
    assert_eq!(stub.file().unwrap(), HEADER);
}

#[test]
fn kernel_rolls_back_when_exportfs_fails() {
    let w = world();
    let stub = Stub::new(w.base());
    let bed = kernel_bed("nfs-k2", &w, &stub);
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "10.0.0.0/8"}]}),
    );
    let file_before = stub.file().unwrap();
    let state_before = w.state_text();
    let n = stub.argv().len();

    stub.fail_next_reexport(&format!("exportfs: {}: bad option list\n", w.path("vol2")));
    let e = bed.call_err(
        "nfs.export.create",
        json!({"name": "vol2", "path": w.path("vol2"), "clients": [{"match": "10.0.0.0/8"}]}),
        "BACKEND_ERROR",
    );
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("bad option list"), "{e}");
    assert!(msg.contains("the previous state was restored"), "{e}");
    // The failed -ra, then the old file written back and re-exported.
    assert_eq!(stub.argv()[n..], ["-ra", "-ra"], "{:?}", stub.argv());
    assert_eq!(stub.file().unwrap(), file_before);
    assert_eq!(w.state_text(), state_before, "desired state restored too");
    assert!(!stub.etab().contains("vol2"), "{}", stub.etab());
    let l = bed.call_ok("nfs.export.list", json!({}));
    assert_eq!(l["exports"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["exports"][0]["drift"], json!([]), "{l}");

    // The next try (exportfs healthy again) works.
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol2", "path": w.path("vol2"), "clients": [{"match": "10.0.0.0/8"}]}),
    );
    assert!(stub.file().unwrap().contains(&w.path("vol2")));
}

/// Params that must be refused before anything is written or run.
fn hostile(w: &World) -> Vec<(&'static str, Value)> {
    let ok = |name: &str, path: String, m: &str| json!({"name": name, "path": path, "clients": [{"match": m, "access": "rw"}]});
    vec![
        (
            "dotdot",
            ok(
                "vol9",
                format!("{}/vol1/../vol2", w.root().display()),
                "10.0.0.0/8",
            ),
        ),
        ("symlink out", ok("vol9", w.path("escape"), "10.0.0.0/8")),
        ("outside roots", ok("vol9", "/etc".into(), "10.0.0.0/8")),
        (
            "the root itself",
            ok("vol9", w.root().display().to_string(), "10.0.0.0/8"),
        ),
        ("a file", ok("vol9", w.path("file.txt"), "10.0.0.0/8")),
        ("missing dir", ok("vol9", w.path("nope"), "10.0.0.0/8")),
        (
            "smuggled options",
            ok("vol9", w.path("vol3"), "10.0.0.0/8(rw,no_root_squash)"),
        ),
        (
            "world with options",
            ok("vol9", w.path("vol3"), "*(rw,no_root_squash)"),
        ),
        (
            "hostname, not allowed",
            ok("vol9", w.path("vol3"), "evil.example.com"),
        ),
        (
            "newline in match",
            ok("vol9", w.path("vol3"), "10.0.0.0/8\n/ *(rw)"),
        ),
        (
            "newline in path",
            ok("vol9", format!("{}\n/ *(rw)", w.path("vol3")), "10.0.0.0/8"),
        ),
        (
            "newline in name",
            ok("vol9\n", w.path("vol3"), "10.0.0.0/8"),
        ),
        (
            "space in path",
            ok("vol9", format!("{} x", w.path("vol3")), "10.0.0.0/8"),
        ),
        ("upper-case name", ok("Vol9", w.path("vol3"), "10.0.0.0/8")),
        (
            "no clients",
            json!({"name": "vol9", "path": w.path("vol3"), "clients": []}),
        ),
        (
            "unknown param",
            json!({"name": "vol9", "path": w.path("vol3"), "clients": [{"match": "10.0.0.0/8"}], "options": "rw"}),
        ),
        (
            "unknown access",
            json!({"name": "vol9", "path": w.path("vol3"), "clients": [{"match": "10.0.0.0/8", "access": "rw,no_root_squash"}]}),
        ),
        (
            "anonuid -1",
            json!({"name": "vol9", "path": w.path("vol3"), "clients": [{"match": "10.0.0.0/8", "anonuid": 4294967295u32}]}),
        ),
        (
            "newline in pseudo",
            json!({"name": "vol9", "path": w.path("vol3"), "pseudo": "/x\n}", "clients": [{"match": "10.0.0.0/8"}]}),
        ),
    ]
}

#[test]
fn kernel_hostile_input_changes_nothing() {
    let w = world();
    let stub = Stub::new(w.base());
    let bed = kernel_bed("nfs-k3", &w, &stub);
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "10.0.0.0/8"}]}),
    );
    let (file, state, n) = (stub.file(), w.state_text(), stub.argv().len());
    let mut cases = hostile(&w);
    cases.push((
        "pseudo on kernel",
        json!({"name": "vol9", "path": w.path("vol3"), "pseudo": "/vol9", "clients": [{"match": "10.0.0.0/8"}]}),
    ));
    cases.push((
        "protocols on kernel",
        json!({"name": "vol9", "path": w.path("vol3"), "protocols": [4], "clients": [{"match": "10.0.0.0/8"}]}),
    ));
    for (why, params) in cases {
        for method in ["nfs.export.create", "nfs.export.update"] {
            let e = bed.call_err(method, params.clone(), "INVALID_PARAMS");
            assert!(!e["message"].as_str().unwrap().is_empty(), "{why}: {e}");
        }
    }
    bed.call_err(
        "nfs.export.delete",
        json!({"name": "../vol1"}),
        "INVALID_PARAMS",
    );
    bed.call_err(
        "nfs.export.get",
        json!({"name": "vol1", "x": 1}),
        "INVALID_PARAMS",
    );
    bed.call_err("nfs.export.list", json!({"x": 1}), "INVALID_PARAMS");
    assert_eq!(stub.file(), file);
    assert_eq!(w.state_text(), state);
    assert_eq!(stub.argv().len(), n, "no exportfs run: {:?}", stub.argv());
    assert_eq!(
        std::fs::read_dir(stub.exports.parent().unwrap())
            .unwrap()
            .count(),
        1,
        "no temp files left next to the exports file"
    );
}

/// Exporting to everyone needs `nfs.allow_world`, whatever the spelling; an export made with it
/// survives a restart without it (kept, served and named in the log).
#[test]
fn kernel_world_exports_need_the_opt_in() {
    let w = world();
    let stub = Stub::new(w.base());
    let mut bed = Bed::start_with("nfs-k5", |c| {
        c.storage = Some(w.section());
        c.nfs = Some(NfsSection {
            allow_world: Some(true),
            ..stub.nfs_section()
        });
    });
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "0.0.0.0/0"}]}),
    );
    let want = line(&w.path("vol1"), &[&format!("0.0.0.0/0{OPTS_RO_ROOT}")]);
    assert!(
        wait_until(TIMEOUT, || stub.file().is_some_and(|f| f.ends_with(&want))),
        "{:?}",
        stub.file()
    );
    let file = stub.file();

    // The same agent without the opt-in.
    bed.agent.kill9();
    let mut strict = bed.config().clone();
    if let Some(n) = strict.nfs.as_mut() {
        n.allow_world = None;
    }
    let agent = bed.spawn_agent("nfs-k5", |c| c.storage_of(&strict));
    assert!(
        wait_until(TIMEOUT, || agent
            .log()
            .contains("stored NFS export reaches the world and is kept")),
        "{}",
        agent.log()
    );
    let l = bed.call_ok("nfs.export.list", json!({}));
    assert_eq!(
        l["exports"][0]["desired"]["clients"][0]["match"], "0.0.0.0/0",
        "{l}"
    );
    assert_eq!(stub.file(), file, "the stored export is still served");
    let (state, n) = (w.state_text(), stub.argv().len());
    for (m, setting) in [
        ("0.0.0.0/0", "nfs.min_prefix_v4 = 8"),
        ("8.0.0.0/7", "nfs.min_prefix_v4 = 8"),
        ("::/0", "nfs.min_prefix_v6 = 32"),
        ("::0/0", "nfs.min_prefix_v6 = 32"),
        ("::ffff:0.0.0.0/96", "IPv4-mapped"),
    ] {
        for (method, name) in [("nfs.export.create", "vol2"), ("nfs.export.update", "vol1")] {
            let e = bed.call_err(
                method,
                json!({"name": name, "path": w.path(name), "clients": [{"match": m}]}),
                "INVALID_PARAMS",
            );
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.contains("nfs.allow_world") && msg.contains(setting),
                "{m}: {e}"
            );
        }
    }
    // Spellings exportfs reads as everyone that are not client matches at all.
    for m in ["*", "0/0", "0.0.0.0/0.0.0.0"] {
        bed.call_err(
            "nfs.export.create",
            json!({"name": "vol2", "path": w.path("vol2"), "clients": [{"match": m}]}),
            "INVALID_PARAMS",
        );
    }
    assert_eq!(w.state_text(), state);
    assert_eq!(stub.argv().len(), n, "nothing run: {:?}", stub.argv());
    // Narrowing the stored export is an ordinary update.
    bed.call_ok(
        "nfs.export.update",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "10.0.0.0/8"}]}),
    );
    let log = agent.log();
    assert_eq!(
        log.matches("stored NFS export reaches the world").count(),
        1,
        "named once: {log}"
    );
}

#[test]
fn kernel_restart_reconciles_the_file() {
    let w = world();
    let stub = Stub::new(w.base());
    let mut bed = kernel_bed("nfs-k4", &w, &stub);
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "10.0.0.0/8"}]}),
    );
    let want = stub.file().unwrap();
    bed.agent.kill9();
    // Someone edits the agent's file while it is down.
    std::fs::write(&stub.exports, "/ *(rw,no_root_squash)\n").unwrap();
    let first = bed.config().clone();
    let _agent = bed.spawn_agent("nfs-k4", |c| c.storage_of(&first));
    assert!(
        wait_until(TIMEOUT, || stub.file().as_deref() == Some(want.as_str())),
        "the restarted agent did not rewrite the file: {:?}",
        stub.file()
    );
    assert!(wait_until(TIMEOUT, || stub
        .etab()
        .contains(&w.path("vol1"))));
    let _ = Path::new("");
}

// ----- NFS-Ganesha -----

/// `allow_hostnames`: `nfs.allow_hostnames`, the agent's default when `None`.
fn ganesha_bed(name: &str, w: &World, g: &Ganesha, allow_hostnames: Option<bool>) -> Bed {
    Bed::start_with(name, |c| {
        c.storage = Some(w.section());
        c.nfs = Some(NfsSection {
            allow_hostnames,
            ..g.nfs_section()
        });
    })
}

fn conf_files(g: &Ganesha) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(g.exports_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn ganesha_export_is_served_then_removed() {
    let w = world();
    let g = Ganesha::start();
    let bed = ganesha_bed("nfs-g1", &w, &g, None);
    // Nothing is served before the agent creates it.
    assert_ne!(g.nfs_ls("/vol1").code(), Some(0));

    let spec = json!({"name": "vol1", "path": w.path("vol1"),
                      "clients": [{"match": "127.0.0.1", "access": "rw", "squash": "none"}]});
    let r = bed.call_ok("nfs.export.create", spec.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["export"]["drift"], json!([]), "{r}");
    assert_eq!(r["export"]["actual"]["export_id"], json!(10000), "{r}");
    assert_eq!(r["export"]["actual"]["pseudo"], json!("/vol1"), "{r}");
    assert_eq!(r["export"]["desired"]["protocols"], json!([3, 4]), "{r}");
    let ls = g.nfs_ls("/vol1");
    assert!(
        ls.code() == Some(0) && ls.stdout.contains("hello-vol1.txt"),
        "{}\n{}",
        ls.describe(),
        g.log()
    );
    assert_eq!(conf_files(&g), ["vol1.conf"]);
    let conf = std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap();
    assert!(
        conf.contains("Export_Id = 10000;") && conf.contains("Clients = 127.0.0.1;"),
        "{conf}"
    );
    assert_eq!(g.export_ids(), [10000]);

    // Identical → no-op; different → CONFLICT (and nothing changes).
    let r = bed.call_ok("nfs.export.create", spec.clone());
    assert_eq!(r["changed"], json!(false), "{r}");
    let mut other = spec.clone();
    other["clients"] = json!([{"match": "10.0.0.0/8"}]);
    bed.call_err("nfs.export.create", other.clone(), "CONFLICT");
    assert_eq!(
        std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap(),
        conf
    );

    // Update to clients that exclude 127.0.0.1: the client loses it; back again: it sees it.
    let r = bed.call_ok("nfs.export.update", other);
    assert_eq!(r["export"]["drift"], json!([]), "{r}");
    assert_ne!(
        g.nfs_ls("/vol1").code(),
        Some(0),
        "10.0.0.0/8 only, yet 127.0.0.1 sees it"
    );
    bed.call_ok("nfs.export.update", spec.clone());
    g.nfs_ls("/vol1").assert_code(0);

    // A second export on a new pseudo path, and a path change (new Export_Id).
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol2", "path": w.path("vol2"), "pseudo": "/exports/two", "protocols": [4],
               "clients": [{"match": "127.0.0.0/8"}]}),
    );
    let ls = g.nfs_ls("/exports/two");
    assert!(ls.stdout.contains("hello-vol2.txt"), "{}", ls.describe());
    let r = bed.call_ok(
        "nfs.export.update",
        json!({"name": "vol2", "path": w.path("vol3"), "pseudo": "/exports/two", "protocols": [4],
               "clients": [{"match": "127.0.0.0/8"}]}),
    );
    assert_eq!(r["export"]["actual"]["export_id"], json!(10002), "{r}");
    let ls = g.nfs_ls("/exports/two");
    assert!(ls.stdout.contains("hello-vol3.txt"), "{}", ls.describe());
    assert_eq!(g.export_ids(), [10000, 10002]);

    // Delete: gone for the client, file gone; again: existed false.
    let d = bed.call_ok("nfs.export.delete", json!({"name": "vol1"}));
    assert_eq!(d["existed"], json!(true));
    assert_ne!(g.nfs_ls("/vol1").code(), Some(0));
    assert_eq!(conf_files(&g), ["vol2.conf"]);
    assert_eq!(g.export_ids(), [10002]);
    let d = bed.call_ok("nfs.export.delete", json!({"name": "vol1"}));
    assert_eq!(d["existed"], json!(false));
    let s = bed.call_ok("sys.status", json!({}));
    assert_eq!(
        s["services"]["nfs"],
        json!({"backend": "ganesha", "up": true}),
        "{s}"
    );
    assert_eq!(s["storage"]["nfs"], json!({"count": 1, "drift": 0}), "{s}");
}

#[test]
fn ganesha_hostile_input_changes_nothing() {
    let w = world();
    let g = Ganesha::start();
    let bed = ganesha_bed("nfs-g2", &w, &g, None);
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "127.0.0.1"}]}),
    );
    let conf = std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap();
    let state = w.state_text();
    let mut cases = hostile(&w);
    cases.push((
        "async on ganesha",
        json!({"name": "vol9", "path": w.path("vol3"), "sync": false, "clients": [{"match": "127.0.0.1"}]}),
    ));
    cases.push((
        "pseudo with a quote",
        json!({"name": "vol9", "path": w.path("vol3"), "pseudo": "/x\";}", "clients": [{"match": "127.0.0.1"}]}),
    ));
    cases.push((
        "protocol 2",
        json!({"name": "vol9", "path": w.path("vol3"), "protocols": [2], "clients": [{"match": "127.0.0.1"}]}),
    ));
    for (why, params) in cases {
        let e = bed.call_err("nfs.export.create", params, "INVALID_PARAMS");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{why}: {e}");
    }
    assert_eq!(conf_files(&g), ["vol1.conf"]);
    assert_eq!(
        std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap(),
        conf
    );
    assert_eq!(w.state_text(), state);
    assert_eq!(g.export_ids(), [10000]);
    // Pseudo path taken by another export: CONFLICT.
    bed.call_err("nfs.export.create",
        json!({"name": "vol2", "path": w.path("vol2"), "pseudo": "/vol1", "clients": [{"match": "127.0.0.1"}]}),
        "CONFLICT",
    );
    assert_eq!(conf_files(&g), ["vol1.conf"]);
}

#[test]
fn ganesha_failed_apply_is_rolled_back() {
    let w = world();
    let g = Ganesha::start();
    let bed = ganesha_bed("nfs-g3", &w, &g, Some(true));
    let spec = json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "127.0.0.1"}]});
    bed.call_ok("nfs.export.create", spec.clone());
    let conf = std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap();
    let state = w.state_text();

    // Ganesha itself refuses a client it cannot resolve ("Errors found"): the update is
    // undone (old file, old export), and so is the desired state.
    let mut bad = spec.clone();
    bad["clients"] = json!([{"match": "127.0.0.1"}, {"match": "no-such-host.invalid"}]);
    let e = bed.call_err("nfs.export.update", bad.clone(), "BACKEND_ERROR");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("no-such-host.invalid"), "{e}");
    assert!(msg.contains("the previous state was restored"), "{e}");
    assert_eq!(
        std::fs::read_to_string(g.exports_dir().join("vol1.conf")).unwrap(),
        conf
    );
    assert_eq!(w.state_text(), state);
    let got = bed.call_ok("nfs.export.get", json!({"name": "vol1"}));
    assert_eq!(got["drift"], json!([]), "{got}");
    g.nfs_ls("/vol1").assert_code(0);

    // The same on create: no file, no export, no state left behind.
    let mut bad2 = bad.clone();
    bad2["name"] = json!("vol2");
    bad2["path"] = json!(w.path("vol2"));
    let e = bed.call_err("nfs.export.create", bad2, "BACKEND_ERROR");
    assert!(e["message"].as_str().unwrap().contains("restored"), "{e}");
    assert_eq!(conf_files(&g), ["vol1.conf"]);
    assert_eq!(g.export_ids(), [10000]);
    assert_eq!(w.state_text(), state);
}

#[test]
fn ganesha_drift_is_reported_and_reconciled() {
    let w = world();
    let mut g = Ganesha::start();
    let bed = ganesha_bed("nfs-g4", &w, &g, None);
    bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "127.0.0.1", "access": "rw"}]}),
    );
    // Removed behind the agent's back (Ganesha keeps no record of D-Bus changes).
    g.export_mgr("RemoveExport", &["uint16:10000"])
        .assert_code(0);
    assert_ne!(g.nfs_ls("/vol1").code(), Some(0));
    let got = bed.call_ok("nfs.export.get", json!({"name": "vol1"}));
    assert_eq!(got["drift"], json!(["missing on the server"]), "{got}");
    let s = bed.call_ok("sys.status", json!({}));
    assert_eq!(s["storage"]["nfs"], json!({"count": 1, "drift": 1}), "{s}");

    let rec = bed.call_ok("sys.reconcile", json!({}));
    assert_eq!(rec["nfs"]["ok"], json!(true), "{rec}");
    let changes = rec["nfs"]["changes"].to_string();
    assert!(
        changes.contains("vol1") && changes.contains("missing"),
        "{rec}"
    );
    g.nfs_ls("/vol1").assert_code(0);
    let got = bed.call_ok("nfs.export.get", json!({"name": "vol1"}));
    assert_eq!(got["drift"], json!([]), "{got}");
    // A second pass has nothing to do.
    let rec = bed.call_ok("sys.reconcile", json!({}));
    assert_eq!(rec["nfs"]["changes"], json!([]), "{rec}");
    assert!(g.is_running(), "{}", g.log());
}

#[test]
fn ganesha_never_touches_an_export_it_does_not_own() {
    let w = world();
    let g = Ganesha::start();
    // The operator's own export, on the id the agent would hand out first.
    let own = g.dir().join("operator.conf");
    std::fs::write(
        &own,
        format!(
            "EXPORT {{ Export_Id = 10000; Path = \"{}\"; Pseudo = \"/operator\"; \
             Access_Type = None; CLIENT {{ Clients = 127.0.0.1; Access_Type = RO; }} \
             FSAL {{ Name = VFS; }} }}\n",
            w.path("vol3")
        ),
    )
    .unwrap();
    g.export_mgr(
        "AddExport",
        &[
            &format!("string:{}", own.display()),
            "string:EXPORT(Export_Id=10000)",
        ],
    )
    .assert_code(0);
    g.nfs_ls("/operator").assert_code(0);

    let bed = ganesha_bed("nfs-g5", &w, &g, None);
    // The agent skips the id Ganesha already serves.
    let r = bed.call_ok(
        "nfs.export.create",
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "127.0.0.1"}]}),
    );
    assert_eq!(r["export"]["actual"]["export_id"], json!(10001), "{r}");
    assert_eq!(r["export"]["drift"], json!([]), "{r}");
    g.nfs_ls("/vol1").assert_code(0);
    let ls = g.nfs_ls("/operator");
    assert!(ls.stdout.contains("hello-vol3.txt"), "{}", ls.describe());
    // Nor does reconcile or delete touch it.
    let rec = bed.call_ok("sys.reconcile", json!({}));
    assert_eq!(rec["nfs"]["changes"], json!([]), "{rec}");
    bed.call_ok("nfs.export.delete", json!({"name": "vol1"}));
    assert_eq!(conf_files(&g), Vec::<String>::new());
    assert_eq!(g.export_ids(), [10000]);
    g.nfs_ls("/operator").assert_code(0);
}
