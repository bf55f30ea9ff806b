//! The storage families (NFS, SMB, iSCSI) and what they share: the export roots, the
//! desired-state store and the command timeout ([`StorageCtx`]), the [`Family`] trait, and
//! [`Storage`], which builds them from the config in one place and routes typed methods.
//!
//! A family turns its methods into changes on the OS through its backend, keeps its part of
//! the desired state, re-applies it on `sys.reconcile` and at start, and reports its daemon's
//! health and its drift for heartbeats.

pub(crate) mod iscsi;
pub(crate) mod nfs;
pub(crate) mod smb;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use csg_protocol::methods::{Changes, FamilyReconcile, Method, MethodResult, ReconcileReport};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::RpcError;
use thiserror::Error;
use tracing::{info, warn};

use crate::config::Config;
use crate::journal::{Journal, JournalError, Record};
use crate::model::nfs::NfsBackend;
use crate::state::{StateError, StateStore};
use crate::storage::paths::Roots;

pub use crate::model::BoxFut;
pub use iscsi::Iscsi;
pub use nfs::Nfs;
pub use smb::Smb;

/// What every family gets.
#[derive(Clone)]
pub struct StorageCtx {
    pub roots: Roots,
    pub state: Arc<StateStore>,
    pub timeout: Duration,
    pub allow_devices: bool,
}

/// What `Storage` asks of every family besides its own typed `call`.
pub trait Family: Send + Sync {
    /// `nfs`, `smb` or `iscsi`: the first level of its method names and its key in the state.
    fn name(&self) -> &'static str;
    /// `kernel`, `ganesha`, `memory`, `samba`, `tgt` or `lio` (reported by `sys.info`).
    fn backend(&self) -> &'static str;
    /// Every method it answers (the protocol's list for the family).
    fn methods(&self) -> &'static [&'static str];
    /// Re-applies the whole desired state; returns what it changed.
    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>>;
    /// The backend and whether its daemon is up.
    fn service(&self) -> BoxFut<'_, ServiceState>;
    /// How many resources it manages and how many have drifted from the desired state.
    fn summary(&self) -> BoxFut<'_, FamilySummary>;
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("[{family}] cannot start its backend: {message}")]
    Backend {
        family: &'static str,
        message: String,
    },
}

/// The storage families in use, shared by handlers and heartbeats. A reload swaps the whole
/// `Storage` under the write lock: every storage call holds the read lock while it runs, so the
/// swap waits for running calls and no call ever sees two backends for one family.
pub type SharedStorage = Arc<tokio::sync::RwLock<Storage>>;

/// The configured families.
pub struct Storage {
    nfs: Option<Nfs>,
    smb: Option<Smb>,
    iscsi: Option<Iscsi>,
    /// Kept so a reload can rebuild the families on the same state store (and its lock);
    /// `None` when a part was handed in rather than built from the config.
    ctx: Option<StorageCtx>,
    /// Replies of executed mutations, kept across restarts (only with a state directory).
    journal: Option<(Arc<Journal>, Vec<Record>)>,
}

/// Builds [`Storage`] from the config: the one place families are made. A caller that runs
/// agents without a host of their own (the fleet simulator) hands in the parts it replaces.
pub struct StorageBuilder<'a> {
    cfg: &'a Config,
    state: Option<Arc<StateStore>>,
    nfs: Option<Box<dyn NfsBackend>>,
}

impl StorageBuilder<'_> {
    /// Keeps the desired state in this store instead of the state directory (no reply
    /// journal then: the agent's id memory is its reply cache alone).
    pub fn state(mut self, state: Arc<StateStore>) -> Self {
        self.state = Some(state);
        self
    }

    /// Serves NFS through this backend, whatever `nfs.backend` says.
    pub fn nfs(mut self, backend: Box<dyn NfsBackend>) -> Self {
        self.nfs = Some(backend);
        self
    }

    pub fn build(self) -> Result<Storage, StorageError> {
        let cfg = self.cfg;
        let handed_in = self.state.is_some() || self.nfs.is_some();
        // An agent without storage backends needs no state directory at all.
        if !Storage::enabled(cfg) && self.nfs.is_none() {
            return Ok(Storage::none());
        }
        let mut journal = None;
        let state = match self.state {
            Some(s) => s,
            None => {
                let dir = &cfg.storage.state_dir;
                let state = Arc::new(StateStore::open(dir)?);
                let ttl_ms = cfg.agent.reply_cache_ttl.as_millis() as u64;
                let (j, live) = Journal::open(dir, ttl_ms, csg_protocol::now_ms())?;
                journal = Some((Arc::new(j), live));
                state
            }
        };
        let mut storage = Storage::families(cfg, state, self.nfs)?;
        storage.journal = journal;
        if handed_in {
            storage.ctx = None;
        }
        Ok(storage)
    }
}

impl Storage {
    /// No families at all (tests of the agent core).
    pub fn none() -> Self {
        Self {
            nfs: None,
            smb: None,
            iscsi: None,
            ctx: None,
            journal: None,
        }
    }

    /// The families the config names, on the state directory it names.
    pub fn new(cfg: &Config) -> Result<Self, StorageError> {
        Self::builder(cfg).build()
    }

    pub fn builder(cfg: &Config) -> StorageBuilder<'_> {
        StorageBuilder {
            cfg,
            state: None,
            nfs: None,
        }
    }

    /// Whether any storage family is enabled in `cfg`.
    pub fn enabled(cfg: &Config) -> bool {
        use crate::config::{iscsi::IscsiBackendKind, nfs::NfsBackendKind, smb::SmbBackendKind};
        cfg.nfs.backend != NfsBackendKind::Disabled
            || cfg.smb.backend != SmbBackendKind::Disabled
            || cfg.iscsi.backend != IscsiBackendKind::Disabled
    }

    /// The families for `cfg` on the state store this one already holds (a reload of backend
    /// settings: the store, its lock and the journal stay). `None` when this one was not
    /// built from the config alone.
    pub fn rebuild(&self, cfg: &Config) -> Option<Result<Self, StorageError>> {
        let state = self.ctx.as_ref()?.state.clone();
        Some(Self::families(cfg, state, None))
    }

    fn families(
        cfg: &Config,
        state: Arc<StateStore>,
        nfs: Option<Box<dyn NfsBackend>>,
    ) -> Result<Self, StorageError> {
        let s = &cfg.storage;
        let ctx = StorageCtx {
            roots: Roots::new(s.roots.clone()),
            state,
            timeout: s.command_timeout,
            allow_devices: s.allow_devices,
        };
        let failed = |family| move |message| StorageError::Backend { family, message };
        let nfs = nfs
            .or_else(|| nfs::backend(&cfg.nfs, &ctx))
            .map(|b| Nfs::new(&cfg.nfs, &ctx, b));
        let smb = smb::build(&cfg.smb, &ctx).map_err(failed("smb"))?;
        let iscsi = iscsi::build(&cfg.iscsi, &ctx).map_err(failed("iscsi"))?;
        Ok(Self {
            nfs,
            smb,
            iscsi,
            ctx: Some(ctx),
            journal: None,
        })
    }

    fn all(&self) -> impl Iterator<Item = &dyn Family> {
        let nfs = self.nfs.as_ref().map(|f| f as &dyn Family);
        let smb = self.smb.as_ref().map(|f| f as &dyn Family);
        let iscsi = self.iscsi.as_ref().map(|f| f as &dyn Family);
        [nfs, smb, iscsi].into_iter().flatten()
    }

    /// Family → backend (`sys.info`'s `storage_backends`).
    pub fn backends(&self) -> BTreeMap<String, String> {
        self.all()
            .map(|f| (f.name().to_string(), f.backend().to_string()))
            .collect()
    }

    /// The reply journal and the records it still held at start (to restore into the cache).
    pub fn take_journal(&mut self) -> Option<(Arc<Journal>, Vec<Record>)> {
        self.journal.take()
    }

    pub fn methods(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.all().flat_map(|f| f.methods().iter().copied())
    }

    /// Runs a storage method; `None` when its family is not configured (or it is a `sys.*`
    /// method, which is not storage's).
    pub async fn call(&self, m: Method) -> Option<Result<MethodResult, RpcError>> {
        Some(match m {
            Method::Nfs(m) => self.nfs.as_ref()?.call(m).await,
            Method::Smb(m) => self.smb.as_ref()?.call(m).await,
            Method::Iscsi(m) => self.iscsi.as_ref()?.call(m).await,
            Method::Sys(_) => return None,
        })
    }

    /// `sys.reconcile` and the start-up pass: every family, each reporting its own changes or
    /// its own error, so one broken backend does not hide what the others did.
    pub async fn reconcile(&self) -> ReconcileReport {
        let mut out = BTreeMap::new();
        for f in self.all() {
            let r = match f.reconcile().await {
                Ok(changes) => {
                    let changes_json = serde_json::to_string(&changes).unwrap_or_default();
                    info!(family = f.name(), changes = %changes_json, "reconciled");
                    FamilyReconcile::done(changes)
                }
                Err(e) => {
                    warn!(family = f.name(), error = %e, "reconcile failed");
                    FamilyReconcile::failed(e)
                }
            };
            out.insert(f.name().to_string(), r);
        }
        ReconcileReport(out)
    }

    pub async fn services(&self) -> BTreeMap<String, ServiceState> {
        let mut m = BTreeMap::new();
        for f in self.all() {
            m.insert(f.name().to_string(), f.service().await);
        }
        m
    }

    pub async fn summaries(&self) -> BTreeMap<String, FamilySummary> {
        let mut m = BTreeMap::new();
        for f in self.all() {
            m.insert(f.name().to_string(), f.summary().await);
        }
        m
    }
}
