//! Requests built by hand, as a console in any language would build them, and checks of the
//! replies against the wire contract.

use serde_json::{json, Map, Value};

/// A request envelope. `reply_to: None` leaves the field out (a one-way command).
pub fn request(id: &str, method: &str, params: Value, reply_to: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("v".into(), json!(1));
    m.insert("id".into(), json!(id));
    m.insert("method".into(), json!(method));
    m.insert("params".into(), params);
    if let Some(r) = reply_to {
        m.insert("reply_to".into(), json!(r));
    }
    Value::Object(m)
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON value serializes")
}

/// A valid request padded (through an ignored extra field) to exactly `len` bytes, to probe
/// the payload cap from both sides.
pub fn padded_request(id: &str, reply_to: &str, len: usize) -> Vec<u8> {
    let mut v = request(id, "sys.ping", json!({}), Some(reply_to));
    v["pad"] = json!("");
    let base = bytes(&v).len();
    assert!(
        len >= base,
        "cannot pad a {base}-byte request down to {len} bytes"
    );
    v["pad"] = json!("x".repeat(len - base));
    let b = bytes(&v);
    assert_eq!(b.len(), len);
    b
}

/// Checks the common reply shape and returns `result` of a successful reply; panics with the
/// whole reply otherwise.
pub fn expect_ok(reply: &Value, id: &str) -> Value {
    check_envelope(reply, id);
    assert_eq!(
        reply["ok"],
        json!(true),
        "expected ok:true for {id}: {reply}"
    );
    assert!(
        reply.get("error").is_none(),
        "ok reply with an error field: {reply}"
    );
    reply
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("ok reply without result: {reply}"))
}

/// Checks the common reply shape and that it is an error with `code`; returns the error
/// object.
pub fn expect_err(reply: &Value, id: Option<&str>, code: &str) -> Value {
    match id {
        Some(id) => check_envelope(reply, id),
        None => assert_eq!(reply["v"], json!(1), "reply without v:1: {reply}"),
    }
    assert_eq!(
        reply["ok"],
        json!(false),
        "expected ok:false ({code}): {reply}"
    );
    let err = reply
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("error reply without error object: {reply}"));
    assert_eq!(err["code"], json!(code), "error code: {reply}");
    assert!(
        err["message"].is_string(),
        "error.message must be a string: {reply}"
    );
    assert!(
        err["retryable"].is_boolean(),
        "error.retryable must be a bool: {reply}"
    );
    // The typed decoder of the protocol crate must accept it too: consoles use it.
    csg_protocol::Reply::from_json(&bytes(reply))
        .unwrap_or_else(|e| panic!("csg-protocol cannot decode {reply}: {e}"));
    err
}

fn check_envelope(reply: &Value, id: &str) {
    assert_eq!(reply["v"], json!(1), "reply without v:1: {reply}");
    assert_eq!(reply["id"], json!(id), "reply id: {reply}");
}

/// The fields of a heartbeat body (also the result of `sys.status`), checked for presence
/// and type.
pub fn check_heartbeat_body(hb: &Value, instance: &str, group: &str) {
    assert_eq!(hb["v"], json!(1), "{hb}");
    assert_eq!(hb["type"], json!("heartbeat"), "{hb}");
    assert_eq!(hb["instance_id"], json!(instance), "{hb}");
    assert_eq!(hb["group_id"], json!(group), "{hb}");
    assert_eq!(hb["agent_version"], json!(crate::WORKSPACE_VERSION), "{hb}");
    for k in ["seq", "ts_ms", "uptime_s"] {
        assert!(hb[k].is_u64(), "{k} must be an unsigned integer: {hb}");
    }
    let ts = hb["ts_ms"].as_u64().unwrap();
    let now = crate::now_ms();
    assert!(
        ts.abs_diff(now) < 60_000,
        "ts_ms {ts} is far from now {now}: {hb}"
    );
    for k in ["cpu_pct", "load1", "mem_total", "mem_used"] {
        assert!(
            hb["system"][k].is_number(),
            "system.{k} must be a number: {hb}"
        );
    }
    assert!(hb["disks"].is_array(), "disks must be an array: {hb}");
    assert!(
        hb["services"].is_object(),
        "services must be an object: {hb}"
    );
    for k in [
        "received",
        "executed",
        "duplicates",
        "expired",
        "busy",
        "bad_request",
        "dropped",
        "reply_lost",
    ] {
        assert!(
            hb["counters"][k].is_u64(),
            "counters.{k} must be an unsigned integer: {hb}"
        );
    }
    // And the protocol crate's type must read it.
    serde_json::from_value::<csg_protocol::Heartbeat>(hb.clone())
        .unwrap_or_else(|e| panic!("csg-protocol cannot decode the heartbeat: {e}\n{hb}"));
}

/// Checks a presence body; returns its state.
pub fn check_presence(p: &Value, instance: &str) -> String {
    assert_eq!(p["v"], json!(1), "{p}");
    assert_eq!(p["type"], json!("presence"), "{p}");
    assert_eq!(p["instance_id"], json!(instance), "{p}");
    assert_eq!(p["agent_version"], json!(crate::WORKSPACE_VERSION), "{p}");
    assert!(p["ts_ms"].is_u64(), "ts_ms: {p}");
    let state = p["state"].as_str().unwrap_or_default().to_string();
    assert!(state == "online" || state == "offline", "state: {p}");
    serde_json::from_value::<csg_protocol::Presence>(p.clone())
        .unwrap_or_else(|e| panic!("csg-protocol cannot decode the presence: {e}\n{p}"));
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_requests_hit_the_exact_size_and_still_decode() {
        for len in [200, 65536, 65537] {
            let b = padded_request("p-1", "csg-up/c", len);
            assert_eq!(b.len(), len);
            let d = csg_protocol::decode_request(&b, 1 << 20).unwrap();
            assert_eq!(d.id.as_str(), "p-1");
        }
    }

    #[test]
    fn one_way_requests_have_no_reply_to() {
        let r = request("a", "sys.ping", json!({}), None);
        assert!(r.get("reply_to").is_none());
        let d = csg_protocol::decode_request(&bytes(&r), 1024).unwrap();
        assert_eq!(d.reply_to, csg_protocol::ReplyTo::NoReply);
    }

    #[test]
    fn reply_checks_accept_the_protocol_crates_own_replies() {
        let id = csg_protocol::RequestId::new("r1").unwrap();
        let ok = csg_protocol::Reply::ok(id.clone(), json!({"pong": true}));
        let v: Value = serde_json::from_slice(&ok.to_json()).unwrap();
        assert_eq!(expect_ok(&v, "r1")["pong"], json!(true));
        let err = csg_protocol::Reply::err(
            Some(id),
            csg_protocol::RpcError::new(csg_protocol::ErrorCode::Expired, "late"),
        );
        let v: Value = serde_json::from_slice(&err.to_json()).unwrap();
        expect_err(&v, Some("r1"), "EXPIRED");
    }
}
