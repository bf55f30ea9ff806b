//! `iscsi.target.*`: iSCSI targets on tgt or LIO.
//!
//! params → [`TargetSpec`] (pure checks, protocol crate) → backing paths resolved under the
//! storage roots → under the family's mutation lock: compare with the desired state (no-op,
//! CONFLICT, NOT_FOUND), create missing backing files, save the desired state, plan and run the
//! backend's commands, read the backend back and compare. On any failure the previous target
//! (as it was desired before), the previous desired state and the files this request created
//! are put back.
//!
//! The family semantics live here once; [`Backend`] is the small part that differs: how to
//! read the backend back (as [`SeenTarget`]s), how to plan and run a change (tgtadm calls
//! computed step by step, or a targetcli batch that replaces the target and ends with
//! `saveconfig`), and whether the backend is up.
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
    self as m, ApplyResult, Chap, ChapSecret, ChapUser, CidrKey, DeleteParams, DeleteResult,
    GetParams, Iqn, ListResult, LunActual, LunSpec, TargetActual, TargetDesired, TargetParams,
    TargetSpec, TargetView,
};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::{ErrorCode, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::backends::lio::{self, Lio, RunError};
use crate::backends::tgt::{
    self, Accounts, Op, Rule, SeenTarget, Tgt, TgtError, WantLun, WantTarget,
};
use crate::config::iscsi::{IscsiBackendKind, IscsiSettings};
use crate::handlers::{no_params, to_value};
use crate::storage::paths::PathKind;
use crate::storage::{BoxFut, Family, StorageCtx};

const FAMILY: &str = "iscsi";
const SECRETS_FILE: &str = "iscsi-chap-secrets.json";

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &IscsiSettings, ctx: &StorageCtx) -> Result<Option<Box<dyn Family>>, String> {
    // The secrets needed to re-apply targets (and targetcli's own files) live beside the state
    // file, so iSCSI needs a state directory on disk (an in-memory store has none).
    let state_dir = || {
        ctx.state
            .path()
            .and_then(std::path::Path::parent)
            .map(PathBuf::from)
            .ok_or("iSCSI needs a state directory on disk for its CHAP secrets")
    };
    let backend = match cfg.backend {
        IscsiBackendKind::Disabled => return Ok(None),
        IscsiBackendKind::Lio => Backend::Lio(Lio {
            targetcli: cfg.targetcli.clone(),
            root: cfg.configfs_root.clone(),
            home: state_dir()?.join(lio::TARGETCLI_HOME_DIR),
            timeout: ctx.timeout,
        }),
        IscsiBackendKind::Tgt => Backend::Tgt(Tgt {
            tgtadm: cfg.tgtadm.clone(),
            socket: cfg.tgt_socket.clone(),
            timeout: ctx.timeout,
        }),
    };
    let secrets_path = state_dir()?.join(SECRETS_FILE);
    let secrets = load_secrets(&secrets_path)?;
    // Only tgtd forgets its targets while the agent runs (a restart); LIO keeps them in the
    // kernel, and rtslib-fb-targetctl.service (Debian) or target.service (RHEL) restores
    // saveconfig.json at boot before the agent starts (the unit is ordered after both).
    let watch_interval = match backend {
        Backend::Tgt(_) => cfg.watch_interval,
        Backend::Lio(_) => None,
    };
    Ok(Some(Box::new(IscsiFamily {
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
    })))
}

/// The part of the family that differs between the two iSCSI targets.
enum Backend {
    /// tgtd through tgtadm: changes planned call by call from the read-back ([`tgt::plan`]).
    Tgt(Tgt),
    /// The kernel target through targetcli, read back from configfs: a target that differs is
    /// replaced in one batch ending with `saveconfig` ([`lio::plan`]).
    Lio(Lio),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Tgt(_) => "tgt",
            Backend::Lio(_) => "lio",
        }
    }

    /// What is read back, for messages.
    fn daemon(&self) -> &'static str {
        match self {
            Backend::Tgt(_) => "tgtd",
            Backend::Lio(_) => "LIO (configfs)",
        }
    }

    /// Every target the backend has, and (tgt) the CHAP accounts it has.
    async fn observe(&self) -> Result<(Vec<SeenTarget>, BTreeSet<String>), RpcError> {
        match self {
            Backend::Tgt(t) => {
                let seen = t.show().await.map_err(tgt_err)?;
                let accounts = t.accounts().await.map_err(tgt_err)?;
                Ok((seen, accounts))
            }
            Backend::Lio(l) => {
                let cfs = l.read().await.map_err(lio_err)?;
                Ok((
                    cfs.targets.iter().map(lio::to_seen).collect(),
                    BTreeSet::new(),
                ))
            }
        }
    }

    async fn up(&self) -> bool {
        match self {
            Backend::Tgt(t) => t.show().await.is_ok(),
            Backend::Lio(l) => l.available().is_ok(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Desired state (no secrets) and the separate secrets file

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IscsiState {
    #[serde(default)]
    targets: BTreeMap<String, Stored>,
}

/// A target as the console asked for it, without its CHAP secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    iqn: Iqn,
    luns: Vec<LunSpec>,
    initiators: BTreeSet<Iqn>,
    networks: BTreeSet<CidrKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap_username: Option<ChapUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap_mutual_username: Option<ChapUser>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secrets {
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mutual_secret: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    version: u32,
    #[serde(default)]
    targets: BTreeMap<String, Secrets>,
}

fn load_secrets(path: &std::path::Path) -> Result<BTreeMap<String, Secrets>, String> {
    match std::fs::read(path) {
        Ok(b) => {
            let f: SecretsFile = serde_json::from_slice(&b)
                .map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
            Ok(f.targets)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The whole desired target: what is stored plus its secrets.
#[derive(Clone, PartialEq, Eq)]
struct Full {
    stored: Stored,
    secrets: Option<Secrets>,
}

impl Full {
    fn from_spec(s: &TargetSpec) -> Self {
        Full {
            stored: Stored {
                iqn: s.iqn.clone(),
                luns: s.luns.clone(),
                initiators: s.initiators.clone(),
                networks: s.networks.clone(),
                chap_username: s.chap.as_ref().map(|c| c.username.clone()),
                chap_mutual_username: s
                    .chap
                    .as_ref()
                    .and_then(|c| c.mutual.as_ref())
                    .map(|(u, _)| u.clone()),
            },
            secrets: s.chap.as_ref().map(|c| Secrets {
                secret: c.secret.expose().to_string(),
                mutual_secret: c.mutual.as_ref().map(|(_, s)| s.expose().to_string()),
            }),
        }
    }

    /// The CHAP credentials; an error when the secret is not known.
    fn chap(&self) -> Result<Option<Chap>, String> {
        let Some(user) = &self.stored.chap_username else {
            return Ok(None);
        };
        let unknown = || {
            "its CHAP secret is not known to the agent (secrets file lost?); send \
             iscsi.target.update with the secret"
                .to_string()
        };
        let s = self.secrets.as_ref().ok_or_else(unknown)?;
        let secret = ChapSecret::parse("secret", &s.secret).map_err(|e| e.to_string())?;
        let mutual = match (&self.stored.chap_mutual_username, &s.mutual_secret) {
            (None, _) => None,
            (Some(u), Some(ms)) => Some((
                u.clone(),
                ChapSecret::parse("mutual_secret", ms).map_err(|e| e.to_string())?,
            )),
            (Some(_), None) => return Err(unknown()),
        };
        Ok(Some(Chap {
            username: user.clone(),
            secret,
            mutual,
        }))
    }

    /// user name → secret for every CHAP account of this target.
    fn accounts(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let (Some(u), Some(s)) = (&self.stored.chap_username, &self.secrets) {
            v.push((u.as_str().to_string(), s.secret.clone()));
            if let (Some(mu), Some(ms)) = (&self.stored.chap_mutual_username, &s.mutual_secret) {
                v.push((mu.as_str().to_string(), ms.clone()));
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The family

struct IscsiFamily {
    inner: Arc<Inner>,
    watcher: AtomicBool,
}

struct Inner {
    backend: Backend,
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

fn tgt_err(e: TgtError) -> RpcError {
    let code = match &e {
        TgtError::Unavailable { .. } => ErrorCode::Unavailable,
        TgtError::Timeout { .. } => ErrorCode::Timeout,
        TgtError::Failed { .. } | TgtError::Exec { .. } => ErrorCode::BackendError,
    };
    RpcError::new(code, e.to_string())
}

fn lio_err(e: RunError) -> RpcError {
    let code = match &e {
        RunError::Unavailable(_) => ErrorCode::Unavailable,
        RunError::Timeout { .. } => ErrorCode::Timeout,
        RunError::Failed { .. } | RunError::Exec { .. } | RunError::Read(_) => {
            ErrorCode::BackendError
        }
    };
    RpcError::new(code, e.to_string())
}

fn state_err(e: crate::state::StateError) -> RpcError {
    e.to_rpc()
}

fn parse<T: serde::de::DeserializeOwned>(
    method: &str,
    p: Map<String, Value>,
) -> Result<T, RpcError> {
    serde_json::from_value(Value::Object(p)).map_err(|e| {
        let e =
            csg_protocol::validate::excerpt(&e.to_string(), csg_protocol::validate::ERROR_EXCERPT);
        RpcError::invalid_params(format!("{method}: {e}"))
    })
}

/// 16 random characters of `[A-Za-z0-9]` from the kernel's CSPRNG: the guard account's
/// secret, never stored or shown.
fn random_secret() -> String {
    use std::io::Read;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let mut rng = fastrand::Rng::new();
        b.iter_mut().for_each(|x| *x = rng.u8(..));
    }
    b.iter()
        .map(|x| ALNUM[*x as usize % ALNUM.len()] as char)
        .collect()
}

/// Size of a backing file or block device, bytes.
fn backing_size(path: &std::path::Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let md = std::fs::metadata(path).ok()?;
    if md.is_file() {
        return Some(md.len());
    }
    std::fs::File::open(path).ok()?.seek(SeekFrom::End(0)).ok()
}

impl Family for IscsiFamily {
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
            let i = &self.inner;
            match method {
                m::TARGET_CREATE => i.create(parse(method, params)?, false).await,
                m::TARGET_UPDATE => i.create(parse(method, params)?, true).await,
                m::TARGET_DELETE => i.delete(parse(method, params)?).await,
                m::TARGET_GET => {
                    let p: GetParams = parse(method, params)?;
                    // A name that cannot exist is refused as such, not looked up and quoted.
                    csg_protocol::methods::iscsi::TargetName::parse(&p.name)
                        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
                    let l = i.list(Some(&p.name)).await?;
                    match l.targets.into_iter().next() {
                        Some(t) => to_value(&t),
                        None => Err(RpcError::new(
                            ErrorCode::NotFound,
                            format!("no iSCSI target named {:?}", p.name),
                        )),
                    }
                }
                m::TARGET_LIST => {
                    no_params(method, &params)?;
                    to_value(&i.list(None).await?)
                }
                _ => Err(RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!("unknown method {method:?}"),
                )),
            }
        })
    }

    fn reconcile(&self) -> BoxFut<'_, Result<Value, RpcError>> {
        Box::pin(async move {
            if let Some(every) = self.inner.watch_interval {
                if !self.watcher.swap(true, Ordering::SeqCst) {
                    tokio::spawn(watch(Arc::downgrade(&self.inner), every));
                }
            }
            self.inner.reconcile().await
        })
    }

    fn service(&self) -> BoxFut<'_, ServiceState> {
        Box::pin(async move {
            ServiceState {
                backend: self.inner.backend.label().into(),
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
                        .ctx
                        .state
                        .get::<IscsiState>(FAMILY)
                        .await
                        .map(|s| s.targets.len() as u64)
                        .unwrap_or(0);
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
        let Ok(state) = inner.ctx.state.get::<IscsiState>(FAMILY).await else {
            continue;
        };
        if state.targets.is_empty() {
            continue;
        }
        let Ok((seen, _)) = inner.backend.observe().await else {
            continue; // down: nothing to put back yet
        };
        let missing: Vec<&String> = state
            .targets
            .iter()
            .filter(|(_, s)| !seen.iter().any(|t| t.iqn == s.stored_iqn()))
            .map(|(n, _)| n)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let outcome = match inner.reconcile().await {
            Ok(v) => v.to_string(),
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

impl Stored {
    fn stored_iqn(&self) -> &str {
        self.iqn.as_str()
    }
}

impl Inner {
    async fn load(&self) -> Result<IscsiState, RpcError> {
        self.ctx.state.get(FAMILY).await.map_err(state_err)
    }

    async fn full(&self, name: &str, stored: &Stored) -> Full {
        Full {
            stored: stored.clone(),
            secrets: self.secrets.lock().await.get(name).cloned(),
        }
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
        if next != *all {
            let bytes = serde_json::to_vec_pretty(&SecretsFile {
                version: 1,
                targets: next.clone(),
            })
            .map_err(|e| RpcError::internal(format!("CHAP secrets: {e}")))?;
            let path = self.secrets_path.clone();
            tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &bytes, 0o600))
                .await
                .map_err(|e| RpcError::internal(format!("CHAP secrets: {e}")))?
                .map_err(|e| crate::state::StateError::Write(e).to_rpc())?;
            *all = next;
        }
        drop(all);
        self.ctx.state.put(FAMILY, state).await.map_err(state_err)
    }

    async fn observe(&self) -> Result<(Vec<SeenTarget>, BTreeSet<String>), RpcError> {
        self.backend.observe().await
    }

    /// The target as the backend must have it: every path resolved again (a symlink may have
    /// appeared since) and present.
    fn want(&self, f: &Full) -> Result<WantTarget, String> {
        let mut luns = Vec::new();
        for l in &f.stored.luns {
            let p = self
                .ctx
                .roots
                .resolve(
                    "LUN path",
                    &l.path,
                    PathKind::BackingFile {
                        devices: self.ctx.allow_devices,
                    },
                )
                .map_err(|e| e.to_string())?;
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
        Ok(WantTarget {
            iqn: f.stored.iqn.clone(),
            luns,
            initiators: f.stored.initiators.clone(),
            networks: f.stored.networks.clone(),
            chap: f.chap()?,
        })
    }

    /// Turns the backend's copy of target `name` from what it is into `next` (None: deleted),
    /// given what was desired before (`prev`) and the other targets' desired accounts.
    async fn converge(
        &self,
        name: &str,
        prev: Option<&Full>,
        next: Option<&Full>,
        others: &BTreeMap<String, String>,
        force: bool,
    ) -> Result<(), RpcError> {
        match &self.backend {
            Backend::Tgt(t) => self.converge_tgt(t, prev, next, others, force).await,
            // `/iscsi delete` ends the target's sessions itself.
            Backend::Lio(l) => self.converge_lio(l, name, prev, next).await,
        }
    }

    async fn converge_lio(
        &self,
        lio: &Lio,
        name: &str,
        prev: Option<&Full>,
        next: Option<&Full>,
    ) -> Result<(), RpcError> {
        let backend = |e: String| RpcError::new(ErrorCode::BackendError, e);
        let tname = m::TargetName::parse(name).map_err(|e| backend(e.to_string()))?;
        let cfs = lio.read().await.map_err(lio_err)?;
        let want = next.map(|n| self.want(n)).transpose().map_err(backend)?;
        let keep = next.is_some_and(|n| {
            cfs.target(n.stored.iqn.as_str())
                .is_some_and(|t| in_sync(n, &lio::to_seen(t)))
        });
        let cmds = lio::plan(
            &tname,
            &cfs,
            prev.map(|p| &p.stored.iqn),
            want.as_ref(),
            keep,
        )
        .map_err(|e| backend(e.to_string()))?;
        lio.apply_all(&cmds)
            .await
            .map(|_| ())
            .map_err(|(_, e)| lio_err(e))
    }

    async fn converge_tgt(
        &self,
        tgt: &Tgt,
        prev: Option<&Full>,
        next: Option<&Full>,
        others: &BTreeMap<String, String>,
        force: bool,
    ) -> Result<(), RpcError> {
        let (seen, existing) = self.observe().await?;
        let find = |iqn: &Iqn| seen.iter().find(|t| t.iqn == iqn.as_str());
        let mut ops = Vec::new();
        // The old target goes when it is deleted or renamed.
        if let Some(p) = prev {
            if next.map(|n| &n.stored.iqn) != Some(&p.stored.iqn) {
                if let Some(t) = find(&p.stored.iqn) {
                    if force && t.sessions > 0 {
                        let conns = tgt.connections(t.tid).await.map_err(tgt_err)?;
                        ops.extend(tgt::evict(t, &conns));
                    }
                    ops.push(Op::DeleteTarget { tid: t.tid, force });
                }
            }
        }
        if let Some(n) = next {
            let want = self
                .want(n)
                .map_err(|e| RpcError::new(ErrorCode::BackendError, e))?;
            let seen_t = find(&n.stored.iqn);
            let tid = seen_t
                .map(|t| t.tid)
                .unwrap_or_else(|| tgt::next_tid(&seen));
            // An account is (re)created with our secret unless another target shares it (the
            // secret is then the same, by the CONFLICT rule) and tgtd has it.
            let before: BTreeMap<String, String> = prev
                .map(|p| p.accounts().into_iter().collect())
                .unwrap_or_default();
            let reset = n
                .accounts()
                .into_iter()
                .filter(|(u, s)| {
                    !others.contains_key(u) && existing.contains(u) && before.get(u) != Some(s)
                })
                .map(|(u, _)| u)
                .collect();
            ops.extend(tgt::plan(
                seen_t,
                &want,
                tid,
                &Accounts {
                    existing: existing.clone(),
                    reset,
                    guard_secret: Some(random_secret()),
                },
            ));
        }
        // Accounts nobody uses any more.
        let now: BTreeSet<String> = next
            .map(|n| n.accounts().into_iter().map(|(u, _)| u).collect())
            .unwrap_or_default();
        if let Some(p) = prev {
            for (u, _) in p.accounts() {
                if !now.contains(&u) && !others.contains_key(&u) && existing.contains(&u) {
                    ops.push(Op::DeleteAccount { user: u });
                }
            }
        }
        for op in &ops {
            tracing::debug!(command = %op.redacted(), "tgtadm");
        }
        tgt.apply_all(&ops)
            .await
            .map(|_| ())
            .map_err(|(_, e)| tgt_err(e))
    }

    /// Reads the backend back and names how `target` differs from `f` (None: must be absent).
    async fn verify(&self, iqn: &Iqn, f: Option<&Full>) -> Result<(), RpcError> {
        let (seen, _) = self.observe().await?;
        let t = seen.iter().find(|t| t.iqn == iqn.as_str());
        let drift = match (f, t) {
            (None, None) => vec![],
            (None, Some(_)) => vec!["the target is still there".to_string()],
            (Some(f), t) => {
                let mut d = drift(&f.stored, t, false);
                d.extend(t.map(|t| secret_drift(f, t)).unwrap_or_default());
                d
            }
        };
        if drift.is_empty() {
            Ok(())
        } else {
            Err(RpcError::new(
                ErrorCode::BackendError,
                format!(
                    "{} does not show what was applied: {}",
                    self.backend.daemon(),
                    drift.join("; ")
                ),
            ))
        }
    }

    /// One transaction on one target: desired state first, then the backend, then a read-back;
    /// on failure the backend, the desired state and the secrets go back to `prev`.
    async fn transact(
        &self,
        name: &str,
        state: &IscsiState,
        prev: Option<&Full>,
        next: Option<&Full>,
        force: bool,
    ) -> Result<(), RpcError> {
        // Nothing changes while the backend is down.
        self.observe().await?;
        let mut next_state = state.clone();
        match next {
            Some(n) => next_state
                .targets
                .insert(name.to_string(), n.stored.clone()),
            None => next_state.targets.remove(name),
        };
        let others = self.other_accounts(state, name).await;
        self.save(&next_state, name, next.and_then(|n| n.secrets.as_ref()))
            .await?;
        let iqn = next
            .or(prev)
            .map(|f| f.stored.iqn.clone())
            .expect("prev or next");
        let applied = async {
            self.converge(name, prev, next, &others, force).await?;
            self.verify(&iqn, next).await?;
            if let (Some(p), Some(n)) = (prev, next) {
                if p.stored.iqn != n.stored.iqn {
                    self.verify(&p.stored.iqn, None).await?;
                }
            }
            Ok::<_, RpcError>(())
        }
        .await;
        let Err(e) = applied else {
            return Ok(());
        };
        // Roll back: the backend to what was desired before, then the desired state.
        let back = async {
            self.converge(name, next, prev, &others, true).await?;
            if let Some(p) = prev {
                self.verify(&p.stored.iqn, Some(p)).await?;
            }
            Ok::<_, RpcError>(())
        }
        .await;
        let saved = self
            .save(state, name, prev.and_then(|p| p.secrets.as_ref()))
            .await;
        let how = match (back, saved) {
            (Ok(()), Ok(())) => "the previous state was restored".to_string(),
            (Err(b), _) => format!("restoring the previous state failed too: {}", b.message),
            (_, Err(s)) => format!("restoring the desired state failed: {}", s.message),
        };
        Err(RpcError::new(e.code, format!("{}; {how}", e.message)))
    }

    /// user → secret of every CHAP account the other targets use.
    async fn other_accounts(&self, state: &IscsiState, name: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (n, s) in &state.targets {
            if n != name {
                m.extend(self.full(n, s).await.accounts());
            }
        }
        m
    }

    async fn create(&self, p: TargetParams, update: bool) -> Result<Value, RpcError> {
        let method = if update {
            m::TARGET_UPDATE
        } else {
            m::TARGET_CREATE
        };
        let spec = p.validate(&self.prefix).map_err(invalid)?;
        if matches!(self.backend, Backend::Lio(_)) && !spec.networks.is_empty() {
            return Err(invalid(lio::LioError::Networks));
        }
        let name = spec.name.to_string();
        let r = self.create_locked(&spec, update).await;
        match &r {
            Ok(v) => info!(method, target = %name, changed = %v["changed"], "audit: ok"),
            Err(e) => info!(method, target = %name, code = %e.code, "audit: refused or failed"),
        }
        r
    }

    async fn create_locked(&self, spec: &TargetSpec, update: bool) -> Result<Value, RpcError> {
        let name = spec.name.as_str();
        // Paths: resolved before anything else (syntax, roots, symlinks, type, size).
        let mut to_create = Vec::new();
        for (i, l) in spec.luns.iter().enumerate() {
            let what = "LUN path";
            let sp = self
                .ctx
                .roots
                .resolve(
                    what,
                    &l.path,
                    PathKind::BackingFile {
                        devices: self.ctx.allow_devices,
                    },
                )
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
        let next = Full::from_spec(spec);
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let prev = match state.targets.get(name) {
            Some(s) => Some(self.full(name, s).await),
            None => None,
        };
        match (&prev, update) {
            (Some(p), _) if *p == next => {
                return to_value(&ApplyResult {
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
        // Clashes with the other targets.
        let others = self.other_accounts(&state, name).await;
        for (n, s) in &state.targets {
            if n == name {
                continue;
            }
            let conflict = |what: String| Err(RpcError::new(ErrorCode::Conflict, what));
            if s.iqn == next.stored.iqn {
                return conflict(format!("target {n:?} already has the IQN {}", s.iqn));
            }
            for l in &next.stored.luns {
                if s.luns.iter().any(|o| o.path == l.path) {
                    return conflict(format!("{} is already a LUN of target {n:?}", l.path));
                }
            }
        }
        // tgt's accounts are shared by all targets; LIO keeps credentials per node ACL.
        let shared = matches!(self.backend, Backend::Tgt(_));
        for (u, sec) in next.accounts() {
            if shared && others.get(&u).is_some_and(|o| *o != sec) {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "CHAP user {u:?} is used by another target with a different secret \
                         (tgt accounts are shared by all targets)"
                    ),
                ));
            }
        }
        // Nothing is created while the backend is down (UNAVAILABLE, retryable).
        self.observe().await?;
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
                return Err(RpcError::new(
                    ErrorCode::BackendError,
                    format!("cannot create backing file {}: {e}", sp.as_str()),
                ));
            }
            created.push(sp.as_path().to_path_buf());
        }
        let r = self
            .transact(name, &state, prev.as_ref(), Some(&next), false)
            .await;
        if let Err(e) = r {
            for c in &created {
                let _ = std::fs::remove_file(c);
            }
            return Err(e);
        }
        to_value(&ApplyResult {
            name: name.into(),
            iqn: spec.iqn.to_string(),
            changed: true,
            created_files: created.iter().map(|c| c.display().to_string()).collect(),
        })
    }

    async fn delete(&self, p: DeleteParams) -> Result<Value, RpcError> {
        let name = m::TargetName::parse(&p.name)
            .map_err(|e| invalid(format!("name: {e}")))?
            .to_string();
        let r = self
            .delete_locked(&name, p.delete_backing_files, p.force)
            .await;
        match &r {
            Ok(v) => {
                info!(method = m::TARGET_DELETE, target = %name, existed = %v["existed"], "audit: ok")
            }
            Err(e) => {
                info!(method = m::TARGET_DELETE, target = %name, code = %e.code, "audit: refused or failed")
            }
        }
        r
    }

    async fn delete_locked(&self, name: &str, files: bool, force: bool) -> Result<Value, RpcError> {
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let Some(stored) = state.targets.get(name) else {
            return to_value(&DeleteResult {
                existed: false,
                deleted_files: vec![],
            });
        };
        let prev = self.full(name, stored).await;
        let (seen, _) = self.observe().await?;
        if let Some(t) = seen.iter().find(|t| t.iqn == prev.stored.iqn.as_str()) {
            if t.sessions > 0 && !force {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "target {name:?} has {} initiator session(s) logged in; pass \
                         \"force\": true to drop them",
                        t.sessions
                    ),
                ));
            }
        }
        self.transact(name, &state, Some(&prev), None, force)
            .await?;
        let mut deleted = Vec::new();
        if files {
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
        to_value(&DeleteResult {
            existed: true,
            deleted_files: deleted,
        })
    }

    async fn list(&self, only: Option<&str>) -> Result<ListResult, RpcError> {
        let state = self.load().await?;
        let (seen, _) = self.observe().await?;
        let secrets = self.secrets.lock().await.clone();
        let mut targets = Vec::new();
        for (name, s) in &state.targets {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let t = seen.iter().find(|t| t.iqn == s.iqn.as_str());
            let mut d = drift(s, t, true);
            if s.chap_username.is_some() && !secrets.contains_key(name) {
                d.push("the CHAP secret is unknown to the agent; send iscsi.target.update".into());
            }
            if let Some(t) = t {
                let f = Full {
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
                    initiators: s.initiators.iter().map(|i| i.to_string()).collect(),
                    networks: s.networks.iter().map(|n| n.to_string()).collect(),
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
        let desired: BTreeSet<&str> = state.targets.values().map(|s| s.iqn.as_str()).collect();
        let mine = format!("{}:", self.prefix);
        let unexpected = seen
            .iter()
            .filter(|t| t.iqn.starts_with(&mine) && !desired.contains(t.iqn.as_str()))
            .map(|t| t.iqn.clone())
            .collect();
        Ok(ListResult {
            targets,
            unexpected,
        })
    }

    async fn reconcile(&self) -> Result<Value, RpcError> {
        let _g = self.lock.lock().await;
        let state = self.load().await?;
        let (mut seen, mut existing) = self.observe().await?;
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        for (name, s) in &state.targets {
            let f = self.full(name, s).await;
            let want = match self.want(&f) {
                Ok(w) => w,
                Err(e) => {
                    failed.push(json!({"target": name, "error": e}));
                    continue;
                }
            };
            let seen_t = seen.iter().find(|t| t.iqn == s.iqn.as_str());
            let action = if seen_t.is_some() {
                "repaired"
            } else {
                "created"
            };
            let r = match &self.backend {
                Backend::Tgt(tgt) => {
                    let tid = seen_t
                        .map(|t| t.tid)
                        .unwrap_or_else(|| tgt::next_tid(&seen));
                    let ops = tgt::plan(
                        seen_t,
                        &want,
                        tid,
                        &Accounts {
                            existing: existing.clone(),
                            reset: BTreeSet::new(),
                            guard_secret: None,
                        },
                    );
                    if ops.is_empty() {
                        continue;
                    }
                    tgt.apply_all(&ops).await.map_err(|(_, e)| tgt_err(e))
                }
                Backend::Lio(lio) => {
                    if seen_t.is_some_and(|t| in_sync(&f, t)) {
                        continue;
                    }
                    match self.lio_replan(lio, name, &want).await {
                        Ok(cmds) => lio.apply_all(&cmds).await.map_err(|(_, e)| lio_err(e)),
                        Err(e) => Err(e),
                    }
                }
            };
            // What the backend has now, for the next target's tid and accounts.
            match self.observe().await {
                Ok((s2, e2)) => {
                    seen = s2;
                    existing = e2;
                }
                Err(e) => return Err(e),
            }
            match r {
                Ok(n) => {
                    info!(target = %name, action, commands = n, "audit: reconcile");
                    changed.push(json!({"target": name, "action": action, "commands": n}));
                }
                Err(e) => {
                    warn!(target = %name, error = %e, "reconcile of a target failed");
                    failed.push(json!({"target": name, "error": e.message}));
                }
            }
        }
        // Targets under the agent's prefix that nobody wants (e.g. a crash in the middle of
        // a delete) go, unless initiators are using them.
        let desired: BTreeSet<&str> = state.targets.values().map(|s| s.iqn.as_str()).collect();
        let mine = format!("{}:", self.prefix);
        for t in seen
            .iter()
            .filter(|t| t.iqn.starts_with(&mine) && !desired.contains(t.iqn.as_str()))
        {
            if t.sessions > 0 {
                failed.push(json!({"target": t.iqn, "error": "not in the desired state but has sessions; left alone"}));
                continue;
            }
            let r = match &self.backend {
                Backend::Tgt(tgt) => tgt
                    .apply(&Op::DeleteTarget {
                        tid: t.tid,
                        force: false,
                    })
                    .await
                    .map_err(tgt_err),
                Backend::Lio(lio) => match lio.read().await.map_err(lio_err) {
                    Ok(cfs) => {
                        let mut cmds = cfs.target(&t.iqn).map(lio::remove_body).unwrap_or_default();
                        cmds.push(lio::Cmd(vec!["saveconfig".into()]));
                        lio.apply_all(&cmds)
                            .await
                            .map(|_| ())
                            .map_err(|(_, e)| lio_err(e))
                    }
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(()) => {
                    info!(iqn = %t.iqn, "audit: reconcile removed an unexpected target");
                    changed.push(json!({"target": t.iqn, "action": "removed"}));
                }
                Err(e) => failed.push(json!({"target": t.iqn, "error": e.message})),
            }
        }
        Ok(json!({"changed": changed, "failed": failed}))
    }

    /// The targetcli batch that replaces LIO's copy of target `name` with `want`.
    async fn lio_replan(
        &self,
        lio: &Lio,
        name: &str,
        want: &WantTarget,
    ) -> Result<Vec<lio::Cmd>, RpcError> {
        let backend = |e: String| RpcError::new(ErrorCode::BackendError, e);
        let tname = m::TargetName::parse(name).map_err(|e| backend(e.to_string()))?;
        let cfs = lio.read().await.map_err(lio_err)?;
        lio::plan(&tname, &cfs, None, Some(want), false).map_err(|e| backend(e.to_string()))
    }
}

/// Whether the backend's copy of a target is exactly the desired one (LIO: nothing to run).
fn in_sync(f: &Full, t: &SeenTarget) -> bool {
    drift(&f.stored, Some(t), false).is_empty() && secret_drift(f, t).is_empty()
}

/// Secrets the backend shows (LIO) that differ from the ones the agent holds. Never names a
/// secret, only its user.
fn secret_drift(f: &Full, t: &SeenTarget) -> Vec<String> {
    if t.secrets.0.is_empty() {
        return Vec::new(); // tgt shows no secrets
    }
    f.accounts()
        .into_iter()
        .filter(|(u, s)| t.secrets.0.get(u).is_some_and(|have| have != s))
        .map(|(u, _)| format!("the CHAP secret of {u} differs from the one the agent holds"))
        .collect()
}

fn actual(t: &SeenTarget) -> TargetActual {
    let mut initiators = Vec::new();
    let mut networks = Vec::new();
    for (raw, r) in t.acl.iter().zip(t.rules()) {
        match r {
            Rule::Name(i) => initiators.push(i.to_string()),
            Rule::Net(_) | Rule::Other(_)
                if raw.contains(':') && !raw.contains('[') && raw.contains('.') =>
            {
                initiators.push(raw.clone())
            }
            _ => networks.push(raw.clone()),
        }
    }
    TargetActual {
        // LIO has no target ids (0 in the read-back).
        tid: (t.tid != 0).then_some(t.tid),
        iqn: t.iqn.clone(),
        luns: t
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
        chap_usernames: t.accounts.clone(),
        chap_mutual_username: t.outgoing.clone(),
        sessions: t.sessions,
    }
}

/// Every difference between the desired target and what the backend has, in words. `sizes` also
/// compares backing file sizes with the requested ones.
fn drift(s: &Stored, t: Option<&SeenTarget>, sizes: bool) -> Vec<String> {
    let Some(t) = t else {
        return vec!["the target is missing on the backend".into()];
    };
    let mut d = Vec::new();
    for l in &s.luns {
        match t.data_luns().find(|x| x.lun == l.lun) {
            None => d.push(format!("LUN {} is missing", l.lun)),
            Some(x) => {
                if x.path.as_deref() != Some(l.path.as_str()) {
                    d.push(format!(
                        "LUN {} is backed by {}, not {}",
                        l.lun,
                        x.path.as_deref().unwrap_or("nothing"),
                        l.path
                    ));
                }
                if x.readonly != l.readonly && !t.readonly_unobservable {
                    d.push(format!(
                        "LUN {} readonly is {}, not {}",
                        l.lun, x.readonly, l.readonly
                    ));
                }
                if let (true, Some(want)) = (sizes, l.size_bytes) {
                    match backing_size(std::path::Path::new(&l.path)) {
                        Some(have) if have != want => d.push(format!(
                            "LUN {} backing file has {have} bytes, not {want}",
                            l.lun
                        )),
                        None => d.push(format!("LUN {} backing file {} is missing", l.lun, l.path)),
                        _ => {}
                    }
                }
            }
        }
    }
    for x in t.data_luns() {
        if !s.luns.iter().any(|l| l.lun == x.lun) {
            d.push(format!("LUN {} is not in the desired state", x.lun));
        }
    }
    let rules = t.rules();
    for i in &s.initiators {
        if !rules.contains(&Rule::Name(i.clone())) {
            d.push(format!("initiator {i} is not allowed"));
        }
    }
    for n in &s.networks {
        if !rules.contains(&Rule::Net(*n)) {
            d.push(format!("network {n} is not allowed"));
        }
    }
    for (raw, r) in t.acl.iter().zip(rules) {
        let wanted = match &r {
            Rule::Name(i) => s.initiators.contains(i),
            Rule::Net(c) => s.networks.contains(c),
            Rule::Other(_) => false,
        };
        if !wanted {
            d.push(format!("access rule {raw} is not in the desired state"));
        }
    }
    let want_in: Vec<String> = s
        .chap_username
        .iter()
        .map(|u| u.as_str().to_string())
        .collect();
    if t.accounts != want_in {
        d.push(format!(
            "CHAP accounts are [{}], not [{}]",
            t.accounts.join(", "),
            want_in.join(", ")
        ));
    }
    let want_out = s
        .chap_mutual_username
        .as_ref()
        .map(|u| u.as_str().to_string());
    if t.outgoing != want_out {
        d.push(format!(
            "mutual CHAP account is {}, not {}",
            t.outgoing.as_deref().unwrap_or("none"),
            want_out.as_deref().unwrap_or("none")
        ));
    }
    d.extend(t.notes.iter().cloned());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::validate::Cidr;

    fn stored() -> Stored {
        Stored {
            iqn: Iqn::parse("i", "iqn.2026-11.com.example.csg:vol1").unwrap(),
            luns: vec![LunSpec {
                lun: 1,
                path: "/srv/csg/vol1.img".into(),
                size_bytes: None,
                readonly: false,
            }],
            initiators: [Iqn::parse("i", "iqn.1994-05.com.redhat:c1").unwrap()].into(),
            networks: [CidrKey(Cidr::parse("10.0.0.0/8").unwrap())].into(),
            chap_username: Some(ChapUser::parse("u", "u1").unwrap()),
            chap_mutual_username: None,
        }
    }

    #[test]
    fn drift_names_every_difference() {
        let s = stored();
        assert_eq!(
            drift(&s, None, false),
            vec!["the target is missing on the backend"]
        );
        let ok = SeenTarget {
            tid: 1,
            iqn: s.iqn.to_string(),
            luns: vec![tgt::SeenLun {
                lun: 1,
                path: Some("/srv/csg/vol1.img".into()),
                readonly: false,
            }],
            accounts: vec!["u1".into()],
            outgoing: None,
            acl: vec!["10.0.0.0/8".into(), "iqn.1994-05.com.redhat:c1".into()],
            sessions: 2,
            ..Default::default()
        };
        assert!(drift(&s, Some(&ok), false).is_empty());
        let mut bad = ok.clone();
        bad.acl.push("ALL".into());
        bad.luns[0].readonly = true;
        bad.accounts.clear();
        bad.luns.push(tgt::SeenLun {
            lun: 2,
            path: Some("/x".into()),
            readonly: false,
        });
        let d = drift(&s, Some(&bad), false);
        assert_eq!(
            d,
            vec![
                "LUN 1 readonly is true, not false",
                "LUN 2 is not in the desired state",
                "access rule ALL is not in the desired state",
                "CHAP accounts are [], not [u1]",
            ]
        );
    }

    #[test]
    fn lio_read_back_notes_unobservable_readonly_and_secrets() {
        let mut s = stored();
        s.networks.clear();
        s.initiators.clear();
        s.luns[0].readonly = true;
        let f = Full {
            stored: s.clone(),
            secrets: Some(Secrets {
                secret: "Secret12chars".into(),
                mutual_secret: None,
            }),
        };
        // No initiator: LIO maps the LUN to nobody, so read-only cannot be seen; not drift.
        let t = SeenTarget {
            iqn: s.iqn.to_string(),
            luns: vec![tgt::SeenLun {
                lun: 1,
                path: Some("/srv/csg/vol1.img".into()),
                readonly: false,
            }],
            accounts: vec!["u1".into()],
            readonly_unobservable: true,
            secrets: tgt::SeenSecrets([("u1".to_string(), "Secret12chars".to_string())].into()),
            ..Default::default()
        };
        assert!(in_sync(&f, &t), "{:?}", drift(&s, Some(&t), false));
        assert_eq!(actual(&t).tid, None);
        let mut bad = t.clone();
        bad.secrets.0.insert("u1".into(), "Other12secret".into());
        bad.notes.push("TPG 1 is disabled".into());
        assert!(!in_sync(&f, &bad));
        assert_eq!(
            secret_drift(&f, &bad),
            vec!["the CHAP secret of u1 differs from the one the agent holds"]
        );
        assert_eq!(drift(&s, Some(&bad), false), vec!["TPG 1 is disabled"]);
        // tgt shows no secrets: nothing to compare.
        let mut tgt_seen = t.clone();
        tgt_seen.secrets = Default::default();
        assert!(secret_drift(&f, &tgt_seen).is_empty());
    }

    #[test]
    fn the_state_holds_no_secret() {
        let spec = serde_json::from_value::<TargetParams>(json!({
            "name": "vol1",
            "chap": {"username": "u1", "secret": "Secret12chars",
                     "mutual_username": "m1", "mutual_secret": "Mutual12chars"}
        }))
        .unwrap()
        .validate("iqn.2026-11.com.example.csg")
        .unwrap();
        let f = Full::from_spec(&spec);
        let text = serde_json::to_string(&IscsiState {
            targets: [("vol1".to_string(), f.stored.clone())].into(),
        })
        .unwrap();
        assert!(
            !text.contains("Secret12") && !text.contains("Mutual12"),
            "{text}"
        );
        assert!(text.contains("\"chap_username\":\"u1\""), "{text}");
        let chap = f.chap().unwrap().unwrap();
        assert_eq!(chap.secret.expose(), "Secret12chars");
        assert_eq!(f.accounts().len(), 2);
        let lost = Full {
            stored: f.stored.clone(),
            secrets: None,
        };
        assert!(lost.chap().unwrap_err().contains("not known"));
    }
}
