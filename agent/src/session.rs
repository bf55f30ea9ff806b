//! The agent's use of the shared MQTT session (`csg_transport::session`): what it subscribes,
//! its presence (the Will, "online" once subscribed, "offline" at a clean shutdown), the
//! systemd STATUS= lines, and the BUSY answer for commands the dispatcher has no room for.
//!
//! The session subscribes the command topic after every CONNACK (clean session) and is ready
//! only once the broker granted it; a refused subscription drops the link and retries. A
//! failure retrying cannot fix (a TLS verification failure, refused credentials) waits
//! `mqtt.auth_failure_backoff_s` instead of the normal back-off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use csg_protocol::status::{Presence, PresenceState};
use csg_protocol::{now_ms, AgentTopics, BrokerList};
use csg_transport::session::{Endpoint, Failure, Hooks, Message, Queues, SessionConfig};
pub use csg_transport::session::{Inbound, LinkState};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::config::Config;
use crate::stats::Stats;
use crate::uplink::Qos;
use crate::AGENT_VERSION;

/// Takes a command the dispatcher has no room for (see `Session::start`).
pub type Overflow = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Size of the normal outgoing queue. Under a flood every request is answered (with BUSY if
/// need be), and the answers wait here while the broker takes them in: large enough to hold a
/// flood's worth (~32k replies of ~300 bytes: ~10 MB at most), so none is dropped.
const REQUEST_QUEUE: usize = 32_768;
/// How long a clean shutdown waits for the broker to acknowledge "offline".
const OFFLINE_ACK_WAIT: Duration = Duration::from_secs(3);

/// The agent's queue sizes (the fleet simulator passes smaller ones).
pub fn default_queues() -> Queues {
    Queues {
        requests: REQUEST_QUEUE,
        ..Queues::default()
    }
}

/// Handle to a running session.
pub struct Session {
    /// Publishing handle given to the dispatcher and the heartbeat task.
    pub uplink: Arc<csg_transport::Session>,
    pub link: watch::Receiver<LinkState>,
    /// How the connection is doing, in words (the latest line; systemd's STATUS=).
    pub status: watch::Receiver<String>,
}

struct AgentHooks {
    status: watch::Sender<String>,
    stats: Arc<Stats>,
    topics: AgentTopics,
    instance: String,
    overflow: Overflow,
}

impl AgentHooks {
    fn presence(&self, state: PresenceState, reason: &str) -> Option<Message> {
        let p = Presence::new(&self.instance, state, AGENT_VERSION, reason, now_ms());
        match serde_json::to_vec(&p) {
            Ok(json) => Some(Message {
                topic: self.topics.presence.clone(),
                payload: Bytes::from(json),
                qos: Qos::AtLeastOnce,
                retain: self.topics.retain_and_will,
                props: Default::default(),
            }),
            Err(e) => {
                debug!(error = %e, "presence not serialized");
                None
            }
        }
    }
}

impl Hooks for AgentHooks {
    fn will(&self) -> Option<Message> {
        // Refreshed before every connect: the Will carries a timestamp.
        if self.topics.retain_and_will {
            self.presence(PresenceState::Offline, "connection_lost")
        } else {
            None
        }
    }

    fn on_ready(&self, _epoch: u64) -> Option<Message> {
        self.presence(PresenceState::Online, "connected")
    }

    fn farewell(&self) -> Option<Message> {
        self.presence(PresenceState::Offline, "shutdown")
    }

    fn status(&self, line: &str) {
        // The run forwards it to its notifier (systemd's STATUS=) when it has one.
        self.status.send_replace(line.to_string());
    }

    fn overflow(&self, msg: Inbound) {
        (self.overflow)(msg);
    }

    fn failed(&self, failure: &Failure) {
        if let Failure::PacketTooLarge { .. } = failure {
            Stats::inc(&self.stats.packet_too_large);
        }
    }
}

/// The session's broker list, in the configured order.
pub fn endpoints(list: &BrokerList) -> Vec<Endpoint> {
    list.urls()
        .iter()
        .map(|u| Endpoint {
            host: u.host.clone(),
            port: u.port,
        })
        .collect()
}

impl Session {
    /// Starts the session task. Commands received are sent to `inbound`.
    /// `overflow` gets the commands that find the dispatcher's queue full: it must answer them
    /// cheaply (BUSY), because it runs on the poll task. `queues`: `None` for the defaults.
    pub fn start(
        cfg: &Config,
        queues: Option<Queues>,
        inbound: mpsc::Sender<Inbound>,
        overflow: Overflow,
        stats: Arc<Stats>,
    ) -> Session {
        let m = &cfg.mqtt;
        let mut sc = SessionConfig::new(cfg.client_id.as_str(), "", 0);
        sc.brokers = endpoints(&cfg.broker);
        sc.protocol = m.protocol;
        sc.tls = m.tls.options.clone();
        sc.auth = m.auth.method.clone();
        sc.keep_alive = m.keep_alive;
        sc.connect_timeout = m.connect_timeout;
        sc.max_packet_size = m.max_packet_bytes;
        sc.inflight = m.max_inflight;
        sc.reconnect_min = m.reconnect_min;
        sc.reconnect_max = m.reconnect_max;
        sc.stable_after = m.stable_after;
        sc.refusal_backoff = m.auth_failure_backoff;
        sc.subscriptions = cfg.topics.subscription.iter().cloned().collect();
        sc.require_subscriptions = true;
        sc.farewell_wait = OFFLINE_ACK_WAIT;
        sc.queues = queues.unwrap_or_else(default_queues);
        let (status_tx, status) = watch::channel(String::new());
        let hooks = AgentHooks {
            status: status_tx,
            stats,
            topics: cfg.topics.clone(),
            instance: cfg.client_id.instance().as_str().to_string(),
            overflow,
        };
        let session = csg_transport::Session::start(sc, Arc::new(hooks), inbound);
        Session {
            link: session.link(),
            status,
            uplink: Arc::new(session),
        }
    }

    /// Publishes offline (if online), disconnects, and waits for the session task to end.
    pub async fn shutdown(self) {
        self.uplink.shutdown().await;
    }
}
