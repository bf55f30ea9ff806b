//! `sys.ping`, `sys.info`, `sys.status`, `sys.reconcile`: the agent itself.

use csg_protocol::methods::sys::PingResult;
use csg_protocol::methods::MethodResult;
use csg_protocol::now_ms;

use super::Handlers;

pub fn ping() -> MethodResult {
    MethodResult::Ping(PingResult {
        pong: true,
        ts_ms: now_ms(),
    })
}

pub fn info(h: &Handlers) -> MethodResult {
    // A poisoned lock still holds a whole InfoResult: it is only ever replaced whole.
    let info = h
        .info
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    MethodResult::Info(Box::new(info.clone()))
}

pub async fn status(h: &Handlers) -> MethodResult {
    MethodResult::Status(Box::new(h.status.snapshot().await))
}

/// Re-applies the whole desired state of every storage family; the result names, per family,
/// what it changed (or why it could not).
pub async fn reconcile(h: &Handlers) -> MethodResult {
    MethodResult::Reconcile(h.storage.read().await.reconcile().await)
}
