//! The broker connection: options, [`Console::connect`], and the event-loop task.
//!
//! One tokio task owns the rumqttc [`EventLoop`] and is the only code that polls it. It never
//! awaits anything but `poll()` and the reconnect back-off, so keep-alives keep flowing however
//! busy the callers are. Callers hand publishes and subscribes to rumqttc's request channel with
//! the non-blocking `try_*` functions and wait on oneshot channels that the task completes:
//!
//! * replies are routed by request id through a map of waiting calls;
//! * broker acknowledgements (PUBACK, SUBACK) are matched to the caller that asked for them.
//!   rumqttc reports `Outgoing::Publish(pkid)` in the order requests leave its channel, so every
//!   publish is counted when it enters the channel (under one lock) and again when it leaves;
//!   when the two counts meet a caller's number, that caller's packet id is known.
//!
//! With a clean session the broker forgets subscriptions on every reconnect and rumqttc does not
//! restore them, so after each CONNACK the task subscribes the reply topic and every watch
//! filter again, and only after the SUBACK marks the session ready. Calls wait for a ready
//! session before each send and re-send at once when a new session starts, because a reply
//! published while the console was away is lost.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use csg_protocol::{
    BrokerUrl, ClientId, GroupId, IdentityError, InstanceId, Reply, RequestId, Scheme, StatusTopic,
    TopicMode, TopicParents,
};
use csg_transport::{Auth, TlsOptions};
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    NetworkOptions, Outgoing, QoS, Request, Subscribe, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::ids::IdGenerator;
use crate::watch::{StatusEvent, WatchEvent};

/// Largest MQTT packet accepted or sent. rumqttc's default (10 KiB) is below the protocol's own
/// 64 KiB payload cap, and an incoming packet over the limit is a connection error that repeats
/// forever as the broker redelivers it; 1 MiB leaves room for large replies.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Outgoing QoS 1 publishes rumqttc keeps unacknowledged before it stops sending. Its default
/// of 100 would throttle a fan-out to a thousand gateways.
pub const DEFAULT_INFLIGHT: u16 = 1000;

/// Capacity of rumqttc's request channel (the `cap` of `AsyncClient::new`; rumqttc ignores
/// `MqttOptions::set_request_channel_capacity`). A full channel makes callers wait briefly.
pub const DEFAULT_REQUEST_CHANNEL_CAPACITY: usize = 8192;

/// After a connection has stayed up this long, the reconnect back-off starts over from 200 ms.
/// Resetting on every CONNACK instead would let a broker that accepts and then drops us at
/// once (for example, another client taking over our client ID) be hammered every 200 ms.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How a console connects and which topics it uses.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// `mqtt://host[:port]` (plain TCP) or `mqtts://host[:port]` (TLS 1.2+, port 8883 by
    /// default).
    pub broker: BrokerUrl,
    /// TLS settings for `mqtts://` (CA file or system roots, server-name override, client
    /// certificate). Files are read once, by [`Console::connect`].
    pub tls: TlsOptions,
    /// Broker credentials. The secret file is read once, by [`Console::connect`].
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
    /// How long [`Console::connect`] (and [`Console::watch`]) wait for a ready session. Also
    /// the per-attempt TCP + CONNACK timeout, rounded up to whole seconds, at least 5 s.
    pub connect_timeout: Duration,
    pub inflight: u16,
    pub request_channel_capacity: usize,
    pub max_packet_size: usize,
}

impl ConsoleOptions {
    /// Options with the standard topic layout and this crate's defaults.
    pub fn new(broker: BrokerUrl, group_id: GroupId, console_id: InstanceId) -> Self {
        Self {
            broker,
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
    pub(crate) client: AsyncClient,
    pub(crate) shared: Arc<Shared>,
    pub(crate) session: watch::Receiver<Session>,
    pub(crate) ids: IdGenerator,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// The state of the current broker session, published by the event-loop task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    /// Counts sessions that became ready; a call re-sends when it changes.
    pub(crate) epoch: u64,
    /// Connected, and the subscriptions made after the CONNACK are acknowledged.
    pub(crate) ready: bool,
    /// The subscription-set version this session's initial SUBSCRIBE covered.
    pub(crate) subs_version: u64,
    /// Filters the broker refused in this session's initial SUBSCRIBE.
    pub(crate) refused: Arc<Vec<String>>,
    pub(crate) last_error: Option<Arc<str>>,
    /// Set when the broker answered CONNECT with a refusal (bad credentials, bad client ID…).
    pub(crate) connect_refused: Option<Arc<str>>,
}

/// State shared between callers and the event-loop task. Every lock is held only for a few
/// map or queue operations and never across an await.
pub(crate) struct Shared {
    /// Calls waiting for a reply, by request id.
    pub(crate) replies: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    pub(crate) acks: Mutex<AckTracker>,
    pub(crate) subs: Mutex<Subscriptions>,
    /// Set once the event-loop task has ended; rumqttc's channel then rejects every request.
    pub(crate) closed: AtomicBool,
    parents: TopicParents,
    reply_prefix: String,
}

/// Watch filters to restore after each reconnect, and the watches to deliver status to.
#[derive(Default)]
pub(crate) struct Subscriptions {
    /// Bumped whenever a filter is added, so a watch can tell whether a session's initial
    /// SUBSCRIBE already covered its filters.
    pub(crate) version: u64,
    pub(crate) filters: BTreeSet<String>,
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) next_watcher: u64,
}

pub(crate) struct Watcher {
    pub(crate) id: u64,
    /// `None` means every instance.
    pub(crate) instances: Option<std::collections::HashSet<InstanceId>>,
    pub(crate) tx: mpsc::Sender<StatusEvent>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// Matches broker acknowledgements to the callers that wait for them (see the module docs).
/// Dropping a waiting sender tells its caller the packet was lost with the connection.
#[derive(Default)]
pub(crate) struct AckTracker {
    pubs_sent: u64,
    pubs_seen: u64,
    pub_waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    pub_inflight: HashMap<u16, oneshot::Sender<()>>,
    subs_sent: u64,
    subs_seen: u64,
    sub_waiters: VecDeque<(u64, oneshot::Sender<Vec<SubscribeReasonCode>>)>,
    sub_inflight: HashMap<u16, oneshot::Sender<Vec<SubscribeReasonCode>>>,
    /// The SUBSCRIBE sent after the last CONNACK; it jumps rumqttc's queue (see `on_connack`),
    /// so it is not counted with the others.
    initial: Option<InitialSubscribe>,
}

struct InitialSubscribe {
    pkid: Option<u16>,
    version: u64,
    filters: Vec<String>,
}

impl AckTracker {
    fn publish_left(&mut self, pkid: u16) {
        self.pubs_seen += 1;
        while let Some((seq, _)) = self.pub_waiters.front() {
            if *seq > self.pubs_seen {
                break;
            }
            let (seq, tx) = self.pub_waiters.pop_front().expect("front exists");
            if seq == self.pubs_seen {
                self.pub_inflight.insert(pkid, tx);
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
            let (seq, tx) = self.sub_waiters.pop_front().expect("front exists");
            if seq == self.subs_seen {
                self.sub_inflight.insert(pkid, tx);
            }
        }
    }

    /// Everything queued or in flight died with the connection; its waiters learn it by the
    /// dropped senders and send again on the next session.
    fn reset(&mut self) {
        self.pubs_seen = self.pubs_sent;
        self.pub_waiters.clear();
        self.pub_inflight.clear();
        self.subs_seen = self.subs_sent;
        self.sub_waiters.clear();
        self.sub_inflight.clear();
        self.initial = None;
    }
}

/// Why a publish or subscribe could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// rumqttc's request channel is full; try again shortly.
    Full,
    /// The event-loop task has ended.
    Closed,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave a half-made update behind
    // that matters more than stopping every call, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Console {
    /// Connects to the broker and waits (up to `connect_timeout`) until the session is ready:
    /// connected and, where the console subscribes its reply topic, subscribed.
    ///
    /// Failed attempts are retried with back-off until then; after that, the connection is
    /// restored in the background whenever it drops.
    pub async fn connect(opts: ConsoleOptions) -> Result<Console, ConsoleError> {
        let broker = opts.broker.to_string();
        let tls_config = match opts.broker.scheme {
            Scheme::Mqtts => Some(opts.tls.client_config().map_err(|e| ConsoleError::Tls {
                broker: broker.clone(),
                reason: e.to_string(),
            })?),
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
        let reply_topic = opts.parents.console_reply_topic(opts.mode, &client_id);
        // Real Alibaba P2P delivers to the client without a subscription; other brokers need one.
        let reply_subscription = match opts.mode {
            TopicMode::Standard | TopicMode::P2p { subscribe: true } => Some(reply_topic.clone()),
            TopicMode::P2p { subscribe: false } => None,
        };

        // rumqttc joins host and port with ':' and resolves that; an IPv6 literal needs brackets.
        let host = if opts.broker.host.contains(':') {
            format!("[{}]", opts.broker.host)
        } else {
            opts.broker.host.clone()
        };
        let mut mqtt = MqttOptions::new(client_id.as_str(), host, opts.broker.port);
        let keep_alive = match opts.keep_alive {
            d if d.is_zero() => Duration::ZERO,
            d => d.max(Duration::from_secs(1)),
        };
        if let Some(config) = tls_config {
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        // Our copy of the password is zeroed when `creds` drops; rumqttc keeps its own for
        // reconnects, for the life of this console.
        if let Some(creds) = opts
            .auth
            .credentials(client_id.as_str())
            .map_err(ConsoleError::Auth)?
        {
            mqtt.set_credentials(creds.username.as_str(), creds.password.as_str());
        }
        mqtt.set_clean_session(true)
            .set_keep_alive(keep_alive)
            .set_max_packet_size(opts.max_packet_size, opts.max_packet_size)
            .set_inflight(opts.inflight.max(1));
        let (client, mut eventloop) = AsyncClient::new(mqtt, opts.request_channel_capacity.max(1));
        let mut net = NetworkOptions::new();
        // Without TCP_NODELAY every request/reply waits ~40 ms for Nagle and delayed ACKs.
        net.set_tcp_nodelay(true);
        let attempt_secs = opts.connect_timeout.as_secs_f64().ceil().max(5.0) as u64;
        net.set_connection_timeout(attempt_secs);
        eventloop.set_network_options(net);

        let shared = Arc::new(Shared {
            replies: Mutex::new(HashMap::new()),
            acks: Mutex::new(AckTracker::default()),
            subs: Mutex::new(Subscriptions::default()),
            closed: AtomicBool::new(false),
            reply_prefix: format!("{}/", opts.parents.up),
            parents: opts.parents.clone(),
        });
        let (session_tx, session_rx) = watch::channel(Session::default());
        let task = tokio::spawn(run_event_loop(
            eventloop,
            shared.clone(),
            session_tx,
            reply_subscription.clone(),
        ));
        info!(client_id = client_id.as_str(), %broker, reply_topic, "connecting");
        let console = Console {
            inner: Arc::new(Inner {
                ids: IdGenerator::new(opts.console_id.as_str()),
                opts,
                client_id,
                reply_topic,
                client,
                shared,
                session: session_rx,
                task: Mutex::new(Some(task)),
            }),
        };

        // On any error below, dropping `console` aborts the task.
        let waited = console.inner.opts.connect_timeout;
        let mut session = console.inner.session.clone();
        let state = tokio::time::timeout(
            waited,
            session.wait_for(|s| s.ready || s.connect_refused.is_some()),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        match state {
            Ok(Ok(s)) if s.ready => {
                if let Some(topic) = reply_subscription.filter(|t| s.refused.contains(t)) {
                    return Err(ConsoleError::ReplySubscriptionRefused { broker, topic });
                }
                Ok(console)
            }
            Ok(Ok(s)) => Err(ConsoleError::Refused {
                broker,
                reason: s.connect_refused.as_deref().unwrap_or("").to_string(),
            }),
            Ok(Err(_)) => Err(ConsoleError::Closed),
            Err(_) => {
                let last = session.borrow().last_error.clone();
                Err(ConsoleError::Connect {
                    broker,
                    waited,
                    last_error: last
                        .as_deref()
                        .unwrap_or("no answer from the broker")
                        .to_string(),
                })
            }
        }
    }

    /// Closes the connection cleanly (MQTT DISCONNECT) when connected, waiting at most a
    /// second for it to be sent. Calls still waiting fail with `Closed`.
    pub async fn disconnect(&self) {
        let Some(mut task) = lock(&self.inner.task).take() else {
            return;
        };
        let sent = self.is_connected() && self.inner.client.try_disconnect().is_ok();
        // The task ends once rumqttc has written the DISCONNECT.
        if sent
            && tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_ok()
        {
            return;
        }
        task.abort();
        let _ = task.await;
    }

    /// Whether the session is ready right now (connected and subscribed).
    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().ready
    }

    /// The last connection error seen, if any.
    pub fn last_connection_error(&self) -> Option<String> {
        self.inner
            .session
            .borrow()
            .last_error
            .as_deref()
            .map(str::to_string)
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
        ack: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), QueueError> {
        // The lock spans the channel send so that counting order equals channel order.
        let mut acks = lock(&self.shared.acks);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        {
            Ok(()) => {
                acks.pubs_sent += 1;
                if let Some(tx) = ack.take() {
                    let seq = acks.pubs_sent;
                    acks.pub_waiters.push_back((seq, tx));
                }
                Ok(())
            }
            Err(e) => Err(self.queue_error(e)),
        }
    }

    /// Queues one SUBSCRIBE (QoS 1 for every filter); the sender gets the SUBACK return codes.
    pub(crate) fn try_subscribe(
        &self,
        filters: &[String],
        ack: oneshot::Sender<Vec<SubscribeReasonCode>>,
    ) -> Result<(), QueueError> {
        let mut acks = lock(&self.shared.acks);
        let list = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        match self.client.try_subscribe_many(list) {
            Ok(()) => {
                acks.subs_sent += 1;
                let seq = acks.subs_sent;
                acks.sub_waiters.push_back((seq, ack));
                Ok(())
            }
            Err(e) => Err(self.queue_error(e)),
        }
    }

    fn queue_error(&self, e: ClientError) -> QueueError {
        if self.shared.closed.load(Ordering::Acquire) {
            QueueError::Closed
        } else {
            debug!("rumqttc request channel full: {e}");
            QueueError::Full
        }
    }
}

/// The event-loop task: polls rumqttc, routes what arrives, reconnects with back-off.
async fn run_event_loop(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    session: watch::Sender<Session>,
    reply_subscription: Option<String>,
) {
    let _close = CloseOnDrop(shared.clone());
    let mut backoff = Backoff::reconnect();
    let mut connected_at: Option<Instant> = None;
    // Until the first CONNACK someone is waiting in `connect` with a deadline: retry at least
    // every second then, so a broker back after 3 s is found before a 5 s deadline (a doubling
    // back-off would next try at 6 s). One console is not a fleet; it cannot storm a broker.
    let mut connected_once = false;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if let Event::Incoming(Incoming::ConnAck(_)) = event {
                    connected_at = Some(Instant::now());
                    connected_once = true;
                }
                if handle_event(
                    event,
                    &mut eventloop,
                    &shared,
                    &session,
                    &reply_subscription,
                )
                .is_break()
                {
                    debug!("disconnected on request");
                    break;
                }
            }
            Err(e) => {
                // Events rumqttc buffered before the failure (a reply read in the same batch,
                // a publish that left just before) are still valid: handle them first.
                let buffered: Vec<Event> = eventloop.state.events.drain(..).collect();
                for event in buffered {
                    let _ = handle_event(
                        event,
                        &mut eventloop,
                        &shared,
                        &session,
                        &reply_subscription,
                    );
                }
                {
                    // With a clean session rumqttc drops whatever is unacknowledged or still
                    // queued at the next CONNACK. Drop it now, under the tracker lock, so the
                    // counts stay in step with the channel; callers re-send on the next session.
                    let mut acks = lock(&shared.acks);
                    eventloop.clean();
                    eventloop.pending.clear();
                    acks.reset();
                }
                let was_up = connected_at.is_some();
                if connected_at
                    .take()
                    .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
                {
                    backoff.reset();
                }
                // A TLS verification failure will not go away by retrying: report it as a
                // refusal, in words, so `connect` fails at once.
                let tls_failure = csg_transport::tls::classify(&e);
                let msg: Arc<str> = match &tls_failure {
                    Some(f) => f.describe().into(),
                    None => e.to_string().into(),
                };
                let refused =
                    matches!(e, ConnectionError::ConnectionRefused(_)) || tls_failure.is_some();
                session.send_modify(|s| {
                    s.ready = false;
                    s.last_error = Some(msg.clone());
                    if refused {
                        s.connect_refused = Some(msg.clone());
                    }
                });
                let mut delay = backoff.next_delay();
                if !connected_once {
                    delay = delay.min(Duration::from_secs(1));
                }
                if was_up {
                    warn!("lost the broker connection: {e}; reconnecting");
                } else {
                    debug!("broker connection attempt failed: {e}; next in {delay:?}");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Runs when the event-loop task ends, whether it returns or is aborted: marks the console
/// closed and drops every waiting sender, which wakes the waiting calls and watches.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        lock(&self.0.replies).clear();
        lock(&self.0.acks).reset();
        lock(&self.0.subs).watchers.clear();
    }
}

fn handle_event(
    event: Event,
    eventloop: &mut EventLoop,
    shared: &Shared,
    session: &watch::Sender<Session>,
    reply_subscription: &Option<String>,
) -> std::ops::ControlFlow<()> {
    match event {
        Event::Incoming(Incoming::Publish(p)) => route_publish(shared, p),
        Event::Incoming(Incoming::PubAck(ack)) => {
            if let Some(tx) = lock(&shared.acks).pub_inflight.remove(&ack.pkid) {
                let _ = tx.send(());
            }
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => lock(&shared.acks).publish_left(pkid),
        Event::Outgoing(Outgoing::Subscribe(pkid)) => lock(&shared.acks).subscribe_left(pkid),
        Event::Incoming(Incoming::SubAck(ack)) => on_suback(shared, session, ack),
        Event::Incoming(Incoming::ConnAck(_)) => {
            on_connack(eventloop, shared, session, reply_subscription)
        }
        Event::Outgoing(Outgoing::Disconnect) => return std::ops::ControlFlow::Break(()),
        _ => {}
    }
    std::ops::ControlFlow::Continue(())
}

fn on_connack(
    eventloop: &mut EventLoop,
    shared: &Shared,
    session: &watch::Sender<Session>,
    reply_subscription: &Option<String>,
) {
    let (version, mut filters) = {
        let subs = lock(&shared.subs);
        (
            subs.version,
            subs.filters.iter().cloned().collect::<Vec<_>>(),
        )
    };
    if let Some(reply) = reply_subscription {
        filters.insert(0, reply.clone());
    }
    if filters.is_empty() {
        info!("connected");
        mark_ready(session, version, Vec::new());
        return;
    }
    debug!(?filters, "connected; subscribing");
    let subscribe = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
    );
    lock(&shared.acks).initial = Some(InitialSubscribe {
        pkid: None,
        version,
        filters,
    });
    // rumqttc sends its `pending` queue before its request channel: putting the SUBSCRIBE at the
    // front guarantees it leaves before any publish a caller slipped in, and that it is the
    // first `Outgoing::Subscribe` of this connection.
    eventloop.pending.push_front(Request::Subscribe(subscribe));
}

fn on_suback(shared: &Shared, session: &watch::Sender<Session>, ack: rumqttc::SubAck) {
    let mut acks = lock(&shared.acks);
    let initial = acks
        .initial
        .as_ref()
        .is_some_and(|i| i.pkid == Some(ack.pkid));
    if initial {
        let init = acks.initial.take().expect("checked above");
        drop(acks);
        let refused: Vec<String> = init
            .filters
            .into_iter()
            .zip(ack.return_codes.iter())
            .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(f, _)| f)
            .collect();
        for f in &refused {
            error!("the broker refused the subscription to {f}");
        }
        info!("connected and subscribed");
        mark_ready(session, init.version, refused);
    } else if let Some(tx) = acks.sub_inflight.remove(&ack.pkid) {
        let _ = tx.send(ack.return_codes);
    }
}

fn mark_ready(session: &watch::Sender<Session>, version: u64, refused: Vec<String>) {
    session.send_modify(|s| {
        s.epoch += 1;
        s.ready = true;
        s.subs_version = version;
        s.refused = Arc::new(refused);
        s.connect_refused = None;
    });
}

fn route_publish(shared: &Shared, p: rumqttc::Publish) {
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
                            debug!(%id, "reply for a request nobody waits for (a late duplicate?)")
                        }
                    }
                }
                None => debug!(?reply, "reply without a request id; cannot route it"),
            },
            Err(e) => debug!(topic = p.topic, "skipping a malformed reply: {e}"),
        }
        return;
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
            BrokerUrl::parse(url).unwrap(),
            GroupId::new("GID_csg").unwrap(),
            InstanceId::new(console).unwrap(),
        );
        o.connect_timeout = Duration::from_millis(300);
        o
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
                assert!(last_error.contains("refused"), "{last_error}")
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn ack_tracker_matches_waiters_in_channel_order() {
        let mut t = AckTracker::default();
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
    fn reset_drops_waiters_and_resyncs_counts() {
        let mut t = AckTracker::default();
        let (tx, rx) = oneshot::channel();
        t.pubs_sent = 5;
        t.pub_waiters.push_back((5, tx));
        t.publish_left(1);
        t.reset();
        assert_eq!(t.pubs_seen, 5);
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
        let mut t = AckTracker::default();
        let (tx, _rx) = oneshot::channel();
        t.subs_sent = 1;
        t.sub_waiters.push_back((1, tx));
        t.initial = Some(InitialSubscribe {
            pkid: None,
            version: 0,
            filters: vec![],
        });
        t.subscribe_left(1);
        assert_eq!(t.initial.as_ref().unwrap().pkid, Some(1));
        t.subscribe_left(2);
        assert!(t.sub_inflight.contains_key(&2));
    }
}
