//! Calls to gateways: the one seam between what asks for a call (the API's calls and resource
//! routes, jobs) and the MQTT session that carries it.
//!
//! [`Caller`] is a trait so that the job engine can be tested without a broker; the service's
//! caller is [`ConsoleCaller`], the console library's call with its retry policy (same id on
//! every re-send, so a mutation never runs twice).

use std::time::Duration;

use async_trait::async_trait;
use csg_console::{CallError, CallOptions, Console, Signer};
use csg_protocol::{GroupId, InstanceId, MethodName, Reply, RequestId};
use serde_json::{Map, Value};

/// One call: to whom, what, under which request id, for how long at most.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub instance: InstanceId,
    pub method: MethodName,
    pub params: Map<String, Value>,
    /// The request id; a repeat with the same id is answered from the agent's id memory.
    pub id: RequestId,
    /// The whole call's budget, re-sends included.
    pub timeout: Duration,
    /// The gateway's group (from its heartbeats): its client id, a signed command's audience.
    pub group: Option<GroupId>,
}

/// Sends a call and waits for the agent's reply.
///
/// `Ok` whenever the agent answered, remote errors included; `Err` only when no answer came
/// (timeout, the broker connection) or the request could not be sent.
#[async_trait]
pub trait Caller: Send + Sync {
    async fn call(&self, spec: &CallSpec) -> Result<Reply, CallError>;
}

/// The service's caller: one console session per region, signing when a key is configured.
pub struct ConsoleCaller {
    pub console: Console,
    pub signer: Option<Signer>,
}

#[async_trait]
impl Caller for ConsoleCaller {
    async fn call(&self, spec: &CallSpec) -> Result<Reply, CallError> {
        let opts = CallOptions {
            timeout: spec.timeout,
            id: Some(spec.id.clone()),
            signer: self.signer.clone(),
            group: spec.group.clone(),
            ..CallOptions::default()
        };
        self.console
            .call(&spec.instance, &spec.method, spec.params.clone(), &opts)
            .await
    }
}
