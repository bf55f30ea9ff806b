//! `sys.*`: liveness, identity and status of the agent itself.

use serde::{Deserialize, Serialize};

pub const PING: &str = "sys.ping";
pub const INFO: &str = "sys.info";
pub const STATUS: &str = "sys.status";
pub const RECONCILE: &str = "sys.reconcile";

/// Result of `sys.ping` (no params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    pub pong: bool,
    /// The agent's clock, Unix ms: lets a console see clock skew.
    pub ts_ms: u64,
}

/// Result of `sys.info` (no params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
