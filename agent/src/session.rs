//! The MQTT session: the only module that touches rumqttc.
//!
//! It dials out, keeps the connection, and after every CONNACK re-subscribes the command topic
//! (the session is clean, so the broker forgot it) and only then reports itself online. It
//! reconnects forever with exponential back-off and full jitter, never exits on a broker or
//! network error, and on shutdown publishes "offline", waits for the broker's PubAck (bounded),
//! and disconnects cleanly.
//!
//! Before every connect it reads the TLS files and the broker secret again (rotation needs no
//! restart) and puts them into rumqttc; the password is wiped from rumqttc's options again
//! once the attempt is over. A failure that retrying cannot fix (the broker's certificate
//! expired, unknown CA, name mismatch, our client certificate refused, credentials refused)
//! is logged as such, reported in `Session::status` (systemd's STATUS=), and followed by the long
//! `mqtt.auth_failure_backoff_s` instead of the normal back-off.
//!
//! The poll loop never waits on anything but the network: inbound commands are handed to the
//! dispatcher with `try_send`, and all publishing goes through `SessionUplink`, which queues
//! with `try_publish` (rumqtt issues 263/910: awaiting the client from the poll task deadlocks).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::status::{Presence, PresenceState};
use csg_protocol::{now_ms, AgentTopics};
use csg_transport::{Auth, TlsOptions};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    NetworkOptions, Outgoing, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::uplink::{OutMessage, Qos, Uplink, UplinkError};
use crate::AGENT_VERSION;

/// A command as it came off the wire.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
}

/// Takes a command the dispatcher has no room for (see `Session::start`).
pub type Overflow = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Link state seen by the rest of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Offline,
    /// Subscribed and announced; `epoch` counts connections, so a watcher can tell a
    /// reconnect from a steady connection.
    Online {
        epoch: u64,
    },
}

/// Size of rumqttc's request queue (the `cap` of `AsyncClient::new`; the options field of the
/// same name is ignored by the v4 client). Under a flood every request is answered (with BUSY if
/// need be), and the answers wait here while the broker takes them in: large enough to hold a
/// flood's worth (~32k replies of ~300 bytes: ~10 MB at most), so none is dropped.
const REQUEST_QUEUE: usize = 32_768;
/// Urgent messages (heartbeats) waiting for the poll task: a couple at most in practice.
const URGENT_QUEUE: usize = 16;
/// How long a clean shutdown waits for the broker to acknowledge "offline".
const OFFLINE_ACK_WAIT: Duration = Duration::from_secs(3);

/// Publishing handle given to the dispatcher and the heartbeat task.
pub struct SessionUplink {
    /// `None` once shutdown began. The lock makes "offline" the last message queued: nothing
    /// can slip in between the closing check and the queueing.
    client: Mutex<Option<AsyncClient>>,
    /// Messages that jump the queue (heartbeats): the poll task puts them in front of rumqttc's
    /// pending requests, which it sends before anything waiting in its request channel.
    urgent: mpsc::Sender<OutMessage>,
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

impl Uplink for SessionUplink {
    fn publish(&self, msg: OutMessage) -> Result<(), UplinkError> {
        let guard = self.client.lock().expect("uplink lock");
        let client = guard.as_ref().ok_or(UplinkError::Closed)?;
        client
            .try_publish(msg.topic, qos(msg.qos), msg.retain, msg.payload)
            .map_err(|_| UplinkError::Full)
    }

    fn publish_urgent(&self, msg: OutMessage) -> Result<(), UplinkError> {
        let guard = self.client.lock().expect("uplink lock");
        guard.as_ref().ok_or(UplinkError::Closed)?;
        self.urgent.try_send(msg).map_err(|_| UplinkError::Full)
    }
}

/// Handle to a running session.
pub struct Session {
    pub uplink: Arc<SessionUplink>,
    pub link: watch::Receiver<LinkState>,
    /// One line saying how the connection is doing ("connected to …", "broker … unreachable,
    /// retrying in …"), for whoever reports to a service manager; only the latest matters.
    pub status: watch::Receiver<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts the session task. Commands received are sent to `inbound`.
    /// `overflow` gets the commands that find the dispatcher's queue full: it must answer them
    /// cheaply (BUSY), because it runs on the poll task.
    pub fn start(cfg: &Config, inbound: mpsc::Sender<Inbound>, overflow: Overflow) -> Session {
        let mut opts = MqttOptions::new(
            cfg.client_id.as_str(),
            cfg.broker.host.clone(),
            cfg.broker.port,
        );
        opts.set_clean_session(true)
            .set_keep_alive(cfg.mqtt.keep_alive)
            .set_max_packet_size(cfg.mqtt.max_packet_bytes, cfg.mqtt.max_packet_bytes)
            .set_inflight(cfg.mqtt.max_inflight);
        if cfg.topics.retain_and_will {
            opts.set_last_will(will(&cfg.topics));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
        // rumqttc reserves room for 100 buffered events (~14 KB) per session; it is drained at
        // every poll and holds at most a read batch (10 packets), so let it grow on demand.
        // One agent does not notice; a fleet simulator running 10k sessions does.
        eventloop.state.events = std::collections::VecDeque::new();
        let mut net = NetworkOptions::new();
        // Without it every request/reply round trip pays Nagle + delayed ACK (~44 ms).
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(cfg.mqtt.connect_timeout.as_secs());
        eventloop.set_network_options(net);

        let (urgent_tx, urgent_rx) = mpsc::channel(URGENT_QUEUE);
        let uplink = Arc::new(SessionUplink {
            client: Mutex::new(Some(client.clone())),
            urgent: urgent_tx,
        });
        let (link_tx, link) = watch::channel(LinkState::Offline);
        let (status_tx, status) = watch::channel(String::new());
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(
            SessionLoop {
                eventloop,
                client,
                urgent_rx,
                uplink: uplink.clone(),
                topics: cfg.topics.clone(),
                broker: cfg.broker.to_string(),
                backoff: Backoff::new(cfg.mqtt.reconnect_min, cfg.mqtt.reconnect_max),
                tls: cfg.mqtt.tls.options.clone(),
                auth: cfg.mqtt.auth.method.clone(),
                client_id: cfg.client_id.to_string(),
                auth_failure_backoff: cfg.mqtt.auth_failure_backoff,
                need_connect: true,
                stable_after: cfg.mqtt.stable_after,
                inbound,
                overflow,
                link_tx,
                status_tx,
                epoch: 0,
                connected_at: None,
                sub_pkid: None,
                unacked: HashSet::new(),
            }
            .run(shutdown_rx),
        );
        Session {
            uplink,
            link,
            status,
            shutdown: Some(shutdown_tx),
            task,
        }
    }

    /// Publishes offline (if online), disconnects, and waits for the session task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ =
            tokio::time::timeout(OFFLINE_ACK_WAIT + Duration::from_secs(2), &mut self.task).await;
    }
}

fn presence_bytes(topics: &AgentTopics, state: PresenceState, reason: &str) -> Bytes {
    let instance = topics
        .presence
        .rsplit('/')
        .nth(1)
        .expect("presence topic has an instance level");
    let p = Presence::new(instance, state, AGENT_VERSION, reason, now_ms());
    Bytes::from(serde_json::to_vec(&p).expect("presence serializes"))
}

fn will(topics: &AgentTopics) -> LastWill {
    LastWill::new(
        topics.presence.clone(),
        presence_bytes(topics, PresenceState::Offline, "connection_lost").to_vec(),
        QoS::AtLeastOnce,
        true,
    )
}

/// A connection failure that retrying will not fix, as (kind for the log, explanation):
/// refused credentials, and TLS verification on either side.
fn refusal(e: &ConnectionError) -> Option<(&'static str, String)> {
    if let ConnectionError::ConnectionRefused(code) = e {
        return match code {
            ConnectReturnCode::BadUserNamePassword => Some((
                "bad_credentials",
                "the broker refused our credentials (bad username or password; check [mqtt.auth])"
                    .to_string(),
            )),
            ConnectReturnCode::NotAuthorized => Some((
                "not_authorized",
                "the broker refused the connection as not authorized (check [mqtt.auth] and the broker's rules for this client id)"
                    .to_string(),
            )),
            ConnectReturnCode::BadClientId => Some((
                "client_id_rejected",
                "the broker rejected our client id (check [identity])".to_string(),
            )),
            _ => None,
        };
    }
    csg_transport::tls::classify(e).map(|f| (f.kind(), f.describe()))
}

struct SessionLoop {
    eventloop: EventLoop,
    /// The poll task's own handle: used only with `try_*` calls.
    client: AsyncClient,
    urgent_rx: mpsc::Receiver<OutMessage>,
    uplink: Arc<SessionUplink>,
    topics: AgentTopics,
    broker: String,
    backoff: Backoff,
    /// TLS files to read before each connect (`None`: plain TCP).
    tls: Option<TlsOptions>,
    auth: Auth,
    client_id: String,
    auth_failure_backoff: Duration,
    /// The next poll opens a new connection: prepare TLS and credentials first.
    need_connect: bool,
    stable_after: Duration,
    inbound: mpsc::Sender<Inbound>,
    overflow: Overflow,
    link_tx: watch::Sender<LinkState>,
    status_tx: watch::Sender<String>,
    epoch: u64,
    connected_at: Option<Instant>,
    /// Packet id of our SUBSCRIBE, to match its SUBACK.
    sub_pkid: Option<u16>,
    /// QoS 1 publishes written to the current connection and not yet acknowledged.
    unacked: HashSet<u16>,
}

enum Step {
    Continue,
    Failed(ConnectionError),
}

impl SessionLoop {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        info!(broker = %self.broker, client_id = %self.eventloop.mqtt_options.client_id(), "connecting");
        loop {
            if self.need_connect {
                if let Err(problem) = self.prepare_connect() {
                    let delay = self.long_delay();
                    error!(broker = %self.broker, problem = "local_config", retry_in_ms = delay.as_millis() as u64,
                        "cannot prepare the connection: {problem}");
                    self.status_tx.send_replace(format!(
                        "cannot connect to {}: {problem}; retrying in {:.0} s",
                        self.broker,
                        delay.as_secs_f64()
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = &mut shutdown => return,
                    }
                }
                self.need_connect = false;
            }
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(msg) = self.urgent_rx.recv() => { self.queue_urgent(msg); Step::Continue }
                ev = self.eventloop.poll() => match ev {
                    Ok(ev) => { self.on_event(ev); Step::Continue }
                    Err(e) => Step::Failed(e),
                },
            };
            if let Step::Failed(e) = step {
                self.need_connect = true;
                self.scrub_credentials();
                if self.on_error(e, &mut shutdown).await {
                    return; // shutdown requested while offline: nothing to announce
                }
            }
        }
        self.graceful_shutdown().await;
    }

    /// Reads the TLS files and the broker secret again and puts them into rumqttc's options
    /// for the next connect. The error names what is wrong, never a secret.
    fn prepare_connect(&mut self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            let config = tls.client_config().map_err(|e| format!("mqtt.tls: {e}"))?;
            self.eventloop
                .mqtt_options
                .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        let creds = self
            .auth
            .credentials(&self.client_id)
            .map_err(|e| format!("mqtt.auth: {e}"))?;
        if let Some(c) = creds {
            // rumqttc keeps its own copy until `scrub_credentials`; ours is zeroed here.
            self.eventloop
                .mqtt_options
                .set_credentials(c.username.as_str(), c.password.as_str());
        }
        Ok(())
    }

    /// Replaces the password in rumqttc's options once a connect attempt is over, so it does
    /// not stay in memory for the life of the connection.
    fn scrub_credentials(&mut self) {
        if self.auth != Auth::None {
            self.eventloop.mqtt_options.set_credentials("", "");
        }
    }

    /// The back-off after a failure retrying will not fix: between half and all of
    /// `mqtt.auth_failure_backoff_s`, jittered so a fleet does not come back in step.
    fn long_delay(&self) -> Duration {
        let full = self.auth_failure_backoff.as_millis() as u64;
        Duration::from_millis(fastrand::u64(full / 2..=full))
    }

    /// Puts a message in front of rumqttc's pending requests: the event loop sends pending
    /// requests before it reads its request channel, where replies may be queued by the
    /// thousand under a flood. Offline, there is nothing to jump ahead of: it is dropped (a
    /// heartbeat follows every connect anyway).
    fn queue_urgent(&mut self, msg: OutMessage) {
        if !matches!(*self.link_tx.borrow(), LinkState::Online { .. }) {
            return;
        }
        let mut p = rumqttc::Publish::from_bytes(msg.topic, qos(msg.qos), msg.payload);
        p.retain = msg.retain;
        self.eventloop
            .pending
            .push_front(rumqttc::Request::Publish(p));
    }

    fn set_online(&mut self) {
        self.epoch += 1;
        let payload = presence_bytes(&self.topics, PresenceState::Online, "connected");
        if let Err(e) = self.client.try_publish(
            self.topics.presence.clone(),
            QoS::AtLeastOnce,
            self.topics.retain_and_will,
            payload,
        ) {
            warn!(error = %e, "could not queue online presence");
        }
        info!(broker = %self.broker, epoch = self.epoch, "online");
        self.status_tx
            .send_replace(format!("connected to {}", self.broker));
        self.link_tx
            .send_replace(LinkState::Online { epoch: self.epoch });
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.scrub_credentials();
                self.connected_at = Some(Instant::now());
                self.unacked.clear();
                debug!("connack");
                match &self.topics.subscription {
                    // Clean session: the broker forgot every subscription, so make it again,
                    // and report online only once the SUBACK confirms it.
                    Some(topic) => {
                        if let Err(e) = self.client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                            error!(error = %e, "could not queue subscribe");
                        }
                    }
                    None => self.set_online(),
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => self.sub_pkid = Some(pkid),
            Event::Incoming(Packet::SubAck(ack)) if Some(ack.pkid) == self.sub_pkid => {
                self.sub_pkid = None;
                if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                {
                    self.set_online();
                } else {
                    // Not online without commands: drop the link and let back-off retry.
                    error!(
                        topic = ?self.topics.subscription,
                        "broker refused the command subscription (check its ACL); reconnecting"
                    );
                    let _ = self.client.try_disconnect();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let msg = Inbound {
                    topic: p.topic,
                    payload: p.payload,
                };
                match self.inbound.try_send(msg) {
                    Ok(()) => {}
                    // Dispatcher saturated: answered BUSY at once, so the console retries.
                    Err(mpsc::error::TrySendError::Full(msg)) => (self.overflow)(msg),
                    // Stopping: the console's retry will bring it to the next run.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        debug!("inbound queue closed; command not taken")
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                self.unacked.insert(pkid);
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.unacked.remove(&ack.pkid);
            }
            _ => {}
        }
    }

    /// Handles a lost or failed connection: back off, then let the next poll reconnect.
    /// Returns true if shutdown was requested meanwhile.
    async fn on_error(&mut self, e: ConnectionError, shutdown: &mut oneshot::Receiver<()>) -> bool {
        let was_online = matches!(*self.link_tx.borrow(), LinkState::Online { .. });
        self.link_tx.send_replace(LinkState::Offline);
        self.sub_pkid = None;
        self.unacked.clear();
        if let Some(t) = self.connected_at.take() {
            if t.elapsed() >= self.stable_after {
                self.backoff.reset();
            }
        }
        // The Will carries a timestamp: refresh it for the next connection.
        if self.topics.retain_and_will {
            self.eventloop
                .mqtt_options
                .set_last_will(will(&self.topics));
        }
        if let Some((kind, what)) = refusal(&e) {
            let delay = self.long_delay();
            error!(broker = %self.broker, problem = kind, retry_in_ms = delay.as_millis() as u64,
                "connection to the broker refused: {what}; waiting mqtt.auth_failure_backoff_s before the next attempt");
            self.status_tx.send_replace(format!(
                "{what}; broker {}; retrying in {:.0} s",
                self.broker,
                delay.as_secs_f64()
            ));
            return tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = shutdown => true,
            };
        }
        let delay = self.backoff.next_delay();
        let secs = delay.as_secs_f64();
        self.status_tx.send_replace(if was_online {
            format!(
                "connection to {} lost ({e}), retrying in {secs:.1} s",
                self.broker
            )
        } else {
            format!(
                "broker {} unreachable ({e}), retrying in {secs:.1} s",
                self.broker
            )
        });
        if was_online {
            warn!(broker = %self.broker, error = %e, retry_in_ms = delay.as_millis() as u64, "connection lost");
        } else {
            warn!(broker = %self.broker, error = %e, attempt = self.backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "broker unreachable");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shutdown => true,
        }
    }

    /// Publishes offline itself (a clean DISCONNECT suppresses the Will), waits for the
    /// broker's PubAck within a bound, then disconnects.
    async fn graceful_shutdown(mut self) {
        let online = matches!(*self.link_tx.borrow(), LinkState::Online { .. });
        {
            let mut guard = self.uplink.client.lock().expect("uplink lock");
            guard.take();
            if online {
                let payload = presence_bytes(&self.topics, PresenceState::Offline, "shutdown");
                let _ = self.client.try_publish(
                    self.topics.presence.clone(),
                    QoS::AtLeastOnce,
                    self.topics.retain_and_will,
                    payload,
                );
                // rumqttc does not say which packet id a publish got. Requests leave its queue
                // in order, so an UNSUBSCRIBE queued right behind "offline" marks the point where
                // "offline" has been written; from then on, an empty unacked set means it was
                // acknowledged. Unsubscribing is also what we want: no new commands now.
                let _ = self.client.try_unsubscribe(self.topics.commands.clone());
            }
        }
        self.link_tx.send_replace(LinkState::Offline);
        if online {
            let waited = tokio::time::timeout(OFFLINE_ACK_WAIT, async {
                let mut marker_sent = false;
                loop {
                    match self.eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Unsubscribe(_))) => marker_sent = true,
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                            self.unacked.insert(pkid);
                        }
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            self.unacked.remove(&a.pkid);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                    if marker_sent && self.unacked.is_empty() {
                        return Ok(());
                    }
                }
            })
            .await;
            match waited {
                Ok(Ok(())) => info!("offline presence acknowledged"),
                Ok(Err(e)) => warn!(error = %e, "link failed while announcing offline"),
                Err(_) => warn!("broker did not acknowledge offline presence in time"),
            }
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        info!("disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_retrying_cannot_fix_are_named() {
        let kind = |e: ConnectionError| refusal(&e).map(|(k, _)| k);
        assert_eq!(
            kind(ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword
            )),
            Some("bad_credentials")
        );
        assert_eq!(
            kind(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            )),
            Some("not_authorized")
        );
        // Worth retrying soon: the broker is busy, or the network failed.
        assert_eq!(
            kind(ConnectionError::ConnectionRefused(
                ConnectReturnCode::ServiceUnavailable
            )),
            None
        );
        assert_eq!(
            kind(ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused"
            ))),
            None
        );
        assert_eq!(kind(ConnectionError::NetworkTimeout), None);
    }
}
