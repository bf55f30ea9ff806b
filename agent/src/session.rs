//! The MQTT session: the only module that touches rumqttc.
//!
//! It dials out, keeps the connection, and after every CONNACK re-subscribes the command topic
//! (the session is clean, so the broker forgot it) and only then reports itself online. It
//! reconnects forever with exponential back-off and full jitter, never exits on a broker or
//! network error, and on shutdown publishes "offline", waits for the broker's PubAck (bounded),
//! and disconnects cleanly.
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
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, SubscribeReasonCode,
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
/// same name is ignored by the v4 client).
const REQUEST_QUEUE: usize = 4096;
/// Packets in flight towards the broker before rumqttc holds further publishes back.
const INFLIGHT: u16 = 1024;
/// How long a clean shutdown waits for the broker to acknowledge "offline".
const OFFLINE_ACK_WAIT: Duration = Duration::from_secs(3);

/// Publishing handle given to the dispatcher and the heartbeat task.
pub struct SessionUplink {
    /// `None` once shutdown began. The lock makes "offline" the last message queued: nothing
    /// can slip in between the closing check and the queueing.
    client: Mutex<Option<AsyncClient>>,
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
}

/// Handle to a running session.
pub struct Session {
    pub uplink: Arc<SessionUplink>,
    pub link: watch::Receiver<LinkState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts the session task. Commands received are sent to `inbound`.
    pub fn start(cfg: &Config, inbound: mpsc::Sender<Inbound>) -> Session {
        let mut opts = MqttOptions::new(
            cfg.client_id.as_str(),
            cfg.broker.host.clone(),
            cfg.broker.port,
        );
        opts.set_clean_session(true)
            .set_keep_alive(cfg.mqtt.keep_alive)
            .set_max_packet_size(cfg.mqtt.max_packet_bytes, cfg.mqtt.max_packet_bytes)
            .set_inflight(INFLIGHT);
        if cfg.topics.retain_and_will {
            opts.set_last_will(will(&cfg.topics));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
        let mut net = NetworkOptions::new();
        // Without it every request/reply round trip pays Nagle + delayed ACK (~44 ms).
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(cfg.mqtt.connect_timeout.as_secs());
        eventloop.set_network_options(net);

        let uplink = Arc::new(SessionUplink {
            client: Mutex::new(Some(client.clone())),
        });
        let (link_tx, link) = watch::channel(LinkState::Offline);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(
            SessionLoop {
                eventloop,
                client,
                uplink: uplink.clone(),
                topics: cfg.topics.clone(),
                broker: cfg.broker.to_string(),
                backoff: Backoff::new(cfg.mqtt.reconnect_min, cfg.mqtt.reconnect_max),
                stable_after: cfg.mqtt.stable_after,
                inbound,
                link_tx,
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

struct SessionLoop {
    eventloop: EventLoop,
    /// The poll task's own handle: used only with `try_*` calls.
    client: AsyncClient,
    uplink: Arc<SessionUplink>,
    topics: AgentTopics,
    broker: String,
    backoff: Backoff,
    stable_after: Duration,
    inbound: mpsc::Sender<Inbound>,
    link_tx: watch::Sender<LinkState>,
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
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ev = self.eventloop.poll() => match ev {
                    Ok(ev) => { self.on_event(ev); Step::Continue }
                    Err(e) => Step::Failed(e),
                },
            };
            if let Step::Failed(e) = step {
                if self.on_error(e, &mut shutdown).await {
                    return; // shutdown requested while offline: nothing to announce
                }
            }
        }
        self.graceful_shutdown().await;
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
        crate::notify::status(&format!("connected to {}", self.broker));
        self.link_tx
            .send_replace(LinkState::Online { epoch: self.epoch });
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
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
                if let Err(e) = self.inbound.try_send(msg) {
                    // Dispatcher saturated or stopping: the console's retry will bring it again.
                    debug!(error = %e, "inbound queue refused a command");
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
        let delay = self.backoff.next_delay();
        let secs = delay.as_secs_f64();
        crate::notify::status(&if was_online {
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
