//! `iscsi.*` methods. Not built yet in this release: a configured backend is refused at start.

use crate::config::iscsi::{IscsiBackendKind, IscsiSettings};
use crate::storage::{Family, StorageCtx};

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &IscsiSettings, _ctx: &StorageCtx) -> Result<Option<Box<dyn Family>>, String> {
    match cfg.backend {
        IscsiBackendKind::Disabled => Ok(None),
        other => Err(format!("backend {other:?} is not available in this build")),
    }
}
