//! One request to one instance, with the protocol's retry policy.
//!
//! Agents remember the id of every mutation for at least ten minutes after it finished and
//! answer a repeat from that memory without running it again; a read (get, list, ping, info,
//! status) changes nothing, so its repeat simply runs again once the first has finished. That
//! makes re-sending the same bytes the right answer to every kind of uncertainty:
//!
//! * no reply within the attempt timeout: the request or its reply was lost, or the agent is
//!   slow; re-send at once;
//! * a new broker session started: anything published while the console was away is lost;
//!   re-send at once;
//! * a retryable error (`BUSY`, `UNAVAILABLE`, `TIMEOUT`): re-send after a back-off (up to
//!   100 ms doubling to 2 s, with full jitter).
//!
//! All of it stops at the overall timeout.

use std::time::{Duration, Instant};

use csg_protocol::methods::Method;
use csg_protocol::{
    now_ms, ClientId, GroupId, IdentityError, InstanceId, MethodName, Reply, ReplyBody, ReplyTo,
    Request, RequestId,
};
use csg_transport::{Backoff, LinkState};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout_at};

use crate::client::{Console, Inner, QueueError, ReplySlot};
use crate::sign::Signer;

/// Room the MQTT PUBLISH header needs besides topic and payload (fixed header, lengths, pkid).
const PUBLISH_OVERHEAD: usize = 16;

/// How long a queued publish waits for room in a full request channel before trying again.
const CHANNEL_FULL_PAUSE: Duration = Duration::from_millis(1);

/// How one call is made.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Give up after this long (default 10 s).
    pub timeout: Duration,
    /// Re-send when no reply came within this long (default 2 s).
    pub attempt_timeout: Duration,
    /// The request id; a fresh unique one when `None`. Pass the id of an earlier call to repeat
    /// it safely: the agent answers a mutation from its id memory instead of running it again
    /// (a read it simply runs again).
    pub id: Option<RequestId>,
    /// One-way: ask for no reply (`reply_to: "noreply"`). The call returns once the broker has
    /// acknowledged the publish (its PUBACK), with `Reply { body: Ok(null) }`.
    pub noreply: bool,
    /// Ask the agent not to run the request after this much time from now (`deadline_ms`).
    pub deadline: Option<Duration>,
    /// Re-send after a retryable error (default true). Off, the first reply is returned as
    /// is; with `attempt_timeout >= timeout` as well, a call sends exactly once (benchmarks).
    pub retry_errors: bool,
    /// Sign the request (JWS, `docs/protocol.md` "Signed commands") for gateways that require
    /// signed commands. A signed request always carries a deadline: `deadline` when set, else
    /// [`Signer::default_deadline`] of `timeout`.
    pub signer: Option<Signer>,
    /// The gateway's group, when it is not the console's own: it makes the gateway's client
    /// id, which is a signed request's audience and, in P2P mode, part of the command topic.
    pub group: Option<GroupId>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            id: None,
            noreply: false,
            deadline: None,
            retry_errors: true,
            signer: None,
            group: None,
        }
    }
}

/// Why a call ended without a reply.
#[derive(Debug, Clone, Error)]
pub enum CallError {
    #[error(
        "no reply from {instance} to request {id} within {waited:?} ({attempts} attempt(s)); \
         the instance may be offline or unreachable"
    )]
    NoReply {
        instance: InstanceId,
        id: RequestId,
        attempts: u32,
        waited: Duration,
    },
    #[error(
        "the broker did not acknowledge one-way request {id} for {instance} within {waited:?} \
         ({attempts} attempt(s))"
    )]
    NotAcknowledged {
        instance: InstanceId,
        id: RequestId,
        attempts: u32,
        waited: Duration,
    },
    #[error("cannot address instance {instance}: {source}")]
    Address {
        instance: InstanceId,
        #[source]
        source: IdentityError,
    },
    #[error("request {id} for {instance} is {size} bytes with its topic; the MQTT packet limit is {limit}")]
    TooLarge {
        instance: InstanceId,
        id: RequestId,
        size: usize,
        limit: usize,
    },
    #[error("request id {id} is already waiting for a reply on this console")]
    DuplicateId { id: RequestId },
    #[error("the console connection closed while request {id} for {instance} was pending")]
    Closed { instance: InstanceId, id: RequestId },
    /// The console's own broker connection dropped while the call waited, and no answer came
    /// before the timeout: the gateway was not necessarily offline.
    #[error(
        "the connection to the broker was lost ({reason}) while request {id} for {instance} \
         was pending, {losses} time(s) in {attempts} attempt(s) over {waited:?}; the gateway was \
         not necessarily offline"
    )]
    ConnectionLost {
        instance: InstanceId,
        id: RequestId,
        /// The session's last failure, in words.
        reason: String,
        attempts: u32,
        /// How many times the connection dropped during the call.
        losses: u32,
        /// The request's size on the wire (topic and payload).
        size: usize,
        waited: Duration,
    },
}

impl CallError {
    /// The request id concerned, when there is one.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            CallError::NoReply { id, .. }
            | CallError::NotAcknowledged { id, .. }
            | CallError::TooLarge { id, .. }
            | CallError::DuplicateId { id }
            | CallError::Closed { id, .. }
            | CallError::ConnectionLost { id, .. } => Some(id),
            CallError::Address { .. } => None,
        }
    }
}

/// A request ready to send: its topic and the bytes every attempt re-sends.
struct Prepared {
    id: RequestId,
    topic: String,
    payload: Vec<u8>,
    /// The request's `deadline_ms`: on MQTT 5 each attempt's Message Expiry Interval.
    deadline_ms: Option<u64>,
}

impl Prepared {
    fn size(&self) -> usize {
        self.payload.len() + self.topic.len() + PUBLISH_OVERHEAD
    }
}

/// Connection drops seen while one call waited.
#[derive(Default)]
struct Losses {
    count: u32,
    last: Option<String>,
}

impl Losses {
    /// Notes the session's state after it changed from `Ready(sent_on)`, the session the
    /// request went out on. A failure is a drop of our connection, and so is a newer session:
    /// the watch keeps only the latest state, so a reconnect quicker than this task's wake-up
    /// shows as `Ready(sent_on)` → `Ready(later)` with the `Down` in between never seen.
    fn note(&mut self, sent_on: u64, state: &LinkState) {
        match state {
            LinkState::Down(f) => self.lost(f.as_ref().map_or_else(
                || "the connection closed".to_string(),
                csg_transport::Failure::describe,
            )),
            LinkState::Ready(e) if *e != sent_on => {
                self.lost("the connection dropped and was restored".to_string());
            }
            LinkState::Ready(_) => {}
        }
    }

    /// The broker never acknowledged a publish made on `Ready(sent_on)`: its waiter is dropped
    /// only when the connection ends, which can happen just before the link shows it, so this
    /// is a loss even while the state still reads `Ready(sent_on)`.
    fn note_unacked(&mut self, sent_on: u64, state: &LinkState) {
        let before = self.count;
        self.note(sent_on, state);
        if self.count == before {
            self.lost("the connection closed".to_string());
        }
    }

    fn lost(&mut self, reason: String) {
        self.count += 1;
        self.last = Some(reason);
    }

    /// The error for a call that ended without an answer, when the connection was the cause
    /// (it dropped during the call, or is down now).
    fn error(
        &self,
        instance: &InstanceId,
        req: &Prepared,
        attempts: u32,
        start: Instant,
        now: &LinkState,
    ) -> Option<CallError> {
        let down_now = match now {
            LinkState::Down(Some(f)) => Some(f.describe()),
            LinkState::Down(None) | LinkState::Ready(_) => None,
        };
        if self.count == 0 && down_now.is_none() {
            return None;
        }
        Some(CallError::ConnectionLost {
            instance: instance.clone(),
            id: req.id.clone(),
            reason: down_now
                .or_else(|| self.last.clone())
                .unwrap_or_else(|| "the connection closed".to_string()),
            attempts,
            losses: self.count.max(1),
            size: req.size(),
            waited: start.elapsed(),
        })
    }
}

impl Console {
    /// Sends `method` to `instance` and waits for the reply, re-sending the same request (same
    /// id) as described in the module docs.
    ///
    /// `Ok` whenever the agent answered, including remote errors (`reply.body` is then
    /// [`ReplyBody::Err`]); when retryable errors persist until the timeout, the last one is
    /// returned. `Err` only when no answer came or the request could not be sent.
    pub async fn call(
        &self,
        instance: &InstanceId,
        method: &MethodName,
        params: Map<String, Value>,
        opts: &CallOptions,
    ) -> Result<Reply, CallError> {
        let start = Instant::now();
        let id = opts.id.clone().unwrap_or_else(|| self.inner.ids.next_id());
        let req = self.prepare(instance, id, method, params, opts)?;
        let deadline = start + opts.timeout;
        if opts.noreply {
            self.inner
                .send_noreply(instance, req, opts, start, deadline)
                .await
        } else {
            self.inner
                .send_and_wait(instance, req, opts, start, deadline)
                .await
        }
    }

    /// [`Console::call`] with a typed [`Method`]: sends its name and its params exactly as the
    /// protocol writes them. A successful reply's result decodes with
    /// [`MethodResult::decode`](csg_protocol::methods::MethodResult::decode)`(method.name(), …)`.
    pub async fn call_method(
        &self,
        instance: &InstanceId,
        method: &Method,
        opts: &CallOptions,
    ) -> Result<Reply, CallError> {
        self.call(instance, &method_name(method), method.params(), opts)
            .await
    }

    fn prepare(
        &self,
        instance: &InstanceId,
        id: RequestId,
        method: &MethodName,
        params: Map<String, Value>,
        opts: &CallOptions,
    ) -> Result<Prepared, CallError> {
        let o = &self.inner.opts;
        let group = opts.group.as_ref().unwrap_or(&o.group_id).clone();
        let target =
            ClientId::new(group, instance.clone()).map_err(|source| CallError::Address {
                instance: instance.clone(),
                source,
            })?;
        let topic = o.parents.command_topic(o.mode, &target);
        let mut req = Request::new(id, method.clone(), params);
        if !opts.noreply {
            req.reply_to = ReplyTo::Topic(self.inner.reply_topic.clone());
        }
        let deadline = match (&opts.deadline, &opts.signer) {
            (Some(d), _) => Some(*d),
            (None, Some(s)) => Some(s.default_deadline(opts.timeout)),
            (None, None) => None,
        };
        req.deadline_ms = deadline.map(|d| now_ms().saturating_add(d.as_millis() as u64));
        // Every attempt re-sends these bytes, so a signed request is signed once.
        let payload = match &opts.signer {
            Some(s) => s.sign(&req.to_json(), target.as_str()).into_bytes(),
            None => req.to_json(),
        };
        // The MQTT client treats an oversized outgoing packet as a connection error, which
        // would cut every other call short; refuse it here instead.
        let prepared = Prepared {
            id: req.id,
            topic,
            payload,
            deadline_ms: req.deadline_ms,
        };
        let size = prepared.size();
        if size > o.max_packet_size {
            return Err(CallError::TooLarge {
                instance: instance.clone(),
                id: prepared.id,
                size,
                limit: o.max_packet_size,
            });
        }
        Ok(prepared)
    }
}

/// The wire name of a typed method.
pub(crate) fn method_name(method: &Method) -> MethodName {
    // Infallible: every name the protocol defines is lowercase letters, digits and dots, well
    // within the length limit (the test `every_protocol_method_name_is_valid` checks them all).
    #[allow(clippy::expect_used)]
    MethodName::new(method.name()).expect("protocol method names are valid")
}

/// What ended a wait for a ready session.
enum Ready {
    Epoch(u64),
    DeadlinePassed,
    Closed,
}

async fn wait_ready(session: &mut watch::Receiver<LinkState>, deadline: Instant) -> Ready {
    if let Some(epoch) = session.borrow_and_update().epoch() {
        return Ready::Epoch(epoch);
    }
    match timeout_at(deadline.into(), session.wait_for(LinkState::is_ready)).await {
        Ok(Ok(s)) => Ready::Epoch(s.epoch().unwrap_or_default()),
        Ok(Err(_)) => Ready::Closed,
        Err(_) => Ready::DeadlinePassed,
    }
}

impl Inner {
    /// Queues a publish, waiting out a full request channel until the deadline.
    /// `Ok(false)` means the deadline passed first.
    async fn publish_until(
        &self,
        req: &Prepared,
        mut ack: Option<oneshot::Sender<()>>,
        deadline: Instant,
    ) -> Result<bool, QueueError> {
        loop {
            match self.try_publish(&req.topic, &req.payload, req.deadline_ms, &mut ack) {
                Ok(()) => return Ok(true),
                Err(QueueError::Full) if Instant::now() < deadline => {
                    sleep(CHANNEL_FULL_PAUSE).await;
                }
                Err(QueueError::Full) => return Ok(false),
                Err(QueueError::Closed) => return Err(QueueError::Closed),
            }
        }
    }

    async fn send_and_wait(
        &self,
        instance: &InstanceId,
        req: Prepared,
        opts: &CallOptions,
        start: Instant,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let closed = || CallError::Closed {
            instance: instance.clone(),
            id: req.id.clone(),
        };
        let slot = ReplySlot {
            shared: &self.shared,
            key: req.id.as_str(),
        };
        let (tx, mut rx) = oneshot::channel();
        if !slot.register(tx, true) {
            return Err(CallError::DuplicateId { id: req.id.clone() });
        }
        let mut session = self.session.clone();
        let mut attempts = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // The last retryable error, returned if the deadline passes before a better answer.
        let mut last_retryable: Option<Reply> = None;
        let mut losses = Losses::default();

        'attempt: while Instant::now() < deadline {
            let epoch = match wait_ready(&mut session, deadline).await {
                Ready::Epoch(e) => e,
                Ready::DeadlinePassed => break,
                Ready::Closed => return Err(closed()),
            };
            match self.publish_until(&req, None, deadline).await {
                Ok(true) => attempts += 1,
                Ok(false) => break,
                Err(_) => return Err(closed()),
            }
            let attempt_end = (Instant::now() + opts.attempt_timeout).min(deadline);
            // Session changes are mapped to a bool so no watch guard lives across an await.
            let session_changed =
                async { session.wait_for(|s| s.epoch() != Some(epoch)).await.is_ok() };
            tokio::select! {
                biased;
                reply = &mut rx => {
                    let Ok(reply) = reply else { return Err(closed()) };
                    let retryable = opts.retry_errors
                        && matches!(&reply.body, ReplyBody::Err(e) if e.retryable);
                    if !retryable {
                        return Ok(reply);
                    }
                    tracing::debug!(id = %req.id, ?reply, "retryable error; re-sending after a back-off");
                    last_retryable = Some(reply);
                    let delay = backoff.next_delay();
                    if Instant::now() + delay >= deadline {
                        break 'attempt;
                    }
                    // Listen again before re-sending, so the next reply finds a slot.
                    let (tx, new_rx) = oneshot::channel();
                    rx = new_rx;
                    slot.register(tx, false);
                    sleep(delay).await;
                }
                _ = sleep_until(attempt_end.into()) => {
                    tracing::debug!(id = %req.id, attempts, "no reply within the attempt timeout");
                }
                alive = session_changed => {
                    if !alive {
                        return Err(closed());
                    }
                    losses.note(epoch, &session.borrow());
                    tracing::debug!(id = %req.id, "broker session changed; re-sending when ready");
                }
            }
        }
        if let Some(reply) = last_retryable {
            return Ok(reply);
        }
        if let Some(e) = losses.error(instance, &req, attempts, start, &session.borrow()) {
            return Err(e);
        }
        Err(CallError::NoReply {
            instance: instance.clone(),
            id: req.id.clone(),
            attempts,
            waited: start.elapsed(),
        })
    }

    /// One-way request: re-publishes until the broker acknowledges one copy. Repeats are safe
    /// because the agent runs each id once.
    async fn send_noreply(
        &self,
        instance: &InstanceId,
        req: Prepared,
        opts: &CallOptions,
        start: Instant,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let closed = || CallError::Closed {
            instance: instance.clone(),
            id: req.id.clone(),
        };
        let mut session = self.session.clone();
        let mut attempts = 0u32;
        let mut losses = Losses::default();
        while Instant::now() < deadline {
            let epoch = match wait_ready(&mut session, deadline).await {
                Ready::Epoch(e) => e,
                Ready::DeadlinePassed => break,
                Ready::Closed => return Err(closed()),
            };
            let (tx, ack) = oneshot::channel();
            match self.publish_until(&req, Some(tx), deadline).await {
                Ok(true) => attempts += 1,
                Ok(false) => break,
                Err(_) => return Err(closed()),
            }
            let attempt_end = (Instant::now() + opts.attempt_timeout).min(deadline);
            tokio::select! {
                acked = ack => {
                    if acked.is_ok() {
                        return Ok(Reply::ok(req.id.clone(), Value::Null));
                    }
                    // The connection dropped before the PUBACK: publish again on the next session.
                    losses.note_unacked(epoch, &session.borrow());
                }
                _ = sleep_until(attempt_end.into()) => {}
            }
        }
        if let Some(e) = losses.error(instance, &req, attempts, start, &session.borrow()) {
            return Err(e);
        }
        Err(CallError::NotAcknowledged {
            instance: instance.clone(),
            id: req.id.clone(),
            attempts,
            waited: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::methods::ALL;
    use csg_protocol::MethodName;
    use csg_transport::Failure;

    fn prepared() -> Prepared {
        Prepared {
            id: RequestId::new("r1").unwrap(),
            topic: "t".into(),
            payload: b"{}".to_vec(),
            deadline_ms: None,
        }
    }

    #[test]
    fn a_reconnect_seen_only_as_a_new_epoch_is_a_loss() {
        let gw = InstanceId::new("gw").unwrap();
        let start = Instant::now();
        // The same session: nothing was lost (a spurious wake-up).
        let mut l = Losses::default();
        l.note(1, &LinkState::Ready(1));
        assert_eq!(l.count, 0);
        assert!(l
            .error(&gw, &prepared(), 1, start, &LinkState::Ready(1))
            .is_none());
        // Down then up again, coalesced by the watch: only the new epoch is seen.
        l.note(1, &LinkState::Ready(2));
        assert_eq!(l.count, 1);
        match l.error(&gw, &prepared(), 2, start, &LinkState::Ready(2)) {
            Some(CallError::ConnectionLost { losses, reason, .. }) => {
                assert_eq!(losses, 1);
                assert!(reason.contains("restored"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // A failure seen as such keeps its reason.
        l.note(
            2,
            &LinkState::Down(Some(Failure::Network("reset by peer".into()))),
        );
        assert_eq!(l.count, 2);
        assert_eq!(l.last.as_deref(), Some("reset by peer"));
    }

    #[test]
    fn an_unacknowledged_publish_is_a_loss_even_before_the_link_shows_it() {
        let mut l = Losses::default();
        l.note_unacked(1, &LinkState::Ready(1));
        assert_eq!(l.count, 1);
        l.note_unacked(1, &LinkState::Down(None));
        assert_eq!(l.count, 2);
        l.note_unacked(1, &LinkState::Ready(3));
        assert_eq!(l.count, 3);
    }

    #[test]
    fn every_protocol_method_name_is_valid() {
        for m in ALL {
            MethodName::new(*m).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
    }
}
