//! iSCSI targets on LIO end to end: the real agent over MQTT with `backend = "lio"`.
//!
//! This kernel has no configfs (no `/sys/kernel/config/target`), so LIO and the real
//! targetcli cannot run here. The agent is pointed at a stand-in `targetcli` (a mock: see
//! `csg_e2e::targetcli_stub`) that records every argv and keeps a fake configfs tree the way
//! LIO would, and at that tree as `iscsi.configfs_root`, so the agent's read-back works. The
//! tests check the argv sequences the agent runs, what it reads back, rollback, and drift.

use csg_e2e::rpc::expect_ok;
use csg_e2e::targetcli_stub::TargetcliStub as Stub;
use csg_e2e::{unique, Bed, StorageDirs};
use serde_json::{json, Value};

const PREFIX: &str = "iqn.2026-11.test.csg";
const C1: &str = "iqn.2026-11.test.client:c1";
const C2: &str = "iqn.2026-11.test.client:c2";
const MIB: u64 = 1 << 20;

struct World {
    bed: Bed,
    stub: Stub,
    dirs: StorageDirs,
}

fn world(instance: &str) -> World {
    let dirs = StorageDirs::new();
    let stub = Stub::new(dirs.base());
    let bed = Bed::start_with(instance, |c| {
        c.storage = Some(dirs.section());
        c.iscsi = Some(stub.iscsi_section(PREFIX));
    });
    // The start-up reconcile has nothing to do: no targetcli call at all.
    bed.barrier();
    assert_eq!(stub.argv(), Vec::<String>::new());
    World { bed, stub, dirs }
}

impl World {
    fn ok(&self, method: &str, params: Value) -> Value {
        let id = unique("lio");
        let r = self.bed.call_raw(&id, method, params);
        if r["ok"] != json!(true) {
            panic!(
                "{method} failed: {r}\n{}\nargv:\n{}",
                self.bed.agent.log(),
                self.stub.argv().join("\n")
            );
        }
        expect_ok(&r, &id)
    }

    fn get(&self, name: &str) -> Value {
        self.ok("iscsi.target.get", json!({ "name": name }))
    }
}

fn iqn(name: &str) -> String {
    format!("{PREFIX}:{name}")
}

fn tpg(name: &str) -> String {
    format!("/iscsi/{}/tpg1", iqn(name))
}

/// CHAP as `(user, secret, Some((mutual user, mutual secret)))`.
type ChapArg<'a> = Option<(&'a str, &'a str, Option<(&'a str, &'a str)>)>;

/// What `create` of target `name` with `luns` (number, path, readonly), `initiators` and
/// CHAP (user, secret, mutual) runs, in order, `saveconfig` last.
fn create_argv(
    name: &str,
    luns: &[(u16, &str, bool)],
    initiators: &[&str],
    chap: ChapArg<'_>,
) -> Vec<String> {
    let t = tpg(name);
    let mut v = Vec::new();
    for (l, p, _) in luns {
        v.push(format!(
            "/backstores/fileio create name=csg-{name}-{l} file_or_dev={p} write_back=false"
        ));
    }
    v.push(format!("/iscsi create wwn={}", iqn(name)));
    v.push(format!(
        "{t} set attribute authentication={} generate_node_acls=0 demo_mode_write_protect=1",
        if chap.is_some() { 1 } else { 0 }
    ));
    let auth = chap.map(|(u, s, m)| {
        let mut a = format!("set auth userid={u} password={s}");
        if let Some((mu, ms)) = m {
            a.push_str(&format!(" mutual_userid={mu} mutual_password={ms}"));
        }
        a
    });
    if let Some(a) = &auth {
        v.push(format!("{t} {a}"));
    }
    for (l, _, _) in luns {
        v.push(format!(
            "{t}/luns create storage_object=/backstores/fileio/csg-{name}-{l} lun={l} add_mapped_luns=false"
        ));
    }
    for i in initiators {
        v.push(format!("{t}/acls create wwn={i} add_mapped_luns=false"));
        if let Some(a) = &auth {
            v.push(format!("{t}/acls/{i} {a}"));
        }
        for (l, _, ro) in luns {
            v.push(format!(
                "{t}/acls/{i} create mapped_lun={l} tpg_lun_or_backstore={l} write_protect={}",
                if *ro { 1 } else { 0 }
            ));
        }
    }
    v.push("saveconfig".into());
    v
}

/// What `delete` of a target with LUNs `luns` runs.
fn delete_argv(name: &str, luns: &[u16]) -> Vec<String> {
    let mut v = vec![format!("/iscsi delete wwn={}", iqn(name))];
    for l in luns {
        v.push(format!("/backstores/fileio delete name=csg-{name}-{l}"));
    }
    v
}

#[test]
fn create_get_update_delete_run_exact_targetcli_argv_and_read_configfs_back() {
    let w = world("gw-lio-basic");
    let (a, b) = (w.dirs.path("a.img"), w.dirs.path("b.img"));
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": a, "size_bytes": 8 * MIB},
                 {"lun": 2, "path": b, "size_bytes": 4 * MIB, "readonly": true}],
        "initiators": [C1, C2],
        "chap": {"username": "alice", "secret": "Secret12chars",
                 "mutual_username": "gw", "mutual_secret": "Mutual12chars"},
    });
    let r = w.ok("iscsi.target.create", spec.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["iqn"], json!(iqn("vol1")), "{r}");
    assert_eq!(r["created_files"], json!([a, b]), "{r}");
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 8 * MIB);
    let chap = Some(("alice", "Secret12chars", Some(("gw", "Mutual12chars"))));
    assert_eq!(
        w.stub.argv(),
        create_argv("vol1", &[(1, &a, false), (2, &b, true)], &[C1, C2], chap)
    );
    // saveconfig ran after everything else: the saved tree has the whole target.
    let saved = w.stub.saved().expect("saveconfig ran");
    assert!(
        saved.contains(&format!("tpgt_1/acls/{C2}/lun_2/write_protect")),
        "{saved}"
    );
    // Secrets go to targetcli only: not into the state file, a reply or the agent's log.
    assert!(!w.dirs.state_text().contains("Secret12chars"));
    assert!(!w.bed.agent.log().contains("Secret12chars"));
    assert!(!w.bed.agent.log().contains("Mutual12chars"));

    // get/list: what configfs has, no drift.
    let g = w.get("vol1");
    assert!(!g.to_string().contains("Secret12"), "{g}");
    assert_eq!(g["drift"], json!([]), "{g}");
    let act = &g["actual"];
    assert!(act.get("tid").is_none(), "LIO has no tid: {g}");
    assert_eq!(act["iqn"], json!(iqn("vol1")), "{g}");
    assert_eq!(
        act["luns"],
        json!([{"lun": 1, "path": a, "readonly": false, "size_bytes": 8 * MIB},
               {"lun": 2, "path": b, "readonly": true, "size_bytes": 4 * MIB}]),
        "{g}"
    );
    assert_eq!(act["initiators"], json!([C1, C2]), "{g}");
    assert_eq!(act["networks"], json!([]), "{g}");
    assert_eq!(act["chap_usernames"], json!(["alice"]), "{g}");
    assert_eq!(act["chap_mutual_username"], json!("gw"), "{g}");
    assert_eq!(act["sessions"], json!(0), "{g}");
    let l = w.ok("iscsi.target.list", json!({}));
    assert_eq!(l["unexpected"], json!([]), "{l}");
    assert_eq!(l["targets"][0]["drift"], json!([]), "{l}");
    let st = w.bed.status();
    assert_eq!(
        st["services"]["iscsi"],
        json!({"backend": "lio", "up": true}),
        "{st}"
    );
    assert_eq!(
        st["storage"]["iscsi"],
        json!({"count": 1, "drift": 0}),
        "{st}"
    );

    // The same spec again: a no-op, no targetcli call. A different one: CONFLICT, none either.
    let n = w.stub.argv().len();
    assert_eq!(
        w.ok("iscsi.target.create", spec.clone())["changed"],
        json!(false)
    );
    let mut other = spec.clone();
    other["initiators"] = json!([C1]);
    w.bed
        .call_err("iscsi.target.create", other.clone(), "CONFLICT");
    // A shared CHAP user is fine on LIO (credentials are per node ACL), a shared path is not.
    w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "vol2", "luns": [{"lun": 1, "path": a}]}),
        "CONFLICT",
    );
    assert_eq!(w.stub.argv_since(n), Vec::<String>::new());

    // update: C1 only, LUN 2 writable, no CHAP: the target is replaced in one batch.
    other["luns"][1]["readonly"] = json!(false);
    other.as_object_mut().unwrap().remove("chap");
    let u = w.ok("iscsi.target.update", other.clone());
    assert_eq!(u["changed"], json!(true), "{u}");
    let mut want = delete_argv("vol1", &[1, 2]);
    want.extend(create_argv(
        "vol1",
        &[(1, &a, false), (2, &b, false)],
        &[C1],
        None,
    ));
    assert_eq!(w.stub.argv_since(n), want);
    let g = w.get("vol1");
    assert_eq!(g["drift"], json!([]), "{g}");
    assert_eq!(g["actual"]["initiators"], json!([C1]), "{g}");
    assert_eq!(g["actual"]["chap_usernames"], json!([]), "{g}");
    assert_eq!(g["actual"]["luns"][1]["readonly"], json!(false), "{g}");
    // The same update again: nothing runs.
    let n = w.stub.argv().len();
    assert_eq!(
        w.ok("iscsi.target.update", other.clone())["changed"],
        json!(false)
    );
    assert_eq!(w.stub.argv().len(), n);

    let mut missing = other.clone();
    missing["name"] = json!("nope");
    missing["luns"] = json!([]);
    w.bed.call_err("iscsi.target.update", missing, "NOT_FOUND");
    w.bed
        .call_err("iscsi.target.get", json!({"name": "nope"}), "NOT_FOUND");
    assert_eq!(w.stub.argv().len(), n);

    // delete with the backing files; again: existed false, nothing runs.
    let d = w.ok(
        "iscsi.target.delete",
        json!({"name": "vol1", "delete_backing_files": true}),
    );
    assert_eq!(d, json!({"existed": true, "deleted_files": [a, b]}));
    let mut want = delete_argv("vol1", &[1, 2]);
    want.push("saveconfig".into());
    assert_eq!(w.stub.argv_since(n), want);
    assert!(!std::path::Path::new(&a).exists() && !std::path::Path::new(&b).exists());
    assert!(!w.stub.root.join("iscsi").join(iqn("vol1")).exists());
    let left: Vec<String> = w
        .stub
        .listing()
        .into_iter()
        .filter(|l| l.starts_with("core/") && l.contains("csg-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    let n = w.stub.argv().len();
    let d = w.ok("iscsi.target.delete", json!({"name": "vol1"}));
    assert_eq!(d, json!({"existed": false, "deleted_files": []}));
    assert_eq!(w.stub.argv().len(), n);
    assert_eq!(w.ok("iscsi.target.list", json!({}))["targets"], json!([]));
}

#[test]
fn hostile_input_and_networks_are_refused_without_running_targetcli() {
    let w = world("gw-lio-hostile");
    std::os::unix::fs::symlink(
        w.dirs.root().parent().unwrap().join("outside"),
        w.dirs.root().join("escape"),
    )
    .unwrap();
    let lun = |p: String| json!([{"lun": 1, "path": p, "size_bytes": MIB}]);
    let cases = vec![
        json!({"name": "v", "iqn": "iqn.2026-11.test:Bad Name"}),
        json!({"name": "v", "iqn": "iqn.2026-11.test:x/tpg1"}),
        json!({"name": "v", "initiators": ["iqn.2026-11.test.client:c1 password=x"]}),
        json!({"name": "v", "initiators": ["ALL"]}),
        json!({"name": "v", "luns": lun(format!("{}/../outside/x.img", w.dirs.root().display()))}),
        json!({"name": "v", "luns": lun(w.dirs.path("escape/x.img"))}),
        json!({"name": "v", "luns": lun("/etc/passwd".into())}),
        json!({"name": "v", "luns": lun(w.dirs.path("new.img") + " write_back=true")}),
        json!({"name": "v", "luns": [{"lun": 1, "path": w.dirs.path("nosize.img")}]}),
        json!({"name": "v\nx"}),
        json!({"name": "v", "chap": {"username": "u", "secret": "short"}}),
        json!({"name": "v", "chap": {"username": "u password=x", "secret": "Secret12chars"}}),
        json!({"name": "v", "acl": "ALL"}),
    ];
    for c in cases {
        let e = w
            .bed
            .call_err("iscsi.target.create", c.clone(), "INVALID_PARAMS");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{c}: {e}");
    }
    // networks: LIO has no address-based access rules.
    let e = w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "v", "luns": lun(w.dirs.path("n.img")), "networks": ["10.0.0.0/8"]}),
        "INVALID_PARAMS",
    );
    assert!(e["message"].as_str().unwrap().contains("networks"), "{e}");
    w.bed.call_err(
        "iscsi.target.delete",
        json!({"name": "../x"}),
        "INVALID_PARAMS",
    );
    assert_eq!(w.stub.argv(), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(w.dirs.root()).unwrap().count(),
        1,
        "files created in the root"
    );
    assert!(
        !w.dirs.state_text().contains("\"v\""),
        "{}",
        w.dirs.state_text()
    );
}

#[test]
fn a_failure_mid_apply_is_rolled_back_and_says_so() {
    let w = world("gw-lio-rollback");
    let a = w.dirs.path("a.img");
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": a, "size_bytes": 2 * MIB}],
        "initiators": [C1],
        "chap": {"username": "alice", "secret": "Secret12chars"},
    });
    w.ok("iscsi.target.create", spec.clone());
    let state_before = w.dirs.state_text();
    let tree_before = w.stub.listing();
    let n = w.stub.argv().len();

    // update: a second initiator and a new LUN; targetcli fails on the second ACL.
    let fresh = w.dirs.path("fresh.img");
    let mut next = spec.clone();
    next["initiators"] = json!([C1, C2]);
    next["luns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"lun": 2, "path": fresh, "size_bytes": MIB}));
    w.stub.fail_on(&format!("acls create wwn={C2}"));
    let e = w.bed.call_err("iscsi.target.update", next, "BACKEND_ERROR");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("previous state was restored"), "{e}");
    assert!(
        msg.contains("targetcli") && msg.contains("injected failure"),
        "{e}"
    );
    assert!(!msg.contains("Secret12chars"), "{e}");
    // What ran: the new target up to the failing call, then the rollback (the half-made
    // target and both backstores go, the previous target comes back, saveconfig).
    let ran = w.stub.argv_since(n);
    let fail_at = ran
        .iter()
        .position(|l| l.contains(&format!("acls create wwn={C2}")))
        .expect("the failing call");
    assert!(
        !ran[..fail_at].contains(&"saveconfig".to_string()),
        "{ran:?}"
    );
    let mut rollback = delete_argv("vol1", &[1, 2]);
    rollback.extend(create_argv(
        "vol1",
        &[(1, &a, false)],
        &[C1],
        Some(("alice", "Secret12chars", None)),
    ));
    assert_eq!(ran[fail_at + 1..].to_vec(), rollback, "{ran:#?}");
    // Desired state, configfs and files as before.
    assert_eq!(w.dirs.state_text(), state_before);
    assert_eq!(w.stub.listing(), tree_before);
    assert!(
        !std::path::Path::new(&fresh).exists(),
        "created file left behind"
    );
    let g = w.get("vol1");
    assert_eq!(g["drift"], json!([]), "{g}");
    assert_eq!(g["desired"]["initiators"], json!([C1]), "{g}");

    // create: fails on the target itself; the backstore it made goes, and so does its file.
    let n = w.stub.argv().len();
    let b = w.dirs.path("b.img");
    w.stub
        .fail_on(&format!("/iscsi create wwn={}", iqn("vol2")));
    let e = w.bed.call_err(
        "iscsi.target.create",
        json!({"name": "vol2", "luns": [{"lun": 1, "path": b, "size_bytes": MIB}]}),
        "BACKEND_ERROR",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("previous state was restored"),
        "{e}"
    );
    assert_eq!(
        w.stub.argv_since(n),
        vec![
            format!("/backstores/fileio create name=csg-vol2-1 file_or_dev={b} write_back=false"),
            format!("/iscsi create wwn={}", iqn("vol2")),
            "/backstores/fileio delete name=csg-vol2-1".to_string(),
            "saveconfig".to_string(),
        ]
    );
    assert!(!std::path::Path::new(&b).exists());
    assert_eq!(w.dirs.state_text(), state_before);
    assert_eq!(w.stub.listing(), tree_before);
    w.bed
        .call_err("iscsi.target.get", json!({"name": "vol2"}), "NOT_FOUND");
}

#[test]
fn drift_made_behind_the_agents_back_is_reported_and_repaired_by_reconcile() {
    let w = world("gw-lio-drift");
    let a = w.dirs.path("a.img");
    let spec = json!({
        "name": "vol1",
        "luns": [{"lun": 1, "path": a, "size_bytes": MIB, "readonly": true}],
        "initiators": [C1],
        "chap": {"username": "alice", "secret": "Secret12chars"},
    });
    w.ok("iscsi.target.create", spec);
    let good = w.stub.listing();
    let t = w.stub.tpg(&iqn("vol1"));
    let acl = t.join("acls").join(C1);

    // Demo mode switched on, a mapping made writable, a secret changed: each one named.
    std::fs::write(t.join("attrib/generate_node_acls"), "1\n").unwrap();
    std::fs::write(acl.join("lun_1/write_protect"), "0\n").unwrap();
    std::fs::write(acl.join("auth/password"), "Changed12chars\n").unwrap();
    let g = w.get("vol1");
    let drift: Vec<String> = serde_json::from_value(g["drift"].clone()).unwrap();
    assert_eq!(
        drift,
        vec![
            "LUN 1 readonly is false, not true",
            "access rule ALL is not in the desired state",
            "the CHAP secret of alice differs from the one the agent holds",
        ],
        "{g}"
    );
    assert!(!g.to_string().contains("Changed12"), "{g}");
    let st = w.bed.status();
    assert_eq!(
        st["storage"]["iscsi"],
        json!({"count": 1, "drift": 1}),
        "{st}"
    );

    // sys.reconcile puts it back, in one batch ending with saveconfig.
    let n = w.stub.argv().len();
    let rec = w.ok("sys.reconcile", json!({}));
    assert_eq!(rec["iscsi"]["ok"], json!(true), "{rec}");
    assert_eq!(
        rec["iscsi"]["changes"]["changed"],
        json!([{"target": "vol1", "action": "repaired", "commands": 11}]),
        "{rec}"
    );
    let ran = w.stub.argv_since(n);
    assert_eq!(ran.len(), 11, "{ran:#?}");
    assert_eq!(ran[0], format!("/iscsi delete wwn={}", iqn("vol1")));
    assert_eq!(ran.last().unwrap(), "saveconfig");
    assert_eq!(w.get("vol1")["drift"], json!([]));
    assert_eq!(w.stub.listing(), good);
    // In sync: the next reconcile runs nothing.
    let n = w.stub.argv().len();
    let rec = w.ok("sys.reconcile", json!({}));
    assert_eq!(rec["iscsi"]["changes"]["changed"], json!([]), "{rec}");
    assert_eq!(w.stub.argv().len(), n);

    // The target removed by hand, and a stray one under the agent's prefix.
    std::fs::remove_dir_all(w.stub.root.join("iscsi").join(iqn("vol1"))).unwrap();
    std::fs::create_dir_all(w.stub.tpg(&iqn("stray")).join("lun")).unwrap();
    let l = w.ok("iscsi.target.list", json!({}));
    assert_eq!(l["unexpected"], json!([iqn("stray")]), "{l}");
    assert_eq!(l["targets"][0]["actual"], json!(null), "{l}");
    assert_eq!(
        l["targets"][0]["drift"],
        json!(["the target is missing on the backend"]),
        "{l}"
    );
    let n = w.stub.argv().len();
    let rec = w.ok("sys.reconcile", json!({}));
    let changed = &rec["iscsi"]["changes"]["changed"];
    assert_eq!(changed[0]["target"], json!("vol1"), "{rec}");
    assert_eq!(changed[0]["action"], json!("created"), "{rec}");
    assert_eq!(
        changed[1],
        json!({"target": iqn("stray"), "action": "removed", "commands": 2}),
        "{rec}"
    );
    let ran = w.stub.argv_since(n);
    // The left-over backstore goes before the target is made again.
    assert_eq!(
        ran[0], "/backstores/fileio delete name=csg-vol1-1",
        "{ran:#?}"
    );
    assert!(
        ran.contains(&format!("/iscsi delete wwn={}", iqn("stray"))),
        "{ran:#?}"
    );
    assert_eq!(ran.last().unwrap(), "saveconfig");
    assert_eq!(w.stub.listing(), good);
    let l = w.ok("iscsi.target.list", json!({}));
    assert_eq!(l["unexpected"], json!([]), "{l}");
    assert_eq!(l["targets"][0]["drift"], json!([]), "{l}");
}

#[test]
fn without_configfs_lio_is_unavailable_and_nothing_changes() {
    let w = world("gw-lio-down");
    let hidden = w.stub.root.with_file_name("target.away");
    std::fs::rename(&w.stub.root, &hidden).unwrap();
    let st = w.bed.status();
    assert_eq!(
        st["services"]["iscsi"],
        json!({"backend": "lio", "up": false}),
        "{st}"
    );
    let img = w.dirs.path("vol1.img");
    let spec = json!({"name": "vol1", "luns": [{"lun": 1, "path": img, "size_bytes": MIB}]});
    let e = w
        .bed
        .call_err("iscsi.target.create", spec.clone(), "UNAVAILABLE");
    assert_eq!(e["retryable"], json!(true), "{e}");
    w.bed
        .call_err("iscsi.target.list", json!({}), "UNAVAILABLE");
    assert!(!std::path::Path::new(&img).exists());
    assert!(!w.dirs.state_text().contains("vol1"));
    assert_eq!(w.stub.argv(), Vec::<String>::new());

    std::fs::rename(&hidden, &w.stub.root).unwrap();
    assert_eq!(w.ok("iscsi.target.create", spec)["changed"], json!(true));
    assert_eq!(w.stub.argv().last().map(String::as_str), Some("saveconfig"));
    assert_eq!(w.bed.status()["services"]["iscsi"]["up"], json!(true));
}
