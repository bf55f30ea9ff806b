//! Configuration: TOML → typed `Config`. Unknown keys are errors, and validation reports
//! every problem at once, so an operator fixes a config in one pass.

pub mod auth;
pub mod iscsi;
pub mod nfs;
pub mod security;
pub mod smb;
pub mod storage;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use csg_protocol::{
    AgentTopics, BrokerList, ClientId, GroupId, InstanceId, Scheme, TopicMode, TopicParents,
};
use csg_transport::Protocol;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for this agent: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The file as written. Every section and key has a default except identity and broker URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub identity: RawIdentity,
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub topics: RawTopics,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub storage: storage::RawStorage,
    #[serde(default)]
    pub nfs: nfs::RawNfs,
    #[serde(default)]
    pub smb: smb::RawSmb,
    #[serde(default)]
    pub iscsi: iscsi::RawIscsi,
    #[serde(default)]
    pub security: security::RawSecurity,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub group_id: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    /// One broker; or `urls`, several (not both).
    pub url: String,
    /// Several brokers (the nodes of a cluster), tried in turn: the session stays on one that
    /// works and moves to the next after a failed connect or a lost link.
    pub urls: Vec<String>,
    /// `"3.1.1"` (the default: Alibaba Cloud MQTT speaks it) or `"5"`.
    pub protocol: String,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// A connection that lasted this long resets the back-off.
    pub stable_after_s: u64,
    /// Largest MQTT packet accepted from the broker. Well above `max_payload_bytes`, so an
    /// oversized command is refused by the agent instead of tearing the connection down.
    pub max_packet_bytes: usize,
    /// QoS 1 publishes written to the broker and not yet acknowledged before further ones
    /// wait. The MQTT client keeps a slot table of this size per connection (about 80 bytes a
    /// slot), which matters only when many sessions share a process (the fleet simulator).
    pub max_inflight: u16,
    /// Back-off after a failure retrying cannot fix (TLS verification, refused credentials):
    /// long, so a misconfigured fleet does not hammer the broker.
    pub auth_failure_backoff_s: u64,
    pub tls: tls::RawTls,
    pub auth: auth::RawAuth,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            url: String::new(),
            urls: Vec::new(),
            protocol: "3.1.1".into(),
            keep_alive_s: 60,
            connect_timeout_s: 30,
            // A fleet that lost its broker comes back spread over this window (full jitter):
            // 10k gateways at ~2k connects/s, under what one Mosquitto accepts (~6k/s here).
            reconnect_min_ms: 5_000,
            reconnect_max_ms: 60_000,
            stable_after_s: 60,
            max_packet_bytes: 1 << 20,
            max_inflight: 1024,
            auth_failure_backoff_s: 300,
            tls: tls::RawTls::default(),
            auth: auth::RawAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTopics {
    pub down: String,
    pub up: String,
    pub status: String,
    pub mode: RawMode,
    pub subscribe_p2p: bool,
    pub max_len: usize,
}

impl Default for RawTopics {
    fn default() -> Self {
        let p = TopicParents::default();
        Self {
            down: p.down,
            up: p.up,
            status: p.status,
            mode: RawMode::Standard,
            subscribe_p2p: false,
            max_len: csg_protocol::DEFAULT_MAX_TOPIC_LEN,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    Standard,
    P2p,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgent {
    pub heartbeat_interval_s: u64,
    pub max_payload_bytes: usize,
    /// Largest reply the agent publishes, bytes; a larger one is answered `REPLY_TOO_LARGE`
    /// instead. The default stays under the 64 KiB message limit of Alibaba Cloud MQTT.
    pub max_reply_bytes: usize,
    pub max_in_flight: usize,
    /// Requests of one method family (`sys`, `nfs`, …) executing at once; the rest wait
    /// (within `max_in_flight`), so one busy family cannot starve the others.
    pub max_per_family: usize,
    pub reply_cache_ttl_s: u64,
    pub reply_cache_max: usize,
    pub shutdown_grace_s: u64,
    pub log: String,
}

impl Default for RawAgent {
    fn default() -> Self {
        Self {
            heartbeat_interval_s: 30,
            max_payload_bytes: csg_protocol::DEFAULT_MAX_PAYLOAD,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_in_flight: 64,
            max_per_family: 8,
            reply_cache_ttl_s: 600,
            reply_cache_max: 65_536,
            shutdown_grace_s: 5,
            log: "info".into(),
        }
    }
}

/// The validated configuration. Holding one means every rule below was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub client_id: ClientId,
    /// `mqtt.url` or `mqtt.urls`: one or more brokers, one scheme.
    pub broker: BrokerList,
    pub mqtt: MqttSettings,
    pub parents: TopicParents,
    pub mode: TopicMode,
    pub topics: AgentTopics,
    pub agent: AgentSettings,
    pub storage: storage::StorageSettings,
    pub nfs: nfs::NfsSettings,
    pub smb: smb::SmbSettings,
    pub iscsi: iscsi::IscsiSettings,
    pub security: security::SecuritySettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    pub protocol: Protocol,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub stable_after: Duration,
    pub max_packet_bytes: usize,
    pub max_inflight: u16,
    pub auth_failure_backoff: Duration,
    pub tls: tls::TlsSettings,
    pub auth: auth::AuthSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub heartbeat_interval: Duration,
    pub max_payload_bytes: usize,
    pub max_reply_bytes: usize,
    pub max_in_flight: usize,
    pub max_per_family: usize,
    pub reply_cache_ttl: Duration,
    pub reply_cache_max: usize,
    pub shutdown_grace: Duration,
    pub log: String,
}

/// 60 KiB: a reply and its MQTT header fit the 64 KiB message limit of Alibaba Cloud MQTT.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 60 * 1024;
/// Smallest reply cap. `sys.capabilities` with every family (about 49 KB of JSON Schemas) must
/// fit, or the one method meant to describe the agent could only be answered `REPLY_TOO_LARGE`;
/// a broker whose message limit is below this cannot carry it (Alibaba Cloud MQTT's is 64 KiB).
pub const MIN_REPLY_BYTES: usize = 56 * 1024;

/// The protocol promises that ids are remembered at least this long.
pub const MIN_REPLY_CACHE_TTL_S: u64 = 600;

impl Config {
    /// Advice about a valid configuration, for `check-config` to print.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.mqtt.protocol == Protocol::V311 {
            notes.push(format!(
                "note: with mqtt.protocol = \"3.1.1\" the broker cannot learn this agent's packet limit (mqtt.max_packet_bytes = {}); one larger publish on the command topic closes the connection (presence flaps, the event is counted in sys.status). Set the broker's limit below it (Mosquitto max_packet_size, EMQX mqtt.max_packet_size; Alibaba Cloud MQTT caps messages at 64 KB) or use mqtt.protocol = \"5\"; see docs/operations.md",
                self.mqtt.max_packet_bytes
            ));
        }
        notes
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            FromTomlError::Parse(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            FromTomlError::Invalid(problems) => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, FromTomlError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| FromTomlError::Parse(e.to_string()))?;
        raw.validate().map_err(FromTomlError::Invalid)
    }
}

#[derive(Debug)]
pub enum FromTomlError {
    Parse(String),
    Invalid(Vec<String>),
}

impl RawConfig {
    /// Checks every rule and returns all problems, not just the first.
    pub fn validate(self) -> Result<Config, Vec<String>> {
        let mut p: Vec<String> = Vec::new();

        let group = GroupId::new(self.identity.group_id.as_str())
            .map_err(|e| p.push(format!("identity.group_id: {e}")))
            .ok();
        let instance = InstanceId::new(self.identity.instance_id.as_str())
            .map_err(|e| p.push(format!("identity.instance_id: {e}")))
            .ok();
        let client_id = match (group, instance) {
            (Some(g), Some(i)) => ClientId::new(g, i)
                .map_err(|e| p.push(format!("identity: {e}")))
                .ok(),
            _ => None,
        };

        let broker = match (self.mqtt.url.is_empty(), self.mqtt.urls.is_empty()) {
            (false, false) => {
                p.push("mqtt.url and mqtt.urls are both set: give one broker in url, or several in urls".into());
                None
            }
            (true, true) => {
                p.push("mqtt.url (or mqtt.urls) is required".into());
                None
            }
            (false, true) => BrokerList::parse_each(&[&self.mqtt.url])
                .map_err(|e| p.push(format!("mqtt.url: {e}")))
                .ok(),
            (true, false) => BrokerList::parse_each(&self.mqtt.urls)
                .map_err(|e| p.push(format!("mqtt.urls: {e}")))
                .ok(),
        };
        let m = &self.mqtt;
        let protocol = Protocol::parse(&m.protocol).unwrap_or_else(|| {
            p.push(format!(
                "mqtt.protocol = {:?}: must be \"3.1.1\" or \"5\"",
                m.protocol
            ));
            Protocol::default()
        });
        if !(5..=65_535).contains(&m.keep_alive_s) {
            p.push(format!(
                "mqtt.keep_alive_s = {}: must be from 5 to 65535",
                m.keep_alive_s
            ));
        }
        if !(1..=600).contains(&m.connect_timeout_s) {
            p.push(format!(
                "mqtt.connect_timeout_s = {}: must be from 1 to 600",
                m.connect_timeout_s
            ));
        }
        if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
            p.push(format!(
                "mqtt.reconnect_min_ms = {} and reconnect_max_ms = {}: need 0 < min <= max",
                m.reconnect_min_ms, m.reconnect_max_ms
            ));
        }
        if m.max_inflight == 0 {
            p.push("mqtt.max_inflight = 0: must be from 1 to 65535".to_string());
        }
        if !(1..=86_400).contains(&m.auth_failure_backoff_s) {
            p.push(format!(
                "mqtt.auth_failure_backoff_s = {}: must be from 1 to 86400",
                m.auth_failure_backoff_s
            ));
        }
        if m.reconnect_max_ms > 3_600_000 {
            p.push(format!(
                "mqtt.reconnect_max_ms = {}: the limit is 3600000 (one hour)",
                m.reconnect_max_ms
            ));
        }

        let a = &self.agent;
        if !(4096..=(1 << 20)).contains(&a.max_payload_bytes) {
            p.push(format!(
                "agent.max_payload_bytes = {}: must be from 4096 to 1048576",
                a.max_payload_bytes
            ));
        }
        if m.max_packet_bytes < a.max_payload_bytes + 1024 || m.max_packet_bytes > (256 << 20) {
            p.push(format!(
                "mqtt.max_packet_bytes = {}: must exceed agent.max_payload_bytes ({}) by at least 1024 (so oversized commands are refused, not disconnected) and be at most 268435456",
                m.max_packet_bytes, a.max_payload_bytes
            ));
        }
        // The reply, its topic and the MQTT header must fit one packet the agent itself would
        // accept; beyond 1 MiB no supported broker forwards it by default.
        let reply_max = m.max_packet_bytes.saturating_sub(1024).min(1 << 20);
        if !(MIN_REPLY_BYTES..=reply_max).contains(&a.max_reply_bytes) {
            p.push(format!(
                "agent.max_reply_bytes = {}: must be from {MIN_REPLY_BYTES} to {reply_max} (mqtt.max_packet_bytes less 1024 for the topic and header, at most 1048576); keep it under the broker's message limit (64 KiB on Alibaba Cloud MQTT)",
                a.max_reply_bytes
            ));
        }
        if !(1..=86_400).contains(&a.heartbeat_interval_s) {
            p.push(format!(
                "agent.heartbeat_interval_s = {}: must be from 1 to 86400",
                a.heartbeat_interval_s
            ));
        }
        if !(1..=65_536).contains(&a.max_in_flight) {
            p.push(format!(
                "agent.max_in_flight = {}: must be from 1 to 65536",
                a.max_in_flight
            ));
        }
        if !(1..=1024).contains(&a.max_per_family) {
            p.push(format!(
                "agent.max_per_family = {}: must be from 1 to 1024",
                a.max_per_family
            ));
        }
        if a.reply_cache_ttl_s < MIN_REPLY_CACHE_TTL_S {
            p.push(format!(
                "agent.reply_cache_ttl_s = {}: the protocol promises at least {MIN_REPLY_CACHE_TTL_S} s",
                a.reply_cache_ttl_s
            ));
        }
        if a.reply_cache_max < 1024 {
            p.push(format!(
                "agent.reply_cache_max = {}: must be at least 1024",
                a.reply_cache_max
            ));
        }
        if a.shutdown_grace_s > 300 {
            p.push(format!(
                "agent.shutdown_grace_s = {}: the limit is 300",
                a.shutdown_grace_s
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&a.log) {
            p.push(format!("agent.log = {:?}: {e}", a.log));
        }

        let t = &self.topics;
        let parents = TopicParents {
            down: t.down.clone(),
            up: t.up.clone(),
            status: t.status.clone(),
        };
        let mode = match (t.mode, t.subscribe_p2p) {
            (RawMode::Standard, true) => {
                p.push("topics.subscribe_p2p = true needs topics.mode = \"p2p\"".into());
                TopicMode::Standard
            }
            (RawMode::Standard, false) => TopicMode::Standard,
            (RawMode::P2p, s) => TopicMode::P2p { subscribe: s },
        };
        if !(8..=65_535).contains(&t.max_len) {
            p.push(format!(
                "topics.max_len = {}: must be from 8 to 65535",
                t.max_len
            ));
        }
        let topics = client_id.as_ref().and_then(|c| {
            AgentTopics::new(&parents, mode, c, t.max_len)
                .map_err(|errs| {
                    for e in errs {
                        p.push(format!("topics: {e}"));
                    }
                })
                .ok()
        });

        let storage = self.storage.validate(&mut p);
        let nfs = self.nfs.validate(&mut p);
        let smb = self.smb.validate(&mut p);
        let iscsi = self.iscsi.validate(&mut p);
        let security = self.security.validate(&mut p);
        let tls_url = broker.as_ref().is_some_and(|b| b.scheme() == Scheme::Mqtts);
        let mqtt_tls = self.mqtt.tls.validate(tls_url, &mut p);
        let mqtt_auth = self.mqtt.auth.validate(&mut p);

        match (client_id, broker, topics) {
            (Some(client_id), Some(broker), Some(topics)) if p.is_empty() => Ok(Config {
                client_id,
                broker,
                mqtt: MqttSettings {
                    protocol,
                    keep_alive: Duration::from_secs(m.keep_alive_s),
                    connect_timeout: Duration::from_secs(m.connect_timeout_s),
                    reconnect_min: Duration::from_millis(m.reconnect_min_ms),
                    reconnect_max: Duration::from_millis(m.reconnect_max_ms),
                    stable_after: Duration::from_secs(m.stable_after_s),
                    max_packet_bytes: m.max_packet_bytes,
                    max_inflight: m.max_inflight,
                    auth_failure_backoff: Duration::from_secs(m.auth_failure_backoff_s),
                    tls: mqtt_tls,
                    auth: mqtt_auth,
                },
                parents,
                mode,
                topics,
                agent: AgentSettings {
                    heartbeat_interval: Duration::from_secs(a.heartbeat_interval_s),
                    max_payload_bytes: a.max_payload_bytes,
                    max_reply_bytes: a.max_reply_bytes,
                    max_in_flight: a.max_in_flight,
                    max_per_family: a.max_per_family,
                    reply_cache_ttl: Duration::from_secs(a.reply_cache_ttl_s),
                    reply_cache_max: a.reply_cache_max,
                    shutdown_grace: Duration::from_secs(a.shutdown_grace_s),
                    log: a.log.clone(),
                },
                storage,
                nfs,
                smb,
                iscsi,
                security,
            }),
            _ => Err(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[identity]
group_id = "GID_csg"
instance_id = "gw-001"
[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MIN).unwrap();
        assert_eq!(c.client_id.as_str(), "GID_csg@@@gw-001");
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(60));
        assert_eq!(c.topics.commands, "csg-down/gw-001");
        assert_eq!(c.agent.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.agent.max_payload_bytes, 65536);
        assert_eq!(c.agent.max_reply_bytes, 61440);
        assert_eq!(c.mode, TopicMode::Standard);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MIN}\nbogus = 1\n");
        assert!(matches!(
            Config::from_toml(&text),
            Err(FromTomlError::Parse(m)) if m.contains("bogus")
        ));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[identity]
group_id = "GID csg"
instance_id = "gw/1"
[mqtt]
url = "http://x"
keep_alive_s = 1
[agent]
reply_cache_ttl_s = 5
"#;
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(text) else {
            panic!("expected problems")
        };
        assert_eq!(p.len(), 5, "{p:#?}");
    }

    #[test]
    fn long_client_id_names_value_and_limit() {
        let text = MIN.replace("gw-001", &"g".repeat(60));
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems")
        };
        assert!(p[0].contains("limit is 64"), "{p:?}");
        assert!(p[0].contains("ggggg"), "{p:?}");
    }

    #[test]
    fn long_topics_are_refused() {
        let text = format!("{MIN}[topics]\nstatus = \"{}\"\n", "s".repeat(50));
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems")
        };
        // The heartbeat topic (57 characters) fits; the presence topic (66) does not.
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("presence") && p[0].contains("limit is 64"),
            "{p:?}"
        );
    }

    #[test]
    fn mqtts_takes_tls_settings_and_plain_mqtt_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let tls = format!("[mqtt.tls]\nca_file = {:?}\n", ca.display().to_string());
        let text = format!("{}{tls}", MIN.replace("mqtt://", "mqtts://"));
        // A CA file that is missing is a config error, named.
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems")
        };
        assert!(p.len() == 1 && p[0].contains("ca.pem"), "{p:?}");
        let text = format!("{MIN}{tls}");
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems")
        };
        assert!(p.iter().any(|m| m.contains("mqtts://")), "{p:?}");
        let text = format!(
            "{}[mqtt.tls]\nclient_cert_file = \"/c.pem\"\nserver_name = \"no such name!\"\n",
            MIN.replace("mqtt://", "mqtts://")
        );
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems")
        };
        assert!(p.iter().any(|m| m.contains("server name")), "{p:?}");
    }

    #[test]
    fn several_broker_urls() {
        let text = MIN.replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "urls = [\"mqtt://a:1883\", \"mqtt://b\"]",
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.broker.to_string(), "mqtt://a:1883,mqtt://b:1883");
        let problems = |text: &str| match Config::from_toml(text) {
            Err(FromTomlError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        };
        let both = MIN.replace("[mqtt]\n", "[mqtt]\nurls = [\"mqtt://b\"]\n");
        let p = problems(&both);
        assert!(p.len() == 1 && p[0].contains("both"), "{p:?}");
        let neither = MIN.replace("url = \"mqtt://127.0.0.1:1883\"", "urls = []");
        let p = problems(&neither);
        assert!(p.len() == 1 && p[0].contains("required"), "{p:?}");
        let mixed = MIN.replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "urls = [\"mqtt://a\", \"mqtts://b\"]",
        );
        let p = problems(&mixed);
        assert!(p.iter().any(|m| m.contains("mqtts://b:8883")), "{p:?}");
    }

    #[test]
    fn p2p_mode() {
        let text = format!("{MIN}[topics]\nmode = \"p2p\"\nsubscribe_p2p = true\n");
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.mode, TopicMode::P2p { subscribe: true });
        assert_eq!(c.topics.commands, "csg-down/p2p/GID_csg@@@gw-001");
        let text = format!("{MIN}[topics]\nsubscribe_p2p = true\n");
        assert!(Config::from_toml(&text).is_err());
    }
}

#[cfg(test)]
mod example_file {
    /// The example shipped in config/ is refused until it gets an instance id, and is then
    /// valid and shows the real defaults.
    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../config/agent.toml");
        let Err(super::FromTomlError::Invalid(p)) = super::Config::from_toml(text) else {
            panic!("the shipped config must not start an agent before it has an identity")
        };
        assert!(p.len() == 1 && p[0].contains("instance_id"), "{p:?}");
        let text = text.replace("instance_id = \"\"", "instance_id = \"gw-001\"");
        let c = super::Config::from_toml(&text).expect("config/agent.toml is valid");
        let d = super::Config::from_toml(
            "[identity]\ngroup_id = \"GID_csg\"\ninstance_id = \"gw-001\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
        )
        .unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }
}
