//! The broker connection: options, [`Console::connect`], and the routing of what arrives.
//!
//! The MQTT session itself (connect, subscribe after every CONNACK, SUBACK, reconnect with
//! back-off, PUBACK tracking) is `csg_transport`'s. On top of it, one routing task takes every
//! inbound message: replies go by request id to the call waiting for them, status messages to
//! the watches that want them; neither ever waits.
//!
//! The session subscribes the reply topic and every watch filter again after each reconnect,
//! and is ready only after the SUBACK. Calls wait for a ready session before each send and
//! re-send at once when a new session starts, because a reply published while the console was
//! away is lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::{
    now_ms, BrokerList, ClientId, GroupId, IdentityError, InstanceId, Reply, RequestId, Scheme,
    StatusTopic, TopicMode, TopicParents,
};
pub(crate) use csg_transport::PublishError as QueueError;
use csg_transport::{
    Auth, Endpoint, Failure, Hooks, Inbound, LinkState, Message, Properties, Protocol, Qos, Queues,
    Session, SessionConfig, TlsOptions,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::ids::IdGenerator;
use crate::watch::{StatusEvent, WatchEvent};

/// Inbound messages waiting for the routing task. It never waits on anything, so this only
/// absorbs bursts; a message that finds it full is dropped (a call re-sends on silence).
const INBOUND_QUEUE: usize = 8192;

/// Largest MQTT packet accepted or sent. The MQTT client's default (10 KiB) is below the
/// protocol's own 64 KiB payload cap, and an incoming packet over the limit is a connection
/// error that repeats forever as the broker redelivers it; 1 MiB leaves room for large replies.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Outgoing QoS 1 publishes kept unacknowledged before sending stops. The MQTT client's
/// default of 100 would throttle a fan-out to a thousand gateways.
pub const DEFAULT_INFLIGHT: u16 = 1000;

/// Capacity of the session's outgoing queue. A full queue makes callers wait briefly.
pub const DEFAULT_REQUEST_CHANNEL_CAPACITY: usize = 8192;

/// MQTT 5 Message Expiry Interval for a request whose `deadline_ms` is `deadline`: the time
/// left, rounded up to whole seconds, so the broker drops a command nobody may run any more
/// (the agent's own deadline check stays the rule). At least 1 s: 0 is not an interval.
pub fn expiry_s(deadline_ms: u64, now_ms: u64) -> u32 {
    let left = deadline_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    u32::try_from(left).unwrap_or(u32::MAX)
}

/// The TCP + TLS + CONNACK timeout of one connect attempt: an equal share of the overall
/// `connect_timeout` for each of `brokers`, so a broker that never answers (it drops SYNs, or
/// accepts and stays silent) cannot use up the whole wait before the next one is tried. The
/// MQTT client counts whole seconds, so the share is rounded down (attempts then fit in the
/// wait), and at least 1 s.
pub fn attempt_timeout(connect_timeout: Duration, brokers: usize) -> Duration {
    let n = u64::try_from(brokers.max(1)).unwrap_or(u64::MAX);
    Duration::from_secs((connect_timeout.as_secs() / n).max(1))
}

/// Whether `Console::connect` stops waiting at this failure instead of letting the session go
/// on to the next attempt. With one broker any refusal ends it: retrying the same broker
/// within seconds will not change its answer. With several, only what an operator must fix
/// (credentials, authorization, client id, TLS, local files) does, as every node would say
/// the same; a node that refuses for a passing reason (a cluster node in an election answers
/// "server unavailable") leaves the others to try.
pub(crate) fn ends_the_wait(failure: &Failure, brokers: usize) -> bool {
    if brokers <= 1 {
        failure.is_refusal()
    } else {
        failure.needs_operator()
    }
}

/// How a console connects and which topics it uses.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// `mqtt://host[:port]` (plain TCP) or `mqtts://host[:port]` (TLS 1.2+, port 8883 by
    /// default); several (one scheme) are tried in turn: the session stays on one that works
    /// and moves to the next after a failed connect or a lost link.
    pub broker: BrokerList,
    /// TLS settings for `mqtts://` (CA file or system roots, server-name override, client
    /// certificate). Files are checked by [`Console::connect`] and read again before every
    /// reconnect.
    pub tls: TlsOptions,
    /// Broker credentials. The secret file is checked by [`Console::connect`] and read again
    /// before every reconnect.
    pub auth: Auth,
    /// The Alibaba Cloud MQTT group: the first half of the client ID.
    pub group_id: GroupId,
    /// This console's id: the second half of the client ID and the end of its reply topic.
    /// Two consoles connected with the same id would keep disconnecting each other.
    pub console_id: InstanceId,
    pub parents: TopicParents,
    pub mode: TopicMode,
    /// MQTT keep-alive; whole seconds, at least 1 s (0 disables it).
    pub keep_alive: Duration,
    /// How long [`Console::connect`] (and [`Console::watch`]) wait for a ready session. Each
    /// connect attempt (TCP + TLS + CONNACK) gets an equal share of it, see
    /// [`attempt_timeout`], so every broker of the list is tried within it.
    pub connect_timeout: Duration,
    pub inflight: u16,
    pub request_channel_capacity: usize,
    pub max_packet_size: usize,
    /// MQTT 3.1.1 (the default) or 5; on 5 a request carries a Message Expiry Interval from
    /// its `deadline_ms`.
    pub protocol: Protocol,
    /// Filters subscribed besides the reply topic, again after every reconnect (a service's
    /// status filters, shared ones included). They are required: when the broker refuses one,
    /// the link stays down (and says so in its state) rather than passing as ready.
    pub subscriptions: Vec<String>,
    /// Where every inbound message that is not a reply goes (status, shared-subscription
    /// deliveries included), besides the watches. `None`: nowhere.
    pub tap: Option<Tap>,
}

/// A channel for the inbound messages that are not replies, so that one console session can
/// also carry a service's status ingest. Sending never waits: a message that finds the channel
/// full (or the session's own inbound queue full) is dropped and counted in `overflow`.
#[derive(Debug, Clone)]
pub struct Tap {
    pub tx: mpsc::Sender<Inbound>,
    pub overflow: Arc<AtomicU64>,
}

impl ConsoleOptions {
    /// Options with the standard topic layout and this crate's defaults.
    pub fn new(broker: impl Into<BrokerList>, group_id: GroupId, console_id: InstanceId) -> Self {
        Self {
            broker: broker.into(),
            tls: TlsOptions::default(),
            auth: Auth::None,
            group_id,
            console_id,
            parents: TopicParents::default(),
            mode: TopicMode::Standard,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            inflight: DEFAULT_INFLIGHT,
            request_channel_capacity: DEFAULT_REQUEST_CHANNEL_CAPACITY,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            protocol: Protocol::V311,
            subscriptions: Vec::new(),
            tap: None,
        }
    }
}

/// Why a console could not be set up or connected.
#[derive(Debug, Clone, Error)]
pub enum ConsoleError {
    #[error("broker {broker}: {reason}")]
    Tls { broker: String, reason: String },
    #[error("broker credentials: {0}")]
    Auth(String),
    #[error("invalid console identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("invalid topic parents: {0}")]
    Topics(String),
    #[error("could not connect to broker {broker} within {waited:?}: {last_error}")]
    Connect {
        broker: String,
        waited: Duration,
        last_error: String,
    },
    #[error("broker {broker} refused the connection: {reason}")]
    Refused { broker: String, reason: String },
    #[error("broker {broker} refused the subscription to the reply topic {topic}")]
    ReplySubscriptionRefused { broker: String, topic: String },
    #[error("the console's connection task has stopped")]
    Closed,
}

/// A connection to the broker, shared by every call, fan-out and watch made through it.
///
/// Cheap to clone; the connection closes when the last clone is dropped (abruptly) or when
/// [`Console::disconnect`] is called (cleanly). Must be created inside a tokio runtime.
#[derive(Clone)]
pub struct Console {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("client_id", &self.inner.client_id.as_str())
            .field("broker", &self.inner.opts.broker.to_string())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) opts: ConsoleOptions,
    pub(crate) client_id: ClientId,
    pub(crate) reply_topic: String,
    pub(crate) mqtt: Session,
    pub(crate) shared: Arc<Shared>,
    /// The session's link state: a call waits for `Ready` and re-sends when the epoch changes.
    pub(crate) session: watch::Receiver<LinkState>,
    pub(crate) ids: IdGenerator,
    router: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.router).take() {
            task.abort();
        }
    }
}

/// State shared between callers and the routing task. Every lock is held only for a few map
/// operations and never across an await.
pub(crate) struct Shared {
    /// Calls waiting for a reply, by request id.
    pub(crate) replies: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    pub(crate) subs: Mutex<Subscriptions>,
    parents: TopicParents,
    reply_prefix: String,
    tap: Option<Tap>,
}

/// Counts the messages the session's inbound queue had no room for, when a tap wants them.
struct ConsoleHooks {
    overflow: Option<Arc<AtomicU64>>,
}

impl Hooks for ConsoleHooks {
    fn overflow(&self, msg: Inbound) {
        // Runs on the poll task: count only. A call re-sends on silence; a heartbeat is
        // replaced by the next one.
        if let Some(o) = &self.overflow {
            o.fetch_add(1, Ordering::Relaxed);
        }
        debug!(topic = msg.topic, "inbound queue full; message dropped");
    }
}

/// The watches to deliver status to.
#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) next_watcher: u64,
}

pub(crate) struct Watcher {
    pub(crate) id: u64,
    /// `None` means every instance.
    pub(crate) instances: Option<HashSet<InstanceId>>,
    pub(crate) tx: mpsc::Sender<StatusEvent>,
    pub(crate) dropped: Arc<AtomicU64>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave a half-made update behind
    // that matters more than stopping every call, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Console {
    /// Connects to the broker and waits (up to `connect_timeout`) until the session is ready:
    /// connected and, where the console subscribes its reply topic, subscribed.
    ///
    /// Failed attempts are retried with back-off until then; after that, the connection is
    /// restored in the background whenever it drops.
    pub async fn connect(opts: ConsoleOptions) -> Result<Console, ConsoleError> {
        let console = Console::start(opts)?;
        console.wait_ready().await?;
        Ok(console)
    }

    /// Checks the options and starts the session without waiting for the broker: it connects,
    /// subscribes and reconnects in the background, and [`Console::link`] tells how it is
    /// doing. A service that must run (and say "broker down") while its broker is away starts
    /// this way; a call made meanwhile waits for the link within its own timeout.
    pub fn start(opts: ConsoleOptions) -> Result<Console, ConsoleError> {
        let broker = opts.broker.to_string();
        let tls = match opts.broker.scheme() {
            Scheme::Mqtts => {
                // Read once now, so a problem with the files is reported before any I/O.
                opts.tls.client_config().map_err(|e| ConsoleError::Tls {
                    broker: broker.clone(),
                    reason: e.to_string(),
                })?;
                Some(opts.tls.clone())
            }
            Scheme::Mqtt if opts.tls.is_set() => {
                return Err(ConsoleError::Tls {
                    broker,
                    reason:
                        "TLS options are given but the URL is mqtt:// (plain TCP); use mqtts://"
                            .into(),
                })
            }
            Scheme::Mqtt => None,
        };
        let auth_problems = opts.auth.check_shape("");
        if !auth_problems.is_empty() {
            return Err(ConsoleError::Auth(auth_problems.join("; ")));
        }
        let errs = opts.parents.validate();
        if !errs.is_empty() {
            let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
            return Err(ConsoleError::Topics(msgs.join("; ")));
        }
        let client_id = ClientId::new(opts.group_id.clone(), opts.console_id.clone())?;
        // Read once now, so a missing secret file is reported before any I/O.
        opts.auth
            .credentials(client_id.as_str())
            .map_err(ConsoleError::Auth)?;
        let reply_topic = opts.parents.console_reply_topic(opts.mode, &client_id);
        // Real Alibaba P2P delivers to the client without a subscription; other brokers need one.
        let reply_subscription = match opts.mode {
            TopicMode::Standard | TopicMode::P2p { subscribe: true } => Some(reply_topic.clone()),
            TopicMode::P2p { subscribe: false } => None,
        };

        let mut sc = SessionConfig::new(client_id.as_str(), "", 0);
        sc.brokers = opts
            .broker
            .urls()
            .iter()
            .map(|u| Endpoint {
                host: u.host.clone(),
                port: u.port,
            })
            .collect();
        sc.protocol = opts.protocol;
        sc.tls = tls;
        sc.auth = opts.auth.clone();
        sc.keep_alive = opts.keep_alive;
        sc.connect_timeout = attempt_timeout(opts.connect_timeout, sc.brokers.len());
        sc.max_packet_size = opts.max_packet_size;
        sc.inflight = opts.inflight;
        sc.reconnect_min = Duration::from_millis(200);
        sc.reconnect_max = Duration::from_secs(5);
        // Until the first session someone waits in `connect` with a deadline: retry at least
        // every second then, so a broker back after 3 s is found before a 5 s deadline. One
        // console is not a fleet; it cannot storm a broker.
        sc.first_retry_max = Some(Duration::from_secs(1));
        // Resetting the back-off on every CONNACK instead would let a broker that accepts and
        // then drops us at once (another client taking over our client ID) be hammered.
        sc.stable_after = Duration::from_secs(10);
        sc.refusal_backoff = Duration::from_secs(5);
        sc.subscriptions = reply_subscription.iter().cloned().collect();
        sc.subscriptions.extend(opts.subscriptions.iter().cloned());
        // Only when asked for more than replies: a console alone keeps reporting a refused
        // reply topic as such (`ReplySubscriptionRefused`) instead of a link that stays down.
        sc.require_subscriptions = !opts.subscriptions.is_empty();
        sc.farewell_wait = Duration::from_secs(1);
        sc.queues = Queues {
            requests: opts.request_channel_capacity.max(1),
            ..Queues::default()
        };

        let shared = Arc::new(Shared {
            replies: Mutex::new(HashMap::new()),
            subs: Mutex::new(Subscriptions::default()),
            reply_prefix: format!("{}/", opts.parents.up),
            parents: opts.parents.clone(),
            tap: opts.tap.clone(),
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        info!(client_id = client_id.as_str(), %broker, reply_topic, "connecting");
        let hooks = ConsoleHooks {
            overflow: opts.tap.as_ref().map(|t| t.overflow.clone()),
        };
        let mqtt = Session::start(sc, Arc::new(hooks), inbound_tx);
        let router = tokio::spawn(route(inbound_rx, shared.clone()));
        let console = Console {
            inner: Arc::new(Inner {
                ids: IdGenerator::new(opts.console_id.as_str()),
                session: mqtt.link(),
                mqtt,
                opts,
                client_id,
                reply_topic,
                shared,
                router: Mutex::new(Some(router)),
            }),
        };

        Ok(console)
    }

    /// Waits (up to `connect_timeout`) until the session is ready, as [`Console::connect`]
    /// does after [`Console::start`].
    async fn wait_ready(&self) -> Result<(), ConsoleError> {
        let console = self;
        let broker = console.inner.opts.broker.to_string();
        let reply_subscription = match console.inner.opts.mode {
            TopicMode::Standard | TopicMode::P2p { subscribe: true } => {
                Some(console.inner.reply_topic.clone())
            }
            TopicMode::P2p { subscribe: false } => None,
        };
        // On any error below, the caller drops the console, which stops the session.
        let waited = console.inner.opts.connect_timeout;
        let brokers = console.inner.opts.broker.urls().len();
        let mut session = console.inner.session.clone();
        let state = tokio::time::timeout(
            waited,
            session.wait_for(|s| match s {
                LinkState::Ready(_) => true,
                LinkState::Down(f) => f.as_ref().is_some_and(|f| ends_the_wait(f, brokers)),
            }),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        match state {
            Ok(Ok(LinkState::Ready(_))) => {
                let refused = console.inner.mqtt.refused();
                if let Some(topic) = reply_subscription.filter(|t| refused.contains(t)) {
                    return Err(ConsoleError::ReplySubscriptionRefused { broker, topic });
                }
                Ok(())
            }
            Ok(Ok(LinkState::Down(f))) => Err(ConsoleError::Refused {
                broker,
                reason: f.map(|f| f.describe()).unwrap_or_default(),
            }),
            Ok(Err(_)) => Err(ConsoleError::Closed),
            Err(_) => Err(ConsoleError::Connect {
                broker,
                waited,
                last_error: console
                    .last_connection_error()
                    .unwrap_or_else(|| "no answer from the broker".to_string()),
            }),
        }
    }

    /// Closes the connection cleanly (MQTT DISCONNECT) when connected, waiting at most a
    /// second for it to be sent. Calls still waiting fail with `Closed`.
    pub async fn disconnect(&self) {
        self.inner.mqtt.shutdown().await;
    }

    /// The session's link state as it changes: `Ready(epoch)` once connected and subscribed,
    /// `Down(why)` otherwise (for a service's readiness).
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.inner.session.clone()
    }

    /// Whether the session is ready right now (connected and subscribed).
    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().is_ready()
    }

    /// Why the last connection attempt failed, while the session is down.
    pub fn last_connection_error(&self) -> Option<String> {
        match &*self.inner.session.borrow() {
            LinkState::Down(Some(f)) => Some(f.describe()),
            _ => None,
        }
    }

    /// `{group_id}@@@{console_id}`.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.client_id
    }

    /// The topic replies are asked on.
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    pub fn options(&self) -> &ConsoleOptions {
        &self.inner.opts
    }

    /// A fresh, unique request id from this console's generator.
    pub fn new_request_id(&self) -> RequestId {
        self.inner.ids.next_id()
    }
}

impl Inner {
    /// Queues one QoS 1 publish. With `ack`, the sender is taken (only when the publish is
    /// queued) and fires when the broker's PUBACK arrives, or is dropped if the connection is
    /// lost first.
    pub(crate) fn try_publish(
        &self,
        topic: &str,
        payload: &[u8],
        deadline_ms: Option<u64>,
        ack: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), QueueError> {
        let msg = Message {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload),
            qos: Qos::AtLeastOnce,
            retain: false,
            props: Properties {
                message_expiry: deadline_ms.map(|d| expiry_s(d, now_ms())),
                ..Properties::default()
            },
        };
        self.mqtt.publish_with_ack(msg, ack)
    }
}

/// The routing task: ends when the session does, and then closes the console.
async fn route(mut inbound: mpsc::Receiver<Inbound>, shared: Arc<Shared>) {
    let _close = CloseOnDrop(shared.clone());
    while let Some(msg) = inbound.recv().await {
        route_publish(&shared, msg);
    }
    debug!("the session has ended");
}

/// Runs when the routing task ends, whether it returns or is aborted: drops every waiting
/// sender, which wakes the waiting calls and watches.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0.replies).clear();
        lock(&self.0.subs).watchers.clear();
    }
}

fn route_publish(shared: &Shared, p: Inbound) {
    if p.topic.starts_with(&shared.reply_prefix) {
        match Reply::from_json(&p.payload) {
            Ok(reply) => match &reply.id {
                Some(id) => {
                    let waiter = lock(&shared.replies).remove(id.as_str());
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(reply);
                        }
                        None => {
                            debug!(%id, "reply for a request nobody waits for (a late duplicate?)");
                        }
                    }
                }
                None => debug!(?reply, "reply without a request id; cannot route it"),
            },
            Err(e) => debug!(topic = p.topic, "skipping a malformed reply: {e}"),
        }
        return;
    }
    if let Some(tap) = &shared.tap {
        // Never wait here either: a consumer that falls behind loses messages, counted.
        let send = |msg: Inbound| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tap.tx.try_send(msg) {
                tap.overflow.fetch_add(1, Ordering::Relaxed);
            }
        };
        if lock(&shared.subs).watchers.is_empty() {
            send(p);
            return;
        }
        send(p.clone());
    }
    let Some(status) = StatusTopic::parse(&shared.parents, &p.topic) else {
        debug!(topic = p.topic, "skipping a message on an unexpected topic");
        return;
    };
    let (instance, event) = match status {
        StatusTopic::Heartbeat(i) => (
            i,
            serde_json::from_slice(&p.payload).map(WatchEvent::Heartbeat),
        ),
        StatusTopic::Presence(i) => (
            i,
            serde_json::from_slice(&p.payload).map(WatchEvent::Presence),
        ),
    };
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            debug!(topic = p.topic, "skipping a malformed status message: {e}");
            return;
        }
    };
    let msg = StatusEvent {
        topic: p.topic,
        instance,
        event,
        retained: p.retain,
        received: Instant::now(),
    };
    let subs = lock(&shared.subs);
    for w in &subs.watchers {
        if w.instances
            .as_ref()
            .is_some_and(|set| !set.contains(&msg.instance))
        {
            continue;
        }
        // Never wait here: a slow watch loses events instead of stalling replies and pings.
        if let Err(mpsc::error::TrySendError::Full(m)) = w.tx.try_send(msg.clone()) {
            w.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(topic = m.topic, "watch queue full; event dropped");
        }
    }
}

/// Removes a waiting call's reply slot when the call ends in any way (including cancellation).
pub(crate) struct ReplySlot<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) key: &'a str,
}

impl ReplySlot<'_> {
    /// (Re-)registers the slot; `false` if another call already waits with this id.
    pub(crate) fn register(&self, tx: oneshot::Sender<Reply>, first: bool) -> bool {
        let mut replies = lock(&self.shared.replies);
        if first && replies.contains_key(self.key) {
            return false;
        }
        replies.insert(self.key.to_string(), tx);
        true
    }
}

impl Drop for ReplySlot<'_> {
    fn drop(&mut self) {
        lock(&self.shared.replies).remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str, console: &str) -> ConsoleOptions {
        let mut o = ConsoleOptions::new(
            csg_protocol::BrokerUrl::parse(url).unwrap(),
            GroupId::new("GID_csg").unwrap(),
            InstanceId::new(console).unwrap(),
        );
        o.connect_timeout = Duration::from_millis(300);
        o
    }

    #[test]
    fn message_expiry_is_the_time_left_rounded_up() {
        assert_eq!(expiry_s(10_000, 9_000), 1);
        assert_eq!(expiry_s(10_001, 9_000), 2);
        assert_eq!(expiry_s(70_000, 10_000), 60);
        // Passed already: the shortest interval there is, not 0 (no expiry at all).
        assert_eq!(expiry_s(5_000, 9_000), 1);
        assert_eq!(expiry_s(u64::MAX, 0), u32::MAX);
    }

    #[test]
    fn each_broker_gets_a_share_of_the_connect_timeout() {
        let s = Duration::from_secs;
        // One broker: the whole wait, in whole seconds.
        assert_eq!(attempt_timeout(s(10), 1), s(10));
        assert_eq!(attempt_timeout(Duration::from_millis(5_900), 1), s(5));
        // Several: rounded down, so every one is tried within the wait.
        assert_eq!(attempt_timeout(s(5), 2), s(2));
        assert_eq!(attempt_timeout(s(10), 3), s(3));
        assert!(attempt_timeout(s(10), 3) * 3 <= s(10));
        // Never below the MQTT client's 1 s, nor 0 for an empty list.
        assert_eq!(attempt_timeout(Duration::from_millis(300), 1), s(1));
        assert_eq!(attempt_timeout(s(5), 10), s(1));
        assert_eq!(attempt_timeout(s(5), 0), s(5));
    }

    #[test]
    fn a_passing_refusal_ends_the_wait_only_with_one_broker() {
        let unavailable = Failure::Refused("ServerUnavailable".into());
        let busy = Failure::Refused("ServerBusy".into());
        let network = Failure::Network("connection refused".into());
        for f in [&unavailable, &busy] {
            assert!(ends_the_wait(f, 1), "{f}");
            assert!(!ends_the_wait(f, 2), "{f}");
        }
        for f in [
            &Failure::BadCredentials,
            &Failure::NotAuthorized,
            &Failure::ClientIdRejected,
            &Failure::Setup("no such file".into()),
        ] {
            assert!(ends_the_wait(f, 1), "{f}");
            assert!(ends_the_wait(f, 3), "{f}");
        }
        // The network failing is retried in either case.
        assert!(!ends_the_wait(&network, 1));
        assert!(!ends_the_wait(&network, 2));
    }

    #[tokio::test]
    async fn tls_setup_problems_are_reported_before_any_io() {
        let mut o = options("mqtts://127.0.0.1:1", "c1");
        o.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let err = Console::connect(o).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let mut o = options("mqtt://127.0.0.1:1", "c1");
        o.tls.server_name = Some("broker.example".into());
        let err = Console::connect(o).await.unwrap_err();
        assert!(err.to_string().contains("use mqtts://"), "{err}");
        let mut o = options("mqtt://127.0.0.1:1", "c1");
        o.auth = Auth::Password {
            username: "u".into(),
            password_file: "/nonexistent/pw".into(),
        };
        let err = Console::connect(o).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Auth(_)), "{err}");
    }

    #[tokio::test]
    async fn long_client_ids_and_bad_topics_are_refused() {
        let err = Console::connect(options("mqtt://127.0.0.1:1", &"c".repeat(60)))
            .await
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Identity(_)), "{err}");
        let mut o = options("mqtt://127.0.0.1:1", "c1");
        o.parents.up = o.parents.down.clone();
        let err = Console::connect(o).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Topics(_)), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_broker_fails_after_the_connect_timeout() {
        // Port 1 on loopback refuses at once; the console retries until the timeout.
        let start = Instant::now();
        let err = Console::connect(options("mqtt://127.0.0.1:1", "c1"))
            .await
            .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        match err {
            ConsoleError::Connect { last_error, .. } => {
                assert!(last_error.contains("refused"), "{last_error}");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
