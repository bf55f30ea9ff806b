//! Request and reply envelopes, error codes, and the request decoder.
//!
//! Decoding is lenient in one way only: when a request is wrong, the decoder still tries to
//! read `id` and `reply_to`, so the agent can answer `BAD_REQUEST` instead of dropping the
//! message silently. Everything else is strict: the payload must be UTF-8 throughout (unknown
//! fields included), and no JSON object in it, however deep, may name a key twice (serde_json
//! would silently keep the last one, so two readers could disagree on what was asked).

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::identity::{MethodName, RequestId};
use crate::PROTOCOL_VERSION;

/// `reply_to` value that marks a one-way command.
pub const NOREPLY: &str = "noreply";

/// Every error code of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The envelope is malformed (not JSON, wrong version, bad id, oversized, …).
    BadRequest,
    /// No such method on this agent.
    UnknownMethod,
    /// The method exists but its params are wrong.
    InvalidParams,
    NotFound,
    /// The resource exists with a different spec.
    Conflict,
    /// `deadline_ms` had passed when the request arrived; it was not executed.
    Expired,
    /// Too many requests in flight; retry later with the same id.
    Busy,
    Unauthorized,
    /// A backend daemon is down or unreachable; retry later with the same id.
    Unavailable,
    /// The operation ran out of time; whether it took effect is unknown, retry with the same id.
    Timeout,
    /// The backend refused or failed the operation.
    BackendError,
    /// A bug in the agent.
    Internal,
    /// The reply would exceed the agent's reply cap (`agent.max_reply_bytes`); it was not
    /// sent. A list answers within the cap when asked for pages (`limit`).
    ReplyTooLarge,
    /// A code this version does not know (newer agent); consoles keep the raw text.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether a console should re-send the same request (same id) after this error.
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Timeout
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownMethod => "UNKNOWN_METHOD",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::Busy => "BUSY",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::BackendError => "BACKEND_ERROR",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::ReplyTooLarge => "REPLY_TOO_LARGE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error, schemars::JsonSchema)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

impl RpcError {
    /// Messages are for people and may quote input: they are cut to `MAX_ERROR_MESSAGE` bytes
    /// here, so no hostile value can turn into a large reply or log line.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: cap_message(message.into()),
            retryable: code.default_retryable(),
        }
    }

    /// The same error with its message cut to `MAX_ERROR_MESSAGE` bytes (for errors built
    /// field by field).
    pub fn capped(mut self) -> Self {
        self.message = cap_message(std::mem::take(&mut self.message));
        self
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }
    pub fn invalid_params(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }
}

/// Longest error message sent in a reply.
pub const MAX_ERROR_MESSAGE: usize = 1024;

fn cap_message(m: String) -> String {
    if m.len() <= MAX_ERROR_MESSAGE {
        return m;
    }
    crate::validate::excerpt(&m, MAX_ERROR_MESSAGE)
}

/// Where the reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// One-way command: execute and send nothing.
    NoReply,
    Topic(String),
}

impl ReplyTo {
    fn from_wire(s: Option<String>) -> Self {
        match s {
            None => ReplyTo::NoReply,
            Some(s) if s == NOREPLY => ReplyTo::NoReply,
            Some(s) => ReplyTo::Topic(s),
        }
    }
    pub fn topic(&self) -> Option<&str> {
        match self {
            ReplyTo::NoReply => None,
            ReplyTo::Topic(t) => Some(t),
        }
    }
}

/// A decoded, well-formed request. Method-specific params are checked by the handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub method: MethodName,
    /// Always a JSON object (`{}` when absent on the wire).
    pub params: Map<String, Value>,
    pub reply_to: ReplyTo,
    /// Unix milliseconds after which the request must not be executed.
    pub deadline_ms: Option<u64>,
}

impl Request {
    pub fn new(id: RequestId, method: MethodName, params: Map<String, Value>) -> Self {
        Self {
            id,
            method,
            params,
            reply_to: ReplyTo::NoReply,
            deadline_ms: None,
        }
    }

    /// The wire form: one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("v".into(), PROTOCOL_VERSION.into());
        m.insert("id".into(), self.id.as_str().into());
        m.insert("method".into(), self.method.as_str().into());
        m.insert("params".into(), Value::Object(self.params.clone()));
        m.insert(
            "reply_to".into(),
            self.reply_to.topic().unwrap_or(NOREPLY).into(),
        );
        if let Some(d) = self.deadline_ms {
            m.insert("deadline_ms".into(), d.into());
        }
        serde_json::to_vec(&Value::Object(m)).expect("a JSON map always serializes")
    }
}

/// Why a payload is not a request, with whatever could still be read from it.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{kind}: {message}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub message: String,
    /// The request id, when it could be read and is valid.
    pub id: Option<RequestId>,
    /// The id as sent when it is present but not a valid id (a string, or a number or boolean
    /// in its JSON form), cut to `MAX_RAW_ID` characters: echoed so a console can still match
    /// the refusal to what it sent.
    pub raw_id: Option<String>,
    /// `reply_to`, when it could be read; `None` means nowhere to answer.
    pub reply_to: Option<ReplyTo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Larger than the payload cap.
    Oversize,
    /// Not UTF-8, not JSON, or not a JSON object.
    Malformed,
    /// A JSON object whose envelope fields are wrong.
    Invalid,
}

impl std::fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeErrorKind::Oversize => "oversized payload",
            DecodeErrorKind::Malformed => "malformed payload",
            DecodeErrorKind::Invalid => "invalid request",
        })
    }
}

/// Envelope fields as they came, before any rule is applied. Unknown fields are ignored so
/// that newer consoles can add fields; duplicated keys were refused before this is read.
#[derive(Deserialize)]
struct RawEnvelope {
    v: Option<Value>,
    id: Option<Value>,
    method: Option<Value>,
    params: Option<Value>,
    reply_to: Option<Value>,
    deadline_ms: Option<Value>,
}

/// Just the two fields needed to answer an oversized request; serde skips every other
/// field without building it, and keeps these two only when they are short strings: an
/// oversized payload must not make the agent build a large tree before refusing it.
#[derive(Deserialize)]
struct AddressOnly {
    id: Option<ShortString>,
    reply_to: Option<ShortString>,
}

/// A string of at most `SHORT` bytes; any other value (or a longer string) is skipped
/// without being built and reads as `None`.
struct ShortString(Option<String>);

const SHORT: usize = 1024;

impl<'de> Deserialize<'de> for ShortString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ShortString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<ShortString, E> {
                Ok(ShortString((v.len() <= SHORT).then(|| v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<ShortString, E> {
                Ok(ShortString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<ShortString, E> {
                Ok(ShortString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<ShortString, E> {
                Ok(ShortString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<ShortString, E> {
                Ok(ShortString(None))
            }
            fn visit_unit<E>(self) -> Result<ShortString, E> {
                Ok(ShortString(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ShortString, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ShortString(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ShortString, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(ShortString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Error text from the JSON parser can quote the input (a top-level string, a bad value):
/// keep a short excerpt only, so a hostile payload cannot bloat a reply or a log line.
fn excerpt(s: &str) -> String {
    crate::validate::excerpt(s, 200)
}

/// True when the first non-blank byte opens an object: serde would also accept a struct
/// written as a JSON array (`[1,"id",…]`), which is not a request.
fn starts_as_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

fn read_id(v: &Option<Value>) -> Option<RequestId> {
    v.as_ref()
        .and_then(Value::as_str)
        .and_then(|s| RequestId::new(s).ok())
}

/// Longest `raw_id` echoed, in characters.
pub const MAX_RAW_ID: usize = 128;

fn cap_raw_id(s: &str) -> String {
    s.chars().take(MAX_RAW_ID).collect()
}

/// The id as sent, when it is there but not a valid id and can be shown as text.
fn read_raw_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if RequestId::new(s.as_str()).is_err() => Some(cap_raw_id(s)),
        Value::Number(n) => Some(cap_raw_id(&n.to_string())),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Walks a whole JSON value and returns the path of the first key found twice in one object
/// (`params.name`, `id`), or `None`. Keys are held borrowed from the payload where it has no
/// escapes, and only for the objects being walked; `"\u0069d"` and `"id"` are the same key.
struct Walk;

impl<'de> serde::de::DeserializeSeed<'de> for Walk {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        let mut i = 0usize;
        while let Some(inner) = a.next_element_seed(Walk)? {
            if first.is_none() {
                first = inner.map(|p| format!("[{i}]{}", dotted(&p)));
            }
            i += 1;
        }
        Ok(first)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut first = None;
        while let Some(Key(key)) = a.next_key()? {
            let inner = a.next_value_seed(Walk)?;
            if first.is_none() {
                if seen.contains(&key) {
                    first = Some(key.into_owned());
                    continue;
                }
                first = inner.map(|p| format!("{key}{}", dotted(&p)));
            }
            if first.is_none() {
                seen.insert(key);
            }
        }
        Ok(first)
    }
}

/// Joins a path below a key: `.name` after a key, `[2]` kept as is.
fn dotted(p: &str) -> String {
    if p.starts_with('[') {
        p.to_string()
    } else {
        format!(".{p}")
    }
}

/// An object key, borrowed from the payload when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Every value given for `id` and for `reply_to` at the top level, to find where to refuse a
/// request with duplicated keys; other fields are skipped.
struct Address {
    id: Vec<Value>,
    reply_to: Vec<Value>,
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Address;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Address, A::Error> {
                let mut addr = Address {
                    id: Vec::new(),
                    reply_to: Vec::new(),
                };
                while let Some(Key(key)) = a.next_key()? {
                    match &*key {
                        "id" => addr.id.push(a.next_value()?),
                        "reply_to" => addr.reply_to.push(a.next_value()?),
                        _ => {
                            a.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(addr)
            }
        }
        d.deserialize_map(V)
    }
}

fn read_reply_to(v: &Option<Value>) -> Result<ReplyTo, ()> {
    match v {
        None | Some(Value::Null) => Ok(ReplyTo::NoReply),
        Some(Value::String(s)) => Ok(ReplyTo::from_wire(Some(s.clone()))),
        Some(_) => Err(()),
    }
}

/// Decodes a request that came with an MQTT 5 Response Topic (`None` on MQTT 3.1.1).
///
/// The Response Topic stands in for `reply_to` when the envelope has none (the field absent or
/// `null`); when both are given they must be the same topic (`"noreply"` and a Response Topic
/// disagree), else the request is invalid. A request that cannot be decoded still names the
/// Response Topic as where to refuse it. The topic checks are the caller's, the same for both.
/// `id` stays required: the Correlation Data is not a substitute for it.
pub fn decode_request_with(
    payload: &[u8],
    max_payload: usize,
    response_topic: Option<&str>,
) -> Result<Request, DecodeError> {
    let Some(rt) = response_topic else {
        return decode_request(payload, max_payload);
    };
    // Whether the envelope named `reply_to` at all: absent and "noreply" both decode as
    // `NoReply`, and only an absent one gives way to the Response Topic.
    let named = |payload: &[u8]| {
        serde_json::from_slice::<AddressOnly>(payload)
            .is_ok_and(|a| a.reply_to.is_some_and(|s| s.0.is_some()))
    };
    match decode_request(payload, max_payload) {
        Ok(mut req) => match &req.reply_to {
            ReplyTo::Topic(t) if t == rt => Ok(req),
            ReplyTo::NoReply if !named(payload) => {
                req.reply_to = ReplyTo::Topic(rt.to_string());
                Ok(req)
            }
            other => {
                let sent = other.topic().unwrap_or(NOREPLY);
                Err(DecodeError {
                    kind: DecodeErrorKind::Invalid,
                    message: format!(
                        "reply_to {:?} and the MQTT 5 Response Topic {:?} differ; give one, or the same in both",
                        excerpt(sent),
                        excerpt(rt)
                    ),
                    id: Some(req.id.clone()),
                    raw_id: None,
                    reply_to: Some(ReplyTo::Topic(rt.to_string())),
                })
            }
        },
        Err(mut e) => {
            if e.reply_to.as_ref().and_then(ReplyTo::topic).is_none() {
                e.reply_to = Some(ReplyTo::Topic(rt.to_string()));
            }
            Err(e)
        }
    }
}

/// Decodes one MQTT payload into a request.
pub fn decode_request(payload: &[u8], max_payload: usize) -> Result<Request, DecodeError> {
    if payload.len() > max_payload {
        // Still try to find where to say so; the MQTT packet limit bounds this parse.
        // Non-UTF-8 is dropped, oversized or not: no address is looked for in it.
        let addr = (starts_as_object(payload) && std::str::from_utf8(payload).is_ok())
            .then(|| serde_json::from_slice::<AddressOnly>(payload).ok())
            .flatten();
        let (id, raw_id, reply_to) = match addr {
            Some(a) => {
                let sent = a.id.and_then(|s| s.0);
                let id = sent.as_deref().and_then(|s| RequestId::new(s).ok());
                let raw_id = sent.filter(|_| id.is_none()).map(|s| cap_raw_id(&s));
                let reply_to = a
                    .reply_to
                    .and_then(|s| s.0)
                    .map(|s| ReplyTo::from_wire(Some(s)));
                (id, raw_id, reply_to)
            }
            None => (None, None, None),
        };
        return Err(DecodeError {
            kind: DecodeErrorKind::Oversize,
            message: format!(
                "payload is {} bytes; the limit is {max_payload}",
                payload.len()
            ),
            id,
            raw_id,
            reply_to,
        });
    }
    let malformed = |message: String| DecodeError {
        kind: DecodeErrorKind::Malformed,
        message,
        id: None,
        raw_id: None,
        reply_to: None,
    };
    if !starts_as_object(payload) {
        return Err(malformed(
            "not a JSON request object: it must start with '{'".into(),
        ));
    }
    // Checked on the whole payload: serde_json does not check the bytes of a value it skips.
    let text = std::str::from_utf8(payload).map_err(|e| {
        malformed(format!(
            "not UTF-8: invalid byte sequence at offset {}",
            e.valid_up_to()
        ))
    })?;
    let not_json = |e: serde_json::Error| {
        malformed(format!(
            "not a JSON request object: {}",
            excerpt(&e.to_string())
        ))
    };
    // One pass over every value (strings parsed, so a lone surrogate escape is refused too),
    // within serde_json's depth limit; it holds only the keys of the objects it is inside.
    let duplicate = {
        let mut de = serde_json::Deserializer::from_str(text);
        let dup = serde::de::DeserializeSeed::deserialize(Walk, &mut de).map_err(not_json)?;
        de.end().map_err(not_json)?;
        dup
    };
    if let Some(path) = duplicate {
        let addr: Address = serde_json::from_str(text).map_err(not_json)?;
        let reply_to = match &addr.reply_to[..] {
            [one] => read_reply_to(&Some(one.clone())).ok(),
            _ => None,
        };
        let (id, raw_id) = match &addr.id[..] {
            [one] => (read_id(&Some(one.clone())), read_raw_id(one)),
            _ => (None, None),
        };
        return Err(DecodeError {
            kind: DecodeErrorKind::Invalid,
            message: format!(
                "duplicate key {:?}: every key of a JSON object must be unique",
                excerpt(&path)
            ),
            id,
            raw_id,
            reply_to,
        });
    }
    let raw: RawEnvelope = serde_json::from_str(text).map_err(not_json)?;
    let reply_to = read_reply_to(&raw.reply_to);
    let id = read_id(&raw.id);
    let raw_id = raw.id.as_ref().and_then(read_raw_id);
    let invalid = |message: String| DecodeError {
        kind: DecodeErrorKind::Invalid,
        message,
        id: id.clone(),
        raw_id: raw_id.clone(),
        reply_to: reply_to.clone().ok(),
    };
    let reply_to = reply_to
        .clone()
        .map_err(|_| invalid("reply_to must be a string".into()))?;
    match &raw.v {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(invalid(format!(
                "unsupported protocol version {}; this agent speaks v{PROTOCOL_VERSION}",
                excerpt(&v.to_string())
            )))
        }
        None => return Err(invalid("missing \"v\"".into())),
    }
    let id = match &raw.id {
        Some(Value::String(s)) => RequestId::new(s.as_str()).map_err(|e| invalid(e.to_string()))?,
        Some(_) => return Err(invalid("id must be a string".into())),
        None => return Err(invalid("missing \"id\"".into())),
    };
    let method = match &raw.method {
        Some(Value::String(s)) => {
            MethodName::new(s.as_str()).map_err(|e| invalid(e.to_string()))?
        }
        Some(_) => return Err(invalid("method must be a string".into())),
        None => return Err(invalid("missing \"method\"".into())),
    };
    let params = match raw.params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("params must be a JSON object".into())),
    };
    let deadline_ms = match &raw.deadline_ms {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| invalid("deadline_ms must be a non-negative integer".into()))?,
        ),
        Some(_) => return Err(invalid("deadline_ms must be an integer (Unix ms)".into())),
    };
    Ok(Request {
        id,
        method,
        params,
        reply_to,
        deadline_ms,
    })
}

/// A reply: `{"v":1,"id":…,"ok":true,"result":…}` or `{"v":1,"id":…,"ok":false,"error":…}`.
/// `id` is `null` only when the request carried no valid id; a `BAD_REQUEST` then carries the
/// id as sent in `raw_id` when it could be read, and the field is absent otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Option<RequestId>,
    /// The request's id as sent, when it is not a valid id (capped at `MAX_RAW_ID` characters).
    pub raw_id: Option<String>,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplyBody {
    Ok(Value),
    Err(RpcError),
}

impl Reply {
    pub fn ok(id: RequestId, result: Value) -> Self {
        Self {
            id: Some(id),
            raw_id: None,
            body: ReplyBody::Ok(result),
        }
    }
    pub fn err(id: Option<RequestId>, error: RpcError) -> Self {
        Self {
            id,
            raw_id: None,
            body: ReplyBody::Err(error),
        }
    }
    /// The same reply echoing the request's id as sent (capped at `MAX_RAW_ID` characters).
    pub fn with_raw_id(mut self, raw_id: Option<String>) -> Self {
        self.raw_id = raw_id.map(|s| cap_raw_id(&s));
        self
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a reply always serializes")
    }
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[allow(dead_code)]
            v: u32,
            id: Option<RequestId>,
            raw_id: Option<String>,
            ok: bool,
            result: Option<Value>,
            error: Option<RpcError>,
        }
        let w: Wire = serde_json::from_slice(bytes)?;
        let body = match (w.ok, w.result, w.error) {
            (true, r, _) => ReplyBody::Ok(r.unwrap_or(Value::Null)),
            (false, _, Some(e)) => ReplyBody::Err(e),
            (false, _, None) => {
                return Err(serde::de::Error::custom("ok is false but error is missing"))
            }
        };
        Ok(Reply {
            id: w.id,
            raw_id: w.raw_id,
            body,
        })
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4 + usize::from(self.raw_id.is_some())))?;
        m.serialize_entry("v", &PROTOCOL_VERSION)?;
        m.serialize_entry("id", &self.id)?;
        if let Some(raw) = &self.raw_id {
            m.serialize_entry("raw_id", raw)?;
        }
        match &self.body {
            ReplyBody::Ok(r) => {
                m.serialize_entry("ok", &true)?;
                m.serialize_entry("result", r)?;
            }
            ReplyBody::Err(e) => {
                m.serialize_entry("ok", &false)?;
                m.serialize_entry("error", e)?;
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 64 * 1024;

    #[test]
    fn full_request_decodes() {
        let r = decode_request(
            br#"{"v":1,"id":"r-1","method":"sys.ping","params":{"a":1},"reply_to":"csg-up/c1","deadline_ms":1764133200000,"future":true}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(r.id.as_str(), "r-1");
        assert_eq!(r.method.as_str(), "sys.ping");
        assert_eq!(r.params["a"], 1);
        assert_eq!(r.reply_to, ReplyTo::Topic("csg-up/c1".into()));
        assert_eq!(r.deadline_ms, Some(1764133200000));
    }

    #[test]
    fn an_mqtt5_response_topic_stands_in_for_a_missing_reply_to() {
        let rt = Some("csg-up/c5");
        let with = |p: &[u8]| decode_request_with(p, MAX, rt);
        let r = with(br#"{"v":1,"id":"a","method":"sys.ping"}"#).unwrap();
        assert_eq!(r.reply_to, ReplyTo::Topic("csg-up/c5".into()));
        let r = with(br#"{"v":1,"id":"a","method":"sys.ping","reply_to":null}"#).unwrap();
        assert_eq!(r.reply_to, ReplyTo::Topic("csg-up/c5".into()));
        // Both given: the same topic, or a refusal answered on the Response Topic.
        let r = with(br#"{"v":1,"id":"a","method":"sys.ping","reply_to":"csg-up/c5"}"#).unwrap();
        assert_eq!(r.reply_to, ReplyTo::Topic("csg-up/c5".into()));
        for other in [
            br#"{"v":1,"id":"a","method":"sys.ping","reply_to":"csg-up/c6"}"#.as_slice(),
            br#"{"v":1,"id":"a","method":"sys.ping","reply_to":"noreply"}"#.as_slice(),
        ] {
            let e = with(other).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Invalid);
            assert!(e.message.contains("differ"), "{e}");
            assert_eq!(e.id.as_ref().map(RequestId::as_str), Some("a"));
            assert_eq!(e.reply_to, Some(ReplyTo::Topic("csg-up/c5".into())));
        }
        // The id stays required; the refusal goes to the Response Topic.
        let e = with(br#"{"v":1,"method":"sys.ping"}"#).unwrap_err();
        assert!(e.message.contains("missing \"id\""), "{e}");
        assert_eq!(e.reply_to, Some(ReplyTo::Topic("csg-up/c5".into())));
        // Without one, nothing changes.
        let r = decode_request_with(br#"{"v":1,"id":"a","method":"sys.ping"}"#, MAX, None);
        assert_eq!(r.unwrap().reply_to, ReplyTo::NoReply);
    }

    #[test]
    fn defaults_and_noreply() {
        let r = decode_request(br#"{"v":1,"id":"a","method":"sys.ping"}"#, MAX).unwrap();
        assert!(r.params.is_empty());
        assert_eq!(r.reply_to, ReplyTo::NoReply);
        let r = decode_request(
            br#"{"v":1,"id":"a","method":"sys.ping","reply_to":"noreply"}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(r.reply_to, ReplyTo::NoReply);
    }

    #[test]
    fn request_round_trips_through_json() {
        let mut r = Request::new(
            RequestId::new("x1").unwrap(),
            MethodName::new("sys.info").unwrap(),
            Map::new(),
        );
        r.reply_to = ReplyTo::Topic("csg-up/c".into());
        r.deadline_ms = Some(5);
        assert_eq!(decode_request(&r.to_json(), MAX).unwrap(), r);
    }

    #[test]
    fn invalid_fields_keep_the_address() {
        let e = decode_request(
            br#"{"v":1,"id":"ok-id","method":"BAD METHOD","reply_to":"csg-up/c"}"#,
            MAX,
        )
        .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Invalid);
        assert_eq!(e.id.unwrap().as_str(), "ok-id");
        assert_eq!(e.reply_to, Some(ReplyTo::Topic("csg-up/c".into())));

        for bad in [
            r#"{"v":2,"id":"a","method":"m","reply_to":"csg-up/c"}"#,
            r#"{"id":"a","method":"m","reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":"a b","method":"m","reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":7,"method":"m","reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":"a","reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":"a","method":"m","params":[1],"reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":"a","method":"m","deadline_ms":-1,"reply_to":"csg-up/c"}"#,
            r#"{"v":1,"id":"a","method":"m","deadline_ms":"soon","reply_to":"csg-up/c"}"#,
        ] {
            let e = decode_request(bad.as_bytes(), MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Invalid, "{bad}");
            assert!(e.reply_to.is_some(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_malformed_without_address() {
        for bad in [&b"not json"[..], b"\xff\xfe\x00", b"[1,2]", b"\"str\"", b""] {
            let e = decode_request(bad, MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Malformed);
            assert!(e.reply_to.is_none());
        }
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_request(deep.as_bytes(), 1 << 20).is_err());
    }

    #[test]
    fn a_duplicate_key_anywhere_is_invalid_and_keeps_an_unambiguous_address() {
        for (bad, path) in [
            (
                r#"{"v":1,"id":"a","method":"sys.ping","method":"sys.info","reply_to":"up/c"}"#,
                "method",
            ),
            (
                r#"{"v":1,"id":"a","method":"m","params":{"x":1,"x":2},"reply_to":"up/c"}"#,
                "params.x",
            ),
            (
                r#"{"v":1,"id":"a","method":"m","params":{"l":[0,{"k":1,"k":1}]},"reply_to":"up/c"}"#,
                "params.l[1].k",
            ),
            // The same key, written once with an escape.
            (
                r#"{"v":1,"id":"a","method":"m","\u0076":1,"reply_to":"up/c"}"#,
                "v",
            ),
            (
                r#"{"v":1,"id":"a","method":"m","zz":{"q":{},"q":null},"reply_to":"up/c"}"#,
                "zz.q",
            ),
        ] {
            let e = decode_request(bad.as_bytes(), MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Invalid, "{bad}");
            assert!(
                e.message.contains(&format!("{path:?}")),
                "{bad}: {}",
                e.message
            );
            assert_eq!(e.id.unwrap().as_str(), "a", "{bad}");
            assert_eq!(e.reply_to, Some(ReplyTo::Topic("up/c".into())), "{bad}");
        }
        // A duplicated id or reply_to is no address at all: which one was meant is unknown.
        let e = decode_request(
            br#"{"v":1,"id":"a","id":"b","method":"m","reply_to":"up/c"}"#,
            MAX,
        )
        .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Invalid);
        assert_eq!((e.id, e.raw_id), (None, None));
        assert_eq!(e.reply_to, Some(ReplyTo::Topic("up/c".into())));
        let e = decode_request(
            br#"{"v":1,"id":"a","method":"m","reply_to":"up/c","reply_to":"up/d"}"#,
            MAX,
        )
        .unwrap_err();
        assert_eq!(e.reply_to, None);
        assert_eq!(e.id.unwrap().as_str(), "a");
        // Duplicate values in an array are not duplicate keys.
        assert!(decode_request(
            br#"{"v":1,"id":"a","method":"m","params":{"l":[1,1],"m":{"a":1},"n":{"a":1}}}"#,
            MAX
        )
        .is_ok());
    }

    #[test]
    fn non_utf8_anywhere_is_malformed_without_address() {
        for bad in [
            &b"{\"v\":1,\"id\":\"a\",\"method\":\"m\",\"zz\":\"\xff\",\"reply_to\":\"up/c\"}"[..],
            b"{\"v\":1,\"id\":\"a\",\"method\":\"m\",\"params\":{\"x\":\"\xed\xa0\x80\"},\"reply_to\":\"up/c\"}",
            b"{\"v\":1,\"id\":\"a\",\"method\":\"m\",\"z\xc0\x80\":1,\"reply_to\":\"up/c\"}",
            // A lone surrogate escape is not text either.
            br#"{"v":1,"id":"a","method":"m","zz":"\udc00","reply_to":"up/c"}"#,
        ] {
            let e = decode_request(bad, MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Malformed, "{}", String::from_utf8_lossy(bad));
            assert!(e.id.is_none() && e.reply_to.is_none());
        }
        // Over the cap, no address is read from non-UTF-8 either.
        let mut big = br#"{"id":"a","reply_to":"up/c","zz":""#.to_vec();
        big.extend(std::iter::repeat_n(0xffu8, 100));
        big.extend(br#""}"#);
        let e = decode_request(&big, 64).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Oversize);
        assert!(e.id.is_none() && e.reply_to.is_none());
    }

    #[test]
    fn an_invalid_id_is_echoed_raw_and_capped() {
        for (id, raw) in [
            (json!("a b"), Some("a b".to_string())),
            (json!(7), Some("7".into())),
            (json!(true), Some("true".into())),
            (json!("é".repeat(300)), Some("é".repeat(MAX_RAW_ID))),
            (json!(null), None),
            (json!({"x":1}), None),
        ] {
            let bytes =
                serde_json::to_vec(&json!({"v":1,"id":id,"method":"m","reply_to":"up/c"})).unwrap();
            let e = decode_request(&bytes, MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Invalid);
            assert_eq!(e.id, None);
            assert_eq!(e.raw_id, raw, "{id}");
        }
        // A valid id is never repeated as raw_id, even when something else is wrong.
        let e = decode_request(br#"{"v":2,"id":"ok","reply_to":"up/c"}"#, MAX).unwrap_err();
        assert_eq!((e.id.unwrap().as_str(), e.raw_id), ("ok", None));
        // Oversized: the raw id is read from the address-only parse.
        let big = json!({"v":1,"id":"a b","pad":"x".repeat(100),"reply_to":"up/c"});
        let e = decode_request(&serde_json::to_vec(&big).unwrap(), 64).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Oversize);
        assert_eq!(e.raw_id.as_deref(), Some("a b"));
    }

    #[test]
    fn oversize_keeps_the_address_when_readable() {
        let big = json!({"v":1,"id":"big-1","method":"sys.ping","params":{"pad":"x".repeat(70_000)},"reply_to":"csg-up/c"});
        let bytes = serde_json::to_vec(&big).unwrap();
        let e = decode_request(&bytes, MAX).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Oversize);
        assert_eq!(e.id.unwrap().as_str(), "big-1");
        assert_eq!(e.reply_to, Some(ReplyTo::Topic("csg-up/c".into())));
        let junk = vec![b'x'; MAX + 1];
        let e = decode_request(&junk, MAX).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Oversize);
        assert!(e.reply_to.is_none());
    }

    #[test]
    fn reply_wire_form() {
        let ok = Reply::ok(RequestId::new("a").unwrap(), json!({"pong":true}));
        assert_eq!(
            serde_json::from_slice::<Value>(&ok.to_json()).unwrap(),
            json!({"v":1,"id":"a","ok":true,"result":{"pong":true}})
        );
        let err = Reply::err(None, RpcError::new(ErrorCode::Busy, "full"));
        assert_eq!(
            serde_json::from_slice::<Value>(&err.to_json()).unwrap(),
            json!({"v":1,"id":null,"ok":false,"error":{"code":"BUSY","message":"full","retryable":true}})
        );
        assert_eq!(Reply::from_json(&ok.to_json()).unwrap(), ok);
        assert_eq!(Reply::from_json(&err.to_json()).unwrap(), err);
        let raw = Reply::err(None, RpcError::bad_request("bad id"))
            .with_raw_id(Some("x".repeat(MAX_RAW_ID + 10)));
        let v: Value = serde_json::from_slice(&raw.to_json()).unwrap();
        assert_eq!(v["raw_id"], "x".repeat(MAX_RAW_ID));
        assert_eq!(v["id"], Value::Null);
        assert_eq!(Reply::from_json(&raw.to_json()).unwrap(), raw);
    }

    #[test]
    fn unknown_error_codes_survive() {
        let r = Reply::from_json(
            br#"{"v":1,"id":"a","ok":false,"error":{"code":"NEW_THING","message":"m","retryable":false}}"#,
        )
        .unwrap();
        assert!(matches!(
            r.body,
            ReplyBody::Err(RpcError {
                code: ErrorCode::Unknown,
                ..
            })
        ));
    }
}
