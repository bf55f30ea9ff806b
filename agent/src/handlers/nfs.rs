//! `nfs.export.*`: NFS exports on kernel nfsd (`exportfs`) or NFS-Ganesha (D-Bus).
//!
//! Every mutation: params → validated [`ExportSpec`] (plus the path resolved under a storage
//! root) → under the family's lock: compare with the desired state (same → no-op, different
//! → CONFLICT) → save the new desired state → apply to the backend, which verifies by
//! reading back and restores its previous state on failure → on failure restore the previous
//! desired state too. Reads take no lock.

use std::collections::BTreeMap;

use csg_protocol::methods::nfs::{
    self as m, ActualExport, DeleteResult, ExportParams, ExportSpec, ExportStatus, ListResult,
    MutateResult, NameParams,
};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::{ErrorCode, RpcError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::backends::exportfs::Exportfs;
use crate::backends::ganesha::Ganesha;
use crate::backends::memory::MemoryExports;
use crate::config::nfs::{NfsBackendKind, NfsSettings};
use crate::exec::ExecError;
use crate::storage::paths::PathKind;
use crate::storage::{BoxFut, Family, StorageCtx};

const FAMILY: &str = "nfs";

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &NfsSettings, ctx: &StorageCtx) -> Result<Option<Box<dyn Family>>, String> {
    let backend = match cfg.backend {
        NfsBackendKind::Disabled => return Ok(None),
        NfsBackendKind::Kernel => Backend::Kernel(Exportfs::new(
            cfg.exports_file.clone(),
            cfg.exportfs.clone(),
            ctx.timeout,
        )),
        NfsBackendKind::Ganesha => Backend::Ganesha(Ganesha::new(
            cfg.ganesha_dir.clone(),
            cfg.dbus_send.clone(),
            cfg.dbus_address.clone(),
            ctx.timeout,
        )),
    };
    Ok(Some(Box::new(Nfs {
        backend,
        ctx: ctx.clone(),
        allow_hostnames: cfg.allow_hostnames,
        first_id: cfg.first_export_id,
        lock: Mutex::new(()),
    })))
}

/// The family on an in-memory export table (the fleet simulator): the kernel backend's rules,
/// rendering and read-back, without nfsd.
pub fn build_in_memory(cfg: &NfsSettings, ctx: &StorageCtx) -> Box<dyn Family> {
    Box::new(Nfs {
        backend: Backend::Memory(MemoryExports::new()),
        ctx: ctx.clone(),
        allow_hostnames: cfg.allow_hostnames,
        first_id: cfg.first_export_id,
        lock: Mutex::new(()),
    })
}

/// Why an apply or a read failed.
#[derive(Debug)]
pub enum ApplyError {
    /// The daemon or the tool is not there (retryable).
    Unavailable(String),
    /// A program was killed after the timeout (retryable).
    Timeout(String),
    /// The tool or daemon refused or failed.
    Failed(String),
    Internal(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Unavailable(m)
            | ApplyError::Timeout(m)
            | ApplyError::Failed(m)
            | ApplyError::Internal(m) => f.write_str(m),
        }
    }
}

impl ApplyError {
    pub fn from_exec(e: ExecError) -> Self {
        match &e {
            ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ApplyError::Unavailable(e.to_string())
            }
            ExecError::Timeout { .. } => ApplyError::Timeout(e.to_string()),
            _ => ApplyError::Failed(e.to_string()),
        }
    }

    /// This error, with the outcome of restoring the previous backend state appended.
    pub fn rolled_back(self, restore: Result<(), ApplyError>) -> Self {
        let suffix = match restore {
            Ok(()) => "; the previous state was restored".to_string(),
            Err(r) => format!("; restoring the previous state failed too: {r}"),
        };
        match self {
            ApplyError::Unavailable(m) => ApplyError::Unavailable(m + &suffix),
            ApplyError::Timeout(m) => ApplyError::Timeout(m + &suffix),
            ApplyError::Failed(m) => ApplyError::Failed(m + &suffix),
            ApplyError::Internal(m) => ApplyError::Internal(m + &suffix),
        }
    }

    fn to_rpc(&self) -> RpcError {
        let code = match self {
            ApplyError::Unavailable(_) => ErrorCode::Unavailable,
            ApplyError::Timeout(_) => ErrorCode::Timeout,
            ApplyError::Failed(_) => ErrorCode::BackendError,
            ApplyError::Internal(_) => ErrorCode::Internal,
        };
        RpcError::new(code, self.to_string())
    }
}

/// One desired export as the backends take it. `id` is its Ganesha Export_Id (0 on kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub spec: ExportSpec,
    pub id: u16,
}

/// Every desired export, by name.
pub type DesiredSet = BTreeMap<String, Managed>;

/// A value as it reads on the wire (`rw`, `root`, `1000`), `none` when absent.
fn word<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(Value::Null) | Err(_) => "none".into(),
        Ok(other) => other.to_string(),
    }
}

/// Differences between what was asked for and what the backend has, in words. `ganesha`
/// also compares the pseudo path (the kernel has none) and ignores `sync` (Ganesha has no
/// such option).
pub fn drift(spec: &ExportSpec, actual: Option<&ActualExport>, ganesha: bool) -> Vec<String> {
    let Some(a) = actual else {
        return vec!["missing on the server".into()];
    };
    let mut d = Vec::new();
    if a.path != spec.path() {
        d.push(format!("path is {} (want {})", a.path, spec.path()));
    }
    if let Some(p) = a
        .pseudo
        .as_deref()
        .filter(|p| ganesha && *p != spec.pseudo())
    {
        d.push(format!("pseudo is {p} (want {})", spec.pseudo()));
    }
    for c in spec.clients() {
        let want = c.matches.to_string();
        let Some(h) = a.clients.iter().find(|h| h.matches == want) else {
            d.push(format!("client {want} missing"));
            continue;
        };
        let mut diffs = Vec::new();
        if h.access.is_some_and(|x| x != c.access) || (ganesha && h.access.is_none()) {
            diffs.push(format!(
                "access {} (want {})",
                word(&h.access),
                word(&c.access)
            ));
        }
        if h.squash.is_some_and(|x| x != c.squash) {
            diffs.push(format!(
                "squash {} (want {})",
                word(&h.squash),
                word(&c.squash)
            ));
        }
        if h.anonuid.is_some_and(|x| x != c.anonuid) {
            diffs.push(format!("anonuid {} (want {})", word(&h.anonuid), c.anonuid));
        }
        if h.anongid.is_some_and(|x| x != c.anongid) {
            diffs.push(format!("anongid {} (want {})", word(&h.anongid), c.anongid));
        }
        if !ganesha && h.sync.is_some_and(|x| x != spec.sync()) {
            diffs.push(format!("sync {} (want {})", word(&h.sync), spec.sync()));
        }
        if !diffs.is_empty() {
            d.push(format!("client {want}: {}", diffs.join(", ")));
        }
    }
    for h in &a.clients {
        if !spec
            .clients()
            .iter()
            .any(|c| c.matches.to_string() == h.matches)
        {
            d.push(format!("unexpected client {}", h.matches));
        }
    }
    d
}

enum Backend {
    Kernel(Exportfs),
    Ganesha(Ganesha),
    /// The kernel backend's table kept in memory (fleet simulator).
    Memory(MemoryExports),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Kernel(_) => "kernel",
            Backend::Ganesha(_) => "ganesha",
            Backend::Memory(_) => "memory",
        }
    }
    fn is_ganesha(&self) -> bool {
        matches!(self, Backend::Ganesha(_))
    }

    async fn apply(
        &self,
        name: &str,
        prev: &DesiredSet,
        next: &DesiredSet,
    ) -> Result<(), ApplyError> {
        match self {
            Backend::Kernel(k) => k.apply(prev, next).await,
            Backend::Ganesha(g) => g.apply(name, prev.get(name), next.get(name)).await,
            Backend::Memory(m) => m.apply(next),
        }
    }

    async fn read(
        &self,
        set: &DesiredSet,
    ) -> Result<BTreeMap<String, Option<ActualExport>>, ApplyError> {
        match self {
            Backend::Kernel(k) => k.read(set).await,
            Backend::Ganesha(g) => g.read(set).await,
            Backend::Memory(m) => m.read(set),
        }
    }

    async fn reconcile(&self, set: &DesiredSet) -> Result<Vec<String>, ApplyError> {
        match self {
            Backend::Kernel(k) => k.reconcile(set).await,
            Backend::Ganesha(g) => g.reconcile(set).await,
            Backend::Memory(m) => m.reconcile(set),
        }
    }

    async fn up(&self) -> bool {
        match self {
            Backend::Kernel(k) => k.up(),
            Backend::Ganesha(g) => g.up().await,
            Backend::Memory(_) => true,
        }
    }
}

/// The family's part of the desired-state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NfsState {
    /// Name → the params with every default filled in.
    #[serde(default)]
    exports: BTreeMap<String, ExportParams>,
    /// Ganesha: name → Export_Id.
    #[serde(default)]
    export_ids: BTreeMap<String, u16>,
    /// Ganesha: where the next Export_Id search starts (ids are not reused at once: clients
    /// may still hold file handles carrying a freed one).
    #[serde(default)]
    next_export_id: u16,
}

/// The next free Export_Id from where the last search stopped, wrapping round to `first`.
/// `live` are the ids the server uses now (exports the agent does not own among them).
fn allocate_id(st: &mut NfsState, first: u16, live: &[u16]) -> Result<u16, RpcError> {
    let used: std::collections::BTreeSet<u16> =
        st.export_ids.values().chain(live).copied().collect();
    let span = u32::from(u16::MAX - first) + 1;
    let start = u32::from(st.next_export_id.max(first) - first);
    for i in 0..span {
        let id = first + ((start + i) % span) as u16;
        if !used.contains(&id) {
            st.next_export_id = if id == u16::MAX { first } else { id + 1 };
            return Ok(id);
        }
    }
    Err(RpcError::new(
        ErrorCode::Conflict,
        "no free Ganesha Export_Id left (nfs.first_export_id to 65535 are all in use)",
    ))
}

struct Nfs {
    backend: Backend,
    ctx: StorageCtx,
    allow_hostnames: bool,
    first_id: u16,
    lock: Mutex<()>,
}

fn parse<T: DeserializeOwned>(method: &str, params: Map<String, Value>) -> Result<T, RpcError> {
    serde_json::from_value(Value::Object(params)).map_err(|e| {
        let e =
            csg_protocol::validate::excerpt(&e.to_string(), csg_protocol::validate::ERROR_EXCERPT);
        RpcError::invalid_params(format!("{method}: {e}"))
    })
}

impl Nfs {
    /// Params → a spec this backend can serve, with the path checked on disk.
    fn spec_of(&self, p: &ExportParams) -> Result<ExportSpec, RpcError> {
        let bad = |e: &dyn std::fmt::Display| RpcError::invalid_params(e.to_string());
        let spec = p.validate(self.allow_hostnames).map_err(|e| bad(&e))?;
        match self.backend {
            Backend::Kernel(_) | Backend::Memory(_) => {
                if p.pseudo.is_some() {
                    return Err(RpcError::invalid_params(
                        "pseudo: the kernel backend takes no pseudo path (NFSv4 clients see \
                         the export at its path)",
                    ));
                }
                if spec.protocols() != [3, 4] {
                    return Err(RpcError::invalid_params(
                        "protocols: the kernel backend serves the versions nfsd is configured \
                         for; per-export protocols need the ganesha backend",
                    ));
                }
            }
            Backend::Ganesha(_) => {
                if !spec.sync() {
                    return Err(RpcError::invalid_params(
                        "sync: NFS-Ganesha has no asynchronous exports; leave sync true",
                    ));
                }
            }
        }
        let safe = self
            .ctx
            .roots
            .resolve("path", spec.path(), PathKind::Dir)
            .map_err(|e| bad(&e))?;
        if safe.as_str() != spec.path() {
            return Err(RpcError::invalid_params(format!(
                "path {}: resolves to {}; give the real path",
                spec.path(),
                safe.as_str()
            )));
        }
        Ok(spec)
    }

    /// The normalised params stored and compared for this backend.
    fn normalised(&self, spec: &ExportSpec) -> ExportParams {
        let mut p = spec.to_params();
        if !self.backend.is_ganesha() {
            p.pseudo = None;
            p.protocols = None;
        }
        p
    }

    async fn load(&self) -> Result<NfsState, RpcError> {
        self.ctx
            .state
            .get::<NfsState>(FAMILY)
            .await
            .map_err(|e| e.to_rpc())
    }

    /// The state as backends take it; a stored spec that no longer validates is an error
    /// (the state file was edited by hand).
    fn desired(&self, st: &NfsState) -> Result<DesiredSet, RpcError> {
        st.exports
            .iter()
            .map(|(name, p)| {
                let spec = p.validate(self.allow_hostnames).map_err(|e| {
                    RpcError::internal(format!("stored export {name} is invalid: {e}"))
                })?;
                let id = st.export_ids.get(name).copied().unwrap_or(0);
                Ok((name.clone(), Managed { spec, id }))
            })
            .collect()
    }

    fn status(
        &self,
        name: &str,
        m: &Managed,
        p: &ExportParams,
        actual: Option<ActualExport>,
    ) -> ExportStatus {
        let drift = drift(&m.spec, actual.as_ref(), self.backend.is_ganesha());
        ExportStatus {
            name: name.to_string(),
            desired: p.clone(),
            actual,
            drift,
        }
    }

    async fn status_of(&self, st: &NfsState, name: &str) -> Result<ExportStatus, RpcError> {
        let set = self.desired(st)?;
        let Some(mgd) = set.get(name) else {
            return Err(RpcError::new(
                ErrorCode::NotFound,
                format!("no NFS export named {name:?}"),
            ));
        };
        let one: DesiredSet = [(name.to_string(), mgd.clone())].into();
        let mut actual = self.backend.read(&one).await.map_err(|e| e.to_rpc())?;
        Ok(self.status(name, mgd, &st.exports[name], actual.remove(name).flatten()))
    }

    /// Saves `next`, applies it, and on failure restores `prev` in the state file.
    async fn commit(
        &self,
        method: &str,
        name: &str,
        prev: &NfsState,
        next: &NfsState,
    ) -> Result<(), RpcError> {
        let (pset, nset) = (self.desired(prev)?, self.desired(next)?);
        self.ctx
            .state
            .put(FAMILY, next)
            .await
            .map_err(|e| e.to_rpc())?;
        if let Err(e) = self.backend.apply(name, &pset, &nset).await {
            if let Err(se) = self.ctx.state.put(FAMILY, prev).await {
                warn!(error = %se, "cannot restore the previous NFS desired state");
            }
            info!(method, name, outcome = "failed", error = %e, "nfs export mutation");
            return Err(e.to_rpc());
        }
        info!(method, name, outcome = "applied", "nfs export mutation");
        Ok(())
    }

    async fn put(
        &self,
        method: &str,
        params: Map<String, Value>,
        create: bool,
    ) -> Result<Value, RpcError> {
        let p: ExportParams = parse(method, params)?;
        let spec = self.spec_of(&p)?;
        let want = self.normalised(&spec);
        let name = spec.name().to_string();
        let _g = self.lock.lock().await;
        let prev = self.load().await?;
        match (prev.exports.get(&name), create) {
            (Some(have), true) if *have == want => {
                info!(method, name, outcome = "unchanged", "nfs export mutation");
                let st = self.status_of(&prev, &name).await?;
                return crate::handlers::to_value(&MutateResult {
                    changed: false,
                    export: st,
                });
            }
            (Some(_), true) => {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "NFS export {name:?} exists with a different spec; use nfs.export.update \
                         to change it"
                    ),
                ))
            }
            (None, false) => {
                return Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("no NFS export named {name:?}; use nfs.export.create"),
                ))
            }
            (Some(have), false) if *have == want => {
                info!(method, name, outcome = "unchanged", "nfs export mutation");
                let st = self.status_of(&prev, &name).await?;
                return crate::handlers::to_value(&MutateResult {
                    changed: false,
                    export: st,
                });
            }
            _ => {}
        }
        for (other, op) in &prev.exports {
            if *other == name {
                continue;
            }
            if op.path == want.path {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!("path {} is already exported as {other:?}", want.path),
                ));
            }
            if self.backend.is_ganesha() && op.pseudo == want.pseudo {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "pseudo path {} is already used by export {other:?}",
                        want.pseudo.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        let mut next = prev.clone();
        if self.backend.is_ganesha() {
            // A new path needs a new Export_Id: Ganesha cannot change an export's path.
            let keep = prev
                .exports
                .get(&name)
                .is_some_and(|old| old.path == want.path)
                && prev.export_ids.contains_key(&name);
            if !keep {
                next.export_ids.remove(&name);
                let live = match &self.backend {
                    Backend::Ganesha(g) => g.live_ids().await.map_err(|e| e.to_rpc())?,
                    Backend::Kernel(_) | Backend::Memory(_) => Vec::new(),
                };
                let id = allocate_id(&mut next, self.first_id, &live)?;
                next.export_ids.insert(name.clone(), id);
            }
        }
        next.exports.insert(name.clone(), want);
        self.commit(method, &name, &prev, &next).await?;
        let st = self.status_of(&next, &name).await?;
        crate::handlers::to_value(&MutateResult {
            changed: true,
            export: st,
        })
    }

    async fn delete(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        let p: NameParams = parse(method, params)?;
        let name = m::ExportName::parse(&p.name)
            .map_err(|e| RpcError::invalid_params(e.to_string()))?
            .to_string();
        let _g = self.lock.lock().await;
        let prev = self.load().await?;
        if !prev.exports.contains_key(&name) {
            info!(method, name, outcome = "absent", "nfs export mutation");
            return crate::handlers::to_value(&DeleteResult {
                name,
                existed: false,
            });
        }
        let mut next = prev.clone();
        next.exports.remove(&name);
        next.export_ids.remove(&name);
        self.commit(method, &name, &prev, &next).await?;
        crate::handlers::to_value(&DeleteResult {
            name,
            existed: true,
        })
    }

    async fn get(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        let p: NameParams = parse(method, params)?;
        let name =
            m::ExportName::parse(&p.name).map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let st = self.load().await?;
        crate::handlers::to_value(&self.status_of(&st, name.as_str()).await?)
    }

    async fn list_status(&self) -> Result<Vec<ExportStatus>, RpcError> {
        let st = self.load().await?;
        let set = self.desired(&st)?;
        let mut actual = self.backend.read(&set).await.map_err(|e| e.to_rpc())?;
        Ok(set
            .iter()
            .map(|(name, mgd)| {
                self.status(name, mgd, &st.exports[name], actual.remove(name).flatten())
            })
            .collect())
    }

    async fn list(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        crate::handlers::no_params(method, &params)?;
        crate::handlers::to_value(&ListResult {
            backend: self.backend.kind().into(),
            exports: self.list_status().await?,
        })
    }
}

impl Family for Nfs {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn methods(&self) -> &'static [&'static str] {
        m::METHODS
    }

    fn call<'a>(
        &'a self,
        method: &'a str,
        params: Map<String, Value>,
    ) -> BoxFut<'a, Result<Value, RpcError>> {
        Box::pin(async move {
            match method {
                m::EXPORT_CREATE => self.put(method, params, true).await,
                m::EXPORT_UPDATE => self.put(method, params, false).await,
                m::EXPORT_DELETE => self.delete(method, params).await,
                m::EXPORT_GET => self.get(method, params).await,
                m::EXPORT_LIST => self.list(method, params).await,
                other => Err(RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!("unknown method {other:?}"),
                )),
            }
        })
    }

    fn reconcile(&self) -> BoxFut<'_, Result<Value, RpcError>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let st = self.load().await?;
            let set = self.desired(&st)?;
            match self.backend.reconcile(&set).await {
                Ok(changes) => {
                    for c in &changes {
                        info!(method = "reconcile", change = %c, outcome = "applied", "nfs export mutation");
                    }
                    Ok(Value::from(changes))
                }
                Err(e) => {
                    info!(method = "reconcile", outcome = "failed", error = %e, "nfs export mutation");
                    Err(e.to_rpc())
                }
            }
        })
    }

    fn service(&self) -> BoxFut<'_, ServiceState> {
        Box::pin(async move {
            ServiceState {
                backend: self.backend.kind().into(),
                up: self.backend.up().await,
            }
        })
    }

    fn summary(&self) -> BoxFut<'_, FamilySummary> {
        Box::pin(async move {
            let count = self
                .load()
                .await
                .map(|s| s.exports.len() as u64)
                .unwrap_or(0);
            let drift = match self.list_status().await {
                Ok(v) => v.iter().filter(|s| !s.drift.is_empty()).count() as u64,
                Err(_) => count,
            };
            FamilySummary { count, drift }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_ids_are_not_reused_at_once() {
        let mut st = NfsState::default();
        let a = allocate_id(&mut st, 65533, &[]).unwrap();
        st.export_ids.insert("a".into(), a);
        let b = allocate_id(&mut st, 65533, &[]).unwrap();
        st.export_ids.insert("b".into(), b);
        assert_eq!((a, b), (65533, 65534));
        // "a" is deleted: the next id is still a new one, then the search wraps round.
        st.export_ids.remove("a");
        let c = allocate_id(&mut st, 65533, &[]).unwrap();
        st.export_ids.insert("c".into(), c);
        assert_eq!(c, 65535);
        assert_eq!(allocate_id(&mut st, 65533, &[]).unwrap(), 65533);
        // Ids the server already uses for exports of its own are skipped.
        st.next_export_id = 0;
        st.export_ids.remove("b");
        assert_eq!(allocate_id(&mut st, 65533, &[65533]).unwrap(), 65534);
        st.export_ids.insert("b".into(), 65534);
        st.export_ids.insert("d".into(), 65533);
        assert_eq!(
            allocate_id(&mut st, 65533, &[]).unwrap_err().code,
            ErrorCode::Conflict
        );
    }

    #[test]
    fn rollback_messages_say_what_happened() {
        let e = ApplyError::Failed("exportfs -ra exited with 1: bad".into()).rolled_back(Ok(()));
        assert!(e.to_string().ends_with("the previous state was restored"));
        assert_eq!(e.to_rpc().code, ErrorCode::BackendError);
        let e = ApplyError::Failed("x".into()).rolled_back(Err(ApplyError::Failed("y".into())));
        assert!(e
            .to_string()
            .contains("restoring the previous state failed too: y"));
        assert!(ApplyError::Unavailable("x".into()).to_rpc().retryable);
        assert!(ApplyError::Timeout("x".into()).to_rpc().retryable);
    }
}
