//! Repeats of a running request past the waiter cap are answered `BUSY` (retryable) at once,
//! never left unanswered: a slow `nfs.export.create` (the exportfs stand-in's `-ra` made slow)
//! and 20 repeats of its id.

use std::time::{Duration, Instant};

use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::{rpc, wait_until, Bed, StorageDirs as World, TIMEOUT};
use serde_json::json;

/// Replies a running request owes at most (the agent's `MAX_WAITERS`), its own included.
const CAP: usize = 16;
const REPEATS: usize = 20;
const SLOW: Duration = Duration::from_secs(3);

#[test]
fn repeats_past_the_cap_of_a_running_request_are_busy() {
    let w = World::with_root("srv");
    std::fs::create_dir_all(w.root().join("vol1")).unwrap();
    let stub = Stub::new(w.base());
    let bed = Bed::start_with("gw-busy", |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    assert!(
        wait_until(TIMEOUT, || !stub.argv().is_empty()),
        "start-up reconcile did not run exportfs\n{}",
        bed.agent.log()
    );
    bed.barrier();
    let base = bed.counters();
    stub.set_reexport_delay(SLOW);

    let id = "busy-create-1";
    let params =
        json!({"name": "vol1", "path": w.path("vol1"), "clients": [{"match": "10.0.0.0/8"}]});
    let body = rpc::bytes(&rpc::request(
        id,
        "nfs.export.create",
        params.clone(),
        Some(&bed.reply_to),
    ));
    let mark = bed.rec.mark();
    let sent = Instant::now();
    for _ in 0..=REPEATS {
        bed.send_raw(body.clone());
    }
    let mine = |m: &csg_e2e::Msg| m.topic == bed.reply_to && m.field("id").as_deref() == Some(id);
    let all = bed
        .rec
        .wait_for_count(mark, REPEATS + 1, TIMEOUT + SLOW, mine);
    assert_eq!(
        all.len(),
        REPEATS + 1,
        "every one of the {} sends is answered\n{}",
        REPEATS + 1,
        bed.dump()
    );
    let (busy, ok): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|m| m.json_or_panic()["ok"] == json!(false));
    assert_eq!(ok.len(), CAP, "the run and its attached repeats");
    assert_eq!(busy.len(), REPEATS + 1 - CAP);
    for m in &busy {
        let e = rpc::expect_err(&m.json_or_panic(), Some(id), "BUSY");
        assert_eq!(e["retryable"], json!(true), "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("still running"),
            "{e}"
        );
        // Answered while the request runs, not when it ends.
        assert!(
            m.at.duration_since(sent) < SLOW,
            "BUSY after {:?}",
            m.at.duration_since(sent)
        );
    }
    for m in &ok {
        assert!(
            m.at.duration_since(sent) >= SLOW,
            "an ok reply before the slow apply ended"
        );
        assert_eq!(
            m.json_or_panic(),
            ok[0].json_or_panic(),
            "one result for every waiter"
        );
    }
    bed.assert_growth(
        &base,
        &[
            ("executed", 1),
            ("duplicates", (CAP - 1) as u64),
            ("busy", (REPEATS + 1 - CAP) as u64),
        ],
    );

    // Once it has ended, a retry of the same id gets the remembered result; nothing runs again.
    stub.set_reexport_delay(Duration::ZERO);
    let n = stub.argv().len();
    let again = bed.call_raw(id, "nfs.export.create", params);
    assert_eq!(again, ok[0].json_or_panic());
    assert_eq!(stub.argv().len(), n, "{:?}", stub.argv());
}
