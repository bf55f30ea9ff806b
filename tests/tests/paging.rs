//! Paging of `*.list` and the reply cap, end to end: the real agent over Mosquitto, NFS on the
//! kernel backend with the recording `exportfs` stand-in (the same as tests/nfs.rs), and the
//! real csgctl.
//!
//! The case that made paging necessary: 8 exports of 64 clients each make an
//! `nfs.export.list` reply of about 71 KB, over the default reply cap (61440 bytes).

use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::{csgctl, rpc, wait_until, Bed, StorageDirs as World, TIMEOUT};
use serde_json::{json, Value};

const CAP: usize = 61440;
const EXPORTS: usize = 8;
const CLIENTS: usize = 64;

fn name(i: usize) -> String {
    format!("vol{i}")
}

/// A bed with `EXPORTS` exports of `CLIENTS` clients each.
fn big_bed(instance: &str) -> (Bed, World, Stub) {
    let w = World::with_root("srv");
    for i in 0..EXPORTS {
        std::fs::create_dir_all(w.root().join(name(i))).unwrap();
    }
    let stub = Stub::new(w.base());
    let bed = Bed::start_with(instance, |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    assert!(
        wait_until(TIMEOUT, || !stub.argv().is_empty()),
        "start-up reconcile did not run exportfs\n{}",
        bed.agent.log()
    );
    for i in 0..EXPORTS {
        let clients: Vec<Value> = (0..CLIENTS)
            .map(|j| json!({"match": format!("10.{i}.{j}.0/24"), "access": "rw"}))
            .collect();
        let r = bed.call_ok(
            "nfs.export.create",
            json!({"name": name(i), "path": w.path(&name(i)), "clients": clients}),
        );
        assert_eq!(r["changed"], json!(true), "{r}");
    }
    (bed, w, stub)
}

/// The raw reply payload to request `id` (its size is what the cap is about).
fn call_bytes(bed: &Bed, id: &str, method: &str, params: Value) -> (Value, usize) {
    let mark = bed.rec.mark();
    bed.send_raw(rpc::bytes(&rpc::request(
        id,
        method,
        params,
        Some(&bed.reply_to),
    )));
    let m = bed
        .rec
        .expect_since(mark, &format!("reply to {id}"), TIMEOUT, |m| {
            m.topic == bed.reply_to && m.field("id").as_deref() == Some(id)
        });
    (m.json_or_panic(), m.payload.len())
}

fn names(result: &Value) -> Vec<String> {
    result["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("no exports array: {result}"))
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_list_over_the_reply_cap_is_refused_whole_and_served_in_pages() {
    let (bed, _w, _stub) = big_bed("gw-page");
    let all: Vec<String> = (0..EXPORTS).map(name).collect();

    // The whole list, as a 1.0 console asks for it: over the cap, so an error naming the cap
    // (never cut JSON).
    let (reply, size) = call_bytes(&bed, "l-whole", "nfs.export.list", json!({}));
    assert!(size <= CAP, "{size} bytes");
    let err = rpc::expect_err(&reply, Some("l-whole"), "REPLY_TOO_LARGE");
    assert_eq!(err["retryable"], json!(false), "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains(&CAP.to_string()) && msg.contains("limit"),
        "the message names the cap and paging: {msg}"
    );
    // The reply that was refused really was over it: one export's reply times 8.
    let one = bed.call_ok("nfs.export.get", json!({"name": "vol0"}));
    let one = serde_json::to_vec(&one).unwrap().len();
    assert!(one * EXPORTS > CAP, "one export is {one} bytes");

    // Pages of 3: every page under the cap, joined they are the whole sorted list.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = json!({"limit": 3});
        if let Some(c) = &cursor {
            params["cursor"] = json!(c);
        }
        let id = format!("l-page-{pages}");
        let (reply, size) = call_bytes(&bed, &id, "nfs.export.list", params);
        assert!(size <= CAP, "page {pages} is {size} bytes");
        let r = rpc::expect_ok(&reply, &id);
        assert_eq!(r["backend"], json!("kernel"), "{r}");
        let page = names(&r);
        assert!(page.len() <= 3, "{page:?}");
        seen.extend(page);
        pages += 1;
        match r.get("next_cursor") {
            Some(Value::String(c)) => cursor = Some(c.clone()),
            None => break,
            Some(other) => panic!("next_cursor is not a string: {other}"),
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 3, "8 exports in pages of 3");

    // Each page holds the whole entries, exactly as `get` reports them.
    let first = bed.call_ok("nfs.export.list", json!({"limit": 1}));
    assert_eq!(
        first["exports"][0],
        bed.call_ok("nfs.export.get", json!({"name": "vol0"})),
    );
    // A limit the rest of the list fits in ends on that page.
    let r = bed.call_ok("nfs.export.list", json!({"limit": 5}));
    let rest = bed.call_ok(
        "nfs.export.list",
        json!({"limit": 1000, "cursor": r["next_cursor"]}),
    );
    assert_eq!(names(&rest), ["vol5", "vol6", "vol7"]);
    assert!(rest.get("next_cursor").is_none(), "{}", rest["next_cursor"]);

    // Cursors the agent did not make for this list are refused, and so are bad limits.
    let smb_cursor = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("c1\nsmb.share.list\nvol0")
    };
    for (params, what) in [
        (json!({"limit": 2, "cursor": "bm90LWEtY3Vyc29y"}), "made-up"),
        (json!({"cursor": "!!"}), "not base64url"),
        (json!({"limit": 2, "cursor": smb_cursor}), "another list's"),
        (json!({"limit": 0}), "limit 0"),
        (json!({"limit": 1001}), "limit 1001"),
        (json!({"page": 2}), "unknown key"),
    ] {
        let err = bed.call_err("nfs.export.list", params.clone(), "INVALID_PARAMS");
        assert!(err["message"].is_string(), "{what}: {err}");
    }
}

#[test]
fn csgctl_lists_follow_next_cursor_and_fall_back_to_pages_over_the_cap() {
    let (bed, _w, _stub) = big_bed("gw-page-ctl");
    let all: Vec<String> = (0..EXPORTS).map(name).collect();
    let ctl = bed.csgctl();

    // --limit: pages of 3, printed as one list.
    let out = ctl.run(&["nfs", "list", "gw-page-ctl", "--limit", "3", "--json"]);
    out.assert_code(0);
    let r = csgctl::json_stdout(&out);
    assert_eq!(names(&r), all, "{}", out.describe());
    assert!(r.get("next_cursor").is_none(), "{r}");

    // No --limit: the whole list is over the cap, so csgctl says so and pages.
    let out = ctl.run(&["nfs", "list", "gw-page-ctl", "--json"]);
    out.assert_code(0);
    assert_eq!(names(&csgctl::json_stdout(&out)), all, "{}", out.describe());
    assert!(
        out.stderr.contains("reply cap"),
        "csgctl says why it pages: {}",
        out.describe()
    );

    // The table form too (one row per export).
    let out = ctl.run(&["nfs", "list", "gw-page-ctl", "--limit", "5"]);
    out.assert_code(0);
    for n in &all {
        assert!(out.stdout.contains(n.as_str()), "{n}: {}", out.describe());
    }

    // `csgctl call` passes the error through: the raw protocol, exit 1.
    let out = ctl.run(&["call", "gw-page-ctl", "nfs.export.list"]);
    out.assert_code(1);
    assert!(out.stderr.contains("REPLY_TOO_LARGE"), "{}", out.describe());
}

/// Follows `next_cursor` with pages of `limit`; returns the names under `field` in order and
/// every page's result.
fn all_pages(
    bed: &Bed,
    method: &str,
    field: &str,
    key: &str,
    limit: u32,
) -> (Vec<String>, Vec<Value>) {
    let mut names = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..20 {
        let mut params = json!({ "limit": limit });
        if let Some(c) = cursor.take() {
            params["cursor"] = c;
        }
        let r = bed.call_ok(method, params);
        let entries = r[field]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: no {field}: {r}"));
        assert!(entries.len() <= limit as usize, "{r}");
        names.extend(entries.iter().map(|e| e[key].as_str().unwrap().to_string()));
        cursor = r.get("next_cursor").cloned();
        pages.push(r);
        if cursor.is_none() {
            return (names, pages);
        }
    }
    panic!("{method}: paging does not end: {names:?}");
}

#[test]
fn smb_shares_and_iscsi_targets_page_the_same_way_on_real_daemons() {
    use csg_e2e::smbd::Smbd;
    use csg_e2e::tgtd::Tgtd;
    use csg_e2e::IscsiSection;

    // SMB: five shares on a private smbd, in pages of 2.
    let smbd = Smbd::start();
    let state = tempfile::tempdir().unwrap();
    let bed = Bed::start_with("gw-page-smb", |c| smbd.configure(c, state.path()));
    let shares: Vec<String> = ["s4", "s1", "s3", "s0", "s2"].map(String::from).to_vec();
    for s in &shares {
        let d = smbd.root().join(s);
        std::fs::create_dir_all(&d).unwrap();
        bed.call_ok(
            "smb.share.create",
            json!({"name": s, "path": d.display().to_string()}),
        );
    }
    let whole = bed.call_ok("smb.share.list", json!({}));
    assert!(whole.get("next_cursor").is_none(), "{whole}");
    let (names, pages) = all_pages(&bed, "smb.share.list", "shares", "name", 2);
    let mut want = shares.clone();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(pages.len(), 3);
    let listed: Vec<&str> = whole["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, want, "the whole list is the pages joined");
    let (users, _) = all_pages(&bed, "smb.user.list", "users", "username", 2);
    assert!(users.windows(2).all(|w| w[0] < w[1]), "{users:?}");
    // A cursor made for another list (nfs.export.list, after "s1") is not this list's.
    bed.call_err(
        "smb.share.list",
        json!({"limit": 2, "cursor": "YzEKbmZzLmV4cG9ydC5saXN0CnMx"}),
        "INVALID_PARAMS",
    );
    drop(bed);

    // iSCSI: four targets on a private tgtd, in pages of 3; `unexpected` on every page.
    let tgtd = Tgtd::start();
    let dirs = csg_e2e::StorageDirs::new();
    let bed = Bed::start_with("gw-page-iscsi", |c| {
        c.storage = Some(dirs.section());
        c.iscsi = Some(IscsiSection {
            watch_interval_s: Some(0),
            ..tgtd.iscsi_section("iqn.2026-11.test.csg")
        });
    });
    for t in ["t3", "t0", "t2", "t1"] {
        bed.call_ok("iscsi.target.create", json!({"name": t}));
    }
    let (names, pages) = all_pages(&bed, "iscsi.target.list", "targets", "name", 3);
    assert_eq!(names, ["t0", "t1", "t2", "t3"]);
    assert_eq!(pages.len(), 2);
    for p in &pages {
        assert!(p["unexpected"].is_array(), "{p}");
    }
}

#[test]
fn check_config_bounds_the_reply_cap() {
    use csg_e2e::agent::check_config;
    let conf = |agent: &str, packet: &str| {
        format!(
            "[identity]\ngroup_id = \"GID_csg\"\ninstance_id = \"gw-001\"\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n{packet}\n[agent]\n{agent}\n"
        )
    };
    check_config(&conf("max_reply_bytes = 57344", "")).assert_code(0);
    check_config(&conf("max_reply_bytes = 1047552", "")).assert_code(0);
    for (agent, packet) in [
        ("max_reply_bytes = 57343", ""),
        ("max_reply_bytes = 1047553", ""),
        ("max_reply_bytes = 70000", "max_packet_bytes = 70000"),
    ] {
        let out = check_config(&conf(agent, packet));
        out.assert_code(2);
        assert!(
            out.stderr.contains("agent.max_reply_bytes"),
            "{agent}: {}",
            out.describe()
        );
    }
}
