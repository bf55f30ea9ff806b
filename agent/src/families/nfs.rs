//! `nfs.export.*`: NFS exports on kernel nfsd (`exportfs`), NFS-Ganesha (D-Bus) or an
//! in-memory table, through the [`NfsBackend`] trait.
//!
//! Every mutation: a validated [`ExportSpec`] (the path resolved under a storage root) → under
//! the family's lock: compare with the desired state (same → no-op, different → CONFLICT) →
//! one [`Change`] → one snapshot of the backend → its plan → save the new desired state →
//! apply, which reads back; on failure the backend undoes the plan and the previous desired
//! state is restored too. Reads take no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use csg_protocol::methods::nfs::{
    self as m, ActualExport, DeleteResult, ExportName, ExportParams, ExportSpec, ExportStatus,
    ListResult, MutateResult,
};
use csg_protocol::methods::{Changes, MethodResult, NfsMethod};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::validate::WorldPolicy;
use csg_protocol::{ErrorCode, RpcError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::{BoxFut, Family, StorageCtx};
use crate::backends::exportfs::Exportfs;
use crate::backends::ganesha::Ganesha;
use crate::config::nfs::{NfsBackendKind, NfsSettings};
use crate::exec;
use crate::model::nfs::{drift, DesiredSet, Dialect, Managed, NfsBackend};
use crate::model::Change;
use crate::storage::paths::PathKind;

const FAMILY: &str = "nfs";

/// The configured backend (`None` when disabled).
pub fn backend(cfg: &NfsSettings, ctx: &StorageCtx) -> Option<Box<dyn NfsBackend>> {
    match cfg.backend {
        NfsBackendKind::Disabled => None,
        NfsBackendKind::Kernel => Some(Box::new(Exportfs::new(
            cfg.exports_file.clone(),
            cfg.exportfs.clone(),
            ctx.timeout,
        ))),
        NfsBackendKind::Ganesha => Some(Box::new(Ganesha::new(
            cfg.ganesha_dir.clone(),
            cfg.dbus_send.clone(),
            cfg.dbus_address.clone(),
            ctx.timeout,
        ))),
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
        // `(start + i) % span` is below `span`, so the sum is at most u16::MAX.
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

pub struct Nfs {
    backend: Box<dyn NfsBackend>,
    ctx: StorageCtx,
    allow_hostnames: bool,
    world: WorldPolicy,
    /// Stored exports the world policy refuses are named once per start, not on every
    /// reconcile.
    world_warned: AtomicBool,
    first_id: u16,
    lock: Mutex<()>,
}

impl Nfs {
    pub fn new(cfg: &NfsSettings, ctx: &StorageCtx, backend: Box<dyn NfsBackend>) -> Self {
        Self {
            backend,
            ctx: ctx.clone(),
            allow_hostnames: cfg.allow_hostnames,
            world: cfg.world,
            world_warned: AtomicBool::new(false),
            first_id: cfg.first_export_id,
            lock: Mutex::new(()),
        }
    }

    pub async fn call(&self, method: NfsMethod) -> Result<MethodResult, RpcError> {
        match method {
            NfsMethod::ExportCreate(p) => self.put(&p, true).await,
            NfsMethod::ExportUpdate(p) => self.put(&p, false).await,
            NfsMethod::ExportDelete(p) => self.delete(&p.name).await,
            NfsMethod::ExportGet(p) => {
                let name = ExportName::parse(&p.name).map_err(invalid)?;
                let st = self.load().await?;
                let status = self.status_of(&st, name.as_str()).await?;
                Ok(MethodResult::NfsGet(Box::new(status)))
            }
            NfsMethod::ExportList(page) => {
                let (exports, next_cursor) = page.apply(self.list_status().await?, |e| &e.name);
                Ok(MethodResult::NfsList(ListResult {
                    backend: self.backend.kind().into(),
                    exports,
                    next_cursor,
                }))
            }
        }
    }

    fn ganesha(&self) -> bool {
        self.backend.dialect() == Dialect::Ganesha
    }

    /// Params → a spec this backend can serve, with the path checked on disk.
    fn spec_of(&self, p: &ExportParams) -> Result<ExportSpec, RpcError> {
        let spec = p.validate(self.allow_hostnames).map_err(invalid)?;
        spec.check_world(&self.world).map_err(invalid)?;
        match self.backend.dialect() {
            Dialect::Kernel => {
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
            Dialect::Ganesha => {
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
            .map_err(invalid)?;
        if safe.as_str() != spec.path() {
            return Err(RpcError::invalid_params(format!(
                "path {}: resolves to {}; give the real path",
                spec.path(),
                safe.as_str()
            )));
        }
        Ok(spec)
    }

    /// Exports stored before the world policy (or under a laxer config) stay as they are, so an
    /// upgrade or a stricter config never takes a share away from its clients; the operator is
    /// told which ones, and an update must then satisfy the policy.
    fn warn_world(&self, set: &DesiredSet) {
        for (name, m) in set {
            for (client, why) in m.spec.world_clients(&self.world) {
                warn!(
                    export = %name,
                    client = %client,
                    "stored NFS export reaches the world and is kept as it is: {why}; \
                     an update must narrow it (or delete it)"
                );
            }
        }
    }

    /// The normalised params stored and compared for this backend.
    fn normalised(&self, spec: &ExportSpec) -> ExportParams {
        let mut p = spec.to_params();
        if !self.ganesha() {
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
        let drift = drift(&m.spec, actual.as_ref(), self.ganesha());
        ExportStatus {
            name: name.to_string(),
            desired: p.clone(),
            actual,
            drift,
        }
    }

    async fn status_of(&self, st: &NfsState, name: &str) -> Result<ExportStatus, RpcError> {
        let set = self.desired(st)?;
        let (Some(mgd), Some(p)) = (set.get(name), st.exports.get(name)) else {
            return Err(RpcError::new(
                ErrorCode::NotFound,
                format!("no NFS export named {name:?}"),
            ));
        };
        let one: DesiredSet = [(name.to_string(), mgd.clone())].into();
        let mut actual = self.backend.read(&one).await.map_err(|e| e.to_rpc())?;
        Ok(self.status(name, mgd, p, actual.remove(name).flatten()))
    }

    /// Takes export `name` from `prev` to `next`: one snapshot, the backend's plan, the new
    /// desired state saved, the plan applied; on failure both are put back.
    async fn commit(&self, name: &str, prev: &NfsState, next: &NfsState) -> Result<(), RpcError> {
        let (before, after) = (self.desired(prev)?, self.desired(next)?);
        let change = Change::between(before.get(name).cloned(), after.get(name).cloned())
            .ok_or_else(|| RpcError::internal(format!("export {name:?}: nothing to change")))?;
        let snap = self.backend.observe(name).await.map_err(|e| e.to_rpc())?;
        let plan = self.backend.plan(snap, change, before, after);
        self.ctx
            .state
            .put(FAMILY, next)
            .await
            .map_err(|e| e.to_rpc())?;
        if let Err(e) = self.backend.apply(&plan).await {
            let undo = self.backend.undo(&plan).await;
            if let Err(se) = self.ctx.state.put(FAMILY, prev).await {
                warn!(error = %se, "cannot restore the previous NFS desired state");
            }
            return Err(match undo {
                Ok(()) => exec::rolled_back(e.to_rpc(), Ok(())),
                Err(ue) => match self.previous_holds(name, &plan.before, &plan.after).await {
                    // An undo step failed, yet the export is as it was (e.g. the tool that
                    // could not undo could not apply either): say what is true.
                    Some(true) => {
                        debug!(export = name, error = %ue, "undo step failed; previous state confirmed");
                        exec::rolled_back(e.to_rpc(), Ok(()))
                    }
                    Some(false) => exec::rolled_back(e.to_rpc(), Err(ue.to_rpc())),
                    None => exec::rolled_back_unconfirmed(e.to_rpc(), &ue.to_rpc()),
                },
            });
        }
        debug!(
            export = name,
            backend = self.backend.kind(),
            "export applied"
        );
        Ok(())
    }

    /// After an undo that reported an error: whether the backend holds export `name` as it
    /// was before the change (absent, for a create). `None` when it cannot be read.
    async fn previous_holds(
        &self,
        name: &str,
        before: &DesiredSet,
        after: &DesiredSet,
    ) -> Option<bool> {
        let (probe, existed) = match (before.get(name), after.get(name)) {
            (Some(m), _) => (m.clone(), true),
            (None, Some(m)) => (m.clone(), false),
            (None, None) => return None,
        };
        let one: DesiredSet = [(name.to_string(), probe.clone())].into();
        let mut actual = self.backend.read(&one).await.ok()?;
        let now = actual.remove(name).flatten();
        Some(match (existed, now) {
            (true, Some(a)) => drift(&probe.spec, Some(&a), self.ganesha()).is_empty(),
            (false, None) => true,
            (true, None) | (false, Some(_)) => false,
        })
    }

    /// The unchanged result, read back.
    async fn unchanged(&self, st: &NfsState, name: &str) -> Result<MethodResult, RpcError> {
        let export = self.status_of(st, name).await?;
        Ok(MethodResult::NfsMutate(Box::new(MutateResult {
            changed: false,
            export,
        })))
    }

    async fn put(&self, p: &ExportParams, create: bool) -> Result<MethodResult, RpcError> {
        let spec = self.spec_of(p)?;
        let want = self.normalised(&spec);
        let name = spec.name().to_string();
        let _g = self.lock.lock().await;
        let prev = self.load().await?;
        match (prev.exports.get(&name), create) {
            (Some(have), _) if *have == want => return self.unchanged(&prev, &name).await,
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
            if self.ganesha() && op.pseudo == want.pseudo {
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
        if self.ganesha() {
            // A new path needs a new Export_Id: Ganesha cannot change an export's path.
            let keep = prev
                .exports
                .get(&name)
                .is_some_and(|old| old.path == want.path)
                && prev.export_ids.contains_key(&name);
            if !keep {
                next.export_ids.remove(&name);
                let live = self.backend.live_ids().await.map_err(|e| e.to_rpc())?;
                let id = allocate_id(&mut next, self.first_id, &live)?;
                next.export_ids.insert(name.clone(), id);
            }
        }
        next.exports.insert(name.clone(), want);
        self.commit(&name, &prev, &next).await?;
        let export = self.status_of(&next, &name).await?;
        Ok(MethodResult::NfsMutate(Box::new(MutateResult {
            changed: true,
            export,
        })))
    }

    async fn delete(&self, name: &str) -> Result<MethodResult, RpcError> {
        let name = ExportName::parse(name).map_err(invalid)?.to_string();
        let _g = self.lock.lock().await;
        let prev = self.load().await?;
        let existed = prev.exports.contains_key(&name);
        if existed {
            let mut next = prev.clone();
            next.exports.remove(&name);
            next.export_ids.remove(&name);
            self.commit(&name, &prev, &next).await?;
        }
        Ok(MethodResult::NfsDelete(DeleteResult { name, existed }))
    }

    async fn list_status(&self) -> Result<Vec<ExportStatus>, RpcError> {
        let st = self.load().await?;
        let set = self.desired(&st)?;
        let mut actual = self.backend.read(&set).await.map_err(|e| e.to_rpc())?;
        Ok(set
            .iter()
            .zip(st.exports.values())
            .map(|((name, mgd), p)| self.status(name, mgd, p, actual.remove(name).flatten()))
            .collect())
    }
}

fn invalid(e: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

impl Family for Nfs {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn backend(&self) -> &'static str {
        self.backend.kind()
    }

    fn methods(&self) -> &'static [&'static str] {
        m::METHODS
    }

    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let st = self.load().await?;
            let set = self.desired(&st)?;
            if !self.world_warned.swap(true, Ordering::Relaxed) {
                self.warn_world(&set);
            }
            let changes = self.backend.reconcile(&set).await?;
            for c in &changes {
                debug!(change = %c, "nfs reconcile");
            }
            Ok(Changes::Nfs(changes))
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
            let count = self.load().await.map_or(0, |s| s.exports.len() as u64);
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
    use crate::backends::memory::MemoryExports;
    use crate::state::StateStore;
    use crate::storage::paths::Roots;
    use csg_protocol::methods::nfs::NameParams;
    use std::sync::Arc;

    fn family(root: &std::path::Path, backend: Box<dyn NfsBackend>) -> Nfs {
        let cfg = NfsSettings {
            backend: NfsBackendKind::Kernel,
            exports_file: "/nonexistent/csg.exports".into(),
            exportfs: "/nonexistent/exportfs".into(),
            allow_hostnames: false,
            world: WorldPolicy::strict("nfs"),
            ganesha_dir: "/nonexistent".into(),
            dbus_send: "/nonexistent/dbus-send".into(),
            dbus_address: None,
            first_export_id: 100,
        };
        let ctx = StorageCtx {
            roots: Roots::new(vec![root.to_path_buf()]),
            state: Arc::new(StateStore::in_memory()),
            timeout: std::time::Duration::from_secs(5),
            allow_devices: false,
        };
        Nfs::new(&cfg, &ctx, backend)
    }

    fn export(root: &std::path::Path, name: &str, client: &str) -> ExportParams {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        serde_json::from_value(serde_json::json!({
            "name": name, "path": dir, "clients": [{"match": client}]
        }))
        .unwrap()
    }

    async fn mutate(nfs: &Nfs, m: NfsMethod) -> Result<MutateResult, RpcError> {
        match nfs.call(m).await? {
            MethodResult::NfsMutate(r) => Ok(*r),
            other => panic!("not a mutate result: {other:?}"),
        }
    }

    async fn delete(nfs: &Nfs, n: &str) -> MethodResult {
        let p = NameParams { name: n.into() };
        nfs.call(NfsMethod::ExportDelete(p)).await.unwrap()
    }

    #[tokio::test]
    async fn a_mutation_goes_through_the_backend_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let nfs = family(&root, Box::new(MemoryExports::new()));
        let vol1 = export(&root, "vol1", "10.0.0.0/8");
        let r = mutate(&nfs, NfsMethod::ExportCreate(vol1.clone()))
            .await
            .unwrap();
        assert!(
            r.changed && r.export.drift.is_empty() && r.export.actual.is_some(),
            "{r:?}"
        );
        // The same again changes nothing; a different spec under the same name is refused.
        let r = mutate(&nfs, NfsMethod::ExportCreate(vol1)).await.unwrap();
        assert!(!r.changed);
        let other = export(&root, "vol1", "192.0.2.0/24");
        let e = mutate(&nfs, NfsMethod::ExportCreate(other.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let r = mutate(&nfs, NfsMethod::ExportUpdate(other)).await.unwrap();
        assert!(r.changed && r.export.drift.is_empty(), "{r:?}");
        let MethodResult::NfsList(l) = nfs
            .call(NfsMethod::ExportList(csg_protocol::methods::Page::all(
                csg_protocol::methods::nfs::EXPORT_LIST,
            )))
            .await
            .unwrap()
        else {
            panic!("not a list");
        };
        assert_eq!((l.backend.as_str(), l.exports.len()), ("memory", 1));
        assert_eq!(nfs.reconcile().await.unwrap(), Changes::Nfs(Vec::new()));
        let gone = |existed| {
            MethodResult::NfsDelete(DeleteResult {
                name: "vol1".into(),
                existed,
            })
        };
        assert_eq!(delete(&nfs, "vol1").await, gone(true));
        assert_eq!(delete(&nfs, "vol1").await, gone(false));
        let p = NameParams {
            name: "vol1".into(),
        };
        let e = nfs.call(NfsMethod::ExportGet(p)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn a_failed_apply_is_undone_and_the_desired_state_restored() {
        // The kernel backend with no exportfs to run: the file is written, re-exporting fails,
        // and the undo takes the file away again (its own re-export fails too, and says so).
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let file = root.join("csg.exports");
        let exportfs = root.join("no-exportfs");
        let kernel = Exportfs::new(file.clone(), exportfs, std::time::Duration::from_secs(5));
        let nfs = family(&root, Box::new(kernel));
        let vol1 = export(&root, "vol1", "10.0.0.0/8");
        let e = mutate(&nfs, NfsMethod::ExportCreate(vol1))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("no-exportfs"), "{}", e.message);
        // exportfs cannot run, so neither the change nor its undo reached the kernel, and the
        // table cannot be read to check: the reply says so rather than "failed too".
        assert!(
            e.message
                .contains("whether the previous state is back could not be checked")
                && !e.message.contains("failed too"),
            "{}",
            e.message
        );
        assert!(!file.exists(), "the exports file was not taken back");
        assert_eq!(nfs.load().await.unwrap(), NfsState::default());
    }

    #[tokio::test]
    async fn world_clients_are_refused_but_stored_ones_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let nfs = family(&root, Box::new(MemoryExports::new()));
        let world = export(&root, "vol1", "0.0.0.0/0");
        let e = mutate(&nfs, NfsMethod::ExportCreate(world.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(e.message.contains("nfs.allow_world"), "{}", e.message);
        assert_eq!(nfs.load().await.unwrap(), NfsState::default());
        // Stored under an older agent or a laxer config: it loads, reconciles and lists.
        let spec = world.validate(false).unwrap();
        let mut st = NfsState::default();
        st.exports.insert("vol1".into(), nfs.normalised(&spec));
        nfs.ctx.state.put(FAMILY, &st).await.unwrap();
        assert!(matches!(nfs.reconcile().await.unwrap(), Changes::Nfs(c) if c.len() == 1));
        let MethodResult::NfsList(l) = nfs
            .call(NfsMethod::ExportList(csg_protocol::methods::Page::all(
                csg_protocol::methods::nfs::EXPORT_LIST,
            )))
            .await
            .unwrap()
        else {
            panic!("not a list");
        };
        assert!(
            l.exports.len() == 1 && l.exports[0].drift.is_empty(),
            "{l:?}"
        );
        // Narrowing it is an ordinary update.
        let narrow = export(&root, "vol1", "10.0.0.0/8");
        mutate(&nfs, NfsMethod::ExportUpdate(narrow)).await.unwrap();
    }

    /// The memory backend behind a daemon that cannot be reached: apply and undo fail as
    /// UNAVAILABLE (apply after changing the table when `breaks`), reads work when `readable`.
    struct Unreachable {
        inner: MemoryExports,
        breaks: bool,
        readable: bool,
    }

    fn gone() -> exec::ToolError {
        exec::ToolError::Unavailable {
            program: "daemon".into(),
            detail: "not reachable".into(),
        }
    }

    impl NfsBackend for Unreachable {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn up(&self) -> BoxFut<'_, bool> {
            Box::pin(async { false })
        }
        fn observe<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFut<'a, Result<crate::model::nfs::Snapshot, exec::ToolError>> {
            self.inner.observe(name)
        }
        fn rewrite(&self, change: &Change<Managed>, after: &DesiredSet) -> Option<Vec<u8>> {
            self.inner.rewrite(change, after)
        }
        fn apply<'a>(
            &'a self,
            plan: &'a crate::model::nfs::Plan,
        ) -> BoxFut<'a, Result<(), exec::ToolError>> {
            Box::pin(async move {
                if self.breaks {
                    self.inner.apply(plan).await?;
                }
                Err(gone())
            })
        }
        fn undo<'a>(
            &'a self,
            _: &'a crate::model::nfs::Plan,
        ) -> BoxFut<'a, Result<(), exec::ToolError>> {
            Box::pin(async { Err(gone()) })
        }
        fn read<'a>(
            &'a self,
            set: &'a DesiredSet,
        ) -> BoxFut<'a, Result<crate::model::nfs::Actual, exec::ToolError>> {
            if self.readable {
                self.inner.read(set)
            } else {
                Box::pin(async { Err(gone()) })
            }
        }
        fn reconcile<'a>(
            &'a self,
            desired: &'a DesiredSet,
        ) -> BoxFut<'a, Result<Vec<String>, RpcError>> {
            self.inner.reconcile(desired)
        }
    }

    /// A failed change's reply says the previous state is back exactly when it is: judged by
    /// the backend's state, not by whether each undo step ran.
    #[tokio::test]
    async fn the_rollback_message_matches_the_state() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let cases = [
            // (breaks, readable, what the message must say)
            (false, true, "; the previous state was restored"),
            (true, true, "; restoring the previous state failed too"),
            (false, false, "could not be checked"),
        ];
        for (breaks, readable, says) in cases {
            let nfs = family(
                &root,
                Box::new(Unreachable {
                    inner: MemoryExports::new(),
                    breaks,
                    readable,
                }),
            );
            let vol1 = export(&root, "vol1", "10.0.0.0/8");
            let e = mutate(&nfs, NfsMethod::ExportCreate(vol1))
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            assert!(
                e.message.contains(says),
                "{breaks} {readable}: {}",
                e.message
            );
            assert_eq!(nfs.load().await.unwrap(), NfsState::default());
            let one: DesiredSet = [(
                "vol1".to_string(),
                Managed {
                    spec: export(&root, "vol1", "10.0.0.0/8").validate(false).unwrap(),
                    id: 0,
                },
            )]
            .into();
            if readable {
                let present = nfs.backend.read(&one).await.unwrap()["vol1"].is_some();
                assert_eq!(present, breaks, "the message matched the state");
            }
        }
    }

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
}
