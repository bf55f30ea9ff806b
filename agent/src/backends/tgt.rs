//! The tgt backend: a userspace iSCSI target (tgtd) driven by `tgtadm` only, one argument
//! vector per change, on the control socket `TGT_IPC_SOCKET` (tgtd appends `.0`).
//!
//! [`WantTarget`] and [`SeenTarget`] are also the backend-neutral forms the family works with:
//! the LIO backend plans from the same [`WantTarget`] and reports its read-back as a
//! [`SeenTarget`].
//!
//! Never `tgt-admin`: it runs every value through a shell and binds `ALL` when a target has no
//! address rule, and tgt's access rules are OR-ed, so one `ALL` opens a target to everyone.
//! This backend binds exactly the initiator names and networks asked for, nothing else.
//!
//! tgtd keeps everything in memory: after a restart it has no targets. The family re-applies
//! its desired state then; this module only knows how to read tgtd's state (`--op show`), how
//! to plan the tgtadm calls that turn what tgtd has into what is wanted ([`plan`], pure), and
//! how to run them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use csg_protocol::methods::iscsi::{Chap, ChapUser, CidrKey, Iqn};
use csg_protocol::validate::Cidr;
use thiserror::Error;

use crate::exec::{self, Program};
use crate::storage::paths::SafePath;

#[derive(Debug, Error)]
pub enum TgtError {
    /// tgtd is not running, or its control socket is not there.
    #[error("tgtd is not reachable on control socket {socket}.0: {message}")]
    Unavailable { socket: String, message: String },
    #[error("{command} did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("{command} failed (exit {status}): {stderr}")]
    Failed {
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("cannot run {command}: {message}")]
    Exec { command: String, message: String },
}

/// A LUN as it must be on tgtd: the path passed the root and symlink checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantLun {
    pub lun: u16,
    pub path: SafePath,
    pub readonly: bool,
}

/// A target as it must be on tgtd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantTarget {
    pub iqn: Iqn,
    pub luns: Vec<WantLun>,
    pub initiators: BTreeSet<Iqn>,
    pub networks: BTreeSet<CidrKey>,
    pub chap: Option<Chap>,
}

/// One LUN as tgtd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenLun {
    pub lun: u16,
    /// `None` for the controller LUN 0 (`Backing store path: None`).
    pub path: Option<String>,
    pub readonly: bool,
}

/// One target as tgtd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenTarget {
    pub tid: u32,
    pub iqn: String,
    pub luns: Vec<SeenLun>,
    /// Incoming accounts bound to the target.
    pub accounts: Vec<String>,
    pub outgoing: Option<String>,
    /// Access rules exactly as tgtd lists them (addresses and names mixed).
    pub acl: Vec<String>,
    pub sessions: u32,
    /// LIO only: no initiator has the LUNs mapped, so whether they are read-only cannot be
    /// seen (tgt: always false).
    pub readonly_unobservable: bool,
    /// Backend-specific differences from the agent's model, in words (LIO only; tgt: none).
    pub notes: Vec<String>,
    /// CHAP user → secret as the backend shows it (LIO only: tgt never shows secrets).
    pub secrets: SeenSecrets,
}

/// Secrets read back from a backend; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SeenSecrets(pub std::collections::BTreeMap<String, String>);

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

impl SeenTarget {
    pub fn data_luns(&self) -> impl Iterator<Item = &SeenLun> {
        self.luns.iter().filter(|l| l.lun != 0)
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.acl.iter().map(|r| classify_rule(r)).collect()
    }
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

/// How a network is written for tgtd: IPv6 in brackets.
pub fn net_arg(c: &CidrKey) -> String {
    let c = c.0;
    match (c.addr, c.is_host()) {
        (std::net::IpAddr::V4(_), _) => c.to_string(),
        (std::net::IpAddr::V6(a), true) => format!("[{a}]"),
        (std::net::IpAddr::V6(a), false) => format!("[{a}]/{}", c.prefix),
    }
}

/// Parses `tgtadm --lld iscsi --mode target --op show`.
pub fn parse_show(out: &str) -> Vec<SeenTarget> {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Nexus,
        Lun,
        Account,
        Acl,
    }
    let mut targets: Vec<SeenTarget> = Vec::new();
    let mut sec = Sec::None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Target ") {
            if let Some((tid, iqn)) = rest.split_once(": ") {
                if let Ok(tid) = tid.trim().parse() {
                    targets.push(SeenTarget {
                        tid,
                        iqn: iqn.trim().to_string(),
                        ..Default::default()
                    });
                    sec = Sec::None;
                    continue;
                }
            }
        }
        let Some(t) = targets.last_mut() else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 4 {
            sec = match text {
                "I_T nexus information:" => Sec::Nexus,
                "LUN information:" => Sec::Lun,
                "Account information:" => Sec::Account,
                "ACL information:" => Sec::Acl,
                _ => Sec::None,
            };
            continue;
        }
        if text.is_empty() {
            continue;
        }
        match sec {
            Sec::Nexus if text.starts_with("I_T nexus:") => t.sessions += 1,
            Sec::Lun => {
                if let Some(n) = text.strip_prefix("LUN: ") {
                    if let Ok(n) = n.trim().parse() {
                        t.luns.push(SeenLun {
                            lun: n,
                            ..Default::default()
                        });
                    }
                } else if let Some(l) = t.luns.last_mut() {
                    if let Some(v) = text.strip_prefix("Readonly:") {
                        l.readonly = v.trim() == "Yes";
                    } else if let Some(v) = text.strip_prefix("Backing store path:") {
                        let v = v.trim();
                        l.path = (v != "None" && !v.is_empty()).then(|| v.to_string());
                    }
                }
            }
            Sec::Account if indent == 8 => match text.strip_suffix(" (outgoing)") {
                Some(u) => t.outgoing = Some(u.to_string()),
                None => t.accounts.push(text.to_string()),
            },
            Sec::Acl if indent == 8 => t.acl.push(text.to_string()),
            _ => {}
        }
    }
    targets
}

/// Parses `tgtadm --lld iscsi --mode account --op show` (`Account list:` then one per line).
pub fn parse_accounts(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| l.starts_with(' '))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// One tgtadm call.
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
    /// Unbinds a rule exactly as tgtd listed it (addresses, names, `ALL`): only rules whose
    /// text is `[A-Za-z0-9:./\[\]-]` are ever put into an argv (see [`plan`]).
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
        secret: String,
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

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Op {
    /// The arguments after `tgtadm`. Contains the secret for `NewAccount` (tgtadm takes it
    /// only in argv): never log this, log [`redacted`](Self::redacted).
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--lld".into(), "iscsi".into()];
        let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
        match self {
            Op::NewTarget { tid, iqn } => push(&[
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                &tid.to_string(),
                "--targetname",
                iqn.as_str(),
            ]),
            Op::DeleteTarget { tid, force } => {
                push(&["--mode", "target", "--op", "delete"]);
                if *force {
                    push(&["--force"]);
                }
                push(&["--tid", &tid.to_string()]);
            }
            Op::DeleteConn { tid, sid, cid } => push(&[
                "--mode",
                "conn",
                "--op",
                "delete",
                "--tid",
                &tid.to_string(),
                "--sid",
                &sid.to_string(),
                "--cid",
                &cid.to_string(),
            ]),
            Op::NewLun { tid, lun, path } => push(&[
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                &tid.to_string(),
                "--lun",
                &lun.to_string(),
                "--backing-store",
                path,
            ]),
            Op::DeleteLun { tid, lun } => push(&[
                "--mode",
                "logicalunit",
                "--op",
                "delete",
                "--tid",
                &tid.to_string(),
                "--lun",
                &lun.to_string(),
            ]),
            Op::SetReadonly { tid, lun, readonly } => push(&[
                "--mode",
                "logicalunit",
                "--op",
                "update",
                "--tid",
                &tid.to_string(),
                "--lun",
                &lun.to_string(),
                "--params",
                if *readonly {
                    "readonly=1"
                } else {
                    "readonly=0"
                },
            ]),
            Op::BindName { tid, iqn } => push(&[
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                &tid.to_string(),
                "--initiator-name",
                iqn.as_str(),
            ]),
            Op::BindNet { tid, net } => push(&[
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                &tid.to_string(),
                "--initiator-address",
                &net_arg(net),
            ]),
            Op::UnbindName { tid, rule } => push(&[
                "--mode",
                "target",
                "--op",
                "unbind",
                "--tid",
                &tid.to_string(),
                "--initiator-name",
                rule,
            ]),
            Op::UnbindNet { tid, rule } => push(&[
                "--mode",
                "target",
                "--op",
                "unbind",
                "--tid",
                &tid.to_string(),
                "--initiator-address",
                rule,
            ]),
            Op::NewAccount { user, secret } => push(&[
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                user.as_str(),
                "--password",
                secret,
            ]),
            Op::DeleteAccount { user } => {
                push(&["--mode", "account", "--op", "delete", "--user", user])
            }
            Op::BindAccount {
                tid,
                user,
                outgoing,
            }
            | Op::UnbindAccount {
                tid,
                user,
                outgoing,
            } => {
                let op = if matches!(self, Op::BindAccount { .. }) {
                    "bind"
                } else {
                    "unbind"
                };
                push(&[
                    "--mode",
                    "account",
                    "--op",
                    op,
                    "--tid",
                    &tid.to_string(),
                    "--user",
                    user,
                ]);
                if *outgoing {
                    push(&["--outgoing"]);
                }
            }
        }
        a
    }

    /// The command line for logs and errors: the CHAP secret replaced by `<hidden>`.
    pub fn redacted(&self) -> String {
        let mut argv = self.argv();
        if matches!(self, Op::NewAccount { .. }) {
            if let Some(p) = argv.iter().position(|a| a == "--password") {
                if let Some(v) = argv.get_mut(p + 1) {
                    *v = "<hidden>".into();
                }
            }
        }
        format!("tgtadm {}", argv.join(" "))
    }
}

/// Text that may be echoed back into an unbind argv: tgtd's own listing, restricted to the
/// characters of addresses and names, never starting with `-`.
fn safe_rule_text(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('-')
        && r.len() <= 256
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":./[]-".contains(&b))
}

/// What the account side of a plan needs to know beyond the target itself.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    /// Accounts tgtd has now (any target).
    pub existing: BTreeSet<String>,
    /// Accounts whose secret changed (or is unknown to tgtd): deleted and created again.
    pub reset: BTreeSet<String>,
    /// A random secret for the guard account that keeps CHAP required on the target while its
    /// incoming account is re-created (tgt cannot change a password in place). Without it
    /// there is a moment with no incoming account bound, when logins need no CHAP at all.
    pub guard_secret: Option<String>,
}

/// The guard account's name for target `tid`.
pub fn guard_user(tid: u32) -> String {
    format!("csg-guard-{tid}")
}

/// The tgtadm calls that turn `seen` (None: tgtd does not have the target) into `want` on
/// target id `tid`. Pure; the order is the safe one: the target and its LUNs, then rules
/// removed before new ones are bound, CHAP before rules so a new target is never reachable
/// without its CHAP account.
pub fn plan(seen: Option<&SeenTarget>, want: &WantTarget, tid: u32, acc: &Accounts) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = SeenTarget::default();
    let seen = match seen {
        Some(s) => s,
        None => {
            ops.push(Op::NewTarget {
                tid,
                iqn: want.iqn.clone(),
            });
            &empty
        }
    };
    // Access rules that must go, first: a stale ALL must not outlive the change.
    for rule in &seen.acl {
        let keep = match classify_rule(rule) {
            Rule::Name(i) => want.initiators.contains(&i),
            Rule::Net(c) => want.networks.contains(&c) && net_arg(&c) == *rule,
            Rule::Other(_) => false,
        };
        if keep || !safe_rule_text(rule) {
            continue;
        }
        let op = match classify_rule(rule) {
            Rule::Name(_) => Op::UnbindName {
                tid,
                rule: rule.clone(),
            },
            Rule::Net(_) => Op::UnbindNet {
                tid,
                rule: rule.clone(),
            },
            Rule::Other(_) if rule.contains(':') && !rule.contains('[') && rule.contains('.') => {
                Op::UnbindName {
                    tid,
                    rule: rule.clone(),
                }
            }
            Rule::Other(_) => Op::UnbindNet {
                tid,
                rule: rule.clone(),
            },
        };
        ops.push(op);
    }
    // CHAP accounts.
    let want_in = want.chap.as_ref().map(|c| c.username.as_str().to_string());
    // Re-creating a bound incoming account: bind a guard account (a secret nobody knows)
    // first, so CHAP stays required throughout.
    let guard = match (&want_in, &acc.guard_secret) {
        (Some(u), Some(secret)) if acc.reset.contains(u) && seen.accounts.contains(u) => {
            let user = ChapUser::parse("guard", &guard_user(tid)).expect("guard name is valid");
            ops.push(Op::NewAccount {
                user: user.clone(),
                secret: secret.clone(),
            });
            ops.push(Op::BindAccount {
                tid,
                user: user.as_str().into(),
                outgoing: false,
            });
            Some(user)
        }
        _ => None,
    };
    let want_out = want
        .chap
        .as_ref()
        .and_then(|c| c.mutual.as_ref())
        .map(|(u, _)| u.as_str().to_string());
    for a in &seen.accounts {
        if Some(a) != want_in.as_ref() || acc.reset.contains(a) {
            ops.push(Op::UnbindAccount {
                tid,
                user: a.clone(),
                outgoing: false,
            });
        }
    }
    if let Some(o) = &seen.outgoing {
        if Some(o) != want_out.as_ref() || acc.reset.contains(o) {
            ops.push(Op::UnbindAccount {
                tid,
                user: o.clone(),
                outgoing: true,
            });
        }
    }
    if let Some(c) = &want.chap {
        let mut pairs = vec![(&c.username, &c.secret, false)];
        if let Some((u, s)) = &c.mutual {
            pairs.push((u, s, true));
        }
        for (user, secret, outgoing) in pairs {
            let name = user.as_str().to_string();
            let reset = acc.reset.contains(&name);
            if reset && acc.existing.contains(&name) {
                ops.push(Op::DeleteAccount { user: name.clone() });
            }
            if reset || !acc.existing.contains(&name) {
                ops.push(Op::NewAccount {
                    user: user.clone(),
                    secret: secret.expose().to_string(),
                });
            }
            let bound = if outgoing {
                seen.outgoing.as_deref() == Some(name.as_str())
            } else {
                seen.accounts.contains(&name)
            };
            if reset || !bound {
                ops.push(Op::BindAccount {
                    tid,
                    user: name,
                    outgoing,
                });
            }
        }
    }
    // LUNs.
    for l in seen.data_luns() {
        let keep = want
            .luns
            .iter()
            .any(|w| w.lun == l.lun && Some(w.path.as_str()) == l.path.as_deref());
        if !keep {
            ops.push(Op::DeleteLun { tid, lun: l.lun });
        }
    }
    for w in &want.luns {
        let now = seen
            .data_luns()
            .find(|l| l.lun == w.lun && l.path.as_deref() == Some(w.path.as_str()));
        match now {
            None => {
                ops.push(Op::NewLun {
                    tid,
                    lun: w.lun,
                    path: w.path.as_str().to_string(),
                });
                if w.readonly {
                    ops.push(Op::SetReadonly {
                        tid,
                        lun: w.lun,
                        readonly: true,
                    });
                }
            }
            Some(l) if l.readonly != w.readonly => ops.push(Op::SetReadonly {
                tid,
                lun: w.lun,
                readonly: w.readonly,
            }),
            Some(_) => {}
        }
    }
    // Rules to add, last.
    let rules = seen.rules();
    for i in &want.initiators {
        if !rules.contains(&Rule::Name(i.clone())) {
            ops.push(Op::BindName {
                tid,
                iqn: i.clone(),
            });
        }
    }
    for n in &want.networks {
        if !seen.acl.contains(&net_arg(n)) {
            ops.push(Op::BindNet { tid, net: *n });
        }
    }
    if let Some(g) = guard {
        ops.push(Op::UnbindAccount {
            tid,
            user: g.as_str().into(),
            outgoing: false,
        });
        ops.push(Op::DeleteAccount {
            user: g.as_str().into(),
        });
    }
    ops
}

/// Parses `tgtadm --lld iscsi --mode conn --op show --tid N`: `(session, connection)` ids.
pub fn parse_conns(out: &str) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut sid = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix("Session:") {
            sid = s.trim().parse().ok();
        } else if let (Some(c), Some(s)) = (t.strip_prefix("Connection:"), sid) {
            if let Ok(c) = c.trim().parse() {
                v.push((s, c));
            }
        }
    }
    v
}

/// Before a forced delete: no rule may let the initiators back in, then every connection is
/// closed (tgtd refuses to delete a target whose LUNs still have commands in flight).
pub fn evict(seen: &SeenTarget, conns: &[(u64, u64)]) -> Vec<Op> {
    let tid = seen.tid;
    let mut ops = Vec::new();
    for rule in seen.acl.iter().filter(|r| safe_rule_text(r)) {
        ops.push(match classify_rule(rule) {
            Rule::Name(_) => Op::UnbindName {
                tid,
                rule: rule.clone(),
            },
            _ if rule.contains(':') && !rule.contains('[') && rule.contains('.') => {
                Op::UnbindName {
                    tid,
                    rule: rule.clone(),
                }
            }
            _ => Op::UnbindNet {
                tid,
                rule: rule.clone(),
            },
        });
    }
    for (sid, cid) in conns {
        ops.push(Op::DeleteConn {
            tid,
            sid: *sid,
            cid: *cid,
        });
    }
    ops
}

/// The lowest target id above every one tgtd uses.
pub fn next_tid(seen: &[SeenTarget]) -> u32 {
    seen.iter().map(|t| t.tid).max().unwrap_or(0) + 1
}

/// The tgtadm runner for one tgtd.
#[derive(Debug, Clone)]
pub struct Tgt {
    pub tgtadm: PathBuf,
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Tgt {
    async fn run(&self, argv: Vec<String>, shown: String) -> Result<String, TgtError> {
        let p = Program::new(&self.tgtadm, self.timeout)
            .args(argv)
            .env("TGT_IPC_SOCKET", &self.socket);
        // Errors are rebuilt from `shown`: the exec error's own text would carry the argv.
        let out = exec::run(&p, None)
            .await
            .map_err(|e| match e.without_argv() {
                exec::Failure::Timeout(timeout) => TgtError::Timeout {
                    command: shown.clone(),
                    timeout,
                },
                exec::Failure::Exec(message) => TgtError::Exec {
                    command: shown.clone(),
                    message,
                },
            })?;
        if out.status == 0 {
            return Ok(out.stdout);
        }
        let stderr = out.stderr.trim().to_string();
        // tgtd's own refusals exit with EINVAL (22); a missing daemon gives ENOTCONN/ECONNREFUSED.
        if out.status != 22 && (stderr.contains("tgt daemon") || stderr.contains("connect")) {
            return Err(TgtError::Unavailable {
                socket: self.socket.display().to_string(),
                message: stderr,
            });
        }
        Err(TgtError::Failed {
            command: shown,
            status: out.status,
            stderr,
        })
    }

    pub async fn show(&self) -> Result<Vec<SeenTarget>, TgtError> {
        let argv: Vec<String> = ["--lld", "iscsi", "--mode", "target", "--op", "show"]
            .map(String::from)
            .to_vec();
        let shown = format!("tgtadm {}", argv.join(" "));
        Ok(parse_show(&self.run(argv, shown).await?))
    }

    pub async fn accounts(&self) -> Result<BTreeSet<String>, TgtError> {
        let argv: Vec<String> = ["--lld", "iscsi", "--mode", "account", "--op", "show"]
            .map(String::from)
            .to_vec();
        let shown = format!("tgtadm {}", argv.join(" "));
        Ok(parse_accounts(&self.run(argv, shown).await?))
    }

    pub async fn apply(&self, op: &Op) -> Result<(), TgtError> {
        let mut tries = 0;
        loop {
            match self.run(op.argv(), op.redacted()).await {
                // A forced delete right after closing connections: tgtd finishes the
                // commands in flight first.
                Err(TgtError::Failed { stderr, .. })
                    if matches!(op, Op::DeleteTarget { force: true, .. })
                        && stderr.contains("still active")
                        && tries < 30 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r.map(|_| ()),
            }
        }
    }

    /// The connections of target `tid`.
    pub async fn connections(&self, tid: u32) -> Result<Vec<(u64, u64)>, TgtError> {
        let argv: Vec<String> = ["--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid"]
            .map(String::from)
            .into_iter()
            .chain([tid.to_string()])
            .collect();
        let shown = format!("tgtadm {}", argv.join(" "));
        Ok(parse_conns(&self.run(argv, shown).await?))
    }

    /// Runs `ops` in order, stopping at the first failure; returns how many ran.
    pub async fn apply_all(&self, ops: &[Op]) -> Result<usize, (usize, TgtError)> {
        for (i, op) in ops.iter().enumerate() {
            self.apply(op).await.map_err(|e| (i, e))?;
        }
        Ok(ops.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::methods::iscsi::ChapSecret;

    const SHOW: &str = "Target 1: iqn.2024-05.test.gw:vol1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2024-05.test.client:c1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            Size: 0 MB, Block size: 1
            Readonly: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Online: Yes
            Readonly: Yes
            Backing store type: rdwr
            Backing store path: /srv/csg/vol1.img
            Backing store flags: 
    Account information:
        chapuser
        mutu (outgoing)
    ACL information:
        10.0.0.0/24
        ALL
        iqn.2024-05.test.client:c1
Target 2: iqn.2024-05.test.gw:vol2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
    ACL information:
";

    fn iqn(s: &str) -> Iqn {
        Iqn::parse("t", s).unwrap()
    }

    fn path(d: &tempfile::TempDir, p: &str) -> SafePath {
        // SafePath has no public constructor outside `Roots::resolve`: resolve a real file.
        let root = std::fs::canonicalize(d.path()).unwrap();
        let f = root.join(p.trim_start_matches('/').replace('/', "-"));
        std::fs::write(&f, b"").unwrap();
        crate::storage::paths::Roots::new(vec![root])
            .resolve(
                "p",
                f.to_str().unwrap(),
                crate::storage::paths::PathKind::BackingFile { devices: false },
            )
            .unwrap()
    }

    #[test]
    fn show_output_is_parsed() {
        let t = parse_show(SHOW);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].tid, t[0].iqn.as_str()),
            (1, "iqn.2024-05.test.gw:vol1")
        );
        assert_eq!(t[0].sessions, 1);
        assert_eq!(
            t[0].luns,
            vec![
                SeenLun {
                    lun: 0,
                    path: None,
                    readonly: false
                },
                SeenLun {
                    lun: 1,
                    path: Some("/srv/csg/vol1.img".into()),
                    readonly: true
                },
            ]
        );
        assert_eq!(t[0].accounts, vec!["chapuser".to_string()]);
        assert_eq!(t[0].outgoing.as_deref(), Some("mutu"));
        assert_eq!(
            t[0].acl,
            vec!["10.0.0.0/24", "ALL", "iqn.2024-05.test.client:c1"]
        );
        assert_eq!(
            t[0].rules()[..2],
            [
                Rule::Net(CidrKey(Cidr::parse("10.0.0.0/24").unwrap())),
                Rule::Other("ALL".into())
            ]
        );
        assert_eq!(t[1].tid, 2);
        assert!(t[1].acl.is_empty() && t[1].accounts.is_empty() && t[1].sessions == 0);
        assert_eq!(next_tid(&t), 3);
        assert_eq!(next_tid(&[]), 1);
        assert_eq!(
            parse_accounts("Account list:\n    mutu\n    chapuser\n"),
            ["chapuser", "mutu"].map(String::from).into_iter().collect()
        );
    }

    #[test]
    fn a_new_target_gets_exact_argv_and_no_all() {
        let d = tempfile::tempdir().unwrap();
        let p = path(&d, "/srv/csg/vol1.img");
        let want = WantTarget {
            iqn: iqn("iqn.2026-11.com.example.csg:vol1"),
            luns: vec![WantLun {
                lun: 1,
                path: p.clone(),
                readonly: true,
            }],
            initiators: [iqn("iqn.1994-05.com.redhat:c1")].into(),
            networks: [
                CidrKey(Cidr::parse("10.0.0.0/8").unwrap()),
                CidrKey(Cidr::parse("fd00::/8").unwrap()),
            ]
            .into(),
            chap: Some(Chap {
                username: ChapUser::parse("u", "u1").unwrap(),
                secret: ChapSecret::parse("s", "Secret12chars").unwrap(),
                mutual: None,
            }),
        };
        let ops = plan(None, &want, 7, &Accounts::default());
        let lines: Vec<String> = ops.iter().map(|o| o.argv().join(" ")).collect();
        let pp = p.as_str();
        assert_eq!(
            lines,
            vec![
                "--lld iscsi --mode target --op new --tid 7 --targetname iqn.2026-11.com.example.csg:vol1".to_string(),
                "--lld iscsi --mode account --op new --user u1 --password Secret12chars".into(),
                "--lld iscsi --mode account --op bind --tid 7 --user u1".into(),
                format!("--lld iscsi --mode logicalunit --op new --tid 7 --lun 1 --backing-store {pp}"),
                "--lld iscsi --mode logicalunit --op update --tid 7 --lun 1 --params readonly=1".into(),
                "--lld iscsi --mode target --op bind --tid 7 --initiator-name iqn.1994-05.com.redhat:c1".into(),
                "--lld iscsi --mode target --op bind --tid 7 --initiator-address 10.0.0.0/8".into(),
                "--lld iscsi --mode target --op bind --tid 7 --initiator-address [fd00::]/8".into(),
            ]
        );
        assert!(lines.iter().all(|l| !l.contains("ALL")));
        let shown = format!("{:?}", ops);
        assert!(!shown.contains("Secret12chars"), "{shown}");
        assert!(shown.contains("--password <hidden>"), "{shown}");
        // Applied as planned, the target needs nothing more.
        let seen = SeenTarget {
            tid: 7,
            iqn: want.iqn.to_string(),
            luns: vec![SeenLun {
                lun: 1,
                path: Some(pp.into()),
                readonly: true,
            }],
            accounts: vec!["u1".into()],
            outgoing: None,
            acl: vec![
                "10.0.0.0/8".into(),
                "[fd00::]/8".into(),
                "iqn.1994-05.com.redhat:c1".into(),
            ],
            sessions: 0,
            ..Default::default()
        };
        let acc = Accounts {
            existing: ["u1".to_string()].into(),
            reset: BTreeSet::new(),
            guard_secret: None,
        };
        assert_eq!(plan(Some(&seen), &want, 7, &acc), vec![]);
    }

    #[test]
    fn drifted_targets_are_brought_back_and_all_is_unbound() {
        let d = tempfile::tempdir().unwrap();
        let p = path(&d, "/srv/csg/b.img");
        let want = WantTarget {
            iqn: iqn("iqn.2024-05.test.gw:vol1"),
            luns: vec![WantLun {
                lun: 1,
                path: p.clone(),
                readonly: false,
            }],
            initiators: BTreeSet::new(),
            networks: [CidrKey(Cidr::parse("10.0.0.0/24").unwrap())].into(),
            chap: None,
        };
        let seen = &parse_show(SHOW)[0];
        let lines: Vec<String> = plan(Some(seen), &want, 1, &Accounts::default())
            .iter()
            .map(|o| o.redacted())
            .collect();
        let pp = p.as_str();
        assert_eq!(
            lines,
            vec![
                "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-address ALL".to_string(),
                "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-name iqn.2024-05.test.client:c1".into(),
                "tgtadm --lld iscsi --mode account --op unbind --tid 1 --user chapuser".into(),
                "tgtadm --lld iscsi --mode account --op unbind --tid 1 --user mutu --outgoing".into(),
                "tgtadm --lld iscsi --mode logicalunit --op delete --tid 1 --lun 1".into(),
                format!("tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store {pp}"),
            ]
        );
    }

    #[test]
    fn a_changed_secret_resets_the_account() {
        let want = WantTarget {
            iqn: iqn("iqn.2024-05.test.gw:vol1"),
            luns: vec![],
            initiators: BTreeSet::new(),
            networks: BTreeSet::new(),
            chap: Some(Chap {
                username: ChapUser::parse("u", "chapuser").unwrap(),
                secret: ChapSecret::parse("s", "NewSecret12ch").unwrap(),
                mutual: Some((
                    ChapUser::parse("u", "mutu").unwrap(),
                    ChapSecret::parse("s", "Mutual12chars").unwrap(),
                )),
            }),
        };
        let mut seen = parse_show(SHOW)[0].clone();
        seen.acl.clear();
        seen.luns.truncate(1);
        let acc = Accounts {
            existing: ["chapuser", "mutu"].map(String::from).into(),
            reset: ["chapuser".to_string()].into(),
            guard_secret: Some("Guard123secret".into()),
        };
        let lines: Vec<String> = plan(Some(&seen), &want, 1, &acc)
            .iter()
            .map(|o| o.redacted())
            .collect();
        assert_eq!(
            lines,
            vec![
                "tgtadm --lld iscsi --mode account --op new --user csg-guard-1 --password <hidden>"
                    .to_string(),
                "tgtadm --lld iscsi --mode account --op bind --tid 1 --user csg-guard-1".into(),
                "tgtadm --lld iscsi --mode account --op unbind --tid 1 --user chapuser".into(),
                "tgtadm --lld iscsi --mode account --op delete --user chapuser".into(),
                "tgtadm --lld iscsi --mode account --op new --user chapuser --password <hidden>"
                    .into(),
                "tgtadm --lld iscsi --mode account --op bind --tid 1 --user chapuser".into(),
                "tgtadm --lld iscsi --mode account --op unbind --tid 1 --user csg-guard-1".into(),
                "tgtadm --lld iscsi --mode account --op delete --user csg-guard-1".into(),
            ]
        );
    }

    #[test]
    fn a_forced_delete_evicts_first() {
        let out = "Session: 3\n    Connection: 0\n        Initiator: iqn.x\n        IP Address: 127.0.0.1\nSession: 5\n    Connection: 1\n";
        assert_eq!(parse_conns(out), vec![(3, 0), (5, 1)]);
        let seen = &parse_show(SHOW)[0];
        let lines: Vec<String> = evict(seen, &parse_conns(out))
            .iter()
            .map(|o| o.redacted())
            .collect();
        assert_eq!(
            lines,
            vec![
                "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-address 10.0.0.0/24",
                "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-address ALL",
                "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-name iqn.2024-05.test.client:c1",
                "tgtadm --lld iscsi --mode conn --op delete --tid 1 --sid 3 --cid 0",
                "tgtadm --lld iscsi --mode conn --op delete --tid 1 --sid 5 --cid 1",
            ]
        );
    }

    #[test]
    fn odd_rules_are_never_echoed_into_argv() {
        let want = WantTarget {
            iqn: iqn("iqn.2024-05.test.gw:vol1"),
            luns: vec![],
            initiators: BTreeSet::new(),
            networks: BTreeSet::new(),
            chap: None,
        };
        let seen = SeenTarget {
            tid: 1,
            iqn: want.iqn.to_string(),
            acl: vec!["-x".into(), "a b".into(), "IQN.2001-04.COM.X:Y".into()],
            ..Default::default()
        };
        let ops = plan(Some(&seen), &want, 1, &Accounts::default());
        assert_eq!(
            ops.iter().map(|o| o.redacted()).collect::<Vec<_>>(),
            vec!["tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-name IQN.2001-04.COM.X:Y"]
        );
        assert_eq!(
            Op::DeleteTarget {
                tid: 2,
                force: true
            }
            .argv()
            .join(" "),
            "--lld iscsi --mode target --op delete --force --tid 2"
        );
    }
}
