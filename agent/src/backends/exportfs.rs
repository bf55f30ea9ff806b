//! Kernel nfsd: the agent owns one exports file (`nfs.exports_file`, in /etc/exports.d),
//! rewritten whole from the desired state, atomically, under a temp name exportfs ignores
//! (it starts with a dot). Then `exportfs -ra` re-reads every exports file and syncs the
//! kernel's table, and `exportfs -s` reads the table back to verify.
//!
//! exportfs applies partially and exits 1 on any error, so every value is validated before
//! it gets here (only validated `ExportSpec`s are rendered), and on failure the previous file is
//! written back and `exportfs -ra` run again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use csg_protocol::methods::nfs::{Access, ActualClient, ActualExport, Squash};
use csg_protocol::RpcError;
use tracing::warn;

use crate::exec::{self, Program, ToolError};
use crate::model::nfs::{drift, Actual, DesiredSet, Managed, NfsBackend, Plan, Snapshot};
use crate::model::{BoxFut, Change};

pub const HEADER: &str = "# Managed by csg-agent: this file is rewritten on every change; \
edits here are lost.\n";

/// The whole file for these exports: one line per export, sorted by name, each client with
/// its full option list (nothing left to exportfs's defaults).
pub fn render(exports: &DesiredSet) -> String {
    let mut s = String::from(HEADER);
    for m in exports.values() {
        let e = &m.spec;
        let _ = writeln!(s, "# export {}", e.name());
        s.push_str(e.path());
        for c in e.clients() {
            let access = match c.access {
                Access::Ro => "ro",
                Access::Rw => "rw",
            };
            let squash = match c.squash {
                Squash::Root => "root_squash",
                Squash::All => "all_squash",
                Squash::None => "no_root_squash",
            };
            let sync = if e.sync() { "sync" } else { "async" };
            // No space between a client and its options: with one, the options would apply
            // to the whole world.
            let _ = write!(
                s,
                " {}({access},{sync},{squash},no_subtree_check,anonuid={},anongid={})",
                c.matches, c.anonuid, c.anongid
            );
        }
        s.push('\n');
    }
    s
}

/// What an export table (`exportfs -s` output) holds of each desired export, by name:
/// `None` where its path is not exported.
pub fn actual_exports(table: &str, exports: &DesiredSet) -> Actual {
    let table = parse_table(table);
    exports
        .iter()
        .map(|(name, m)| {
            let a = table.get(m.spec.path()).map(|clients| ActualExport {
                path: m.spec.path().to_string(),
                pseudo: None,
                export_id: None,
                clients: clients.clone(),
            });
            (name.clone(), a)
        })
        .collect()
}

/// Parses `exportfs -s` (exports(5) syntax, one `path client(options)` per line) into
/// path → clients. Options the agent does not manage are ignored.
pub fn parse_table(out: &str) -> BTreeMap<String, Vec<ActualClient>> {
    let mut m: BTreeMap<String, Vec<ActualClient>> = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((path, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        for item in rest.split_whitespace() {
            let (client, opts) = match item.split_once('(') {
                Some((c, o)) => (c, o.trim_end_matches(')')),
                None => (item, ""),
            };
            let mut a = ActualClient {
                matches: if client == "*" || client.is_empty() {
                    "*".into()
                } else {
                    client.to_string()
                },
                access: Some(Access::Ro),
                squash: Some(Squash::Root),
                anonuid: Some(65534),
                anongid: Some(65534),
                sync: Some(true),
            };
            let mut all = false;
            let mut no_root = false;
            for o in opts.split(',') {
                match o {
                    "rw" => a.access = Some(Access::Rw),
                    "ro" => a.access = Some(Access::Ro),
                    "sync" => a.sync = Some(true),
                    "async" => a.sync = Some(false),
                    "all_squash" => all = true,
                    "no_root_squash" => no_root = true,
                    _ => {
                        if let Some(v) = o.strip_prefix("anonuid=") {
                            a.anonuid = v.parse().ok();
                        } else if let Some(v) = o.strip_prefix("anongid=") {
                            a.anongid = v.parse().ok();
                        }
                    }
                }
            }
            a.squash = Some(if all {
                Squash::All
            } else if no_root {
                Squash::None
            } else {
                Squash::Root
            });
            m.entry(path.to_string()).or_default().push(a);
        }
    }
    m
}

pub struct Exportfs {
    file: PathBuf,
    exportfs: PathBuf,
    timeout: Duration,
}

impl Exportfs {
    pub fn new(file: PathBuf, exportfs: PathBuf, timeout: Duration) -> Self {
        Self {
            file,
            exportfs,
            timeout,
        }
    }

    /// `exportfs -ra`, then `-ra` argv for tests and docs.
    pub fn reexport_argv() -> [&'static str; 1] {
        ["-ra"]
    }

    fn program(&self, args: &[&str]) -> Program {
        Program::new(&self.exportfs, self.timeout).args(args.iter().copied())
    }

    /// `exportfs -ra`: any exit other than 0, or a complaint about the agent's file or one of
    /// its paths, is a failure (exportfs also warns about other files; those are logged).
    async fn reexport(&self, exports: &DesiredSet) -> Result<(), ToolError> {
        let p = self.program(&Self::reexport_argv());
        let o = exec::run(&p, None).await?;
        let file = self.file.display().to_string();
        let ours = o
            .stderr
            .lines()
            .any(|l| l.contains(&file) || exports.values().any(|m| l.contains(m.spec.path())));
        if o.status != 0 || ours {
            return Err(ToolError::Failed {
                program: p.display(),
                status: o.status,
                stderr: o.stderr.trim().to_string(),
            });
        }
        if !o.stderr.trim().is_empty() {
            warn!(stderr = %o.stderr.trim(), "exportfs -ra warned about exports the agent does not own");
        }
        Ok(())
    }

    /// The kernel's export table (`exportfs -s`), keyed by export name.
    async fn table(&self, exports: &DesiredSet) -> Result<Actual, ToolError> {
        let o = exec::run_ok(&self.program(&["-s"]), None).await?;
        Ok(actual_exports(&o.stdout, exports))
    }

    async fn write(&self, content: Option<&[u8]>) -> Result<(), ToolError> {
        let file = self.file.clone();
        let content = content.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || {
            crate::fsutil::write_or_remove(&file, content.as_deref(), 0o644)
        })
        .await
        .map_err(|e| ToolError::Unexpected(e.to_string()))?
        .map_err(ToolError::Unexpected)
    }

    fn current(&self) -> Result<Option<Vec<u8>>, ToolError> {
        match std::fs::read(&self.file) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ToolError::Unexpected(format!(
                "cannot read {}: {e}",
                self.file.display()
            ))),
        }
    }

    /// Writes the file, re-exports and reads the table back.
    async fn put(&self, content: &[u8], set: &DesiredSet) -> Result<(), ToolError> {
        self.write(Some(content)).await?;
        self.reexport(set).await?;
        self.verify(set).await
    }

    async fn verify(&self, next: &DesiredSet) -> Result<(), ToolError> {
        let actual = self.table(next).await?;
        let mut problems = Vec::new();
        for (name, m) in next {
            let d = drift(&m.spec, actual.get(name).and_then(|a| a.as_ref()), false);
            if !d.is_empty() {
                problems.push(format!("{name}: {}", d.join("; ")));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ToolError::Unexpected(format!(
                "exportfs -s does not show what was applied: {}",
                problems.join(" | ")
            )))
        }
    }

    async fn repair(&self, desired: &DesiredSet) -> Result<Vec<String>, RpcError> {
        let mut changes = Vec::new();
        let want = render(desired);
        let have = self.current().map_err(|e| e.to_rpc())?;
        // No exports and no file: nothing to own yet.
        let nothing = desired.is_empty() && have.is_none();
        if !nothing && have.as_deref() != Some(want.as_bytes()) {
            changes.push(format!(
                "{}: {}",
                self.file.display(),
                if have.is_none() {
                    "missing; written"
                } else {
                    "differed from the desired state; rewritten"
                }
            ));
        }
        match self.table(desired).await {
            Ok(actual) => {
                for (name, m) in desired {
                    let d = drift(&m.spec, actual.get(name).and_then(|a| a.as_ref()), false);
                    if !d.is_empty() {
                        changes.push(format!("{name}: {}; re-exported", d.join("; ")));
                    }
                }
            }
            Err(e) => changes.push(format!(
                "could not read the export table ({e}); re-exported"
            )),
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        if let Err(e) = self.put(want.as_bytes(), desired).await {
            // The previous "desired" for a rollback is whatever the file held: restore it as is.
            let restore = async {
                self.write(have.as_deref()).await?;
                exec::run_ok(&self.program(&Self::reexport_argv()), None).await?;
                Ok::<_, ToolError>(())
            };
            let restored = restore.await.map_err(|e| e.to_rpc());
            return Err(exec::rolled_back(e.to_rpc(), restored));
        }
        Ok(changes)
    }
}

impl NfsBackend for Exportfs {
    fn kind(&self) -> &'static str {
        "kernel"
    }

    /// Whether nfsd is running (its export channel exists).
    fn up(&self) -> BoxFut<'_, bool> {
        let up = std::path::Path::new("/proc/fs/nfsd/threads").exists()
            || std::path::Path::new("/proc/net/rpc/nfsd").exists();
        Box::pin(async move { up })
    }

    /// The agent's exports file: one file holds every export, whichever one changes.
    fn observe<'a>(&'a self, _name: &'a str) -> BoxFut<'a, Result<Snapshot, ToolError>> {
        Box::pin(async move {
            Ok(Snapshot {
                saved: self.current()?,
            })
        })
    }

    /// The whole file: it holds every export.
    fn rewrite(&self, _change: &Change<Managed>, after: &DesiredSet) -> Option<Vec<u8>> {
        Some(render(after).into_bytes())
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>> {
        Box::pin(async move {
            let content = plan.write.as_deref().unwrap_or_default();
            self.put(content, &plan.after).await
        })
    }

    /// The previous file back, re-exported.
    fn undo<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<(), ToolError>> {
        Box::pin(async move {
            self.write(plan.saved.as_deref()).await?;
            self.reexport(&plan.before).await
        })
    }

    fn read<'a>(&'a self, set: &'a DesiredSet) -> BoxFut<'a, Result<Actual, ToolError>> {
        Box::pin(self.table(set))
    }

    /// Re-applies when the file or the kernel table differs from `desired`; returns what
    /// was wrong.
    fn reconcile<'a>(
        &'a self,
        desired: &'a DesiredSet,
    ) -> BoxFut<'a, Result<Vec<String>, RpcError>> {
        Box::pin(self.repair(desired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::methods::nfs::ExportParams;
    use serde_json::json;

    fn set(v: Vec<serde_json::Value>) -> DesiredSet {
        v.into_iter()
            .map(|p| {
                let p: ExportParams = serde_json::from_value(p).unwrap();
                let spec = p.validate(true).unwrap();
                (spec.name().to_string(), Managed { spec, id: 0 })
            })
            .collect()
    }

    #[test]
    fn renders_exact_lines() {
        let s = set(vec![
            json!({"name": "vol2", "path": "/srv/csg/vol2", "sync": false,
                   "clients": [{"match": "2001:db8::/32", "access": "rw", "squash": "all",
                                "anonuid": 1000, "anongid": 1001}]}),
            json!({"name": "vol1", "path": "/srv/csg/vol1",
                   "clients": [{"match": "10.0.0.0/8", "access": "rw", "squash": "none"},
                               {"match": "192.0.2.7/32"},
                               {"match": "@admins"},
                               {"match": "*.example.com"}]}),
        ]);
        assert_eq!(
            render(&s),
            format!(
                "{HEADER}\
                 # export vol1\n\
                 /srv/csg/vol1 10.0.0.0/8(rw,sync,no_root_squash,no_subtree_check,anonuid=65534,anongid=65534) \
                 192.0.2.7(ro,sync,root_squash,no_subtree_check,anonuid=65534,anongid=65534) \
                 @admins(ro,sync,root_squash,no_subtree_check,anonuid=65534,anongid=65534) \
                 *.example.com(ro,sync,root_squash,no_subtree_check,anonuid=65534,anongid=65534)\n\
                 # export vol2\n\
                 /srv/csg/vol2 2001:db8::/32(rw,async,all_squash,no_subtree_check,anonuid=1000,anongid=1001)\n"
            )
        );
        assert_eq!(render(&DesiredSet::new()), HEADER);
    }

    #[test]
    fn rendered_lines_have_only_safe_tokens() {
        // §2.2: whitespace, quotes, backslashes and '#' inside a token change the meaning of an
        // exports line. Validated specs cannot carry them; check the whole rendering anyway.
        let s = set(vec![json!({"name": "v", "path": "/srv/a.b_c-d/e",
            "clients": [{"match": "10.1.0.0/16"}]})]);
        for line in render(&s).lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains(['"', '\\', '#', '\t']), "{line}");
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }

    #[test]
    fn parses_the_real_exportfs_s_format() {
        // As nfs-utils 2.6 prints it: defaults spelled out, anonuid only when not 65534.
        let out = "/srv/csg/vol1 10.0.0.0/8(sync,wdelay,hide,no_subtree_check,sec=sys,rw,secure,no_root_squash,no_all_squash)\n\
                   /srv/csg/vol1 192.0.2.7(sync,wdelay,hide,no_subtree_check,sec=sys,ro,secure,root_squash,no_all_squash)\n\
                   /srv/csg/vol2 2001:db8::/32(async,wdelay,hide,no_subtree_check,anonuid=1000,anongid=1001,sec=sys,rw,secure,root_squash,all_squash)\n\
                   /home *(sync,wdelay,hide,no_subtree_check,sec=sys,ro,secure,root_squash,no_all_squash)\n";
        let t = parse_table(out);
        let v1 = &t["/srv/csg/vol1"];
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].matches, "10.0.0.0/8");
        assert_eq!(v1[0].access, Some(Access::Rw));
        assert_eq!(v1[0].squash, Some(Squash::None));
        assert_eq!(v1[1].access, Some(Access::Ro));
        assert_eq!(v1[1].squash, Some(Squash::Root));
        assert_eq!(v1[1].anonuid, Some(65534));
        let v2 = &t["/srv/csg/vol2"][0];
        assert_eq!(v2.matches, "2001:db8::/32");
        assert_eq!(
            (v2.squash, v2.sync, v2.anonuid, v2.anongid),
            (Some(Squash::All), Some(false), Some(1000), Some(1001))
        );
        assert_eq!(t["/home"][0].matches, "*");
    }

    #[test]
    fn what_it_renders_reads_back_without_drift() {
        let s = set(vec![json!({"name": "vol1", "path": "/srv/csg/vol1",
            "clients": [{"match": "10.0.0.0/8", "access": "rw", "squash": "all", "anonuid": 7},
                        {"match": "192.0.2.7"}]})]);
        // Strip the comments as exportfs does; the table has one line per client.
        let mut table = String::new();
        for line in render(&s).lines().filter(|l| !l.starts_with('#')) {
            let mut it = line.split(' ');
            let path = it.next().unwrap();
            for c in it {
                table.push_str(&format!("{path} {c}\n"));
            }
        }
        let t = parse_table(&table);
        let m = &s["vol1"];
        let a = ActualExport {
            path: m.spec.path().into(),
            pseudo: None,
            export_id: None,
            clients: t["/srv/csg/vol1"].clone(),
        };
        assert_eq!(drift(&m.spec, Some(&a), false), Vec::<String>::new());
        let mut changed = a.clone();
        changed.clients[0].access = Some(Access::Ro);
        changed.clients.pop();
        let d = drift(&m.spec, Some(&changed), false);
        assert_eq!(d.len(), 2, "{d:?}");
    }
}
