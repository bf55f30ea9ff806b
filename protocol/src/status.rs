//! Heartbeat and presence bodies, published on the status parent topic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sent at once after each connect and then every heartbeat interval, at QoS 0.
/// `sys.status` returns the same body on demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Heartbeat {
    pub v: u32,
    /// Always `"heartbeat"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub instance_id: String,
    pub group_id: String,
    /// Increases by one with every heartbeat of this agent process (starts at 1).
    pub seq: u64,
    pub ts_ms: u64,
    pub agent_version: String,
    pub uptime_s: u64,
    /// The agent's heartbeat interval in seconds, so a console can tell a late gateway from an
    /// offline one without knowing each gateway's config. 0 from an agent that predates it.
    #[serde(default)]
    pub interval_s: u64,
    pub system: SystemStats,
    pub disks: Vec<DiskInfo>,
    /// One entry per configured storage family (`nfs`, `smb`, `iscsi`): its backend and whether
    /// its daemon is up. Empty when no storage backend is configured.
    pub services: BTreeMap<String, ServiceState>,
    /// Per storage family: resources managed and how many drifted from the desired state.
    #[serde(default)]
    pub storage: BTreeMap<String, FamilySummary>,
    /// Request counters since the agent started.
    #[serde(default)]
    pub counters: Counters,
    /// Messages dropped without an answer since the agent started, per reason
    /// (`unsubscribed_topic`, `not_utf8`, `oversized`, `unreadable`, `reply_topic_refused`,
    /// `queue_full`); reasons never seen are absent. They add up to `counters.dropped`.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FamilySummary {
    /// Resources in the desired state.
    pub count: u64,
    /// Resources whose state on the backend differs from the desired state (missing, changed
    /// or unexpected).
    pub drift: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SystemStats {
    /// CPU use over the last interval, all cores, 0–100.
    pub cpu_pct: f32,
    pub load1: f64,
    /// Bytes.
    pub mem_total: u64,
    /// Bytes.
    pub mem_used: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiskInfo {
    pub mount: String,
    pub fs: String,
    /// Bytes.
    pub total: u64,
    /// Bytes available to unprivileged users.
    pub avail: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceState {
    pub backend: String,
    pub up: bool,
}

/// What the agent did with the requests it received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Counters {
    /// Messages received on the command topic.
    pub received: u64,
    /// Requests executed (each id once).
    pub executed: u64,
    /// Repeats answered from the reply cache (or attached to a running request).
    pub duplicates: u64,
    /// Requests refused with `EXPIRED`.
    pub expired: u64,
    /// Requests refused with `BUSY`.
    pub busy: u64,
    /// Requests answered with `BAD_REQUEST`.
    pub bad_request: u64,
    /// Messages dropped because no valid reply topic could be read (malformed, oversized, or a
    /// `reply_to` outside the reply parent or over the length limit).
    pub dropped: u64,
    /// Replies that could not be queued for publishing (the console's retry recovers them).
    pub reply_lost: u64,
    /// Requests refused with `UNAUTHORIZED` (unsigned where signing is required, a bad or
    /// unknown signature, a method the key may not call, a bad signed deadline), answered or not.
    pub unauthorized: u64,
    /// Connections lost because the broker sent a packet above `mqtt.max_packet_bytes` (MQTT
    /// 3.1.1 cannot tell the broker the limit, nor skip such a packet).
    pub packet_too_large: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

/// Published at QoS 1 on `{status}/{instance_id}/presence`: retained in standard mode, where the
/// broker also holds an offline Will for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Presence {
    pub v: u32,
    /// Always `"presence"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub instance_id: String,
    pub state: PresenceState,
    /// When the agent wrote this message. For a Will, that is when the connection was made.
    pub ts_ms: u64,
    pub agent_version: String,
    /// `connected`, `shutdown` (clean stop) or `connection_lost` (the Will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Presence {
    pub fn new(
        instance_id: &str,
        state: PresenceState,
        agent_version: &str,
        reason: &str,
        ts_ms: u64,
    ) -> Self {
        Self {
            v: crate::PROTOCOL_VERSION,
            kind: "presence".into(),
            instance_id: instance_id.into(),
            state,
            ts_ms,
            agent_version: agent_version.into(),
            reason: Some(reason.into()),
        }
    }
}
