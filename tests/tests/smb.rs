//! SMB end to end: a private smbd (its own smb.conf with `include = registry`, registry and
//! passdb), the real agent driving it over MQTT, and `smbclient` checking from the client side.

use std::path::{Path, PathBuf};

use csg_e2e::rpc;
use csg_e2e::smbd::{Smbd, TestUsers};
use csg_e2e::Bed;
use serde_json::{json, Value};

const PW_A: &str = "Alice-pass-1234";
const PW_B: &str = "Bob-pass-5678";

struct World {
    // Drop order: agent (in the bed) first, then smbd, then the users and dirs.
    bed: Bed,
    smbd: Smbd,
    users: TestUsers,
    state: tempfile::TempDir,
}

fn world(instance: &str) -> World {
    let smbd = Smbd::start();
    let state = tempfile::tempdir().expect("state dir");
    let bed = Bed::start_with(instance, |c| smbd.configure(c, state.path()));
    World {
        bed,
        smbd,
        users: TestUsers::new(),
        state,
    }
}

impl World {
    fn ok(&self, method: &str, params: Value) -> Value {
        self.bed.call_ok(method, params)
    }

    /// Calls and expects the error `code`; returns the error object.
    fn err(&self, method: &str, params: Value, code: &str) -> Value {
        let id = csg_e2e::unique("call");
        let reply = self.bed.call_raw(&id, method, params);
        rpc::expect_err(&reply, Some(&id), code)
    }

    /// A directory under the storage root, with one file in it, readable by everyone.
    fn share_dir(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.smbd.root().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(d.join("hello.txt"), content).unwrap();
        std::fs::set_permissions(d.join("hello.txt"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        d
    }

    fn state_file(&self) -> String {
        std::fs::read_to_string(self.state.path().join("state.json")).unwrap_or_default()
    }

    fn registry(&self) -> String {
        let out = self.smbd.net_conf(&["list"]);
        out.assert_code(0);
        out.stdout
    }

    /// `smbclient … -c 'get hello.txt LOCAL'` and the file read through the share.
    fn read_through(&self, share: &str, user: &str, pw: &str) -> Result<String, String> {
        let local = self
            .smbd
            .dir()
            .join(format!("got-{}", csg_e2e::unique("f")));
        let out = self.smbd.smbclient(
            share,
            user,
            pw,
            &format!("ls; get hello.txt {}", local.display()),
        );
        if out.code() == Some(0) && local.exists() {
            Ok(std::fs::read_to_string(&local).unwrap())
        } else {
            Err(out.describe())
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn shares_and_users_work_through_smbclient() {
    let mut w = world("gw-smb-life");
    let alice = w.users.name("alice");
    let bob = w.users.name("bob");
    let dir = w.share_dir("vol1", "hello through smb\n");

    // Users: the agent creates their Unix accounts; the password goes nowhere but smbpasswd.
    let r = w.ok("smb.user.set", json!({"username": alice, "password": PW_A}));
    assert_eq!(r["created"], json!(true), "{r}");
    assert_eq!(r["unix_user_created"], json!(true), "{r}");
    assert!(!r.to_string().contains(PW_A));
    w.ok("smb.user.set", json!({"username": bob, "password": PW_B}));
    assert!(TestUsers::exists(&alice));
    let users = w.ok("smb.user.list", json!({}));
    assert_eq!(users["users"].as_array().unwrap().len(), 2, "{users}");

    // A share only alice may use.
    let spec = json!({
        "name": "Vol1",
        "path": path_str(&dir),
        "comment": "Finance, 2026",
        "read_only": false,
        "valid_users": [alice],
    });
    let r = w.ok("smb.share.create", spec.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["share"]["drift"], json!([]), "{r}");
    assert_eq!(r["share"]["actual"]["wide links"], json!("no"), "{r}");

    assert_eq!(
        w.read_through("vol1", &alice, PW_A)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", w.smbd.log(), w.bed.agent.log())),
        "hello through smb\n"
    );
    let listed = w.smbd.list_shares(&alice, PW_A);
    assert!(
        listed.stdout.contains("Disk|Vol1|Finance, 2026"),
        "{}",
        listed.describe()
    );
    // valid_users is enforced; a wrong password is refused.
    let e = w.read_through("vol1", &bob, PW_B).unwrap_err();
    assert!(e.contains("NT_STATUS_ACCESS_DENIED"), "{e}");
    let e = w
        .read_through("vol1", &alice, "Wrong-pass-0000")
        .unwrap_err();
    assert!(e.contains("NT_STATUS_LOGON_FAILURE"), "{e}");

    // create again: identical → no-op; different → CONFLICT (also under another case).
    let r = w.ok("smb.share.create", spec.clone());
    assert_eq!(r["changed"], json!(false), "{r}");
    let mut other = spec.clone();
    other["comment"] = json!("something else");
    w.err("smb.share.create", other, "CONFLICT");
    let mut other = spec.clone();
    other["name"] = json!("VOL1");
    w.err("smb.share.create", other, "CONFLICT");

    // update (the whole spec): bob gets in.
    let mut both = spec.clone();
    both["name"] = json!("vol1");
    both["valid_users"] = json!([alice, bob]);
    let r = w.ok("smb.share.update", both.clone());
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(r["share"]["desired"]["comment"], json!("Finance, 2026"));
    assert_eq!(
        w.read_through("vol1", &bob, PW_B).unwrap(),
        "hello through smb\n"
    );
    let r = w.ok("smb.share.update", both.clone());
    assert_eq!(r["changed"], json!(false), "{r}");
    assert_eq!(r["share"]["name"], json!("Vol1"), "{r}");
    let mut nope = both.clone();
    nope["name"] = json!("nope");
    w.err("smb.share.update", nope, "NOT_FOUND");

    // Host rules reach Samba: loopback denied, then allowed again.
    let mut deny = both.clone();
    deny["hosts_deny"] = json!(["127.0.0.0/8"]);
    w.ok("smb.share.update", deny);
    let e = w.read_through("vol1", &alice, PW_A).unwrap_err();
    assert!(e.contains("NT_STATUS_ACCESS_DENIED"), "{e}");
    w.ok("smb.share.update", both.clone());
    w.read_through("vol1", &alice, PW_A).unwrap();

    // get and list read the registry back.
    let g = w.ok("smb.share.get", json!({"name": "vol1"}));
    assert_eq!(g["managed"], json!(true), "{g}");
    assert_eq!(
        g["actual"]["valid users"],
        json!(format!("{alice} {bob}")),
        "{g}"
    );
    let l = w.ok("smb.share.list", json!({}));
    assert_eq!(l["shares"].as_array().unwrap().len(), 1, "{l}");
    let hb = w.bed.status();
    assert_eq!(
        hb["services"]["smb"],
        json!({"backend": "samba", "up": true})
    );
    assert_eq!(
        hb["storage"]["smb"],
        json!({"count": 3, "drift": 0}),
        "{hb}"
    );

    // delete: gone for clients and from the registry; again → existed:false.
    let r = w.ok("smb.share.delete", json!({"name": "vol1"}));
    assert_eq!(r, json!({"existed": true}));
    let e = w.read_through("vol1", &alice, PW_A).unwrap_err();
    assert!(e.contains("NT_STATUS_BAD_NETWORK_NAME"), "{e}");
    assert!(!w.registry().to_lowercase().contains("[vol1]"));
    let r = w.ok("smb.share.delete", json!({"name": "vol1"}));
    assert_eq!(r, json!({"existed": false}));
    w.err("smb.share.get", json!({"name": "vol1"}), "NOT_FOUND");

    // Users go, with the Unix accounts the agent made.
    for u in [&alice, &bob] {
        let r = w.ok("smb.user.delete", json!({"username": u}));
        assert_eq!(r, json!({"existed": true}));
        assert!(!TestUsers::exists(u), "{u} still has a Unix account");
    }
    assert!(w.smbd.passdb_users().is_empty());
    let r = w.ok("smb.user.delete", json!({"username": alice}));
    assert_eq!(r, json!({"existed": false}));

    // The password never reached the log or the state file.
    let log = w.bed.agent.log();
    for pw in [PW_A, PW_B] {
        assert!(!log.contains(pw), "password in the agent log");
        assert!(!w.state_file().contains(pw), "password in the state file");
    }
    for method in ["smb.share.create", "smb.user.set", "smb.user.delete"] {
        assert!(
            log.lines().any(|l| l.contains("audit: mutation executed")
                && l.contains(&format!("method={method}"))),
            "no audit line for {method}:\n{log}"
        );
    }
}

#[test]
fn hostile_input_is_refused_and_nothing_changes() {
    let mut w = world("gw-smb-hostile");
    let dir = w.share_dir("vol1", "x");
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), w.smbd.root().join("escape")).unwrap();
    std::fs::write(w.smbd.root().join("file"), "x").unwrap();
    let root = path_str(&w.smbd.root());
    let good = json!({"name": "vol1", "path": path_str(&dir)});
    let with = |k: &str, v: Value| {
        let mut s = good.clone();
        s[k] = v;
        s
    };
    let before_registry = w.registry();
    let cases = vec![
        with("comment", json!("line one\nline two")),
        with("comment", json!("100% safe")),
        with("comment", json!("%u was here")),
        with("path", json!(format!("{root}/vol1/../../etc"))),
        with("path", json!(format!("{root}/escape"))),
        with("path", json!(format!("{root}/file"))),
        with("path", json!(format!("{root}/missing"))),
        with("path", json!("/etc")),
        with("path", json!(format!("{root}/%u"))),
        with("name", json!("global")),
        with("name", json!("IPC$")),
        with("name", json!("vol1]\n[evil")),
        with("hosts_allow", json!(["10.0.0.0/8 EXCEPT 10.1.1.1"])),
        with("hosts_allow", json!(["127.0.0.1, ALL"])),
        with("hosts_allow", json!(["10.0.0.0/8\n\tpath = /"])),
        with("hosts_deny", json!(["*"])),
        with("valid_users", json!(["alice bob"])),
        with("write_list", json!(["+staff"])),
        with("create_mask", json!("0999")),
        with("force_user", json!("no-such-user-x")),
        with("force_group", json!("no-such-group-x")),
        with("force_user", json!("root")),
        with("force_group", json!("root")),
        with("wide_links", json!(true)),
    ];
    for c in cases {
        let e = w.err("smb.share.create", c.clone(), "INVALID_PARAMS");
        assert_eq!(e["retryable"], json!(false), "{c}: {e}");
    }
    // Users: root and system accounts cannot get an SMB password; bad passwords are refused
    // without being echoed.
    w.err(
        "smb.user.set",
        json!({"username": "root", "password": "Root-pass-1234"}),
        "INVALID_PARAMS",
    );
    w.err(
        "smb.user.set",
        json!({"username": "daemon", "password": "Daemon-pass-1234"}),
        "INVALID_PARAMS",
    );
    w.err(
        "smb.user.set",
        json!({"username": "nobody", "password": "Nobody-pass-1234"}),
        "INVALID_PARAMS",
    );
    let u = w.users.name("eve");
    let e = w.err(
        "smb.user.set",
        json!({"username": u, "password": "Eve-pass\nroot"}),
        "INVALID_PARAMS",
    );
    assert!(!e.to_string().contains("Eve-pass"), "{e}");
    w.err(
        "smb.user.set",
        json!({"username": "Eve;rm", "password": "Eve-pass-1234"}),
        "INVALID_PARAMS",
    );
    assert!(!TestUsers::exists(&u));

    // Nothing changed: not in the registry, not in the passdb, not in the desired state.
    assert_eq!(w.registry(), before_registry);
    assert!(w.smbd.passdb_users().is_empty());
    assert!(
        !w.state_file().contains("vol1"),
        "state file: {}",
        w.state_file()
    );
    // And the good spec still works afterwards.
    w.ok("smb.share.create", good);
}

#[test]
fn unmanaged_shares_are_left_alone_and_drift_is_reconciled() {
    let w = world("gw-smb-drift");
    let dir = w.share_dir("vol1", "x");
    let manual = w.share_dir("manual", "x");
    w.smbd
        .net_conf(&["addshare", "Manual", manual.to_str().unwrap()])
        .assert_code(0);

    // The admin's share is listed as unmanaged, and every mutation naming it is refused.
    let l = w.ok("smb.share.list", json!({}));
    assert_eq!(l["shares"][0]["name"], json!("Manual"), "{l}");
    assert_eq!(l["shares"][0]["managed"], json!(false), "{l}");
    let spec = json!({"name": "manual", "path": path_str(&manual)});
    w.err("smb.share.create", spec, "CONFLICT");
    w.err(
        "smb.share.update",
        json!({"name": "manual", "path": path_str(&manual), "comment": "x"}),
        "CONFLICT",
    );
    w.err("smb.share.delete", json!({"name": "MANUAL"}), "CONFLICT");
    assert!(w.registry().contains("[Manual]"));

    // A managed share changed and then deleted behind the agent's back comes back.
    w.ok(
        "smb.share.create",
        json!({"name": "vol1", "path": path_str(&dir), "comment": "mine"}),
    );
    w.smbd
        .net_conf(&["setparm", "vol1", "comment", "tampered"])
        .assert_code(0);
    w.smbd
        .net_conf(&["setparm", "vol1", "wide links", "yes"])
        .assert_code(0);
    let g = w.ok("smb.share.get", json!({"name": "vol1"}));
    let d = g["drift"].to_string();
    assert!(
        d.contains("comment") && d.contains("wide links"),
        "drift not named: {g}"
    );
    let hb = w.bed.status();
    assert_eq!(hb["storage"]["smb"]["drift"], json!(2), "{hb}");
    let r = w.ok("sys.reconcile", json!({}));
    assert_eq!(r["smb"]["ok"], json!(true), "{r}");
    assert_eq!(r["smb"]["changes"][0]["action"], json!("updated"), "{r}");
    let g = w.ok("smb.share.get", json!({"name": "vol1"}));
    assert_eq!(g["drift"], json!([]), "{g}");
    assert_eq!(g["actual"]["comment"], json!("mine"), "{g}");

    w.smbd.net_conf(&["delshare", "vol1"]).assert_code(0);
    let r = w.ok("sys.reconcile", json!({}));
    assert_eq!(r["smb"]["changes"][0]["action"], json!("created"), "{r}");
    assert!(w.registry().contains("[vol1]"));
    let r = w.ok("sys.reconcile", json!({}));
    assert_eq!(r["smb"]["changes"], json!([]), "{r}");
    // The admin's share was never touched.
    assert!(w.registry().contains("[Manual]"));
}

#[test]
fn the_agent_finishes_its_work_at_start() {
    let mut w = world("gw-smb-restart");
    for v in ["vol1", "vol2"] {
        let dir = w.share_dir(v, "x");
        w.ok(
            "smb.share.create",
            json!({"name": v, "path": path_str(&dir)}),
        );
    }
    w.bed.agent.kill9();
    // vol1 vanished from Samba while the agent was down; the agent died between saving the
    // delete of vol2 and running it (the state it writes first, as it does).
    w.smbd.net_conf(&["delshare", "vol1"]).assert_code(0);
    let path = w.state.path().join("state.json");
    let mut st: Value = serde_json::from_str(&w.state_file()).unwrap();
    let smb = &mut st["families"]["smb"];
    smb["shares"].as_object_mut().unwrap().remove("vol2");
    smb["removing_shares"] = json!(["vol2"]);
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    let l = w.registry();
    assert!(!l.contains("[vol1]") && l.contains("[vol2]"), "{l}");

    let cfg = w.bed.config().clone();
    let agent = w.bed.spawn_agent(&cfg.instance_id, |c| *c = cfg.clone());
    let back = csg_e2e::wait_until(csg_e2e::TIMEOUT, || {
        let l = w.registry();
        l.contains("[vol1]") && !l.contains("[vol2]")
    });
    assert!(
        back,
        "start-up reconcile did not finish the work:\n{}\n{}",
        w.registry(),
        agent.log()
    );
    let l = w.ok("smb.share.list", json!({}));
    assert_eq!(l["shares"].as_array().unwrap().len(), 1, "{l}");
    // The tombstone goes once the registry is clean (the last step of the reconcile).
    assert!(
        csg_e2e::wait_until(csg_e2e::TIMEOUT, || !w.state_file().contains("vol2")),
        "{}",
        w.state_file()
    );
}

#[test]
fn smbd_down_is_unavailable_and_changes_nothing() {
    let mut w = world("gw-smb-down");
    let dir = w.share_dir("vol1", "x");
    w.smbd.stop();
    let spec = json!({"name": "vol1", "path": path_str(&dir)});
    let e = w.err("smb.share.create", spec.clone(), "UNAVAILABLE");
    assert_eq!(e["retryable"], json!(true), "{e}");
    let u = w.users.name("carol");
    w.err(
        "smb.user.set",
        json!({"username": u, "password": "Carol-pass-1234"}),
        "UNAVAILABLE",
    );
    assert!(!TestUsers::exists(&u));
    assert_eq!(
        w.bed.status()["services"]["smb"],
        json!({"backend": "samba", "up": false})
    );
    assert!(!w.registry().contains("vol1"));
    assert!(!w.state_file().contains("vol1"));

    w.smbd.restart();
    let r = w.ok("smb.share.create", spec);
    assert_eq!(r["changed"], json!(true), "{r}");
}

#[test]
fn a_failed_apply_restores_the_previous_share() {
    // `net` is wrapped so that the next real import fails once (after its dry run passed), as a registry
    // write failure would: the only way to make a validated import fail on a healthy Samba.
    let smbd = Smbd::start();
    let state = tempfile::tempdir().unwrap();
    let fail_flag = state.path().join("fail-import");
    let wrapper = state.path().join("net-wrapper");
    csg_e2e::stubs::write(
        &wrapper,
        csg_e2e::stubs::NET_FAIL_IMPORT,
        &[("FLAG", &fail_flag.display().to_string())],
    );
    let bed = Bed::start_with("gw-smb-rollback", |c| {
        smbd.configure(c, state.path());
        if let Some(smb) = &mut c.smb {
            smb.net = Some(wrapper.clone());
        }
    });
    let w = World {
        bed,
        smbd,
        users: TestUsers::new(),
        state,
    };
    let dir = w.share_dir("vol1", "x");
    w.ok(
        "smb.share.create",
        json!({"name": "vol1", "path": path_str(&dir), "comment": "before"}),
    );
    let registry = w.registry();
    let state_before = w.state_file();
    std::fs::write(&fail_flag, "").unwrap();
    let e = w.err(
        "smb.share.update",
        json!({"name": "vol1", "path": path_str(&dir), "comment": "after"}),
        "BACKEND_ERROR",
    );
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("injected import failure"), "{e}");
    assert!(msg.contains("previous state was restored"), "{e}");
    assert_eq!(w.registry(), registry);
    assert_eq!(w.state_file(), state_before);
    std::fs::write(&fail_flag, "").unwrap();
    let e = w.err(
        "smb.share.create",
        json!({"name": "vol2", "path": path_str(&w.share_dir("vol2", "x"))}),
        "BACKEND_ERROR",
    );
    assert!(e["message"].as_str().unwrap().contains("restored"), "{e}");
    assert_eq!(w.registry(), registry);
    assert_eq!(w.state_file(), state_before);
}

/// A `hosts_allow` entry reaching everyone needs `smb.allow_world`; a share made with it
/// survives a restart without it (kept, served and named in the log once).
#[test]
fn world_hosts_allow_needs_the_opt_in() {
    let smbd = Smbd::start();
    let state = tempfile::tempdir().expect("state dir");
    let bed = Bed::start_with("gw-smb-world", |c| {
        smbd.configure(c, state.path());
        if let Some(s) = c.smb.as_mut() {
            s.allow_world = Some(true);
        }
    });
    let mut w = World {
        bed,
        smbd,
        users: TestUsers::new(),
        state,
    };
    let dir = w.share_dir("vol1", "x");
    let open =
        json!({"name": "vol1", "path": path_str(&dir), "hosts_allow": ["0.0.0.0/0", "::/0"]});
    w.ok("smb.share.create", open.clone());
    assert!(w.registry().contains("0.0.0.0/0"), "{}", w.registry());

    w.bed.agent.kill9();
    let mut cfg = w.bed.config().clone();
    if let Some(s) = cfg.smb.as_mut() {
        s.allow_world = None;
    }
    let agent = w.bed.spawn_agent(&cfg.instance_id, |c| *c = cfg.clone());
    assert!(
        csg_e2e::wait_until(csg_e2e::TIMEOUT, || agent
            .log()
            .contains("stored SMB share reaches the world and is kept")),
        "{}",
        agent.log()
    );
    let l = w.ok("smb.share.list", json!({}));
    assert_eq!(l["shares"][0]["drift"], json!([]), "{l}");
    let state_before = w.state_file();
    let dir2 = w.share_dir("vol2", "x");
    for (method, name, d) in [
        ("smb.share.create", "vol2", &dir2),
        ("smb.share.update", "vol1", &dir),
    ] {
        for (h, setting) in [
            ("0.0.0.0/0", "smb.min_prefix_v4 = 8"),
            ("::/0", "smb.min_prefix_v6 = 32"),
            ("4.0.0.0/6", "smb.min_prefix_v4 = 8"),
        ] {
            let e = w.err(
                method,
                json!({"name": name, "path": path_str(d), "hosts_allow": ["10.0.0.0/8", h]}),
                "INVALID_PARAMS",
            );
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.starts_with("hosts_allow")
                    && msg.contains("smb.allow_world")
                    && msg.contains(setting),
                "{e}"
            );
        }
    }
    assert_eq!(w.state_file(), state_before);
    assert!(!w.registry().contains("[vol2]"), "{}", w.registry());
    // A denial may be as wide as one likes; a narrow allow is fine.
    w.ok(
        "smb.share.create",
        json!({"name": "vol2", "path": path_str(&dir2), "hosts_allow": ["10.0.0.0/8"], "hosts_deny": ["0.0.0.0/0"]}),
    );
    // One line per world entry (0.0.0.0/0 and ::/0), at start-up only.
    assert_eq!(
        agent
            .log()
            .matches("stored SMB share reaches the world")
            .count(),
        2,
        "{}",
        agent.log()
    );
}
