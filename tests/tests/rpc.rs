//! Request/reply over MQTT, driven by a raw client that builds requests by hand: the happy
//! path, one-way commands, deadlines, refused reply topics, hostile payloads, unknown
//! methods, and at-most-once execution of repeated ids.

use csg_e2e::rpc::{self, expect_err, expect_ok, padded_request, request};
use csg_e2e::{now_ms, Bed, TIMEOUT};
use serde_json::{json, Value};

#[test]
fn ping_info_and_status_round_trip() {
    let bed = Bed::start("gw-rt");

    let ping = bed.call_ok("sys.ping", json!({}));
    assert_eq!(ping["pong"], json!(true), "{ping}");
    let ts = ping["ts_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("ts_ms: {ping}"));
    assert!(
        ts.abs_diff(now_ms()) < 60_000,
        "agent clock far off: {ping}"
    );

    // `params` absent on the wire means {}.
    let mark = bed.rec.mark();
    let mut no_params = request("no-params", "sys.ping", json!({}), Some(&bed.reply_to));
    no_params.as_object_mut().unwrap().remove("params");
    bed.send_raw(rpc::bytes(&no_params));
    let r = bed.reply_since(mark, "no-params");
    assert_eq!(expect_ok(&r, "no-params")["pong"], json!(true));

    let info = bed.call_ok("sys.info", json!({}));
    assert_eq!(
        info["agent_version"],
        json!(csg_e2e::WORKSPACE_VERSION),
        "{info}"
    );
    assert_eq!(info["protocol_version"], json!(1), "{info}");
    assert_eq!(info["group_id"], json!("GID_csg"), "{info}");
    assert_eq!(info["instance_id"], json!("gw-rt"), "{info}");
    assert_eq!(info["client_id"], json!("GID_csg@@@gw-rt"), "{info}");
    assert_eq!(info["topic_mode"], json!("standard"), "{info}");
    assert_eq!(info["max_payload"], json!(65536), "{info}");
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(info["hostname"], json!(host), "{info}");
    for k in ["os", "kernel", "arch"] {
        assert!(
            info[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} must be a non-empty string: {info}"
        );
    }
    let started = info["started_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("started_ms: {info}"));
    assert!(
        started <= now_ms() && now_ms() - started < 120_000,
        "started_ms: {info}"
    );
    let methods: Vec<&str> = info["methods"]
        .as_array()
        .unwrap_or_else(|| panic!("methods must be an array: {info}"))
        .iter()
        .map(|m| {
            m.as_str()
                .unwrap_or_else(|| panic!("method names are strings: {info}"))
        })
        .collect();
    for m in ["sys.ping", "sys.info", "sys.status"] {
        assert!(methods.contains(&m), "{m} missing from methods: {info}");
    }
    let mut sorted = methods.clone();
    sorted.sort();
    assert_eq!(methods, sorted, "methods are listed sorted");
    // The protocol crate's type must read it, as a Rust console would.
    serde_json::from_value::<csg_protocol::methods::sys::InfoResult>(info.clone())
        .unwrap_or_else(|e| panic!("InfoResult cannot decode sys.info: {e}\n{info}"));

    let status = bed.status();
    rpc::check_heartbeat_body(&status, "gw-rt", "GID_csg");
    assert!(
        status["counters"]["received"].as_u64().unwrap() >= 4,
        "{status}"
    );
}

#[test]
fn one_way_requests_send_nothing_but_still_execute() {
    let bed = Bed::start("gw-oneway");
    let base = bed.counters();
    let mark = bed.rec.mark();
    // Both spellings of one-way: no reply_to at all, and the "noreply" marker.
    bed.send_raw(rpc::bytes(&request(
        "ow-absent",
        "sys.ping",
        json!({}),
        None,
    )));
    bed.send_raw(rpc::bytes(&request(
        "ow-marker",
        "sys.ping",
        json!({}),
        Some("noreply"),
    )));
    bed.barrier();

    let answers: Vec<_> = bed
        .agent_publications_since(mark)
        .into_iter()
        .filter(|m| {
            let id = m.field("id");
            id.as_deref() == Some("ow-absent") || id.as_deref() == Some("ow-marker")
        })
        .collect();
    assert!(
        answers.is_empty(),
        "one-way requests were answered: {:?}",
        answers.iter().map(|m| m.summary()).collect::<Vec<_>>()
    );
    assert!(
        bed.rec
            .matching_since(mark, |m| m.topic == "noreply"
                || m.topic.starts_with("noreply/"))
            .is_empty(),
        "something was published to a topic named noreply\n{}",
        bed.rec.dump()
    );
    // Two one-way pings and the barrier ping: all three executed, nothing refused.
    bed.assert_growth(
        &base,
        &[
            ("executed", 3),
            ("received", 3),
            ("dropped", 0),
            ("bad_request", 0),
        ],
    );
}

#[test]
fn expired_deadline_is_answered_expired_and_not_executed() {
    let bed = Bed::start("gw-expired");
    let base = bed.counters();

    let mark = bed.rec.mark();
    let mut req = request("late-1", "sys.ping", json!({}), Some(&bed.reply_to));
    req["deadline_ms"] = json!(now_ms() - 60_000);
    bed.send_raw(rpc::bytes(&req));
    let reply = bed.reply_since(mark, "late-1");
    let err = expect_err(&reply, Some("late-1"), "EXPIRED");
    assert_eq!(
        err["retryable"],
        json!(false),
        "an expired request is final: {reply}"
    );
    assert!(reply.get("result").is_none(), "{reply}");

    // A deadline in the future is no obstacle.
    let mark = bed.rec.mark();
    let mut req = request("in-time-1", "sys.ping", json!({}), Some(&bed.reply_to));
    req["deadline_ms"] = json!(now_ms() + 60_000);
    bed.send_raw(rpc::bytes(&req));
    let reply = bed.reply_since(mark, "in-time-1");
    assert_eq!(expect_ok(&reply, "in-time-1")["pong"], json!(true));

    bed.assert_growth(&base, &[("expired", 1), ("executed", 1), ("received", 2)]);
}

#[test]
fn reply_topic_outside_the_reply_parent_is_refused() {
    let bed = Bed::start("gw-replyto");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let bad_targets = [
        // Another parent of the agent's own.
        "csg-status/evil".to_string(),
        // Its own command topic: a reply there would loop back into the agent.
        bed.config().command_topic(),
        // Anywhere else on the broker.
        "elsewhere/x".to_string(),
        // Looks like the parent but is not under it.
        "csg-upx/a".to_string(),
        // Under the parent but over the 64-character limit (65 characters).
        format!("csg-up/{}", "x".repeat(58)),
    ];
    for (i, to) in bad_targets.iter().enumerate() {
        let id = format!("bad-reply-{i}");
        bed.send_raw(rpc::bytes(&request(&id, "sys.ping", json!({}), Some(to))));
    }
    bed.barrier();

    let leaked: Vec<_> = bed
        .rec
        .matching_since(mark, |m| {
            m.topic != bed.config().command_topic()
                && m.field("id").is_some_and(|id| id.starts_with("bad-reply-"))
        })
        .into_iter()
        .chain(
            // Nothing at all may appear on the bad targets (other than our own command topic,
            // where the requests themselves went).
            bed.rec.matching_since(mark, |m| {
                bad_targets[..].contains(&m.topic) && m.topic != bed.config().command_topic()
            }),
        )
        .map(|m| m.summary())
        .collect();
    assert!(
        leaked.is_empty(),
        "the agent published to a refused reply topic: {leaked:?}"
    );

    bed.assert_growth(
        &base,
        &[
            ("dropped", bad_targets.len() as u64),
            ("executed", 1), // the barrier
            ("bad_request", 0),
        ],
    );
    // Still connected: no reconnect, and it still answers.
    assert_eq!(
        bed.broker.connects_of(&bed.client_id()),
        1,
        "{}",
        bed.broker.log()
    );
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
}

#[test]
fn malformed_and_non_utf8_payloads_are_dropped_and_the_agent_keeps_serving() {
    let mut bed = Bed::start("gw-garbage");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let garbage: Vec<&[u8]> = vec![
        b"not json at all",
        b"\xff\xfe\xfd\x00\x80",
        b"{\"v\":1,\"id\":\"x\",\"method\":\"sys.ping\",\"reply_to\":\"csg-up/\xff\"}",
        b"",
        b"[1,2,3]",
        b"\"a string\"",
        b"{\"v\":1,\"id\":\"trunc",
        b"null",
    ];
    for g in &garbage {
        bed.send_raw(g.to_vec());
    }
    bed.barrier();

    let answered: Vec<_> = bed
        .agent_publications_since(mark)
        .into_iter()
        .filter(|m| m.topic != bed.reply_to || m.field("id").is_none())
        .map(|m| m.summary())
        .collect();
    assert!(
        answered.is_empty(),
        "garbage without a readable reply_to was answered: {answered:?}"
    );
    bed.assert_growth(
        &base,
        &[
            ("dropped", garbage.len() as u64),
            ("received", garbage.len() as u64 + 1),
            ("executed", 1),
        ],
    );
    bed.agent.assert_running("after garbage payloads");
    assert_eq!(
        bed.broker.connects_of(&bed.client_id()),
        1,
        "{}",
        bed.broker.log()
    );
}

#[test]
fn invalid_envelope_with_a_readable_reply_to_gets_bad_request() {
    let bed = Bed::start("gw-badreq");
    let base = bed.counters();
    // One reply topic per case: a reply to a request whose id is invalid carries id null,
    // so the topic is what ties it to its request.
    let cases: Vec<(Value, Option<&str>)> = vec![
        (
            json!({"v": 2, "id": "bad-v", "method": "sys.ping"}),
            Some("bad-v"),
        ),
        (json!({"id": "no-v", "method": "sys.ping"}), Some("no-v")),
        (json!({"v": 1, "id": "no-method"}), Some("no-method")),
        (json!({"v": 1, "id": "bad id!", "method": "sys.ping"}), None),
        (
            json!({"v": 1, "id": "x".repeat(65), "method": "sys.ping"}),
            None,
        ),
        (
            json!({"v": 1, "id": "bad-params", "method": "sys.ping", "params": [1]}),
            Some("bad-params"),
        ),
        (
            json!({"v": 1, "id": "bad-deadline", "method": "sys.ping", "deadline_ms": "soon"}),
            Some("bad-deadline"),
        ),
    ];
    let mark = bed.rec.mark();
    let topics: Vec<String> = (0..cases.len())
        .map(|i| format!("{}-bad{i}", bed.reply_to))
        .collect();
    for ((req, _), topic) in cases.iter().zip(&topics) {
        let mut req = req.clone();
        req["reply_to"] = json!(topic);
        bed.send_raw(rpc::bytes(&req));
    }
    for ((req, id), topic) in cases.iter().zip(&topics) {
        let m = bed
            .rec
            .expect_since(mark, &format!("BAD_REQUEST for {req}"), TIMEOUT, |m| {
                m.topic == *topic
            });
        let reply = m.json_or_panic();
        expect_err(&reply, None, "BAD_REQUEST");
        assert_eq!(reply["id"], json!(id), "reply id for {req}: {reply}");
        assert_eq!(reply["error"]["retryable"], json!(false), "{reply}");
    }
    bed.assert_growth(
        &base,
        &[("bad_request", cases.len() as u64), ("executed", 0)],
    );
}

#[test]
fn oversized_payloads_are_refused_without_a_reconnect() {
    let bed = Bed::start("gw-big");
    let base = bed.counters();
    let mark = bed.rec.mark();

    // 200 KiB with a readable reply_to: answered BAD_REQUEST.
    let big = padded_request("big-1", &bed.reply_to, 200 * 1024);
    bed.send_raw(big);
    // One byte over the cap: refused the same way.
    bed.send_raw(padded_request("big-2", &bed.reply_to, 65537));
    // 200 KiB of junk, and 200 KiB of non-UTF-8: nowhere to answer, dropped.
    bed.send_raw(vec![b'x'; 200 * 1024]);
    bed.send_raw(vec![0xff; 200 * 1024]);

    for id in ["big-1", "big-2"] {
        let reply = bed.reply_since(mark, id);
        expect_err(&reply, Some(id), "BAD_REQUEST");
    }
    bed.barrier();
    bed.assert_growth(
        &base,
        &[("bad_request", 2), ("dropped", 2), ("executed", 1)],
    );

    // The connection survived: one CONNECT in the broker's log, one online presence, and
    // the agent still answers.
    let cid = bed.client_id();
    assert_eq!(
        bed.broker.connects_of(&cid),
        1,
        "the agent reconnected after an oversized payload\n{}",
        bed.broker.log()
    );
    let onlines = bed.rec.matching(|m| bed.is_presence(m, "online"));
    assert_eq!(onlines.len(), 1, "presence flapped\n{}", bed.rec.dump());
    assert!(
        bed.rec
            .matching(|m| bed.is_presence(m, "offline"))
            .is_empty(),
        "{}",
        bed.rec.dump()
    );
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
}

#[test]
fn a_payload_exactly_at_the_cap_is_served() {
    let bed = Bed::start("gw-atcap");
    let mark = bed.rec.mark();
    bed.send_raw(padded_request("at-cap", &bed.reply_to, 65536));
    let reply = bed.reply_since(mark, "at-cap");
    assert_eq!(expect_ok(&reply, "at-cap")["pong"], json!(true), "{reply}");
}

#[test]
fn unknown_method_is_answered_unknown_method() {
    let bed = Bed::start("gw-unknown");
    let base = bed.counters();
    let reply = bed.call_raw("um-1", "nope.nothing", json!({}));
    let err = expect_err(&reply, Some("um-1"), "UNKNOWN_METHOD");
    assert_eq!(err["retryable"], json!(false), "{reply}");
    assert!(
        err["message"].as_str().unwrap().contains("nope.nothing"),
        "the message should name the method: {reply}"
    );
    bed.assert_growth(
        &base,
        &[("received", 1), ("bad_request", 0), ("dropped", 0)],
    );
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
}

#[test]
fn a_repeated_id_is_answered_from_memory_not_executed_again() {
    let bed = Bed::start("gw-dup");
    let base = bed.counters();
    // A mutation (only mutations are remembered once finished; a read simply runs again).
    let first = bed.call_raw("dup-1", "sys.reconcile", json!({}));
    expect_ok(&first, "dup-1");
    let second = bed.call_raw("dup-1", "sys.reconcile", json!({}));
    // The remembered reply, and the counters say it was not run again.
    assert_eq!(first, second, "a repeat must get the remembered reply");
    bed.assert_growth(
        &base,
        &[("executed", 1), ("duplicates", 1), ("received", 2)],
    );
}

#[test]
fn a_repeat_arriving_while_the_first_runs_gets_the_same_reply() {
    let bed = Bed::start("gw-dup2");
    let base = bed.counters();
    let mark = bed.rec.mark();
    // A mutation: a finished read is not remembered (it simply runs again), so only a
    // mutation's repeat is answered from memory whichever way the race goes.
    // Queued together, the two copies reach the agent back to back: the second usually
    // arrives while the first is still being handled. Each names its own reply topic (a
    // console that restarted, or a second console), so each must be answered.
    let topics = [format!("{}-a", bed.reply_to), format!("{}-b", bed.reply_to)];
    for t in &topics {
        bed.send_raw(rpc::bytes(&request(
            "dup-bb",
            "sys.reconcile",
            json!({}),
            Some(t),
        )));
    }
    let a = bed.reply_on_since(&topics[0], mark, "dup-bb");
    let b = bed.reply_on_since(&topics[1], mark, "dup-bb");
    expect_ok(&a, "dup-bb");
    assert_eq!(a, b, "both copies must get the same reply");

    // And once more, well after the first finished.
    let mark = bed.rec.mark();
    bed.send_raw(rpc::bytes(&request(
        "dup-bb",
        "sys.reconcile",
        json!({}),
        Some(&topics[0]),
    )));
    assert_eq!(a, bed.reply_on_since(&topics[0], mark, "dup-bb"));
    bed.assert_growth(
        &base,
        &[("executed", 1), ("duplicates", 2), ("received", 3)],
    );
}

#[test]
fn a_repeat_on_the_same_reply_topic_sent_back_to_back_is_executed_once() {
    let bed = Bed::start("gw-dup3");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let req = rpc::bytes(&request(
        "dup-same",
        "sys.reconcile",
        json!({}),
        Some(&bed.reply_to),
    ));
    bed.send_raw(req.clone());
    bed.send_raw(req);
    let first = bed.reply_since(mark, "dup-same");
    expect_ok(&first, "dup-same");
    bed.barrier();
    // Every arrival is owed an answer: the repeat gets one whether it found the first
    // still running (attached) or finished (replayed). Never a second execution.
    let replies = bed.rec.matching_since(mark, |m| {
        m.topic == bed.reply_to && m.field("id").as_deref() == Some("dup-same")
    });
    assert_eq!(replies.len(), 2, "{}", bed.rec.dump());
    for r in &replies {
        assert_eq!(
            r.json_or_panic(),
            first,
            "every reply to one id is the same"
        );
    }
    bed.assert_growth(
        &base,
        &[("executed", 2), ("duplicates", 1), ("received", 3)],
    );
}

/// A key given twice anywhere in the envelope is refused, never executed: `BAD_REQUEST` when
/// the one `reply_to` can be read (with `id` when that was given once), dropped and counted
/// when `reply_to` itself is the key given twice.
#[test]
fn a_duplicate_key_gets_bad_request_or_is_dropped_never_executed() {
    let bed = Bed::start("gw-dupkey");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let to = |n: usize| format!("{}-dup{n}", bed.reply_to);
    // (payload, reply topic it names, id expected on the BAD_REQUEST)
    let answered: Vec<(String, String, Value)> = vec![
        (
            format!(
                r#"{{"v":1,"id":"dup-m","method":"sys.ping","method":"sys.reconcile","reply_to":"{}"}}"#,
                to(0)
            ),
            to(0),
            json!("dup-m"),
        ),
        (
            format!(
                r#"{{"v":1,"id":"dup-p","method":"sys.ping","params":{{"a":1,"a":2}},"reply_to":"{}"}}"#,
                to(1)
            ),
            to(1),
            json!("dup-p"),
        ),
        (
            format!(
                r#"{{"v":1,"id":"dup-i","id":"dup-j","method":"sys.ping","reply_to":"{}"}}"#,
                to(2)
            ),
            to(2),
            Value::Null,
        ),
    ];
    for (payload, _, _) in &answered {
        bed.send_raw(payload.as_bytes().to_vec());
    }
    let dropped = format!(
        r#"{{"v":1,"id":"dup-r","method":"sys.ping","reply_to":"{}","reply_to":"{}"}}"#,
        to(3),
        to(4)
    );
    bed.send_raw(dropped.into_bytes());
    for (payload, topic, id) in &answered {
        let m = bed
            .rec
            .expect_since(mark, &format!("BAD_REQUEST for {payload}"), TIMEOUT, |m| {
                m.topic == *topic
            });
        let reply = m.json_or_panic();
        expect_err(&reply, None, "BAD_REQUEST");
        assert_eq!(reply["id"], *id, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("duplicate key"), "{reply}");
    }
    bed.barrier();
    let stray: Vec<_> = bed
        .agent_publications_since(mark)
        .into_iter()
        .filter(|m| m.topic == to(3) || m.topic == to(4))
        .map(|m| m.summary())
        .collect();
    assert!(stray.is_empty(), "answered a doubled reply_to: {stray:?}");
    bed.assert_growth(
        &base,
        &[("bad_request", 3), ("dropped", 1), ("executed", 1)],
    );
}

/// Bytes that are not UTF-8, even inside a field the agent does not know, make the message
/// unreadable: dropped and counted, never executed, never answered, though its `reply_to`
/// is readable.
#[test]
fn non_utf8_anywhere_is_dropped_never_executed() {
    let bed = Bed::start("gw-utf8");
    let base = bed.counters();
    let mark = bed.rec.mark();
    let mut unknown_field = br#"{"v":1,"id":"u8-a","method":"sys.ping","zz":""#.to_vec();
    unknown_field.extend(b"\xff\xfe");
    unknown_field.extend(format!(r#"","reply_to":"{}"}}"#, bed.reply_to).as_bytes());
    let mut in_params = br#"{"v":1,"id":"u8-b","method":"sys.ping","params":{"x":""#.to_vec();
    in_params.extend(b"\xed\xa0\x80");
    in_params.extend(format!(r#""}},"reply_to":"{}"}}"#, bed.reply_to).as_bytes());
    let surrogate = format!(
        r#"{{"v":1,"id":"u8-c","method":"sys.ping","zz":"\udc00","reply_to":"{}"}}"#,
        bed.reply_to
    );
    let sent = [unknown_field, in_params, surrogate.into_bytes()];
    for p in &sent {
        bed.send_raw(p.clone());
    }
    bed.barrier();
    let answered: Vec<_> = bed
        .agent_publications_since(mark)
        .into_iter()
        .filter(|m| m.field("id").is_some_and(|id| id.starts_with("u8-")))
        .map(|m| m.summary())
        .collect();
    assert!(answered.is_empty(), "non-UTF-8 was answered: {answered:?}");
    bed.assert_growth(&base, &[("dropped", sent.len() as u64), ("executed", 1)]);
}

/// A `BAD_REQUEST` for an id that is not a valid id carries `id: null` and the id as sent in
/// `raw_id` (capped at 128 characters); a refusal with a valid id has no `raw_id`.
#[test]
fn a_bad_request_echoes_an_unreadable_id_as_raw_id() {
    let bed = Bed::start("gw-rawid");
    let cases: Vec<(Value, Option<String>)> = vec![
        (json!("bad id!"), Some("bad id!".into())),
        (json!(17), Some("17".into())),
        (json!("é".repeat(200)), Some("é".repeat(128))),
        (json!(null), None),
        (json!("good-id"), None),
    ];
    let mark = bed.rec.mark();
    let topics: Vec<String> = (0..cases.len())
        .map(|i| format!("{}-raw{i}", bed.reply_to))
        .collect();
    for ((id, _), topic) in cases.iter().zip(&topics) {
        // v 2: refused whatever the id, so every case is a BAD_REQUEST.
        let req = json!({"v": 2, "id": id, "method": "sys.ping", "reply_to": topic});
        bed.send_raw(rpc::bytes(&req));
    }
    for ((id, raw), topic) in cases.iter().zip(&topics) {
        let m = bed
            .rec
            .expect_since(mark, &format!("BAD_REQUEST for id {id}"), TIMEOUT, |m| {
                m.topic == *topic
            });
        let reply = m.json_or_panic();
        expect_err(&reply, None, "BAD_REQUEST");
        assert_eq!(
            reply.get("raw_id").cloned(),
            raw.clone().map(Value::from),
            "{reply}"
        );
        let want_id = if raw.is_none() && id.is_string() {
            id.clone()
        } else {
            Value::Null
        };
        assert_eq!(reply["id"], want_id, "{reply}");
    }
}
