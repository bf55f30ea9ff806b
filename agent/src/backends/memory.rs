//! An NFS "kernel" kept in memory: the export table a host would have after `exportfs -ra`,
//! without nfsd. For the fleet simulator, whose thousands of agents share one machine that
//! has no nfsd and cannot hold thousands of export tables.
//!
//! It renders and reads back through the kernel backend's own functions (`render`,
//! `actual_exports`), so a simulated agent validates, stores, compares and reports drift exactly
//! as a real kernel-NFS agent does; only the file write and the `exportfs` runs are gone.

use std::collections::BTreeMap;
use std::sync::Mutex;

use csg_protocol::methods::nfs::ActualExport;

use crate::backends::exportfs::{actual_exports, render};
use crate::handlers::nfs::{ApplyError, DesiredSet};

/// The export table of one simulated host.
#[derive(Default)]
pub struct MemoryExports {
    /// What `exportfs -s` would print (the rendered agent file, as exportfs took it in).
    table: Mutex<String>,
}

impl MemoryExports {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, String> {
        self.table.lock().expect("export table lock")
    }

    pub fn apply(&self, next: &DesiredSet) -> Result<(), ApplyError> {
        *self.table() = if next.is_empty() {
            String::new()
        } else {
            render(next)
        };
        Ok(())
    }

    pub fn read(
        &self,
        exports: &DesiredSet,
    ) -> Result<BTreeMap<String, Option<ActualExport>>, ApplyError> {
        Ok(actual_exports(&self.table(), exports))
    }

    pub fn reconcile(&self, desired: &DesiredSet) -> Result<Vec<String>, ApplyError> {
        let want = if desired.is_empty() {
            String::new()
        } else {
            render(desired)
        };
        let mut table = self.table();
        if *table == want {
            return Ok(Vec::new());
        }
        *table = want;
        Ok(vec!["in-memory export table: rewritten".to_string()])
    }
}
