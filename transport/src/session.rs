//! The MQTT session of every client (the agent, the console library, the test harness): the
//! only module that names rumqttc.
//!
//! One task owns rumqttc's event loop and is the only code that polls it. Per connection:
//! read the TLS files and the broker secret again (rotation needs no restart) → CONNECT (clean
//! session, TCP_NODELAY) → CONNACK → SUBSCRIBE every filter → SUBACK → [`LinkState::Ready`]
//! with an epoch that counts sessions, so a watcher tells a reconnect from a steady link. When
//! the link fails it backs off with full jitter ([`Backoff`]) and tries again forever; a
//! failure only an operator can fix ([`Failure::needs_operator`]) waits the long
//! `refusal_backoff` instead. A shutdown publishes the farewell (the agent's "offline"), waits
//! for its PUBACK within a bound, and disconnects cleanly.
//!
//! The poll task never waits on anything but the network: inbound messages go to a bounded
//! channel with `try_send` (a full channel hands the message to [`Hooks::overflow`]), and
//! callers publish through the non-blocking `try_*` calls of rumqttc's request channel. Two
//! outbound lanes: the normal one is that channel; the urgent one jumps ahead of everything
//! the channel holds (see [`Session::publish_urgent`]).
//!
//! MQTT 3.1.1 or 5 ([`SessionConfig::protocol`]): rumqttc has a client and an event loop for
//! each, wrapped here in one private `Client` and `Driver` so that everything above them is
//! the same code. On 5 the CONNECT carries Maximum Packet Size (the broker then drops larger
//! messages for us) and Session Expiry Interval 0, and publishes carry [`Properties`]. Several
//! broker addresses are tried in turn ([`Rotation`]).
//!
//! rumqttc 0.25.1 behaviours worked around here, each at its place in the code:
//!
//! * TCP_NODELAY is off by default (a request/reply then pays Nagle + delayed ACK, ~44 ms);
//! * with clean session the broker forgets subscriptions on every reconnect and rumqttc does
//!   not restore them: subscribe after every CONNACK, ready only after the SUBACK;
//! * `publish()` returns when the request is queued, and never says which packet id it got:
//!   publishes are counted as they enter the request channel and as they leave it
//!   (`Outgoing::Publish`), which gives each caller that waits for a PUBACK its packet id;
//! * awaiting the client from the poll task can deadlock on its bounded channel: only `try_*`;
//! * no reconnect back-off of its own: `poll()` after an error reconnects at once;
//! * the `cap` of `AsyncClient::new` sizes the request channel (the options field is unused);
//! * events read in the batch that ended with an error are still buffered in `state.events`;
//! * with clean session, everything queued or unacknowledged when the link drops is discarded
//!   at the next CONNACK; dropped here at once (`clean()` + `pending`), so the counts stay true;
//! * the Last Will is not sent on a graceful DISCONNECT: the farewell is published by hand;
//! * the event loop sends its `pending` queue before its request channel: the urgent lane and
//!   the SUBSCRIBE after a CONNACK are put at the front of `pending`.
//! * an incoming packet above the limit fails the connection (the framing cannot skip it):
//!   [`Failure::PacketTooLarge`], counted; on MQTT 5 the broker knows the limit and never
//!   sends one;
//! * v5 only: its options panic on a keep-alive under 5 s, its in-flight table is sized for
//!   65535 unless told otherwise, its event loop does not show whether it is connected (the
//!   session tracks it), and its state error hides a TLS failure from `source()`.
//!
//! Several of these touch public fields of rumqttc's `EventLoop` (`pending`, `state.events`,
//! `mqtt_options`, `clean()`) whose behaviour is not a stable API: docs/operations.md
//! ("Transport") says what to re-check on an upgrade, and why the version is pinned exactly.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, NetworkOptions, Outgoing, QoS, Request, Subscribe, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::auth::Auth;
use crate::backoff::{spread, Backoff};
use crate::tls::{TlsFailure, TlsOptions};

/// MQTT quality of service, as far as this product uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

fn qos5(q: Qos) -> v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
    }
}

/// The MQTT version a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1, what Alibaba Cloud MQTT speaks: the default.
    #[default]
    V311,
    /// MQTT 5: the broker learns our Maximum Packet Size, and publishes carry properties.
    V5,
}

impl Protocol {
    /// `"3.1.1"` or `"5"`, as config files and command lines spell it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "3.1.1" => Some(Protocol::V311),
            "5" | "5.0" => Some(Protocol::V5),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::parse(s).ok_or_else(|| format!("{s:?}: the MQTT protocol is \"3.1.1\" or \"5\""))
    }
}

/// The MQTT 5 publish properties this product uses. Always empty on MQTT 3.1.1, which has
/// none: set on a message sent over 3.1.1, they are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Where the publisher wants an answer (MQTT 5 §3.3.2.3.5).
    pub response_topic: Option<String>,
    /// Opaque bytes a reply copies (MQTT 5 §3.3.2.3.6).
    pub correlation_data: Option<Bytes>,
    /// Seconds the broker keeps the message for a subscriber before dropping it; on a received
    /// message, what is left of it (MQTT 5 §3.3.2.3.3).
    pub message_expiry: Option<u32>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.message_expiry.is_none()
    }

    fn to_v5(&self) -> Option<p5::PublishProperties> {
        if self.is_empty() {
            return None;
        }
        Some(p5::PublishProperties {
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            message_expiry_interval: self.message_expiry,
            ..Default::default()
        })
    }

    fn from_v5(p: Option<p5::PublishProperties>) -> Self {
        match p {
            Some(p) => Self {
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                message_expiry: p.message_expiry_interval,
            },
            None => Self::default(),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    /// Sent on MQTT 5 only.
    pub props: Properties,
}

/// A message as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    /// Set by the broker when the message came from its retained store (MQTT 3.1.1 clears
    /// it on live delivery).
    pub retain: bool,
    /// The QoS it was delivered at.
    pub qos: Qos,
    /// Empty on MQTT 3.1.1.
    pub props: Properties,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            topic: String::new(),
            payload: Bytes::new(),
            retain: false,
            qos: Qos::AtLeastOnce,
            props: Properties::default(),
        }
    }
}

/// Why a message could not be queued for publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("the session is shutting down")]
    Closed,
    #[error("the outgoing queue is full")]
    Full,
}

/// Why a subscription could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscribeError {
    #[error("the broker refused the subscription to {filter}")]
    Refused { filter: String },
    #[error("the subscription was not confirmed within {waited:?} (is the broker reachable?)")]
    Timeout { waited: Duration },
    #[error("the session has ended")]
    Closed,
}

/// Why a connection attempt failed or a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The TLS files or the broker secret could not be read or used (local configuration).
    Setup(String),
    /// The TLS handshake failed for a reason retrying will not fix.
    Tls(TlsFailure),
    /// The broker refused our username or password.
    BadCredentials,
    /// The broker refused the connection as not authorized.
    NotAuthorized,
    /// The broker rejected our client id.
    ClientIdRejected,
    /// The broker refused the connection for a reason that may pass (server unavailable,
    /// protocol version).
    Refused(String),
    /// The broker refused subscriptions the session cannot work without.
    SubscriptionRefused(Vec<String>),
    /// A packet larger than our limit arrived. The MQTT client cannot skip it, so the
    /// connection was closed (on MQTT 3.1.1 the broker has no way to learn the limit).
    PacketTooLarge { size: usize, limit: usize },
    /// The network, a timeout, the broker closing the connection: worth retrying soon.
    Network(String),
}

impl Failure {
    fn from_connection(e: &ConnectionError, limit: usize) -> Failure {
        match e {
            ConnectionError::ConnectionRefused(code) => {
                return match code {
                    ConnectReturnCode::BadUserNamePassword => Failure::BadCredentials,
                    ConnectReturnCode::NotAuthorized => Failure::NotAuthorized,
                    ConnectReturnCode::BadClientId => Failure::ClientIdRejected,
                    other => Failure::Refused(format!("{other:?}")),
                };
            }
            // The fixed header announced more than the limit; rumqttc stops reading there and
            // cannot skip the rest, so the connection is lost.
            ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(size),
            )) => return Failure::PacketTooLarge { size: *size, limit },
            _ => {}
        }
        match crate::tls::classify(e) {
            Some(f) => Failure::Tls(f),
            None => Failure::Network(e.to_string()),
        }
    }

    /// The same classes from MQTT 5's reason codes.
    fn from_connection_v5(e: &v5::ConnectionError, limit: usize) -> Failure {
        use p5::ConnectReturnCode as C;
        match e {
            v5::ConnectionError::ConnectionRefused(code) => {
                return match code {
                    C::BadUserNamePassword | C::BadAuthenticationMethod => Failure::BadCredentials,
                    C::NotAuthorized | C::Banned => Failure::NotAuthorized,
                    C::BadClientId | C::ClientIdentifierNotValid => Failure::ClientIdRejected,
                    other => Failure::Refused(format!("{other:?}")),
                };
            }
            v5::ConnectionError::MqttState(
                v5::StateError::Deserialization(v5::mqttbytes::Error::PayloadSizeLimitExceeded {
                    pkt_size,
                    ..
                })
                | v5::StateError::IncomingPacketTooLarge { pkt_size, .. },
            ) => {
                return Failure::PacketTooLarge {
                    size: *pkt_size,
                    limit,
                }
            }
            // The v5 state error does not name its cause as `source()`, so the TLS
            // classification would not find a handshake alert behind it.
            v5::ConnectionError::MqttState(v5::StateError::Deserialization(
                v5::mqttbytes::Error::Io(io),
            )) => {
                if let Some(f) = crate::tls::classify(io) {
                    return Failure::Tls(f);
                }
            }
            _ => {}
        }
        match crate::tls::classify(e) {
            Some(f) => Failure::Tls(f),
            None => Failure::Network(e.to_string()),
        }
    }

    /// Retrying will not fix it: wait the long refusal back-off, and tell the operator.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Failure::Setup(_)
                | Failure::Tls(_)
                | Failure::BadCredentials
                | Failure::NotAuthorized
                | Failure::ClientIdRejected
        )
    }

    /// The broker (or the local setup) said no, as opposed to the network failing: a caller
    /// waiting for a first connection can give up at once.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Failure::Network(_) | Failure::PacketTooLarge { .. })
    }

    /// Short machine-friendly name, for log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Setup(_) => "local_config",
            Failure::Tls(t) => t.kind(),
            Failure::BadCredentials => "bad_credentials",
            Failure::NotAuthorized => "not_authorized",
            Failure::ClientIdRejected => "client_id_rejected",
            Failure::Refused(_) => "refused",
            Failure::SubscriptionRefused(_) => "subscription_refused",
            Failure::PacketTooLarge { .. } => "packet_too_large",
            Failure::Network(_) => "network",
        }
    }

    /// One line for the log and for the service manager's status.
    pub fn describe(&self) -> String {
        match self {
            Failure::Setup(e) => e.clone(),
            Failure::Tls(t) => t.describe(),
            Failure::BadCredentials => {
                "the broker refused our credentials (bad username or password; check the broker credentials settings)".into()
            }
            Failure::NotAuthorized => {
                "the broker refused the connection as not authorized (check the broker credentials settings and the broker's rules for this client id)".into()
            }
            Failure::ClientIdRejected => {
                "the broker rejected our client id (check the identity settings)".into()
            }
            Failure::Refused(code) => format!("the broker refused the connection ({code})"),
            Failure::SubscriptionRefused(f) => {
                format!("the broker refused the subscription to {} (check its ACL)", f.join(", "))
            }
            Failure::PacketTooLarge { size, limit } => format!(
                "the broker sent a packet of {size} bytes, above our limit of {limit} bytes; the MQTT 3.1.1 client cannot skip it, so the connection was closed (set the broker's maximum packet size below {limit}, or use MQTT 5)"
            ),
            Failure::Network(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The link as the rest of a program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// No session: connecting, or waiting to retry after the failure (if any), or stopped.
    Down(Option<Failure>),
    /// Connected and subscribed. The epoch counts sessions (1 for the first), so a watcher
    /// can tell a reconnect from a steady link.
    Ready(u64),
}

impl LinkState {
    pub fn is_ready(&self) -> bool {
        matches!(self, LinkState::Ready(_))
    }

    /// The epoch of a ready session.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            LinkState::Ready(e) => Some(*e),
            LinkState::Down(_) => None,
        }
    }
}

/// What a session calls back into its user for. Every method runs on the poll task and must
/// return at once.
pub trait Hooks: Send + Sync + 'static {
    /// The Last Will for the next CONNECT; asked before every connect, so it can carry a fresh
    /// timestamp.
    fn will(&self) -> Option<Message> {
        None
    }

    /// Published (on the normal lane) as each session becomes ready, before
    /// [`LinkState::Ready`] is announced: the agent's "online" presence.
    fn on_ready(&self, _epoch: u64) -> Option<Message> {
        None
    }

    /// Published last at a shutdown of a ready session; the session waits (bounded) for its
    /// PUBACK and unsubscribes its fixed filters behind it. The Will does not fire on a clean
    /// DISCONNECT, so this is how the agent says "offline".
    fn farewell(&self) -> Option<Message> {
        None
    }

    /// A one-line account of the link, for the service manager (systemd's STATUS=).
    fn status(&self, _line: &str) {}

    /// A connect failed or the link was lost (called before the back-off), e.g. to count
    /// [`Failure::PacketTooLarge`].
    fn failed(&self, _failure: &Failure) {}

    /// Takes a message the inbound channel has no room for. It runs on the poll task, so it
    /// must be cheap (the agent answers BUSY). By default the message is dropped.
    fn overflow(&self, msg: Inbound) {
        debug!(topic = msg.topic, "inbound queue full; message dropped");
    }
}

/// No will, no presence, no status lines; overflowing messages are dropped.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Sizes of the session's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queues {
    /// rumqttc's request channel: publishes and subscribes waiting for the poll task.
    pub requests: usize,
    /// Urgent messages waiting for the poll task.
    pub urgent: usize,
    /// Room reserved up front for events rumqttc buffers between polls (it holds at most a
    /// read batch, ~10 packets, and grows on demand). rumqttc reserves 100 (~14 KB); a fleet
    /// simulator with thousands of sessions in one process sets 0.
    pub events: usize,
}

/// The event buffer rumqttc 0.25 reserves in `MqttState::new`.
const RUMQTTC_EVENT_RESERVE: usize = 100;

impl Default for Queues {
    fn default() -> Self {
        Self {
            requests: 8192,
            urgent: 16,
            events: RUMQTTC_EVENT_RESERVE,
        }
    }
}

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (an IPv6 literal without brackets).
    pub host: String,
    pub port: u16,
}

/// Which broker of the list the next connect goes to. A session stays on a broker that works
/// and moves to the next one (in list order, wrapping) after every failed connect and every
/// lost link; the back-off runs between attempts as with one broker. It never jumps back to
/// the first on its own: after a failover the fleet stays spread where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    index: usize,
    len: usize,
}

impl Rotation {
    pub fn new(len: usize) -> Self {
        Self {
            index: 0,
            len: len.max(1),
        }
    }

    /// The index of the broker to connect to next.
    pub fn current(&self) -> usize {
        self.index
    }

    /// After a failure on the current broker.
    pub fn failed(&mut self) {
        self.index = (self.index + 1) % self.len;
    }
}

/// How a session connects and what it subscribes.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub client_id: String,
    /// MQTT 3.1.1 (the default) or 5.
    pub protocol: Protocol,
    /// Tried in turn (see [`Rotation`]); never empty when built by [`SessionConfig::new`].
    pub brokers: Vec<Endpoint>,
    /// `Some` for TLS, for every broker of the list; the files are read again before every
    /// connect.
    pub tls: Option<TlsOptions>,
    /// The broker credentials; the secret file is read again before every connect.
    pub auth: Auth,
    /// MQTT keep-alive (zero disables it).
    pub keep_alive: Duration,
    /// TCP + TLS + CONNACK, per attempt; whole seconds, at least 1 s.
    pub connect_timeout: Duration,
    /// Largest packet accepted or sent.
    pub max_packet_size: usize,
    /// QoS 1 publishes in flight before further ones wait.
    pub inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Until the first session, retry at least this often (a caller waits for it with a
    /// deadline); `None`: the back-off alone.
    pub first_retry_max: Option<Duration>,
    /// A connection up this long counts as stable: the back-off starts over after it.
    pub stable_after: Duration,
    /// After a failure only an operator can fix, wait between half and all of this.
    pub refusal_backoff: Duration,
    /// Subscribed after every CONNACK. More can be added later with [`Session::subscribe`].
    pub subscriptions: Vec<String>,
    /// A refused subscription from `subscriptions` drops the link and retries (the agent is
    /// not online without its commands); otherwise the session is ready anyway and
    /// [`Session::refused`] names them.
    pub require_subscriptions: bool,
    /// How long a shutdown waits for the farewell's PUBACK.
    pub farewell_wait: Duration,
    pub queues: Queues,
}

impl SessionConfig {
    /// A configuration with this product's defaults, subscribing nothing.
    pub fn new(client_id: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            client_id: client_id.into(),
            protocol: Protocol::V311,
            brokers: vec![Endpoint {
                host: host.into(),
                port,
            }],
            tls: None,
            auth: Auth::None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            inflight: 1000,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            first_retry_max: None,
            stable_after: Duration::from_secs(10),
            refusal_backoff: Duration::from_secs(300),
            subscriptions: Vec::new(),
            require_subscriptions: false,
            farewell_wait: Duration::from_secs(3),
            queues: Queues::default(),
        }
    }
}

/// `mqtt[s]://host:port` of broker `i`, for logs and status lines.
fn broker_name(cfg: &SessionConfig, i: usize) -> String {
    let scheme = if cfg.tls.is_some() { "mqtts" } else { "mqtt" };
    match cfg.brokers.get(i) {
        Some(e) if e.host.contains(':') => format!("{scheme}://[{}]:{}", e.host, e.port),
        Some(e) => format!("{scheme}://{}:{}", e.host, e.port),
        None => format!("{scheme}://(no broker)"),
    }
}

/// Host and port of broker `i` as rumqttc wants them.
fn address(cfg: &SessionConfig, i: usize) -> (String, u16) {
    match cfg.brokers.get(i) {
        // rumqttc joins host and port with ':' and resolves that; an IPv6 literal needs brackets.
        Some(e) if e.host.contains(':') && !e.host.starts_with('[') => {
            (format!("[{}]", e.host), e.port)
        }
        Some(e) => (e.host.clone(), e.port),
        // An empty list is a caller's bug; the connect fails and says so in the log.
        None => (String::new(), 0),
    }
}

/// rumqttc's MQTT 3.1.1 options for broker `i` (TLS, credentials and the Will are added
/// before each connect by `prepare_connect`).
fn mqtt_options(cfg: &SessionConfig, i: usize) -> MqttOptions {
    let (host, port) = address(cfg, i);
    let mut opts = MqttOptions::new(cfg.client_id.as_str(), host, port);
    let keep_alive = match cfg.keep_alive {
        d if d.is_zero() => Duration::ZERO,
        d => d.max(Duration::from_secs(1)),
    };
    opts.set_clean_session(true)
        .set_keep_alive(keep_alive)
        // rumqttc's default (10 KiB) is below the protocol's payload cap, and an incoming
        // packet over the limit is a connection error that repeats as the broker
        // redelivers it: callers size it deliberately.
        .set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size)
        .set_inflight(cfg.inflight.max(1));
    opts
}

/// The same for MQTT 5.
fn mqtt5_options(cfg: &SessionConfig, i: usize) -> v5::MqttOptions {
    let (host, port) = address(cfg, i);
    let mut opts = v5::MqttOptions::new(cfg.client_id.as_str(), host, port);
    // rumqttc's v5 options panic below 5 s (zero included), where the 3.1.1 ones accept zero.
    let keep_alive = cfg.keep_alive.max(Duration::from_secs(5));
    let max_packet = u32::try_from(cfg.max_packet_size).unwrap_or(u32::MAX);
    opts.set_clean_start(true)
        // Session Expiry Interval 0: the broker forgets the session at the disconnect, as a
        // 3.1.1 clean session does (every reconnect re-subscribes anyway).
        .set_session_expiry_interval(Some(0))
        // Maximum Packet Size: the broker must not send us a larger packet (MQTT 5
        // §3.1.2.11.4), so an oversized publish is dropped by the broker for us instead of
        // closing our connection. rumqttc also reads it as its own incoming limit.
        .set_max_packet_size(Some(max_packet))
        .set_keep_alive(keep_alive)
        .set_connection_timeout(cfg.connect_timeout.as_secs().max(1))
        // Unset, rumqttc sizes its table of unacknowledged publishes for 65535 (~7 MB).
        .set_outgoing_inflight_upper_limit(cfg.inflight.max(1));
    opts.set_network_options(network_options(cfg));
    opts
}

fn network_options(cfg: &SessionConfig) -> NetworkOptions {
    let mut net = NetworkOptions::new();
    // Off by default in rumqttc: every request/reply would pay Nagle + delayed ACK (~44 ms).
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
    net
}

/// The request side of either rumqttc client; used only with `try_*` calls (rumqttc
/// deadlocks a poll task that awaits its client).
enum Client {
    V4(AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    fn try_publish(&self, msg: Message) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(msg.topic, qos(msg.qos), msg.retain, msg.payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let q = qos5(msg.qos);
                match msg.props.to_v5() {
                    Some(p) => {
                        c.try_publish_with_properties(msg.topic, q, msg.retain, msg.payload, p)
                    }
                    None => c.try_publish(msg.topic, q, msg.retain, msg.payload),
                }
                .map_err(|e| e.to_string())
            }
        }
    }

    /// One SUBSCRIBE for all of `filters`, QoS 1.
    fn try_subscribe_many(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| p5::Filter::new(f.clone(), qos5(Qos::AtLeastOnce))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    fn try_unsubscribe(&self, filter: String) {
        let _ = match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        };
    }

    fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// What the session needs from either event loop's events.
#[derive(Debug)]
enum Ev {
    Publish(Inbound),
    PubAck(u16),
    /// A publish was written, with this packet id.
    PublishLeft(u16),
    SubscribeLeft(u16),
    SubAck {
        pkid: u16,
        granted: Vec<bool>,
    },
    ConnAck,
    /// Our DISCONNECT was written.
    DisconnectLeft,
    Other,
}

impl Ev {
    fn from_v4(ev: Event) -> Ev {
        match ev {
            Event::Incoming(Incoming::Publish(p)) => Ev::Publish(Inbound {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
                qos: match p.qos {
                    QoS::AtMostOnce => Qos::AtMostOnce,
                    _ => Qos::AtLeastOnce,
                },
                props: Properties::default(),
            }),
            Event::Incoming(Incoming::PubAck(ack)) => Ev::PubAck(ack.pkid),
            Event::Incoming(Incoming::SubAck(ack)) => Ev::SubAck {
                pkid: ack.pkid,
                granted: ack
                    .return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    .collect(),
            },
            Event::Incoming(Incoming::ConnAck(_)) => Ev::ConnAck,
            Event::Outgoing(o) => Ev::outgoing(o),
            _ => Ev::Other,
        }
    }

    fn from_v5(ev: v5::Event) -> Ev {
        match ev {
            v5::Event::Incoming(v5::Incoming::Publish(p)) => Ev::Publish(Inbound {
                // The broker checked it is UTF-8 (MQTT 5 §4.7.3); no topic aliases are
                // accepted (Topic Alias Maximum 0), so it is never empty.
                topic: match String::from_utf8(p.topic.to_vec()) {
                    Ok(t) => t,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                },
                payload: p.payload,
                retain: p.retain,
                qos: match p.qos {
                    v5::mqttbytes::QoS::AtMostOnce => Qos::AtMostOnce,
                    _ => Qos::AtLeastOnce,
                },
                props: Properties::from_v5(p.properties),
            }),
            v5::Event::Incoming(v5::Incoming::PubAck(ack)) => Ev::PubAck(ack.pkid),
            v5::Event::Incoming(v5::Incoming::SubAck(ack)) => Ev::SubAck {
                pkid: ack.pkid,
                granted: ack
                    .return_codes
                    .iter()
                    .map(|c| matches!(c, p5::SubscribeReasonCode::Success(_)))
                    .collect(),
            },
            v5::Event::Incoming(v5::Incoming::ConnAck(_)) => Ev::ConnAck,
            v5::Event::Outgoing(o) => Ev::outgoing(o),
            _ => Ev::Other,
        }
    }

    fn outgoing(o: Outgoing) -> Ev {
        match o {
            Outgoing::Publish(pkid) => Ev::PublishLeft(pkid),
            Outgoing::Subscribe(pkid) => Ev::SubscribeLeft(pkid),
            Outgoing::Disconnect => Ev::DisconnectLeft,
            _ => Ev::Other,
        }
    }
}

/// Either rumqttc event loop, behind the few operations the session uses. Several of them
/// touch public fields whose behaviour is not a stable API (see the module comment).
#[allow(clippy::large_enum_variant)] // one per session; boxing the 3.1.1 loop buys nothing
enum Driver {
    V4(EventLoop),
    /// Boxed: the larger of the two, and the fleet simulator runs thousands of 3.1.1 ones.
    V5(Box<v5::EventLoop>),
}

impl Driver {
    fn new(cfg: &SessionConfig, i: usize) -> (Client, Driver) {
        // The `cap` here sizes the request channel; rumqttc ignores the options' field of the
        // same name.
        let cap = cfg.queues.requests.max(1);
        match cfg.protocol {
            Protocol::V311 => {
                let (client, mut el) = AsyncClient::new(mqtt_options(cfg, i), cap);
                if cfg.queues.events != RUMQTTC_EVENT_RESERVE {
                    // rumqttc reserves its event buffer up front, whatever the use; the field
                    // is public.
                    el.state.events = VecDeque::with_capacity(cfg.queues.events);
                }
                el.set_network_options(network_options(cfg));
                (Client::V4(client), Driver::V4(el))
            }
            Protocol::V5 => {
                let (client, mut el) = v5::AsyncClient::new(mqtt5_options(cfg, i), cap);
                if cfg.queues.events != RUMQTTC_EVENT_RESERVE {
                    el.state.events = VecDeque::with_capacity(cfg.queues.events);
                }
                (Client::V5(client), Driver::V5(Box::new(el)))
            }
        }
    }

    /// Points the next connect at broker `i`. rumqttc keeps the address in a private field of
    /// its options, with no setter: the options are rebuilt (the event loop reads them at
    /// each connect).
    fn retarget(&mut self, cfg: &SessionConfig, i: usize) {
        match self {
            Driver::V4(el) => el.mqtt_options = mqtt_options(cfg, i),
            Driver::V5(el) => el.options = mqtt5_options(cfg, i),
        }
    }

    /// TLS, credentials and the Will for the next connect.
    fn prepare(
        &mut self,
        tls: Option<Arc<rustls::ClientConfig>>,
        login: Option<(&str, &str)>,
        will: Option<Message>,
    ) {
        match self {
            Driver::V4(el) => {
                let opts = &mut el.mqtt_options;
                if let Some(config) = tls {
                    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                        config,
                    )));
                }
                if let Some((user, password)) = login {
                    opts.set_credentials(user, password);
                }
                if let Some(w) = will {
                    opts.set_last_will(LastWill::new(w.topic, w.payload, qos(w.qos), w.retain));
                }
            }
            Driver::V5(el) => {
                let opts = &mut el.options;
                if let Some(config) = tls {
                    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                        config,
                    )));
                }
                if let Some((user, password)) = login {
                    opts.set_credentials(user, password);
                }
                if let Some(w) = will {
                    opts.set_last_will(p5::LastWill::new(
                        w.topic,
                        w.payload.to_vec(),
                        qos5(w.qos),
                        w.retain,
                        None,
                    ));
                }
            }
        }
    }

    fn scrub_credentials(&mut self) {
        match self {
            Driver::V4(el) => {
                el.mqtt_options.set_credentials("", "");
            }
            Driver::V5(el) => {
                el.options.set_credentials("", "");
            }
        }
    }

    /// The next event; a failure is classified (`limit`: our incoming packet limit).
    async fn poll(&mut self, limit: usize) -> Result<Ev, Failure> {
        match self {
            Driver::V4(el) => el
                .poll()
                .await
                .map(Ev::from_v4)
                .map_err(|e| Failure::from_connection(&e, limit)),
            Driver::V5(el) => el
                .poll()
                .await
                .map(Ev::from_v5)
                .map_err(|e| Failure::from_connection_v5(&e, limit)),
        }
    }

    /// Events rumqttc read in the batch that ended with an error.
    fn take_buffered(&mut self) -> Vec<Ev> {
        match self {
            Driver::V4(el) => el.state.events.drain(..).map(Ev::from_v4).collect(),
            Driver::V5(el) => el.state.events.drain(..).map(Ev::from_v5).collect(),
        }
    }

    /// Drops everything queued or unacknowledged, as rumqttc would at the next CONNACK of a
    /// clean session.
    fn drop_queued(&mut self) {
        match self {
            Driver::V4(el) => {
                el.clean();
                el.pending.clear();
            }
            Driver::V5(el) => {
                el.clean();
                el.pending.clear();
            }
        }
    }

    /// Puts a SUBSCRIBE (QoS 1) in front of everything queued.
    fn subscribe_first(&mut self, filters: &[String]) {
        match self {
            Driver::V4(el) => {
                let filters = filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                el.pending
                    .push_front(Request::Subscribe(Subscribe::new_many(filters)));
            }
            Driver::V5(el) => {
                let filters = filters
                    .iter()
                    .map(|f| p5::Filter::new(f.clone(), qos5(Qos::AtLeastOnce)));
                el.pending
                    .push_front(v5::Request::Subscribe(p5::Subscribe::new_many(
                        filters, None,
                    )));
            }
        }
    }

    /// Puts a publish in front of everything queued.
    fn publish_first(&mut self, msg: Message) {
        match self {
            Driver::V4(el) => {
                let mut p = rumqttc::Publish::from_bytes(msg.topic, qos(msg.qos), msg.payload);
                p.retain = msg.retain;
                el.pending.push_front(Request::Publish(p));
            }
            Driver::V5(el) => {
                let mut p =
                    p5::Publish::new(msg.topic, qos5(msg.qos), msg.payload, msg.props.to_v5());
                p.retain = msg.retain;
                el.pending.push_front(v5::Request::Publish(p));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every lock here is held for a few map or queue operations and never across an await;
    // a panic while holding one leaves nothing half-made that matters more than going on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Matches broker acknowledgements to the callers that wait for them, and holds the
/// subscription set. rumqttc reports `Outgoing::Publish(pkid)` in the order requests leave
/// its channel, so every publish is counted when it enters the channel (under this lock) and
/// again when it leaves; when the two counts meet a caller's number, its packet id is known.
/// Dropping a waiting sender tells its caller the packet was lost with the connection.
#[derive(Default)]
struct Tracker {
    /// Shutdown began or the task ended: nothing more is queued.
    closed: bool,
    pubs_sent: u64,
    pubs_seen: u64,
    pub_waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    pub_inflight: HashMap<u16, oneshot::Sender<()>>,
    subs_sent: u64,
    subs_seen: u64,
    sub_waiters: VecDeque<(u64, oneshot::Sender<Vec<bool>>)>,
    sub_inflight: HashMap<u16, oneshot::Sender<Vec<bool>>>,
    /// The SUBSCRIBE sent after the last CONNACK; it jumps rumqttc's queue, so it is not
    /// counted with the others.
    initial: Option<Initial>,
    /// Urgent publishes put in front of rumqttc's pending queue and not yet written: they
    /// leave before anything in the channel, so they are not counted with the others.
    urgent_queued: usize,
    /// Filters added after the start; the configured ones come first in every SUBSCRIBE.
    added: BTreeSet<String>,
    /// Bumped whenever a filter is added, so a caller can tell whether a session's initial
    /// SUBSCRIBE covered its filters.
    version: u64,
    /// The filter-set version the current session's initial SUBSCRIBE covered.
    session_version: u64,
    /// Filters the broker refused in the current session's initial SUBSCRIBE.
    refused: Arc<[String]>,
}

struct Initial {
    pkid: Option<u16>,
    version: u64,
    filters: Vec<String>,
}

impl Tracker {
    fn publish_left(&mut self, pkid: u16) {
        if self.urgent_queued > 0 {
            self.urgent_queued -= 1;
            return;
        }
        self.pubs_seen += 1;
        while let Some((seq, _)) = self.pub_waiters.front() {
            if *seq > self.pubs_seen {
                break;
            }
            if let Some((seq, tx)) = self.pub_waiters.pop_front() {
                if seq == self.pubs_seen {
                    self.pub_inflight.insert(pkid, tx);
                }
            }
        }
    }

    fn subscribe_left(&mut self, pkid: u16) {
        if let Some(init) = self.initial.as_mut().filter(|i| i.pkid.is_none()) {
            init.pkid = Some(pkid);
            return;
        }
        self.subs_seen += 1;
        while let Some((seq, _)) = self.sub_waiters.front() {
            if *seq > self.subs_seen {
                break;
            }
            if let Some((seq, tx)) = self.sub_waiters.pop_front() {
                if seq == self.subs_seen {
                    self.sub_inflight.insert(pkid, tx);
                }
            }
        }
    }

    /// Everything queued or in flight died with the connection; its waiters learn it by the
    /// dropped senders.
    fn reset(&mut self) {
        self.pubs_seen = self.pubs_sent;
        self.pub_waiters.clear();
        self.pub_inflight.clear();
        self.subs_seen = self.subs_sent;
        self.sub_waiters.clear();
        self.sub_inflight.clear();
        self.initial = None;
        self.urgent_queued = 0;
    }
}

struct Shared {
    client: Client,
    track: Mutex<Tracker>,
    urgent: mpsc::Sender<Message>,
    fixed: Vec<String>,
    /// Connections lost to a packet above our limit ([`Failure::PacketTooLarge`]).
    packet_too_large: AtomicU64,
}

impl Shared {
    fn queue_error(&self, t: &Tracker, e: &str) -> PublishError {
        if t.closed {
            PublishError::Closed
        } else {
            debug!("request channel full: {e}");
            PublishError::Full
        }
    }

    /// Queues a publish on the normal lane, counted (see [`Tracker`]); the caller holds the
    /// tracker lock, so counting order is channel order. `ack` is taken only when queued.
    fn queue(
        &self,
        t: &mut Tracker,
        msg: Message,
        ack: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), PublishError> {
        match self.client.try_publish(msg) {
            Ok(()) => {
                t.pubs_sent += 1;
                if let Some(tx) = ack.take() {
                    let seq = t.pubs_sent;
                    t.pub_waiters.push_back((seq, tx));
                }
                Ok(())
            }
            Err(e) => Err(self.queue_error(t, &e)),
        }
    }
}

/// A running session. Dropping it stops the session abruptly (no farewell, no DISCONNECT:
/// the broker publishes the Will); [`Session::shutdown`] stops it cleanly.
pub struct Session {
    shared: Arc<Shared>,
    link: watch::Receiver<LinkState>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    farewell_wait: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("link", &*self.link.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Session {
    /// Starts the session task (inside a tokio runtime). Inbound messages go to `inbound`.
    pub fn start(
        cfg: SessionConfig,
        hooks: Arc<dyn Hooks>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Session {
        let rotation = Rotation::new(cfg.brokers.len());
        let (client, eventloop) = Driver::new(&cfg, rotation.current());

        let (urgent_tx, urgent_rx) = mpsc::channel(cfg.queues.urgent.max(1));
        let shared = Arc::new(Shared {
            client,
            track: Mutex::new(Tracker::default()),
            urgent: urgent_tx,
            fixed: cfg.subscriptions.clone(),
            packet_too_large: AtomicU64::new(0),
        });
        let (link_tx, link) = watch::channel(LinkState::Down(None));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let broker = broker_name(&cfg, rotation.current());
        let farewell_wait = cfg.farewell_wait;
        let task = tokio::spawn(
            Loop {
                eventloop,
                shared: shared.clone(),
                hooks,
                inbound,
                urgent_rx,
                link: link_tx,
                backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
                rotation,
                broker,
                cfg,
                epoch: 0,
                connected_at: None,
                link_up: false,
                ever_connected: false,
                subscription_refused: None,
            }
            .run(shutdown_rx),
        );
        Session {
            shared,
            link,
            shutdown: Mutex::new(Some(shutdown_tx)),
            task: Mutex::new(Some(task)),
            farewell_wait,
        }
    }

    /// The link state, to watch.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    /// How many connections were lost to a packet above the incoming limit
    /// ([`Failure::PacketTooLarge`]) since the start.
    pub fn packet_too_large(&self) -> u64 {
        self.shared.packet_too_large.load(Ordering::Relaxed)
    }

    /// Filters the broker refused in the current session's first SUBSCRIBE.
    pub fn refused(&self) -> Arc<[String]> {
        lock(&self.shared.track).refused.clone()
    }

    /// Queues a message on the normal lane. Never waits: a full queue is refused at once.
    /// Accepted while the link is down: it goes out after the next connect, unless the
    /// connection it was queued for drops first (then it is discarded, as rumqttc does with a
    /// clean session).
    pub fn publish(&self, msg: Message) -> Result<(), PublishError> {
        let mut t = lock(&self.shared.track);
        if t.closed {
            return Err(PublishError::Closed);
        }
        self.shared.queue(&mut t, msg, &mut None)
    }

    /// Like [`publish`](Self::publish) (QoS 1), and the sender in `ack` is taken (only when
    /// the message is queued) and fires when the broker's PUBACK arrives, or is dropped when
    /// the connection is lost first.
    pub fn publish_with_ack(
        &self,
        msg: Message,
        ack: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), PublishError> {
        let mut t = lock(&self.shared.track);
        if t.closed {
            return Err(PublishError::Closed);
        }
        self.shared.queue(&mut t, msg, ack)
    }

    /// Queues a message ahead of everything waiting in the normal lane: for heartbeats, which
    /// must keep their cadence while thousands of replies wait. While the link is down there
    /// is nothing to jump ahead of and it is dropped (a heartbeat follows every connect).
    pub fn publish_urgent(&self, msg: Message) -> Result<(), PublishError> {
        if lock(&self.shared.track).closed {
            return Err(PublishError::Closed);
        }
        self.shared.urgent.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Full,
            mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
        })
    }

    /// Adds `filters` (QoS 1) to the session's subscriptions, restored after every reconnect,
    /// and waits until the broker confirmed them: either a session's first SUBSCRIBE covered
    /// them, or a SUBSCRIBE of their own was acknowledged.
    pub async fn subscribe(
        &self,
        filters: &[String],
        waited: Duration,
    ) -> Result<(), SubscribeError> {
        let deadline = Instant::now() + waited;
        let timeout = || SubscribeError::Timeout { waited };
        let version = {
            let mut t = lock(&self.shared.track);
            let mut added = false;
            for f in filters {
                if !self.shared.fixed.contains(f) {
                    added |= t.added.insert(f.clone());
                }
            }
            if added {
                t.version += 1;
            }
            t.version
        };
        let mut link = self.link.clone();
        loop {
            match tokio::time::timeout_at(deadline.into(), link.wait_for(LinkState::is_ready)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(SubscribeError::Closed),
                Err(_) => return Err(timeout()),
            }
            let (tx, rx) = oneshot::channel();
            let queued = {
                let mut t = lock(&self.shared.track);
                if t.session_version >= version {
                    return match filters.iter().find(|f| t.refused.contains(f)) {
                        Some(f) => Err(SubscribeError::Refused { filter: f.clone() }),
                        None => Ok(()),
                    };
                }
                if t.closed {
                    return Err(SubscribeError::Closed);
                }
                match self.shared.client.try_subscribe_many(filters) {
                    Ok(()) => {
                        t.subs_sent += 1;
                        let seq = t.subs_sent;
                        t.sub_waiters.push_back((seq, tx));
                        true
                    }
                    Err(e) => {
                        debug!("request channel full: {e}");
                        false
                    }
                }
            };
            if !queued {
                if Instant::now() >= deadline {
                    return Err(timeout());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(granted)) => {
                    return match filters.iter().zip(&granted).find(|(_, ok)| !**ok) {
                        Some((f, _)) => Err(SubscribeError::Refused { filter: f.clone() }),
                        None => Ok(()),
                    };
                }
                // Lost with the connection: the next session's first SUBSCRIBE covers it.
                Ok(Err(_)) => {}
                Err(_) => return Err(timeout()),
            }
        }
    }

    /// Stops cleanly: publishes the farewell when ready (and waits for its PUBACK within
    /// `farewell_wait`), sends DISCONNECT when connected, and waits for the task to end.
    pub async fn shutdown(&self) {
        if let Some(tx) = lock(&self.shutdown).take() {
            let _ = tx.send(());
        }
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            let bound = self.farewell_wait + Duration::from_secs(2);
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Runs when the poll task ends, whether it returns or is aborted: nothing more is queued,
/// and every waiting sender is dropped, which wakes its caller.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut t = lock(&self.0.track);
        t.closed = true;
        t.reset();
    }
}

enum Flow {
    Continue,
    /// Our DISCONNECT has been written.
    Disconnected,
}

struct Loop {
    eventloop: Driver,
    shared: Arc<Shared>,
    hooks: Arc<dyn Hooks>,
    inbound: mpsc::Sender<Inbound>,
    urgent_rx: mpsc::Receiver<Message>,
    link: watch::Sender<LinkState>,
    backoff: Backoff,
    rotation: Rotation,
    /// `mqtt[s]://host:port` of the broker in use (or tried), for logs and status lines.
    broker: String,
    cfg: SessionConfig,
    epoch: u64,
    /// Set at CONNACK, cleared when the connection ends.
    connected_at: Option<Instant>,
    /// Connected now: from a CONNACK to the next error (the v5 event loop does not show
    /// whether it holds a connection, and polling it without one would reconnect).
    link_up: bool,
    ever_connected: bool,
    /// Required subscriptions the broker refused; the DISCONNECT we sent for it is pending.
    subscription_refused: Option<Vec<String>>,
}

impl Loop {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        let _close = CloseOnDrop(self.shared.clone());
        info!(broker = %self.broker, client_id = %self.cfg.client_id, "connecting");
        let mut need_connect = true;
        loop {
            if need_connect {
                if let Err(failure) = self.prepare_connect() {
                    if self.wait_after(failure, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
                need_connect = false;
            }
            let failed = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(msg) = self.urgent_rx.recv() => { self.queue_urgent(msg); None }
                ev = self.eventloop.poll(self.cfg.max_packet_size) => match ev {
                    Ok(ev) => match self.on_event(ev) {
                        Flow::Continue => None,
                        Flow::Disconnected => {
                            let refused = self.subscription_refused.take().unwrap_or_default();
                            Some(Failure::SubscriptionRefused(refused))
                        }
                    },
                    Err(f) => Some(f),
                },
            };
            if let Some(failure) = failed {
                self.link_up = false;
                if let Failure::PacketTooLarge { .. } = failure {
                    self.shared.packet_too_large.fetch_add(1, Ordering::Relaxed);
                }
                need_connect = true;
                self.scrub_credentials();
                self.connection_ended();
                if self.wait_after(failure, &mut shutdown).await {
                    return; // shutdown requested while down: nothing to announce
                }
            }
        }
        self.graceful_shutdown().await;
    }

    /// Reads the TLS files and the broker secret again and puts them, and a fresh Will, into
    /// rumqttc's options for the next connect. The error names what is wrong, never a secret.
    fn prepare_connect(&mut self) -> Result<(), Failure> {
        let broker = broker_name(&self.cfg, self.rotation.current());
        if broker != self.broker {
            self.eventloop.retarget(&self.cfg, self.rotation.current());
            info!(%broker, client_id = %self.cfg.client_id, "connecting");
            self.broker = broker;
        }
        let tls = match &self.cfg.tls {
            Some(tls) => Some(
                tls.client_config()
                    .map_err(|e| Failure::Setup(format!("TLS settings: {e}")))?,
            ),
            None => None,
        };
        let creds = self
            .cfg
            .auth
            .credentials(&self.cfg.client_id)
            .map_err(|e| Failure::Setup(format!("broker credentials: {e}")))?;
        // rumqttc keeps its own copy until `scrub_credentials`; ours is zeroed when dropped.
        let login = creds
            .as_ref()
            .map(|c| (c.username.as_str(), c.password.as_str()));
        let will = self.hooks.will();
        self.eventloop.prepare(tls, login, will);
        Ok(())
    }

    /// Replaces the password in rumqttc's options once a connect attempt is over, so it does
    /// not stay in memory for the life of the connection (rumqttc keeps it for reconnects).
    fn scrub_credentials(&mut self) {
        if self.cfg.auth != Auth::None {
            self.eventloop.scrub_credentials();
        }
    }

    /// After an established connection ended: handles what rumqttc read before the failure,
    /// and drops what the connection took with it.
    fn connection_ended(&mut self) {
        self.subscription_refused = None;
        if self.connected_at.is_none() {
            // A failed connect: nothing left the channel, and what waits there goes out
            // after the next connect.
            return;
        }
        // Events rumqttc buffered before the failure (a message read in the same batch, a
        // PUBACK) are still valid.
        for ev in self.eventloop.take_buffered() {
            let _ = self.on_event(ev);
        }
        // With a clean session rumqttc drops whatever is unacknowledged or still queued at the
        // next CONNACK. Drop it now, under the tracker lock, so the counts stay in step with
        // the channel; the waiters see their senders dropped.
        let mut t = lock(&self.shared.track);
        self.eventloop.drop_queued();
        t.reset();
    }

    /// Marks the link down, logs the failure, and backs off. True if shutdown was requested
    /// meanwhile.
    async fn wait_after(&mut self, failure: Failure, shutdown: &mut oneshot::Receiver<()>) -> bool {
        let was_ready = self.link.borrow().is_ready();
        self.hooks.failed(&failure);
        if let Some(t) = self.connected_at.take() {
            if t.elapsed() >= self.cfg.stable_after {
                self.backoff.reset();
            }
        }
        let broker = &self.broker;
        let delay = if failure.needs_operator() {
            let delay = spread(self.cfg.refusal_backoff);
            let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let what = failure.describe();
            if let Failure::Setup(_) = failure {
                error!(%broker, problem = failure.kind(), retry_in_ms, "cannot prepare the connection: {what}");
                self.hooks.status(&format!(
                    "cannot connect to {broker}: {what}; retrying in {:.0} s",
                    delay.as_secs_f64()
                ));
            } else {
                error!(%broker, problem = failure.kind(), retry_in_ms,
                    "connection to the broker refused: {what}; waiting the refusal back-off before the next attempt");
                self.hooks.status(&format!(
                    "{what}; broker {broker}; retrying in {:.0} s",
                    delay.as_secs_f64()
                ));
            }
            delay
        } else {
            let mut delay = self.backoff.next_delay();
            if !self.ever_connected {
                if let Some(cap) = self.cfg.first_retry_max {
                    delay = delay.min(cap);
                }
            }
            let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let secs = delay.as_secs_f64();
            if was_ready {
                warn!(%broker, problem = failure.kind(), error = %failure, retry_in_ms, "connection lost");
                self.hooks.status(&format!(
                    "connection to {broker} lost ({failure}), retrying in {secs:.1} s"
                ));
            } else {
                warn!(%broker, problem = failure.kind(), error = %failure, attempt = self.backoff.attempts(), retry_in_ms, "broker unreachable");
                self.hooks.status(&format!(
                    "broker {broker} unreachable ({failure}), retrying in {secs:.1} s"
                ));
            }
            delay
        };
        self.link.send_replace(LinkState::Down(Some(failure)));
        self.rotation.failed();
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shutdown => true,
        }
    }

    /// Puts an urgent message in front of rumqttc's pending requests: the event loop sends
    /// pending requests before it reads its request channel, where the normal lane may hold
    /// thousands. Down, there is nothing to jump ahead of: it is dropped.
    fn queue_urgent(&mut self, msg: Message) {
        if !self.link.borrow().is_ready() {
            return;
        }
        lock(&self.shared.track).urgent_queued += 1;
        self.eventloop.publish_first(msg);
    }

    fn on_event(&mut self, ev: Ev) -> Flow {
        match ev {
            Ev::Publish(msg) => match self.inbound.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => self.hooks.overflow(msg),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("inbound channel closed; message not taken");
                }
            },
            Ev::PubAck(pkid) => {
                let tx = lock(&self.shared.track).pub_inflight.remove(&pkid);
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
            }
            Ev::PublishLeft(pkid) => lock(&self.shared.track).publish_left(pkid),
            Ev::SubscribeLeft(pkid) => lock(&self.shared.track).subscribe_left(pkid),
            Ev::SubAck { pkid, granted } => self.on_suback(pkid, granted),
            Ev::ConnAck => {
                self.link_up = true;
                self.on_connack();
            }
            Ev::DisconnectLeft => return Flow::Disconnected,
            Ev::Other => {}
        }
        Flow::Continue
    }

    fn on_connack(&mut self) {
        self.scrub_credentials();
        self.connected_at = Some(Instant::now());
        self.ever_connected = true;
        let (version, filters) = {
            let t = lock(&self.shared.track);
            let mut filters = self.shared.fixed.clone();
            filters.extend(t.added.iter().cloned());
            (t.version, filters)
        };
        if filters.is_empty() {
            self.set_ready(version, Vec::new());
            return;
        }
        debug!(?filters, protocol = %self.cfg.protocol, "connected; subscribing");
        self.eventloop.subscribe_first(&filters);
        lock(&self.shared.track).initial = Some(Initial {
            pkid: None,
            version,
            filters,
        });
        // Clean session: the broker forgot every subscription, and rumqttc does not restore
        // them. At the front of `pending`, this SUBSCRIBE leaves before anything a caller
        // queued, and is the first `Outgoing::Subscribe` of this connection.
    }

    fn on_suback(&mut self, pkid: u16, granted: Vec<bool>) {
        let mut t = lock(&self.shared.track);
        let initial = t.initial.as_ref().is_some_and(|i| i.pkid == Some(pkid));
        if !initial {
            if let Some(tx) = t.sub_inflight.remove(&pkid) {
                let _ = tx.send(granted);
            }
            return;
        }
        let Some(init) = t.initial.take() else {
            return;
        };
        drop(t);
        let refused: Vec<String> = init
            .filters
            .into_iter()
            .zip(granted.iter().chain(std::iter::repeat(&false)))
            .filter(|(_, ok)| !**ok)
            .map(|(f, _)| f)
            .collect();
        if self.cfg.require_subscriptions {
            let required: Vec<String> = refused
                .iter()
                .filter(|f| self.shared.fixed.contains(f))
                .cloned()
                .collect();
            if !required.is_empty() {
                // Not ready without them: disconnect, and let the back-off retry.
                error!(filters = ?required, "broker refused the subscription (check its ACL); reconnecting");
                self.subscription_refused = Some(required);
                self.shared.client.try_disconnect();
                return;
            }
        }
        for f in &refused {
            error!("the broker refused the subscription to {f}");
        }
        self.set_ready(init.version, refused);
    }

    fn set_ready(&mut self, version: u64, refused: Vec<String>) {
        self.epoch += 1;
        {
            let mut t = lock(&self.shared.track);
            t.session_version = version;
            t.refused = refused.into();
            if let Some(msg) = self.hooks.on_ready(self.epoch) {
                if let Err(e) = self.shared.queue(&mut t, msg, &mut None) {
                    warn!(error = %e, "could not queue the ready message");
                }
            }
        }
        info!(broker = %self.broker, epoch = self.epoch, "online");
        self.hooks.status(&format!("connected to {}", self.broker));
        self.link.send_replace(LinkState::Ready(self.epoch));
    }

    /// Publishes the farewell itself (a clean DISCONNECT suppresses the Will), waits for its
    /// PUBACK within a bound, then disconnects.
    async fn graceful_shutdown(mut self) {
        let ready = self.link.borrow().is_ready();
        let mut acked = None;
        {
            let mut t = lock(&self.shared.track);
            // Nothing can slip in between this and the farewell: it is the last message queued.
            t.closed = true;
            if ready {
                if let Some(msg) = self.hooks.farewell() {
                    let (tx, rx) = oneshot::channel();
                    if self.shared.queue(&mut t, msg, &mut Some(tx)).is_ok() {
                        acked = Some(rx);
                    }
                    // No new messages now.
                    for f in &self.shared.fixed {
                        self.shared.client.try_unsubscribe(f.clone());
                    }
                }
            }
        }
        self.link.send_replace(LinkState::Down(None));
        if let Some(mut rx) = acked {
            let wait = self.cfg.farewell_wait;
            let waited = tokio::time::timeout(wait, async {
                loop {
                    tokio::select! {
                        biased;
                        r = &mut rx => return r.map_err(|_| "the connection dropped".to_string()),
                        ev = self.eventloop.poll(self.cfg.max_packet_size) => match ev {
                            Ok(ev) => { let _ = self.on_event(ev); }
                            Err(e) => { self.link_up = false; return Err(e.to_string()) }
                        },
                    }
                }
            })
            .await;
            match waited {
                Ok(Ok(())) => info!("farewell acknowledged"),
                Ok(Err(e)) => warn!(error = %e, "link failed while saying farewell"),
                Err(_) => warn!("broker did not acknowledge the farewell in time"),
            }
        }
        if self.connected_at.is_some() && self.link_up {
            self.shared.client.try_disconnect();
            let limit = self.cfg.max_packet_size;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match self.eventloop.poll(limit).await {
                        Ok(Ev::DisconnectLeft) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        info!("disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError};

    fn classify(e: ConnectionError) -> Failure {
        Failure::from_connection(&e, 1024)
    }

    #[test]
    fn refusals_are_classified() {
        use ConnectReturnCode as C;
        let refused = |c| classify(ConnectionError::ConnectionRefused(c));
        assert_eq!(refused(C::BadUserNamePassword), Failure::BadCredentials);
        assert_eq!(refused(C::NotAuthorized), Failure::NotAuthorized);
        assert_eq!(refused(C::BadClientId), Failure::ClientIdRejected);
        for f in [
            refused(C::BadUserNamePassword),
            refused(C::NotAuthorized),
            refused(C::BadClientId),
        ] {
            assert!(f.needs_operator() && f.is_refusal(), "{f:?}");
        }
        // Worth retrying soon, but still the broker saying no.
        let busy = refused(C::ServiceUnavailable);
        assert!(matches!(busy, Failure::Refused(_)), "{busy:?}");
        assert!(!busy.needs_operator() && busy.is_refusal());
        assert_eq!(busy.kind(), "refused");
    }

    #[test]
    fn mqtt5_reason_codes_fall_in_the_same_classes() {
        use p5::ConnectReturnCode as C;
        let refused =
            |c| Failure::from_connection_v5(&v5::ConnectionError::ConnectionRefused(c), 1);
        for (code, want) in [
            (C::BadUserNamePassword, Failure::BadCredentials),
            (C::BadAuthenticationMethod, Failure::BadCredentials),
            (C::NotAuthorized, Failure::NotAuthorized),
            (C::Banned, Failure::NotAuthorized),
            (C::ClientIdentifierNotValid, Failure::ClientIdRejected),
        ] {
            let f = refused(code);
            assert_eq!(f, want);
            assert!(f.needs_operator() && f.is_refusal(), "{f:?}");
        }
        let busy = refused(C::ServerBusy);
        assert!(matches!(busy, Failure::Refused(_)), "{busy:?}");
        assert!(!busy.needs_operator() && busy.is_refusal());
        // A TLS alert behind the v5 state error, which names no source.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let e = v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::Io(alert),
        ));
        let f = Failure::from_connection_v5(&e, 1);
        assert!(
            matches!(f, Failure::Tls(TlsFailure::ClientCertRefused(_))),
            "{f:?}"
        );
    }

    #[test]
    fn an_oversized_packet_is_its_own_kind_on_both_versions() {
        let v4 = ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(2_000_000),
        ));
        let v5e = v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded {
                pkt_size: 2_000_000,
                max: 1024,
            },
        ));
        for f in [
            Failure::from_connection(&v4, 1024),
            Failure::from_connection_v5(&v5e, 1024),
        ] {
            assert_eq!(
                f,
                Failure::PacketTooLarge {
                    size: 2_000_000,
                    limit: 1024
                }
            );
            assert_eq!(f.kind(), "packet_too_large");
            // Retried soon: the broker does not redeliver it (clean session).
            assert!(!f.needs_operator() && !f.is_refusal());
            assert!(f.describe().contains("2000000 bytes"), "{f}");
        }
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::parse("3.1.1"), Some(Protocol::V311));
        assert_eq!(Protocol::parse("5"), Some(Protocol::V5));
        assert_eq!(Protocol::parse("4"), None);
        assert_eq!(Protocol::default(), Protocol::V311);
        assert_eq!(Protocol::V5.to_string(), "5");
        assert!("3".parse::<Protocol>().is_err());
    }

    #[test]
    fn tls_failures_are_classified_through_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        let f = classify(ConnectionError::Io(io));
        assert_eq!(f, Failure::Tls(TlsFailure::ServerCertExpired));
        assert!(f.needs_operator());
        assert_eq!(f.kind(), "server_cert_expired");
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let f = classify(ConnectionError::Io(alert));
        assert!(
            matches!(f, Failure::Tls(TlsFailure::ClientCertRefused(_))),
            "{f:?}"
        );
        assert!(f.describe().contains("refused our client certificate"));
    }

    #[test]
    fn network_failures_are_retried_soon() {
        for e in [
            ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )),
            ConnectionError::NetworkTimeout,
            ConnectionError::FlushTimeout,
        ] {
            let f = classify(e);
            assert!(matches!(f, Failure::Network(_)), "{f:?}");
            assert!(!f.needs_operator() && !f.is_refusal());
            assert_eq!(f.kind(), "network");
        }
    }

    #[test]
    fn setup_and_subscription_failures() {
        let f = Failure::Setup("TLS settings: cannot read CA file /x".into());
        assert!(f.needs_operator() && f.is_refusal());
        assert_eq!(f.kind(), "local_config");
        let f = Failure::SubscriptionRefused(vec!["csg-down/a".into()]);
        assert!(!f.needs_operator());
        assert!(f.describe().contains("csg-down/a"));
    }

    /// The bytes MQTT 5 adds to a PUBLISH, as rumqttc encodes it (docs/protocol.md, "MQTT 5").
    #[test]
    fn mqtt5_publish_overhead_in_bytes() {
        let topic = "csg-down/gw-001";
        let payload = vec![b'x'; 200];
        let v4 = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload.clone()).size();
        let v5 = |props: Properties| {
            p5::Publish::new(
                topic,
                qos5(Qos::AtLeastOnce),
                payload.clone(),
                props.to_v5(),
            )
            .size()
        };
        // The property length, one byte, even with no property.
        assert_eq!(v5(Properties::default()) - v4, 1);
        // Response Topic: identifier, 2-byte length, the topic.
        let rt = Properties {
            response_topic: Some("csg-up/console-1".into()),
            ..Properties::default()
        };
        assert_eq!(v5(rt) - v4, 1 + 3 + 16);
        // Correlation Data: identifier, 2-byte length, the data.
        let cd = Properties {
            correlation_data: Some(Bytes::from_static(b"0123456789abcdef")),
            ..Properties::default()
        };
        assert_eq!(v5(cd) - v4, 1 + 3 + 16);
        // Message Expiry Interval: identifier and a 4-byte integer.
        let exp = Properties {
            message_expiry: Some(30),
            ..Properties::default()
        };
        assert_eq!(v5(exp) - v4, 1 + 5);
    }

    #[test]
    fn brokers_are_tried_in_turn_and_a_working_one_is_kept() {
        let mut r = Rotation::new(3);
        let mut order = vec![r.current()];
        for _ in 0..4 {
            r.failed();
            order.push(r.current());
        }
        assert_eq!(order, vec![0, 1, 2, 0, 1]);
        // A broker that works is kept: only a failure moves on, from where the session is.
        let kept = r;
        assert_eq!(kept.current(), 1);
        r.failed();
        assert_eq!(r.current(), 2);
        // One broker: every reconnect goes back to it.
        let mut one = Rotation::new(1);
        one.failed();
        assert_eq!(one.current(), 0);
        assert_eq!(Rotation::new(0).current(), 0);
    }

    #[test]
    fn broker_names_and_options_follow_the_list() {
        let mut cfg = SessionConfig::new("c", "a", 1);
        cfg.brokers.push(Endpoint {
            host: "::1".into(),
            port: 2,
        });
        assert_eq!(broker_name(&cfg, 0), "mqtt://a:1");
        assert_eq!(broker_name(&cfg, 1), "mqtt://[::1]:2");
        assert_eq!(mqtt_options(&cfg, 1).broker_address(), ("[::1]".into(), 2));
        cfg.tls = Some(TlsOptions::default());
        assert_eq!(broker_name(&cfg, 0), "mqtts://a:1");
    }

    #[test]
    fn tracker_matches_waiters_in_channel_order() {
        let mut t = Tracker::default();
        // Three publishes enter the channel; only the second one waits for its PUBACK.
        let (tx, mut rx) = oneshot::channel();
        t.pubs_sent = 1;
        t.pubs_sent += 1;
        t.pub_waiters.push_back((t.pubs_sent, tx));
        t.pubs_sent += 1;
        t.publish_left(7);
        assert!(t.pub_inflight.is_empty());
        t.publish_left(8);
        t.publish_left(9);
        assert_eq!(t.pub_inflight.keys().copied().collect::<Vec<_>>(), vec![8]);
        t.pub_inflight.remove(&8).unwrap().send(()).unwrap();
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn urgent_publishes_are_not_counted() {
        let mut t = Tracker::default();
        let (tx, _rx) = oneshot::channel();
        t.pubs_sent = 1;
        t.pub_waiters.push_back((1, tx));
        // An urgent heartbeat jumped the queue and leaves first.
        t.urgent_queued = 1;
        t.publish_left(0);
        assert!(t.pub_inflight.is_empty());
        t.publish_left(5);
        assert!(t.pub_inflight.contains_key(&5));
    }

    #[test]
    fn reset_drops_waiters_and_resyncs_counts() {
        let mut t = Tracker::default();
        let (tx, rx) = oneshot::channel();
        t.pubs_sent = 5;
        t.pub_waiters.push_back((5, tx));
        t.urgent_queued = 2;
        t.publish_left(1);
        t.reset();
        assert_eq!(t.pubs_seen, 5);
        assert_eq!(t.urgent_queued, 0);
        drop(rx); // the waiter's sender is gone: the caller sees the loss
        let (tx, mut rx) = oneshot::channel();
        t.pubs_sent += 1;
        t.pub_waiters.push_back((t.pubs_sent, tx));
        t.publish_left(3);
        t.pub_inflight.remove(&3).unwrap().send(()).unwrap();
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn initial_subscribe_is_not_counted() {
        let mut t = Tracker::default();
        let (tx, _rx) = oneshot::channel();
        t.subs_sent = 1;
        t.sub_waiters.push_back((1, tx));
        t.initial = Some(Initial {
            pkid: None,
            version: 0,
            filters: vec![],
        });
        t.subscribe_left(1);
        assert_eq!(t.initial.as_ref().unwrap().pkid, Some(1));
        t.subscribe_left(2);
        assert!(t.sub_inflight.contains_key(&2));
    }

    /// Starts a session and waits (at most 5 s) for the first failure it reports.
    async fn first_failure(cfg: SessionConfig) -> (Session, LinkState) {
        let (tx, _rx) = mpsc::channel(1);
        let s = Session::start(cfg, Arc::new(NoHooks), tx);
        let mut link = s.link();
        let state = tokio::time::timeout(
            Duration::from_secs(5),
            link.wait_for(|l| matches!(l, LinkState::Down(Some(_)))),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        (s, state)
    }

    #[tokio::test]
    async fn an_unreachable_broker_reports_network_failures() {
        let mut cfg = SessionConfig::new("t1", "127.0.0.1", 1);
        cfg.reconnect_min = Duration::from_millis(10);
        cfg.reconnect_max = Duration::from_millis(20);
        let (s, state) = first_failure(cfg).await;
        match state {
            LinkState::Down(Some(Failure::Network(e))) => assert!(e.contains("refused"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        // Queued while down: accepted (it would go out after the next connect).
        let msg = Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: Qos::AtLeastOnce,
            retain: false,
            props: Properties::default(),
        };
        assert_eq!(s.publish(msg.clone()), Ok(()));
        s.shutdown().await;
        assert_eq!(s.publish(msg), Err(PublishError::Closed));
    }

    #[tokio::test]
    async fn unreadable_setup_files_are_a_setup_failure() {
        let mut cfg = SessionConfig::new("t2", "127.0.0.1", 1);
        cfg.tls = Some(TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        });
        let (_s, state) = first_failure(cfg).await;
        match state {
            LinkState::Down(Some(f @ Failure::Setup(_))) => {
                assert!(f.describe().contains("/nonexistent/ca.pem"), "{f}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
