//! `sys.ping`, `sys.info`, `sys.status`: the agent itself.

use csg_protocol::methods::sys::{PingResult, INFO, PING, RECONCILE, STATUS};
use csg_protocol::{now_ms, RpcError};
use serde_json::{Map, Value};

use super::{no_params, to_value, Handlers};

pub fn ping(params: Map<String, Value>) -> Result<Value, RpcError> {
    no_params(PING, &params)?;
    to_value(&PingResult {
        pong: true,
        ts_ms: now_ms(),
    })
}

pub fn info(h: &Handlers, params: Map<String, Value>) -> Result<Value, RpcError> {
    no_params(INFO, &params)?;
    to_value(&*h.info.read().expect("info lock"))
}

pub async fn status(h: &Handlers, params: Map<String, Value>) -> Result<Value, RpcError> {
    no_params(STATUS, &params)?;
    to_value(&h.status.snapshot().await)
}

/// Re-applies the whole desired state of every storage family; the result names, per family,
/// what it changed (or why it could not).
pub async fn reconcile(h: &Handlers, params: Map<String, Value>) -> Result<Value, RpcError> {
    no_params(RECONCILE, &params)?;
    Ok(h.storage.read().await.reconcile().await)
}
