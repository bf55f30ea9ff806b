//! The LIO backend: the kernel iSCSI target, configured with one-shot `targetcli` commands
//! (one argument vector each, never a shell; a command that carries a CHAP secret goes to
//! targetcli on stdin instead, so the secret never shows in /proc) and persisted with
//! `targetcli saveconfig`
//! (`/etc/rtslib-fb-target/saveconfig.json` on Debian, restored at boot by
//! `rtslib-fb-targetctl.service`; `/etc/target/saveconfig.json` and `target.service` on RHEL).
//! What LIO really has
//! is read back from its configfs tree (`<configfs_root>/iscsi/…`, `<configfs_root>/core/…`),
//! never from targetcli's human-readable output.
//!
//! Model, decided here (see docs/methods/iscsi.md, "LIO"):
//! * LIO has no address-based access rules: `networks` is refused ([`NETWORKS_UNSUPPORTED`]).
//! * The access list is the list of initiators, exactly as on tgt: `generate_node_acls=0`
//!   ("demo mode", which lets every initiator in, is never used), one node ACL per initiator,
//!   every LUN mapped explicitly with `write_protect=1` for read-only LUNs. No initiators:
//!   nobody can log in.
//! * CHAP: `authentication=1` on the TPG and the credentials (with the mutual pair) on every
//!   node ACL; also on the TPG itself, so that the target's CHAP user is visible (and kept by
//!   `saveconfig`) even while it has no initiators.
//! * Backstores are named `csg-<target name>-<lun>`; files are `fileio` (the agent creates
//!   them sparse beforehand, so no size is passed), devices are `block`.
//! * A target that differs from what is wanted in any way is deleted and created again in one
//!   batch (sessions are dropped), followed by one `saveconfig`. An identical one is left
//!   alone: no command at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use csg_protocol::methods::iscsi::{Chap, Iqn, TargetName, TargetSpec};
use zeroize::Zeroizing;

use crate::exec::{self, Program, ToolError};
use crate::model::iscsi::lio::{
    Auth, Backstore, Cmd, Configfs, LioAcl, LioLun, LioTarget, MappedLun,
};
use crate::model::iscsi::{
    in_sync, BoxFut, Change, IscsiBackend, LioSeen, Plan, PlanError, Raw, Request, SecretText,
    Seen, SeenLun, SeenSecrets, Shown, Snapshot, WantTarget,
};

/// Why a `networks` list is refused.
pub const NETWORKS_UNSUPPORTED: &str =
    "networks: the lio backend has no address-based access rules; list initiators instead";

/// What targetcli reads on stdin before a command that carries a secret: without it, the end
/// of input (`exit`) would run `saveconfig` in the middle of a batch (targetcli's
/// `auto_save_on_exit`). The preference lands in the agent's own `TARGETCLI_HOME`.
const STDIN_PREAMBLE: &str = "set global auto_save_on_exit=false\n";

/// The backstore of LUN `lun` of target `name`: (`/backstores/<kind>`, object name).
fn backstore(name: &TargetName, lun: u16, device: bool) -> (String, String) {
    let so = format!("csg-{name}-{lun}");
    let kind = if device { "block" } else { "fileio" };
    (format!("/backstores/{kind}"), so)
}

/// Whether `so` is a backstore this agent made for target `name` (`csg-<name>-<digits>`).
fn is_ours_for(name: &TargetName, so: &str) -> bool {
    so.strip_prefix(&format!("csg-{name}-"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn bool_s(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn auth_args(c: &Chap) -> Vec<String> {
    let mut a = vec![
        "set".to_string(),
        "auth".to_string(),
        format!("userid={}", c.username.as_str()),
        format!("password={}", c.secret.expose()),
    ];
    if let Some((u, s)) = &c.mutual {
        a.push(format!("mutual_userid={}", u.as_str()));
        a.push(format!("mutual_password={}", s.expose()));
    }
    a
}

/// The commands that create `t` from nothing (no `saveconfig`). The order keeps a new target
/// closed until it is complete: with `generate_node_acls=0` and no node ACL nobody can log in,
/// and each ACL gets its CHAP credentials before its LUNs are mapped.
pub fn create_body(name: &TargetName, t: &WantTarget) -> Result<Vec<Cmd>, PlanError> {
    if !t.networks.is_empty() {
        return Err(PlanError::Unsupported(NETWORKS_UNSUPPORTED.into()));
    }
    let iqn = t.iqn.as_str();
    let tpg = format!("/iscsi/{iqn}/tpg1");
    let mut v = Vec::new();
    for l in &t.luns {
        let (dir, so) = backstore(name, l.lun, l.path.is_device);
        if l.path.is_device {
            v.push(Cmd::new(&[
                &dir,
                "create",
                &format!("name={so}"),
                &format!("dev={}", l.path.as_str()),
            ]));
        } else {
            v.push(Cmd::new(&[
                &dir,
                "create",
                &format!("name={so}"),
                &format!("file_or_dev={}", l.path.as_str()),
                "write_back=false",
            ]));
        }
    }
    v.push(Cmd::new(&["/iscsi", "create", &format!("wwn={iqn}")]));
    v.push(Cmd::new(&[
        &tpg,
        "set",
        "attribute",
        &format!("authentication={}", bool_s(t.chap.is_some())),
        "generate_node_acls=0",
        "demo_mode_write_protect=1",
    ]));
    if let Some(c) = &t.chap {
        let mut a = vec![tpg.clone()];
        a.extend(auth_args(c));
        v.push(Cmd(a));
    }
    for l in &t.luns {
        let (dir, so) = backstore(name, l.lun, l.path.is_device);
        v.push(Cmd::new(&[
            &format!("{tpg}/luns"),
            "create",
            &format!("storage_object={dir}/{so}"),
            &format!("lun={}", l.lun),
            "add_mapped_luns=false",
        ]));
    }
    for i in &t.initiators {
        let acl = format!("{tpg}/acls/{i}");
        v.push(Cmd::new(&[
            &format!("{tpg}/acls"),
            "create",
            &format!("wwn={i}"),
            "add_mapped_luns=false",
        ]));
        if let Some(c) = &t.chap {
            let mut a = vec![acl.clone()];
            a.extend(auth_args(c));
            v.push(Cmd(a));
        }
        for l in &t.luns {
            v.push(Cmd::new(&[
                &acl,
                "create",
                &format!("mapped_lun={}", l.lun),
                &format!("tpg_lun_or_backstore={}", l.lun),
                &format!("write_protect={}", bool_s(l.readonly)),
            ]));
        }
    }
    Ok(v)
}

/// The commands that remove a target LIO has (the target with its TPG, LUNs and ACLs, then
/// the agent's backstores it used), without `saveconfig`.
pub fn remove_body(t: &LioTarget) -> Vec<Cmd> {
    let mut v = vec![Cmd::new(&["/iscsi", "delete", &format!("wwn={}", t.iqn)])];
    let mut done = BTreeSet::new();
    for l in &t.luns {
        if let Some(b) = &l.backstore {
            if b.ours() && done.insert(b.name.clone()) {
                v.push(delete_backstore(b));
            }
        }
    }
    v
}

/// The commands that turn what LIO has (`cfs`) into what is wanted for target `name`:
/// `prev_iqn` is the IQN it had before (when it changes, the old target goes), `want` the
/// target it must be (None: deleted), and `keep` whether LIO's copy of `want` is already
/// exactly right (the family decides that from its read-back comparison). Ends with
/// `saveconfig` when anything changes; empty when nothing does.
pub fn plan(
    name: &TargetName,
    cfs: &Configfs,
    prev_iqn: Option<&Iqn>,
    want: Option<&WantTarget>,
    keep: bool,
) -> Result<Vec<Cmd>, PlanError> {
    let mut v = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let remove = |iqn: &str, v: &mut Vec<Cmd>, removed: &mut BTreeSet<String>| {
        if let Some(t) = cfs.target(iqn) {
            for c in remove_body(t) {
                if let Some(so) = c.0.iter().find_map(|a| a.strip_prefix("name=")) {
                    removed.insert(so.to_string());
                }
                v.push(c);
            }
        }
    };
    if let Some(p) = prev_iqn {
        if want.map(|w| &w.iqn) != Some(p) {
            remove(p.as_str(), &mut v, &mut removed);
        }
    }
    match want {
        Some(w) if keep && cfs.target(w.iqn.as_str()).is_some() => {}
        Some(w) => {
            remove(w.iqn.as_str(), &mut v, &mut removed);
            // Leftovers with our names (a crash between two commands) would make the
            // backstore creation fail.
            for b in &cfs.backstores {
                if is_ours_for(name, &b.name) && !removed.contains(&b.name) {
                    removed.insert(b.name.clone());
                    v.push(delete_backstore(b));
                }
            }
            v.extend(create_body(name, w)?);
        }
        None => {
            for b in &cfs.backstores {
                if is_ours_for(name, &b.name) && !removed.contains(&b.name) {
                    removed.insert(b.name.clone());
                    v.push(delete_backstore(b));
                }
            }
        }
    }
    if !v.is_empty() {
        v.push(Cmd::new(&["saveconfig"]));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Read-back: the configfs tree

/// The command that deletes a backstore of the agent's.
fn delete_backstore(b: &Backstore) -> Cmd {
    Cmd::new(&[
        &format!("/backstores/{}", b.kind().unwrap_or("fileio")),
        "delete",
        &format!("name={}", b.name),
    ])
}

fn read_value(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read_auth(dir: &Path) -> Auth {
    let secret = |f: &str| {
        let text = Zeroizing::new(std::fs::read_to_string(dir.join(f)).unwrap_or_default());
        SecretText::new(text.trim())
    };
    Auth {
        userid: read_value(&dir.join("userid")),
        password: secret("password"),
        mutual_userid: read_value(&dir.join("userid_mutual")),
        mutual_password: secret("password_mutual"),
    }
}

/// Sorted names of the entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> std::io::Result<Vec<(String, std::fs::FileType)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            v.push((n.to_string(), e.file_type()?));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// The last two components of the link in `dir` (LIO puts one symlink into each LUN
/// directory, under a generated name): `(parent, name)` of what it points at.
fn link_in(dir: &Path) -> std::io::Result<Option<(String, String)>> {
    for (n, ft) in entries(dir)? {
        if !ft.is_symlink() {
            continue;
        }
        let to = std::fs::read_link(dir.join(&n))?;
        let name = to.file_name().and_then(|s| s.to_str()).map(String::from);
        let parent = to
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
            .map(String::from);
        if let (Some(p), Some(n)) = (parent, name) {
            return Ok(Some((p, n)));
        }
    }
    Ok(None)
}

fn lun_index(dir_name: &str) -> Option<u16> {
    dir_name.strip_prefix("lun_")?.parse().ok()
}

/// Reads `<root>/core` and `<root>/iscsi`. Pure file reads: no program runs.
pub fn read_configfs(root: &Path) -> std::io::Result<Configfs> {
    let mut backstores = Vec::new();
    for (hba, ft) in entries(&root.join("core"))? {
        if !ft.is_dir() || hba == "alua" {
            continue;
        }
        for (name, ft) in entries(&root.join("core").join(&hba))? {
            if !ft.is_dir() {
                continue;
            }
            let path = read_value(&root.join("core").join(&hba).join(&name).join("udev_path"));
            backstores.push(Backstore {
                hba: hba.clone(),
                name,
                path: (!path.is_empty()).then_some(path),
            });
        }
    }
    backstores.sort();
    let mut targets = Vec::new();
    for (iqn, ft) in entries(&root.join("iscsi"))? {
        if !ft.is_dir() || Iqn::parse("target", &iqn).is_err() {
            continue; // discovery_auth, lio_version, anything not a target
        }
        let tpg = root.join("iscsi").join(&iqn).join("tpgt_1");
        let mut t = LioTarget {
            iqn: iqn.clone(),
            has_tpg: tpg.is_dir(),
            enabled: read_value(&tpg.join("enable")) == "1",
            attrib: BTreeMap::new(),
            auth: read_auth(&tpg.join("auth")),
            luns: Vec::new(),
            acls: Vec::new(),
        };
        for k in [
            "authentication",
            "generate_node_acls",
            "demo_mode_write_protect",
        ] {
            let v = read_value(&tpg.join("attrib").join(k));
            if !v.is_empty() {
                t.attrib.insert(k.to_string(), v);
            }
        }
        for (d, ft) in entries(&tpg.join("lun"))? {
            let (true, Some(index)) = (ft.is_dir(), lun_index(&d)) else {
                continue;
            };
            let backstore = link_in(&tpg.join("lun").join(&d))?.map(|(hba, name)| {
                backstores
                    .iter()
                    .find(|b| b.hba == hba && b.name == name)
                    .cloned()
                    .unwrap_or(Backstore {
                        hba,
                        name,
                        path: None,
                    })
            });
            t.luns.push(LioLun { index, backstore });
        }
        t.luns.sort_by_key(|l| l.index);
        for (init, ft) in entries(&tpg.join("acls"))? {
            if !ft.is_dir() {
                continue;
            }
            let dir = tpg.join("acls").join(&init);
            let info = read_value(&dir.join("info"));
            let mut acl = LioAcl {
                initiator: init.clone(),
                auth: read_auth(&dir.join("auth")),
                mapped: Vec::new(),
                session: !info.is_empty() && !info.starts_with("No active"),
            };
            for (d, ft) in entries(&dir)? {
                let (true, Some(index)) = (ft.is_dir(), lun_index(&d)) else {
                    continue;
                };
                let tpg_lun = link_in(&dir.join(&d))?.and_then(|(_, n)| lun_index(&n));
                acl.mapped.push(MappedLun {
                    index,
                    tpg_lun,
                    write_protect: read_value(&dir.join(&d).join("write_protect")) == "1",
                });
            }
            acl.mapped.sort_by_key(|m| m.index);
            t.acls.push(acl);
        }
        targets.push(t);
    }
    Ok(Configfs {
        targets,
        backstores,
    })
}

/// The target in the family's backend-neutral form. Initiator names are its access rules (and
/// `ALL` when `generate_node_acls=1` lets any initiator in); everything LIO-specific that
/// differs from the agent's model is named in `notes`.
pub fn to_seen(t: &LioTarget) -> LioSeen {
    let attr = |k: &str| t.attrib.get(k).map(String::as_str) == Some("1");
    let auth_on = attr("authentication");
    let mut notes = Vec::new();
    if !t.has_tpg {
        notes.push("the target has no TPG 1".to_string());
    } else if !t.enabled {
        notes.push("TPG 1 is disabled".to_string());
    }
    let indexes: BTreeSet<u16> = t.luns.iter().map(|l| l.index).collect();
    let mut luns = Vec::new();
    for l in &t.luns {
        let wps: Vec<bool> = t
            .acls
            .iter()
            .flat_map(|a| a.mapped.iter())
            .filter(|m| m.tpg_lun == Some(l.index))
            .map(|m| m.write_protect)
            .collect();
        if wps.iter().any(|w| *w) && wps.iter().any(|w| !*w) {
            notes.push(format!(
                "LUN {} is read-only for some initiators and writable for others",
                l.index
            ));
        }
        luns.push(SeenLun {
            lun: l.index,
            path: l.backstore.as_ref().and_then(|b| b.path.clone()),
            readonly: !wps.is_empty() && wps.iter().all(|w| *w),
        });
    }
    let mut acl: Vec<String> = Vec::new();
    let mut users = BTreeSet::new();
    let mut mutual = BTreeSet::new();
    let mut secrets: BTreeMap<String, SecretText> = BTreeMap::new();
    let mut note_secret = |u: &str, s: &SecretText| {
        if u.is_empty() {
            return;
        }
        let e = secrets.entry(u.to_string()).or_insert_with(|| s.clone());
        if e != s {
            *e = SecretText::default(); // two different secrets for one user: matches nothing
        }
    };
    for a in [&t.auth].into_iter().chain(t.acls.iter().map(|a| &a.auth)) {
        note_secret(&a.userid, &a.password);
        note_secret(&a.mutual_userid, &a.mutual_password);
        if auth_on && !a.userid.is_empty() {
            users.insert(a.userid.clone());
        }
        if auth_on && !a.mutual_userid.is_empty() {
            mutual.insert(a.mutual_userid.clone());
        }
    }
    for a in &t.acls {
        acl.push(a.initiator.clone());
        for i in &indexes {
            if !a.mapped.iter().any(|m| m.tpg_lun == Some(*i)) {
                notes.push(format!(
                    "initiator {} has no mapping for LUN {i}",
                    a.initiator
                ));
            }
        }
        for m in &a.mapped {
            match m.tpg_lun {
                Some(l) if indexes.contains(&l) && l == m.index => {}
                Some(l) if indexes.contains(&l) => notes.push(format!(
                    "initiator {} sees LUN {l} as LUN {}",
                    a.initiator, m.index
                )),
                _ => notes.push(format!(
                    "initiator {} has a mapped LUN {} that leads to no LUN of the target",
                    a.initiator, m.index
                )),
            }
        }
        if auth_on && a.auth.userid.is_empty() {
            notes.push(format!("initiator {} has no CHAP credentials", a.initiator));
        }
    }
    if attr("generate_node_acls") {
        acl.push("ALL".into());
    }
    if auth_on && users.is_empty() {
        notes.push("authentication is required but no CHAP credentials are set".into());
    }
    if mutual.len() > 1 {
        notes.push(format!(
            "mutual CHAP users differ between initiators: {}",
            mutual.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    LioSeen {
        shown: Shown {
            iqn: t.iqn.clone(),
            luns,
            accounts: users.into_iter().collect(),
            outgoing: mutual.into_iter().next(),
            acl,
            sessions: t.acls.iter().filter(|a| a.session).count() as u32,
        },
        readonly_unobservable: t.acls.is_empty(),
        notes,
        secrets: SeenSecrets(secrets),
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// targetcli's own directory (preferences, command history, its log) under the agent's state
/// directory. (Backups of saveconfig.json go beside that file, in `backup/`.)
pub const TARGETCLI_HOME_DIR: &str = "targetcli";

/// targetcli and the configfs tree of one host.
#[derive(Debug, Clone)]
pub struct Lio {
    pub targetcli: PathBuf,
    /// `/sys/kernel/config/target` on a real host.
    pub root: PathBuf,
    /// `TARGETCLI_HOME` for every run. targetcli writes its preferences and history to
    /// `~/.targetcli` by default, and the agent's unit makes /root unreachable
    /// (`ProtectHome=yes`): without this, every targetcli command fails.
    pub home: PathBuf,
    pub timeout: Duration,
}

impl Lio {
    /// Up: the configfs target tree exists and targetcli is an executable file.
    pub fn available(&self) -> Result<(), ToolError> {
        use std::os::unix::fs::PermissionsExt;
        if !self.root.is_dir() {
            return Err(ToolError::Unavailable {
                program: "LIO".into(),
                detail: format!(
                    "{} does not exist (configfs not mounted, or the target_core_mod module not loaded)",
                    self.root.display()
                ),
            });
        }
        match std::fs::metadata(&self.targetcli) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            _ => Err(ToolError::Unavailable {
                program: "LIO".into(),
                detail: format!(
                    "{} is not an executable program (install targetcli / targetcli-fb)",
                    self.targetcli.display()
                ),
            }),
        }
    }

    /// What LIO has now. Unavailable also when targetcli is missing: nothing could be changed,
    /// so nothing is started (the family checks this before any change).
    pub async fn read(&self) -> Result<Configfs, ToolError> {
        self.available()?;
        let root = self.root.clone();
        let failed = |detail: String| ToolError::Spawn {
            program: "LIO".into(),
            detail: format!("cannot read the configfs tree: {detail}"),
        };
        tokio::task::spawn_blocking(move || read_configfs(&root))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))
    }

    /// Runs one command. One that carries a secret goes to targetcli on stdin (targetcli reads
    /// commands from stdin when it is started without one), so the secret never shows in
    /// /proc; the rest go in argv, where a failure shows in the exit status.
    pub async fn run(&self, c: &Cmd) -> Result<(), ToolError> {
        self.available()?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.home)
                .map_err(|e| ToolError::Spawn {
                    program: c.redacted(),
                    detail: format!("cannot create {}: {e}", self.home.display()),
                })?;
        }
        let p = Program::new(&self.targetcli, self.timeout).env("TARGETCLI_HOME", &self.home);
        let secrets = c.secrets();
        if secrets.is_empty() {
            return exec::run_ok(&p.args(c.0.iter()), None).await.map(|_| ());
        }
        let mut script = Zeroizing::new(String::from(STDIN_PREAMBLE));
        for (i, word) in c.0.iter().enumerate() {
            if i > 0 {
                script.push(' ');
            }
            script.push_str(word);
        }
        script.push_str("\nexit\n");
        let out = exec::run(&p, Some(script.as_bytes()))
            .await
            .map_err(|e| ToolError::from(e).redacted(&secrets))?;
        // Reading stdin, targetcli reports a failed command on stderr, goes on with the next
        // line and exits 0: any error text is a failure.
        if out.status == 0 && out.stderr.trim().is_empty() {
            return Ok(());
        }
        Err(ToolError::Failed {
            program: c.redacted(),
            status: out.status,
            stderr: out.said().to_string(),
        }
        .redacted(&secrets))
    }

    /// Runs `cmds` in order, stopping at the first failure; returns how many ran.
    pub async fn run_all(&self, cmds: &[Cmd]) -> Result<usize, ToolError> {
        for c in cmds {
            tracing::debug!(command = %c.redacted(), "targetcli");
            self.run(c).await?;
        }
        Ok(cmds.len())
    }
}

impl IscsiBackend for Lio {
    fn kind(&self) -> &'static str {
        "lio"
    }

    fn daemon(&self) -> &'static str {
        "LIO (configfs)"
    }

    // LIO keeps credentials per node ACL.
    fn shared_accounts(&self) -> bool {
        false
    }

    // LIO keeps its targets in the kernel, and rtslib-fb-targetctl.service (Debian) or
    // target.service (RHEL) restores saveconfig.json at boot before the agent starts (the
    // unit is ordered after both).
    fn forgets_targets(&self) -> bool {
        false
    }

    fn check(&self, spec: &TargetSpec) -> Result<(), String> {
        if spec.networks.is_empty() {
            Ok(())
        } else {
            Err(NETWORKS_UNSUPPORTED.into())
        }
    }

    fn observe(&self) -> BoxFut<'_, Result<Snapshot, ToolError>> {
        Box::pin(async move {
            let cfs = self.read().await?;
            Ok(Snapshot {
                targets: cfs.targets.iter().map(|t| Seen::Lio(to_seen(t))).collect(),
                raw: Raw::Lio(cfs),
            })
        })
    }

    fn targets(&self) -> BoxFut<'_, Result<Vec<Seen>, ToolError>> {
        Box::pin(async move {
            let cfs = self.read().await?;
            Ok(cfs.targets.iter().map(|t| Seen::Lio(to_seen(t))).collect())
        })
    }

    fn plan(&self, snap: &Snapshot, req: &Request) -> Result<Plan, PlanError> {
        plan_request(snap, req).map(Plan::Lio)
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<usize, ToolError>> {
        Box::pin(async move {
            match plan {
                Plan::Lio(cmds) => self.run_all(cmds).await,
                Plan::Tgt(_) => Err(ToolError::Spawn {
                    program: "targetcli".into(),
                    detail: "internal error: a tgtadm plan was given to LIO".into(),
                }),
            }
        })
    }

    fn up(&self) -> BoxFut<'_, bool> {
        Box::pin(async move { self.available().is_ok() })
    }
}

/// The targetcli batch of one change, from the snapshot: a target that differs from what is
/// wanted is replaced, one that is exactly right is left alone.
pub fn plan_request(snap: &Snapshot, req: &Request) -> Result<Vec<Cmd>, PlanError> {
    let Raw::Lio(cfs) = &snap.raw else {
        return Err(PlanError::Internal(
            "internal error: LIO was given another backend's snapshot".into(),
        ));
    };
    if let Change::Stray(iqn) = &req.change {
        let mut cmds = cfs.target(iqn).map(remove_body).unwrap_or_default();
        if !cmds.is_empty() {
            cmds.push(Cmd::new(&["saveconfig"]));
        }
        return Ok(cmds);
    }
    let next = req.change.to();
    let keep = next.is_some_and(|n| {
        snap.find(n.want.iqn.as_str())
            .is_some_and(|s| in_sync(&n.desired, s))
    });
    // A re-apply replaces LIO's copy as it is (what was desired before is the same target).
    let prev_iqn = match &req.change {
        Change::Reapply(_) => None,
        c => c.from().map(super::super::model::iscsi::Desired::iqn),
    };
    let Some(name) = &req.name else {
        return Err(PlanError::Internal(
            "internal error: a LIO change without a target name".into(),
        ));
    };
    plan(name, cfs, prev_iqn, next.map(|n| &n.want), keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::iscsi::WantLun;
    use crate::storage::paths::{PathKind, Roots};
    use csg_protocol::methods::iscsi::{ChapSecret, ChapUser, CidrKey};

    fn fixture() -> (tempfile::TempDir, String, WantTarget) {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for f in ["a.img", "b.img"] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        let roots = Roots::new(vec![root.clone()]);
        let p = |f: &str| {
            roots
                .resolve(
                    "p",
                    root.join(f).to_str().unwrap(),
                    PathKind::BackingFile { devices: false },
                )
                .unwrap()
        };
        let t = WantTarget {
            iqn: Iqn::parse("i", "iqn.2026-11.com.example.csg:vol1").unwrap(),
            luns: vec![
                WantLun {
                    lun: 1,
                    path: p("a.img"),
                    readonly: false,
                },
                WantLun {
                    lun: 2,
                    path: p("b.img"),
                    readonly: true,
                },
            ],
            initiators: [Iqn::parse("i", "iqn.1994-05.com.redhat:c1").unwrap()].into(),
            networks: BTreeSet::new(),
            chap: Some(Chap {
                username: ChapUser::parse("u", "alice").unwrap(),
                secret: ChapSecret::parse("s", "Secret12chars").unwrap(),
                mutual: Some((
                    ChapUser::parse("u", "gw").unwrap(),
                    ChapSecret::parse("s", "Mutual12chars").unwrap(),
                )),
            }),
        };
        (d, root.display().to_string(), t)
    }

    fn lines(v: &[Cmd]) -> Vec<String> {
        v.iter().map(|c| c.0.join(" ")).collect()
    }

    fn name() -> TargetName {
        TargetName::parse("vol1").unwrap()
    }

    const TPG: &str = "/iscsi/iqn.2026-11.com.example.csg:vol1/tpg1";

    /// A configfs tree as LIO builds it for `fixture()` (what `create` makes), in `dir`.
    fn fake_tree(dir: &Path, r: &str) -> PathBuf {
        let root = dir.join("target");
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        };
        let ln = |to: &str, at: &str| {
            let at = root.join(at);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(root.join(to), at).unwrap();
        };
        w("core/fileio_0/csg-vol1-1/udev_path", &format!("{r}/a.img"));
        w("core/fileio_1/csg-vol1-2/udev_path", &format!("{r}/b.img"));
        w("core/fileio_2/csg-old-1/udev_path", &format!("{r}/old.img"));
        w("iscsi/lio_version", "Datera Inc. iSCSI Target v4.1.0");
        w("iscsi/discovery_auth/enforce_discovery_auth", "0");
        let t = "iscsi/iqn.2026-11.com.example.csg:vol1/tpgt_1";
        w(&format!("{t}/enable"), "1");
        w(&format!("{t}/attrib/authentication"), "1");
        w(&format!("{t}/attrib/generate_node_acls"), "0");
        w(&format!("{t}/attrib/demo_mode_write_protect"), "1");
        for (k, v) in [
            ("userid", "alice"),
            ("password", "Secret12chars"),
            ("userid_mutual", "gw"),
            ("password_mutual", "Mutual12chars"),
        ] {
            w(&format!("{t}/auth/{k}"), v);
            w(&format!("{t}/acls/iqn.1994-05.com.redhat:c1/auth/{k}"), v);
        }
        w(&format!("{t}/np/0.0.0.0:3260/iser"), "0");
        ln(
            "core/fileio_0/csg-vol1-1",
            &format!("{t}/lun/lun_1/7f3a9c01e2"),
        );
        ln(
            "core/fileio_1/csg-vol1-2",
            &format!("{t}/lun/lun_2/0b44de9a1c"),
        );
        let acl = format!("{t}/acls/iqn.1994-05.com.redhat:c1");
        w(
            &format!("{acl}/info"),
            "No active iSCSI Session for Initiator Endpoint: iqn.1994-05.com.redhat:c1",
        );
        for (m, wp) in [(1, "0"), (2, "1")] {
            w(&format!("{acl}/lun_{m}/write_protect"), wp);
            ln(
                &format!("{t}/lun/lun_{m}"),
                &format!("{acl}/lun_{m}/5e1c7d0a{m}"),
            );
        }
        root
    }

    #[test]
    fn create_with_luns_initiators_and_mutual_chap() {
        let (_d, r, t) = fixture();
        let got = plan(&name(), &Configfs::default(), None, Some(&t), false).unwrap();
        let acl = format!("{TPG}/acls/iqn.1994-05.com.redhat:c1");
        assert_eq!(
            lines(&got),
            vec![
                format!("/backstores/fileio create name=csg-vol1-1 file_or_dev={r}/a.img write_back=false"),
                format!("/backstores/fileio create name=csg-vol1-2 file_or_dev={r}/b.img write_back=false"),
                "/iscsi create wwn=iqn.2026-11.com.example.csg:vol1".to_string(),
                format!("{TPG} set attribute authentication=1 generate_node_acls=0 demo_mode_write_protect=1"),
                format!("{TPG} set auth userid=alice password=Secret12chars mutual_userid=gw mutual_password=Mutual12chars"),
                format!("{TPG}/luns create storage_object=/backstores/fileio/csg-vol1-1 lun=1 add_mapped_luns=false"),
                format!("{TPG}/luns create storage_object=/backstores/fileio/csg-vol1-2 lun=2 add_mapped_luns=false"),
                format!("{TPG}/acls create wwn=iqn.1994-05.com.redhat:c1 add_mapped_luns=false"),
                format!("{acl} set auth userid=alice password=Secret12chars mutual_userid=gw mutual_password=Mutual12chars"),
                format!("{acl} create mapped_lun=1 tpg_lun_or_backstore=1 write_protect=0"),
                format!("{acl} create mapped_lun=2 tpg_lun_or_backstore=2 write_protect=1"),
                "saveconfig".to_string(),
            ]
        );
        let shown = format!("{got:?}");
        assert!(
            !shown.contains("Secret12") && !shown.contains("Mutual12"),
            "{shown}"
        );
        assert!(shown.contains("password=<hidden> mutual_userid=gw mutual_password=<hidden>"));
        assert_eq!(got[4].secrets(), vec!["Secret12chars", "Mutual12chars"]);
        // No CHAP, no initiators: closed (no ACL, no demo mode), nothing about auth.
        let mut closed = t.clone();
        closed.chap = None;
        closed.initiators.clear();
        let c = lines(&plan(&name(), &Configfs::default(), None, Some(&closed), false).unwrap());
        assert!(c.contains(&format!(
            "{TPG} set attribute authentication=0 generate_node_acls=0 demo_mode_write_protect=1"
        )));
        assert!(!c.iter().any(|l| l.contains("/acls") || l.contains("auth ")));
        // Address rules cannot be expressed.
        let mut n = t.clone();
        n.networks.insert(CidrKey(
            csg_protocol::validate::Cidr::parse("10.0.0.0/8").unwrap(),
        ));
        assert_eq!(
            plan(&name(), &Configfs::default(), None, Some(&n), false),
            Err(PlanError::Unsupported(NETWORKS_UNSUPPORTED.into()))
        );
    }

    #[test]
    fn the_configfs_tree_is_read_back() {
        let (d, r, t) = fixture();
        let root = fake_tree(d.path(), &r);
        let cfs = read_configfs(&root).unwrap();
        assert_eq!(cfs.targets.len(), 1, "{cfs:?}");
        assert_eq!(
            cfs.backstores
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            vec!["csg-vol1-1", "csg-vol1-2", "csg-old-1"]
        );
        let lt = &cfs.targets[0];
        assert!(lt.has_tpg && lt.enabled);
        assert_eq!(
            lt.luns[1].backstore.as_ref().unwrap().path,
            Some(format!("{r}/b.img"))
        );
        assert_eq!(
            lt.acls[0].mapped[1],
            MappedLun {
                index: 2,
                tpg_lun: Some(2),
                write_protect: true
            }
        );
        assert!(!format!("{cfs:?}").contains("Secret12"));
        let seen = to_seen(lt);
        let s = &seen.shown;
        assert_eq!(s.iqn, t.iqn.as_str());
        assert_eq!(
            s.luns,
            vec![
                SeenLun {
                    lun: 1,
                    path: Some(format!("{r}/a.img")),
                    readonly: false
                },
                SeenLun {
                    lun: 2,
                    path: Some(format!("{r}/b.img")),
                    readonly: true
                },
            ]
        );
        assert_eq!(s.acl, vec!["iqn.1994-05.com.redhat:c1"]);
        assert_eq!(s.accounts, vec!["alice"]);
        assert_eq!(s.outgoing.as_deref(), Some("gw"));
        assert_eq!(s.sessions, 0);
        assert!(seen.notes.is_empty(), "{:?}", seen.notes);
        assert!(!seen.readonly_unobservable);
        assert_eq!(
            seen.secrets.0.get("alice").map(SecretText::expose),
            Some("Secret12chars")
        );

        // Edited behind the agent's back: every LIO-specific difference is named.
        let t1 = root.join("iscsi/iqn.2026-11.com.example.csg:vol1/tpgt_1");
        std::fs::write(t1.join("attrib/generate_node_acls"), "1\n").unwrap();
        std::fs::write(
            t1.join("acls/iqn.1994-05.com.redhat:c1/lun_1/write_protect"),
            "1\n",
        )
        .unwrap();
        std::fs::remove_dir_all(t1.join("acls/iqn.1994-05.com.redhat:c1/lun_2")).unwrap();
        std::fs::write(
            t1.join("acls/iqn.1994-05.com.redhat:c1/auth/password"),
            "Changed12char\n",
        )
        .unwrap();
        std::fs::write(
            t1.join("acls/iqn.1994-05.com.redhat:c1/info"),
            "InitiatorName: iqn.1994-05.com.redhat:c1\n",
        )
        .unwrap();
        let seen = to_seen(&read_configfs(&root).unwrap().targets[0]);
        let s = &seen.shown;
        assert_eq!(s.acl, vec!["iqn.1994-05.com.redhat:c1", "ALL"]);
        assert_eq!(
            seen.notes,
            vec!["initiator iqn.1994-05.com.redhat:c1 has no mapping for LUN 2"]
        );
        assert!(s.luns[0].readonly && !s.luns[1].readonly);
        assert_eq!(
            seen.secrets.0.get("alice").map(SecretText::expose),
            Some("")
        );
        assert_eq!(s.sessions, 1);
        // No tree at all: nothing, not an error (the family checks that the root exists).
        assert_eq!(
            read_configfs(&d.path().join("none")).unwrap(),
            Configfs::default()
        );
    }

    #[test]
    fn update_delete_and_rollback_plans() {
        let (d, r, t) = fixture();
        let cfs = read_configfs(&fake_tree(d.path(), &r)).unwrap();
        // In sync: nothing at all, not even saveconfig.
        assert_eq!(
            plan(&name(), &cfs, Some(&t.iqn), Some(&t), true).unwrap(),
            vec![]
        );
        // update: the target and its backstores go, the new one is created, one saveconfig.
        let mut next = t.clone();
        next.luns.truncate(1);
        next.chap = None;
        let u = lines(&plan(&name(), &cfs, Some(&t.iqn), Some(&next), false).unwrap());
        assert_eq!(
            u,
            vec![
                "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1".to_string(),
                "/backstores/fileio delete name=csg-vol1-1".into(),
                "/backstores/fileio delete name=csg-vol1-2".into(),
                format!("/backstores/fileio create name=csg-vol1-1 file_or_dev={r}/a.img write_back=false"),
                "/iscsi create wwn=iqn.2026-11.com.example.csg:vol1".into(),
                format!("{TPG} set attribute authentication=0 generate_node_acls=0 demo_mode_write_protect=1"),
                format!("{TPG}/luns create storage_object=/backstores/fileio/csg-vol1-1 lun=1 add_mapped_luns=false"),
                format!("{TPG}/acls create wwn=iqn.1994-05.com.redhat:c1 add_mapped_luns=false"),
                format!("{TPG}/acls/iqn.1994-05.com.redhat:c1 create mapped_lun=1 tpg_lun_or_backstore=1 write_protect=0"),
                "saveconfig".into(),
            ]
        );
        // delete: the target, then its backstores; a foreign backstore (csg-old-1) stays.
        assert_eq!(
            lines(&plan(&name(), &cfs, Some(&t.iqn), None, false).unwrap()),
            vec![
                "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1",
                "/backstores/fileio delete name=csg-vol1-1",
                "/backstores/fileio delete name=csg-vol1-2",
                "saveconfig",
            ]
        );
        // Rollback of a create that failed half-way: only backstores exist; they go.
        let mut half = cfs.clone();
        half.targets.clear();
        assert_eq!(
            lines(&plan(&name(), &half, Some(&t.iqn), None, false).unwrap()),
            vec![
                "/backstores/fileio delete name=csg-vol1-1",
                "/backstores/fileio delete name=csg-vol1-2",
                "saveconfig",
            ]
        );
        // Rollback of an update that failed half-way (the new target, without its LUN 2 and
        // ACLs, is there): it goes and the previous one is created again.
        let mut partial = cfs.clone();
        partial.targets[0].acls.clear();
        partial.targets[0].luns.truncate(1);
        let back = lines(&plan(&name(), &partial, Some(&next.iqn), Some(&t), false).unwrap());
        assert_eq!(
            back[..3],
            [
                "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1".to_string(),
                "/backstores/fileio delete name=csg-vol1-1".into(),
                // the leftover of LUN 2, not linked any more, still has our name
                "/backstores/fileio delete name=csg-vol1-2".into(),
            ]
        );
        assert_eq!(
            back[3..].to_vec(),
            lines(&create_body(&name(), &t).unwrap())
                .into_iter()
                .chain(["saveconfig".to_string()])
                .collect::<Vec<_>>()
        );
        // A new IQN: the old target goes first.
        let mut renamed = t.clone();
        renamed.iqn = Iqn::parse("i", "iqn.2026-11.com.example.csg:other").unwrap();
        let rn = lines(&plan(&name(), &cfs, Some(&t.iqn), Some(&renamed), false).unwrap());
        assert_eq!(rn[0], "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1");
        assert!(rn.contains(&"/iscsi create wwn=iqn.2026-11.com.example.csg:other".to_string()));
        assert_eq!(rn.iter().filter(|l| *l == "saveconfig").count(), 1);
        // Names: only csg-<name>-<digits> belongs to target <name>.
        assert!(is_ours_for(&name(), "csg-vol1-12"));
        assert!(!is_ours_for(&name(), "csg-vol1-1-2") && !is_ours_for(&name(), "csg-vol1-"));
    }

    /// The unit's ProtectHome=yes hides /root, where targetcli keeps its files by default:
    /// every run must point it at the agent's own directory, made private on first use.
    #[tokio::test]
    async fn targetcli_runs_with_its_home_in_the_state_directory() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("targetcli");
        let seen = d.path().join("seen");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\nprintf '%s' \"$TARGETCLI_HOME\" > {}\n",
                seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = d.path().join("state").join(TARGETCLI_HOME_DIR);
        let lio = Lio {
            targetcli: prog,
            root: d.path().to_path_buf(),
            home: home.clone(),
            timeout: Duration::from_secs(5),
        };
        lio.run(&Cmd::new(&["saveconfig"])).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            home.to_str().unwrap()
        );
        let mode = std::fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn secrets_go_on_stdin_and_errors_never_carry_them() {
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("targetcli");
        let argv = d.path().join("argv");
        let stdin = d.path().join("stdin");
        // Like targetcli reading stdin: the failure is printed, the exit status stays 0.
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\ntee {} | sed 's/^/bad value: /' >&2\n",
                argv.display(),
                stdin.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lio = Lio {
            targetcli: prog,
            root: d.path().to_path_buf(),
            home: d.path().join("home"),
            timeout: Duration::from_secs(5),
        };
        let c = Cmd::new(&[
            "/iscsi/x/tpg1",
            "set",
            "auth",
            "userid=u",
            "password=Secret12chars",
        ]);
        let e = lio.run(&c).await.unwrap_err();
        assert!(matches!(e, ToolError::Failed { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            !e.contains("Secret12chars") && e.contains("password=<hidden>"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&argv).unwrap(), "\n");
        assert_eq!(
            std::fs::read_to_string(&stdin).unwrap(),
            "set global auto_save_on_exit=false\n\
             /iscsi/x/tpg1 set auth userid=u password=Secret12chars\nexit\n"
        );
        // Commands without a secret go in argv.
        let _ = lio.run(&Cmd::new(&["saveconfig"])).await;
        assert_eq!(std::fs::read_to_string(&argv).unwrap(), "\nsaveconfig\n");
        let gone = Lio {
            root: d.path().join("nope"),
            ..lio.clone()
        };
        assert!(matches!(
            gone.read().await,
            Err(ToolError::Unavailable { .. })
        ));
        assert!(matches!(
            gone.run(&c).await,
            Err(ToolError::Unavailable { .. })
        ));
    }
}
