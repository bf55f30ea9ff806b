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
