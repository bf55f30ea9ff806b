//! Storage families (NFS, SMB, iSCSI) behind one small trait, and what they share: the export
//! roots, path resolution, the desired-state store, and the command timeout.
//!
//! A family turns `{family}.*` requests into changes on the OS through its backend, keeps its
//! part of the desired state, re-applies it on `sys.reconcile` and at start, and reports its
//! daemon's health and its drift for heartbeats.

pub mod paths;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::{ErrorCode, RpcError};
use serde_json::{Map, Value};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::Config;
use crate::journal::{Journal, JournalError, Record};
use crate::state::{StateError, StateStore};
use paths::Roots;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::families::StorageCtx;
use crate::families::{iscsi::Iscsi, Family as _};

pub trait Family: Send + Sync {
    /// `nfs`, `smb` or `iscsi`: the first level of its method names and its key in the state.
    fn name(&self) -> &'static str;
    /// Every method it answers, e.g. `nfs.export.create`.
    fn methods(&self) -> &'static [&'static str];
    /// Runs one of its methods (`method` is the full name).
    fn call<'a>(
        &'a self,
        method: &'a str,
        params: Map<String, Value>,
    ) -> BoxFut<'a, Result<Value, RpcError>>;
    /// Re-applies the whole desired state; returns what it changed.
    fn reconcile(&self) -> BoxFut<'_, Result<Value, RpcError>>;
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
    families: Vec<Box<dyn Family>>,
    iscsi: Option<Iscsi>,
    /// Kept so a reload can rebuild the families on the same state store (and its lock).
    ctx: Option<StorageCtx>,
    /// Replies of executed mutations, kept across restarts (only with storage configured).
    journal: Option<(Arc<Journal>, Vec<Record>)>,
    /// Built by `in_memory`: not what the config's backends say.
    simulated: bool,
}

impl Storage {
    /// No families at all (tests of the agent core).
    pub fn none() -> Self {
        Self {
            families: Vec::new(),
            iscsi: None,
            ctx: None,
            journal: None,
            simulated: false,
        }
    }

    pub fn new(cfg: &Config) -> Result<Self, StorageError> {
        // An agent without storage backends needs no state directory at all.
        if !Self::enabled(cfg) {
            return Ok(Self::none());
        }
        let s = &cfg.storage;
        let state = Arc::new(StateStore::open(&s.state_dir)?);
        let mut storage = Self::with_state(cfg, state)?;
        let ttl_ms = cfg.agent.reply_cache_ttl.as_millis() as u64;
        let (journal, live) = Journal::open(&s.state_dir, ttl_ms, csg_protocol::now_ms())?;
        storage.journal = Some((Arc::new(journal), live));
        Ok(storage)
    }

    /// NFS on an in-memory export table and an in-memory desired state, for the fleet
    /// simulator: requests go through the same validation, comparison and read-back as on a
    /// kernel-NFS gateway (paths are still resolved under `storage.roots`, on this disk), but
    /// nothing is written and no program runs. No journal: a simulated agent's id memory is
    /// its reply cache.
    pub fn in_memory(cfg: &Config) -> Self {
        let s = &cfg.storage;
        let ctx = StorageCtx {
            roots: Roots::new(s.roots.clone()),
            state: Arc::new(StateStore::in_memory()),
            timeout: s.command_timeout,
            allow_devices: s.allow_devices,
        };
        Self {
            families: vec![crate::handlers::nfs::build_in_memory(&cfg.nfs, &ctx)],
            iscsi: None,
            ctx: None,
            journal: None,
            simulated: true,
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
    /// settings: the store, its lock and the journal stay). `None` when this one has no store.
    pub fn rebuild(&self, cfg: &Config) -> Option<Result<Self, StorageError>> {
        let state = self.ctx.as_ref()?.state.clone();
        Some(Self::with_state(cfg, state))
    }

    fn with_state(cfg: &Config, state: Arc<StateStore>) -> Result<Self, StorageError> {
        let s = &cfg.storage;
        let ctx = StorageCtx {
            roots: Roots::new(s.roots.clone()),
            state,
            timeout: s.command_timeout,
            allow_devices: s.allow_devices,
        };
        let mut families: Vec<Box<dyn Family>> = Vec::new();
        let built = [
            ("nfs", crate::handlers::nfs::build(&cfg.nfs, &ctx)),
            ("smb", crate::handlers::smb::build(&cfg.smb, &ctx)),
        ];
        for (family, b) in built {
            match b {
                Ok(Some(f)) => families.push(f),
                Ok(None) => {}
                Err(message) => return Err(StorageError::Backend { family, message }),
            }
        }
        let iscsi = crate::families::iscsi::build(&cfg.iscsi, &ctx).map_err(|message| {
            StorageError::Backend {
                family: "iscsi",
                message,
            }
        })?;
        Ok(Self {
            families,
            iscsi,
            ctx: Some(ctx),
            journal: None,
            simulated: false,
        })
    }

    /// Family → backend, when the families are not the configured ones (the simulator's
    /// in-memory storage); `None` means the config says it.
    pub fn backends(&self) -> Option<BTreeMap<String, String>> {
        self.simulated.then(|| {
            self.families
                .iter()
                .map(|f| (f.name().to_string(), "memory".to_string()))
                .collect()
        })
    }

    /// The reply journal and the records it still held at start (to restore into the cache).
    pub fn take_journal(&mut self) -> Option<(Arc<Journal>, Vec<Record>)> {
        self.journal.take()
    }

    pub fn methods(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families
            .iter()
            .flat_map(|f| f.methods().iter().copied())
            .chain(self.iscsi.iter().flat_map(|f| f.methods().iter().copied()))
    }

    /// The iSCSI family, when configured.
    pub fn iscsi(&self) -> Option<&Iscsi> {
        self.iscsi.as_ref()
    }

    fn family_of(&self, method: &str) -> Option<&dyn Family> {
        let first = method.split('.').next()?;
        self.families
            .iter()
            .find(|f| f.name() == first)
            .map(|f| f.as_ref())
    }

    /// Routes a storage method; `None` when no configured family owns it.
    pub async fn call(
        &self,
        method: &str,
        params: Map<String, Value>,
    ) -> Option<Result<Value, RpcError>> {
        let f = self.family_of(method)?;
        if !f.methods().contains(&method) {
            return Some(Err(RpcError::new(
                ErrorCode::UnknownMethod,
                format!(
                    "unknown method {method:?}; sys.info lists the methods this agent supports"
                ),
            )));
        }
        Some(f.call(method, params).await)
    }

    /// `sys.reconcile` and the start-up pass: every family, each reporting its own changes or
    /// its own error, so one broken backend does not hide what the others did.
    pub async fn reconcile(&self) -> Value {
        let mut out = Map::new();
        for f in &self.families {
            let r = match f.reconcile().await {
                Ok(changes) => {
                    info!(family = f.name(), changes = %changes, "reconciled");
                    serde_json::json!({"ok": true, "changes": changes})
                }
                Err(e) => {
                    warn!(family = f.name(), error = %e, "reconcile failed");
                    serde_json::json!({"ok": false, "error": e})
                }
            };
            out.insert(f.name().to_string(), r);
        }
        if let Some(f) = &self.iscsi {
            let r = match f.reconcile().await {
                Ok(changes) => {
                    info!(family = f.name(), changes = ?changes, "reconciled");
                    csg_protocol::methods::FamilyReconcile::done(changes)
                }
                Err(e) => {
                    warn!(family = f.name(), error = %e, "reconcile failed");
                    csg_protocol::methods::FamilyReconcile::failed(e)
                }
            };
            out.insert(
                f.name().to_string(),
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
        }
        Value::Object(out)
    }

    pub async fn services(&self) -> BTreeMap<String, ServiceState> {
        let mut m = BTreeMap::new();
        for f in &self.families {
            m.insert(f.name().to_string(), f.service().await);
        }
        if let Some(f) = &self.iscsi {
            m.insert(f.name().to_string(), f.service().await);
        }
        m
    }

    pub async fn summaries(&self) -> BTreeMap<String, FamilySummary> {
        let mut m = BTreeMap::new();
        for f in &self.families {
            m.insert(f.name().to_string(), f.summary().await);
        }
        if let Some(f) = &self.iscsi {
            m.insert(f.name().to_string(), f.summary().await);
        }
        m
    }
}
