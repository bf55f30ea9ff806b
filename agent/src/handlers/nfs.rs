//! `nfs.*` methods. Not built yet in this release: a configured backend is refused at start.

use crate::config::nfs::{NfsBackendKind, NfsSettings};
use crate::storage::{Family, StorageCtx};

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &NfsSettings, _ctx: &StorageCtx) -> Result<Option<Box<dyn Family>>, String> {
    match cfg.backend {
        NfsBackendKind::Disabled => Ok(None),
        other => Err(format!("backend {other:?} is not available in this build")),
    }
}
