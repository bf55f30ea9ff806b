//! iSCSI's model: the desired target (stored without its CHAP secrets, which live in their own
//! file), the target a backend must make, what a backend shows (tgt's and LIO's views kept
//! apart), the [`Snapshot`] one mutation plans from, the [`Change`] it makes, the [`Plan`] a
//! backend runs, and the [`IscsiBackend`] trait tgt and LIO implement.
//!
//! Everything here is values and pure comparisons: no program runs and no file is written.

use std::collections::{BTreeMap, BTreeSet};

use csg_protocol::methods::iscsi::{Chap, ChapSecret, ChapUser, CidrKey, Iqn, LunSpec, TargetSpec};
use csg_protocol::validate::Cidr;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::exec::ToolError;
use crate::storage::paths::SafePath;

pub use super::BoxFut;

// ---------------------------------------------------------------------------------------------
// Desired state (no secrets) and the secrets kept beside it

/// The family's part of the state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiState {
    #[serde(default)]
    pub targets: BTreeMap<String, Stored>,
}

/// A target as the console asked for it, without its CHAP secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub iqn: Iqn,
    pub luns: Vec<LunSpec>,
    pub initiators: BTreeSet<Iqn>,
    pub networks: BTreeSet<CidrKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_username: Option<ChapUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_mutual_username: Option<ChapUser>,
}

/// A secret as text, wiped from memory when dropped; its `Debug` never shows it. Checked
/// against the CHAP rules only where it is used ([`Desired::chap`]), so a secrets file written
/// by an older agent still loads.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    pub fn new(s: &str) -> Self {
        Self(Zeroizing::new(s.to_string()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Default for SecretText {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl Serialize for SecretText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

/// A target's CHAP secrets, as kept in the secrets file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub secret: SecretText,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<SecretText>,
}

/// `iscsi-chap-secrets.json`.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    pub version: u32,
    #[serde(default)]
    pub targets: BTreeMap<String, Secrets>,
}

/// The whole desired target: what is stored plus its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub stored: Stored,
    pub secrets: Option<Secrets>,
}

impl Desired {
    pub fn from_spec(s: &TargetSpec) -> Self {
        Desired {
            stored: Stored {
                iqn: s.iqn.clone(),
                luns: s.luns.clone(),
                initiators: s.initiators.clone(),
                networks: s.networks.clone(),
                chap_username: s.chap.as_ref().map(|c| c.username.clone()),
                chap_mutual_username: s
                    .chap
                    .as_ref()
                    .and_then(|c| c.mutual.as_ref())
                    .map(|(u, _)| u.clone()),
            },
            secrets: s.chap.as_ref().map(|c| Secrets {
                secret: SecretText::new(c.secret.expose()),
                mutual_secret: c.mutual.as_ref().map(|(_, s)| SecretText::new(s.expose())),
            }),
        }
    }

    pub fn iqn(&self) -> &Iqn {
        &self.stored.iqn
    }

    /// The CHAP credentials; an error when the secret is not known.
    pub fn chap(&self) -> Result<Option<Chap>, String> {
        let Some(user) = &self.stored.chap_username else {
            return Ok(None);
        };
        let unknown = || {
            "its CHAP secret is not known to the agent (secrets file lost?); send \
             iscsi.target.update with the secret"
                .to_string()
        };
        let s = self.secrets.as_ref().ok_or_else(unknown)?;
        let secret = ChapSecret::parse("secret", s.secret.expose()).map_err(|e| e.to_string())?;
        let mutual = match (&self.stored.chap_mutual_username, &s.mutual_secret) {
            (None, _) => None,
            (Some(u), Some(ms)) => Some((
                u.clone(),
                ChapSecret::parse("mutual_secret", ms.expose()).map_err(|e| e.to_string())?,
            )),
            (Some(_), None) => return Err(unknown()),
        };
        Ok(Some(Chap {
            username: user.clone(),
            secret,
            mutual,
        }))
    }

    /// user name → secret for every CHAP account of this target.
    pub fn accounts(&self) -> Vec<(String, SecretText)> {
        let mut v = Vec::new();
        if let (Some(u), Some(s)) = (&self.stored.chap_username, &self.secrets) {
            v.push((u.as_str().to_string(), s.secret.clone()));
            if let (Some(mu), Some(ms)) = (&self.stored.chap_mutual_username, &s.mutual_secret) {
                v.push((mu.as_str().to_string(), ms.clone()));
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// What a backend must make

/// A LUN as the backend must have it: the path passed the root and symlink checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantLun {
    pub lun: u16,
    pub path: SafePath,
    pub readonly: bool,
}

/// A target as the backend must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantTarget {
    pub iqn: Iqn,
    pub luns: Vec<WantLun>,
    pub initiators: BTreeSet<Iqn>,
    pub networks: BTreeSet<CidrKey>,
    pub chap: Option<Chap>,
}

// ---------------------------------------------------------------------------------------------
// What a backend shows

/// One LUN as a backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenLun {
    pub lun: u16,
    /// `None` for tgt's controller LUN 0 (`Backing store path: None`).
    pub path: Option<String>,
    pub readonly: bool,
}

/// What both backends show of a target, in the agent's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shown {
    pub iqn: String,
    pub luns: Vec<SeenLun>,
    /// Incoming accounts bound to the target.
    pub accounts: Vec<String>,
    pub outgoing: Option<String>,
    /// Access rules exactly as the backend lists them (tgt: addresses and names mixed; LIO:
    /// initiator names, and `ALL` when any initiator may log in).
    pub acl: Vec<String>,
    pub sessions: u32,
}

impl Shown {
    pub fn data_luns(&self) -> impl Iterator<Item = &SeenLun> {
        self.luns.iter().filter(|l| l.lun != 0)
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.acl.iter().map(|r| classify_rule(r)).collect()
    }
}

/// A target as tgtd reports it (`tgtadm --op show`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TgtTarget {
    pub tid: u32,
    pub shown: Shown,
}

/// A target as LIO's configfs tree shows it, in the agent's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LioSeen {
    pub shown: Shown,
    /// No initiator has the LUNs mapped, so whether they are read-only cannot be seen.
    pub readonly_unobservable: bool,
    /// LIO-specific differences from the agent's model, in words.
    pub notes: Vec<String>,
    /// CHAP user → secret as configfs shows it.
    pub secrets: SeenSecrets,
}

/// One target a backend has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Tgt(TgtTarget),
    Lio(LioSeen),
}

impl Seen {
    pub fn shown(&self) -> &Shown {
        match self {
            Seen::Tgt(t) => &t.shown,
            Seen::Lio(l) => &l.shown,
        }
    }
    pub fn iqn(&self) -> &str {
        &self.shown().iqn
    }
    /// tgt's target id; LIO has none.
    pub fn tid(&self) -> Option<u32> {
        match self {
            Seen::Tgt(t) => Some(t.tid),
            Seen::Lio(_) => None,
        }
    }
    fn readonly_observable(&self) -> bool {
        match self {
            Seen::Tgt(_) => true,
            Seen::Lio(l) => !l.readonly_unobservable,
        }
    }
    fn notes(&self) -> &[String] {
        match self {
            Seen::Tgt(_) => &[],
            Seen::Lio(l) => &l.notes,
        }
    }
    /// The secrets the backend shows (LIO); tgt never shows any.
    fn secrets(&self) -> Option<&SeenSecrets> {
        match self {
            Seen::Tgt(_) => None,
            Seen::Lio(l) => Some(&l.secrets),
        }
    }
}

/// Secrets read back from a backend; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SeenSecrets(pub BTreeMap<String, SecretText>);

impl std::fmt::Debug for SeenSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeenSecrets({:?} <hidden>)",
            self.0.keys().collect::<Vec<_>>()
        )
    }
}

/// An access rule as read back, sorted into what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Name(Iqn),
    Net(CidrKey),
    /// `ALL`, or anything this agent would never bind.
    Other(String),
}

pub fn classify_rule(r: &str) -> Rule {
    if let Ok(i) = Iqn::parse("rule", r) {
        return Rule::Name(i);
    }
    // IPv6 rules are bound as `[addr]/len`.
    let plain: String = r.chars().filter(|c| !matches!(c, '[' | ']')).collect();
    match Cidr::parse(&plain) {
        Ok(c) => Rule::Net(CidrKey(c)),
        Err(_) => Rule::Other(r.to_string()),
    }
}

/// Whether a rule the agent cannot classify reads like an initiator name (`iqn.…:…` in odd
/// case, say), so it is reported and unbound as one.
pub fn looks_like_name(raw: &str) -> bool {
    raw.contains(':') && !raw.contains('[') && raw.contains('.')
}

/// Everything a backend has, read once per mutation under the family lock and passed down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub targets: Vec<Seen>,
    pub raw: Raw,
}

/// The backend-specific rest of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// Every CHAP account tgtd has (accounts are shared by all of tgtd's targets).
    Tgt { accounts: BTreeSet<String> },
    /// The configfs tree as read.
    Lio(lio::Configfs),
}

impl Snapshot {
    pub fn find(&self, iqn: &str) -> Option<&Seen> {
        self.targets.iter().find(|t| t.iqn() == iqn)
    }
}

// ---------------------------------------------------------------------------------------------
// Changes and plans

/// A target that must exist afterwards: the desired target and its resolved form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub desired: Desired,
    pub want: WantTarget,
}

/// One change to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create(Box<Target>),
    Update {
        from: Desired,
        to: Box<Target>,
    },
    Delete(Desired),
    /// The desired state did not change; the backend's copy is brought back to it (reconcile,
    /// the tgt watcher). Accounts tgtd already has are kept as they are.
    Reapply(Box<Target>),
    /// A target under the agent's prefix that nobody wants (e.g. a crash in the middle of a
    /// delete): removed.
    Stray(String),
}

impl Change {
    /// What was desired before.
    pub fn from(&self) -> Option<&Desired> {
        match self {
            Change::Update { from, .. } | Change::Delete(from) => Some(from),
            Change::Reapply(t) => Some(&t.desired),
            Change::Create(_) | Change::Stray(_) => None,
        }
    }
    /// What must exist afterwards.
    pub fn to(&self) -> Option<&Target> {
        match self {
            Change::Create(t) | Change::Reapply(t) | Change::Update { to: t, .. } => Some(t),
            Change::Delete(_) | Change::Stray(_) => None,
        }
    }
}

/// A change with what planning it needs beyond the snapshot.
#[derive(Debug, Clone)]
pub struct Request {
    /// The target's name (LIO names its backstores after it); `None` for a stray target,
    /// which has no name in the desired state.
    pub name: Option<csg_protocol::methods::iscsi::TargetName>,
    pub change: Change,
    /// user → secret of every CHAP account the other desired targets use.
    pub others: BTreeMap<String, SecretText>,
    /// Drop logged-in initiators when the target goes.
    pub force: bool,
}

/// tgt's plan: one tgtadm call per step.
pub mod tgt {
    use super::*;

    /// One tgtadm call; its argument vector is written by the tgt backend.
    #[derive(Clone, PartialEq, Eq)]
    pub enum Op {
        NewTarget {
            tid: u32,
            iqn: Iqn,
        },
        DeleteTarget {
            tid: u32,
            force: bool,
        },
        /// Closes one initiator connection (`--mode conn --op show` lists them).
        DeleteConn {
            tid: u32,
            sid: u64,
            cid: u64,
        },
        NewLun {
            tid: u32,
            lun: u16,
            path: String,
        },
        DeleteLun {
            tid: u32,
            lun: u16,
        },
        SetReadonly {
            tid: u32,
            lun: u16,
            readonly: bool,
        },
        BindName {
            tid: u32,
            iqn: Iqn,
        },
        BindNet {
            tid: u32,
            net: CidrKey,
        },
        /// Unbinds a rule exactly as tgtd listed it (addresses, names, `ALL`): only rules
        /// whose text is `[A-Za-z0-9:./\[\]-]` are ever put into an argv.
        UnbindName {
            tid: u32,
            rule: String,
        },
        UnbindNet {
            tid: u32,
            rule: String,
        },
        NewAccount {
            user: ChapUser,
            secret: ChapSecret,
        },
        DeleteAccount {
            user: String,
        },
        BindAccount {
            tid: u32,
            user: String,
            outgoing: bool,
        },
        UnbindAccount {
            tid: u32,
            user: String,
            outgoing: bool,
        },
    }

    /// One step of a tgt plan.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Step {
        Run(Op),
        /// Before a forced delete: no rule may let the target's initiators back in, then
        /// every connection is closed. Which connections exist is read when the step runs.
        Evict(TgtTarget),
    }
}

/// LIO's view (its configfs tree) and its plan (targetcli commands).
pub mod lio {
    use super::*;

    /// What LIO has, read from configfs.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Configfs {
        /// Every iSCSI target whose directory name is a valid iSCSI name, sorted.
        pub targets: Vec<LioTarget>,
        /// Every storage object under `core/<hba>/`, sorted.
        pub backstores: Vec<Backstore>,
    }

    impl Configfs {
        pub fn target(&self, iqn: &str) -> Option<&LioTarget> {
            self.targets.iter().find(|t| t.iqn == iqn)
        }
    }

    /// One storage object (`core/<hba>/<name>`).
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Backstore {
        /// The HBA directory, e.g. `fileio_0`, `iblock_0`.
        pub hba: String,
        pub name: String,
        /// Its `udev_path`: the backing file or device.
        pub path: Option<String>,
    }

    impl Backstore {
        /// targetcli's name for the backstore type (`/backstores/<kind>`).
        pub fn kind(&self) -> Option<&'static str> {
            match self.hba.rsplit_once('_').map(|(k, _)| k) {
                Some("fileio") => Some("fileio"),
                Some("iblock") => Some("block"),
                _ => None,
            }
        }

        /// Made by this agent (so it may be deleted), and safe to put into an argv.
        pub fn ours(&self) -> bool {
            self.kind().is_some()
                && self.name.starts_with("csg-")
                && self.name.len() <= 80
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
    }

    /// CHAP credentials as configfs shows them (`auth/userid`, `password`, `userid_mutual`,
    /// `password_mutual`); empty when unset.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct Auth {
        pub userid: String,
        pub password: SecretText,
        pub mutual_userid: String,
        pub mutual_password: SecretText,
    }

    impl std::fmt::Debug for Auth {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Auth")
                .field("userid", &self.userid)
                .field("mutual_userid", &self.mutual_userid)
                .finish_non_exhaustive()
        }
    }

    /// A LUN of the TPG (`tpgt_1/lun/lun_<index>`, a link to its storage object).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LioLun {
        pub index: u16,
        pub backstore: Option<Backstore>,
    }

    /// A LUN mapped into a node ACL (`acls/<initiator>/lun_<index>`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MappedLun {
        pub index: u16,
        /// The TPG LUN it links to.
        pub tpg_lun: Option<u16>,
        pub write_protect: bool,
    }

    /// A node ACL (`tpgt_1/acls/<initiator>`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LioAcl {
        pub initiator: String,
        pub auth: Auth,
        pub mapped: Vec<MappedLun>,
        /// An initiator with this name is logged in (its `info` is not "No active …").
        pub session: bool,
    }

    /// One iSCSI target and its TPG 1 (the only TPG the agent uses).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LioTarget {
        pub iqn: String,
        /// `tpgt_1` exists.
        pub has_tpg: bool,
        pub enabled: bool,
        /// `tpgt_1/attrib/*` (only the ones the agent sets or checks).
        pub attrib: BTreeMap<String, String>,
        /// TPG-level credentials.
        pub auth: Auth,
        pub luns: Vec<LioLun>,
        pub acls: Vec<LioAcl>,
    }

    /// One `targetcli` command (its words, as on targetcli's own command line). A command
    /// that carries a secret goes to targetcli on stdin, never in argv.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Cmd(pub Vec<String>);

    impl Cmd {
        pub fn new(parts: &[&str]) -> Self {
            Cmd(parts.iter().map(std::string::ToString::to_string).collect())
        }

        /// For logs and errors: `password=` and `mutual_password=` values hidden.
        pub fn redacted(&self) -> String {
            let parts: Vec<String> = self
                .0
                .iter()
                .map(|a| match a.split_once('=') {
                    Some((k, _)) if k.ends_with("password") => format!("{k}=<hidden>"),
                    _ => a.clone(),
                })
                .collect();
            format!("targetcli {}", parts.join(" "))
        }

        /// The secret values this command carries.
        pub fn secrets(&self) -> Vec<&str> {
            self.0
                .iter()
                .filter_map(|a| a.split_once('='))
                .filter(|(k, v)| k.ends_with("password") && !v.is_empty())
                .map(|(_, v)| v)
                .collect()
        }
    }

    /// The words may hold a secret: wiped when the command is dropped.
    impl Drop for Cmd {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.0);
        }
    }

    impl std::fmt::Debug for Cmd {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.redacted())
        }
    }
}

/// What a backend runs for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Tgt(Vec<tgt::Step>),
    Lio(Vec<lio::Cmd>),
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        match self {
            Plan::Tgt(s) => s.is_empty(),
            Plan::Lio(c) => c.is_empty(),
        }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The change asks for something this backend cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// No secure random source for a guard secret, or a snapshot of another backend.
    #[error("{0}")]
    Internal(String),
}

/// An iSCSI target implementation (tgt, LIO).
pub trait IscsiBackend: Send + Sync {
    /// `tgt` or `lio`.
    fn kind(&self) -> &'static str;
    /// What is read back, for messages (`tgtd`, `LIO (configfs)`).
    fn daemon(&self) -> &'static str;
    /// Whether CHAP accounts are shared by all targets (tgt), so one user must have one
    /// secret everywhere.
    fn shared_accounts(&self) -> bool;
    /// Whether the backend forgets its targets while the agent runs (tgtd restarts), so a
    /// watcher must put them back.
    fn forgets_targets(&self) -> bool;
    /// Refuses what this backend cannot express, before anything is touched.
    fn check(&self, spec: &TargetSpec) -> Result<(), String>;
    /// Everything the backend has (what a mutation plans from).
    fn observe(&self) -> BoxFut<'_, Result<Snapshot, ToolError>>;
    /// Only the targets (a read-back, `get`, `list`): cheaper than [`observe`](Self::observe).
    fn targets(&self) -> BoxFut<'_, Result<Vec<Seen>, ToolError>>;
    /// The steps that make `req` true on a backend that has `snap`.
    fn plan(&self, snap: &Snapshot, req: &Request) -> Result<Plan, PlanError>;
    /// Runs a plan in order, stopping at the first failure; returns how many commands ran.
    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<usize, ToolError>>;
    /// Whether the daemon (tgtd) or the kernel target (LIO) is there.
    fn up(&self) -> BoxFut<'_, bool>;
}

// ---------------------------------------------------------------------------------------------
// Comparisons

/// Size of a backing file or block device, bytes.
pub fn backing_size(path: &std::path::Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let md = std::fs::metadata(path).ok()?;
    if md.is_file() {
        return Some(md.len());
    }
    std::fs::File::open(path).ok()?.seek(SeekFrom::End(0)).ok()
}

/// Whether the backend's copy of a target is exactly the desired one.
pub fn in_sync(d: &Desired, t: &Seen) -> bool {
    drift(&d.stored, Some(t), false).is_empty() && secret_drift(d, t).is_empty()
}

/// Secrets the backend shows (LIO) that differ from the ones the agent holds. Never names a
/// secret, only its user.
pub fn secret_drift(d: &Desired, t: &Seen) -> Vec<String> {
    let Some(shown) = t.secrets() else {
        return Vec::new(); // tgt shows no secrets
    };
    if shown.0.is_empty() {
        return Vec::new();
    }
    d.accounts()
        .into_iter()
        .filter(|(u, s)| shown.0.get(u).is_some_and(|have| have != s))
        .map(|(u, _)| format!("the CHAP secret of {u} differs from the one the agent holds"))
        .collect()
}

/// Every difference between the desired target and what the backend has, in words. `sizes` also
/// compares backing file sizes with the requested ones.
pub fn drift(s: &Stored, seen: Option<&Seen>, sizes: bool) -> Vec<String> {
    let Some(seen) = seen else {
        return vec!["the target is missing on the backend".into()];
    };
    let t = seen.shown();
    let mut d = Vec::new();
    for l in &s.luns {
        match t.data_luns().find(|x| x.lun == l.lun) {
            None => d.push(format!("LUN {} is missing", l.lun)),
            Some(x) => {
                if x.path.as_deref() != Some(l.path.as_str()) {
                    d.push(format!(
                        "LUN {} is backed by {}, not {}",
                        l.lun,
                        x.path.as_deref().unwrap_or("nothing"),
                        l.path
                    ));
                }
                if x.readonly != l.readonly && seen.readonly_observable() {
                    d.push(format!(
                        "LUN {} readonly is {}, not {}",
                        l.lun, x.readonly, l.readonly
                    ));
                }
                if let (true, Some(want)) = (sizes, l.size_bytes) {
                    match backing_size(std::path::Path::new(&l.path)) {
                        Some(have) if have != want => d.push(format!(
                            "LUN {} backing file has {have} bytes, not {want}",
                            l.lun
                        )),
                        None => d.push(format!("LUN {} backing file {} is missing", l.lun, l.path)),
                        _ => {}
                    }
                }
            }
        }
    }
    for x in t.data_luns() {
        if !s.luns.iter().any(|l| l.lun == x.lun) {
            d.push(format!("LUN {} is not in the desired state", x.lun));
        }
    }
    let rules = t.rules();
    for i in &s.initiators {
        if !rules.contains(&Rule::Name(i.clone())) {
            d.push(format!("initiator {i} is not allowed"));
        }
    }
    for n in &s.networks {
        if !rules.contains(&Rule::Net(*n)) {
            d.push(format!("network {n} is not allowed"));
        }
    }
    for (raw, r) in t.acl.iter().zip(rules) {
        let wanted = match &r {
            Rule::Name(i) => s.initiators.contains(i),
            Rule::Net(c) => s.networks.contains(c),
            Rule::Other(_) => false,
        };
        if !wanted {
            d.push(format!("access rule {raw} is not in the desired state"));
        }
    }
    let want_in: Vec<String> = s
        .chap_username
        .iter()
        .map(|u| u.as_str().to_string())
        .collect();
    if t.accounts != want_in {
        d.push(format!(
            "CHAP accounts are [{}], not [{}]",
            t.accounts.join(", "),
            want_in.join(", ")
        ));
    }
    let want_out = s
        .chap_mutual_username
        .as_ref()
        .map(|u| u.as_str().to_string());
    if t.outgoing != want_out {
        d.push(format!(
            "mutual CHAP account is {}, not {}",
            t.outgoing.as_deref().unwrap_or("none"),
            want_out.as_deref().unwrap_or("none")
        ));
    }
    d.extend(seen.notes().iter().cloned());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::methods::iscsi::TargetParams;
    use serde_json::json;

    fn stored() -> Stored {
        Stored {
            iqn: Iqn::parse("i", "iqn.2026-11.com.example.csg:vol1").unwrap(),
            luns: vec![LunSpec {
                lun: 1,
                path: "/srv/csg/vol1.img".into(),
                size_bytes: None,
                readonly: false,
            }],
            initiators: [Iqn::parse("i", "iqn.1994-05.com.redhat:c1").unwrap()].into(),
            networks: [CidrKey(Cidr::parse("10.0.0.0/8").unwrap())].into(),
            chap_username: Some(ChapUser::parse("u", "u1").unwrap()),
            chap_mutual_username: None,
        }
    }

    /// What a backend shows of `stored()`'s target: its one LUN writable, CHAP user u1 bound,
    /// no access rules.
    fn shown(s: &Stored) -> Shown {
        Shown {
            iqn: s.iqn.to_string(),
            luns: vec![SeenLun {
                lun: 1,
                path: Some("/srv/csg/vol1.img".into()),
                readonly: false,
            }],
            accounts: vec!["u1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn drift_names_every_difference() {
        let s = stored();
        assert_eq!(
            drift(&s, None, false),
            vec!["the target is missing on the backend"]
        );
        let ok = TgtTarget {
            tid: 1,
            shown: Shown {
                acl: vec!["10.0.0.0/8".into(), "iqn.1994-05.com.redhat:c1".into()],
                sessions: 2,
                ..shown(&s)
            },
        };
        assert!(drift(&s, Some(&Seen::Tgt(ok.clone())), false).is_empty());
        let mut bad = ok.clone();
        bad.shown.acl.push("ALL".into());
        bad.shown.luns[0].readonly = true;
        bad.shown.accounts.clear();
        bad.shown.luns.push(SeenLun {
            lun: 2,
            path: Some("/x".into()),
            readonly: false,
        });
        let d = drift(&s, Some(&Seen::Tgt(bad)), false);
        assert_eq!(
            d,
            vec![
                "LUN 1 readonly is true, not false",
                "LUN 2 is not in the desired state",
                "access rule ALL is not in the desired state",
                "CHAP accounts are [], not [u1]",
            ]
        );
    }

    #[test]
    fn lio_read_back_notes_unobservable_readonly_and_secrets() {
        let mut s = stored();
        s.networks.clear();
        s.initiators.clear();
        s.luns[0].readonly = true;
        let f = Desired {
            stored: s.clone(),
            secrets: Some(Secrets {
                secret: SecretText::new("Secret12chars"),
                mutual_secret: None,
            }),
        };
        // No initiator: LIO maps the LUN to nobody, so read-only cannot be seen; not drift.
        let t = LioSeen {
            shown: shown(&s),
            readonly_unobservable: true,
            secrets: SeenSecrets([("u1".to_string(), SecretText::new("Secret12chars"))].into()),
            ..Default::default()
        };
        let seen = Seen::Lio(t.clone());
        assert!(in_sync(&f, &seen), "{:?}", drift(&s, Some(&seen), false));
        assert_eq!(seen.tid(), None);
        let mut bad = t.clone();
        bad.secrets
            .0
            .insert("u1".into(), SecretText::new("Other12secret"));
        bad.notes.push("TPG 1 is disabled".into());
        let bad = Seen::Lio(bad);
        assert!(!in_sync(&f, &bad));
        assert_eq!(
            secret_drift(&f, &bad),
            vec!["the CHAP secret of u1 differs from the one the agent holds"]
        );
        assert_eq!(drift(&s, Some(&bad), false), vec!["TPG 1 is disabled"]);
        // tgt shows no secrets: nothing to compare.
        let tgt_seen = Seen::Tgt(TgtTarget {
            tid: 1,
            shown: t.shown.clone(),
        });
        assert!(secret_drift(&f, &tgt_seen).is_empty());
    }

    #[test]
    fn the_state_holds_no_secret_and_debug_shows_none() {
        let spec = serde_json::from_value::<TargetParams>(json!({
            "name": "vol1",
            "chap": {"username": "u1", "secret": "Secret12chars",
                     "mutual_username": "m1", "mutual_secret": "Mutual12chars"}
        }))
        .unwrap()
        .validate("iqn.2026-11.com.example.csg")
        .unwrap();
        let f = Desired::from_spec(&spec);
        let text = serde_json::to_string(&IscsiState {
            targets: [("vol1".to_string(), f.stored.clone())].into(),
        })
        .unwrap();
        assert!(
            !text.contains("Secret12") && !text.contains("Mutual12"),
            "{text}"
        );
        assert!(text.contains("\"chap_username\":\"u1\""), "{text}");
        let shown = format!("{f:?}");
        assert!(
            !shown.contains("Secret12") && !shown.contains("Mutual12"),
            "{shown}"
        );
        let chap = f.chap().unwrap().unwrap();
        assert_eq!(chap.secret.expose(), "Secret12chars");
        assert_eq!(f.accounts().len(), 2);
        // The secrets file keeps them, in the format it always had.
        let file = SecretsFile {
            version: 1,
            targets: [("vol1".to_string(), f.secrets.clone().unwrap())].into(),
        };
        let text = serde_json::to_string(&file).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"targets":{"vol1":{"secret":"Secret12chars","mutual_secret":"Mutual12chars"}}}"#
        );
        let back: SecretsFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.targets["vol1"], f.secrets.clone().unwrap());
        let lost = Desired {
            stored: f.stored.clone(),
            secrets: None,
        };
        assert!(lost.chap().unwrap_err().contains("not known"));
    }
}
