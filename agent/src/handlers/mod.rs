//! Method registry: routes a method name to its family's handler.
//!
//! Each family lives in its own file and follows one pattern: params → a validated, typed
//! spec → apply. A handler never sees the MQTT client; it returns a result or an `RpcError`.

pub mod iscsi;
pub mod nfs;
pub mod smb;
pub mod sys;

use std::sync::Arc;

use csg_protocol::methods::sys as sysm;
use csg_protocol::{ErrorCode, MethodName, RpcError};
use serde_json::{Map, Value};

use crate::status::StatusSource;
use crate::storage::{SharedStorage, Storage};

/// The agent's own methods (storage families add theirs).
pub const SYS_METHODS: &[&str] = &[sysm::INFO, sysm::PING, sysm::RECONCILE, sysm::STATUS];

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

    /// Waits for a slot of `method`'s family (its first segment: `nfs` for `nfs.export.list`).
    pub async fn acquire(&self, method: &str) -> tokio::sync::OwnedSemaphorePermit {
        let family = method.split('.').next().unwrap_or(method);
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

impl Handlers {
    pub async fn call(
        &self,
        method: &MethodName,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        let _slot = self.limits.acquire(method.as_str()).await;
        match method.as_str() {
            sysm::PING => sys::ping(params),
            sysm::INFO => sys::info(self, params),
            sysm::STATUS => sys::status(self, params).await,
            sysm::RECONCILE => sys::reconcile(self, params).await,
            // Lets the dispatcher's tests prove a panicking handler still gets answered.
            #[cfg(test)]
            "test.panic" => panic!("test handler panics on purpose"),
            other => match self.storage.read().await.call(other, params).await {
                Some(r) => r,
                None => Err(RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!(
                        "unknown method {other:?}; sys.info lists the methods this agent supports"
                    ),
                )),
            },
        }
    }
}

/// Refuses params a method does not take: a typo in a key must not pass silently.
pub fn no_params(method: &str, params: &Map<String, Value>) -> Result<(), RpcError> {
    match params.keys().next() {
        None => Ok(()),
        Some(k) => Err(RpcError::invalid_params(format!(
            "{method} takes no params, got {:?}",
            k.chars().take(64).collect::<String>()
        ))),
    }
}

pub fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))
}
