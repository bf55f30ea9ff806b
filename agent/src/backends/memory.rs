//! An NFS "kernel" kept in memory: the export table a host would have after `exportfs -ra`,
//! without nfsd. For the fleet simulator, whose thousands of agents share one machine that
//! has no nfsd and cannot hold thousands of export tables.
//!
//! It renders and reads back through the kernel backend's own functions (`render`,
//! `actual_exports`), so a simulated agent validates, stores, compares and reports drift exactly
//! as a real kernel-NFS agent does; only the file write and the `exportfs` runs are gone.

use std::sync::Mutex;

use csg_protocol::RpcError;

use crate::backends::exportfs::{actual_exports, render};
use crate::exec::ToolError;
use crate::model::nfs::{Actual, DesiredSet, Managed, NfsBackend, Plan, Snapshot};
use crate::model::{BoxFut, Change};

/// The export table of one simulated host.
#[derive(Default)]
pub struct MemoryExports {
    /// What `exportfs -s` would print (the rendered agent file, as exportfs took it in).
    table: Mutex<String>,
}

/// The table for `set`: empty when there are no exports (the kernel backend then has no file).
fn table_for(set: &DesiredSet) -> String {
    if set.is_empty() {
        String::new()
    } else {
        render(set)
    }
}

impl MemoryExports {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding this lock leaves a whole string behind: still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, content: Option<&[u8]>) {
        *self.table() = String::from_utf8_lossy(content.unwrap_or_default()).into_owned();
    }
}

impl NfsBackend for MemoryExports {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn up(&self) -> BoxFut<'_, bool> {
        Box::pin(async { true })
    }

    fn observe<'a>(&'a self, _name: &'a str) -> BoxFut<'a, Result<Snapshot, ToolError>> {
        let saved = Some(self.table().clone().into_bytes());
        Box::pin(async move { Ok(Snapshot { saved }) })
    }

    fn rewrite(&self, _change: &Change<Managed>, after: &DesiredSet) -> Option<Vec<u8>> {
        Some(table_for(after).into_bytes())
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>> {
        self.set(plan.write.as_deref());
        Box::pin(async { Ok(()) })
    }

    fn undo<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>> {
        self.set(plan.saved.as_deref());
        Box::pin(async { Ok(()) })
    }

    fn read<'a>(&'a self, set: &'a DesiredSet) -> BoxFut<'a, Result<Actual, ToolError>> {
        let actual = actual_exports(&self.table(), set);
        Box::pin(async move { Ok(actual) })
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a DesiredSet,
    ) -> BoxFut<'a, Result<Vec<String>, RpcError>> {
        let want = table_for(desired);
        let mut table = self.table();
        let changes = if *table == want {
            Vec::new()
        } else {
            *table = want;
            vec!["in-memory export table: rewritten".to_string()]
        };
        Box::pin(async move { Ok(changes) })
    }
}
