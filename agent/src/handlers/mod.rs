//! Routes a typed [`Method`]: `sys.*` to the agent itself, the rest to [`Storage::call`].
//! A handler never sees the MQTT client; it returns a typed result or an `RpcError`.

pub mod sys;

use std::sync::Arc;

use csg_protocol::methods::sys as sysm;
use csg_protocol::methods::{Method, MethodResult, SysMethod};
use csg_protocol::{ErrorCode, RpcError};

use crate::families::{SharedStorage, Storage};
use crate::status::StatusSource;

/// The agent's own methods (storage families add theirs).
pub const SYS_METHODS: &[&str] = &[
    sysm::CAPABILITIES,
    sysm::INFO,
    sysm::PING,
    sysm::RECONCILE,
    sysm::STATUS,
];

/// One bound per method family: a flood of one kind of request (say `nfs.export.list`)
/// queues behind its own family's permits and never takes every execution slot from the
/// others (`sys.ping` keeps answering). The total is bounded by the dispatcher's in-flight
/// limit, beyond which requests are answered `BUSY`.
pub struct FamilyLimits {
    per_family: usize,
    families: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl FamilyLimits {
    pub fn new(per_family: usize) -> Self {
        Self {
            per_family,
            families: Default::default(),
        }
    }

    /// Waits for a slot of `family` (`nfs` for `nfs.export.list`).
    pub async fn acquire(&self, family: &'static str) -> tokio::sync::OwnedSemaphorePermit {
        let sem = self
            .families
            .lock()
            .expect("family limits lock")
            .entry(family.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_family)))
            .clone();
        sem.acquire_owned()
            .await
            .expect("family semaphores are never closed")
    }
}

/// What handlers may use.
pub struct Handlers {
    pub status: Arc<StatusSource>,
    pub limits: FamilyLimits,
    pub storage: SharedStorage,
    /// Swapped with the storage on a reload (the methods and backends it reports change).
    pub info: std::sync::RwLock<sysm::InfoResult>,
    /// Swapped with the storage and config on a reload, like `info`.
    pub capabilities: std::sync::RwLock<sys::Capabilities>,
}

/// Every method answered with this storage configuration, sorted (reported by `sys.info`).
pub fn methods(storage: &Storage) -> Vec<String> {
    let mut m: Vec<String> = SYS_METHODS
        .iter()
        .copied()
        .chain(storage.methods())
        .map(String::from)
        .collect();
    m.sort();
    m
}

#[cfg(test)]
thread_local! {
    /// Makes the next `sys.ping` on this thread panic: lets the dispatcher's tests prove a
    /// panicking handler is still answered (their runtime runs handlers on the test's thread).
    pub static PANIC_ON_PING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Handlers {
    /// Runs one parsed method. Storage methods of a family that is not configured are
    /// `UNKNOWN_METHOD`, as `sys.info` does not list them.
    pub async fn call(&self, method: Method) -> Result<MethodResult, RpcError> {
        let _slot = self.limits.acquire(method.family()).await;
        match method {
            Method::Sys(SysMethod::Ping) => {
                #[cfg(test)]
                if PANIC_ON_PING.with(|p| p.replace(false)) {
                    panic!("test handler panics on purpose");
                }
                Ok(sys::ping())
            }
            Method::Sys(SysMethod::Info) => Ok(sys::info(self)),
            Method::Sys(SysMethod::Capabilities) => Ok(sys::capabilities(self)),
            Method::Sys(SysMethod::Status) => Ok(sys::status(self).await),
            Method::Sys(SysMethod::Reconcile) => Ok(sys::reconcile(self).await),
            storage => {
                let name = storage.name();
                match self.storage.read().await.call(storage).await {
                    Some(r) => r,
                    None => Err(RpcError::new(
                        ErrorCode::UnknownMethod,
                        format!(
                            "unknown method {name:?}; sys.info lists the methods this agent supports"
                        ),
                    )),
                }
            }
        }
    }
}
