//! Configuration of `csg-consoled`: TOML → typed [`Config`]. Unknown keys are errors, and
//! validation reports every problem at once, so an operator fixes a file in one pass.
//!
//! Regions: with one, the top-level `[identity] group_id`/`region`, `[mqtt]` and `[topics]` are
//! that region (named `identity.region`, `default` when absent). With several, each
//! `[[regions]]` entry carries its own name, group id, `[regions.mqtt]` and `[regions.topics]`,
//! and those top-level keys are refused (two places for one setting would be a trap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csg_console::{ConsoleOptions, Signer};
use csg_protocol::{BrokerList, ClientId, GroupId, InstanceId, Scheme, TopicMode, TopicParents};
use csg_transport::{Auth, Protocol, TlsOptions};
use serde::Deserialize;
use thiserror::Error;

use crate::fleet::{FleetConfig, ShareGroup};
use crate::store::Region;
use crate::tls::CertPair;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_STORE_URL: &str = "sqlite:///var/lib/csg-console/console.db";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for csg-consoled: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub identity: RawIdentity,
    /// The one region's broker; absent when `[[regions]]` are given.
    pub mqtt: Option<RawMqtt>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub fleet: RawFleet,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub webhooks: Vec<crate::webhooks::RawWebhook>,
    #[serde(default)]
    pub events: crate::eventlog::RawEvents,
    #[serde(default)]
    pub signing: RawSigning,
    #[serde(default)]
    pub log: RawLog,
    /// The one region's topics; absent when `[[regions]]` are given.
    pub topics: Option<RawTopics>,
    /// Several regions, one MQTT session each.
    #[serde(default)]
    pub regions: Vec<RawRegion>,
}

/// `[[regions]]`: one region of several (its own broker, group id and topics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: String,
    pub group_id: String,
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub topics: RawTopics,
}

/// `[topics]`: the parent topics and mode, as the agents of this fleet have them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTopics {
    /// Commands to gateways (`{down}/{instance_id}`).
    pub down: String,
    /// Replies to this console (`{up}/{console client id}`).
    pub up: String,
    /// Heartbeats and presence (`{status}/{instance_id}[/presence]`).
    pub status: String,
    /// `standard`, or `p2p` for Alibaba Cloud MQTT's point-to-point topics.
    pub mode: String,
    /// In P2P mode, subscribe the reply topic (brokers without native P2P delivery).
    pub subscribe_p2p: bool,
}

impl Default for RawTopics {
    fn default() -> Self {
        let p = TopicParents::default();
        Self {
            down: p.down,
            up: p.up,
            status: p.status,
            mode: "standard".into(),
            subscribe_p2p: false,
        }
    }
}

/// `[signing]`: the console's Ed25519 key; every command is then signed (JWS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSigning {
    /// The private key (PEM, as `csgctl keygen` writes it).
    pub key_file: Option<PathBuf>,
    /// The key id the agents trust it under; the file's own (from its name) when absent.
    pub key_id: Option<String>,
}

/// `[metrics] listen`: `/metrics` on an address of its own (then not on the API's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// The one region's group id; absent when `[[regions]]` are given.
    pub group_id: Option<String>,
    pub console_id: String,
    pub region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    pub url: String,
    pub urls: Vec<String>,
    pub protocol: String,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    pub tls: RawTls,
    pub auth: RawAuth,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            url: String::new(),
            urls: Vec::new(),
            protocol: "3.1.1".into(),
            keep_alive_s: 30,
            connect_timeout_s: 10,
            tls: RawTls::default(),
            auth: RawAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    /// Mutual TLS: the console's client certificate chain and its key (PEM), both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub listen: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// A request taking longer is answered 408.
    pub request_timeout_ms: u64,
    /// HTTPS when both are set: PEM certificate chain (leaf first) and its private key.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            max_body_bytes: 1 << 20,
            request_timeout_ms: 30_000,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub url: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: DEFAULT_STORE_URL.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    pub share_group: String,
    pub stale_after_intervals: u32,
    pub default_interval_s: u64,
    pub flush_ms: u64,
    /// Whether each heartbeat's write keeps its host figures among the gateway's last 60
    /// (the web console's chart); off, the write is smaller (docs/performance.md).
    pub host_samples: bool,
}

impl Default for RawFleet {
    fn default() -> Self {
        let f = FleetConfig::default();
        Self {
            share_group: "csg-consoled".into(),
            stale_after_intervals: f.stale_after_missed,
            default_interval_s: f.default_interval_s,
            flush_ms: 500,
            host_samples: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing filter (`info`, `csg_consoled=debug,info`); `CSG_LOG` overrides it.
    pub filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            filter: "info".into(),
        }
    }
}

/// The validated configuration: holding one means every rule below was checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// One or more, names unique, in the file's order.
    pub regions: RegionList,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub store_url: String,
    pub share_group: ShareGroup,
    pub fleet: FleetConfig,
    pub flush_every: Duration,
    /// `[fleet] host_samples`.
    pub host_samples: bool,
    /// Where `/metrics` is served alone; `None`: on the API's listener.
    pub metrics_listen: Option<SocketAddr>,
    pub webhooks: Vec<crate::webhooks::Webhook>,
    /// `[events]`: the event log's retention and polling.
    pub events: crate::eventlog::EventLogConfig,
    /// Every command is signed with it when set.
    pub signer: Option<Signer>,
    /// HTTPS: the pair, read and checked (see [`CertPair::load`]).
    pub http_tls: Option<CertPair>,
    pub log_filter: String,
}

/// One region: its name, its console client id and the broker session's settings.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    pub region: Region,
    pub client_id: ClientId,
    pub broker: BrokerList,
    pub protocol: Protocol,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub tls: Option<TlsOptions>,
    pub auth: Auth,
    pub parents: TopicParents,
    pub mode: TopicMode,
}

impl RegionConfig {
    /// The region's one console session: calls, and (with the ingest's subscriptions and tap
    /// added) the status ingest.
    pub fn console_options(&self) -> ConsoleOptions {
        let mut o = ConsoleOptions::new(
            self.broker.clone(),
            self.client_id.group().clone(),
            self.client_id.instance().clone(),
        );
        o.parents = self.parents.clone();
        o.mode = self.mode;
        o.protocol = self.protocol;
        if let Some(tls) = &self.tls {
            o.tls = tls.clone();
        }
        o.auth = self.auth.clone();
        o.keep_alive = self.keep_alive;
        o.connect_timeout = self.connect_timeout;
        o
    }
}

impl Config {
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

    /// The console's own id (the instance half of every region's client id).
    pub fn console_id(&self) -> &InstanceId {
        self.regions.home().client_id.instance()
    }
}

/// At least one region: the first (the home region) is held apart, so there always is one.
#[derive(Debug, Clone)]
pub struct RegionList {
    home: RegionConfig,
    rest: Vec<RegionConfig>,
}

impl RegionList {
    pub fn one(home: RegionConfig) -> Self {
        Self {
            home,
            rest: Vec::new(),
        }
    }

    /// The first region in the file: what belongs to no region (a refused request that names
    /// no gateway) is recorded under it.
    pub fn home(&self) -> &RegionConfig {
        &self.home
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegionConfig> {
        std::iter::once(&self.home).chain(self.rest.iter())
    }

    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Never: there is always a home region.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn get(&self, name: &Region) -> Option<&RegionConfig> {
        self.iter().find(|r| &r.region == name)
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

        let console = InstanceId::new(self.identity.console_id.as_str())
            .map_err(|e| p.push(format!("identity.console_id: {e}")))
            .ok();
        let regions = self.check_regions(console.as_ref(), &mut p);

        let listen = self
            .http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| {
                p.push(format!(
                    "http.listen = {:?}: {e} (an IP address and port, e.g. {DEFAULT_LISTEN})",
                    self.http.listen
                ));
            })
            .ok();
        if !(1024..=64 << 20).contains(&self.http.max_body_bytes) {
            p.push(format!(
                "http.max_body_bytes = {}: must be from 1024 to 67108864",
                self.http.max_body_bytes
            ));
        }
        if !(100..=600_000).contains(&self.http.request_timeout_ms) {
            p.push(format!(
                "http.request_timeout_ms = {}: must be from 100 to 600000",
                self.http.request_timeout_ms
            ));
        }

        // Read and checked here, so check-config reports unreadable files, bad PEM and a key
        // of another certificate with the rest, and SIGHUP refuses them.
        let http_tls = match (&self.http.tls_cert_file, &self.http.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => CertPair::load(cert, key)
                .map_err(|e| p.push(format!("http.tls_cert_file/tls_key_file: {e}")))
                .ok(),
            _ => {
                p.push("http.tls_cert_file and http.tls_key_file go together (or neither)".into());
                None
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.filter) {
            p.push(format!("log.filter = {:?}: {e}", self.log.filter));
        }

        let url = self.store.url.trim();
        let store_ok = url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://");
        if !store_ok {
            p.push(format!(
                "store.url: must be sqlite://PATH or postgres://…, got {:?}",
                // A postgres URL may hold a password: show only its scheme.
                url.split(':').next().unwrap_or_default()
            ));
        } else if url.contains(":memory:") || url.contains("mode=memory") {
            p.push("store.url: an in-memory SQLite database is not supported; name a file".into());
        }

        let share_group = ShareGroup::new(&self.fleet.share_group)
            .map_err(|e| p.push(format!("fleet.share_group: {e}")))
            .ok();
        if !(1..=100).contains(&self.fleet.stale_after_intervals) {
            p.push(format!(
                "fleet.stale_after_intervals = {}: must be from 1 to 100",
                self.fleet.stale_after_intervals
            ));
        }
        if !(1..=86_400).contains(&self.fleet.default_interval_s) {
            p.push(format!(
                "fleet.default_interval_s = {}: must be from 1 to 86400",
                self.fleet.default_interval_s
            ));
        }
        if !(10..=60_000).contains(&self.fleet.flush_ms) {
            p.push(format!(
                "fleet.flush_ms = {}: must be from 10 to 60000",
                self.fleet.flush_ms
            ));
        }

        let metrics_listen = self.metrics.listen.as_ref().and_then(|l| {
            l.parse::<SocketAddr>()
                .map_err(|e| {
                    p.push(format!(
                        "metrics.listen = {l:?}: {e} (an IP address and port, e.g. 127.0.0.1:9100)"
                    ));
                })
                .ok()
        });
        if metrics_listen.is_some() && metrics_listen == listen {
            p.push("metrics.listen: the same address as http.listen; leave it out to serve /metrics there".into());
        }
        let webhooks = crate::webhooks::check(&self.webhooks, &mut p);
        let events = crate::eventlog::check(&self.events, &mut p);
        let signer = match (&self.signing.key_file, &self.signing.key_id) {
            (Some(file), kid) => Signer::from_file(file, kid.as_deref())
                .map_err(|e| p.push(format!("signing.key_file: {e}")))
                .ok(),
            (None, Some(_)) => {
                p.push("signing.key_id needs signing.key_file".into());
                None
            }
            (None, None) => None,
        };

        match (regions, listen, share_group) {
            (Some(regions), Some(listen), Some(share_group)) if p.is_empty() => Ok(Config {
                regions,
                listen,
                max_body_bytes: self.http.max_body_bytes,
                request_timeout: Duration::from_millis(self.http.request_timeout_ms),
                store_url: url.to_owned(),
                share_group,
                fleet: FleetConfig {
                    default_interval_s: self.fleet.default_interval_s,
                    stale_after_missed: self.fleet.stale_after_intervals,
                },
                flush_every: Duration::from_millis(self.fleet.flush_ms),
                host_samples: self.fleet.host_samples,
                metrics_listen,
                webhooks,
                events,
                signer,
                http_tls,
                log_filter: self.log.filter,
            }),
            _ => Err(p),
        }
    }
}

impl RawConfig {
    /// The regions: the top-level one, or `[[regions]]` (each checked with its own prefix in
    /// the messages), never both.
    fn check_regions(
        &self,
        console: Option<&InstanceId>,
        p: &mut Vec<String>,
    ) -> Option<RegionList> {
        if self.regions.is_empty() {
            let Some(mqtt) = &self.mqtt else {
                p.push(
                    "mqtt.url (or mqtt.urls) is required: a [mqtt] section, or [[regions]]".into(),
                );
                return None;
            };
            let Some(group) = &self.identity.group_id else {
                p.push(
                    "identity.group_id is required (or [[regions]], each with its group_id)".into(),
                );
                return None;
            };
            let name = self.identity.region.as_deref().unwrap_or("default");
            let topics = self.topics.clone().unwrap_or_default();
            return check_region(
                &Names {
                    region: "identity.region".into(),
                    group: "identity.group_id".into(),
                    mqtt: "mqtt".into(),
                    topics: "topics".into(),
                },
                name,
                group,
                console,
                mqtt,
                &topics,
                p,
            )
            .map(RegionList::one);
        }
        for (set, key) in [
            (self.mqtt.is_some(), "[mqtt]"),
            (self.topics.is_some(), "[topics]"),
            (self.identity.group_id.is_some(), "identity.group_id"),
            (self.identity.region.is_some(), "identity.region"),
        ] {
            if set {
                p.push(format!(
                    "{key}: with [[regions]], each region has its own (regions[N].name, group_id, mqtt, topics); remove the top-level one"
                ));
            }
        }
        let mut checked = Vec::new();
        for (i, r) in self.regions.iter().enumerate() {
            let names = Names {
                region: format!("regions[{i}].name"),
                group: format!("regions[{i}].group_id"),
                mqtt: format!("regions[{i}].mqtt"),
                topics: format!("regions[{i}].topics"),
            };
            let c = check_region(&names, &r.name, &r.group_id, console, &r.mqtt, &r.topics, p);
            checked.extend(c.map(|c| (i, c)));
        }
        // Names are the key of everything stored; two regions on one broker with the same
        // status parent would each ingest the other's heartbeats, and with the same client id
        // would take each other's session.
        for (n, (i, a)) in checked.iter().enumerate() {
            for (j, b) in &checked[n + 1..] {
                if a.region == b.region {
                    p.push(format!(
                        "regions[{j}].name = {:?}: the same as regions[{i}]",
                        b.region.as_str()
                    ));
                }
                if a.broker == b.broker {
                    if a.client_id == b.client_id {
                        p.push(format!(
                            "regions[{j}]: the same broker and group_id as regions[{i}] (one client id, two sessions that would disconnect each other)"
                        ));
                    }
                    if a.parents.status == b.parents.status {
                        p.push(format!(
                            "regions[{j}].topics.status = {:?}: the same broker and status topic as regions[{i}]: each would take the other's heartbeats",
                            b.parents.status
                        ));
                    }
                }
            }
        }
        let mut it = checked.into_iter().map(|(_, c)| c);
        let home = it.next()?;
        (p.is_empty()).then(|| RegionList {
            home,
            rest: it.collect(),
        })
    }
}

/// How a region's keys are named in messages.
struct Names {
    region: String,
    group: String,
    mqtt: String,
    topics: String,
}

#[allow(clippy::too_many_arguments)]
fn check_region(
    names: &Names,
    name: &str,
    group: &str,
    console: Option<&InstanceId>,
    m: &RawMqtt,
    topics: &RawTopics,
    p: &mut Vec<String>,
) -> Option<RegionConfig> {
    let region = Region::new(name)
        .map_err(|e| p.push(format!("{}: {e}", names.region)))
        .ok();
    let group = GroupId::new(group)
        .map_err(|e| p.push(format!("{}: {e}", names.group)))
        .ok();
    let client_id = match (group, console) {
        (Some(g), Some(c)) => ClientId::new(g, c.clone())
            .map_err(|e| p.push(format!("{}: {e}", names.group)))
            .ok(),
        _ => None,
    };
    let mq = &names.mqtt;
    let broker = match (m.url.is_empty(), m.urls.is_empty()) {
        (false, false) => {
            p.push(format!(
                "{mq}.url and {mq}.urls are both set: give one broker in url, or several in urls"
            ));
            None
        }
        (true, true) => {
            p.push(format!("{mq}.url (or {mq}.urls) is required"));
            None
        }
        (false, true) => BrokerList::parse_each(&[&m.url])
            .map_err(|e| p.push(format!("{mq}.url: {e}")))
            .ok(),
        (true, false) => BrokerList::parse_each(&m.urls)
            .map_err(|e| p.push(format!("{mq}.urls: {e}")))
            .ok(),
    };
    let protocol = Protocol::parse(&m.protocol).unwrap_or_else(|| {
        p.push(format!(
            "{mq}.protocol = {:?}: must be \"3.1.1\" or \"5\"",
            m.protocol
        ));
        Protocol::default()
    });
    if !(5..=65_535).contains(&m.keep_alive_s) {
        p.push(format!(
            "{mq}.keep_alive_s = {}: must be from 5 to 65535",
            m.keep_alive_s
        ));
    }
    if !(1..=300).contains(&m.connect_timeout_s) {
        p.push(format!(
            "{mq}.connect_timeout_s = {}: must be from 1 to 300",
            m.connect_timeout_s
        ));
    }
    let tls_set = m.tls.ca_file.is_some()
        || m.tls.server_name.is_some()
        || m.tls.cert_file.is_some()
        || m.tls.key_file.is_some();
    if m.tls.cert_file.is_some() != m.tls.key_file.is_some() {
        p.push(format!(
            "{mq}.tls.cert_file and {mq}.tls.key_file go together (or neither)"
        ));
    }
    let tls = match broker.as_ref().map(BrokerList::scheme) {
        Some(Scheme::Mqtts) => {
            let opts = TlsOptions {
                ca_file: m.tls.ca_file.clone(),
                server_name: m.tls.server_name.clone(),
                client_cert_file: m.tls.cert_file.clone(),
                client_key_file: m.tls.key_file.clone(),
            };
            // Read now, so an unreadable or mismatched file is reported with the rest.
            if let Err(e) = opts.client_config() {
                p.push(format!("{mq}.tls: {e}"));
            }
            Some(opts)
        }
        Some(Scheme::Mqtt) if tls_set => {
            p.push(format!(
                "{mq}.tls is set but the broker URL is mqtt:// (plain TCP); use mqtts://"
            ));
            None
        }
        _ => None,
    };
    let auth = match (&m.auth.username, &m.auth.password_file) {
        (None, None) => Auth::None,
        (Some(u), Some(f)) => Auth::Password {
            username: u.clone(),
            password_file: f.clone(),
        },
        _ => {
            p.push(format!(
                "{mq}.auth: username and password_file go together (or neither)"
            ));
            Auth::None
        }
    };
    let tp = &names.topics;
    let parents = TopicParents {
        down: topics.down.clone(),
        up: topics.up.clone(),
        status: topics.status.clone(),
    };
    for e in parents.validate() {
        p.push(format!("{tp}: {e}"));
    }
    let mode = match (topics.mode.as_str(), topics.subscribe_p2p) {
        ("standard", false) => TopicMode::Standard,
        ("standard", true) => {
            p.push(format!(
                "{tp}.subscribe_p2p = true needs {tp}.mode = \"p2p\""
            ));
            TopicMode::Standard
        }
        ("p2p", subscribe) => TopicMode::P2p { subscribe },
        (other, _) => {
            p.push(format!(
                "{tp}.mode = {:?}: \"standard\" or \"p2p\"",
                other.chars().take(32).collect::<String>()
            ));
            TopicMode::Standard
        }
    };
    Some(RegionConfig {
        region: region?,
        client_id: client_id?,
        broker: broker?,
        protocol,
        keep_alive: Duration::from_secs(m.keep_alive_s),
        connect_timeout: Duration::from_secs(m.connect_timeout_s),
        tls,
        auth,
        parents,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[identity]
group_id = "GID_console"
console_id = "console-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.regions.home().region.as_str(), "default");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.store_url, DEFAULT_STORE_URL);
        assert_eq!(c.fleet.stale_after_missed, 3);
        assert_eq!(c.share_group.as_str(), "csg-consoled");
        assert_eq!(
            c.regions.home().client_id.as_str(),
            "GID_console@@@console-1"
        );
        assert!(c.regions.home().tls.is_none());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n");
        assert!(matches!(
            Config::from_toml(&text),
            Err(FromTomlError::Parse(m)) if m.contains("lisen")
        ));
        let text = format!("{MINIMAL}\n[[regions]]\nname = \"x\"\ngroup_id = \"GID_x\"\n[regions.mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nurl_typo = 1\n");
        assert!(matches!(
            Config::from_toml(&text),
            Err(FromTomlError::Parse(m)) if m.contains("url_typo")
        ));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[identity]
group_id = "bad group"
console_id = "c"
region = "Bad_Region"
[mqtt]
url = "http://x"
protocol = "4"
keep_alive_s = 1
[http]
listen = "localhost"
[store]
url = "mysql://u:secret@h/db"
[fleet]
share_group = "a/b"
stale_after_intervals = 0
"#;
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(text) else {
            panic!("expected problems");
        };
        for key in [
            "identity.group_id",
            "identity.region",
            "mqtt.url",
            "mqtt.protocol",
            "mqtt.keep_alive_s",
            "http.listen",
            "store.url",
            "fleet.share_group",
            "fleet.stale_after_intervals",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(key)),
                "{key} missing in {p:#?}"
            );
        }
        assert!(!p.iter().any(|m| m.contains("secret")), "{p:#?}");
    }

    #[test]
    fn topics_take_the_agents_parents_and_mode() {
        let text = format!(
            "{MINIMAL}\n[topics]\ndown = \"fleet-down\"\nup = \"fleet-up\"\nstatus = \"fleet-status\"\nmode = \"p2p\"\nsubscribe_p2p = true\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.regions.home().parents.down, "fleet-down");
        assert_eq!(c.regions.home().parents.status, "fleet-status");
        assert_eq!(c.regions.home().mode, TopicMode::P2p { subscribe: true });
        let o = c.regions.home().console_options();
        assert_eq!(o.parents.up, "fleet-up");
        assert_eq!(o.mode, TopicMode::P2p { subscribe: true });
        assert_eq!(
            Config::from_toml(MINIMAL).unwrap().regions.home().mode,
            TopicMode::Standard
        );

        let bad = format!("{MINIMAL}\n[topics]\ndown = \"a/b#\"\nmode = \"broadcast\"\n");
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&bad) else {
            panic!("accepted")
        };
        assert!(p.iter().any(|m| m.starts_with("topics: ")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("topics.mode")), "{p:?}");
        let bad = format!("{MINIMAL}\n[topics]\nsubscribe_p2p = true\n");
        assert!(Config::from_toml(&bad).is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let text = r#"
[identity]
group_id = "GID_console"
console_id = "console-1"
[mqtt]
url = "mqtts://broker.example:8883"
tls = { cert_file = "/nonexistent/console.pem" }
"#;
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(text) else {
            panic!("accepted")
        };
        assert!(p.iter().any(|m| m.contains("go together")), "{p:?}");
    }

    #[test]
    fn tls_needs_mqtts_and_auth_needs_both_halves() {
        let text = r#"
[identity]
group_id = "GID_console"
console_id = "console-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
tls = { ca_file = "/etc/ca.pem" }
auth = { username = "u" }
"#;
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(text) else {
            panic!("expected problems");
        };
        assert_eq!(p.len(), 2, "{p:#?}");
        let ok = MINIMAL.replace("mqtt://", "mqtts://");
        assert!(Config::from_toml(&ok).unwrap().regions.home().tls.is_some());
    }

    #[test]
    fn metrics_listen_and_webhooks_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook.secret");
        std::fs::write(&secret, "a-long-enough-secret\n").unwrap();
        let text = format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9100\"\n[[webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example/csg\"\nsecret_file = \"{}\"\nevents = [\"presence\", \"job\"]\n",
            secret.display()
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.metrics_listen.unwrap().port(), 9100);
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].max_attempts, 10);
        assert!(!format!("{c:?}").contains("a-long-enough-secret"));

        let text = format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:8080\"\n[[webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example/csg\"\nsecret_file = \"/nonexistent/s\"\nevents = [\"presence\"]\nretries = 3\n"
        );
        assert!(
            matches!(Config::from_toml(&text), Err(FromTomlError::Parse(m)) if m.contains("retries"))
        );
        let text = text.replace("retries = 3\n", "");
        let Err(FromTomlError::Invalid(p)) = Config::from_toml(&text) else {
            panic!("expected problems");
        };
        assert!(p.iter().any(|m| m.starts_with("metrics.listen")), "{p:#?}");
        assert!(
            p.iter().any(|m| m.starts_with("webhooks[0].secret_file")),
            "{p:#?}"
        );
    }
}
