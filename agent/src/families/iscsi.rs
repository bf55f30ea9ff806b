//! `iscsi.target.*`: iSCSI targets on tgt or LIO.
//!
//! params → `TargetSpec` (pure checks, protocol crate) → backing paths resolved under the
//! storage roots → under the family's mutation lock: compare with the desired state (no-op,
//! CONFLICT, NOT_FOUND), take ONE snapshot of the backend, create missing backing files, save
//! the desired state, let the backend plan the [`Change`] from that snapshot and run it, read
//! the targets back and compare. On any failure the previous target (as it was desired
//! before), the previous desired state and the files this request created are put back.
//!
//! The family semantics live here once; the backend ([`IscsiBackend`]: tgt or LIO) reads
//! itself back, plans and runs.
//!
//! CHAP secrets never go to the state file: they live in a separate file,
//! `iscsi-chap-secrets.json` (mode 0600) in the state directory, so that the agent can put a
//! CHAP-protected target back after tgtd restarts or the machine reboots without re-opening
//! it without authentication. See docs/methods/iscsi.md for the reasoning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csg_protocol::methods::iscsi::{
    self as m, ApplyResult, DeleteParams, DeleteResult, LunActual, TargetActual, TargetDesired,
    TargetName, TargetParams, TargetView,
};
use csg_protocol::methods::{
    Changes, IscsiChanged, IscsiChanges, IscsiFailed, IscsiMethod, MethodResult,
};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::{ErrorCode, RpcError};
use tokio::sync::Mutex;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::backends::lio::{self, Lio};
use crate::backends::tgt::Tgt;
use crate::config::iscsi::{IscsiBackendKind, IscsiSettings};
use crate::families::{Family, StorageCtx};
use crate::model::iscsi::{
    backing_size, drift, looks_like_name, secret_drift, Change, Desired, IscsiBackend, IscsiState,
    PlanError, Request, Rule, SecretText, Secrets, SecretsFile, Seen, Snapshot, Stored, Target,
    WantLun, WantTarget,
};
use crate::model::BoxFut;
use crate::storage::paths::{PathError, PathKind, SafePath};

const FAMILY: &str = "iscsi";
const SECRETS_FILE: &str = "iscsi-chap-secrets.json";

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &IscsiSettings, ctx: &StorageCtx) -> Result<Option<Iscsi>, String> {
    // The secrets needed to re-apply targets (and targetcli's own files) live beside the state
    // file, so iSCSI needs a state directory on disk (an in-memory store has none).
    let state_dir = || {
        ctx.state
            .path()
            .and_then(std::path::Path::parent)
            .map(PathBuf::from)
            .ok_or("iSCSI needs a state directory on disk for its CHAP secrets")
    };
    let backend: Box<dyn IscsiBackend> = match cfg.backend {
        IscsiBackendKind::Disabled => return Ok(None),
        IscsiBackendKind::Lio => Box::new(Lio {
            targetcli: cfg.targetcli.clone(),
            root: cfg.configfs_root.clone(),
            home: state_dir()?.join(lio::TARGETCLI_HOME_DIR),
            timeout: ctx.timeout,
        }),
        IscsiBackendKind::Tgt => Box::new(Tgt {
            tgtadm: cfg.tgtadm.clone(),
            socket: cfg.tgt_socket.clone(),
            timeout: ctx.timeout,
        }),
    };
    let secrets_path = state_dir()?.join(SECRETS_FILE);
    let secrets = load_secrets(&secrets_path)?;
    let watch_interval = cfg.watch_interval.filter(|_| backend.forgets_targets());
    Ok(Some(Iscsi {
        inner: Arc::new(Inner {
            backend,
            prefix: cfg.iqn_prefix.clone(),
            ctx: ctx.clone(),
            lock: Mutex::new(()),
            secrets_path,
            secrets: Mutex::new(secrets),
            watch_interval,
        }),
        watcher: AtomicBool::new(false),
    }))
}

fn load_secrets(path: &std::path::Path) -> Result<BTreeMap<String, Secrets>, String> {
    match std::fs::read(path) {
        Ok(b) => {
            let b = Zeroizing::new(b);
            let f: SecretsFile = serde_json::from_slice(&b)
                .map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
            Ok(f.targets)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// The family

pub struct Iscsi {
    inner: Arc<Inner>,
    watcher: AtomicBool,
}

struct Inner {
    backend: Box<dyn IscsiBackend>,
    prefix: String,
    ctx: StorageCtx,
    /// Serializes every change to the backend, the desired state and the secrets.
    lock: Mutex<()>,
    secrets_path: PathBuf,
    secrets: Mutex<BTreeMap<String, Secrets>>,
    watch_interval: Option<Duration>,
}

fn invalid(e: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

fn backend_error(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::BackendError, e.to_string())
}

fn plan_error(e: PlanError) -> RpcError {
    match e {
        PlanError::Unsupported(m) => RpcError::invalid_params(m),
        PlanError::Internal(m) => RpcError::internal(m),
    }
}

impl Iscsi {
    pub async fn call(&self, m: IscsiMethod) -> Result<MethodResult, RpcError> {
        let i = &self.inner;
        match m {
            IscsiMethod::TargetCreate(p) => i.create(p, false).await.map(MethodResult::IscsiApply),
            IscsiMethod::TargetUpdate(p) => i.create(p, true).await.map(MethodResult::IscsiApply),
            IscsiMethod::TargetDelete(p) => i.delete(p).await.map(MethodResult::IscsiDelete),
            IscsiMethod::TargetGet(p) => {
                let l = i.list(Some(&p.name)).await?;
                match l.targets.into_iter().next() {
                    Some(t) => Ok(MethodResult::IscsiGet(Box::new(t))),
                    None => Err(RpcError::new(
                        ErrorCode::NotFound,
                        format!("no iSCSI target named {:?}", p.name),
                    )),
                }
            }
            IscsiMethod::TargetList(page) => {
                let mut l = i.list(None).await?;
                let (targets, next) = page.apply(std::mem::take(&mut l.targets), |t| &t.name);
                l.targets = targets;
                l.next_cursor = next;
                Ok(MethodResult::IscsiList(l))
            }
        }
    }
}

impl Family for Iscsi {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn backend(&self) -> &'static str {
        self.inner.backend.kind()
    }

    fn methods(&self) -> &'static [&'static str] {
        m::METHODS
    }

    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>> {
        Box::pin(async move {
            if let Some(every) = self.inner.watch_interval {
                if !self.watcher.swap(true, Ordering::SeqCst) {
                    tokio::spawn(watch(Arc::downgrade(&self.inner), every));
                }
            }
            self.inner.reconcile().await.map(Changes::Iscsi)
        })
    }

    fn service(&self) -> BoxFut<'_, ServiceState> {
        Box::pin(async move {
            ServiceState {
                backend: self.inner.backend.kind().into(),
                up: self.inner.backend.up().await,
            }
        })
    }

    fn summary(&self) -> BoxFut<'_, FamilySummary> {
        Box::pin(async move {
            match self.inner.list(None).await {
                Ok(l) => FamilySummary {
                    count: l.targets.len() as u64,
                    drift: (l.targets.iter().filter(|t| !t.drift.is_empty()).count()
                        + l.unexpected.len()) as u64,
                },
                Err(_) => {
                    // Backend down: every desired target is missing.
                    let n = self
                        .inner
                        .load()
                        .await
                        .map_or(0, |s| s.targets.len() as u64);
                    FamilySummary { count: n, drift: n }
                }
            }
        })
    }
}

/// Puts the targets back when tgtd loses them (a restarted tgtd starts empty).
/// Holds the family weakly: when a reload replaces it (or the agent stops), the watcher ends
/// instead of keeping an old backend alive.
async fn watch(weak: std::sync::Weak<Inner>, every: Duration) {
    let mut last = String::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let Ok(state) = inner.load().await else {
            continue;
        };
        if state.targets.is_empty() {
            continue;
        }
        let Ok(seen) = inner.backend.targets().await else {
            continue; // down: nothing to put back yet
        };
        let missing: Vec<&String> = state
            .targets
            .iter()
            .filter(|(_, s)| !seen.iter().any(|t| t.iqn() == s.iqn.as_str()))
            .map(|(n, _)| n)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let outcome = match inner.reconcile().await {
            Ok(c) => serde_json::to_string(&c).unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        // A target that cannot be put back (its backing file is gone) would otherwise log
        // the same lines every few seconds.
        if outcome != last {
            info!(targets = ?missing, outcome = %outcome, "tgtd was missing desired targets (restarted?); re-applied");
            last = outcome;
        }
    }
}

impl Inner {
    async fn load(&self) -> Result<IscsiState, RpcError> {
        self.ctx.state.get(FAMILY).await.map_err(|e| e.to_rpc())
    }

    async fn desired(&self, name: &str, stored: &Stored) -> Desired {
        Desired {
            stored: stored.clone(),
            secrets: self.secrets.lock().await.get(name).cloned(),
        }
    }

    async fn observe(&self) -> Result<Snapshot, RpcError> {
        self.backend.observe().await.map_err(|e| e.to_rpc())
    }

    /// Saves the desired state and the secrets of `name` (secrets first: a crash between
    /// the two leaves an unused secret, never a target without its secret).
    async fn save(
        &self,
        state: &IscsiState,
        name: &str,
        secrets: Option<&Secrets>,
    ) -> Result<(), RpcError> {
        let mut all = self.secrets.lock().await;
        let mut next = all.clone();
        match secrets {
            Some(s) => next.insert(name.to_string(), s.clone()),
            None => next.remove(name),
        };
        let changed = next != *all;
        if changed {
            self.write_secrets(next.clone()).await?;
        }
        if let Err(e) = self.ctx.state.put(FAMILY, state).await {
            // The desired state stays as it was, so the secrets must too: a secret the console
            // was told failed must never be applied later by a reconcile or the tgt watcher.
            if changed {
                if let Err(r) = self.write_secrets(all.clone()).await {
                    warn!(error = %r.message, "cannot put the previous CHAP secrets back");
                }
            }
            return Err(e.to_rpc());
        }
        if changed {
            *all = next;
        }
        Ok(())
    }

    /// Writes the secrets file (atomically, mode 0600).
    async fn write_secrets(&self, targets: BTreeMap<String, Secrets>) -> Result<(), RpcError> {
        let file = SecretsFile {
            version: 1,
            targets,
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec_pretty(&file)
                .map_err(|e| RpcError::internal(format!("CHAP secrets: {e}")))?,
        );
        let path = self.secrets_path.clone();
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &bytes, 0o600))
            .await
            .map_err(|e| RpcError::internal(format!("CHAP secrets: {e}")))?
            .map_err(|e| crate::state::StateError::Write(e).to_rpc())
    }

    /// A LUN's backing file inside the roots (a block device only where devices are allowed).
    fn resolve_lun(&self, path: &str) -> Result<SafePath, PathError> {
        self.ctx.roots.resolve(
            "LUN path",
            path,
            PathKind::BackingFile {
                devices: self.ctx.allow_devices,
            },
        )
    }

    /// The target as the backend must have it: every path resolved again (a symlink may have
    /// appeared since) and present.
    fn target(&self, d: &Desired) -> Result<Target, String> {
        let mut luns = Vec::new();
        for l in &d.stored.luns {
            let p = self.resolve_lun(&l.path).map_err(|e| e.to_string())?;
            if !p.exists {
                return Err(format!(
                    "LUN {} backing file {} is missing (it is not re-created empty)",
                    l.lun, l.path
                ));
            }
            luns.push(WantLun {
                lun: l.lun,
                path: p,
                readonly: l.readonly,
            });
        }
        Ok(Target {
            desired: d.clone(),
            want: WantTarget {
                iqn: d.stored.iqn.clone(),
                luns,
                initiators: d.stored.initiators.clone(),
                networks: d.stored.networks.clone(),
                chap: d.chap()?,
            },
        })
    }

    /// The change that turns `prev` (desired before; None: none) into `next` (None: deleted).
    fn change(&self, prev: Option<&Desired>, next: Option<&Desired>) -> Result<Change, RpcError> {
        let to = |n: &Desired| self.target(n).map(Box::new).map_err(backend_error);
        Ok(match (prev, next) {
            (None, Some(n)) => Change::Create(to(n)?),
            (Some(p), Some(n)) => Change::Update {
                from: p.clone(),
                to: to(n)?,
            },
            (Some(p), None) => Change::Delete(p.clone()),
            (None, None) => return Err(RpcError::internal("a change from nothing to nothing")),
        })
    }

    /// Plans `change` on `snap` and runs it; how many commands ran.
    async fn converge(
        &self,
        name: &TargetName,
        snap: &Snapshot,
        change: Change,
        others: &BTreeMap<String, SecretText>,
        force: bool,
    ) -> Result<usize, RpcError> {
        let req = Request {
            name: Some(name.clone()),
            change,
            others: others.clone(),
            force,
        };
        let plan = self.backend.plan(snap, &req).map_err(plan_error)?;
        self.backend.apply(&plan).await.map_err(|e| e.to_rpc())
    }

    /// Reads the targets back and names how `iqn` differs from `want` (None: must be absent);
    /// `gone` must be absent too (the old IQN of a renamed target).
    async fn verify(
        &self,
        iqn: &str,
        want: Option<&Desired>,
        gone: Option<&str>,
    ) -> Result<(), RpcError> {
        let seen = self.backend.targets().await.map_err(|e| e.to_rpc())?;
        let find = |iqn: &str| seen.iter().find(|t| t.iqn() == iqn);
        let mut d = match (want, find(iqn)) {
            (None, None) => vec![],
            (None, Some(_)) => vec!["the target is still there".to_string()],
            (Some(f), t) => {
                let mut d = drift(&f.stored, t, false);
                d.extend(t.map(|t| secret_drift(f, t)).unwrap_or_default());
                d
            }
        };
        if gone.and_then(find).is_some() {
            d.push("the target is still there".to_string());
        }
        if d.is_empty() {
            Ok(())
        } else {
            Err(backend_error(format!(
                "{} does not show what was applied: {}",
                self.backend.daemon(),
                d.join("; ")
            )))
        }
    }

    /// One transaction on one target: desired state first, then the backend (planned from
    /// `snap`), then a read-back; on failure the backend, the desired state and the secrets
    /// go back to `prev`.
    async fn transact(
        &self,
        name: &TargetName,
        state: &IscsiState,
        snap: &Snapshot,
        prev: Option<&Desired>,
        next: Option<&Desired>,
        force: bool,
    ) -> Result<(), RpcError> {
        let change = self.change(prev, next)?;
        let mut next_state = state.clone();
        match next {
            Some(n) => next_state
                .targets
                .insert(name.to_string(), n.stored.clone()),
            None => next_state.targets.remove(name.as_str()),
        };
        let others = self.other_accounts(state, name.as_str()).await;
        self.save(
            &next_state,
            name.as_str(),
            next.and_then(|n| n.secrets.as_ref()),
        )
        .await?;
        let iqn = change
            .to()
            .map(|t| t.want.iqn.as_str())
            .or(prev.map(|p| p.iqn().as_str()))
            .unwrap_or_default()
            .to_string();
        let renamed_from = match (prev, next) {
            (Some(p), Some(n)) if p.iqn() != n.iqn() => Some(p.iqn().as_str()),
            _ => None,
        };
        let applied = async {
            self.converge(name, snap, change, &others, force).await?;
            self.verify(&iqn, next, renamed_from).await
        }
        .await;
        let Err(e) = applied else {
            return Ok(());
        };
        // Roll back: the backend to what was desired before (planned from what it has now),
        // then the desired state.
        let back = async {
            let now = self.observe().await?;
            let undo = match (next, prev) {
                (Some(n), Some(p)) => Change::Update {
                    from: n.clone(),
                    to: Box::new(self.target(p).map_err(backend_error)?),
                },
                (Some(n), None) => Change::Delete(n.clone()),
                (None, Some(p)) => Change::Create(Box::new(self.target(p).map_err(backend_error)?)),
                (None, None) => return Ok(()),
            };
            self.converge(name, &now, undo, &others, true).await?;
            if let Some(p) = prev {
                self.verify(p.iqn().as_str(), Some(p), None).await?;
            }
            Ok::<_, RpcError>(())
        }
        .await;
        let saved = self
            .save(state, name.as_str(), prev.and_then(|p| p.secrets.as_ref()))
            .await;
        let restored = match (back, saved) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(b), _) => Err(b),
            (_, Err(s)) => Err(RpcError {
                message: format!("restoring the desired state: {}", s.message),
                ..s
            }),
        };
        Err(crate::exec::rolled_back(e, restored))
    }

    /// user → secret of every CHAP account the other targets use.
    async fn other_accounts(&self, state: &IscsiState, name: &str) -> BTreeMap<String, SecretText> {
        let mut m = BTreeMap::new();
        for (n, s) in &state.targets {
            if n != name {
                m.extend(self.desired(n, s).await.accounts());
            }
        }
        m
    }

    async fn create(&self, p: TargetParams, update: bool) -> Result<ApplyResult, RpcError> {
        let spec = p.validate(&self.prefix).map_err(invalid)?;
        self.backend.check(&spec).map_err(invalid)?;
        let name = spec.name.as_str();
        // Paths: resolved before anything else (syntax, roots, symlinks, type, size).
        let mut to_create = Vec::new();
        for (i, l) in spec.luns.iter().enumerate() {
            let sp = self
                .resolve_lun(&l.path)
                .map_err(|e| invalid(format!("luns[{i}].path (LUN {}): {e}", l.lun)))?;
            if sp.exists {
                let have = backing_size(sp.as_path());
                if let (Some(want), Some(have)) = (l.size_bytes, have) {
                    if want != have {
                        return Err(invalid(format!(
                            "luns[{i}].size_bytes (LUN {}): {} exists with {have} bytes, not {want} \
                             (resizing is not supported)",
                            l.lun, l.path
                        )));
                    }
                }
            } else {
                let size = l.size_bytes.ok_or_else(|| {
                    invalid(format!(
                        "luns[{i}].size_bytes (LUN {}): required, {} does not exist yet",
                        l.lun, l.path
                    ))
                })?;
                to_create.push((sp, size));
            }
        }
        let next = Desired::from_spec(&spec);
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let prev = match state.targets.get(name) {
            Some(s) => Some(self.desired(name, s).await),
            None => None,
        };
        match (&prev, update) {
            (Some(p), _) if *p == next => {
                return Ok(ApplyResult {
                    name: name.into(),
                    iqn: spec.iqn.to_string(),
                    changed: false,
                    created_files: vec![],
                })
            }
            (Some(_), false) => {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "target {name:?} exists with a different spec; use iscsi.target.update \
                         to change it"
                    ),
                ))
            }
            (None, true) => {
                return Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("no iSCSI target named {name:?}"),
                ))
            }
            _ => {}
        }
        self.check_clashes(&state, name, &next).await?;
        // The one read of the backend this change plans from; nothing is created while the
        // backend is down (UNAVAILABLE, retryable).
        let snap = self.observe().await?;
        // Backing files that do not exist yet: created sparse, removed again on failure.
        let mut created: Vec<PathBuf> = Vec::new();
        for (sp, size) in &to_create {
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(sp.as_path())
                .and_then(|f| {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.set_len(*size)?;
                    f.sync_all()
                });
            if let Err(e) = made {
                for c in &created {
                    let _ = std::fs::remove_file(c);
                }
                return Err(backend_error(format!(
                    "cannot create backing file {}: {e}",
                    sp.as_str()
                )));
            }
            created.push(sp.as_path().to_path_buf());
        }
        let r = self
            .transact(&spec.name, &state, &snap, prev.as_ref(), Some(&next), false)
            .await;
        if let Err(e) = r {
            for c in &created {
                let _ = std::fs::remove_file(c);
            }
            return Err(e);
        }
        Ok(ApplyResult {
            name: name.into(),
            iqn: spec.iqn.to_string(),
            changed: true,
            created_files: created.iter().map(|c| c.display().to_string()).collect(),
        })
    }

    /// CONFLICT when `next` would share an IQN, a LUN's file or (tgt) a CHAP user with a
    /// different secret with another target.
    async fn check_clashes(
        &self,
        state: &IscsiState,
        name: &str,
        next: &Desired,
    ) -> Result<(), RpcError> {
        let conflict = |what: String| Err(RpcError::new(ErrorCode::Conflict, what));
        for (n, s) in &state.targets {
            if n == name {
                continue;
            }
            if s.iqn == next.stored.iqn {
                return conflict(format!("target {n:?} already has the IQN {}", s.iqn));
            }
            for l in &next.stored.luns {
                if s.luns.iter().any(|o| o.path == l.path) {
                    return conflict(format!("{} is already a LUN of target {n:?}", l.path));
                }
            }
        }
        if !self.backend.shared_accounts() {
            return Ok(());
        }
        let others = self.other_accounts(state, name).await;
        for (u, sec) in next.accounts() {
            if others.get(&u).is_some_and(|o| *o != sec) {
                return conflict(format!(
                    "CHAP user {u:?} is used by another target with a different secret \
                     (tgt accounts are shared by all targets)"
                ));
            }
        }
        Ok(())
    }

    async fn delete(&self, p: DeleteParams) -> Result<DeleteResult, RpcError> {
        let name = TargetName::parse(&p.name).map_err(|e| invalid(format!("name: {e}")))?;
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let Some(stored) = state.targets.get(name.as_str()) else {
            return Ok(DeleteResult {
                existed: false,
                deleted_files: vec![],
            });
        };
        let prev = self.desired(name.as_str(), stored).await;
        let snap = self.observe().await?;
        if let Some(t) = snap.find(prev.iqn().as_str()) {
            let sessions = t.shown().sessions;
            if sessions > 0 && !p.force {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "target {:?} has {sessions} initiator session(s) logged in; pass \
                         \"force\": true to drop them",
                        name.as_str()
                    ),
                ));
            }
        }
        self.transact(&name, &state, &snap, Some(&prev), None, p.force)
            .await?;
        let mut deleted = Vec::new();
        if p.delete_backing_files {
            for l in &prev.stored.luns {
                // Only regular files under a root, and never a device.
                let Ok(sp) = self.ctx.roots.resolve(
                    "LUN path",
                    &l.path,
                    PathKind::BackingFile { devices: false },
                ) else {
                    warn!(path = %l.path, "backing file not deleted: no longer a plain file under a root");
                    continue;
                };
                if sp.exists && std::fs::remove_file(sp.as_path()).is_ok() {
                    deleted.push(l.path.clone());
                }
            }
        }
        Ok(DeleteResult {
            existed: true,
            deleted_files: deleted,
        })
    }

    async fn list(&self, only: Option<&str>) -> Result<m::ListResult, RpcError> {
        let state = self.load().await?;
        let seen = self.backend.targets().await.map_err(|e| e.to_rpc())?;
        let secrets = self.secrets.lock().await.clone();
        let mut targets = Vec::new();
        for (name, s) in &state.targets {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let t = seen.iter().find(|t| t.iqn() == s.iqn.as_str());
            let mut d = drift(s, t, true);
            if s.chap_username.is_some() && !secrets.contains_key(name) {
                d.push("the CHAP secret is unknown to the agent; send iscsi.target.update".into());
            }
            if let Some(t) = t {
                let f = Desired {
                    stored: s.clone(),
                    secrets: secrets.get(name).cloned(),
                };
                d.extend(secret_drift(&f, t));
            }
            targets.push(TargetView {
                name: name.clone(),
                desired: TargetDesired {
                    iqn: s.iqn.to_string(),
                    luns: s.luns.clone(),
                    initiators: s
                        .initiators
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect(),
                    networks: s
                        .networks
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect(),
                    chap_username: s.chap_username.as_ref().map(|u| u.as_str().into()),
                    chap_mutual_username: s
                        .chap_mutual_username
                        .as_ref()
                        .map(|u| u.as_str().into()),
                },
                actual: t.map(actual),
                drift: d,
            });
        }
        let unexpected = self
            .strays(&state, &seen)
            .map(|t| t.iqn().to_string())
            .collect();
        Ok(m::ListResult {
            targets,
            unexpected,
            next_cursor: None,
        })
    }

    /// Targets under the agent's prefix that nobody wants.
    fn strays<'a>(
        &self,
        state: &'a IscsiState,
        seen: &'a [Seen],
    ) -> impl Iterator<Item = &'a Seen> + 'a {
        let desired: BTreeSet<&str> = state.targets.values().map(|s| s.iqn.as_str()).collect();
        let mine = format!("{}:", self.prefix);
        seen.iter()
            .filter(move |t| t.iqn().starts_with(&mine) && !desired.contains(t.iqn()))
    }

    async fn reconcile(&self) -> Result<IscsiChanges, RpcError> {
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let mut snap = self.observe().await?;
        let mut out = IscsiChanges::default();
        let others = BTreeMap::new();
        for (name, s) in &state.targets {
            let failed = |error: String| IscsiFailed {
                target: name.clone(),
                error,
            };
            let d = self.desired(name, s).await;
            let t = match self.target(&d) {
                Ok(t) => t,
                Err(e) => {
                    out.failed.push(failed(e));
                    continue;
                }
            };
            let Ok(tname) = TargetName::parse(name) else {
                out.failed
                    .push(failed(format!("{name:?} is not a target name")));
                continue;
            };
            let action = if snap.find(s.iqn.as_str()).is_some() {
                "repaired"
            } else {
                "created"
            };
            let req = Request {
                name: Some(tname),
                change: Change::Reapply(Box::new(t)),
                others: others.clone(),
                force: false,
            };
            let plan = match self.backend.plan(&snap, &req) {
                Ok(p) if p.is_empty() => continue,
                Ok(p) => p,
                Err(e) => {
                    out.failed.push(failed(e.to_string()));
                    continue;
                }
            };
            let r = self.backend.apply(&plan).await;
            // What the backend has now, for the next target's tid and accounts.
            snap = self.observe().await?;
            match r {
                Ok(n) => {
                    info!(target = %name, action, commands = n, "reconcile re-applied a target");
                    out.changed.push(IscsiChanged {
                        target: name.clone(),
                        action: action.into(),
                        commands: Some(n as u64),
                    });
                }
                Err(e) => {
                    warn!(target = %name, error = %e, "reconcile of a target failed");
                    out.failed.push(failed(e.to_string()));
                }
            }
        }
        // Targets under the agent's prefix that nobody wants (e.g. a crash in the middle of
        // a delete) go, unless initiators are using them.
        let strays: Vec<(String, u32)> = self
            .strays(&state, &snap.targets)
            .map(|t| (t.iqn().to_string(), t.shown().sessions))
            .collect();
        for (iqn, sessions) in strays {
            if sessions > 0 {
                out.failed.push(IscsiFailed {
                    target: iqn,
                    error: "not in the desired state but has sessions; left alone".into(),
                });
                continue;
            }
            let req = Request {
                name: None,
                change: Change::Stray(iqn.clone()),
                others: others.clone(),
                force: false,
            };
            let r = match self.backend.plan(&snap, &req) {
                Ok(plan) => self.backend.apply(&plan).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(n) => {
                    info!(iqn = %iqn, "reconcile removed an unexpected target");
                    out.changed.push(IscsiChanged {
                        target: iqn,
                        action: "removed".into(),
                        commands: Some(n as u64),
                    });
                }
                Err(error) => out.failed.push(IscsiFailed { target: iqn, error }),
            }
        }
        Ok(out)
    }
}

fn actual(t: &Seen) -> TargetActual {
    let s = t.shown();
    let mut initiators = Vec::new();
    let mut networks = Vec::new();
    for (raw, r) in s.acl.iter().zip(s.rules()) {
        match r {
            Rule::Name(i) => initiators.push(i.to_string()),
            Rule::Net(_) | Rule::Other(_) if looks_like_name(raw) => initiators.push(raw.clone()),
            _ => networks.push(raw.clone()),
        }
    }
    TargetActual {
        tid: t.tid(),
        iqn: s.iqn.clone(),
        luns: s
            .data_luns()
            .map(|l| LunActual {
                lun: l.lun,
                path: l.path.clone().unwrap_or_default(),
                readonly: l.readonly,
                size_bytes: l
                    .path
                    .as_deref()
                    .and_then(|p| backing_size(std::path::Path::new(p))),
            })
            .collect(),
        initiators,
        networks,
        chap_usernames: s.accounts.clone(),
        chap_mutual_username: s.outgoing.clone(),
        sessions: s.sessions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::iscsi::tgt::{Op, Step};
    use crate::model::iscsi::{LioSeen, Plan, Raw, SeenLun, Shown, TgtTarget};
    use csg_protocol::methods::iscsi::TargetSpec;
    use std::sync::atomic::AtomicUsize;

    /// A backend in memory that counts how often it is read.
    #[derive(Default)]
    struct Counting {
        targets: std::sync::Mutex<Vec<Seen>>,
        planned: std::sync::Mutex<Option<Option<WantTarget>>>,
        observes: AtomicUsize,
        reads: AtomicUsize,
    }

    impl IscsiBackend for Arc<Counting> {
        fn kind(&self) -> &'static str {
            "tgt"
        }
        fn daemon(&self) -> &'static str {
            "fake"
        }
        fn shared_accounts(&self) -> bool {
            true
        }
        fn forgets_targets(&self) -> bool {
            false
        }
        fn check(&self, _: &TargetSpec) -> Result<(), String> {
            Ok(())
        }
        fn observe(&self) -> BoxFut<'_, Result<Snapshot, crate::exec::ToolError>> {
            self.observes.fetch_add(1, Ordering::SeqCst);
            let targets = self.targets.lock().unwrap().clone();
            Box::pin(async move {
                Ok(Snapshot {
                    targets,
                    raw: Raw::Tgt {
                        accounts: BTreeSet::new(),
                    },
                })
            })
        }
        fn targets(&self) -> BoxFut<'_, Result<Vec<Seen>, crate::exec::ToolError>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let targets = self.targets.lock().unwrap().clone();
            Box::pin(async move { Ok(targets) })
        }
        fn plan(&self, _: &Snapshot, req: &Request) -> Result<Plan, PlanError> {
            *self.planned.lock().unwrap() = Some(req.change.to().map(|t| t.want.clone()));
            Ok(Plan::Tgt(vec![Step::Run(Op::DeleteAccount {
                user: "placeholder".into(),
            })]))
        }
        fn apply<'a>(&'a self, _: &'a Plan) -> BoxFut<'a, Result<usize, crate::exec::ToolError>> {
            let want = self.planned.lock().unwrap().take().flatten();
            *self.targets.lock().unwrap() = want
                .map(|w| {
                    Seen::Tgt(TgtTarget {
                        tid: 1,
                        shown: Shown {
                            iqn: w.iqn.to_string(),
                            luns: w
                                .luns
                                .iter()
                                .map(|l| SeenLun {
                                    lun: l.lun,
                                    path: Some(l.path.as_str().into()),
                                    readonly: l.readonly,
                                })
                                .collect(),
                            ..Default::default()
                        },
                    })
                })
                .into_iter()
                .collect();
            Box::pin(async move { Ok(1) })
        }
        fn up(&self) -> BoxFut<'_, bool> {
            Box::pin(async move { true })
        }
    }

    #[tokio::test]
    async fn a_mutation_reads_the_backend_once_and_reads_back_once() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let state_dir = root.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let ctx = StorageCtx {
            roots: crate::storage::paths::Roots::new(vec![root.clone()]),
            state: Arc::new(crate::state::StateStore::open(&state_dir).unwrap()),
            timeout: Duration::from_secs(5),
            allow_devices: false,
        };
        let backend = Arc::new(Counting::default());
        let family = Iscsi {
            inner: Arc::new(Inner {
                backend: Box::new(backend.clone()),
                prefix: "iqn.2026-11.com.example.csg".into(),
                ctx,
                lock: Mutex::new(()),
                secrets_path: state_dir.join(SECRETS_FILE),
                secrets: Mutex::new(BTreeMap::new()),
                watch_interval: None,
            }),
            watcher: AtomicBool::new(false),
        };
        let img = root.join("vol1.img").display().to_string();
        let params: TargetParams = serde_json::from_value(serde_json::json!({
            "name": "vol1", "luns": [{"lun": 1, "path": img, "size_bytes": 4096}],
        }))
        .unwrap();
        let r = family
            .call(IscsiMethod::TargetCreate(params))
            .await
            .unwrap();
        assert!(matches!(
            r,
            MethodResult::IscsiApply(ApplyResult { changed: true, .. })
        ));
        assert_eq!(backend.observes.load(Ordering::SeqCst), 1);
        assert_eq!(backend.reads.load(Ordering::SeqCst), 1);
        let del: DeleteParams =
            serde_json::from_value(serde_json::json!({"name": "vol1"})).unwrap();
        family.call(IscsiMethod::TargetDelete(del)).await.unwrap();
        assert_eq!(backend.observes.load(Ordering::SeqCst), 2);
        assert_eq!(backend.reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lio_shows_no_target_id() {
        let t = Seen::Lio(LioSeen {
            shown: Shown {
                iqn: "iqn.2026-11.com.example.csg:vol1".into(),
                ..Default::default()
            },
            ..Default::default()
        });
        assert_eq!(actual(&t).tid, None);
    }
}
