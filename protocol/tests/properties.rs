//! Property tier for everything that parses hostile input: the envelope decoder, identities,
//! topics, broker URLs, the shared validators and every params validator of `nfs`, `smb` and
//! `iscsi`.
//!
//! Each property states one of three things: the code never panics on any input; what it
//! accepts is exactly what an independent reference predicate (written here, not taken from
//! the crate) accepts, or at least never anything dangerous; and what it accepts re-serializes
//! and parses back to the same value. Case counts are set per property so the whole file runs
//! in a few seconds; the fuzz targets under `fuzz/` run the same entry points for as long as
//! one likes (see `docs/fuzzing.md`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

use csg_protocol::envelope::DecodeErrorKind;
use csg_protocol::methods::{iscsi, nfs, smb};
use csg_protocol::validate::{check_path, check_text, Cidr};
use csg_protocol::{
    decode_request, AgentTopics, BrokerUrl, ClientId, GroupId, InstanceId, MethodName, ReplyTo,
    Request, RequestId, Scheme, StatusTopic, TopicMode, TopicParents,
};

mod common;
use common::alloc_meter;

// ---------------------------------------------------------------------------------------------
// Reference predicates, written from the documented rules (not from the implementation).

fn id_rule(s: &str, limit: usize) -> bool {
    !s.is_empty()
        && s.len() <= limit
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fn method_rule(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b))
}

/// `group_id@@@instance_id` within 64 characters; each half 1..=60 of the id charset.
const HALF_LIMIT: usize = 60;

fn path_rule(p: &str) -> bool {
    if p.len() > 1023 || !p.starts_with('/') || p == "/" {
        return false;
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return false;
    }
    p[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('-'))
}

fn text_rule(s: &str, max: usize) -> bool {
    s.chars().count() <= max
        && !s
            .chars()
            .any(|c| c.is_control() || c == '%' || c == '"' || c == '\\')
}

fn parent_rule(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        })
}

fn reply_to_rule(up: &str, max_len: usize, topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix(&format!("{up}/")) else {
        return false;
    };
    topic.chars().count() <= max_len
        && !rest.is_empty()
        && !rest.contains(['+', '#', '\0'])
        && rest.split('/').all(|l| !l.is_empty())
}

/// Characters that mean something to a shell, an exports line, smb.conf, a Ganesha block, a
/// tgtadm/targetcli argument vector or an MQTT topic filter.
const DANGEROUS: &[&str] = &[
    "\n", "\r", "\0", "\t", "\u{7f}", "\u{1b}", "\u{85}", "%", "%u", "\"", "'", "\\", " ", "(",
    ")", ",", ";", "#", "$", "`", "|", "&", "<", ">", "[", "]", "{", "}", "=", "*", "?", "!",
    "\u{a0}", "\u{202e}", "\u{2028}", "é",
];

/// Harmless pieces, so that generated strings are often close to valid.
const PLAIN: &[&str] = &[
    "a",
    "b",
    "z",
    "x1",
    "0",
    "9",
    "-",
    "_",
    ".",
    "..",
    ":",
    "/",
    "@",
    "@@@",
    "+",
    "A",
    "vol",
    "srv",
    "csg",
    "iqn.2026-11.com.example",
    "10.0.0.0",
    "/8",
    "::1",
    "noreply",
];

// ---------------------------------------------------------------------------------------------
// Strategies

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// Any Unicode string, controls and all.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Strings made of plain and dangerous pieces: mostly near the rules, often just across.
fn soup(max: usize) -> impl Strategy<Value = String> {
    vec(
        prop_oneof![3 => select(PLAIN), 1 => select(DANGEROUS)],
        0..max,
    )
    .prop_map(|p| p.concat())
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => soup(max),
        8 => any_text(max),
        4 => "[A-Za-z0-9_.:/@-]{0,80}",
        // Now and then a big one, past the payload cap when it is alone.
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        text(24).prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(text(12), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON without floats, whose text form round-trips bit for bit.
fn json_exact() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any_text(24).prop_map(Value::from),
    ]
    .prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any_text(8), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    btree_map(text(12), json_value(), 0..8).prop_map(|m| m.into_iter().collect())
}

fn valid_id(limit: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{limit}}}")).unwrap()
}

fn valid_method() -> impl Strategy<Value = String> {
    "[a-z0-9_.]{1,64}"
}

fn id_like(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => valid_id(limit),
        1 => valid_id(limit + 8),
        2 => text(limit + 4),
        1 => (valid_id(limit), select(DANGEROUS), any::<Index>())
            .prop_map(|(s, d, i)| insert(&s, d, i)),
    ]
}

/// Inserts `piece` into `s` at the character boundary `at` picks.
fn insert(s: &str, piece: &str, at: Index) -> String {
    let mut i = at.index(s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    format!("{}{piece}{}", &s[..i], &s[i..])
}

fn valid_parent() -> impl Strategy<Value = String> {
    vec("[A-Za-z0-9_.:-]{1,8}", 1..3).prop_map(|l| l.join("/"))
}

fn valid_parents() -> impl Strategy<Value = TopicParents> {
    (valid_parent(), valid_parent(), valid_parent())
        .prop_filter("distinct", |(d, u, s)| d != u && d != s && u != s)
        .prop_map(|(down, up, status)| TopicParents { down, up, status })
}

fn mode() -> impl Strategy<Value = TopicMode> {
    prop_oneof![
        Just(TopicMode::Standard),
        any::<bool>().prop_map(|subscribe| TopicMode::P2p { subscribe }),
    ]
}

fn client_id() -> impl Strategy<Value = ClientId> {
    (valid_id(HALF_LIMIT), valid_id(HALF_LIMIT)).prop_filter_map("fits 64", |(g, i)| {
        ClientId::new(GroupId::new(g).ok()?, InstanceId::new(i).ok()?).ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Envelope

const MAX: usize = csg_protocol::DEFAULT_MAX_PAYLOAD;

/// Every rule a decoded request (or a decode error) must satisfy, whatever the input was.
fn check_decoded(payload: &[u8], max: usize, r: &Result<Request, csg_protocol::DecodeError>) {
    match r {
        Ok(req) => {
            assert!(payload.len() <= max);
            assert!(id_rule(req.id.as_str(), 64), "{:?}", req.id);
            assert!(method_rule(req.method.as_str()), "{:?}", req.method);
            if let ReplyTo::Topic(t) = &req.reply_to {
                assert_ne!(t, csg_protocol::envelope::NOREPLY);
            }
            // What was accepted encodes to a request that decodes to the same envelope.
            let again = decode_request(&req.to_json(), usize::MAX).expect("re-encoded request");
            assert_eq!(again.id, req.id);
            assert_eq!(again.method, req.method);
            assert_eq!(again.reply_to, req.reply_to);
            assert_eq!(again.deadline_ms, req.deadline_ms);
            assert_eq!(again.params.len(), req.params.len());
        }
        Err(e) => {
            assert_eq!(e.kind == DecodeErrorKind::Oversize, payload.len() > max);
            // Input is quoted only as a short excerpt (at most 80 characters of an id or a
            // method, each up to 10 bytes once escaped): a message stays small whatever came.
            assert!(e.message.len() <= 1200, "{}", e.message.len());
            if let Some(id) = &e.id {
                assert!(id_rule(id.as_str(), 64));
            }
            if e.kind == DecodeErrorKind::Malformed {
                assert!(e.id.is_none() && e.reply_to.is_none());
            }
            if let Some(ReplyTo::Topic(t)) = &e.reply_to {
                assert_ne!(t, csg_protocol::envelope::NOREPLY);
            }
        }
    }
}

/// An envelope field as sent: absent, or any JSON value (weighted towards the valid ones).
fn field(valid: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        6 => valid.prop_map(Some),
        2 => json_leaf().prop_map(Some),
        1 => json_value().prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Envelope {
    v: Option<Value>,
    id: Option<Value>,
    method: Option<Value>,
    params: Option<Value>,
    reply_to: Option<Value>,
    deadline_ms: Option<Value>,
    extra: Map<String, Value>,
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let fields = ["v", "id", "method", "params", "reply_to", "deadline_ms"];
    (
        field(prop_oneof![Just(json!(1)), Just(json!(2)), Just(json!(1.0))].boxed()),
        field(id_like(64).prop_map(Value::from).boxed()),
        field(
            prop_oneof![valid_method(), text(70)]
                .prop_map(Value::from)
                .boxed(),
        ),
        field(json_map().prop_map(Value::Object).boxed()),
        field(
            prop_oneof![Just("noreply".to_string()), text(70)]
                .prop_map(Value::from)
                .boxed(),
        ),
        field(any::<u64>().prop_map(Value::from).boxed()),
        btree_map(text(12), json_value(), 0..3),
    )
        .prop_map(
            move |(v, id, method, params, reply_to, deadline_ms, extra)| Envelope {
                v,
                id,
                method,
                params,
                reply_to,
                deadline_ms,
                extra: extra
                    .into_iter()
                    .filter(|(k, _)| !fields.contains(&k.as_str()))
                    .collect(),
            },
        )
}

impl Envelope {
    fn to_bytes(&self) -> Vec<u8> {
        let mut m = self.extra.clone();
        for (k, v) in [
            ("v", &self.v),
            ("id", &self.id),
            ("method", &self.method),
            ("params", &self.params),
            ("reply_to", &self.reply_to),
            ("deadline_ms", &self.deadline_ms),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone());
            }
        }
        serde_json::to_vec(&Value::Object(m)).unwrap()
    }

    /// What the decoder must make of it: the reference model of the envelope rules.
    fn expected(&self) -> Result<Request, (Option<String>, Option<ReplyTo>)> {
        let present = |v: &Option<Value>| v.clone().filter(|v| !v.is_null());
        let reply_to = match present(&self.reply_to) {
            None => Some(ReplyTo::NoReply),
            Some(Value::String(s)) if s == "noreply" => Some(ReplyTo::NoReply),
            Some(Value::String(s)) => Some(ReplyTo::Topic(s)),
            Some(_) => None,
        };
        let id = match present(&self.id) {
            Some(Value::String(s)) if id_rule(&s, 64) => Some(s),
            _ => None,
        };
        let method = match present(&self.method) {
            Some(Value::String(s)) if method_rule(&s) => Some(s),
            _ => None,
        };
        let v_ok = matches!(present(&self.v), Some(Value::Number(n)) if n.is_u64() && n.as_u64() == Some(1));
        let params = match present(&self.params) {
            None => Some(Map::new()),
            // Parsed from text, as the decoder sees it (floats may move by one ulp).
            Some(Value::Object(m)) => {
                Some(serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap())
            }
            Some(_) => None,
        };
        let deadline = match present(&self.deadline_ms) {
            None => Some(None),
            Some(Value::Number(n)) if n.is_u64() => Some(n.as_u64()),
            Some(_) => None,
        };
        match (v_ok, &id, method, params, &reply_to, deadline) {
            (true, Some(id), Some(method), Some(params), Some(reply_to), Some(deadline_ms)) => {
                Ok(Request {
                    id: RequestId::new(id.as_str()).unwrap(),
                    method: MethodName::new(method).unwrap(),
                    params,
                    reply_to: reply_to.clone(),
                    deadline_ms,
                })
            }
            _ => Err((id, reply_to)),
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decode_never_panics_on_bytes(
        payload in prop_oneof![
            vec(any::<u8>(), 0..256),
            soup(64).prop_map(String::into_bytes),
        ],
        max in prop_oneof![Just(MAX), 0usize..128],
    ) {
        let r = decode_request(&payload, max);
        check_decoded(&payload, max, &r);
    }

    #[test]
    fn decode_never_panics_on_json(v in json_value()) {
        let payload = serde_json::to_vec(&v).unwrap();
        let r = decode_request(&payload, MAX);
        check_decoded(&payload, MAX, &r);
        // Not an object (an array included: serde's sequence form of a struct): never a
        // request.
        if !v.is_object() && payload.len() <= MAX {
            prop_assert_eq!(r.unwrap_err().kind, DecodeErrorKind::Malformed);
        }
    }

    #[test]
    fn decode_follows_the_envelope_rules(env in envelope()) {
        let payload = env.to_bytes();
        let r = decode_request(&payload, usize::MAX);
        check_decoded(&payload, usize::MAX, &r);
        match (r, env.expected()) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
            (Err(e), Err((id, reply_to))) => {
                prop_assert_eq!(e.kind, DecodeErrorKind::Invalid);
                prop_assert_eq!(e.id.map(|i| i.as_str().to_string()), id);
                prop_assert_eq!(e.reply_to, reply_to);
            }
            (got, want) => prop_assert!(false, "decoded {:?}, expected {:?}", got, want),
        }
    }

    #[test]
    fn valid_requests_round_trip(
        id in valid_id(64),
        method in valid_method(),
        params in btree_map(any_text(8), json_exact(), 0..6),
        reply_to in proptest::option::of(any_text(80).prop_filter("not noreply", |s| s != "noreply")),
        deadline_ms in proptest::option::of(any::<u64>()),
    ) {
        let mut r = Request::new(
            RequestId::new(id).unwrap(),
            MethodName::new(method).unwrap(),
            params.into_iter().collect(),
        );
        r.reply_to = reply_to.map_or(ReplyTo::NoReply, ReplyTo::Topic);
        r.deadline_ms = deadline_ms;
        let bytes = r.to_json();
        prop_assert_eq!(decode_request(&bytes, bytes.len()).unwrap(), r.clone());
        // One byte less of room and it is refused as oversized, keeping its address.
        let e = decode_request(&bytes, bytes.len() - 1).unwrap_err();
        prop_assert_eq!(e.kind, DecodeErrorKind::Oversize);
        prop_assert_eq!(e.id.as_ref(), Some(&r.id));
        prop_assert_eq!(e.reply_to, Some(r.reply_to));
    }

    /// Within the cap, decoding holds at most a bounded multiple of the payload in memory (the
    /// parsed JSON tree), and error messages stay short whatever was sent.
    #[test]
    fn decode_memory_is_linear_in_the_payload(v in json_value()) {
        let payload = serde_json::to_vec(&json!({"v": 1, "id": "a", "method": "m", "params": {"p": v}})).unwrap();
        let (r, peak) = alloc_meter::peak(|| decode_request(&payload, MAX));
        prop_assert!(peak <= 64 * payload.len() + 16 * 1024, "{} bytes for a {}-byte payload", peak, payload.len());
        check_decoded(&payload, MAX, &r);
    }
}

/// A JSON object's text from its entries' texts, in order (duplicates kept, as sent).
fn object_text(entries: &[(String, String)]) -> String {
    let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// A key's JSON text, its first character written as a `\uXXXX` escape when asked (and when
/// it has a four-digit one): the same key to any JSON reader.
fn key_text(key: &str, escaped: bool) -> String {
    let plain = serde_json::to_string(key).unwrap();
    match key.chars().next() {
        Some(c) if escaped && u32::from(c) <= 0xFFFF => {
            let rest = serde_json::to_string(&key[c.len_utf8()..]).unwrap();
            format!("\"\\u{:04x}{}", u32::from(c), &rest[1..])
        }
        _ => plain,
    }
}

/// Sequences that are never UTF-8, and the bytes no UTF-8 text holds anywhere.
fn not_utf8() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(vec![
            vec![0x80],
            vec![0xbf, 0x80],
            vec![0xc3],
            vec![0xe2, 0x82],
            vec![0xed, 0xa0, 0x80],
            vec![0xf0, 0x90, 0x80],
            vec![0xf4, 0x90, 0x80, 0x80],
        ]),
        select(vec![0xc0u8, 0xc1, 0xf5, 0xf8, 0xfe, 0xff]).prop_map(|b| vec![b]),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Whichever object names a key twice (the envelope or `params`, the second value equal
    /// or not, the key spelled the same or escaped), the request is refused as invalid, never
    /// executed; it keeps its address unless the key given twice is the address itself.
    #[test]
    fn a_duplicate_key_is_never_accepted(
        id in valid_id(64),
        method in valid_method(),
        params in btree_map(any_text(8), json_exact(), 1..5),
        reply_to in prop_oneof![Just("csg-up/c1".to_string()), any_text(40)]
            .prop_filter("a topic", |s| s != "noreply"),
        in_params in any::<bool>(),
        which in any::<Index>(),
        at in any::<Index>(),
        same in any::<bool>(),
        escaped in any::<bool>(),
        other in json_leaf(),
    ) {
        let text = |v: &Value| serde_json::to_string(v).unwrap();
        let mut params: Vec<(String, String, String)> = params
            .into_iter()
            .map(|(k, v)| (k.clone(), serde_json::to_string(&k).unwrap(), text(&v)))
            .collect();
        let top_of = |params: &[(String, String, String)]| -> Vec<(String, String, String)> {
            let p: Vec<_> = params.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect();
            [
                ("v", json!(1).to_string()),
                ("id", text(&json!(id))),
                ("method", text(&json!(method))),
                ("params", object_text(&p)),
                ("reply_to", text(&json!(reply_to))),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), format!("\"{k}\""), v))
            .collect()
        };
        let mut dup_at_top = None;
        if in_params {
            let (key, _, value) = which.get(&params).clone();
            let value = if same { value } else { text(&other) };
            let pos = at.index(params.len() + 1);
            params.insert(pos, (key.clone(), key_text(&key, escaped), value));
        }
        let mut top = top_of(&params);
        if !in_params {
            let (key, _, value) = which.get(&top).clone();
            let value = if same { value } else { text(&other) };
            let pos = at.index(top.len() + 1);
            top.insert(pos, (key.clone(), key_text(&key, escaped), value));
            dup_at_top = Some(key);
        }
        let entries: Vec<_> = top.into_iter().map(|(_, k, v)| (k, v)).collect();
        let payload = object_text(&entries);
        let r = decode_request(payload.as_bytes(), usize::MAX);
        check_decoded(payload.as_bytes(), usize::MAX, &r);
        let e = r.expect_err("a duplicate key was accepted");
        prop_assert_eq!(e.kind, DecodeErrorKind::Invalid);
        prop_assert!(e.message.contains("duplicate key"), "{}", e.message);
        let want_id = (dup_at_top.as_deref() != Some("id")).then_some(id.as_str());
        prop_assert_eq!(e.id.as_ref().map(RequestId::as_str), want_id);
        let want_reply_to = (dup_at_top.as_deref() != Some("reply_to"))
            .then(|| ReplyTo::Topic(reply_to.clone()));
        prop_assert_eq!(e.reply_to, want_reply_to);
    }

    /// Bytes that are not UTF-8, anywhere in a payload (inside an unknown field, or at any
    /// place), make it malformed with no address: never executed, never answered. Over the
    /// cap it is oversized, with no address either.
    #[test]
    fn non_utf8_is_never_accepted(
        id in valid_id(64),
        method in valid_method(),
        params in btree_map(any_text(8), json_exact(), 0..4),
        bad in not_utf8(),
        anywhere in any::<bool>(),
        at in any::<Index>(),
    ) {
        let mut r = Request::new(
            RequestId::new(id).unwrap(),
            MethodName::new(method).unwrap(),
            params.into_iter().collect(),
        );
        r.reply_to = ReplyTo::Topic("csg-up/c1".into());
        let good = r.to_json();
        let payload = if anywhere {
            // Only the bytes no UTF-8 text holds can go anywhere and stay invalid.
            let byte = bad.iter().copied().find(|b| [0xc0, 0xc1].contains(b) || *b >= 0xf5);
            let byte = byte.unwrap_or(0xff);
            let mut p = good.clone();
            p.insert(at.index(p.len() + 1), byte);
            p
        } else {
            let mut p = b"{\"zz_unknown\":\"".to_vec();
            p.extend(&bad);
            p.extend(b"\",");
            p.extend(&good[1..]);
            p
        };
        prop_assert!(std::str::from_utf8(&payload).is_err());
        for max in [usize::MAX, payload.len() - 1] {
            let r = decode_request(&payload, max);
            check_decoded(&payload, max, &r);
            let e = r.expect_err("non-UTF-8 was accepted");
            prop_assert!(e.id.is_none() && e.raw_id.is_none() && e.reply_to.is_none());
            if max == usize::MAX {
                prop_assert_eq!(e.kind, DecodeErrorKind::Malformed);
            }
        }
    }
}

/// Arrays and objects nested far deeper than any request needs never exhaust the stack: every
/// value, an unknown field's included, is walked (for duplicate keys) within the JSON parser's
/// depth limit and refused past it (`Malformed`), and over the cap only the address is looked
/// for. The decoder runs on a thread with half the stack of a tokio worker (2 MiB), in a debug
/// build.
#[test]
fn deep_nesting_is_refused_without_blowing_the_stack() {
    use DecodeErrorKind::*;
    const N: usize = 100_000;
    let arrays = format!("{}{}", "[".repeat(N), "]".repeat(N));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(N), "}".repeat(N));
    let unclosed = "[".repeat(N);
    // (payload, cap, expected outcome: None for Ok)
    let mut cases: Vec<(String, usize, Option<DecodeErrorKind>)> = vec![
        (arrays.clone(), 1 << 20, Some(Malformed)),
        (objects.clone(), 1 << 20, Some(Malformed)),
        (unclosed.clone(), 1 << 20, Some(Malformed)),
    ];
    for deep in [&arrays, &objects, &unclosed] {
        for field in ["params", "id", "reply_to", "zz_unknown"] {
            let p =
                format!(r#"{{"v":1,"id":"a","method":"m","reply_to":"up/c","{field}":{deep}}}"#);
            cases.push((p.clone(), 1 << 20, Some(Malformed)));
            // Over the cap: the address-only parse of an oversized payload.
            cases.push((p, 1024, Some(Oversize)));
        }
    }
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            for (payload, max, want) in cases {
                let r = decode_request(payload.as_bytes(), max);
                assert_eq!(r.err().map(|e| e.kind), want, "{}", &payload[..80]);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The size cap is checked before anything is parsed as a request: a payload one byte over
/// is refused as oversized whatever it holds, and junk over the cap costs no allocation
/// beyond the error itself.
#[test]
fn size_cap_path() {
    let ok = br#"{"v":1,"id":"a","method":"sys.ping"}"#;
    assert!(decode_request(ok, ok.len()).is_ok());
    let e = decode_request(ok, ok.len() - 1).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::Oversize);
    assert_eq!(e.id.unwrap().as_str(), "a");

    let junk = vec![b'x'; 8 << 20];
    let (e, peak) = alloc_meter::peak(|| decode_request(&junk, MAX).unwrap_err());
    assert_eq!(e.kind, DecodeErrorKind::Oversize);
    assert!(e.id.is_none() && e.reply_to.is_none());
    assert!(peak < 4096, "{peak} bytes to refuse junk");

    // A huge id or padding in an oversized request is skipped or refused, never echoed.
    let huge_id = format!(r#"{{"v":1,"id":"{}","method":"m"}}"#, "i".repeat(1 << 20));
    let e = decode_request(huge_id.as_bytes(), MAX).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::Oversize);
    assert!(e.id.is_none());
    assert!(e.to_string().len() < 200);
    let padded = format!(
        r#"{{"id":"big","reply_to":"up/c","pad":[{}0]}}"#,
        "0,".repeat(1 << 19)
    );
    let (e, peak) = alloc_meter::peak(|| decode_request(padded.as_bytes(), MAX).unwrap_err());
    assert_eq!(e.kind, DecodeErrorKind::Oversize);
    assert_eq!(e.id.unwrap().as_str(), "big");
    assert!(peak < 4096, "{peak} bytes to skip padding");
}

// ---------------------------------------------------------------------------------------------
// Identities and topics

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn identities_accept_exactly_their_rule(s in id_like(70)) {
        let cases: [(Result<String, _>, usize); 3] = [
            (GroupId::new(s.as_str()).map(|v| v.to_string()), HALF_LIMIT),
            (InstanceId::new(s.as_str()).map(|v| v.to_string()), HALF_LIMIT),
            (RequestId::new(s.as_str()).map(|v| v.to_string()), 64),
        ];
        for (r, limit) in cases {
            prop_assert_eq!(r.is_ok(), id_rule(&s, limit), "{:?} limit {}", s, limit);
            match r {
                Ok(v) => prop_assert_eq!(&v, &s),
                // Hostile values are cut in messages: a reply or log line stays small.
                Err(e) => prop_assert!(e.to_string().len() < 1100),
            }
        }
        let m = MethodName::new(s.as_str());
        prop_assert_eq!(m.is_ok(), method_rule(&s));
        if let Ok(m) = m {
            prop_assert_eq!(m.as_str(), s.as_str());
            prop_assert!(m.family().len() <= s.len());
        }
        // The serde path applies the same rule.
        let de = serde_json::from_value::<RequestId>(Value::from(s.as_str()));
        prop_assert_eq!(de.is_ok(), id_rule(&s, 64));
    }

    #[test]
    fn client_ids_join_within_64_and_parse_back(g in valid_id(HALF_LIMIT), i in valid_id(HALF_LIMIT)) {
        let c = ClientId::new(GroupId::new(g.as_str()).unwrap(), InstanceId::new(i.as_str()).unwrap());
        prop_assert_eq!(c.is_ok(), g.len() + 3 + i.len() <= 64);
        if let Ok(c) = c {
            prop_assert_eq!(c.as_str(), format!("{g}@@@{i}"));
            prop_assert_eq!(ClientId::parse(c.as_str()).unwrap(), c);
        }
    }

    #[test]
    fn client_id_parse_follows_the_rule(s in prop_oneof![
        (id_like(40), id_like(40)).prop_map(|(g, i)| format!("{g}@@@{i}")),
        text(80),
    ]) {
        let want = s.split_once("@@@").is_some_and(|(g, i)| {
            id_rule(g, HALF_LIMIT) && id_rule(i, HALF_LIMIT) && s.len() <= 64
        });
        let r = ClientId::parse(&s);
        prop_assert_eq!(r.is_ok(), want, "{:?}", s);
        if let Ok(c) = r {
            prop_assert_eq!(c.as_str(), s.as_str());
        }
    }

    #[test]
    fn parents_are_checked(down in text(20), up in valid_parent(), status in soup(6)) {
        let p = TopicParents { down: down.clone(), up: up.clone(), status: status.clone() };
        let want = parent_rule(&down) && parent_rule(&up) && parent_rule(&status)
            && down != up && down != status && up != status;
        prop_assert_eq!(p.validate().is_empty(), want, "{:?}", p);
    }

    /// Building an agent's topics either fits every topic within the limit or says which
    /// does not: no topic is ever longer than the limit silently.
    #[test]
    fn agent_topics_never_exceed_the_limit(
        parents in prop_oneof![
            4 => valid_parents(),
            1 => (text(12), text(12), text(12)).prop_map(|(down, up, status)| TopicParents { down, up, status }),
        ],
        mode in mode(),
        client in client_id(),
        max_len in 8usize..140,
    ) {
        let r = AgentTopics::new(&parents, mode, &client, max_len);
        let fits = |t: &str| t.chars().count() <= max_len;
        let commands = parents.command_topic(mode, &client);
        let heartbeat = parents.heartbeat_topic(client.instance());
        let presence = parents.presence_topic(client.instance());
        let want = parents.validate().is_empty()
            && fits(&commands) && fits(&heartbeat) && fits(&presence)
            && fits(&format!("{}/x", parents.up));
        prop_assert_eq!(r.is_ok(), want);
        if let Ok(t) = r {
            for topic in [&t.commands, &t.heartbeat, &t.presence] {
                prop_assert!(fits(topic));
                prop_assert!(!topic.contains(['+', '#', '\0']));
            }
            prop_assert_eq!(&t.commands, &commands);
            prop_assert_eq!(t.subscription.is_some(), mode != TopicMode::P2p { subscribe: false });
            prop_assert_eq!(t.retain_and_will, mode == TopicMode::Standard);
        } else if let Err(errs) = r {
            prop_assert!(!errs.is_empty());
        }
    }

    #[test]
    fn reply_to_is_confined_to_the_up_parent(
        parents in valid_parents(),
        client in client_id(),
        rest in prop_oneof![
            vec(prop_oneof![4 => "[A-Za-z0-9@_.:-]{1,6}", 1 => select(&["+", "#", "\0", "", "é", " "][..]).prop_map(String::from)], 0..5)
                .prop_map(|l| l.join("/")),
            text(30),
        ],
        prefix in prop_oneof![
            6 => Just(None),
            1 => text(10).prop_map(Some),
        ],
        max_len in 16usize..128,
    ) {
        let Ok(t) = AgentTopics::new(&parents, TopicMode::Standard, &client, max_len) else {
            return Ok(());
        };
        let topic = match &prefix {
            None => format!("{}/{rest}", parents.up),
            Some(p) => format!("{p}{rest}"),
        };
        let r = t.check_reply_to(&topic);
        prop_assert_eq!(r.is_ok(), reply_to_rule(&parents.up, max_len, &topic), "{:?}", topic);
        if let Err(e) = r {
            prop_assert!(e.to_string().len() < 2600);
        }
        // The other parents are never a reply destination.
        for other in [&parents.down, &parents.status] {
            if !other.starts_with(&format!("{}/", parents.up)) {
                let elsewhere = format!("{other}/{rest}");
                prop_assert!(t.check_reply_to(&elsewhere).is_err());
            }
        }
    }

    #[test]
    fn status_topics_round_trip(parents in valid_parents(), i in valid_id(HALF_LIMIT), junk in text(40)) {
        let inst = InstanceId::new(i).unwrap();
        prop_assert_eq!(
            StatusTopic::parse(&parents, &parents.heartbeat_topic(&inst)),
            Some(StatusTopic::Heartbeat(inst.clone()))
        );
        prop_assert_eq!(
            StatusTopic::parse(&parents, &parents.presence_topic(&inst)),
            Some(StatusTopic::Presence(inst.clone()))
        );
        // Whatever parses is exactly the topic its value builds.
        for topic in [junk.clone(), format!("{}/{junk}", parents.status)] {
            match StatusTopic::parse(&parents, &topic) {
                Some(StatusTopic::Heartbeat(i)) => prop_assert_eq!(parents.heartbeat_topic(&i), topic),
                Some(StatusTopic::Presence(i)) => prop_assert_eq!(parents.presence_topic(&i), topic),
                None => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broker URLs and the shared validators

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}",
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
    ]
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn path_like() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        6 => "[A-Za-z0-9._-]{1,12}",
        1 => select(&["", ".", "..", "-rf", "a b", "%u", "a\nb", "é", "*", "a\"b", "a(b", "a,b"][..]).prop_map(String::from),
    ];
    prop_oneof![
        6 => vec(comp, 0..6).prop_map(|c| format!("/{}", c.join("/"))),
        1 => text(40),
        1 => (1000usize..1030).prop_map(|n| format!("/{}", "a".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn broker_urls_round_trip(
        mqtts in any::<bool>(),
        h in host(),
        port in proptest::option::of(1u16..),
        slash in any::<bool>(),
    ) {
        let hostpart = if h.contains(':') { format!("[{h}]") } else { h.clone() };
        let scheme = if mqtts { "mqtts" } else { "mqtt" };
        let url = match port {
            Some(p) => format!("{scheme}://{hostpart}:{p}"),
            None => format!("{scheme}://{hostpart}"),
        } + if slash { "/" } else { "" };
        let u = BrokerUrl::parse(&url).unwrap();
        prop_assert_eq!(u.scheme, if mqtts { Scheme::Mqtts } else { Scheme::Mqtt });
        prop_assert_eq!(&u.host, &h);
        prop_assert_eq!(u.port, port.unwrap_or(if mqtts { 8883 } else { 1883 }));
        prop_assert_eq!(BrokerUrl::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn broker_url_parse_is_total(s in prop_oneof![
        text(60),
        (select(&["mqtt://", "mqtts://"][..]), soup(8)).prop_map(|(a, b)| format!("{a}{b}")),
    ]) {
        if let Ok(u) = BrokerUrl::parse(&s) {
            prop_assert!(!u.host.is_empty() && u.port >= 1);
            prop_assert!(u.host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)));
            prop_assert_eq!(BrokerUrl::parse(&u.to_string()).unwrap(), u);
            let rest = s.split_once("://").unwrap().1;
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            prop_assert!(!rest.contains(['/', '?', '#', '@', ' ', '\n']));
        }
    }

    #[test]
    fn paths_follow_the_rule(p in path_like()) {
        let r = check_path("path", &p);
        prop_assert_eq!(r.is_ok(), path_rule(&p), "{:?}", p);
        if let Err(e) = r {
            prop_assert!(e.to_string().len() < 1600);
        }
    }

    #[test]
    fn cidrs_round_trip_and_refuse_host_bits(a in ip(), p in any::<u8>(), zero in any::<bool>()) {
        let p = p % (max_prefix(a) + 1);
        let net = masked(a, p);
        let c = Cidr::parse(&format!("{net}/{p}")).unwrap();
        prop_assert_eq!((c.addr, c.prefix), (net, p));
        prop_assert_eq!(Cidr::parse(&c.to_string()).unwrap(), c);
        prop_assert_eq!(c.is_host(), p == max_prefix(a));
        // The same address with host bits set is refused, never silently masked.
        let s = format!("{a}/{p}");
        prop_assert_eq!(Cidr::parse(&s).is_ok(), a == net);
        // A bare address is a host rule.
        prop_assert_eq!(Cidr::parse(&a.to_string()).unwrap().prefix, max_prefix(a));
        if zero {
            let too_long = format!("{net}/{}", u32::from(max_prefix(a)) + 1 + u32::from(p));
            prop_assert!(Cidr::parse(&too_long).is_err());
        }
    }

    #[test]
    fn cidr_parse_is_total(s in prop_oneof![
        text(50),
        (ip(), soup(4)).prop_map(|(a, t)| format!("{a}{t}")),
        (ip(), any::<u8>(), select(DANGEROUS)).prop_map(|(a, p, d)| format!("{a}/{p}{d}")),
    ]) {
        if let Ok(c) = Cidr::parse(&s) {
            prop_assert!(s.bytes().all(|b| b.is_ascii_hexdigit() || b".:/".contains(&b)), "{:?}", s);
            prop_assert_eq!(Cidr::parse(&c.to_string()).unwrap(), c);
            prop_assert!(c.prefix <= max_prefix(c.addr));
            prop_assert_eq!(masked(c.addr, c.prefix), c.addr);
        }
    }

    #[test]
    fn text_follows_the_rule(s in text(300), max in 0usize..300) {
        prop_assert_eq!(check_text("comment", &s, max).is_ok(), text_rule(&s, max));
    }
}

// ---------------------------------------------------------------------------------------------
// Params validators. Each family is fed (1) arbitrary JSON maps, (2) maps close to valid with
// one field replaced by hostile text. Whatever is accepted must be safe and round-trip.

/// Characters a validated value of each kind may contain, checked on everything accepted.
fn only(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

fn cidr_text() -> impl Strategy<Value = String> {
    (ip(), any::<u8>(), any::<bool>()).prop_map(|(a, p, bare)| {
        let p = p % (max_prefix(a) + 1);
        if bare {
            a.to_string()
        } else {
            format!("{}/{p}", masked(a, p))
        }
    })
}

fn hostile_of(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (valid, select(DANGEROUS), any::<Index>()).prop_map(|(s, d, i)| insert(&s, d, i))
}

/// `ok` with probability ~3/4, else something close to it or arbitrary.
fn mostly(ok: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    let ok = ok.boxed();
    prop_oneof![
        12 => ok.clone(),
        2 => hostile_of(ok),
        1 => soup(10),
        1 => any_text(12),
    ]
}

fn nfs_match() -> impl Strategy<Value = String> {
    mostly(prop_oneof![
        3 => cidr_text(),
        1 => "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}",
        1 => "\\*|\\*\\.[a-z]{1,8}\\.com|[a-z]{1,4}\\?[a-z]{0,3}",
        1 => "@[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}",
    ])
}

fn nfs_params() -> impl Strategy<Value = Map<String, Value>> {
    let client = (
        nfs_match(),
        proptest::option::of(select(&["ro", "rw"][..])),
        proptest::option::of(select(&["root", "all", "none"][..])),
        proptest::option::of(prop_oneof![any::<u32>(), 0u32..70_000]),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(m, access, squash, uid, gid)| {
            let mut c = json!({ "match": m });
            if let Some(a) = access {
                c["access"] = json!(a);
            }
            if let Some(s) = squash {
                c["squash"] = json!(s);
            }
            if let Some(u) = uid {
                c["anonuid"] = json!(u);
            }
            if let Some(g) = gid {
                c["anongid"] = json!(g);
            }
            c
        });
    (
        mostly("[a-z0-9][a-z0-9_-]{0,31}".boxed()),
        mostly(path_like().boxed()),
        vec(client, 0..4),
        proptest::option::of(any::<bool>()),
        proptest::option::of(mostly(path_like().boxed())),
        proptest::option::of(vec(prop_oneof![Just(3u8), Just(4u8), any::<u8>()], 0..3)),
    )
        .prop_map(|(name, path, clients, sync, pseudo, protocols)| {
            let mut m = json!({"name": name, "path": path, "clients": clients});
            if let Some(s) = sync {
                m["sync"] = json!(s);
            }
            if let Some(p) = pseudo {
                m["pseudo"] = json!(p);
            }
            if let Some(p) = protocols {
                m["protocols"] = json!(p);
            }
            m.as_object().unwrap().clone()
        })
}

fn nfs_validate(m: Map<String, Value>, allow_hostnames: bool) -> Option<nfs::ExportSpec> {
    serde_json::from_value::<nfs::ExportParams>(Value::Object(m))
        .ok()?
        .validate(allow_hostnames)
        .ok()
}

fn check_nfs_spec(s: &nfs::ExportSpec, allow_hostnames: bool) -> Result<(), TestCaseError> {
    let n = s.name().as_str();
    prop_assert!(!n.is_empty() && n.len() <= 32 && only(n, b"_-") && !n.starts_with(['_', '-']));
    prop_assert!(n.bytes().all(|b| !b.is_ascii_uppercase()));
    prop_assert!(path_rule(s.path()) && path_rule(s.pseudo()));
    prop_assert!(!s.clients().is_empty() && s.clients().len() <= nfs::MAX_CLIENTS);
    for c in s.clients() {
        let m = c.matches.to_string();
        // Nothing that could start an option list, a second client or a new line.
        prop_assert!(only(&m, b".:/*?@_-"), "{:?}", m);
        if !allow_hostnames {
            prop_assert!(matches!(c.matches, nfs::ClientMatch::Net(_)));
        }
        prop_assert!(c.anonuid <= nfs::MAX_ANON_ID && c.anongid <= nfs::MAX_ANON_ID);
    }
    prop_assert!(matches!(s.protocols(), [3 | 4] | [3, 4]));
    // The stored form (defaults filled in) goes through JSON and validates to the same spec.
    let v = serde_json::to_value(s.to_params()).unwrap();
    let again = nfs_validate(v.as_object().unwrap().clone(), allow_hostnames);
    prop_assert_eq!(again.as_ref(), Some(s));
    Ok(())
}

fn share_params() -> impl Strategy<Value = Map<String, Value>> {
    let principal = mostly("@?[a-z_][a-z0-9_-]{0,10}".boxed()).boxed();
    let list = |s: BoxedStrategy<String>| proptest::option::of(vec(s, 0..4));
    (
        (
            mostly("[A-Za-z0-9][A-Za-z0-9._-]{0,20}".boxed()),
            mostly(path_like().boxed()),
            proptest::option::of(mostly(
                "[A-Za-z0-9]([A-Za-z0-9 ,;#.()!-]{0,30}[A-Za-z0-9])?".boxed(),
            )),
            list(principal.clone().boxed()),
            list(principal.boxed()),
            list(mostly(cidr_text().boxed()).boxed()),
        ),
        (
            proptest::option::of(mostly("0?[0-7]{3}".boxed())),
            proptest::option::of(mostly("[a-z_][a-z0-9_-]{0,10}".boxed())),
            proptest::option::of(mostly("[a-z_][a-z0-9_-]{0,10}".boxed())),
            proptest::option::of(select(
                &["default", "off", "if_required", "desired", "required", "on"][..],
            )),
            proptest::option::of(any::<bool>()),
            proptest::option::of(json_leaf()),
        ),
    )
        .prop_map(
            |((name, path, comment, valid, admin, hosts), (mask, fu, fg, enc, ro, odd))| {
                let mut m = json!({"name": name, "path": path});
                let o = m.as_object_mut().unwrap();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                };
                put("comment", comment.map(Value::from));
                put("valid_users", valid.map(|v| json!(v)));
                put("admin_users", admin.map(|v| json!(v)));
                put("hosts_allow", hosts.map(|v| json!(v)));
                put("create_mask", mask.map(Value::from));
                put("force_user", fu.map(Value::from));
                put("force_group", fg.map(Value::from));
                put("encrypt", enc.map(Value::from));
                put("read_only", ro.map(Value::from));
                // Now and then a field of the wrong type.
                put("browseable", odd);
                m.as_object().unwrap().clone()
            },
        )
}

fn check_share_spec(s: &smb::ShareSpec) -> Result<(), TestCaseError> {
    let n = s.name.as_str();
    prop_assert!(only(n, b"._-") && n.len() <= 80 && !n.starts_with(['.', '_', '-']));
    prop_assert!(!smb::RESERVED_SHARE_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(n)));
    prop_assert!(path_rule(s.path.as_str()));
    let c = s.comment.as_str();
    prop_assert!(text_rule(c, smb::MAX_COMMENT) && c.trim() == c);
    for l in [&s.valid_users, &s.write_list, &s.admin_users] {
        prop_assert!(l.len() <= smb::MAX_LIST);
        for p in l {
            let t = p.to_string();
            let t = t.strip_prefix('@').unwrap_or(&t);
            prop_assert!(
                only(t, b"_-")
                    && t.len() <= 32
                    && !t.starts_with(|c: char| c.is_ascii_digit() || c == '-')
            );
        }
    }
    for l in [&s.hosts_allow, &s.hosts_deny] {
        prop_assert!(l.len() <= smb::MAX_LIST);
        for h in l {
            prop_assert!(only(&h.to_string(), b".:/"));
        }
    }
    for m in [s.create_mask, s.directory_mask] {
        prop_assert!(m.bits() <= 0o777);
    }
    let v = serde_json::to_value(s).unwrap();
    let again = smb::ShareSpec::from_params(v.as_object().unwrap().clone());
    prop_assert_eq!(again.as_ref(), Ok(s));
    Ok(())
}

const PREFIX: &str = "iqn.2026-11.com.example.csg";

fn iqn_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9]{1,6}(\\.[a-z0-9]{1,6}){0,2}(:[a-z0-9.:-]{1,12})?",
        "eui\\.[0-9a-f]{16}",
        "naa\\.[0-9a-f]{16}([0-9a-f]{16})?",
    ]
}

fn target_params() -> impl Strategy<Value = Map<String, Value>> {
    let lun = (
        prop_oneof![1u16..=255, any::<u16>()],
        mostly(path_like().boxed()),
        proptest::option::of(prop_oneof![
            (1u64..1 << 20).prop_map(|b| b * 512),
            any::<u64>()
        ]),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(lun, path, size, ro)| {
            let mut l = json!({"lun": lun, "path": path});
            if let Some(s) = size {
                l["size_bytes"] = json!(s);
            }
            if let Some(r) = ro {
                l["readonly"] = json!(r);
            }
            l
        });
    let chap = (
        mostly("[A-Za-z0-9_][A-Za-z0-9._-]{0,12}".boxed()),
        mostly("[A-Za-z0-9]{12,16}".boxed()),
        proptest::option::of(mostly("[A-Za-z0-9_][A-Za-z0-9._-]{0,12}".boxed())),
        proptest::option::of(mostly("[A-Za-z0-9]{12,16}".boxed())),
    )
        .prop_map(|(u, s, mu, ms)| {
            let mut c = json!({"username": u, "secret": s});
            if let Some(mu) = mu {
                c["mutual_username"] = json!(mu);
            }
            if let Some(ms) = ms {
                c["mutual_secret"] = json!(ms);
            }
            c
        });
    (
        mostly("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?".boxed()),
        proptest::option::of(mostly(iqn_text().boxed())),
        vec(lun, 0..4),
        vec(mostly(iqn_text().boxed()), 0..3),
        vec(mostly(cidr_text().boxed()), 0..3),
        proptest::option::of(chap),
    )
        .prop_map(|(name, iqn, luns, initiators, networks, chap)| {
            let mut m =
                json!({"name": name, "luns": luns, "initiators": initiators, "networks": networks});
            if let Some(i) = iqn {
                m["iqn"] = json!(i);
            }
            if let Some(c) = chap {
                m["chap"] = c;
            }
            m.as_object().unwrap().clone()
        })
}

fn iscsi_validate(m: Map<String, Value>) -> Option<iscsi::TargetSpec> {
    serde_json::from_value::<iscsi::TargetParams>(Value::Object(m))
        .ok()?
        .validate(PREFIX)
        .ok()
}

fn iqn_rule(s: &str) -> bool {
    s.len() <= iscsi::MAX_IQN_BYTES
        && only(s, b".:-")
        && !s.bytes().any(|b| b.is_ascii_uppercase())
        && (s.starts_with("iqn.") || s.starts_with("eui.") || s.starts_with("naa."))
}

/// The params that validate to `s` (what a console would resend).
fn target_params_of(s: &iscsi::TargetSpec) -> Value {
    let mut m = json!({
        "name": s.name.as_str(),
        "iqn": s.iqn.as_str(),
        "luns": s.luns.iter().map(|l| serde_json::to_value(l).unwrap()).collect::<Vec<_>>(),
        "initiators": s.initiators.iter().map(csg_protocol::methods::iscsi::Iqn::as_str).collect::<Vec<_>>(),
        "networks": s.networks.iter().map(std::string::ToString::to_string).collect::<Vec<_>>(),
    });
    if let Some(c) = &s.chap {
        let mut cj = json!({"username": c.username.as_str(), "secret": c.secret.expose()});
        if let Some((u, k)) = &c.mutual {
            cj["mutual_username"] = json!(u.as_str());
            cj["mutual_secret"] = json!(k.expose());
        }
        m["chap"] = cj;
    }
    m
}

fn check_target_spec(s: &iscsi::TargetSpec) -> Result<(), TestCaseError> {
    let n = s.name.as_str();
    prop_assert!(
        !n.is_empty() && n.len() <= 63 && only(n, b"-") && !n.starts_with('-') && !n.ends_with('-')
    );
    prop_assert!(n.bytes().all(|b| !b.is_ascii_uppercase()));
    prop_assert!(iqn_rule(s.iqn.as_str()));
    prop_assert!(s.luns.len() <= iscsi::MAX_LUNS);
    for l in &s.luns {
        prop_assert!((1..=iscsi::MAX_LUN).contains(&l.lun));
        prop_assert!(path_rule(&l.path));
        if let Some(b) = l.size_bytes {
            prop_assert!(b > 0 && b % 512 == 0 && b <= iscsi::MAX_SIZE_BYTES);
        }
    }
    prop_assert!(
        s.initiators.len() <= iscsi::MAX_INITIATORS && s.networks.len() <= iscsi::MAX_NETWORKS
    );
    for i in &s.initiators {
        prop_assert!(iqn_rule(i.as_str()));
    }
    for c in &s.networks {
        prop_assert!(only(&c.to_string(), b".:/"));
    }
    if let Some(c) = &s.chap {
        let users = std::iter::once(&c.username).chain(c.mutual.as_ref().map(|m| &m.0));
        for u in users {
            prop_assert!(only(u.as_str(), b"._-") && !u.as_str().starts_with(['-', '.']));
        }
        let secrets = std::iter::once(&c.secret).chain(c.mutual.as_ref().map(|m| &m.1));
        for k in secrets {
            prop_assert!(only(k.expose(), b"") && (12..=16).contains(&k.expose().len()));
        }
        // Secrets never show in Debug.
        let debug = format!("{s:?}");
        prop_assert!(!debug.contains(c.secret.expose()));
    }
    let again = iscsi_validate(target_params_of(s).as_object().unwrap().clone());
    prop_assert_eq!(again.as_ref(), Some(s));
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn params_validators_never_panic_on_arbitrary_maps(m in json_map(), allow in any::<bool>()) {
        if let Some(s) = nfs_validate(m.clone(), allow) {
            check_nfs_spec(&s, allow)?;
        }
        let _ = serde_json::from_value::<nfs::NameParams>(Value::Object(m.clone()))
            .map(|p| nfs::ExportName::parse(&p.name));
        if let Ok(s) = smb::ShareSpec::from_params(m.clone()) {
            check_share_spec(&s)?;
        }
        let _ = smb::parse_params::<smb::ShareRef>(m.clone());
        let _ = smb::parse_params::<smb::UserRef>(m.clone());
        if let Ok(u) = smb::parse_params::<smb::UserSet>(m.clone()) {
            prop_assert!(!u.password.expose().chars().any(char::is_control));
        }
        if let Some(s) = iscsi_validate(m.clone()) {
            check_target_spec(&s)?;
        }
        let _ = smb::parse_params::<iscsi::GetParams>(m.clone());
        let _ = smb::parse_params::<iscsi::DeleteParams>(m)
            .map(|p| iscsi::TargetName::parse(&p.name));
    }

    #[test]
    fn nfs_accepts_only_safe_specs_and_they_round_trip(m in nfs_params(), allow in any::<bool>()) {
        if let Some(s) = nfs_validate(m, allow) {
            check_nfs_spec(&s, allow)?;
        }
    }

    #[test]
    fn smb_accepts_only_safe_specs_and_they_round_trip(m in share_params()) {
        if let Ok(s) = smb::ShareSpec::from_params(m) {
            check_share_spec(&s)?;
        }
    }

    #[test]
    fn iscsi_accepts_only_safe_specs_and_they_round_trip(m in target_params()) {
        if let Some(s) = iscsi_validate(m) {
            check_target_spec(&s)?;
        }
    }

    /// One field of a valid spec gets a dangerous character or sequence somewhere: it is
    /// refused, in every field where that would matter.
    #[test]
    fn injection_is_refused_in_every_dangerous_field(
        d in select(DANGEROUS),
        at in any::<Index>(),
        traversal in select(&["/..", "/.", "//", "/-x", "/../etc"][..]),
        which in 0usize..64,
    ) {
        let with = |base: Value, k: &str, v: Value| {
            let mut b = base;
            b[k] = v;
            b.as_object().unwrap().clone()
        };
        // NFS: every string field and every client match, with or without host names.
        let nfs_base = json!({"name": "vol1", "path": "/srv/csg/vol1", "pseudo": "/vol1",
                              "clients": [{"match": "10.0.0.0/8"}]});
        let wild = matches!(d, "*" | "?");
        for (k, v) in [
            ("name", json!(insert("vol1", d, at))),
            ("path", json!(insert("/srv/csg/vol1", d, at))),
            ("path", json!(format!("/srv/csg{traversal}"))),
            ("pseudo", json!(insert("/vol1", d, at))),
            ("pseudo", json!(format!("/exports{traversal}"))),
            ("clients", json!([{"match": insert("10.0.0.0/8", d, at)}])),
        ] {
            prop_assert!(nfs_validate(with(nfs_base.clone(), k, v.clone()), false).is_none(), "{} = {}", k, v);
            if k != "clients" || !wild {
                prop_assert!(nfs_validate(with(nfs_base.clone(), k, v.clone()), true).is_none(), "{} = {}", k, v);
            }
        }
        let host = insert("nfs1.example.com", d, at);
        let r = nfs_validate(with(nfs_base.clone(), "clients", json!([{"match": host}])), true);
        prop_assert!(r.is_none() || wild, "{:?}", host);

        // SMB: names, paths, principals, host rules, masks, forced accounts; comments refuse
        // what Samba would substitute or unquote.
        let smb_base = json!({"name": "data", "path": "/srv/csg/data"});
        let mut cases = vec![
            ("name", json!(insert("data", d, at))),
            ("path", json!(insert("/srv/csg/data", d, at))),
            ("path", json!(format!("/srv/csg{traversal}"))),
            ("valid_users", json!([insert("alice", d, at)])),
            ("write_list", json!([insert("@staff", d, at)])),
            ("admin_users", json!(["bob", insert("carol", d, at)])),
            ("hosts_allow", json!([insert("10.0.0.0/8", d, at)])),
            ("hosts_deny", json!([insert("192.0.2.7", d, at)])),
            ("create_mask", json!(insert("0644", d, at))),
            ("force_user", json!(insert("svc", d, at))),
            ("force_group", json!(insert("staff", d, at))),
        ];
        if d.chars().any(|c| c.is_control() || matches!(c, '%' | '"' | '\\')) {
            cases.push(("comment", json!(insert("Finance share", d, at))));
        }
        for (k, v) in cases {
            let r = smb::ShareSpec::from_params(with(smb_base.clone(), k, v.clone()));
            prop_assert!(r.is_err(), "{} = {} accepted", k, v);
        }
        let user = with(json!({"password": "Secret123456"}), "username", json!(insert("alice", d, at)));
        prop_assert!(smb::parse_params::<smb::UserSet>(user).is_err());
        if d.chars().any(char::is_control) {
            let pass = with(json!({"username": "alice"}), "password", json!(insert("Secret123456", d, at)));
            prop_assert!(smb::parse_params::<smb::UserSet>(pass).is_err());
        }

        // iSCSI: name, IQNs, LUN paths, networks, CHAP user and secret.
        let base = json!({"name": "vol1", "iqn": "iqn.2026-11.com.example:vol1",
            "luns": [{"lun": 1, "path": "/srv/csg/a.img"}], "initiators": ["iqn.1994-05.com.redhat:c1"],
            "networks": ["10.0.0.0/8"], "chap": {"username": "u1", "secret": "Secret12chars"}});
        prop_assert!(iscsi_validate(base.as_object().unwrap().clone()).is_some());
        let cases = [
            ("name", json!(insert("vol1", d, at))),
            ("iqn", json!(insert("iqn.2026-11.com.example:vol1", d, at))),
            ("luns", json!([{"lun": 1, "path": insert("/srv/csg/a.img", d, at)}])),
            ("luns", json!([{"lun": 1, "path": format!("/srv/csg{traversal}")}])),
            ("initiators", json!([insert("iqn.1994-05.com.redhat:c1", d, at)])),
            ("networks", json!([insert("10.0.0.0/8", d, at)])),
            ("chap", json!({"username": insert("u1", d, at), "secret": "Secret12chars"})),
            ("chap", json!({"username": "u1", "secret": insert("Secret12char", d, at)})),
        ];
        for (k, v) in cases {
            prop_assert!(iscsi_validate(with(base.clone(), k, v.clone())).is_none(), "{} = {}", k, v);
        }
        // An option smuggled as a whole value is refused too.
        let opt = ["-rf", "--initiator-address=ALL", "ALL", "*(rw)", "-o", "/srv/-x"][which % 6];
        prop_assert!(iscsi_validate(with(base.clone(), "initiators", json!([opt]))).is_none());
        prop_assert!(iscsi_validate(with(base.clone(), "networks", json!([opt]))).is_none());
        prop_assert!(smb::ShareSpec::from_params(with(smb_base.clone(), "valid_users", json!([opt]))).is_err());
        prop_assert!(nfs_validate(with(nfs_base, "path", json!(opt)), true).is_none());
    }

    /// Lists are capped: a spec never holds more entries than its family allows.
    #[test]
    fn list_caps_hold(n in 0usize..100) {
        let clients: Vec<Value> = (0..n).map(|i| json!({"match": format!("10.0.{}.{}", i / 256, i % 256)})).collect();
        let r = nfs_validate(json!({"name": "v", "path": "/srv/v", "clients": clients}).as_object().unwrap().clone(), false);
        prop_assert_eq!(r.is_some(), (1..=nfs::MAX_CLIENTS).contains(&n));
        let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let r = smb::ShareSpec::from_params(json!({"name": "d", "path": "/srv/d", "valid_users": users}).as_object().unwrap().clone());
        prop_assert_eq!(r.is_ok(), n <= smb::MAX_LIST);
        let luns: Vec<Value> = (0..n).map(|i| json!({"lun": i + 1, "path": format!("/srv/l{i}")})).collect();
        let nets: Vec<String> = (0..n).map(|i| format!("10.1.{i}.0/24")).collect();
        prop_assert_eq!(iscsi_validate(json!({"name": "t", "luns": luns}).as_object().unwrap().clone()).is_some(), n <= iscsi::MAX_LUNS);
        prop_assert_eq!(iscsi_validate(json!({"name": "t", "networks": nets}).as_object().unwrap().clone()).is_some(), n <= iscsi::MAX_NETWORKS);
    }
}

/// The envelope is one JSON object: serde's derived `Deserialize` would also accept a struct
/// in sequence form, so a six-element array must be refused before it gets there.
#[test]
fn a_request_is_a_json_object_only() {
    for bad in [
        r#"[1,"r1","sys.ping",{},"csg-up/c",null]"#,
        r#"[null,null,null,null,null,null]"#,
    ] {
        let e = decode_request(bad.as_bytes(), MAX).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Malformed, "{bad}");
    }
}

/// Over the cap, the address-only parse keeps `id` and `reply_to` only as short strings: a
/// 1 MiB oversized payload whose `id` is an array of numbers must not build a 32 MiB tree.
#[test]
fn oversize_path_builds_nothing_but_the_address() {
    let p = format!(r#"{{"id":[{}0],"reply_to":"up/c"}}"#, "0,".repeat(1 << 19));
    let (e, peak) = alloc_meter::peak(|| decode_request(p.as_bytes(), MAX).unwrap_err());
    assert_eq!(e.kind, DecodeErrorKind::Oversize);
    assert!(
        peak < 64 * 1024,
        "{peak} bytes to refuse a {}-byte payload",
        p.len()
    );
}

/// Decode errors quote only a short excerpt of the input: an unsupported `"v"` in the
/// `BAD_REQUEST` message (so in the reply and the log), or a payload that is a JSON string
/// rather than an object (each control character escaped to six bytes) must not make a message
/// of hundreds of KiB.
#[test]
fn decode_errors_echo_only_a_short_excerpt() {
    let v = format!(r#"{{"v":"{}","id":"a","method":"m"}}"#, "x".repeat(60_000));
    let string = format!("\"{}\"", "\u{7f}".repeat(60_000));
    for p in [v, string] {
        let e = decode_request(p.as_bytes(), MAX).unwrap_err();
        assert!(e.message.len() < 1024, "{} bytes", e.message.len());
    }
}

/// A params value of the wrong type is quoted by serde (a control character becomes six
/// bytes): the error keeps a short excerpt only, so a 60 KB payload cannot make a 360 KB
/// `INVALID_PARAMS` reply.
#[test]
fn params_errors_echo_only_a_short_excerpt() {
    let big = "\u{7f}".repeat(60_000);
    let share = json!({"name": "d", "path": "/srv/d", "read_only": big});
    let e = smb::ShareSpec::from_params(share.as_object().unwrap().clone()).unwrap_err();
    assert!(e.len() < 1200, "{} bytes", e.len());
    let user = json!({"username": big, "password": "Secret123456"});
    let e = smb::parse_params::<smb::UserRef>(user.as_object().unwrap().clone()).unwrap_err();
    assert!(e.len() < 1200, "{} bytes", e.len());
}

// ---------------------------------------------------------------------------------------------
// World exports: every spelling exportfs reads as "everyone" needs the opt-in.

/// Reference: the IPv4 prefix a client rule really has for IPv4 clients (an IPv6 rule holding
/// or inside the IPv4-mapped block `::ffff:0:0/96` reaches them too), and its IPv6 prefix.
fn reach(c: &Cidr) -> (Option<u8>, Option<u8>) {
    match c.addr {
        IpAddr::V4(_) => (Some(c.prefix), None),
        IpAddr::V6(a) => {
            let mapped = a.to_ipv4_mapped().is_some();
            let holds_mapped = c.prefix <= 96 && {
                let keep = 128 - u32::from(c.prefix);
                let probe = u128::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0));
                keep == 128 || (probe >> keep) == (u128::from(a) >> keep)
            };
            let v4 = if holds_mapped {
                Some(0)
            } else if mapped && c.prefix > 96 {
                Some(c.prefix - 96)
            } else {
                None
            };
            (v4, Some(c.prefix))
        }
    }
}

/// Client spellings near "everyone": short networks, netmask and abbreviated forms, wildcard
/// patterns with and without a domain after them.
fn world_spelling() -> impl Strategy<Value = String> {
    let v4 = (any::<u32>(), 0u8..=32).prop_map(|(a, p)| {
        let net = if p == 0 {
            0
        } else {
            a & (u32::MAX << (32 - u32::from(p)))
        };
        format!("{}/{p}", Ipv4Addr::from(net))
    });
    let v6 = (any::<u128>(), 0u8..=128, any::<bool>()).prop_map(|(a, p, mapped)| {
        let a = if mapped {
            0xffff_0000_0000 | (a & 0xffff_ffff)
        } else {
            a
        };
        let net = if p == 0 {
            0
        } else {
            a & (u128::MAX << (128 - u32::from(p)))
        };
        format!("{}/{p}", Ipv6Addr::from(net))
    });
    let pieces = vec(
        select(
            &[
                "*", "?", ".", "a", "com", "example", "-", "*.", ".*", "0", "/", "/0",
            ][..],
        ),
        1..7,
    )
    .prop_map(|p| p.concat());
    prop_oneof![
        3 => v4,
        3 => v6,
        3 => pieces,
        1 => select(&["*", "0/0", "0.0.0.0/0.0.0.0", "::/0", "::0/0", "0::0/0", "*.*", "**",
                      "0.0.0.0/0", "::ffff:0.0.0.0/96", "::/96", "0.0.0.0/00", "::/000",
                      "*.com", "@all", "*.example.com"][..]).prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    /// With `allow_world` off, what passes reaches at most a /8 of IPv4 and a /32 of IPv6, and
    /// a wildcard passes only with a domain of two literal labels after its last wildcard.
    #[test]
    fn no_world_spelling_passes_without_the_opt_in(s in world_spelling()) {
        let strict = csg_protocol::validate::WorldPolicy::strict("nfs");
        let open = csg_protocol::validate::WorldPolicy { allow_world: true, ..strict };
        let Ok(m) = nfs::ClientMatch::parse(&s, true) else { return Ok(()) };
        prop_assert_eq!(m.refused_by(&open), None);
        let passed = m.refused_by(&strict).is_none();
        match &m {
            nfs::ClientMatch::Net(c) => {
                let (v4, v6) = reach(c);
                let ok = v4.is_none_or(|p| p >= 8) && v6.is_none_or(|p| p >= 32);
                prop_assert_eq!(passed, ok, "{} -> {:?}", s, c);
            }
            nfs::ClientMatch::Wildcard(w) => {
                let tail = &w[w.rfind(['*', '?']).unwrap() + 1..];
                let labels = tail.split_once('.').map_or(0, |(_, d)| {
                    d.split('.').filter(|l| !l.is_empty()).count()
                });
                prop_assert_eq!(passed, labels >= 2, "{}", s);
            }
            nfs::ClientMatch::Host(_) | nfs::ClientMatch::Netgroup(_) => prop_assert!(passed),
        }
        // The same networks in SMB hosts allow follow the same rule.
        if let nfs::ClientMatch::Net(c) = m {
            let share = json!({"name": "d", "path": "/srv/d", "hosts_allow": [c.to_string()]});
            let spec = smb::ShareSpec::from_params(share.as_object().unwrap().clone()).unwrap();
            let smb_strict = csg_protocol::validate::WorldPolicy::strict("smb");
            prop_assert_eq!(spec.check_world(&smb_strict).is_ok(), passed);
        }
    }
}
