//! The agent's TOML config as typed sections, rendered in one place by serde.
//!
//! The keys are the agent's own (see `config/agent.toml`); a section or key left `None` is left
//! out of the file (the TOML serializer skips `None` fields), so the agent's default applies. Paths and strings go through the TOML
//! serializer, so quoting is always right whatever a temp dir is called.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Every config key of the contract, with values suited to tests: fast reconnects so a broker
/// restart is noticed and healed within the test timeouts, a short keep-alive so a dead link
/// is noticed, and debug logs from the agent itself so a failure can be explained. The storage,
/// security and MQTT TLS/auth sections are optional and typed.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub group_id: String,
    pub instance_id: String,
    pub url: String,
    /// `mqtt.urls`: when not empty it is written instead of `url`.
    pub urls: Vec<String>,
    /// `mqtt.protocol`: the run's version ([`crate::mqtt_protocol`]) unless a test sets it.
    pub protocol: String,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// `mqtt.auth_failure_backoff_s`; the agent's default when `None`.
    pub auth_failure_backoff_s: Option<u64>,
    pub tls: Option<TlsSection>,
    pub auth: Option<AuthSection>,
    pub down: String,
    pub up: String,
    pub status: String,
    /// `"standard"` or `"p2p"`.
    pub mode: String,
    pub subscribe_p2p: bool,
    pub max_len: u64,
    pub heartbeat_interval_s: u64,
    pub max_payload_bytes: u64,
    pub max_in_flight: u64,
    pub reply_cache_ttl_s: u64,
    pub log: String,
    pub storage: Option<StorageSection>,
    pub nfs: Option<NfsSection>,
    pub smb: Option<SmbSection>,
    pub iscsi: Option<IscsiSection>,
    pub security: Option<SecuritySection>,
}

impl AgentConfig {
    pub fn new(instance_id: &str, url: &str) -> Self {
        Self {
            group_id: "GID_csg".into(),
            instance_id: instance_id.into(),
            url: url.into(),
            urls: Vec::new(),
            protocol: crate::mqtt_protocol().into(),
            keep_alive_s: 5,
            connect_timeout_s: 5,
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            auth_failure_backoff_s: None,
            tls: None,
            auth: None,
            down: "csg-down".into(),
            up: "csg-up".into(),
            status: "csg-status".into(),
            mode: "standard".into(),
            subscribe_p2p: false,
            max_len: 64,
            // Long by default so a heartbeat seen in a test is not mistaken for cadence;
            // cadence tests lower it.
            heartbeat_interval_s: 30,
            max_payload_bytes: 65536,
            max_in_flight: 64,
            reply_cache_ttl_s: 600,
            log: "info,csg_agent=debug".into(),
            storage: None,
            nfs: None,
            smb: None,
            iscsi: None,
            security: None,
        }
    }

    /// Takes the storage sections (`[storage]`, `[nfs]`, `[smb]`, `[iscsi]`) and
    /// `[security]` of `other`: a second agent serving the same storage.
    pub fn storage_of(&mut self, other: &AgentConfig) {
        self.storage.clone_from(&other.storage);
        self.nfs.clone_from(&other.nfs);
        self.smb.clone_from(&other.smb);
        self.iscsi.clone_from(&other.iscsi);
        self.security.clone_from(&other.security);
    }

    pub fn client_id(&self) -> String {
        format!("{}@@@{}", self.group_id, self.instance_id)
    }

    /// Where commands for this agent go.
    pub fn command_topic(&self) -> String {
        if self.mode == "p2p" {
            format!("{}/p2p/{}", self.down, self.client_id())
        } else {
            format!("{}/{}", self.down, self.instance_id)
        }
    }

    pub fn heartbeat_topic(&self) -> String {
        format!("{}/{}", self.status, self.instance_id)
    }

    pub fn presence_topic(&self) -> String {
        format!("{}/{}/presence", self.status, self.instance_id)
    }

    /// The TOML file the agent reads, with every key of the contract spelled out.
    pub fn to_toml(&self) -> String {
        let doc = Doc {
            identity: Identity {
                group_id: &self.group_id,
                instance_id: &self.instance_id,
            },
            mqtt: Mqtt {
                url: if self.urls.is_empty() { &self.url } else { "" },
                urls: &self.urls,
                protocol: &self.protocol,
                keep_alive_s: self.keep_alive_s,
                connect_timeout_s: self.connect_timeout_s,
                reconnect_min_ms: self.reconnect_min_ms,
                reconnect_max_ms: self.reconnect_max_ms,
                auth_failure_backoff_s: self.auth_failure_backoff_s,
                tls: self.tls.as_ref(),
                auth: self.auth.as_ref(),
            },
            topics: Topics {
                down: &self.down,
                up: &self.up,
                status: &self.status,
                mode: &self.mode,
                subscribe_p2p: self.subscribe_p2p,
                max_len: self.max_len,
            },
            agent: Agent {
                heartbeat_interval_s: self.heartbeat_interval_s,
                max_payload_bytes: self.max_payload_bytes,
                max_in_flight: self.max_in_flight,
                reply_cache_ttl_s: self.reply_cache_ttl_s,
                log: &self.log,
            },
            storage: self.storage.as_ref(),
            nfs: self.nfs.as_ref(),
            smb: self.smb.as_ref(),
            iscsi: self.iscsi.as_ref(),
            security: self.security.as_ref(),
        };
        toml::to_string(&doc).unwrap_or_else(|e| panic!("agent config to TOML: {e}"))
    }
}

/// The file's shape: [`AgentConfig`] keeps the keys flat for tests to adjust, this nests them.
#[derive(Serialize)]
struct Doc<'a> {
    identity: Identity<'a>,
    mqtt: Mqtt<'a>,
    topics: Topics<'a>,
    agent: Agent<'a>,
    storage: Option<&'a StorageSection>,
    nfs: Option<&'a NfsSection>,
    smb: Option<&'a SmbSection>,
    iscsi: Option<&'a IscsiSection>,
    security: Option<&'a SecuritySection>,
}

#[derive(Serialize)]
struct Identity<'a> {
    group_id: &'a str,
    instance_id: &'a str,
}

#[derive(Serialize)]
struct Mqtt<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    url: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    urls: &'a [String],
    protocol: &'a str,
    keep_alive_s: u64,
    connect_timeout_s: u64,
    reconnect_min_ms: u64,
    reconnect_max_ms: u64,
    auth_failure_backoff_s: Option<u64>,
    tls: Option<&'a TlsSection>,
    auth: Option<&'a AuthSection>,
}

#[derive(Serialize)]
struct Topics<'a> {
    down: &'a str,
    up: &'a str,
    status: &'a str,
    mode: &'a str,
    subscribe_p2p: bool,
    max_len: u64,
}

#[derive(Serialize)]
struct Agent<'a> {
    heartbeat_interval_s: u64,
    max_payload_bytes: u64,
    max_in_flight: u64,
    reply_cache_ttl_s: u64,
    log: &'a str,
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsSection {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl TlsSection {
    /// Verifies the broker against `ca_file`.
    pub fn ca(ca_file: &Path) -> Self {
        Self {
            ca_file: Some(ca_file.into()),
            ..Self::default()
        }
    }

    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Presents this client certificate and key.
    pub fn client(mut self, cert: &Path, key: &Path) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }
}

/// `[mqtt.auth]`: `mode` and the keys that mode takes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthSection {
    pub mode: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub access_key_id: Option<String>,
    pub instance_id: Option<String>,
    pub access_key_secret_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl AuthSection {
    /// `mode = "password"`.
    pub fn password(username: &str, password_file: &Path) -> Self {
        Self {
            mode: "password".into(),
            username: Some(username.into()),
            password_file: Some(password_file.into()),
            ..Self::default()
        }
    }

    /// `mode = "alibaba_signature"`.
    pub fn alibaba_signature(access_key_id: &str, instance_id: &str, secret_file: &Path) -> Self {
        Self {
            access_key_secret_file: Some(secret_file.into()),
            ..Self::alibaba("alibaba_signature", access_key_id, instance_id)
        }
    }

    /// `mode = "alibaba_token"`.
    pub fn alibaba_token(access_key_id: &str, instance_id: &str, token_file: &Path) -> Self {
        Self {
            token_file: Some(token_file.into()),
            ..Self::alibaba("alibaba_token", access_key_id, instance_id)
        }
    }

    fn alibaba(mode: &str, access_key_id: &str, instance_id: &str) -> Self {
        Self {
            mode: mode.into(),
            access_key_id: Some(access_key_id.into()),
            instance_id: Some(instance_id.into()),
            ..Self::default()
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize)]
pub struct StorageSection {
    pub roots: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub command_timeout_s: Option<u64>,
}

impl StorageSection {
    /// One storage root, the agent's state in `state_dir`, the default command timeout.
    pub fn new(root: &Path, state_dir: &Path) -> Self {
        Self {
            roots: vec![root.into()],
            state_dir: state_dir.into(),
            command_timeout_s: None,
        }
    }

    pub fn command_timeout_s(mut self, s: u64) -> Self {
        self.command_timeout_s = Some(s);
        self
    }
}

/// `[nfs]`: the kernel backend (`exports_file`, `exportfs`) or Ganesha (`ganesha_dir`,
/// `dbus_address`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NfsSection {
    pub backend: String,
    pub exports_file: Option<PathBuf>,
    pub exportfs: Option<PathBuf>,
    pub ganesha_dir: Option<PathBuf>,
    pub dbus_address: Option<String>,
    pub allow_hostnames: Option<bool>,
    pub allow_world: Option<bool>,
}

impl NfsSection {
    pub fn kernel(exports_file: &Path, exportfs: &Path) -> Self {
        Self {
            backend: "kernel".into(),
            exports_file: Some(exports_file.into()),
            exportfs: Some(exportfs.into()),
            ..Self::default()
        }
    }

    pub fn ganesha(ganesha_dir: &Path, dbus_address: &str) -> Self {
        Self {
            backend: "ganesha".into(),
            ganesha_dir: Some(ganesha_dir.into()),
            dbus_address: Some(dbus_address.into()),
            ..Self::default()
        }
    }
}

/// `[smb]`.
#[derive(Debug, Clone, Serialize)]
pub struct SmbSection {
    pub backend: String,
    pub smb_conf: PathBuf,
    /// The `net` program; the agent's default when `None`.
    pub net: Option<PathBuf>,
    pub allow_world: Option<bool>,
}

impl SmbSection {
    pub fn samba(smb_conf: &Path) -> Self {
        Self {
            backend: "samba".into(),
            smb_conf: smb_conf.into(),
            net: None,
            allow_world: None,
        }
    }
}

/// `[iscsi]`: tgt (`tgt_socket`, `tgtadm`) or LIO (`targetcli`, `configfs_root`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IscsiSection {
    pub backend: String,
    pub iqn_prefix: String,
    pub tgt_socket: Option<String>,
    pub tgtadm: Option<PathBuf>,
    pub targetcli: Option<PathBuf>,
    pub configfs_root: Option<PathBuf>,
    pub watch_interval_s: Option<u64>,
}

impl IscsiSection {
    pub fn tgt(iqn_prefix: &str, tgt_socket: &str) -> Self {
        Self {
            backend: "tgt".into(),
            iqn_prefix: iqn_prefix.into(),
            tgt_socket: Some(tgt_socket.into()),
            ..Self::default()
        }
    }

    pub fn lio(iqn_prefix: &str, targetcli: &Path, configfs_root: &Path) -> Self {
        Self {
            backend: "lio".into(),
            iqn_prefix: iqn_prefix.into(),
            targetcli: Some(targetcli.into()),
            configfs_root: Some(configfs_root.into()),
            ..Self::default()
        }
    }
}

/// `[security]`: signed commands and the keys trusted for them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecuritySection {
    pub require_signed_commands: bool,
    pub max_command_validity_s: Option<u64>,
    pub clock_skew_s: Option<u64>,
    pub trusted_keys: BTreeMap<String, TrustedKey>,
}

impl SecuritySection {
    /// Requires signed commands; no key trusted yet.
    pub fn signed() -> Self {
        Self {
            require_signed_commands: true,
            ..Self::default()
        }
    }

    /// Trusts the public key in `public_key_file` as `kid` for the methods in `allow`.
    pub fn trust(mut self, kid: &str, public_key_file: &Path, allow: &[&str]) -> Self {
        self.trusted_keys.insert(
            kid.into(),
            TrustedKey {
                public_key_file: public_key_file.into(),
                allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
        self
    }
}

/// `[security.trusted_keys.KID]`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustedKey {
    pub public_key_file: PathBuf,
    pub allow: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_contract_key_once() {
        let toml = AgentConfig::new("gw-1", "mqtt://127.0.0.1:1").to_toml();
        for key in [
            "group_id",
            "instance_id",
            "url",
            "keep_alive_s",
            "connect_timeout_s",
            "reconnect_min_ms",
            "reconnect_max_ms",
            "down",
            "up",
            "status",
            "mode",
            "subscribe_p2p",
            "max_len",
            "heartbeat_interval_s",
            "max_payload_bytes",
            "max_in_flight",
            "reply_cache_ttl_s",
            "log",
        ] {
            let n = toml
                .lines()
                .filter(|l| l.starts_with(&format!("{key} = ")))
                .count();
            assert_eq!(n, 1, "{key} in\n{toml}");
        }
        for section in ["[identity]", "[mqtt]", "[topics]", "[agent]"] {
            assert!(toml.contains(section));
        }
        assert!(toml.contains("instance_id = \"gw-1\""));
        assert!(toml.contains("subscribe_p2p = false"));
    }

    #[test]
    fn topics_follow_the_mode() {
        let mut c = AgentConfig::new("gw-1", "mqtt://127.0.0.1:1");
        assert_eq!(c.command_topic(), "csg-down/gw-1");
        assert_eq!(c.presence_topic(), "csg-status/gw-1/presence");
        c.mode = "p2p".into();
        assert_eq!(c.command_topic(), "csg-down/p2p/GID_csg@@@gw-1");
    }

    #[test]
    fn sections_render_as_the_agent_reads_them() {
        let mut c = AgentConfig::new("gw-1", "mqtt://127.0.0.1:1");
        c.auth_failure_backoff_s = Some(30);
        c.tls = Some(TlsSection::ca(Path::new("/ca \"x\".pem")).server_name("b.example"));
        c.storage =
            Some(StorageSection::new(Path::new("/srv"), Path::new("/st")).command_timeout_s(10));
        c.nfs = Some(NfsSection::kernel(
            Path::new("/e"),
            Path::new("/bin/exportfs"),
        ));
        c.security = Some(SecuritySection::signed().trust("k-1", Path::new("/k.pub"), &["sys.*"]));
        let text = c.to_toml();
        let v: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["mqtt"]["auth_failure_backoff_s"].as_integer(), Some(30));
        assert_eq!(v["mqtt"]["tls"]["ca_file"].as_str(), Some("/ca \"x\".pem"));
        assert_eq!(v["storage"]["roots"][0].as_str(), Some("/srv"));
        assert_eq!(v["storage"]["command_timeout_s"].as_integer(), Some(10));
        assert_eq!(v["nfs"]["backend"].as_str(), Some("kernel"));
        assert!(v["nfs"].get("ganesha_dir").is_none(), "{text}");
        assert!(
            v.get("smb").is_none() && v["mqtt"].get("auth").is_none(),
            "{text}"
        );
        assert_eq!(
            v["security"]["trusted_keys"]["k-1"]["allow"][0].as_str(),
            Some("sys.*")
        );
    }
}
