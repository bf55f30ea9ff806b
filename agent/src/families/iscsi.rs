//! Adapts the previous iSCSI handler (`handlers/iscsi.rs`, which still takes a method name with
//! JSON params and answers JSON) to the typed family interface. It goes away with that handler.

use csg_protocol::methods::{Changes, IscsiMethod, Method, MethodResult};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::RpcError;
use serde_json::{Map, Value};

use super::{BoxFut, Family, StorageCtx};
use crate::config::iscsi::{IscsiBackendKind, IscsiSettings};

/// The interface the previous handler implements.
pub trait LegacyFamily: Send + Sync {
    fn name(&self) -> &'static str;
    fn methods(&self) -> &'static [&'static str];
    fn call<'a>(
        &'a self,
        method: &'a str,
        params: Map<String, Value>,
    ) -> BoxFut<'a, Result<Value, RpcError>>;
    fn reconcile(&self) -> BoxFut<'_, Result<Value, RpcError>>;
    fn service(&self) -> BoxFut<'_, ServiceState>;
    fn summary(&self) -> BoxFut<'_, FamilySummary>;
}

pub struct Iscsi {
    inner: Box<dyn LegacyFamily>,
    backend: &'static str,
}

pub fn build(cfg: &IscsiSettings, ctx: &StorageCtx) -> Result<Option<Iscsi>, String> {
    let backend = match cfg.backend {
        IscsiBackendKind::Disabled => return Ok(None),
        IscsiBackendKind::Tgt => "tgt",
        IscsiBackendKind::Lio => "lio",
    };
    Ok(crate::handlers::iscsi::build(cfg, ctx)?.map(|inner| Iscsi { inner, backend }))
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    serde_json::from_value(v).map_err(|e| RpcError::internal(format!("iscsi result: {e}")))
}

impl Iscsi {
    pub async fn call(&self, m: IscsiMethod) -> Result<MethodResult, RpcError> {
        let m = Method::Iscsi(m);
        let v = self.inner.call(m.name(), m.params()).await?;
        MethodResult::decode(m.name(), v).map_err(|e| RpcError::internal(e.to_string()))
    }
}

impl Family for Iscsi {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn backend(&self) -> &'static str {
        self.backend
    }
    fn methods(&self) -> &'static [&'static str] {
        self.inner.methods()
    }
    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>> {
        Box::pin(async move {
            let v = self.inner.reconcile().await?;
            Ok(Changes::Iscsi(decode(v)?))
        })
    }
    fn service(&self) -> BoxFut<'_, ServiceState> {
        self.inner.service()
    }
    fn summary(&self) -> BoxFut<'_, FamilySummary> {
        self.inner.summary()
    }
}
