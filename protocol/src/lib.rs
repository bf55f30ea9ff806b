//! The wire contract of csg-agent, protocol v1.
//!
//! Everything two parties must agree on lives here and nowhere else: identities and their
//! character rules, the topic layout, the request/reply envelope, error codes, heartbeats,
//! presence, and the parameter/result types of each method family. The crate does no I/O,
//! so the agent and any Rust console share one definition and cannot drift apart.
//! `docs/protocol.md` is the same contract in prose, for consoles written in other languages.

pub mod broker;
pub mod envelope;
pub mod identity;
pub mod jws;
pub mod methods;
pub mod status;
pub mod topics;
pub mod validate;

pub use broker::{BrokerList, BrokerListError, BrokerUrl, BrokerUrlError, Scheme};
pub use envelope::{
    decode_request, decode_request_with, DecodeError, ErrorCode, Reply, ReplyBody, ReplyTo,
    Request, RpcError,
};
pub use identity::{ClientId, GroupId, IdentityError, InstanceId, MethodName, RequestId};
pub use status::{DiskInfo, Heartbeat, Presence, PresenceState, SystemStats};
pub use topics::{AgentTopics, StatusTopic, TopicError, TopicMode, TopicParents};

/// Protocol version carried in every message as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default cap on a request payload in bytes (Alibaba Cloud MQTT's message size limit).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// Default cap on every topic's length in characters (Alibaba Cloud MQTT's limit).
pub const DEFAULT_MAX_TOPIC_LEN: usize = 64;

/// Client IDs longer than this are refused by Alibaba Cloud MQTT.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Milliseconds since the Unix epoch, the one time format on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
