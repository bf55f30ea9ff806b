//! `sys.*`: liveness, identity, capabilities and status of the agent itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PING: &str = "sys.ping";
pub const INFO: &str = "sys.info";
pub const CAPABILITIES: &str = "sys.capabilities";
pub const STATUS: &str = "sys.status";
pub const RECONCILE: &str = "sys.reconcile";

/// Result of `sys.ping` (no params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PingResult {
    pub pong: bool,
    /// The agent's clock, Unix ms: lets a console see clock skew.
    pub ts_ms: u64,
}

/// Result of `sys.info` (no params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InfoResult {
    pub agent_version: String,
    pub protocol_version: u32,
    pub group_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub hostname: String,
    /// e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
    pub kernel: String,
    pub arch: String,
    /// `standard` or `p2p`.
    pub topic_mode: String,
    /// Every method this agent answers, sorted.
    pub methods: Vec<String>,
    /// Storage family → configured backend (`nfs: kernel|ganesha`, `smb: samba`,
    /// `iscsi: tgt|lio`); families that are disabled are absent. Their daemons' health is in
    /// heartbeats and `sys.status` (`services`).
    #[serde(default)]
    pub storage_backends: std::collections::BTreeMap<String, String>,
    /// Largest request payload accepted, bytes.
    pub max_payload: usize,
    pub started_ms: u64,
}

/// The protocol versions an agent speaks. The envelope's `v` is the major version (`1` for
/// every 1.x): a minor version only adds (a method, an optional param, a result field, an error
/// code), so a 1.0 console keeps working unchanged against a 1.1 agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProtocolCaps {
    /// Every version this agent answers, oldest first (`["1.0", "1.1"]`).
    pub versions: Vec<String>,
    /// The newest of them.
    pub current: String,
    /// The `v` a request's envelope carries for each of them.
    pub envelope_v: u32,
}

/// The MQTT session the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MqttCaps {
    /// `3.1.1` or `5`.
    pub protocol: String,
}

/// The limits a console must stay within (or that it may count on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LimitsCaps {
    /// Largest request payload accepted, bytes (JWS included); larger ones are refused.
    pub max_payload_bytes: u64,
    /// Largest reply the agent sends, bytes; a larger one is answered `REPLY_TOO_LARGE`.
    pub max_reply_bytes: u64,
    /// How long a finished mutation's id is remembered (a repeat gets the same reply), s.
    pub id_memory_ttl_s: u64,
    /// Requests executing at once; beyond it `BUSY`.
    pub max_in_flight: u64,
    /// Repeats of a running request that are answered when it ends; beyond it `BUSY`.
    pub max_waiters_per_id: u64,
    /// Longest topic (`reply_to`) accepted, characters.
    pub max_topic_len: u64,
    /// Largest `limit` of a `*.list`.
    pub max_list_limit: u64,
    /// How far ahead of the agent's clock a signed request's `deadline_ms` may lie, s (the
    /// signed-command validity plus the allowed clock skew); unsigned requests take any.
    pub max_deadline_ahead_s: u64,
}

/// Signed commands (JWS, RFC 7515/8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SigningCaps {
    /// Whether unsigned requests are refused (`UNAUTHORIZED`).
    pub required: bool,
    /// The accepted `alg` values (`["EdDSA"]`).
    pub algorithms: Vec<String>,
    /// The `aud` a signed request must carry: this gateway's client ID.
    pub audience: String,
    /// Ids (`kid`) of the keys this agent trusts, sorted.
    pub key_ids: Vec<String>,
    /// Longest validity of a signed request (`deadline_ms` ahead of the agent's clock), s.
    pub max_validity_s: u64,
    /// Clock skew allowed, s.
    pub clock_skew_s: u64,
}

/// Where exports, shares and LUN files may live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StorageCaps {
    pub roots: Vec<String>,
}

/// A configured storage family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FamilyCaps {
    /// `kernel`/`ganesha`, `samba`, `tgt`/`lio`.
    pub backend: String,
    /// The configuration that changes what a request may contain (e.g. `allow_hostnames`).
    pub options: BTreeMap<String, serde_json::Value>,
}

/// One method the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MethodCaps {
    /// `read` (changes nothing) or `mutation` (at most once per id).
    pub kind: String,
    /// JSON Schema (2020-12) of its params.
    pub params: serde_json::Value,
    /// JSON Schema (2020-12) of its result.
    pub result: serde_json::Value,
}

/// Result of `sys.capabilities` (no params).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CapabilitiesResult {
    pub protocol: ProtocolCaps,
    pub mqtt: MqttCaps,
    pub limits: LimitsCaps,
    pub signing: SigningCaps,
    pub storage: StorageCaps,
    /// Configured families by name (`nfs`, `smb`, `iscsi`); a disabled family is absent.
    pub families: BTreeMap<String, FamilyCaps>,
    /// Every method this agent answers, by name.
    pub methods: BTreeMap<String, MethodCaps>,
}
