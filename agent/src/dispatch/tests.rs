//! Dispatcher behaviour without a broker: a recording uplink stands in for the session.
//! Everything runs on a current-thread runtime, so requests handed in back to back are all
//! admitted before any handler task runs: "still running" is deterministic, not a race.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use csg_protocol::{AgentTopics, ClientId, GroupId, InstanceId, TopicMode, TopicParents};
use serde_json::{json, Value};

use super::*;
use crate::handlers::Handlers;
use crate::stats::Stats;
use crate::status::StatusSource;
use crate::uplink::fake::RecordingUplink;
use csg_transport::{Inbound, Properties};

struct Rig {
    d: Arc<Dispatcher>,
    up: Arc<RecordingUplink>,
    stats: Arc<Stats>,
}

fn rig(max_in_flight: usize) -> Rig {
    rig_with(max_in_flight, None)
}

fn rig_with(
    max_in_flight: usize,
    journal: Option<(Arc<crate::journal::Journal>, Vec<crate::journal::Record>)>,
) -> Rig {
    rig_full(max_in_flight, journal, 61440, "h")
}

fn rig_full(
    max_in_flight: usize,
    journal: Option<(Arc<crate::journal::Journal>, Vec<crate::journal::Record>)>,
    max_reply: usize,
    hostname: &str,
) -> Rig {
    let client = ClientId::new(GroupId::new("G").unwrap(), InstanceId::new("gw").unwrap()).unwrap();
    let topics =
        AgentTopics::new(&TopicParents::default(), TopicMode::Standard, &client, 64).unwrap();
    let stats = Arc::new(Stats::default());
    let up = Arc::new(RecordingUplink::default());
    let storage = Arc::new(tokio::sync::RwLock::new(crate::families::Storage::none()));
    let handlers = Arc::new(Handlers {
        limits: crate::handlers::FamilyLimits::new(8),
        status: Arc::new(StatusSource::new("gw", "G", stats.clone(), storage.clone())),
        storage,
        info: std::sync::RwLock::new(
            serde_json::from_value(json!({
                "agent_version":"t","protocol_version":1,"group_id":"G","instance_id":"gw",
                "client_id":"G@@@gw","hostname":hostname,"os":"o","kernel":"k","arch":"a",
                "topic_mode":"standard","methods":[],"max_payload":65536,"started_ms":0
            }))
            .unwrap(),
        ),
        capabilities: std::sync::RwLock::new(crate::handlers::sys::Capabilities::fixed(
            serde_json::from_value(json!({
                "protocol": {"versions": ["1.0", "1.1"], "current": "1.1", "envelope_v": 1},
                "mqtt": {"protocol": "3.1.1"},
                "limits": {"max_payload_bytes": 65536, "max_reply_bytes": max_reply,
                           "id_memory_ttl_s": 600, "max_in_flight": max_in_flight,
                           "max_waiters_per_id": 16, "max_topic_len": 64,
                           "max_list_limit": 1000, "max_deadline_ahead_s": 330},
                "signing": {"required": false, "algorithms": ["EdDSA"], "audience": "G@@@gw",
                            "key_ids": [], "max_validity_s": 300, "clock_skew_s": 30},
                "storage": {"roots": []}, "families": {}, "methods": {}
            }))
            .unwrap(),
        )),
    });
    let d = Dispatcher::new(
        topics,
        up.clone(),
        handlers,
        stats.clone(),
        Limits {
            max_payload: 65536,
            max_reply,
            max_in_flight,
            reply_cache_ttl: Duration::from_secs(600),
            reply_cache_max: 1024,
        },
        journal,
    );
    Rig { d, up, stats }
}

impl Rig {
    fn send(&self, v: Value) {
        self.send_raw(serde_json::to_vec(&v).unwrap());
    }
    fn send_raw(&self, b: Vec<u8>) {
        self.d.on_message(Inbound {
            topic: "csg-down/gw".into(),
            payload: Bytes::from(b),
            ..Default::default()
        });
    }
    async fn settle(&self) {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    fn replies(&self) -> Vec<(String, Value)> {
        self.up
            .take()
            .into_iter()
            .map(|m| (m.topic, serde_json::from_slice(&m.payload).unwrap()))
            .collect()
    }
}

fn ping(id: &str) -> Value {
    json!({"v":1,"id":id,"method":"sys.ping","reply_to":"csg-up/c1"})
}

#[tokio::test(flavor = "current_thread")]
async fn ping_is_answered_on_reply_to() {
    let r = rig(8);
    r.send(ping("p1"));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, "csg-up/c1");
    assert_eq!(replies[0].1["id"], "p1");
    assert_eq!(replies[0].1["ok"], true);
    assert_eq!(replies[0].1["result"]["pong"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn one_way_request_runs_and_sends_nothing() {
    let r = rig(8);
    r.send(json!({"v":1,"id":"n1","method":"sys.ping","reply_to":"noreply"}));
    r.send(json!({"v":1,"id":"n2","method":"sys.ping"}));
    r.settle().await;
    assert!(r.replies().is_empty());
    assert_eq!(r.stats.snapshot().executed, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn repeat_of_finished_id_is_replayed_not_rerun() {
    // A mutation's id (a read's is forgotten once answered).
    let r = rig(8);
    let reconcile = json!({"v":1,"id":"dup","method":"sys.reconcile","reply_to":"csg-up/c1"});
    r.send(reconcile.clone());
    r.settle().await;
    r.send(reconcile);
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].1, replies[1].1, "same remembered reply");
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.duplicates), (1, 1));
}

#[tokio::test(flavor = "current_thread")]
async fn repeat_while_running_gets_the_same_reply_once_per_arrival() {
    let r = rig(8);
    r.send(ping("run"));
    r.send(ping("run"));
    r.send(json!({"v":1,"id":"run","method":"sys.ping","reply_to":"csg-up/c2"}));
    r.settle().await;
    let replies = r.replies();
    let topics: Vec<_> = replies.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["csg-up/c1", "csg-up/c1", "csg-up/c2"]);
    assert_eq!(replies[0].1, replies[2].1);
    assert_eq!(r.stats.snapshot().executed, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn expired_is_refused_and_not_remembered() {
    let r = rig(8);
    r.send(json!({"v":1,"id":"e1","method":"sys.ping","reply_to":"csg-up/c1","deadline_ms":1}));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies[0].1["error"]["code"], "EXPIRED");
    assert_eq!(r.stats.snapshot().executed, 0);
    // The same id with a live deadline still runs: nothing ran the first time.
    let later = csg_protocol::now_ms() + 60_000;
    r.send(json!({"v":1,"id":"e1","method":"sys.ping","reply_to":"csg-up/c1","deadline_ms":later}));
    r.settle().await;
    assert_eq!(r.replies()[0].1["ok"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn reply_topic_outside_the_up_parent_is_never_published_to() {
    let r = rig(8);
    for t in [
        "csg-down/gw",
        "csg-status/gw",
        "elsewhere",
        "csg-up/#",
        &format!("csg-up/{}", "x".repeat(60)),
    ] {
        r.send(json!({"v":1,"id":"x1","method":"sys.ping","reply_to":t}));
    }
    r.settle().await;
    assert!(r.replies().is_empty());
    let s = r.stats.snapshot();
    assert_eq!((s.dropped, s.executed), (5, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn bad_input_is_answered_when_possible_and_dropped_otherwise() {
    let r = rig(8);
    r.send_raw(b"not json".to_vec());
    r.send_raw(vec![0xff, 0xfe, 0x00]);
    r.send_raw(vec![b'{'; 200_000]);
    r.send(json!({"v":1,"id":"b1","method":"Bad Method","reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":"b2","method":"sys.ping","params":{"pad":"x".repeat(70_000)},"reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":"b3","method":"sys.ping","params":{"unexpected":1},"reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":"b4","method":"no.such","reply_to":"csg-up/c1"}));
    r.settle().await;
    let codes: Vec<_> = r
        .replies()
        .into_iter()
        .map(|(_, v)| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["error"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("b1".into(), "BAD_REQUEST".into()),
            ("b2".into(), "BAD_REQUEST".into()),
            ("b3".into(), "INVALID_PARAMS".into()),
            ("b4".into(), "UNKNOWN_METHOD".into()),
        ] as [(String, String); 4]
    );
    assert_eq!(r.stats.snapshot().dropped, 3);
}

#[tokio::test(flavor = "current_thread")]
async fn in_flight_limit_answers_busy_retryable() {
    let r = rig(2);
    for id in ["l1", "l2", "l3"] {
        r.send(ping(id));
    }
    r.settle().await;
    let replies = r.replies();
    let busy: Vec<_> = replies.iter().filter(|(_, v)| v["ok"] == false).collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].1["id"], "l3");
    assert_eq!(busy[0].1["error"]["code"], "BUSY");
    assert_eq!(busy[0].1["error"]["retryable"], true);
    // BUSY is not remembered: the retry runs.
    r.send(ping("l3"));
    r.settle().await;
    assert_eq!(r.replies()[0].1["ok"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn id_reused_for_another_method_is_refused() {
    // Only a mutation's id is remembered once it has finished (a read's is forgotten).
    let r = rig(8);
    r.send(json!({"v":1,"id":"same","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.settle().await;
    r.send(json!({"v":1,"id":"same","method":"sys.info","reply_to":"csg-up/c1"}));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies[1].1["error"]["code"], "BAD_REQUEST");
    assert!(replies[1].1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sys.reconcile"));
}

#[tokio::test(flavor = "current_thread")]
async fn panicking_handler_is_answered_internal_and_frees_its_slot() {
    let r = rig(1);
    crate::handlers::PANIC_ON_PING.with(|p| p.set(true));
    r.send(ping("boom"));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies[0].1["error"]["code"], "INTERNAL");
    // The in-flight slot was released: the next request is admitted.
    r.send(ping("after"));
    r.settle().await;
    assert_eq!(r.replies()[0].1["ok"], true);
    assert_eq!(r.d.drain(Duration::from_millis(10)).await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn mutations_are_remembered_across_a_restart_reads_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let (j, live) =
            crate::journal::Journal::open(dir.path(), 600_000, csg_protocol::now_ms()).unwrap();
        Some((Arc::new(j), live))
    };
    let r = rig_with(8, open());
    r.send(json!({"v":1,"id":"m1","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.send(ping("p1"));
    // The journal write runs on a blocking thread: wait for both replies.
    for _ in 0..200 {
        if r.up.sent.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = r.replies();
    assert_eq!(first.len(), 2);
    drop(r);

    // A new agent process: same state directory, empty memory.
    let r = rig_with(8, open());
    r.send(json!({"v":1,"id":"m1","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.send(ping("p1"));
    r.settle().await;
    let again = r.replies();
    let m1 = |v: &Vec<(String, Value)>| v.iter().find(|(_, x)| x["id"] == "m1").unwrap().1.clone();
    assert_eq!(
        m1(&again),
        m1(&first),
        "the remembered reply, byte for byte"
    );
    let s = r.stats.snapshot();
    assert_eq!(
        (s.executed, s.duplicates),
        (1, 1),
        "only the read ran again"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_finished_read_runs_again_a_finished_mutation_is_answered_from_memory() {
    let r = rig(8);
    r.send(ping("p"));
    r.settle().await;
    r.send(ping("p"));
    r.settle().await;
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.duplicates), (2, 0), "the read ran twice");
    assert_eq!(r.d.cache.lock().unwrap().len(), 0, "no read is remembered");

    r.send(json!({"v":1,"id":"m","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.settle().await;
    r.send(json!({"v":1,"id":"m","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.settle().await;
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.duplicates), (3, 1), "the mutation ran once");
    assert_eq!(r.d.cache.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_repeat_of_a_running_read_is_attached_to_it() {
    let r = rig(8);
    // Both arrive before the first runs (current-thread runtime): one execution, two answers.
    r.send(ping("p"));
    r.send(ping("p"));
    r.settle().await;
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.duplicates), (1, 1));
    assert_eq!(r.replies().len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_methods_and_bad_params_are_refused_before_running_and_not_remembered() {
    let r = rig(8);
    r.send(json!({"v":1,"id":"u","method":"nfs.export.frob","reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":"b","method":"sys.ping","params":{"x":1},"reply_to":"csg-up/c1"}));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies[0].1["error"]["code"], "UNKNOWN_METHOD");
    assert_eq!(replies[1].1["error"]["code"], "INVALID_PARAMS");
    assert_eq!(r.stats.snapshot().executed, 0);
    assert_eq!(r.d.cache.lock().unwrap().len(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn repeats_past_the_waiter_cap_are_answered_busy_not_ignored() {
    let r = rig(8);
    for _ in 0..MAX_WAITERS + 4 {
        r.send(ping("cap"));
    }
    // One-way repeats are owed nothing and get nothing.
    r.send(json!({"v":1,"id":"cap","method":"sys.ping"}));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies.len(), MAX_WAITERS + 4);
    let (busy, ok): (Vec<_>, Vec<_>) = replies.iter().partition(|(_, v)| v["ok"] == false);
    assert_eq!(ok.len(), MAX_WAITERS);
    assert_eq!(busy.len(), 4);
    for (topic, v) in busy {
        assert_eq!(topic, "csg-up/c1");
        assert_eq!(v["id"], "cap");
        assert_eq!(v["error"]["code"], "BUSY");
        assert_eq!(v["error"]["retryable"], true);
        assert_eq!(
            v["error"]["message"],
            "request id cap is still running and already owes 16 replies; retry with the same id"
        );
    }
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.busy), (1, 4));
}

#[tokio::test(flavor = "current_thread")]
async fn duplicate_keys_and_non_utf8_are_never_executed() {
    let r = rig(8);
    // Answerable: BAD_REQUEST, with the id when it was given once.
    r.send_raw(
        br#"{"v":1,"id":"d1","method":"sys.ping","method":"sys.reconcile","reply_to":"csg-up/c1"}"#
            .to_vec(),
    );
    r.send_raw(
        br#"{"v":1,"id":"d2","method":"sys.ping","params":{"a":1,"a":1},"reply_to":"csg-up/c1"}"#
            .to_vec(),
    );
    r.send_raw(
        br#"{"v":1,"id":"d3","id":"d4","method":"sys.ping","reply_to":"csg-up/c1"}"#.to_vec(),
    );
    // Not answerable: dropped.
    r.send_raw(
        br#"{"v":1,"id":"d5","method":"sys.ping","reply_to":"csg-up/c1","reply_to":"csg-up/c2"}"#
            .to_vec(),
    );
    r.send_raw(b"{\"v\":1,\"id\":\"u1\",\"method\":\"sys.ping\",\"zz\":\"\xff\",\"reply_to\":\"csg-up/c1\"}".to_vec());
    r.settle().await;
    let got: Vec<_> = r
        .replies()
        .into_iter()
        .map(|(_, v)| (v["id"].clone(), v["error"]["code"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("d1"), json!("BAD_REQUEST")),
            (json!("d2"), json!("BAD_REQUEST")),
            (Value::Null, json!("BAD_REQUEST")),
        ]
    );
    let s = r.stats.snapshot();
    assert_eq!((s.executed, s.bad_request, s.dropped), (0, 3, 2));
}

#[tokio::test(flavor = "current_thread")]
async fn a_bad_request_with_an_invalid_id_echoes_it_raw() {
    let r = rig(8);
    r.send(json!({"v":1,"id":"has space","method":"sys.ping","reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":42,"method":"sys.ping","reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"id":"x".repeat(500),"method":"sys.ping","reply_to":"csg-up/c1"}));
    r.send(json!({"v":1,"method":"sys.ping","reply_to":"csg-up/c1"}));
    r.settle().await;
    let replies = r.replies();
    assert_eq!(replies.len(), 4);
    for (_, v) in &replies {
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], "BAD_REQUEST");
    }
    assert_eq!(replies[0].1["raw_id"], "has space");
    assert_eq!(replies[1].1["raw_id"], "42");
    assert_eq!(replies[2].1["raw_id"], "x".repeat(128));
    assert!(
        replies[3].1.get("raw_id").is_none(),
        "absent when no id was sent"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_reply_over_the_cap_is_an_error_naming_the_cap_never_cut_json() {
    // sys.info with a 5000-byte host name is over a 4096-byte cap; sys.ping is not.
    let r = rig_full(8, None, 4096, &"h".repeat(5000));
    r.send(json!({"v":1,"id":"i1","method":"sys.info","reply_to":"csg-up/c1"}));
    r.send(ping("p1"));
    r.settle().await;
    let raw = r.up.take();
    assert_eq!(raw.len(), 2);
    for m in &raw {
        assert!(m.payload.len() <= 4096, "{} bytes", m.payload.len());
    }
    let replies: Vec<Value> = raw
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let info = replies.iter().find(|v| v["id"] == "i1").unwrap();
    assert_eq!(info["ok"], false);
    assert_eq!(info["error"]["code"], "REPLY_TOO_LARGE");
    assert_eq!(info["error"]["retryable"], false);
    let msg = info["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("4096") && msg.contains("agent.max_reply_bytes"),
        "{msg}"
    );
    let ping = replies.iter().find(|v| v["id"] == "p1").unwrap();
    assert_eq!(ping["ok"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn a_mutation_over_the_cap_is_remembered_as_its_error() {
    // No handler here returns a reply that large, so the run is driven by hand: started in
    // the id memory, completed with an oversized result, then repeated.
    let r = rig_full(8, None, 4096, "h");
    let id = RequestId::new("m1".to_string()).unwrap();
    let method = "nfs.export.list";
    r.d.cache
        .lock()
        .unwrap()
        .start(id.clone(), method, Some("csg-up/c1"));
    r.d.in_flight.fetch_add(1, Ordering::AcqRel);
    let mut c = Completion {
        dispatcher: r.d.clone(),
        id: id.clone(),
        method,
        resource: None,
        kind: Kind::Mutation,
        key_id: "unsigned".into(),
        done: false,
        forget: false,
    };
    let bytes = c.reply_bytes(Ok(Value::String("x".repeat(10_000))));
    c.complete(bytes);
    let sent = r.replies();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1["error"]["code"], "REPLY_TOO_LARGE");
    let msg = sent[0].1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("limit"),
        "a list's error suggests paging: {msg}"
    );
    let again =
        r.d.cache
            .lock()
            .unwrap()
            .lookup(&id, method, Some("csg-up/c1"), std::time::Instant::now());
    match again {
        Lookup::Replay(b) => {
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["error"]["code"], "REPLY_TOO_LARGE");
            assert!(b.len() <= 4096);
        }
        _ => panic!("the id's reply is not remembered"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_remembered_reply_over_a_lowered_cap_is_not_replayed() {
    // Journaled under a larger cap, then the agent restarted with a smaller one.
    let dir = tempfile::tempdir().unwrap();
    let big = Reply::ok(
        RequestId::new("m1".to_string()).unwrap(),
        json!({"nfs": {"ok": true, "changes": ["x".repeat(5000)]}}),
    )
    .to_json();
    {
        let (j, _) =
            crate::journal::Journal::open(dir.path(), 600_000, csg_protocol::now_ms()).unwrap();
        j.append(&crate::journal::Record {
            id: "m1".into(),
            method: "sys.reconcile".into(),
            finished_ms: csg_protocol::now_ms(),
            reply: big,
        })
        .unwrap();
    }
    let (j, live) =
        crate::journal::Journal::open(dir.path(), 600_000, csg_protocol::now_ms()).unwrap();
    let r = rig_full(8, Some((Arc::new(j), live)), 4096, "h");
    r.send(json!({"v":1,"id":"m1","method":"sys.reconcile","reply_to":"csg-up/c1"}));
    r.settle().await;
    let raw = r.up.take();
    assert_eq!(raw.len(), 1);
    assert!(raw[0].payload.len() <= 4096);
    let v: Value = serde_json::from_slice(&raw[0].payload).unwrap();
    assert_eq!(v["id"], "m1");
    assert_eq!(v["error"]["code"], "REPLY_TOO_LARGE", "{v}");
    assert_eq!(
        r.stats.snapshot().executed,
        0,
        "answered from memory, not run again"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unreadable_messages_are_counted_by_reason() {
    let r = rig(8);
    for _ in 0..3 {
        r.d.on_message(Inbound {
            topic: "csg-status/other/presence".into(),
            payload: Bytes::from_static(
                br#"{"v":1,"id":"x","method":"sys.ping","reply_to":"csg-up/c1"}"#,
            ),
            ..Default::default()
        });
    }
    r.send_raw(b"not json".to_vec());
    r.send_raw(vec![b'{', 0xff, b'}']);
    r.settle().await;
    assert!(
        r.replies().is_empty(),
        "nothing on another topic is a command"
    );
    let s = r.stats.snapshot();
    assert_eq!((s.received, s.dropped, s.executed), (5, 5, 0));
    assert_eq!(
        r.stats.dropped_by_reason(),
        [
            ("not_utf8".to_string(), 1),
            ("unreadable".to_string(), 1),
            ("unsubscribed_topic".to_string(), 3)
        ]
        .into()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mqtt5_response_topic_and_correlation_data_reach_every_reply() {
    let r = rig(8);
    let send = |id: &str, corr: &'static [u8]| {
        r.d.on_message(Inbound {
            topic: "csg-down/gw".into(),
            payload: Bytes::from(
                serde_json::to_vec(&json!({"v":1,"id":id,"method":"sys.reconcile"})).unwrap(),
            ),
            props: Properties {
                response_topic: Some("csg-up/c5".into()),
                correlation_data: Some(Bytes::from_static(corr)),
                message_expiry: Some(30),
            },
            ..Default::default()
        });
    };
    // The same id twice while it runs, then once more after: each reply carries the
    // Correlation Data of the copy it answers.
    send("m5", b"\x00a");
    send("m5", b"b\x00");
    r.settle().await;
    send("m5", b"");
    r.settle().await;
    let sent = r.up.take();
    let got: Vec<(String, Option<Bytes>, Option<String>)> = sent
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                m.props.correlation_data.clone(),
                m.props.response_topic.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("csg-up/c5".into(), Some(Bytes::from_static(b"\x00a")), None),
            ("csg-up/c5".into(), Some(Bytes::from_static(b"b\x00")), None),
            ("csg-up/c5".into(), Some(Bytes::new()), None),
        ]
    );
    assert_eq!(r.stats.snapshot().executed, 1);
}

/// Correlation Data is mirrored only up to its limit, whatever path answers: here a payload
/// that never decodes, refused on its Response Topic.
#[tokio::test(flavor = "current_thread")]
async fn long_correlation_data_is_never_mirrored_even_on_a_refusal_before_decoding() {
    let r = rig(8);
    r.d.on_message(Inbound {
        topic: "csg-down/gw".into(),
        payload: Bytes::from_static(br#"{"v":1,"id":"c1","method":"sys.ping","params":7}"#),
        props: Properties {
            response_topic: Some("csg-up/c5".into()),
            correlation_data: Some(Bytes::from(vec![7u8; MAX_CORRELATION_DATA + 1])),
            message_expiry: None,
        },
        ..Default::default()
    });
    r.settle().await;
    let sent = r.up.take();
    assert_eq!(sent.len(), 1, "refused on the Response Topic");
    assert_eq!(sent[0].topic, "csg-up/c5");
    assert_eq!(
        sent[0].props.correlation_data, None,
        "over the limit: not mirrored"
    );
    let v: Value = serde_json::from_slice(&sent[0].payload).unwrap();
    assert_eq!(v["error"]["code"], "BAD_REQUEST", "{v}");
}

/// A signature covers the envelope only: a Response Topic on a signed request (added by
/// anyone on the way) is not where it is answered.
#[tokio::test(flavor = "current_thread")]
async fn a_signed_request_is_never_answered_on_a_response_topic() {
    use crate::config::security::{SecuritySettings, TrustedKey};
    use csg_protocol::jws::{self, ed25519_dalek::SigningKey};
    let r = rig(8);
    let key = SigningKey::from_bytes(&[1; 32]);
    let mut keys = std::collections::BTreeMap::new();
    keys.insert(
        "ops".to_string(),
        TrustedKey {
            public_key: key.verifying_key(),
            allow: vec![csg_protocol::methods::MethodPattern::new("*").unwrap()],
            file: "/k/ops.pub".into(),
        },
    );
    let settings = SecuritySettings {
        trusted_keys: keys,
        ..SecuritySettings::default()
    };
    r.d.set_policy(crate::auth::Policy::new(&settings, "G@@@gw"));
    let deadline = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 60_000;
    let send = |id: &str, reply_to: Option<&str>| {
        let mut body = json!({"v":1,"id":id,"method":"sys.ping","deadline_ms":deadline});
        if let Some(t) = reply_to {
            body["reply_to"] = json!(t);
        }
        let signed = jws::sign(
            &serde_json::to_vec(&body).unwrap(),
            "ops",
            Some("G@@@gw"),
            &key,
        );
        r.d.on_message(Inbound {
            topic: "csg-down/gw".into(),
            payload: Bytes::from(signed.into_bytes()),
            props: Properties {
                response_topic: Some("csg-up/elsewhere".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                message_expiry: None,
            },
            ..Default::default()
        });
    };
    // No signed reply_to: one-way, whatever the Response Topic says.
    send("s1", None);
    // A signed reply_to: answered there, and the differing Response Topic is not a mismatch
    // (it is not read at all).
    send("s2", Some("csg-up/signed"));
    r.settle().await;
    let sent = r.up.take();
    let topics: Vec<&str> = sent.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["csg-up/signed"], "{sent:?}");
    let v: Value = serde_json::from_slice(&sent[0].payload).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["ok"].as_bool()),
        (Some("s2"), Some(true)),
        "{v}"
    );
    assert_eq!(r.stats.snapshot().executed, 2);
}
