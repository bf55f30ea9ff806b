//! Status from MQTT, on the one transport session: heartbeats through a shared subscription
//! (`$share/{group}/{status}/+`), so the replicas of one group split them, and presence on a
//! plain subscription (`{status}/+/presence`), so every replica sees every change (and, in
//! standard mode, every gateway's retained presence at start).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use csg_protocol::TopicParents;
use csg_transport::{Hooks, Inbound, LinkState, Session, SessionConfig};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use super::ingest::{parse_status, DropLog, IngestStats, StatusMessage, StatusSource};

/// Inbound messages buffered between the session's poll task and the fleet: about a second
/// of 10k gateways' heartbeats; beyond it they are dropped and counted (`overflow`).
pub const DEFAULT_QUEUE: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IngestError {
    #[error("share group {0:?} is invalid: 1-64 characters of [A-Za-z0-9_.:-]")]
    BadShareGroup(String),
    #[error("{0}")]
    BadTopics(String),
}

/// A shared subscription's group name: one MQTT topic level without wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroup(String);

impl ShareGroup {
    pub fn new(s: &str) -> Result<Self, IngestError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(IngestError::BadShareGroup(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The two filters: heartbeats shared by the group, presence seen by every replica.
pub fn filters(parents: &TopicParents, group: &ShareGroup) -> [String; 2] {
    let [heartbeats, presence] = parents.status_filters();
    [format!("$share/{}/{heartbeats}", group.as_str()), presence]
}

pub struct MqttIngestConfig {
    /// Broker, TLS, credentials, keep-alive; its `subscriptions` are replaced by [`filters`].
    pub session: SessionConfig,
    pub parents: TopicParents,
    pub share_group: ShareGroup,
    pub queue: usize,
}

struct IngestHooks {
    stats: Arc<IngestStats>,
}

impl Hooks for IngestHooks {
    fn overflow(&self, _msg: Inbound) {
        // Runs on the poll task: count only. The next heartbeat replaces the lost one.
        self.stats.overflow.fetch_add(1, Ordering::Relaxed);
    }
}

/// The MQTT [`StatusSource`].
pub struct MqttStatusSource {
    session: Session,
    rx: mpsc::Receiver<Inbound>,
    parents: TopicParents,
    stats: Arc<IngestStats>,
    log: DropLog,
}

impl MqttStatusSource {
    /// Starts the session (inside a tokio runtime); it connects, subscribes after every
    /// CONNACK and reconnects on its own.
    pub fn start(cfg: MqttIngestConfig) -> Result<Self, IngestError> {
        if let Some(e) = cfg.parents.validate().first() {
            return Err(IngestError::BadTopics(e.to_string()));
        }
        let mut session = cfg.session;
        session.subscriptions = filters(&cfg.parents, &cfg.share_group).to_vec();
        // Without these subscriptions the console is blind: a refusal drops the link and is
        // retried (and shows in the link state) rather than passing as ready.
        session.require_subscriptions = true;
        let stats = Arc::new(IngestStats::default());
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let hooks = Arc::new(IngestHooks {
            stats: stats.clone(),
        });
        let session = Session::start(session, hooks, tx);
        Ok(Self {
            session,
            rx,
            parents: cfg.parents,
            stats,
            log: DropLog::new(Duration::from_secs(60)),
        })
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.session.link()
    }

    /// Waits until subscribed (within `wait`).
    pub async fn ready(&self, wait: Duration) -> bool {
        let mut link = self.session.link();
        let ready = tokio::time::timeout(wait, link.wait_for(LinkState::is_ready)).await;
        matches!(ready, Ok(Ok(_)))
    }

    pub async fn shutdown(&self) {
        self.session.shutdown().await;
    }
}

impl StatusSource for MqttStatusSource {
    async fn next(&mut self) -> Option<StatusMessage> {
        loop {
            let msg = self.rx.recv().await?;
            match parse_status(&self.parents, &msg.topic, &msg.payload, msg.retain) {
                Ok(status) => {
                    self.stats.count(&status);
                    return Some(status);
                }
                Err(why) => {
                    self.stats.bad(why);
                    self.log.dropped(why, &msg.topic);
                }
            }
        }
    }
}
