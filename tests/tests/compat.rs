//! A protocol 1.0 console against this (1.1) agent: the exact bytes a 1.0 console sent, over a
//! raw MQTT client, and replies of exactly the 1.0 shape — no field a 1.0 console has not seen
//! (it must ignore unknown ones, but an agent that adds none on a 1.0 request cannot break even
//! a console that does not).

use std::collections::BTreeSet;

use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::{wait_until, Bed, StorageDirs as World, TIMEOUT};
use serde_json::{json, Value};

/// A request as the 1.0 csgctl wrote it: `v` 1, id, method, params, reply_to (and, for a
/// mutation, a deadline), key order and all.
fn request_1_0(id: &str, method: &str, params: &str, reply_to: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"id":"{id}","method":"{method}","params":{params},"reply_to":"{reply_to}"}}"#
    )
    .into_bytes()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// Sends the 1.0 bytes and returns the reply, checked to be `{"v":1,"id":…,"ok":true,"result":…}`
/// and nothing else.
fn call(bed: &Bed, id: &str, method: &str, params: &str) -> Value {
    let mark = bed.rec.mark();
    bed.send_raw(request_1_0(id, method, params, &bed.reply_to));
    let reply = bed.reply_since(mark, id);
    assert_eq!(keys(&reply), set(&["v", "id", "ok", "result"]), "{reply}");
    assert_eq!(reply["v"], json!(1), "{reply}");
    assert_eq!(reply["id"], json!(id), "{reply}");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    reply["result"].clone()
}

#[test]
fn a_1_0_console_gets_1_0_replies() {
    let w = World::with_root("srv");
    std::fs::create_dir_all(w.root().join("vol1")).unwrap();
    let stub = Stub::new(w.base());
    let bed = Bed::start_with("gw-compat", |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    assert!(
        wait_until(TIMEOUT, || !stub.argv().is_empty()),
        "start-up reconcile did not run exportfs\n{}",
        bed.agent.log()
    );

    let r = call(&bed, "c10-ping", "sys.ping", "{}");
    assert_eq!(keys(&r), set(&["pong", "ts_ms"]), "{r}");
    assert_eq!(r["pong"], json!(true));

    let r = call(&bed, "c10-info", "sys.info", "{}");
    assert_eq!(
        keys(&r),
        set(&[
            "agent_version",
            "protocol_version",
            "group_id",
            "instance_id",
            "client_id",
            "hostname",
            "os",
            "kernel",
            "arch",
            "topic_mode",
            "methods",
            "storage_backends",
            "max_payload",
            "started_ms",
        ]),
        "{r}"
    );
    assert_eq!(r["protocol_version"], json!(1), "{r}");
    // Every 1.0 method is still listed; 1.1 adds, never removes.
    let methods: BTreeSet<String> = serde_json::from_value(r["methods"].clone()).unwrap();
    for m in [
        "nfs.export.create",
        "nfs.export.delete",
        "nfs.export.get",
        "nfs.export.list",
        "nfs.export.update",
        "sys.info",
        "sys.ping",
        "sys.reconcile",
        "sys.status",
    ] {
        assert!(methods.contains(m), "{m} missing from {methods:?}");
    }

    let create = format!(
        r#"{{"name":"vol1","path":"{}","clients":[{{"match":"10.0.0.0/8","access":"rw"}}]}}"#,
        w.path("vol1")
    );
    let r = call(&bed, "c10-create", "nfs.export.create", &create);
    assert_eq!(keys(&r), set(&["changed", "export"]), "{r}");
    assert_eq!(
        keys(&r["export"]),
        set(&["name", "desired", "actual", "drift"]),
        "{r}"
    );
    assert_eq!(r["changed"], json!(true));

    // The list as 1.0 had it: `backend` and `exports`, no `next_cursor`.
    let r = call(&bed, "c10-list", "nfs.export.list", "{}");
    assert_eq!(keys(&r), set(&["backend", "exports"]), "{r}");
    assert_eq!(r["exports"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(
        keys(&r["exports"][0]),
        set(&["name", "desired", "actual", "drift"])
    );
    // 1.0 consoles sent `params: null` or no params for lists too.
    let mark = bed.rec.mark();
    bed.send_raw(
        format!(
            r#"{{"v":1,"id":"c10-list2","method":"nfs.export.list","reply_to":"{}"}}"#,
            bed.reply_to
        )
        .into_bytes(),
    );
    let reply = bed.reply_since(mark, "c10-list2");
    assert_eq!(
        keys(&reply["result"]),
        set(&["backend", "exports"]),
        "{reply}"
    );

    let r = call(
        &bed,
        "c10-delete",
        "nfs.export.delete",
        r#"{"name":"vol1"}"#,
    );
    assert_eq!(keys(&r), set(&["name", "existed"]), "{r}");
    assert_eq!(r["existed"], json!(true));

    // A repeat of a 1.0 mutation's id gets the same bytes back (section 7 of 1.0).
    let mark = bed.rec.mark();
    bed.send_raw(request_1_0(
        "c10-delete",
        "nfs.export.delete",
        r#"{"name":"vol1"}"#,
        &bed.reply_to,
    ));
    let again = bed.reply_since(mark, "c10-delete");
    assert_eq!(again["result"], r, "{again}");

    // A 1.0 error reply keeps its shape too.
    let mark = bed.rec.mark();
    bed.send_raw(request_1_0(
        "c10-bad",
        "sys.ping",
        r#"{"x":1}"#,
        &bed.reply_to,
    ));
    let reply = bed.reply_since(mark, "c10-bad");
    assert_eq!(keys(&reply), set(&["v", "id", "ok", "error"]), "{reply}");
    assert_eq!(
        keys(&reply["error"]),
        set(&["code", "message", "retryable"]),
        "{reply}"
    );
    assert_eq!(reply["error"]["code"], json!("INVALID_PARAMS"), "{reply}");
}
