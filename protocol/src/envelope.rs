//! Request and reply envelopes, error codes, and the request decoder.
//!
//! Decoding is lenient in one way only: when a request is wrong, the decoder still tries to
//! read `id` and `reply_to`, so the agent can answer `BAD_REQUEST` instead of dropping the
//! message silently. Everything else is strict.

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
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
/// that newer consoles can add fields; a duplicated field is an error (serde refuses it).
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

fn read_reply_to(v: &Option<Value>) -> Result<ReplyTo, ()> {
    match v {
        None | Some(Value::Null) => Ok(ReplyTo::NoReply),
        Some(Value::String(s)) => Ok(ReplyTo::from_wire(Some(s.clone()))),
        Some(_) => Err(()),
    }
}

/// Decodes one MQTT payload into a request.
pub fn decode_request(payload: &[u8], max_payload: usize) -> Result<Request, DecodeError> {
    if payload.len() > max_payload {
        // Still try to find where to say so; the MQTT packet limit bounds this parse.
        let addr = starts_as_object(payload)
            .then(|| serde_json::from_slice::<AddressOnly>(payload).ok())
            .flatten();
        let (id, reply_to) = match addr {
            Some(a) => (
                a.id.and_then(|s| s.0).and_then(|s| RequestId::new(s).ok()),
                a.reply_to
                    .and_then(|s| s.0)
                    .map(|s| ReplyTo::from_wire(Some(s))),
            ),
            None => (None, None),
        };
        return Err(DecodeError {
            kind: DecodeErrorKind::Oversize,
            message: format!(
                "payload is {} bytes; the limit is {max_payload}",
                payload.len()
            ),
            id,
            reply_to,
        });
    }
    let malformed = |message: String| DecodeError {
        kind: DecodeErrorKind::Malformed,
        message,
        id: None,
        reply_to: None,
    };
    if !starts_as_object(payload) {
        return Err(malformed(
            "not a JSON request object: it must start with '{'".into(),
        ));
    }
    let raw: RawEnvelope = serde_json::from_slice(payload).map_err(|e| {
        malformed(format!(
            "not a JSON request object: {}",
            excerpt(&e.to_string())
        ))
    })?;
    let reply_to = read_reply_to(&raw.reply_to);
    let id = read_id(&raw.id);
    let invalid = |message: String| DecodeError {
        kind: DecodeErrorKind::Invalid,
        message,
        id: id.clone(),
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
/// `id` is `null` only when the request carried no valid id.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Option<RequestId>,
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
            body: ReplyBody::Ok(result),
        }
    }
    pub fn err(id: Option<RequestId>, error: RpcError) -> Self {
        Self {
            id,
            body: ReplyBody::Err(error),
        }
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
        Ok(Reply { id: w.id, body })
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("v", &PROTOCOL_VERSION)?;
        m.serialize_entry("id", &self.id)?;
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
        for bad in [
            &b"not json"[..],
            b"\xff\xfe\x00",
            b"[1,2]",
            b"\"str\"",
            br#"{"v":1,"id":"a","id":"b"}"#,
            b"",
        ] {
            let e = decode_request(bad, MAX).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Malformed);
            assert!(e.reply_to.is_none());
        }
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_request(deep.as_bytes(), 1 << 20).is_err());
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
