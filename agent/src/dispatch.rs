//! From a raw message to a reply: open a signed request (verify its JWS), decode the envelope,
//! check the reply topic, authorize the sender, answer repeats from the reply cache, refuse
//! expired requests, admit within the in-flight limit, run the handler on its own task,
//! remember its reply, publish it, and write an audit line for every mutation.
//!
//! The order keeps replays useless: authorization comes before the reply cache (a key that may
//! not call a method never sees its remembered reply), and the cache before the deadline (a
//! repeat of an executed id gets the remembered reply, never a second run).
//!
//! The dispatcher runs on its own task, fed by the session through a channel, so nothing here
//! can stall the MQTT poll loop; each admitted request runs on a task of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csg_protocol::envelope::DecodeErrorKind;
use csg_protocol::methods::{self, Kind, Method};
use csg_protocol::{
    decode_request_with, now_ms, AgentTopics, ErrorCode, Reply, ReplyTo, Request, RequestId,
    RpcError,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{Opened, Policy, Sender};
use crate::handlers::Handlers;
use crate::journal::{Journal, Record};
use crate::ratelimit::Line;
use crate::reply_cache::{Lookup, ReplyCache, MAX_WAITERS};
use crate::stats::{DropReason, Noisy, Stats};
use crate::uplink::{OutMessage, Qos, Uplink};
use csg_transport::{Inbound, Properties};

/// Longest MQTT 5 Correlation Data mirrored on a reply; a request with more is refused.
pub const MAX_CORRELATION_DATA: usize = 256;

/// Where a reply goes: the topic, and on MQTT 5 the request's Correlation Data to mirror,
/// joined in one string so the id memory keeps it with each waiter like a plain topic. A topic
/// never holds U+0000 (MQTT §4.7.3), so the NUL separator cannot be forged by a topic; the
/// data follows in hex.
///
/// Correlation Data over [`MAX_CORRELATION_DATA`] is never mirrored: whatever path answers the
/// request (a refusal before decoding included), its reply stays small, under the reply cap
/// and the broker's packet limit.
fn reply_address(topic: &str, props: &Properties) -> String {
    match &props.correlation_data {
        None => topic.to_string(),
        Some(data) if data.len() > MAX_CORRELATION_DATA => topic.to_string(),
        Some(data) => {
            let mut a = String::with_capacity(topic.len() + 1 + 2 * data.len());
            a.push_str(topic);
            a.push('\0');
            for b in data.iter() {
                a.push_str(&format!("{b:02x}"));
            }
            a
        }
    }
}

/// The inverse of [`reply_address`]: the message to publish for it.
fn reply_message(address: &str, payload: Bytes) -> OutMessage {
    let (topic, data) = match address.split_once('\0') {
        Some((topic, hex)) => {
            let data: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            (topic, Some(Bytes::from(data)))
        }
        None => (address, None),
    };
    OutMessage {
        topic: topic.to_string(),
        payload,
        qos: Qos::AtLeastOnce,
        retain: false,
        // Replies mirror the Correlation Data and set no Response Topic (MQTT 5 §4.10).
        props: Properties {
            correlation_data: data,
            ..Properties::default()
        },
    }
}

pub struct Limits {
    pub max_payload: usize,
    /// Largest reply published (`agent.max_reply_bytes`).
    pub max_reply: usize,
    pub max_in_flight: usize,
    pub reply_cache_ttl: Duration,
    pub reply_cache_max: usize,
}

pub struct Dispatcher {
    topics: AgentTopics,
    uplink: Arc<dyn Uplink>,
    handlers: Arc<Handlers>,
    stats: Arc<Stats>,
    cache: Mutex<ReplyCache>,
    max_payload: usize,
    max_reply: usize,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    journal: Option<Arc<Journal>>,
    /// Signed-command rules; replaced when a reloaded config changes `[security]`.
    policy: std::sync::RwLock<Arc<Policy>>,
}

/// Puts ids finished before a restart back into the id memory, with their age.
fn restore(cache: &mut ReplyCache, records: Vec<Record>) {
    let (now, now_ms) = (Instant::now(), now_ms());
    let mut restored = 0usize;
    for r in records {
        // Only mutations are journaled; a name this build does not know cannot be repeated
        // to it either (it would be refused as unknown), so its record is not needed.
        let method = methods::ALL.iter().copied().find(|m| *m == r.method);
        let (Ok(id), Some(method)) = (RequestId::new(r.id), method) else {
            continue;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(r.finished_ms));
        cache.restore(id, method, &r.reply, now.checked_sub(age).unwrap_or(now));
        restored += 1;
    }
    if restored > 0 {
        info!(restored, "request ids remembered from before the restart");
    }
}

impl Dispatcher {
    pub fn new(
        topics: AgentTopics,
        uplink: Arc<dyn Uplink>,
        handlers: Arc<Handlers>,
        stats: Arc<Stats>,
        limits: Limits,
        journal: Option<(Arc<Journal>, Vec<Record>)>,
    ) -> Arc<Self> {
        let mut cache = ReplyCache::new(limits.reply_cache_ttl, limits.reply_cache_max);
        let journal = journal.map(|(journal, records)| {
            restore(&mut cache, records);
            journal
        });
        Arc::new(Self {
            topics,
            uplink,
            handlers,
            stats,
            cache: Mutex::new(cache),
            max_payload: limits.max_payload,
            max_reply: limits.max_reply,
            max_in_flight: limits.max_in_flight,
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            journal,
            policy: std::sync::RwLock::new(Arc::new(Policy::open_door())),
        })
    }

    /// Installs the signed-command rules (at start and on a reload).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
    }

    /// Refuses a request for lack of authority: `UNAUTHORIZED` on its reply topic when one can
    /// be read from `readable` (unverified, so only if it passes the normal reply_to rules),
    /// counted and logged (the reason is ours, never an echo of the input).
    fn unauthorized(&self, readable: Option<&[u8]>, props: &Properties, reason: &str) {
        Stats::inc(&self.stats.unauthorized);
        let rt = props.response_topic.as_deref();
        let (id, reply_to) = match readable.map(|b| decode_request_with(b, self.max_payload, rt)) {
            Some(Ok(r)) => (Some(r.id), Some(r.reply_to)),
            Some(Err(e)) => (e.id, e.reply_to),
            None => (None, None),
        };
        let topic = reply_to.as_ref().and_then(ReplyTo::topic);
        let topic = topic.filter(|t| self.topics.check_reply_to(t).is_ok());
        warn!(id = ?id.as_ref().map(RequestId::as_str), answered = topic.is_some(), %reason, "unauthorized request refused, not executed");
        if let Some(t) = topic {
            let msg = format!("{reason}; not executed");
            let address = reply_address(t, props);
            self.refuse(&address, id, RpcError::new(ErrorCode::Unauthorized, msg));
        }
    }

    /// Serves messages until the channel closes. Now and then it writes the lines owed for
    /// dropped messages counted silently (a burst that stopped is still reported in full).
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>) {
        let mut tick = tokio::time::interval(NOISY_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => break,
                },
                _ = tick.tick() => {
                    for (what, line) in self.stats.noisy_due(Instant::now()) {
                        log_noisy(what, &line);
                    }
                }
            }
        }
    }

    /// Counts a message dropped without an answer; logs it only when its reason's line is due.
    fn dropped(&self, reason: DropReason, last: impl FnOnce() -> String) {
        if let Some(line) = self.stats.drop_message(reason, last) {
            log_noisy(Noisy::Dropped(reason), &line);
        }
    }

    /// Waits until no request is running, at most `grace`. Returns how many were still running.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            let n = self.in_flight.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::Acquire);
            }
        }
    }

    /// `address`: a topic, or a [`reply_address`].
    fn send(&self, address: &str, payload: Bytes) {
        let msg = reply_message(address, payload);
        let topic = msg.topic.clone();
        if let Err(e) = self.uplink.publish(msg) {
            Stats::inc(&self.stats.reply_lost);
            debug!(topic, error = %e, "reply not queued; a retry of the request will recover it");
        }
    }

    fn refuse(&self, topic: &str, id: Option<RequestId>, err: RpcError) {
        self.send(topic, Bytes::from(Reply::err(id, err).to_json()));
    }

    /// Handles one message. Synchronous and quick: anything slow runs on a spawned task.
    pub fn on_message(self: &Arc<Self>, msg: Inbound) {
        Stats::inc(&self.stats.received);
        if msg.topic != self.topics.commands {
            // Some brokers forward retained messages to clients that never subscribed to them:
            // nothing on another topic is a command for this agent.
            self.dropped(DropReason::UnsubscribedTopic, || {
                format!("topic={} bytes={}", excerpt(&msg.topic), msg.payload.len())
            });
            return;
        }
        let policy = self.policy.read().expect("policy lock").clone();
        let (sender, signed_payload) = match policy.open(&msg.payload, self.max_payload) {
            Opened::Plain => (Sender::Unsigned, None),
            Opened::Signed { kid, payload } => (Sender::Key(kid), Some(payload)),
            Opened::Refused { reason, payload } => {
                self.unauthorized(payload.as_deref(), &msg.props, &reason);
                return;
            }
        };
        let bytes: &[u8] = signed_payload.as_deref().unwrap_or(&msg.payload);
        if sender == Sender::Unsigned && policy.requires_signatures() {
            // Refused before anything else, malformed or not: nothing unsigned gets further.
            self.unauthorized(
                Some(bytes),
                &msg.props,
                "this gateway accepts signed commands only",
            );
            return;
        }
        // A signature covers the envelope, not the MQTT 5 properties: a signed request is
        // answered where its signed `reply_to` says, never on a Response Topic someone on the
        // way could have added or changed.
        let rt = match sender {
            Sender::Unsigned => msg.props.response_topic.as_deref(),
            Sender::Key(_) => None,
        };
        let mut req = match decode_request_with(bytes, self.max_payload, rt) {
            Ok(r) => r,
            Err(e) => {
                let topic = e.reply_to.as_ref().and_then(ReplyTo::topic);
                match topic.filter(|t| self.topics.check_reply_to(t).is_ok()) {
                    Some(t) => {
                        Stats::inc(&self.stats.bad_request);
                        let what = || {
                            let id = e.id.as_ref().map_or("-", RequestId::as_str);
                            format!("id={id} error={e}")
                        };
                        if let Some(line) =
                            self.stats.noisy(Noisy::BadRequest, what, Instant::now())
                        {
                            log_noisy(Noisy::BadRequest, &line);
                        }
                        // An id that is not valid is echoed as sent, so a console can match it.
                        let reply = Reply::err(e.id.clone(), RpcError::bad_request(e.to_string()))
                            .with_raw_id(e.raw_id.clone());
                        self.send(&reply_address(t, &msg.props), Bytes::from(reply.to_json()));
                    }
                    None => {
                        let reason = match e.kind {
                            DecodeErrorKind::Oversize => DropReason::Oversized,
                            _ if std::str::from_utf8(bytes).is_err() => DropReason::NotUtf8,
                            _ => DropReason::Unreadable,
                        };
                        self.dropped(reason, || format!("bytes={} error={e}", msg.payload.len()));
                    }
                }
                return;
            }
        };
        let reply_topic = match std::mem::replace(&mut req.reply_to, ReplyTo::NoReply) {
            ReplyTo::NoReply => None,
            ReplyTo::Topic(t) => match self.topics.check_reply_to(&t) {
                Ok(()) => Some(reply_address(&t, &msg.props)),
                Err(e) => {
                    // We never publish outside our own topics, so there is nowhere to say so.
                    self.dropped(DropReason::ReplyTopicRefused, || {
                        format!("id={} error={e}", req.id)
                    });
                    return;
                }
            },
        };
        if msg
            .props
            .correlation_data
            .as_ref()
            .is_some_and(|d| d.len() > MAX_CORRELATION_DATA)
        {
            Stats::inc(&self.stats.bad_request);
            if let Some(t) = reply_topic.as_deref() {
                let t = t.split_once('\0').map_or(t, |(t, _)| t);
                let msg = format!("the MQTT 5 Correlation Data is longer than {MAX_CORRELATION_DATA} bytes; not executed");
                self.refuse(t, Some(req.id), RpcError::bad_request(msg));
            }
            return;
        }
        if let Err(reason) = policy.authorize(&sender, &req, now_ms()) {
            Stats::inc(&self.stats.unauthorized);
            warn!(id = %req.id, method = %req.method, key = sender.key_id(), %reason, "unauthorized request refused, not executed");
            if let Some(t) = reply_topic.as_deref() {
                let msg = format!("{reason}; not executed");
                self.refuse(t, Some(req.id), RpcError::new(ErrorCode::Unauthorized, msg));
            }
            return;
        }
        // The method and its params, typed: nothing below sees a method name or raw params.
        // A refusal here is not remembered: nothing ran, and a corrected re-send may run.
        let method = match Method::parse(req.method.as_str(), std::mem::take(&mut req.params)) {
            Ok(m) => m,
            Err(e) => {
                // Answered like any error of a method (these were never BAD_REQUESTs, which
                // count envelopes nobody can act on); not counted as executed: nothing ran.
                debug!(id = %req.id, method = %req.method, error = %e, "request refused: unknown method or invalid params");
                if let Some(t) = reply_topic.as_deref() {
                    self.refuse(t, Some(req.id), RpcError::from(e));
                }
                return;
            }
        };
        self.admit(req, method, reply_topic.as_deref(), sender);
    }

    fn admit(
        self: &Arc<Self>,
        req: Request,
        method: Method,
        reply_topic: Option<&str>,
        sender: Sender,
    ) {
        let now = Instant::now();
        let name = method.name();
        let mut cache = self.cache.lock().expect("reply cache lock");
        match cache.lookup(&req.id, name, reply_topic, now) {
            Lookup::New => {}
            Lookup::Attached => {
                Stats::inc(&self.stats.duplicates);
                debug!(id = %req.id, "repeat of a running request: will answer when it ends");
                return;
            }
            Lookup::WaitersFull => {
                // Answered now rather than never: the request still runs, and a later repeat
                // gets its remembered reply (or attaches, once the run's replies are sent).
                drop(cache);
                Stats::inc(&self.stats.busy);
                debug!(id = %req.id, "repeat of a running request past the waiter cap: busy");
                if let Some(t) = reply_topic {
                    let msg = format!(
                        "request id {} is still running and already owes {MAX_WAITERS} replies; retry with the same id",
                        req.id
                    );
                    self.refuse(t, Some(req.id), RpcError::new(ErrorCode::Busy, msg));
                }
                return;
            }
            Lookup::Replay(reply) => {
                Stats::inc(&self.stats.duplicates);
                drop(cache);
                debug!(id = %req.id, "repeat of a finished request: answering from memory");
                if let Some(t) = reply_topic {
                    // Remembered before a restart with a larger cap: the cap still holds.
                    if reply.len() > self.max_reply {
                        let err = too_large(name, reply.len(), self.max_reply);
                        self.refuse(t, Some(req.id), err);
                    } else {
                        self.send(t, reply);
                    }
                }
                return;
            }
            Lookup::Unreadable => {
                drop(cache);
                Stats::inc(&self.stats.duplicates);
                tracing::error!(id = %req.id, "repeat of a finished request whose remembered reply cannot be read");
                if let Some(t) = reply_topic {
                    let msg = format!(
                        "request id {} already ran; its reply cannot be read back, and it is not run again",
                        req.id
                    );
                    self.refuse(t, Some(req.id), RpcError::internal(msg));
                }
                return;
            }
            Lookup::MethodMismatch(first) => {
                drop(cache);
                Stats::inc(&self.stats.bad_request);
                if let Some(t) = reply_topic {
                    let msg = format!("request id {} was already used for {first}", req.id);
                    self.refuse(t, Some(req.id), RpcError::bad_request(msg));
                }
                return;
            }
        }
        // Refusals below are not remembered: nothing ran, so a retry may still run it.
        if let Some(deadline) = req.deadline_ms {
            let now_ms = now_ms();
            if now_ms > deadline {
                drop(cache);
                Stats::inc(&self.stats.expired);
                info!(id = %req.id, method = name, late_ms = now_ms - deadline, "expired request not executed");
                if let Some(t) = reply_topic {
                    let msg = format!(
                        "deadline {deadline} passed {} ms before the request arrived; not executed",
                        now_ms - deadline
                    );
                    self.refuse(t, Some(req.id), RpcError::new(ErrorCode::Expired, msg));
                }
                return;
            }
        }
        let busy = if self.in_flight.load(Ordering::Acquire) >= self.max_in_flight {
            Some(format!(
                "{} requests in flight (the limit); retry with the same id",
                self.max_in_flight
            ))
        } else if !cache.has_room(now) {
            Some("the request-id memory is full; retry with the same id".to_string())
        } else {
            None
        };
        if let Some(msg) = busy {
            drop(cache);
            Stats::inc(&self.stats.busy);
            if let Some(t) = reply_topic {
                self.refuse(t, Some(req.id), RpcError::new(ErrorCode::Busy, msg));
            }
            return;
        }
        cache.start(req.id.clone(), name, reply_topic);
        drop(cache);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Stats::inc(&self.stats.executed);

        let kind = method.kind();
        let guard = Completion {
            dispatcher: self.clone(),
            id: req.id,
            method: name,
            // Only a mutation's audit line names it: a read need not copy it.
            resource: (kind == Kind::Mutation)
                .then(|| method.resource().map(Into::into))
                .flatten(),
            kind,
            key_id: sender.key_id().to_string(),
            done: false,
            // A read is not remembered once answered: running it again is harmless, and
            // remembering every finished read is what fills the id memory under load.
            forget: kind == Kind::Read,
        };
        let handlers = self.handlers.clone();
        tokio::spawn(async move {
            let mut guard = guard;
            let result = handlers.call(method).await.and_then(|r| r.to_value());
            if let Err(e) = &result {
                debug!(id = %guard.id, method = guard.method, code = %e.code, "request failed");
            }
            guard.audit(match &result {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Failed(e.code),
            });
            // A retryable error (the daemon was down, a program timed out) is answered but not
            // remembered: the console re-sends the same id after one (protocol, section 11),
            // and that re-send must run again once the daemon is back.
            // UNKNOWN_METHOD here is a family this configuration does not have: nothing ran,
            // and a reload that enables the family must let the same id run.
            guard.forget |=
                matches!(&result, Err(e) if e.retryable || e.code == ErrorCode::UnknownMethod);
            let reply = guard.reply_bytes(result);
            guard.journal(&reply).await;
            guard.complete(reply);
        });
    }
}

/// The answer in place of a reply of `size` bytes over the reply cap (never a cut reply).
fn too_large(method: &str, size: usize, cap: usize) -> RpcError {
    let hint = if method.ends_with(".list") {
        "; ask for pages with params.limit (and params.cursor = next_cursor)"
    } else {
        ""
    };
    RpcError::new(
        ErrorCode::ReplyTooLarge,
        format!(
            "the reply of {method} is {size} bytes, over this agent's reply cap of {cap} bytes (agent.max_reply_bytes){hint}"
        ),
    )
}

/// Finishes a running request exactly once: with its result, or with `INTERNAL` if the
/// handler panicked (the guard is dropped during unwinding), so an id can never stay
/// "running" forever and the in-flight count never leaks.
struct Completion {
    dispatcher: Arc<Dispatcher>,
    id: RequestId,
    method: &'static str,
    /// The export, share, user or target the request names, for the audit line.
    resource: Option<Box<str>>,
    kind: Kind,
    /// The key that signed the request, or `unsigned`.
    key_id: String,
    done: bool,
    /// A read, or a retryable error: not journaled, and the id is forgotten once answered.
    forget: bool,
}

/// How an executed request ended, for its audit line.
#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Failed(ErrorCode),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Failed(code) => f.write_str(code.as_str()),
        }
    }
}

impl Completion {
    /// The audit trail, written here and nowhere else: one info line per executed mutation,
    /// with who asked, what it named and how it ended.
    fn audit(&self, outcome: Outcome) {
        if self.kind == Kind::Mutation {
            let resource = self.resource.as_deref().unwrap_or("-");
            info!(id = %self.id, method = %self.method, resource, key = %self.key_id, outcome = %outcome, "audit: mutation executed");
        }
    }

    /// The reply as published, remembered and journaled: the one place the reply cap is
    /// held. A reply over the cap is replaced by `REPLY_TOO_LARGE` (never cut: cut JSON is
    /// unreadable), and that error is what a repeat of the id gets.
    fn reply_bytes(&self, result: Result<serde_json::Value, RpcError>) -> Bytes {
        let reply = match result {
            Ok(v) => Reply::ok(self.id.clone(), v),
            // Every handler's error passes here: cap what it quotes, however it was built.
            Err(e) => Reply::err(Some(self.id.clone()), e.capped()),
        };
        let bytes = reply.to_json();
        let cap = self.dispatcher.max_reply;
        if bytes.len() <= cap {
            return Bytes::from(bytes);
        }
        warn!(id = %self.id, method = self.method, bytes = bytes.len(), cap, "reply over the reply cap replaced by REPLY_TOO_LARGE");
        let err = too_large(self.method, bytes.len(), cap);
        Bytes::from(Reply::err(Some(self.id.clone()), err).to_json())
    }

    /// Makes a mutation's reply durable before anyone can see it.
    async fn journal(&self, reply: &Bytes) {
        let Some(journal) = self.dispatcher.journal.clone() else {
            return;
        };
        if self.kind == Kind::Read || self.forget {
            return;
        }
        let record = Record {
            id: self.id.to_string(),
            method: self.method.to_string(),
            finished_ms: now_ms(),
            reply: reply.to_vec(),
        };
        let error = match tokio::task::spawn_blocking(move || journal.append(&record)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        warn!(id = %self.id, %error, "reply journal not written: a repeat after a restart would run again");
    }

    fn complete(&mut self, bytes: Bytes) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let d = &self.dispatcher;
        let waiters = {
            let mut cache = d.cache.lock().expect("reply cache lock");
            cache.finish(&self.id, &bytes, Instant::now(), !self.forget)
        };
        for topic in &waiters {
            d.send(topic, bytes.clone());
        }
        if d.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            d.idle.notify_waiters();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            tracing::error!(id = %self.id, method = self.method, "handler panicked");
            self.audit(Outcome::Failed(ErrorCode::Internal));
            let reply = self.reply_bytes(Err(RpcError::internal(format!(
                "the handler of {} failed unexpectedly; see the agent's log",
                self.method
            ))));
            self.complete(reply);
        }
    }
}

impl Dispatcher {
    /// A command that found the dispatcher's queue full: answered `BUSY` (retryable) right
    /// away, from the poll task, so a flood never turns into silently lost requests. Only the
    /// envelope is read; nothing is executed or remembered.
    pub fn refuse_busy(&self, msg: Inbound) {
        Stats::inc(&self.stats.received);
        if msg.topic != self.topics.commands {
            self.dropped(DropReason::UnsubscribedTopic, || {
                format!("topic={} bytes={}", excerpt(&msg.topic), msg.payload.len())
            });
            return;
        }
        let rt = msg.props.response_topic.as_deref();
        let (id, topic) = match decode_request_with(&msg.payload, self.max_payload, rt) {
            Ok(r) => (Some(r.id), r.reply_to.topic().map(str::to_string)),
            Err(e) => (e.id, e.reply_to.and_then(|r| r.topic().map(str::to_string))),
        };
        match topic.filter(|t| self.topics.check_reply_to(t).is_ok()) {
            Some(t) => {
                Stats::inc(&self.stats.busy);
                let err = RpcError::new(
                    ErrorCode::Busy,
                    "the agent's command queue is full; retry with the same id",
                );
                self.refuse(&reply_address(&t, &msg.props), id, err);
            }
            None => self.dropped(DropReason::QueueFull, || {
                format!("bytes={}", msg.payload.len())
            }),
        }
    }
}

/// How often lines owed for silently counted messages are written (each reason still gets at
/// most one line per [`crate::ratelimit::LOG_WINDOW`]).
const NOISY_FLUSH: Duration = Duration::from_secs(5);

/// A topic as logged: at most 120 characters (a hostile one may be 64 KiB).
fn excerpt(topic: &str) -> String {
    csg_protocol::validate::excerpt(topic, 120)
}

fn log_noisy(what: Noisy, line: &Line) {
    let last = &line.last;
    let (n, over) = (line.count, line.over.as_secs());
    match what {
        Noisy::Dropped(r) if n == 1 && over == 0 => warn!(
            reason = %r.as_str(),
            "dropped a message ({}); {last} (more like it are counted in sys.status `dropped` \
             and logged once a minute)",
            r.as_str()
        ),
        Noisy::Dropped(r) => warn!(
            reason = %r.as_str(),
            count = n,
            "dropped {n} messages {} in the last {over} s; last {last}",
            r.describe()
        ),
        Noisy::BadRequest if n == 1 && over == 0 => {
            warn!("bad request answered; {last} (more are counted in counters.bad_request and logged once a minute)");
        }
        Noisy::BadRequest => {
            warn!(
                count = n,
                "{n} bad requests answered in the last {over} s; last {last}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
