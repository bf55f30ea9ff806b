//! The call path: every call made through the console (the calls route, the resource routes)
//! is stored before its request is sent, sent through the region's [`Caller`] under a stable
//! request id, and finished in one place ([`CallService::finish`]), which stores the outcome
//! and publishes it on the bus.

use crate::now_ms;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use csg_console::{CallError, IdGenerator};
use csg_protocol::methods::Method;
use csg_protocol::{GroupId, InstanceId, MethodName, Reply, ReplyBody, RequestId};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::watch;
use tracing::warn;

use crate::audit;
use crate::events::{Bus, Event};
use crate::rpc::{CallSpec, Caller};
use crate::store::{CallInsert, CallRecord, CallState, Region, Store, StoreError};

/// A call's budget, re-sends included: 1 ms to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A call's budget, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeout(Duration);

impl CallTimeout {
    pub fn from_ms(ms: u64) -> Result<Self, String> {
        let max = u64::try_from(MAX_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        if (1..=max).contains(&ms) {
            Ok(CallTimeout(Duration::from_millis(ms)))
        } else {
            Err(format!("timeout_ms {ms}: 1 to {max}"))
        }
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for CallTimeout {
    fn default() -> Self {
        CallTimeout(DEFAULT_TIMEOUT)
    }
}

/// One call to make: checked before anything is stored or sent.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub instance: InstanceId,
    /// The gateway's group, as stored from its heartbeats.
    pub group: Option<GroupId>,
    /// Parsed by the protocol: the name and params are known good.
    pub method: Method,
    /// The params as the client sent them (what goes on the wire).
    pub params: Map<String, Value>,
    /// From `Idempotency-Key`; a fresh id when `None`.
    pub id: Option<RequestId>,
    pub timeout: CallTimeout,
    pub token_name: Option<String>,
    pub remote_addr: Option<String>,
    /// The audit action (`call`, `resource.put`, …); reads are not audited.
    pub action: &'static str,
}

/// Why a call gave no reply.
#[derive(Debug, Error)]
pub enum CallFailure {
    /// The same id was stored for another instance, method or params.
    #[error("request id {0} was used for another request")]
    IdReused(RequestId),
    /// The broker link is down: nothing was sent (or stored).
    #[error("the broker is unreachable: {0}")]
    BrokerDown(String),
    /// No answer within the budget; retry with the same id.
    #[error("no reply within the timeout; retry with request id {0}")]
    Timeout(RequestId),
    /// The console's connection dropped while waiting; retry with the same id.
    #[error("the connection to the broker was lost; retry with request id {0}")]
    ConnectionLost(RequestId),
    /// The request is larger than the MQTT packet limit.
    #[error("the request is too large: {0}")]
    TooLarge(String),
    /// Another request with this id is waiting on this console right now.
    #[error("request id {0} is already waiting for a reply")]
    InFlight(RequestId),
    /// A mutation stored long ago under this id, without a final answer: the agent no longer
    /// remembers the id, so sending it again could run it twice.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// A finished call: the reply as the agent sent it, and whether it came from the store.
#[derive(Debug, Clone)]
pub struct CallAnswer {
    pub id: RequestId,
    /// The reply envelope as it came (`{v, id, ok, result|error}`).
    pub reply: Value,
    /// The agent's error code when `ok` is false.
    pub error_code: Option<String>,
}

/// Calls for one region.
pub struct CallService {
    pub store: Arc<dyn Store>,
    pub caller: Arc<dyn Caller>,
    pub region: Region,
    pub bus: Bus,
    pub metrics: crate::metrics::Metrics,
    /// The broker link: a call is refused at once (503) while it is down.
    pub link: watch::Receiver<csg_transport::LinkState>,
    pub ids: IdGenerator,
    /// Calls whose task runs: a stopping service waits for them to record their outcome.
    pub in_flight: Arc<InFlight>,
}

/// The call tasks running (by request id), and a wake-up for whoever waits for none.
#[derive(Debug, Default)]
pub struct InFlight {
    ids: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    idle: tokio::sync::Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>, id: &RequestId) -> InFlightGuard {
        *self.lock().entry(id.as_str().to_owned()).or_insert(0) += 1;
        InFlightGuard(Arc::clone(self), id.as_str().to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        // The map stays consistent whatever panicked while holding it (one insert or remove).
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a task of this process is making (or recording) the call with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// How many call tasks run.
    pub fn count(&self) -> usize {
        self.lock().values().sum()
    }

    /// Waits (at most `limit`) until no call task runs; false when some still do.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, idle).await.is_ok()
    }
}

struct InFlightGuard(Arc<InFlight>, String);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let empty = {
            let mut ids = self.0.lock();
            if let Some(n) = ids.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    ids.remove(&self.1);
                }
            }
            ids.is_empty()
        };
        if empty {
            self.0.idle.notify_waiters();
        }
    }
}

/// SHA-256 of what a request asks (instance, method, the whole params): a repeat of an id must
/// ask exactly this. Secrets enter only through the digest.
pub fn request_hash(instance: &InstanceId, method: &str, params: &Map<String, Value>) -> String {
    let canon = json!([instance.as_str(), method, params]).to_string();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canon.as_bytes()))
}

impl CallService {
    /// Makes one call: stores it (pending) before sending, sends it under its id, finishes it.
    /// A repeat of a stored id that asks the same is sent again under that id (the agent
    /// answers a mutation from its id memory) or, when the stored call was answered, answered
    /// from the store without sending.
    pub async fn call(self: &Arc<Self>, req: CallRequest) -> Result<CallAnswer, CallFailure> {
        if let csg_transport::LinkState::Down(why) = &*self.link.borrow() {
            return Err(CallFailure::BrokerDown(why.as_ref().map_or_else(
                || "connecting".to_owned(),
                csg_transport::Failure::describe,
            )));
        }
        let id = req.id.clone().unwrap_or_else(|| self.ids.next_id());
        let method = req.method.name();
        let hash = request_hash(&req.instance, method, &req.params);
        let params = audit::redact(&Value::Object(req.params.clone()));
        let record = CallRecord {
            id: id.clone(),
            region: self.region.clone(),
            instance_id: req.instance.clone(),
            method: method.to_owned(),
            params,
            request_hash: hash.clone(),
            token_name: req.token_name.clone(),
            state: CallState::Pending,
            reply: None,
            error: None,
            started_ms: now_ms(),
            finished_ms: None,
            timeout_ms: i64::try_from(req.timeout.get().as_millis()).ok(),
        };
        // A read under an id of the console's own making has nothing stored under its id to
        // answer from, and running it twice is harmless: its row is written while the request
        // is on its way instead of before, which takes a store round trip off its latency. A
        // mutation, or any call under a client's Idempotency-Key, is stored before it is sent.
        let fresh_read = req.id.is_none() && req.method.kind() == csg_protocol::methods::Kind::Read;
        let inserted = if fresh_read {
            CallInsert::Inserted
        } else {
            self.store.insert_call(&record).await?
        };
        match inserted {
            CallInsert::Inserted => {}
            CallInsert::Existing(found) => {
                if found.request_hash != hash || found.region != self.region {
                    return Err(CallFailure::IdReused(id));
                }
                if let (CallState::Answered, Some(reply)) = (found.state, found.reply) {
                    let error_code = error_code_of(&reply);
                    return Ok(CallAnswer {
                        id,
                        reply,
                        error_code,
                    });
                }
                // Pending (another request is waiting, or a crash left it) or failed: send
                // again under the same id, while the agent still remembers it. Past its id
                // memory a mutation's repeat could run again: its outcome is unknown, and only
                // someone who looked at the gateway may send it anew (under a new key).
                let age = now_ms().saturating_sub(found.started_ms);
                if req.method.kind() == csg_protocol::methods::Kind::Mutation
                    && age > AGENT_ID_MEMORY_MS
                {
                    return Err(CallFailure::OutcomeUnknown(format!(
                        "request {} was first sent {} s ago without a final answer; agents \
                         remember a request id for {} s, so sending it again could run it twice. \
                         Check the gateway's state, then send under a new Idempotency-Key if \
                         still needed",
                        id.as_str(),
                        age / 1000,
                        AGENT_ID_MEMORY_MS / 1000
                    )));
                }
            }
        }
        let spec = CallSpec {
            instance: req.instance.clone(),
            method: MethodName::new(method).map_err(|e| CallFailure::Other(e.to_string()))?,
            params: req.params.clone(),
            id: id.clone(),
            timeout: req.timeout.get(),
            group: req.group.clone(),
        };
        // The call and its bookkeeping (stored outcome, audit, event) run in a task of their
        // own: a client that disconnects, or a route timeout, drops the handler's future, and
        // must not leave a sent mutation unrecorded.
        let this = Arc::clone(self);
        let guard = self.in_flight.enter(&id);
        let task = tokio::spawn(async move {
            let _guard = guard;
            let started = Instant::now();
            let result = if fresh_read {
                let (stored, result) =
                    tokio::join!(this.store.insert_call(&record), this.caller.call(&spec));
                // Without its row the outcome could not be stored either: the store's failure
                // is the answer, as it would have been before sending.
                stored?;
                result
            } else {
                this.caller.call(&spec).await
            };
            this.finish(&req, &record, result, started.elapsed()).await
        });
        task.await
            .map_err(|e| CallFailure::Other(format!("the call's task failed: {e}")))?
    }

    /// The one place a call finishes: stores the outcome, audits a mutation, counts it in the
    /// metrics and publishes the event.
    async fn finish(
        &self,
        req: &CallRequest,
        record: &CallRecord,
        result: Result<Reply, CallError>,
        latency: Duration,
    ) -> Result<CallAnswer, CallFailure> {
        let id = record.id.clone();
        let (outcome, answer) = match result {
            Ok(reply) => {
                let code = match &reply.body {
                    ReplyBody::Ok(_) => None,
                    ReplyBody::Err(e) => Some(e.code.as_str().to_owned()),
                };
                let value = serde_json::to_value(&reply)
                    .map_err(|e| CallFailure::Other(format!("reply: {e}")))?;
                (
                    code.clone().unwrap_or_else(|| "ok".to_owned()),
                    Ok(CallAnswer {
                        id: id.clone(),
                        reply: value,
                        error_code: code,
                    }),
                )
            }
            Err(e) => {
                let failure = match e {
                    CallError::NoReply { .. } | CallError::NotAcknowledged { .. } => {
                        CallFailure::Timeout(id.clone())
                    }
                    CallError::ConnectionLost { .. } | CallError::Closed { .. } => {
                        CallFailure::ConnectionLost(id.clone())
                    }
                    CallError::TooLarge { .. } => CallFailure::TooLarge(e.to_string()),
                    CallError::DuplicateId { .. } => CallFailure::InFlight(id.clone()),
                    CallError::Address { .. } => CallFailure::Other(e.to_string()),
                };
                let outcome = match &failure {
                    CallFailure::Timeout(_) => "timeout",
                    CallFailure::ConnectionLost(_) => "connection_lost",
                    CallFailure::InFlight(_) => "in_flight",
                    CallFailure::TooLarge(_) => "too_large",
                    _ => "failed",
                };
                (outcome.to_owned(), Err(failure))
            }
        };
        let now = now_ms();
        // A request already waiting under this id elsewhere says nothing about this call's row.
        let in_flight = matches!(answer, Err(CallFailure::InFlight(_)));
        if !in_flight {
            let stored = match &answer {
                // A retryable refusal (BUSY, UNAVAILABLE, TIMEOUT) is not the request's outcome:
                // it is stored as failed, so a repeat of the id is sent again rather than
                // answered with the refusal forever.
                Ok(a) if is_retryable(&a.reply) => {
                    let text = a
                        .reply
                        .pointer("/error/code")
                        .and_then(Value::as_str)
                        .unwrap_or("retryable error");
                    self.store
                        .finish_call(&id, CallState::Failed, None, Some(text), now)
                        .await
                }
                Ok(a) => {
                    self.store
                        .finish_call(&id, CallState::Answered, Some(&a.reply), None, now)
                        .await
                }
                Err(f) => {
                    self.store
                        .finish_call(&id, CallState::Failed, None, Some(&f.to_string()), now)
                        .await
                }
            };
            if let Err(e) = stored {
                // The agent's answer still goes to the client; the row stays pending, and a
                // repeat of the id sends again (answered from the agent's id memory).
                warn!(id = id.as_str(), error = %e, "the call's outcome was not stored");
            }
        }
        if req.method.kind() == csg_protocol::methods::Kind::Mutation {
            let event = crate::store::AuditEvent {
                at_ms: now,
                region: self.region.clone(),
                token_name: req.token_name.clone(),
                remote_addr: req.remote_addr.clone(),
                action: req.action.to_owned(),
                instance_id: Some(req.instance.as_str().to_owned()),
                method: Some(record.method.clone()),
                params: Some(record.params.clone()),
                outcome: outcome.clone(),
                request_id: Some(id.as_str().to_owned()),
            };
            let _ = audit::record(self.store.as_ref(), &event).await;
        }
        self.metrics
            .observe_call(self.region.as_str(), &record.method, &outcome, latency);
        self.bus.publish(Event::Call {
            region: self.region.as_str().to_owned(),
            instance_id: req.instance.as_str().to_owned(),
            group_id: req.group.as_ref().map(|g| g.as_str().to_owned()),
            id: id.as_str().to_owned(),
            method: record.method.clone(),
            outcome,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        });
        answer
    }
}

// --- the sweeper of calls left pending ---

/// How often the sweeper looks for calls left pending (and once when it starts).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long past the end of a call's budget the sweeper leaves it alone: the process that sent
/// it had the whole budget to wait, then this long to store the outcome (a store write waits
/// up to 5 s for a connection). Later than that, no live process is still waiting for it.
pub const SWEEP_MARGIN: Duration = Duration::from_secs(10);
/// At most this many calls per sweep; the rest wait for the next.
const SWEEP_BATCH: u32 = 100;
/// The start of the error stored for a call whose outcome the console cannot know.
pub const UNKNOWN_OUTCOME: &str = "UNKNOWN_OUTCOME";
/// The audit action of what the sweeper does.
const SWEEP_ACTION: &str = "call.sweep";

/// What the sweeper did with one call it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swept {
    /// Sent again under its id, in a task of its own that stores the outcome.
    Resent,
    /// Ended `failed` with an [`UNKNOWN_OUTCOME`] error: sending it again could run it twice,
    /// or its request was not kept whole. The reason.
    OutcomeUnknown(String),
    /// A task of this process is still on it: left alone.
    Busy,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl CallService {
    /// Runs the sweeper until `stop` fires: one sweep at once, then one every [`SWEEP_EVERY`].
    /// A sweep that fails (the store away) is logged and the next one tries again.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match this.sweep().await {
                    Ok(done) if !done.is_empty() => {
                        tracing::info!(calls = done.len(), "calls left pending taken up");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "the sweep of pending calls failed; next in 5 s"),
                }
                tokio::select! {
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                    _ = &mut stop => return,
                }
            }
        })
    }

    /// One sweep: takes (in the store, so no other replica takes them too) the calls of this
    /// region still pending past their budget and [`SWEEP_MARGIN`], and for each that no task
    /// of this process is on: sends it again under its id while the agent still remembers the
    /// id (it answers a request it ran from its memory, or runs one it never got) and stores
    /// the outcome; past that, or when its request was not stored whole, ends it
    /// [`UNKNOWN_OUTCOME`]. Nothing is taken while the broker link is down.
    pub async fn sweep(self: &Arc<Self>) -> Result<Vec<(RequestId, Swept)>, StoreError> {
        if matches!(&*self.link.borrow(), csg_transport::LinkState::Down(_)) {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let claim = crate::store::StaleCalls {
            region: self.region.clone(),
            now_ms: now,
            margin_ms: ms(SWEEP_MARGIN),
            default_timeout_ms: ms(MAX_TIMEOUT),
            // Long enough for a re-send's whole budget and its bookkeeping.
            lease_until_ms: now
                .saturating_add(ms(MAX_TIMEOUT))
                .saturating_add(ms(SWEEP_MARGIN)),
            limit: SWEEP_BATCH,
        };
        let mut done = Vec::new();
        for call in self.store.claim_stale_calls(&claim).await? {
            let id = call.id.clone();
            // One call the store fails on stays leased and is taken again after its lease;
            // the others of the batch go on.
            match self.sweep_one(call).await {
                Ok(swept) => done.push((id, swept)),
                Err(e) => {
                    warn!(id = id.as_str(), error = %e, "a call left pending was not taken up; again after its lease");
                }
            }
        }
        Ok(done)
    }

    async fn sweep_one(self: &Arc<Self>, call: CallRecord) -> Result<Swept, StoreError> {
        if self.in_flight.contains(call.id.as_str()) {
            return Ok(Swept::Busy);
        }
        let timeout = call
            .timeout_ms
            .and_then(|t| u64::try_from(t).ok())
            .and_then(|t| CallTimeout::from_ms(t).ok())
            .unwrap_or_default();
        let params = match &call.params {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        let method = Method::parse(&call.method, params.clone()).ok();
        // The re-send reaches the agent within its budget: it must arrive while the agent
        // still remembers the id, counted (early) from the first send.
        let age = now_ms().saturating_sub(call.started_ms);
        let why_not = if age.saturating_add(ms(timeout.get())) > AGENT_ID_MEMORY_MS {
            Some(format!(
                "no outcome was stored and the request was first sent {} s ago; agents \
                 remember a request id for {} s, so sending it again could run it twice",
                age / 1000,
                AGENT_ID_MEMORY_MS / 1000
            ))
        } else if request_hash(&call.instance_id, &call.method, &params) != call.request_hash {
            Some(
                "no outcome was stored, and the request cannot be sent again as it was: its \
                 params were stored with their secrets redacted"
                    .to_owned(),
            )
        } else if method.is_none() {
            Some(
                "no outcome was stored, and the stored request is not one the protocol accepts"
                    .to_owned(),
            )
        } else {
            None
        };
        let (Some(method), None) = (method, &why_not) else {
            let why = why_not.unwrap_or_default();
            self.mark_unknown(&call, &why).await?;
            return Ok(Swept::OutcomeUnknown(why));
        };
        let group = self
            .store
            .get_instance(&self.region, &call.instance_id)
            .await?
            .map(|row| row.group_id);
        let spec = CallSpec {
            instance: call.instance_id.clone(),
            method: match MethodName::new(&call.method) {
                Ok(m) => m,
                Err(e) => {
                    let why = format!("stored method: {e}");
                    self.mark_unknown(&call, &why).await?;
                    return Ok(Swept::OutcomeUnknown(why));
                }
            },
            params: params.clone(),
            id: call.id.clone(),
            timeout: timeout.get(),
            group: group.clone(),
        };
        let req = CallRequest {
            instance: call.instance_id.clone(),
            group,
            method,
            params,
            id: Some(call.id.clone()),
            timeout,
            token_name: call.token_name.clone(),
            remote_addr: None,
            action: SWEEP_ACTION,
        };
        let this = Arc::clone(self);
        let guard = self.in_flight.enter(&call.id);
        tokio::spawn(async move {
            let _guard = guard;
            let started = Instant::now();
            let result = this.caller.call(&spec).await;
            if let Err(e) = this.finish(&req, &call, result, started.elapsed()).await {
                tracing::info!(id = call.id.as_str(), error = %e, "a swept call sent again got no answer");
            }
        });
        Ok(Swept::Resent)
    }

    /// Ends a call the sweeper cannot send again: failed, its outcome unknown (the agent may or
    /// may not have run it); audited when it is a mutation, and published.
    async fn mark_unknown(&self, call: &CallRecord, why: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.store
            .finish_call(
                &call.id,
                CallState::Failed,
                None,
                Some(&format!("{UNKNOWN_OUTCOME}: {why}")),
                now,
            )
            .await?;
        warn!(id = call.id.as_str(), instance = call.instance_id.as_str(), method = %call.method, "a call left pending ends with its outcome unknown: {why}");
        let mutation = call.params.as_object().is_none_or(|p| {
            Method::parse(&call.method, p.clone())
                .map_or(true, |m| m.kind() == csg_protocol::methods::Kind::Mutation)
        });
        if mutation {
            let event = crate::store::AuditEvent {
                at_ms: now,
                region: self.region.clone(),
                token_name: call.token_name.clone(),
                remote_addr: None,
                action: SWEEP_ACTION.to_owned(),
                instance_id: Some(call.instance_id.as_str().to_owned()),
                method: Some(call.method.clone()),
                params: Some(call.params.clone()),
                outcome: "unknown_outcome".to_owned(),
                request_id: Some(call.id.as_str().to_owned()),
            };
            let _ = audit::record(self.store.as_ref(), &event).await;
        }
        self.bus.publish(Event::Call {
            region: self.region.as_str().to_owned(),
            instance_id: call.instance_id.as_str().to_owned(),
            group_id: None,
            id: call.id.as_str().to_owned(),
            method: call.method.clone(),
            outcome: "unknown_outcome".to_owned(),
            latency_ms: u64::try_from(now.saturating_sub(call.started_ms)).unwrap_or(0),
        });
        Ok(())
    }
}

/// How long an agent remembers a request id after the request finished (protocol.md §7: at
/// least ten minutes); past it a repeat may run again. Counted here from the first send, which
/// is earlier than the end of the run: the refusal comes early, never late.
pub const AGENT_ID_MEMORY_MS: i64 = 10 * 60 * 1000;

/// Whether an agent's reply is an error it marks retryable.
fn is_retryable(reply: &Value) -> bool {
    reply.get("ok") == Some(&Value::Bool(false))
        && reply.pointer("/error/retryable") == Some(&Value::Bool(true))
}

/// `error.code` of a stored reply whose `ok` is false.
fn error_code_of(reply: &Value) -> Option<String> {
    (reply.get("ok") == Some(&Value::Bool(false)))
        .then(|| reply.pointer("/error/code").and_then(Value::as_str))
        .flatten()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert!(CallTimeout::from_ms(0).is_err());
        assert!(CallTimeout::from_ms(120_001).is_err());
        assert_eq!(
            CallTimeout::from_ms(1).unwrap().get(),
            Duration::from_millis(1)
        );
        assert_eq!(CallTimeout::from_ms(120_000).unwrap().get(), MAX_TIMEOUT);
        assert_eq!(CallTimeout::default().get(), DEFAULT_TIMEOUT);
    }

    #[test]
    fn the_request_hash_tells_requests_apart_and_hides_secrets() {
        let gw = InstanceId::new("gw-1").unwrap();
        let params = |pw: &str| {
            let mut m = Map::new();
            m.insert("username".into(), json!("alice"));
            m.insert("password".into(), json!(pw));
            m
        };
        let a = request_hash(&gw, "smb.user.set", &params("Secret-1234"));
        assert_eq!(a, request_hash(&gw, "smb.user.set", &params("Secret-1234")));
        assert_ne!(a, request_hash(&gw, "smb.user.set", &params("Secret-9999")));
        assert_ne!(
            a,
            request_hash(
                &InstanceId::new("gw-2").unwrap(),
                "smb.user.set",
                &params("Secret-1234")
            )
        );
        assert!(!a.contains("Secret"));
    }

    #[test]
    fn a_stored_reply_tells_its_error_code() {
        assert_eq!(
            error_code_of(&json!({"ok": false, "error": {"code": "CONFLICT"}})).as_deref(),
            Some("CONFLICT")
        );
        assert_eq!(error_code_of(&json!({"ok": true, "result": {}})), None);
    }

    /// Answers as an agent would, from a script: the first `busy` sends get BUSY, the rest OK.
    /// A stand-in for the broker and agent (the end-to-end tests use real ones) so that the
    /// service's bookkeeping of a retryable refusal is checked exactly.
    struct Busy {
        busy: std::sync::atomic::AtomicUsize,
        sent: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Caller for Busy {
        async fn call(&self, spec: &CallSpec) -> Result<Reply, CallError> {
            use std::sync::atomic::Ordering;
            self.sent.fetch_add(1, Ordering::SeqCst);
            if self.busy.load(Ordering::SeqCst) > 0 {
                self.busy.fetch_sub(1, Ordering::SeqCst);
                return Ok(Reply::err(
                    Some(spec.id.clone()),
                    csg_protocol::envelope::RpcError::new(
                        csg_protocol::envelope::ErrorCode::Busy,
                        "too many requests",
                    ),
                ));
            }
            Ok(Reply::ok(spec.id.clone(), json!({"ok": 1})))
        }
    }

    async fn service(busy: usize) -> (Arc<CallService>, Arc<Busy>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let caller = Arc::new(Busy {
            busy: busy.into(),
            sent: 0.into(),
        });
        let (_tx, link) = watch::channel(csg_transport::LinkState::Ready(1));
        // The sender is dropped: the link stays as it was set.
        let svc = Arc::new(CallService {
            store,
            caller: caller.clone(),
            region: Region::new("default").unwrap(),
            bus: Bus::default(),
            metrics: crate::metrics::Metrics::new(),
            link,
            ids: IdGenerator::new("test"),
            in_flight: Arc::default(),
        });
        (svc, caller, dir)
    }

    fn reconcile(id: &str) -> CallRequest {
        let params = Map::new();
        CallRequest {
            instance: InstanceId::new("gw-1").unwrap(),
            group: None,
            method: Method::parse("sys.reconcile", params.clone()).unwrap(),
            params,
            id: Some(RequestId::new(id).unwrap()),
            timeout: CallTimeout::default(),
            token_name: None,
            remote_addr: None,
            action: "call",
        }
    }

    /// A BUSY answer is handed to the client but not kept as the call's outcome: the repeat of
    /// the id is sent again and its real answer kept.
    #[tokio::test]
    async fn a_retryable_refusal_is_not_the_outcome_and_the_repeat_is_sent() {
        use std::sync::atomic::Ordering;
        let (svc, caller, _dir) = service(1).await;
        let first = svc.call(reconcile("key-1")).await.unwrap();
        assert_eq!(first.error_code.as_deref(), Some("BUSY"));
        let row = svc
            .store
            .get_call(&RequestId::new("key-1").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, CallState::Failed);
        let second = svc.call(reconcile("key-1")).await.unwrap();
        assert_eq!(second.error_code, None, "{:?}", second.reply);
        assert_eq!(caller.sent.load(Ordering::SeqCst), 2);
        // Answered now: a third is answered from the store, not sent.
        let third = svc.call(reconcile("key-1")).await.unwrap();
        assert_eq!(third.error_code, None);
        assert_eq!(caller.sent.load(Ordering::SeqCst), 2);
    }

    /// A call left pending that a task of this process is still on (its outcome not yet
    /// stored) is not sent again by the sweeper; the claim's lease keeps it from the next
    /// sweeps.
    #[tokio::test]
    async fn the_sweeper_leaves_a_call_this_process_is_on() {
        use std::sync::atomic::Ordering;
        let (svc, caller, _dir) = service(0).await;
        let req = reconcile("key-busy");
        let id = RequestId::new("key-busy").unwrap();
        svc.store
            .insert_call(&CallRecord {
                id: id.clone(),
                region: svc.region.clone(),
                instance_id: req.instance.clone(),
                method: "sys.reconcile".into(),
                params: json!({}),
                request_hash: request_hash(&req.instance, "sys.reconcile", &req.params),
                token_name: None,
                state: CallState::Pending,
                reply: None,
                error: None,
                started_ms: now_ms() - 60_000,
                finished_ms: None,
                timeout_ms: Some(1_000),
            })
            .await
            .unwrap();
        let on_it = svc.in_flight.enter(&id);
        assert!(svc.in_flight.contains("key-busy"));
        let done = svc.sweep().await.unwrap();
        assert_eq!(done, vec![(id.clone(), Swept::Busy)]);
        assert_eq!(caller.sent.load(Ordering::SeqCst), 0);
        drop(on_it);
        assert!(!svc.in_flight.contains("key-busy"));
        assert!(svc.sweep().await.unwrap().is_empty(), "leased");
        let row = svc.store.get_call(&id).await.unwrap().unwrap();
        assert_eq!(row.state, CallState::Pending);
    }

    /// A mutation first sent longer ago than agents remember ids, without a final answer, is
    /// not sent again under that id (it could run twice).
    #[tokio::test]
    async fn an_old_unfinished_mutation_is_not_sent_again() {
        use std::sync::atomic::Ordering;
        let (svc, caller, _dir) = service(0).await;
        let req = reconcile("key-old");
        let params = audit::redact(&Value::Object(req.params.clone()));
        svc.store
            .insert_call(&CallRecord {
                id: RequestId::new("key-old").unwrap(),
                region: svc.region.clone(),
                instance_id: req.instance.clone(),
                method: "sys.reconcile".into(),
                params,
                request_hash: request_hash(&req.instance, "sys.reconcile", &req.params),
                token_name: None,
                state: CallState::Pending,
                reply: None,
                error: None,
                started_ms: now_ms() - AGENT_ID_MEMORY_MS - 1_000,
                finished_ms: None,
                timeout_ms: Some(10_000),
            })
            .await
            .unwrap();
        match svc.call(req).await {
            Err(CallFailure::OutcomeUnknown(why)) => {
                assert!(why.contains("new Idempotency-Key"), "{why}");
            }
            other => panic!("sent again: {other:?}"),
        }
        assert_eq!(caller.sent.load(Ordering::SeqCst), 0);
    }
}
