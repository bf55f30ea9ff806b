//! NFS exports as the backends take them: the desired set, drift between a spec and what the
//! server reports, the snapshot and plan of one change, and the backend trait that kernel
//! nfsd (`exportfs`), NFS-Ganesha and the in-memory table implement.

use std::collections::BTreeMap;

use csg_protocol::methods::nfs::{ActualExport, ExportSpec};
use csg_protocol::RpcError;
use serde::Serialize;
use serde_json::Value;

use super::{BoxFut, Change};
use crate::exec::ToolError;

/// One desired export as the backends take it. `id` is its Ganesha Export_Id (0 on kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub spec: ExportSpec,
    pub id: u16,
}

/// Every desired export, by name.
pub type DesiredSet = BTreeMap<String, Managed>;

/// A value as it reads on the wire (`rw`, `root`, `1000`), `none` when absent.
fn word<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(Value::Null) | Err(_) => "none".into(),
        Ok(other) => other.to_string(),
    }
}

/// Differences between what was asked for and what the backend has, in words. `ganesha`
/// also compares the pseudo path (the kernel has none) and ignores `sync` (Ganesha has no
/// such option).
pub fn drift(spec: &ExportSpec, actual: Option<&ActualExport>, ganesha: bool) -> Vec<String> {
    let Some(a) = actual else {
        return vec!["missing on the server".into()];
    };
    let mut d = Vec::new();
    if a.path != spec.path() {
        d.push(format!("path is {} (want {})", a.path, spec.path()));
    }
    if let Some(p) = a
        .pseudo
        .as_deref()
        .filter(|p| ganesha && *p != spec.pseudo())
    {
        d.push(format!("pseudo is {p} (want {})", spec.pseudo()));
    }
    for c in spec.clients() {
        let want = c.matches.to_string();
        let Some(h) = a.clients.iter().find(|h| h.matches == want) else {
            d.push(format!("client {want} missing"));
            continue;
        };
        let mut diffs = Vec::new();
        if h.access.is_some_and(|x| x != c.access) || (ganesha && h.access.is_none()) {
            diffs.push(format!(
                "access {} (want {})",
                word(&h.access),
                word(&c.access)
            ));
        }
        if h.squash.is_some_and(|x| x != c.squash) {
            diffs.push(format!(
                "squash {} (want {})",
                word(&h.squash),
                word(&c.squash)
            ));
        }
        if h.anonuid.is_some_and(|x| x != c.anonuid) {
            diffs.push(format!("anonuid {} (want {})", word(&h.anonuid), c.anonuid));
        }
        if h.anongid.is_some_and(|x| x != c.anongid) {
            diffs.push(format!("anongid {} (want {})", word(&h.anongid), c.anongid));
        }
        if !ganesha && h.sync.is_some_and(|x| x != spec.sync()) {
            diffs.push(format!("sync {} (want {})", word(&h.sync), spec.sync()));
        }
        if !diffs.is_empty() {
            d.push(format!("client {want}: {}", diffs.join(", ")));
        }
    }
    for h in &a.clients {
        if !spec
            .clients()
            .iter()
            .any(|c| c.matches.to_string() == h.matches)
        {
            d.push(format!("unexpected client {}", h.matches));
        }
    }
    d
}

/// What the server has of each desired export, by name (`None`: not exported).
pub type Actual = BTreeMap<String, Option<ActualExport>>;

/// Which rules a backend's exports follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// exports(5): no pseudo path, the protocols nfsd runs, `sync` or `async` per export.
    Kernel,
    /// NFS-Ganesha: a pseudo path, protocols and an Export_Id per export; always synchronous.
    Ganesha,
}

/// What a backend holds, before a change, of the part the change rewrites: taken once,
/// under the family's lock, and kept in the plan to restore it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The file the change rewrites as it is now (`None`: there is none).
    pub saved: Option<Vec<u8>>,
}

/// One change, ready to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub change: Change<Managed>,
    /// The whole desired set before and after (a kernel exports file holds every export).
    pub before: DesiredSet,
    pub after: DesiredSet,
    /// What the rewritten file held (from the snapshot) and what it will hold (`None`: removed).
    pub saved: Option<Vec<u8>>,
    pub write: Option<Vec<u8>>,
}

impl Plan {
    /// The export this plan changes.
    pub fn name(&self) -> &str {
        match &self.change {
            Change::Create(m) | Change::Update { to: m, .. } | Change::Delete(m) => {
                m.spec.name().as_str()
            }
        }
    }
}

/// An NFS server the family drives.
pub trait NfsBackend: Send + Sync {
    /// `kernel`, `ganesha` or `memory`.
    fn kind(&self) -> &'static str;
    fn dialect(&self) -> Dialect {
        Dialect::Kernel
    }
    /// Whether the server is running.
    fn up(&self) -> BoxFut<'_, bool>;
    /// The state a change of export `name` would rewrite.
    fn observe<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<Snapshot, ToolError>>;
    /// Every Export_Id the server uses now, the agent's and others' (only Ganesha has any).
    fn live_ids(&self) -> BoxFut<'_, Result<Vec<u16>, ToolError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// What the file the change rewrites will hold (`None`: it is removed).
    fn rewrite(&self, change: &Change<Managed>, after: &DesiredSet) -> Option<Vec<u8>>;
    /// What carrying out `change` takes, from `snap`: pure, nothing runs.
    fn plan(
        &self,
        snap: Snapshot,
        change: Change<Managed>,
        before: DesiredSet,
        after: DesiredSet,
    ) -> Plan {
        let write = self.rewrite(&change, &after);
        Plan {
            change,
            before,
            after,
            saved: snap.saved,
            write,
        }
    }
    /// Carries out the plan and reads it back.
    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>>;
    /// Puts back what the plan's snapshot held, after a failed `apply`.
    fn undo<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>>;
    /// What the server has of each export in `set`.
    fn read<'a>(&'a self, set: &'a DesiredSet) -> BoxFut<'a, Result<Actual, ToolError>>;
    /// Re-applies whatever differs from `desired`; returns what was wrong, in words.
    fn reconcile<'a>(
        &'a self,
        desired: &'a DesiredSet,
    ) -> BoxFut<'a, Result<Vec<String>, RpcError>>;
}
