//! Storage families: validate a request against the roots, turn it into one change, plan it
//! from one snapshot of the backend under the family lock, apply it and keep the desired state.

pub mod iscsi;

use std::sync::Arc;
use std::time::Duration;

use csg_protocol::methods::Changes;
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::RpcError;

use crate::state::StateStore;
use crate::storage::paths::Roots;
use crate::storage::BoxFut;

/// What every family gets.
#[derive(Clone)]
pub struct StorageCtx {
    pub roots: Roots,
    pub state: Arc<StateStore>,
    pub timeout: Duration,
    pub allow_devices: bool,
}

pub trait Family: Send + Sync {
    /// `nfs`, `smb` or `iscsi`: the first level of its method names and its key in the state.
    fn name(&self) -> &'static str;
    /// `kernel`, `ganesha`, `memory`, `samba`, `tgt` or `lio`.
    fn backend(&self) -> &'static str;
    /// Every method it answers, e.g. `nfs.export.create`.
    fn methods(&self) -> &'static [&'static str];
    /// Re-applies the whole desired state; returns what it changed.
    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>>;
    /// The backend and whether its daemon is up.
    fn service(&self) -> BoxFut<'_, ServiceState>;
    /// How many resources it manages and how many have drifted from the desired state.
    fn summary(&self) -> BoxFut<'_, FamilySummary>;
}
