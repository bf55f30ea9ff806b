//! `sys.ping`, `sys.info`, `sys.status`, `sys.reconcile`: the agent itself.

use csg_protocol::methods::sys::PingResult;
use csg_protocol::{now_ms, RpcError};
use serde_json::Value;

use super::{to_value, Handlers};

pub fn ping() -> Result<Value, RpcError> {
    to_value(&PingResult {
        pong: true,
        ts_ms: now_ms(),
    })
}

pub fn info(h: &Handlers) -> Result<Value, RpcError> {
    to_value(&*h.info.read().expect("info lock"))
}

pub async fn status(h: &Handlers) -> Result<Value, RpcError> {
    to_value(&h.status.snapshot().await)
}

/// Re-applies the whole desired state of every storage family; the result names, per family,
/// what it changed (or why it could not).
pub async fn reconcile(h: &Handlers) -> Result<Value, RpcError> {
    Ok(h.storage.read().await.reconcile().await)
}
