//! The tgt backend: a userspace iSCSI target (tgtd) driven by `tgtadm` only, one argument
//! vector per change, on the control socket `TGT_IPC_SOCKET` (tgtd appends `.0`).
//!
//! Never `tgt-admin`: it runs every value through a shell and binds `ALL` when a target has no
//! address rule, and tgt's access rules are OR-ed, so one `ALL` opens a target to everyone.
//! This backend binds exactly the initiator names and networks asked for, nothing else.
//!
//! tgtd keeps everything in memory: after a restart it has no targets. The family re-applies
//! its desired state then; this module reads tgtd's state (`--op show`), plans the tgtadm
//! calls that turn what tgtd has into what is wanted ([`plan`], pure), and runs them.
//!
//! tgtadm takes a CHAP secret only in its argv (`--password`), where every local user who can
//! read the process list sees it while the call runs. Each account is therefore set in its own
//! call, which does nothing else and has a short timeout of its own (see docs/security.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use csg_protocol::methods::iscsi::{ChapSecret, ChapUser, CidrKey, TargetSpec};
use zeroize::{Zeroize, Zeroizing};

use crate::exec::{self, Program, ToolError};
use crate::model::iscsi::tgt::{Op, Step};
use crate::model::iscsi::{
    classify_rule, looks_like_name, BoxFut, Change, IscsiBackend, Plan, PlanError, Raw, Request,
    Rule, Seen, SeenLun, Shown, Snapshot, TgtTarget, WantTarget,
};

/// The longest a tgtadm call that carries a secret may run: it talks to a local socket and
/// answers in milliseconds, and while it runs its argv (with the secret) is in /proc.
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(5);

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
pub fn parse_show(out: &str) -> Vec<TgtTarget> {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Nexus,
        Lun,
        Account,
        Acl,
    }
    let mut targets: Vec<TgtTarget> = Vec::new();
    let mut sec = Sec::None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Target ") {
            if let Some((tid, iqn)) = rest.split_once(": ") {
                if let Ok(tid) = tid.trim().parse() {
                    targets.push(TgtTarget {
                        tid,
                        shown: Shown {
                            iqn: iqn.trim().to_string(),
                            ..Default::default()
                        },
                    });
                    sec = Sec::None;
                    continue;
                }
            }
        }
        let Some(t) = targets.last_mut().map(|t| &mut t.shown) else {
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

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Op {
    /// The arguments after `tgtadm`. Contains the secret for `NewAccount` (tgtadm takes it
    /// only in argv): never log this, log [`redacted`](Self::redacted). Wiped when dropped.
    pub fn argv(&self) -> Zeroizing<Vec<String>> {
        let mut a: Vec<String> = vec!["--lld".into(), "iscsi".into()];
        let mut push = |v: &[&str]| a.extend(v.iter().map(std::string::ToString::to_string));
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
                secret.expose(),
            ]),
            Op::DeleteAccount { user } => {
                push(&["--mode", "account", "--op", "delete", "--user", user]);
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
        Zeroizing::new(a)
    }

    /// The secret this call carries in its argv (only `NewAccount`).
    fn secret(&self) -> Option<&str> {
        match self {
            Op::NewAccount { secret, .. } => Some(secret.expose()),
            _ => None,
        }
    }

    /// The command line for logs and errors: the CHAP secret replaced by `<hidden>`.
    pub fn redacted(&self) -> String {
        let argv = self.argv();
        let secret = self.secret();
        // Built word by word, so no copy of the secret is made (and left unwiped).
        let mut line = String::from("tgtadm");
        for a in argv.iter() {
            line.push(' ');
            line.push_str(if Some(a.as_str()) == secret {
                "<hidden>"
            } else {
                a
            });
        }
        line
    }
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
    pub guard_secret: Option<ChapSecret>,
}

/// The guard account's name for target `tid`.
pub fn guard_user(tid: u32) -> String {
    format!("csg-guard-{tid}")
}

/// The tgtadm calls that turn `seen` (None: tgtd does not have the target) into `want` on
/// target id `tid`. Pure; the order is the safe one: the target and its LUNs, then rules
/// removed before new ones are bound, CHAP before rules so a new target is never reachable
/// without its CHAP account.
pub fn plan(seen: Option<&Shown>, want: &WantTarget, tid: u32, acc: &Accounts) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = Shown::default();
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
            Rule::Other(_) if looks_like_name(rule) => Op::UnbindName {
                tid,
                rule: rule.clone(),
            },
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
            // Infallible: `csg-guard-<digits>` is ASCII letters, digits and `-`, well within
            // the user name rules (the planner's tests run it).
            #[allow(clippy::expect_used)]
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
    let bound = seen
        .accounts
        .iter()
        .map(|a| (a, false))
        .chain(seen.outgoing.iter().map(|o| (o, true)));
    for (user, outgoing) in bound {
        let wanted = if outgoing { &want_out } else { &want_in };
        if wanted.as_ref() != Some(user) || acc.reset.contains(user) {
            ops.push(Op::UnbindAccount {
                tid,
                user: user.clone(),
                outgoing,
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
                    secret: secret.clone(),
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
pub fn evict(seen: &TgtTarget, conns: &[(u64, u64)]) -> Vec<Op> {
    let tid = seen.tid;
    let mut ops = Vec::new();
    for rule in seen.shown.acl.iter().filter(|r| safe_rule_text(r)) {
        ops.push(match classify_rule(rule) {
            Rule::Name(_) => Op::UnbindName {
                tid,
                rule: rule.clone(),
            },
            _ if looks_like_name(rule) => Op::UnbindName {
                tid,
                rule: rule.clone(),
            },
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
pub fn next_tid(tids: impl IntoIterator<Item = u32>) -> u32 {
    tids.into_iter().max().unwrap_or(0) + 1
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

/// 16 random characters of `[A-Za-z0-9]` from the operating system's random source: the guard
/// account's secret, never stored or shown. No fallback: without the OS generator there is
/// no guard account, and the change fails.
pub fn random_secret() -> Result<ChapSecret, String> {
    use rand_core::{OsRng, RngCore};
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // Bytes at or above the largest multiple of 62 are drawn again, so every character is
    // equally likely.
    const LIMIT: u8 = (256 / ALNUM.len() * ALNUM.len()) as u8;
    let mut out = Zeroizing::new(String::with_capacity(16));
    let mut buf = Zeroizing::new([0u8; 32]);
    while out.len() < 16 {
        OsRng
            .try_fill_bytes(&mut buf[..])
            .map_err(|e| format!("no secure random source for a CHAP secret: {e}"))?;
        for b in buf.iter().filter(|b| **b < LIMIT) {
            if out.len() == 16 {
                break;
            }
            out.push(char::from(ALNUM[usize::from(*b) % ALNUM.len()]));
        }
    }
    ChapSecret::parse("guard secret", &out).map_err(|e| e.to_string())
}

/// The tgtadm runner for one tgtd.
#[derive(Debug, Clone)]
pub struct Tgt {
    pub tgtadm: PathBuf,
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Tgt {
    /// Runs tgtadm with `args`; `secret` (in `args`) is kept out of the error and wiped from
    /// the argument copies the agent holds once the call is over.
    async fn run(&self, args: &[String], secret: Option<&str>) -> Result<String, ToolError> {
        let timeout = match secret {
            Some(_) => self.timeout.min(ACCOUNT_TIMEOUT),
            None => self.timeout,
        };
        let mut p = Program::new(&self.tgtadm, timeout)
            .args(args)
            .env("TGT_IPC_SOCKET", &self.socket);
        // The command line in an error never holds the secret, not even for a moment.
        for (i, a) in args.iter().enumerate() {
            if Some(a.as_str()) == secret {
                p = p.hide_arg(i);
            }
        }
        let r = exec::run_ok(&p, None).await;
        if secret.is_some() {
            for a in &mut p.args {
                std::os::unix::ffi::OsStringExt::into_vec(std::mem::take(a)).zeroize();
            }
        }
        let secrets: Vec<&str> = secret.into_iter().collect();
        match r.map_err(|e| e.redacted(&secrets)) {
            Ok(out) => Ok(out.stdout),
            // tgtd's own refusals exit with EINVAL (22); a missing daemon gives ENOTCONN or
            // ECONNREFUSED.
            Err(ToolError::Failed { status, stderr, .. })
                if status != 22
                    && (stderr.contains("tgt daemon") || stderr.contains("connect")) =>
            {
                Err(ToolError::Unavailable {
                    program: "tgtd".into(),
                    detail: format!(
                        "not reachable on control socket {}.0: {stderr}",
                        self.socket.display()
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn show_mode(&self, mode: &str, tid: Option<u32>) -> Result<String, ToolError> {
        let mut argv: Vec<String> = ["--lld", "iscsi", "--mode", mode, "--op", "show"]
            .map(String::from)
            .to_vec();
        if let Some(tid) = tid {
            argv.extend(["--tid".to_string(), tid.to_string()]);
        }
        self.run(&argv, None).await
    }

    pub async fn show(&self) -> Result<Vec<TgtTarget>, ToolError> {
        Ok(parse_show(&self.show_mode("target", None).await?))
    }

    pub async fn accounts(&self) -> Result<BTreeSet<String>, ToolError> {
        Ok(parse_accounts(&self.show_mode("account", None).await?))
    }

    /// The connections of target `tid`.
    pub async fn connections(&self, tid: u32) -> Result<Vec<(u64, u64)>, ToolError> {
        Ok(parse_conns(&self.show_mode("conn", Some(tid)).await?))
    }

    pub async fn apply_op(&self, op: &Op) -> Result<(), ToolError> {
        tracing::debug!(command = %op.redacted(), "tgtadm");
        let argv = op.argv();
        let mut tries = 0;
        loop {
            match self.run(&argv, op.secret()).await {
                // A forced delete right after closing connections: tgtd finishes the
                // commands in flight first.
                Err(ToolError::Failed { stderr, .. })
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

    /// Runs `steps` in order, stopping at the first failure; returns how many calls ran.
    async fn run_steps(&self, steps: &[Step]) -> Result<usize, ToolError> {
        let mut n = 0;
        for s in steps {
            match s {
                Step::Run(op) => {
                    self.apply_op(op).await?;
                    n += 1;
                }
                Step::Evict(t) => {
                    let conns = self.connections(t.tid).await?;
                    for op in evict(t, &conns) {
                        self.apply_op(&op).await?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }
}

impl IscsiBackend for Tgt {
    fn kind(&self) -> &'static str {
        "tgt"
    }

    fn daemon(&self) -> &'static str {
        "tgtd"
    }

    fn shared_accounts(&self) -> bool {
        true
    }

    fn forgets_targets(&self) -> bool {
        true
    }

    fn check(&self, _spec: &TargetSpec) -> Result<(), String> {
        Ok(())
    }

    fn observe(&self) -> BoxFut<'_, Result<Snapshot, ToolError>> {
        Box::pin(async move {
            let targets = self.show().await?.into_iter().map(Seen::Tgt).collect();
            let accounts = self.accounts().await?;
            Ok(Snapshot {
                targets,
                raw: Raw::Tgt { accounts },
            })
        })
    }

    fn targets(&self) -> BoxFut<'_, Result<Vec<Seen>, ToolError>> {
        Box::pin(async move { Ok(self.show().await?.into_iter().map(Seen::Tgt).collect()) })
    }

    fn plan(&self, snap: &Snapshot, req: &Request) -> Result<Plan, PlanError> {
        plan_request(snap, req, random_secret).map(Plan::Tgt)
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFut<'a, Result<usize, ToolError>> {
        Box::pin(async move {
            match plan {
                Plan::Tgt(steps) => self.run_steps(steps).await,
                Plan::Lio(_) => Err(ToolError::Spawn {
                    program: "tgtadm".into(),
                    detail: "internal error: a targetcli plan was given to tgt".into(),
                }),
            }
        })
    }

    fn up(&self) -> BoxFut<'_, bool> {
        Box::pin(async move { self.show().await.is_ok() })
    }
}

/// The steps of one change on tgtd, from the snapshot. `guard_secret` makes the secret of
/// the guard account, asked for only when an account in use is re-created.
pub fn plan_request(
    snap: &Snapshot,
    req: &Request,
    guard_secret: impl Fn() -> Result<ChapSecret, String>,
) -> Result<Vec<Step>, PlanError> {
    let Raw::Tgt { accounts: existing } = &snap.raw else {
        return Err(PlanError::Internal(
            "internal error: tgt was given another backend's snapshot".into(),
        ));
    };
    let find = |iqn: &str| {
        snap.targets.iter().find_map(|s| match s {
            Seen::Tgt(t) if t.shown.iqn == iqn => Some(t),
            _ => None,
        })
    };
    let new_tid = || next_tid(snap.targets.iter().filter_map(Seen::tid));
    let mut steps = Vec::new();
    match &req.change {
        Change::Stray(iqn) => {
            if let Some(t) = find(iqn) {
                steps.push(Step::Run(Op::DeleteTarget {
                    tid: t.tid,
                    force: false,
                }));
            }
            return Ok(steps);
        }
        Change::Reapply(t) => {
            let seen = find(t.want.iqn.as_str());
            let tid = seen.map_or_else(new_tid, |s| s.tid);
            let acc = Accounts {
                existing: existing.clone(),
                reset: BTreeSet::new(),
                guard_secret: None,
            };
            let ops = plan(seen.map(|s| &s.shown), &t.want, tid, &acc);
            steps.extend(ops.into_iter().map(Step::Run));
            return Ok(steps);
        }
        Change::Create(_) | Change::Update { .. } | Change::Delete(_) => {}
    }
    let prev = req.change.from();
    let next = req.change.to();
    // The old target goes when it is deleted or renamed.
    if let Some(p) = prev {
        if next.map(|n| &n.want.iqn) != Some(p.iqn()) {
            if let Some(t) = find(p.iqn().as_str()) {
                if req.force && t.shown.sessions > 0 {
                    steps.push(Step::Evict(t.clone()));
                }
                steps.push(Step::Run(Op::DeleteTarget {
                    tid: t.tid,
                    force: req.force,
                }));
            }
        }
    }
    if let Some(n) = next {
        let seen = find(n.want.iqn.as_str());
        let tid = seen.map_or_else(new_tid, |s| s.tid);
        // An account is (re)created with our secret unless another target shares it (the
        // secret is then the same, by the CONFLICT rule) and tgtd has it.
        let before: BTreeMap<String, _> = prev
            .map(super::super::model::iscsi::Desired::accounts)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let reset: BTreeSet<String> = n
            .desired
            .accounts()
            .into_iter()
            .filter(|(u, s)| {
                !req.others.contains_key(u) && existing.contains(u) && before.get(u) != Some(s)
            })
            .map(|(u, _)| u)
            .collect();
        // The guard is needed (and a secret made for it) only when the target's bound
        // incoming account is re-created; see `plan`.
        let needs_guard = n.want.chap.as_ref().is_some_and(|c| {
            let u = c.username.as_str();
            reset.contains(u) && seen.is_some_and(|s| s.shown.accounts.iter().any(|a| a == u))
        });
        let guard_secret = if needs_guard {
            Some(guard_secret().map_err(PlanError::Internal)?)
        } else {
            None
        };
        let acc = Accounts {
            existing: existing.clone(),
            reset,
            guard_secret,
        };
        let ops = plan(seen.map(|s| &s.shown), &n.want, tid, &acc);
        steps.extend(ops.into_iter().map(Step::Run));
    }
    // Accounts nobody uses any more.
    let now: BTreeSet<String> = next
        .map(|n| n.desired.accounts().into_iter().map(|(u, _)| u).collect())
        .unwrap_or_default();
    if let Some(p) = prev {
        for (u, _) in p.accounts() {
            if !now.contains(&u) && !req.others.contains_key(&u) && existing.contains(&u) {
                steps.push(Step::Run(Op::DeleteAccount { user: u }));
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::iscsi::WantLun;
    use crate::storage::paths::SafePath;
    use csg_protocol::methods::iscsi::{Chap, Iqn};
    use csg_protocol::validate::Cidr;

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
            (t[0].tid, t[0].shown.iqn.as_str()),
            (1, "iqn.2024-05.test.gw:vol1")
        );
        assert_eq!(t[0].shown.sessions, 1);
        assert_eq!(
            t[0].shown.luns,
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
        assert_eq!(t[0].shown.accounts, vec!["chapuser".to_string()]);
        assert_eq!(t[0].shown.outgoing.as_deref(), Some("mutu"));
        assert_eq!(
            t[0].shown.acl,
            vec!["10.0.0.0/24", "ALL", "iqn.2024-05.test.client:c1"]
        );
        assert_eq!(
            t[0].shown.rules()[..2],
            [
                Rule::Net(CidrKey(Cidr::parse("10.0.0.0/24").unwrap())),
                Rule::Other("ALL".into())
            ]
        );
        assert_eq!(t[1].tid, 2);
        assert!(
            t[1].shown.acl.is_empty() && t[1].shown.accounts.is_empty() && t[1].shown.sessions == 0
        );
        assert_eq!(next_tid(t.iter().map(|x| x.tid)), 3);
        assert_eq!(next_tid([]), 1);
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
        let shown = format!("{ops:?}");
        assert!(!shown.contains("Secret12chars"), "{shown}");
        assert!(shown.contains("--password <hidden>"), "{shown}");
        // Applied as planned, the target needs nothing more.
        let seen = Shown {
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
        let seen = &parse_show(SHOW)[0].shown;
        let lines: Vec<String> = plan(Some(seen), &want, 1, &Accounts::default())
            .iter()
            .map(crate::model::iscsi::tgt::Op::redacted)
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
        let mut seen = parse_show(SHOW)[0].shown.clone();
        seen.acl.clear();
        seen.luns.truncate(1);
        let acc = Accounts {
            existing: ["chapuser", "mutu"].map(String::from).into(),
            reset: ["chapuser".to_string()].into(),
            guard_secret: Some(ChapSecret::parse("g", "Guard123secret").unwrap()),
        };
        let lines: Vec<String> = plan(Some(&seen), &want, 1, &acc)
            .iter()
            .map(crate::model::iscsi::tgt::Op::redacted)
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
            .map(crate::model::iscsi::tgt::Op::redacted)
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
        let seen = Shown {
            iqn: want.iqn.to_string(),
            acl: vec!["-x".into(), "a b".into(), "IQN.2001-04.COM.X:Y".into()],
            ..Default::default()
        };
        let ops = plan(Some(&seen), &want, 1, &Accounts::default());
        assert_eq!(
            ops.iter().map(crate::model::iscsi::tgt::Op::redacted).collect::<Vec<_>>(),
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

    /// A desired target `vol1` with one LUN (a real file under `d`) and CHAP user `chapuser`.
    fn target(d: &tempfile::TempDir, secret: &str, iqn_name: &str) -> crate::model::iscsi::Target {
        let want = WantTarget {
            iqn: iqn(&format!("iqn.2024-05.test.gw:{iqn_name}")),
            luns: vec![WantLun {
                lun: 1,
                path: path(d, "/srv/csg/vol1.img"),
                readonly: false,
            }],
            initiators: BTreeSet::new(),
            networks: BTreeSet::new(),
            chap: Some(Chap {
                username: ChapUser::parse("u", "chapuser").unwrap(),
                secret: ChapSecret::parse("s", secret).unwrap(),
                mutual: None,
            }),
        };
        let spec = serde_json::from_value::<csg_protocol::methods::iscsi::TargetParams>(
            serde_json::json!({
                "name": "vol1", "iqn": want.iqn.as_str(),
                "luns": [{"lun": 1, "path": want.luns[0].path.as_str()}],
                "chap": {"username": "chapuser", "secret": secret},
            }),
        )
        .unwrap()
        .validate("iqn.2024-05.test.gw")
        .unwrap();
        crate::model::iscsi::Target {
            desired: crate::model::iscsi::Desired::from_spec(&spec),
            want,
        }
    }

    fn snapshot(show: &str, accounts: &[&str]) -> Snapshot {
        Snapshot {
            targets: parse_show(show).into_iter().map(Seen::Tgt).collect(),
            raw: Raw::Tgt {
                accounts: accounts
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect(),
            },
        }
    }

    fn request(change: Change, force: bool) -> Request {
        Request {
            name: Some(csg_protocol::methods::iscsi::TargetName::parse("vol1").unwrap()),
            change,
            others: BTreeMap::new(),
            force,
        }
    }

    fn shown(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Run(op) => op.redacted(),
                Step::Evict(t) => format!("evict {}", t.tid),
            })
            .collect()
    }

    fn no_guard() -> Result<ChapSecret, String> {
        Err("no guard secret was expected".into())
    }

    #[test]
    fn one_snapshot_plans_a_whole_change() {
        let d = tempfile::tempdir().unwrap();
        let pp = path(&d, "/srv/csg/vol1.img");
        let pp = pp.as_str();
        // Create on a tgtd that has target 1 already: the next id, nothing read again.
        let t = target(&d, "Secret12chars", "vol3");
        let steps = plan_request(
            &snapshot(SHOW, &["chapuser", "mutu"]),
            &request(Change::Create(Box::new(t.clone())), false),
            no_guard,
        )
        .unwrap();
        assert_eq!(
            shown(&steps),
            vec![
                "tgtadm --lld iscsi --mode target --op new --tid 3 --targetname iqn.2024-05.test.gw:vol3".to_string(),
                // tgtd has the account (another secret, perhaps): it is made ours.
                "tgtadm --lld iscsi --mode account --op delete --user chapuser".into(),
                "tgtadm --lld iscsi --mode account --op new --user chapuser --password <hidden>".into(),
                "tgtadm --lld iscsi --mode account --op bind --tid 3 --user chapuser".into(),
                format!("tgtadm --lld iscsi --mode logicalunit --op new --tid 3 --lun 1 --backing-store {pp}"),
            ]
        );
        // A renamed target with sessions, forced: evicted, deleted, made under the new IQN;
        // the account keeps its secret, so no guard is needed.
        let from = target(&d, "Secret12chars", "vol1").desired;
        let steps = plan_request(
            &snapshot(SHOW, &["chapuser"]),
            &request(
                Change::Update {
                    from,
                    to: Box::new(t.clone()),
                },
                true,
            ),
            no_guard,
        )
        .unwrap();
        assert_eq!(
            shown(&steps)[..3],
            [
                "evict 1".to_string(),
                "tgtadm --lld iscsi --mode target --op delete --force --tid 1".into(),
                "tgtadm --lld iscsi --mode target --op new --tid 3 --targetname iqn.2024-05.test.gw:vol3".into(),
            ]
        );
        // A new secret for an account in use: the guard comes from the given source, and
        // without a source the change fails instead of going on without the guard.
        let mut seen = SHOW.to_string();
        seen = seen.replace("        mutu (outgoing)\n", "");
        let from = target(&d, "Secret12chars", "vol1").desired;
        let to = target(&d, "NewSecret12ch", "vol1");
        let change = Change::Update {
            from,
            to: Box::new(to),
        };
        let snap = snapshot(&seen, &["chapuser"]);
        let steps = plan_request(&snap, &request(change.clone(), false), || {
            Ok(ChapSecret::parse("g", "Guard123secret").unwrap())
        })
        .unwrap();
        assert!(
            shown(&steps).contains(
                &"tgtadm --lld iscsi --mode account --op bind --tid 1 --user csg-guard-1"
                    .to_string()
            ),
            "{:?}",
            shown(&steps)
        );
        assert_eq!(
            plan_request(&snap, &request(change, false), no_guard),
            Err(PlanError::Internal("no guard secret was expected".into()))
        );
        // Delete: the target and the account nobody else uses.
        let steps = plan_request(
            &snapshot(SHOW, &["chapuser"]),
            &request(
                Change::Delete(target(&d, "Secret12chars", "vol1").desired),
                false,
            ),
            no_guard,
        )
        .unwrap();
        assert_eq!(
            shown(&steps),
            vec![
                "tgtadm --lld iscsi --mode target --op delete --tid 1",
                "tgtadm --lld iscsi --mode account --op delete --user chapuser",
            ]
        );
        // A stray target goes without force; a LIO snapshot is refused.
        let steps = plan_request(
            &snapshot(SHOW, &[]),
            &request(Change::Stray("iqn.2024-05.test.gw:vol2".into()), false),
            no_guard,
        )
        .unwrap();
        assert_eq!(
            shown(&steps),
            vec!["tgtadm --lld iscsi --mode target --op delete --tid 2"]
        );
        let lio = Snapshot {
            targets: vec![],
            raw: Raw::Lio(Default::default()),
        };
        assert!(matches!(
            plan_request(&lio, &request(Change::Stray("x".into()), false), no_guard),
            Err(PlanError::Internal(_))
        ));
    }

    #[test]
    fn random_secrets_come_from_the_os_and_are_valid_chap_secrets() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.expose().len(), 16);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
