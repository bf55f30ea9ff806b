//! `smb.*`: Samba shares (in Samba's registry) and Samba users.
//!
//! Ownership: the agent manages only what it created, i.e. what is in its desired state.
//! Registry shares and passdb users it did not create are reported (`managed: false`) and
//! counted as drift, but never changed: a create, update or delete naming one is `CONFLICT`.
//!
//! Every mutation runs under one lock: check smbd is up (`UNAVAILABLE` otherwise, nothing
//! changed), save the new desired state, apply it, reload smbd, read it back; on any failure the
//! previous registry section and the previous desired state are put back and the error says so.
//! Reads (`get`, `list`) take no lock and read the registry directly.
//!
//! Users: the password goes to `smbpasswd` on stdin and nowhere else (not logged, not stored,
//! not in any reply). A Samba user needs a Unix account: when there is none the agent creates a
//! system account with no home and no login shell (`smb.create_unix_users`, default true) and
//! removes it again on `smb.user.delete`; an existing account it did not create is accepted only
//! with a uid of at least `smb.min_existing_uid` (1000), so root and system accounts cannot be
//! given an SMB password.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use csg_protocol::methods::smb::{
    self as m, DeleteResult, ShareInfo, ShareList, ShareName, ShareRef, ShareResult, ShareSpec,
    UserInfo, UserList, UserName, UserRef, UserSet, UserSetResult,
};
use csg_protocol::methods::{Changes, MethodResult, SmbChange, SmbMethod};
use csg_protocol::status::{FamilySummary, ServiceState};
use csg_protocol::{ErrorCode, RpcError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{BoxFut, Family, StorageCtx};
use crate::backends::samba::Samba;
use crate::config::smb::{SmbBackendKind, SmbSettings};
use crate::exec::{self, ToolError};
use crate::model::smb::{drift, find, share_param_map, Params, Registry, SharePlan, SmbBackend};
use crate::storage::paths::PathKind;

const FAMILY: &str = "smb";

const REMOVING: &str = "deleted by the console but still in Samba (the agent stopped half-way); \
                        the next delete or sys.reconcile removes it";

/// Existing accounts from here up (Debian's UID_MAX is 60000; 65534 is `nobody`) are not
/// regular users and cannot get an SMB password.
const MAX_EXISTING_UID: u32 = 60000;

/// Builds the family for the configured backend (`None` when disabled).
pub fn build(cfg: &SmbSettings, ctx: &StorageCtx) -> Result<Option<Smb>, String> {
    match cfg.backend {
        SmbBackendKind::Disabled => Ok(None),
        SmbBackendKind::Samba => {
            for (k, p) in [
                ("smb.smb_conf", &cfg.smb_conf),
                ("smb.net", &cfg.net),
                ("smb.smbcontrol", &cfg.smbcontrol),
                ("smb.smbpasswd", &cfg.smbpasswd),
                ("smb.pdbedit", &cfg.pdbedit),
                ("smb.testparm", &cfg.testparm),
            ] {
                if !p.exists() {
                    return Err(format!(
                        "{k} = {:?} does not exist (is Samba installed?)",
                        p.display().to_string()
                    ));
                }
            }
            let state_dir = ctx
                .state
                .path()
                .and_then(std::path::Path::parent)
                .ok_or("SMB needs a state directory on disk")?
                .to_path_buf();
            Ok(Some(Smb {
                samba: Samba::new(cfg.clone(), ctx.timeout, &state_dir),
                cfg: cfg.clone(),
                ctx: ctx.clone(),
                lock: Mutex::new(()),
                world_warned: AtomicBool::new(false),
            }))
        }
    }
}

/// The family's part of the desired state. No passwords, ever.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmbState {
    /// Lower-case share name → the share as the console asked for it.
    #[serde(default)]
    shares: BTreeMap<String, ShareSpec>,
    /// Users the agent set up.
    #[serde(default)]
    users: BTreeMap<UserName, ManagedUser>,
    /// Shares and users deleted from the desired state whose removal from Samba is not
    /// confirmed yet (the agent may die in between): still the agent's, and the next delete
    /// or reconcile finishes the job.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    removing_shares: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    removing_users: BTreeMap<UserName, ManagedUser>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagedUser {
    /// The agent created the Unix account (and removes it with the Samba user).
    unix_user_created: bool,
}

/// The family, on Samba or another [`SmbBackend`].
pub struct Smb<B: SmbBackend = Samba> {
    samba: B,
    cfg: SmbSettings,
    ctx: StorageCtx,
    /// Serializes mutations (and reconcile).
    lock: Mutex<()>,
    /// Stored shares the world policy refuses are named once per start.
    world_warned: AtomicBool,
}

fn invalid(e: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

/// Where useradd keeps the account databases and takes its lock files.
const ACCOUNTS_DIR: &str = "/etc";

/// Why no Unix account can be created, when that is known before trying: the agent's unit
/// mounts /etc read-only (`ProtectSystem=strict`), and useradd would only fail with "cannot
/// lock /etc/passwd; try again later", which reads as if a retry could help.
fn accounts_read_only() -> Option<String> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    match statvfs(ACCOUNTS_DIR) {
        Ok(st) if st.flags().contains(FsFlags::ST_RDONLY) => Some(format!(
            "{ACCOUNTS_DIR} is read-only for the agent (its systemd unit's ProtectSystem=strict)"
        )),
        _ => None,
    }
}

fn backend(e: ToolError) -> RpcError {
    e.to_rpc()
}

fn state_err(e: crate::state::StateError) -> RpcError {
    e.to_rpc()
}

/// How a restore went: the backend's part, then the desired state's.
fn restore_outcome(
    backend: Result<(), ToolError>,
    state: Result<(), RpcError>,
) -> Result<(), RpcError> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = backend {
        problems.push(e.to_string());
    }
    if let Err(e) = state {
        problems.push(e.message);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RpcError::internal(problems.join("; ")))
    }
}

/// One entry of a reconcile report about a share.
fn share_change(
    name: &str,
    action: &str,
    drift: Option<Vec<String>>,
    error: Option<String>,
) -> SmbChange {
    SmbChange {
        share: Some(name.to_string()),
        user: None,
        action: action.to_string(),
        drift,
        error,
    }
}

/// One entry of a reconcile report about a user.
fn user_change(name: &str, action: &str, error: Option<String>) -> SmbChange {
    SmbChange {
        share: None,
        user: Some(name.to_string()),
        action: action.to_string(),
        drift: None,
        error,
    }
}

fn unmanaged_share(name: &str) -> RpcError {
    RpcError::new(
        ErrorCode::Conflict,
        format!(
            "share {name:?} exists in Samba's registry but was not created by this agent; \
             the agent leaves it alone"
        ),
    )
}

impl<B: SmbBackend> Smb<B> {
    pub async fn call(&self, method: SmbMethod) -> Result<MethodResult, RpcError> {
        match method {
            SmbMethod::ShareCreate(spec) => self.share_create(spec).await,
            SmbMethod::ShareUpdate(spec) => self.share_update(spec).await,
            SmbMethod::ShareDelete(r) => self.share_delete(r).await,
            SmbMethod::ShareGet(r) => self.share_get(r).await,
            SmbMethod::ShareList(page) => {
                let (shares, next_cursor) = page.apply(self.shares().await?, |s| &s.name);
                Ok(MethodResult::SmbShareList(ShareList {
                    shares,
                    next_cursor,
                }))
            }
            SmbMethod::UserSet(p) => self.user_set(p).await,
            SmbMethod::UserDelete(r) => self.user_delete(r).await,
            SmbMethod::UserList(page) => {
                let (users, next_cursor) = page.apply(self.users().await?, |u| &u.username);
                Ok(MethodResult::SmbUserList(UserList { users, next_cursor }))
            }
        }
    }

    async fn state(&self) -> Result<SmbState, RpcError> {
        self.ctx.state.get(FAMILY).await.map_err(state_err)
    }

    async fn put_state(&self, s: &SmbState) -> Result<(), RpcError> {
        self.ctx.state.put(FAMILY, s).await.map_err(state_err)
    }

    /// smbd answers, and its smb.conf serves registry shares.
    async fn preflight(&self) -> Result<(), RpcError> {
        self.samba.ping().await.map_err(backend)?;
        self.samba.check_registry().await.map_err(backend)
    }

    /// The checks on the host: the path (inside a root, a directory, no symlinks) and the
    /// accounts named by force_user / force_group.
    async fn check_host(&self, spec: &ShareSpec) -> Result<(), RpcError> {
        self.ctx
            .roots
            .resolve("path", spec.path.as_str(), PathKind::Dir)
            .map_err(invalid)?;
        // Forcing root would make every client of the share root inside it.
        if let Some(u) = &spec.force_user {
            match self.samba.unix_uid(u).await.map_err(backend)? {
                None => return Err(invalid(format!("force_user \"{u}\": no such Unix user"))),
                Some(0) => {
                    return Err(invalid(format!("force_user \"{u}\": uid 0 is not allowed")))
                }
                Some(_) => {}
            }
        }
        if let Some(g) = &spec.force_group {
            match self.samba.unix_gid(g).await.map_err(backend)? {
                None => return Err(invalid(format!("force_group \"{g}\": no such Unix group"))),
                Some(0) => {
                    return Err(invalid(format!(
                        "force_group \"{g}\": gid 0 is not allowed"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn info(name: &str, desired: Option<&ShareSpec>, actual: Option<&Params>) -> ShareInfo {
        let drift = match desired {
            Some(d) => drift(&share_param_map(d), actual),
            None => vec!["not created by this agent (unmanaged)".to_string()],
        };
        ShareInfo {
            name: desired.map(|d| d.name.to_string()).unwrap_or(name.into()),
            managed: desired.is_some(),
            desired: desired.cloned(),
            actual: actual.cloned(),
            drift,
        }
    }

    /// A registry share the agent was deleting is still its own.
    fn mark_removing(st: &SmbState, info: &mut ShareInfo) {
        if info.desired.is_none() && st.removing_shares.contains(&info.name.to_ascii_lowercase()) {
            info.managed = true;
            info.drift = vec![REMOVING.to_string()];
        }
    }

    /// Saves `next`, takes the registry section `name` from the snapshot `reg` to `want`
    /// (`None`: deleted), reloads and reads it back; on failure the backend undoes the plan and
    /// `prev_state` is saved again.
    async fn apply_share(
        &self,
        prev_state: &SmbState,
        next_state: &SmbState,
        reg: &Registry,
        name: &ShareName,
        want: Option<&ShareSpec>,
    ) -> Result<(), RpcError> {
        let plan = SharePlan::new(reg, name, want);
        self.put_state(next_state).await?;
        let Err(e) = self.samba.apply(&plan).await else {
            return Ok(());
        };
        let undone = self.samba.undo(&plan).await;
        let restored = restore_outcome(undone, self.put_state(prev_state).await);
        // smbd gone in the middle (killed, crashed): what failed is its absence (smbcontrol
        // finds no smbd to reload), not a refusal. Say so as a daemon down before the change
        // would be: UNAVAILABLE, retryable.
        let e = match e {
            ToolError::Failed { .. } | ToolError::Unexpected(_) => match self.samba.ping().await {
                Err(ToolError::Unavailable { program, detail }) => ToolError::Unavailable {
                    program,
                    detail: format!("{detail} (it stopped during the change: {e})"),
                },
                _ => e,
            },
            e => e,
        };
        Err(exec::rolled_back(backend(e), restored))
    }

    /// smbd is up, the desired state, and the one registry snapshot a share change is planned
    /// from (under the lock).
    async fn share_now(&self) -> Result<(SmbState, Registry), RpcError> {
        self.preflight().await?;
        let st = self.state().await?;
        let reg = self.samba.observe().await.map_err(backend)?;
        Ok((st, reg))
    }

    async fn share_create(&self, spec: ShareSpec) -> Result<MethodResult, RpcError> {
        spec.check_world(&self.cfg.world).map_err(invalid)?;
        let _g = self.lock.lock().await;
        let (st, reg) = self.share_now().await?;
        let actual = find(&reg, &spec.name).map(|(_, p)| p);
        match st.shares.get(&spec.name.key()) {
            Some(cur) if *cur != spec => {
                return Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "share {:?} already exists with a different spec; use smb.share.update \
                         to change it",
                        cur.name.as_str()
                    ),
                ))
            }
            Some(cur) if drift(&share_param_map(cur), actual).is_empty() => {
                return Ok(MethodResult::SmbShare(Box::new(ShareResult {
                    changed: false,
                    share: Self::info(spec.name.as_str(), Some(cur), actual),
                })));
            }
            // Identical, but Samba lost or changed it: apply it again.
            Some(_) => {}
            None if actual.is_some() && !st.removing_shares.contains(&spec.name.key()) => {
                return Err(unmanaged_share(spec.name.as_str()))
            }
            None => {}
        }
        self.check_host(&spec).await?;
        let mut next = st.clone();
        next.shares.insert(spec.name.key(), spec.clone());
        next.removing_shares.remove(&spec.name.key());
        self.apply_share(&st, &next, &reg, &spec.name, Some(&spec))
            .await?;
        self.share_result(&spec).await
    }

    async fn share_result(&self, spec: &ShareSpec) -> Result<MethodResult, RpcError> {
        let reg = self.samba.observe().await.map_err(backend)?;
        let actual = find(&reg, &spec.name).map(|(_, p)| p);
        Ok(MethodResult::SmbShare(Box::new(ShareResult {
            changed: true,
            share: Self::info(spec.name.as_str(), Some(spec), actual),
        })))
    }

    async fn share_update(&self, mut spec: ShareSpec) -> Result<MethodResult, RpcError> {
        spec.check_world(&self.cfg.world).map_err(invalid)?;
        let _g = self.lock.lock().await;
        let (st, reg) = self.share_now().await?;
        let actual = find(&reg, &spec.name).map(|(_, p)| p);
        let Some(cur) = st.shares.get(&spec.name.key()) else {
            return Err(match actual {
                Some(_) => unmanaged_share(spec.name.as_str()),
                None => RpcError::new(
                    ErrorCode::NotFound,
                    format!("no share {:?}", spec.name.as_str()),
                ),
            });
        };
        // Names are case-insensitive: the share keeps the spelling it was created with.
        spec.name = cur.name.clone();
        if spec == *cur && drift(&share_param_map(cur), actual).is_empty() {
            return Ok(MethodResult::SmbShare(Box::new(ShareResult {
                changed: false,
                share: Self::info(spec.name.as_str(), Some(cur), actual),
            })));
        }
        self.check_host(&spec).await?;
        let mut next = st.clone();
        next.shares.insert(spec.name.key(), spec.clone());
        self.apply_share(&st, &next, &reg, &spec.name, Some(&spec))
            .await?;
        self.share_result(&spec).await
    }

    async fn share_delete(&self, r: ShareRef) -> Result<MethodResult, RpcError> {
        let _g = self.lock.lock().await;
        let (st, reg) = self.share_now().await?;
        let actual = find(&reg, &r.name).map(|(_, p)| p);
        let key = r.name.key();
        let name = match (st.shares.get(&key), actual) {
            (Some(cur), _) => cur.name.clone(),
            (None, Some(_)) if st.removing_shares.contains(&key) => r.name.clone(),
            (None, Some(_)) => return Err(unmanaged_share(r.name.as_str())),
            (None, None) => return Ok(MethodResult::SmbDelete(DeleteResult { existed: false })),
        };
        let mut next = st.clone();
        next.shares.remove(&key);
        next.removing_shares.insert(key.clone());
        self.apply_share(&st, &next, &reg, &name, None).await?;
        // Gone from Samba: the tombstone goes too (if this write fails, reconcile drops it).
        next.removing_shares.remove(&key);
        if let Err(e) = self.put_state(&next).await {
            warn!(share = %name, error = %e.message, "cannot drop the share's tombstone");
        }
        Ok(MethodResult::SmbDelete(DeleteResult { existed: true }))
    }

    async fn share_get(&self, r: ShareRef) -> Result<MethodResult, RpcError> {
        let st = self.state().await?;
        let reg = self.samba.observe().await.map_err(backend)?;
        let actual = find(&reg, &r.name);
        let desired = st.shares.get(&r.name.key());
        if desired.is_none() && actual.is_none() {
            return Err(RpcError::new(
                ErrorCode::NotFound,
                format!("no share {:?}", r.name.as_str()),
            ));
        }
        let name = actual.map_or(r.name.as_str(), |a| a.0.as_str());
        let mut info = Self::info(name, desired, actual.map(|a| &a.1));
        Self::mark_removing(&st, &mut info);
        Ok(MethodResult::SmbShareGet(Box::new(info)))
    }

    async fn shares(&self) -> Result<Vec<ShareInfo>, RpcError> {
        let st = self.state().await?;
        let reg = self.samba.observe().await.map_err(backend)?;
        let mut out: BTreeMap<String, ShareInfo> = BTreeMap::new();
        for (key, spec) in &st.shares {
            let actual = find(&reg, &spec.name).map(|(_, p)| p);
            out.insert(
                key.clone(),
                Self::info(spec.name.as_str(), Some(spec), actual),
            );
        }
        for (name, p) in &reg {
            let key = name.to_ascii_lowercase();
            if key == "global" || out.contains_key(&key) {
                continue;
            }
            let mut info = Self::info(name, None, Some(p));
            Self::mark_removing(&st, &mut info);
            out.insert(key, info);
        }
        Ok(out.into_values().collect())
    }

    // ----- users -----

    /// smbd is up, the desired state, and whether `user` is in the passdb (under the lock).
    async fn user_now(&self, user: &UserName) -> Result<(SmbState, bool), RpcError> {
        self.preflight().await?;
        let st = self.state().await?;
        let passdb = self.samba.passdb_users().await.map_err(backend)?;
        Ok((st, passdb.iter().any(|n| n == user.as_str())))
    }

    async fn user_set(&self, p: UserSet) -> Result<MethodResult, RpcError> {
        let user = &p.username;
        let _g = self.lock.lock().await;
        let (st, in_passdb) = self.user_now(user).await?;
        let managed = st
            .users
            .get(user)
            .or_else(|| st.removing_users.get(user))
            .copied();
        if managed.is_none() && in_passdb {
            return Err(RpcError::new(
                ErrorCode::Conflict,
                format!(
                    "user \"{user}\" is in Samba's passdb but was not set up by this agent; \
                     the agent leaves it alone"
                ),
            ));
        }
        let ours = managed.is_some_and(|m| m.unix_user_created);
        let mut create_unix = false;
        match self.samba.unix_uid(user).await.map_err(backend)? {
            None if !self.cfg.create_unix_users => {
                return Err(invalid(format!(
                    "username \"{user}\": no such Unix user, and smb.create_unix_users is false"
                )))
            }
            None => {
                if let Some(why) = accounts_read_only() {
                    return Err(RpcError::new(
                        ErrorCode::BackendError,
                        format!(
                            "username \"{user}\": no such Unix user, and it cannot be created \
                             here: {why}. Create the account first (uid from \
                             smb.min_existing_uid = {}), or let the agent create accounts with \
                             the drop-in in docs/operations.md (\"Samba users\"); nothing was \
                             changed",
                            self.cfg.min_existing_uid
                        ),
                    ));
                }
                create_unix = true;
            }
            Some(0) => {
                return Err(invalid(format!(
                    "username \"{user}\": uid 0 cannot get an SMB password"
                )))
            }
            Some(uid) if !ours && !(self.cfg.min_existing_uid..MAX_EXISTING_UID).contains(&uid) => {
                return Err(invalid(format!(
                    "username \"{user}\": an existing account with uid {uid} cannot get an SMB \
                     password (only uids from smb.min_existing_uid = {} below {MAX_EXISTING_UID}: \
                     not system accounts, not nobody)",
                    self.cfg.min_existing_uid
                )))
            }
            Some(_) => {}
        }
        let mut next = st.clone();
        next.removing_users.remove(user);
        next.users.insert(
            user.clone(),
            ManagedUser {
                unix_user_created: ours || create_unix,
            },
        );
        self.put_state(&next).await?;
        let apply = async {
            if create_unix {
                self.samba.useradd(user).await?;
            }
            self.samba.set_password(user, &p.password).await?;
            if !self
                .samba
                .passdb_users()
                .await?
                .iter()
                .any(|n| n == user.as_str())
            {
                return Err(ToolError::Unexpected(format!(
                    "smbpasswd succeeded but {user} is not in passdb"
                )));
            }
            Ok(())
        };
        if let Err(e) = apply.await {
            // smbpasswd changes nothing when it fails; what may need undoing is a new passdb
            // entry and the Unix account made for it.
            let restore = async {
                if !in_passdb
                    && self
                        .samba
                        .passdb_users()
                        .await?
                        .iter()
                        .any(|n| n == user.as_str())
                {
                    self.samba.delete_user(user).await?;
                }
                if create_unix && self.samba.unix_uid(user).await?.is_some() {
                    self.samba.userdel(user).await?;
                }
                Ok::<_, ToolError>(())
            };
            let undone = restore.await;
            let restored = restore_outcome(undone, self.put_state(&st).await);
            return Err(exec::rolled_back(backend(e), restored));
        }
        Ok(MethodResult::SmbUserSet(UserSetResult {
            username: user.to_string(),
            created: !in_passdb,
            unix_user_created: create_unix,
        }))
    }

    async fn user_delete(&self, r: UserRef) -> Result<MethodResult, RpcError> {
        let user = &r.username;
        let _g = self.lock.lock().await;
        let (st, in_passdb) = self.user_now(user).await?;
        let managed = st.users.get(user).copied();
        let tombstone = st.removing_users.get(user).copied();
        let Some(managed) = managed.or(tombstone.filter(|_| in_passdb)) else {
            return if in_passdb {
                Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!(
                        "user \"{user}\" is in Samba's passdb but was not set up by this agent; \
                         the agent leaves it alone"
                    ),
                ))
            } else {
                Ok(MethodResult::SmbDelete(DeleteResult { existed: false }))
            };
        };
        let mut next = st.clone();
        next.users.remove(user);
        next.removing_users.insert(user.clone(), managed);
        self.put_state(&next).await?;
        if in_passdb {
            if let Err(e) = self.samba.delete_user(user).await {
                let restored = self.put_state(&st).await;
                return Err(exec::rolled_back(backend(e), restored));
            }
        }
        if managed.unix_user_created && self.samba.unix_uid(user).await.map_err(backend)?.is_some()
        {
            self.userdel_retrying(user).await.map_err(|e| {
                RpcError::new(
                    ErrorCode::BackendError,
                    format!(
                        "the Samba account {user} was removed, but its Unix account was not: {e}"
                    ),
                )
            })?;
        }
        next.removing_users.remove(user);
        if let Err(e) = self.put_state(&next).await {
            warn!(user = %user, error = %e.message, "cannot drop the user's tombstone");
        }
        Ok(MethodResult::SmbDelete(DeleteResult { existed: true }))
    }

    /// userdel refuses while a process (an smbd serving a session that just ended) still runs
    /// as the user: try a few times.
    async fn userdel_retrying(&self, user: &UserName) -> Result<(), ToolError> {
        let mut tries = 1;
        loop {
            match self.samba.userdel(user).await {
                Ok(()) => return Ok(()),
                Err(e) if tries == 5 => return Err(e),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    async fn users(&self) -> Result<Vec<UserInfo>, RpcError> {
        let st = self.state().await?;
        let passdb = self.samba.passdb_users().await.map_err(backend)?;
        let mut out: BTreeMap<String, UserInfo> = BTreeMap::new();
        for (u, mu) in &st.users {
            let in_passdb = passdb.iter().any(|n| n == u.as_str());
            out.insert(
                u.to_string(),
                UserInfo {
                    username: u.to_string(),
                    managed: true,
                    in_passdb,
                    unix_user_created: mu.unix_user_created,
                    drift: if in_passdb {
                        vec![]
                    } else {
                        vec!["missing from Samba's passdb: set its password again".into()]
                    },
                },
            );
        }
        for n in passdb {
            let removing = UserName::parse(&n)
                .ok()
                .and_then(|u| st.removing_users.get(&u).copied());
            out.entry(n.clone()).or_insert_with(|| UserInfo {
                username: n,
                managed: removing.is_some(),
                in_passdb: true,
                unix_user_created: removing.is_some_and(|m| m.unix_user_created),
                drift: vec![match removing {
                    Some(_) => REMOVING.into(),
                    None => "not set up by this agent (unmanaged)".into(),
                }],
            });
        }
        Ok(out.into_values().collect())
    }

    async fn do_reconcile(&self) -> Result<Vec<SmbChange>, RpcError> {
        let _g = self.lock.lock().await;
        let (st, reg) = self.share_now().await?;
        if !self.world_warned.swap(true, Ordering::Relaxed) {
            // Shares stored before the policy (or under a laxer config) stay as they are, so
            // an upgrade never locks their clients out; the operator is told which ones.
            for spec in st.shares.values() {
                for (host, why) in spec.world_hosts(&self.cfg.world) {
                    warn!(
                        share = %spec.name,
                        host = %host,
                        "stored SMB share reaches the world and is kept as it is: {why}; \
                         an update must narrow hosts_allow (or delete it)"
                    );
                }
            }
        }
        let mut changes = Vec::new();
        let mut reload = false;
        for spec in st.shares.values() {
            let actual = find(&reg, &spec.name).map(|(_, p)| p);
            let d = drift(&share_param_map(spec), actual);
            if d.is_empty() {
                continue;
            }
            let action = if actual.is_some() {
                "updated"
            } else {
                "created"
            };
            let r = match self.check_host(spec).await {
                Ok(()) => self
                    .samba
                    .import(&spec.name, &share_param_map(spec))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            match r {
                Ok(()) => {
                    reload = true;
                    info!(share = %spec.name, action, "smb reconcile");
                    changes.push(share_change(spec.name.as_str(), action, Some(d), None));
                }
                Err(e) => {
                    warn!(share = %spec.name, error = %e, "smb reconcile failed");
                    changes.push(share_change(spec.name.as_str(), "failed", Some(d), Some(e)));
                }
            }
        }
        let mut done = st.clone();
        for key in &st.removing_shares {
            let Some((rname, _)) = reg.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)) else {
                done.removing_shares.remove(key);
                continue;
            };
            let r = match ShareName::parse(rname) {
                Ok(n) => self.samba.delete(&n).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(()) => {
                    let _ = self.samba.close_share(rname).await;
                    reload = true;
                    done.removing_shares.remove(key);
                    info!(share = %rname, action = "deleted", "smb reconcile");
                    changes.push(share_change(rname, "deleted", None, None));
                }
                Err(e) => changes.push(share_change(rname, "failed", None, Some(e))),
            }
        }
        if reload {
            self.samba.reload().await.map_err(backend)?;
        }
        let passdb = self.samba.passdb_users().await.map_err(backend)?;
        for (u, mu) in &st.removing_users {
            let mut r = Ok(());
            if passdb.iter().any(|n| n == u.as_str()) {
                r = self.samba.delete_user(u).await;
            }
            if r.is_ok() && mu.unix_user_created {
                r = match self.samba.unix_uid(u).await {
                    Ok(Some(_)) => self.samba.userdel(u).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            match r {
                Ok(()) => {
                    done.removing_users.remove(u);
                    changes.push(user_change(u.as_str(), "deleted", None));
                }
                Err(e) => changes.push(user_change(u.as_str(), "failed", Some(e.to_string()))),
            }
        }
        if done != st {
            self.put_state(&done).await?;
        }
        for u in st.users.keys() {
            if !passdb.iter().any(|n| n == u.as_str()) {
                changes.push(user_change(
                    u.as_str(),
                    "failed",
                    Some(
                        "missing from Samba's passdb; the agent keeps no passwords: set it again \
                         with smb.user.set"
                            .into(),
                    ),
                ));
            }
        }
        Ok(changes)
    }

    async fn do_summary(&self) -> Result<FamilySummary, RpcError> {
        let shares = self.shares().await?;
        let users = self.users().await?;
        let st = self.state().await?;
        Ok(FamilySummary {
            count: (st.shares.len() + st.users.len()) as u64,
            drift: (shares.iter().filter(|s| !s.drift.is_empty()).count()
                + users.iter().filter(|u| !u.drift.is_empty()).count()) as u64,
        })
    }
}

impl<B: SmbBackend> Family for Smb<B> {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn backend(&self) -> &'static str {
        self.samba.kind()
    }

    fn methods(&self) -> &'static [&'static str] {
        m::METHODS
    }

    fn reconcile(&self) -> BoxFut<'_, Result<Changes, RpcError>> {
        Box::pin(async move { self.do_reconcile().await.map(Changes::Smb) })
    }

    fn service(&self) -> BoxFut<'_, ServiceState> {
        Box::pin(async move {
            ServiceState {
                backend: self.samba.kind().into(),
                up: self.samba.ping().await.is_ok(),
            }
        })
    }

    fn summary(&self) -> BoxFut<'_, FamilySummary> {
        Box::pin(async move {
            match self.do_summary().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e.message, "smb summary: cannot read Samba's state");
                    let count = self
                        .state()
                        .await
                        .map_or(0, |s| (s.shares.len() + s.users.len()) as u64);
                    // Unverifiable counts as drifted.
                    FamilySummary {
                        count,
                        drift: count,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::smb::RawSmb;
    use crate::state::StateStore;
    use crate::storage::paths::Roots;
    use csg_protocol::methods::smb::{GroupName, Password};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A registry in memory that counts its reads and applies; only what the share flows call
    /// is implemented, the rest answers an error.
    #[derive(Default)]
    struct Fake {
        reg: std::sync::Mutex<Registry>,
        observes: AtomicUsize,
        applies: AtomicUsize,
        undos: AtomicUsize,
        fail_apply: AtomicBool,
    }

    fn not_faked(what: &str) -> ToolError {
        ToolError::Unexpected(format!("{what} is not part of the fake"))
    }

    impl Fake {
        /// Sets the registry section of `name` to `params` (`None`: removes it).
        fn put(&self, name: &ShareName, params: Option<&Params>) {
            let mut reg = self.reg.lock().unwrap();
            reg.retain(|(n, _)| !name.same(n));
            if let Some(p) = params {
                reg.push((name.to_string(), p.clone()));
            }
        }
    }

    impl SmbBackend for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        async fn ping(&self) -> Result<(), ToolError> {
            Ok(())
        }
        async fn check_registry(&self) -> Result<(), ToolError> {
            Ok(())
        }
        async fn observe(&self) -> Result<Registry, ToolError> {
            self.observes.fetch_add(1, Ordering::SeqCst);
            Ok(self.reg.lock().unwrap().clone())
        }
        async fn apply(&self, plan: &SharePlan) -> Result<(), ToolError> {
            self.applies.fetch_add(1, Ordering::SeqCst);
            // A failure half-way: the section is written, then the reload fails.
            self.put(&plan.name, plan.after());
            if self.fail_apply.load(Ordering::SeqCst) {
                return Err(ToolError::Failed {
                    program: "smbcontrol".into(),
                    status: 1,
                    stderr: "reload refused".into(),
                });
            }
            Ok(())
        }
        async fn undo(&self, plan: &SharePlan) -> Result<(), ToolError> {
            self.undos.fetch_add(1, Ordering::SeqCst);
            self.put(&plan.name, plan.before());
            Ok(())
        }
        async fn import(&self, _: &ShareName, _: &Params) -> Result<(), ToolError> {
            Err(not_faked("import"))
        }
        async fn delete(&self, _: &ShareName) -> Result<(), ToolError> {
            Err(not_faked("delete"))
        }
        async fn close_share(&self, _: &str) -> Result<(), ToolError> {
            Ok(())
        }
        async fn reload(&self) -> Result<(), ToolError> {
            Err(not_faked("reload"))
        }
        async fn passdb_users(&self) -> Result<Vec<String>, ToolError> {
            Err(not_faked("passdb_users"))
        }
        async fn set_password(&self, _: &UserName, _: &Password) -> Result<(), ToolError> {
            Err(not_faked("set_password"))
        }
        async fn delete_user(&self, _: &UserName) -> Result<(), ToolError> {
            Err(not_faked("delete_user"))
        }
        async fn unix_uid(&self, _: &UserName) -> Result<Option<u32>, ToolError> {
            Err(not_faked("unix_uid"))
        }
        async fn unix_gid(&self, _: &GroupName) -> Result<Option<u32>, ToolError> {
            Err(not_faked("unix_gid"))
        }
        async fn useradd(&self, _: &UserName) -> Result<(), ToolError> {
            Err(not_faked("useradd"))
        }
        async fn userdel(&self, _: &UserName) -> Result<(), ToolError> {
            Err(not_faked("userdel"))
        }
    }

    /// The family on the fake, a root in a temp dir holding `data/`, and the state in memory.
    fn family() -> (Smb<Fake>, tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let data = root.join("data");
        std::fs::create_dir(&data).unwrap();
        let mut problems = Vec::new();
        let cfg = RawSmb::default().validate(&mut problems);
        let family = Smb {
            samba: Fake::default(),
            cfg,
            ctx: StorageCtx {
                roots: Roots::new(vec![root]),
                state: Arc::new(StateStore::in_memory()),
                timeout: Duration::from_secs(5),
                allow_devices: false,
            },
            lock: Mutex::new(()),
            world_warned: AtomicBool::new(false),
        };
        (family, d, data.display().to_string())
    }

    fn spec(path: &str, comment: &str) -> ShareSpec {
        let serde_json::Value::Object(m) =
            serde_json::json!({"name": "data", "path": path, "comment": comment})
        else {
            unreachable!()
        };
        ShareSpec::from_params(m).unwrap()
    }

    fn changed(r: MethodResult) -> bool {
        match r {
            MethodResult::SmbShare(r) => r.changed,
            other => panic!("not a share result: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_create_reads_the_registry_once_saves_and_applies_and_a_repeat_changes_nothing() {
        let (f, _d, path) = family();
        let s = spec(&path, "");
        let r = f.call(SmbMethod::ShareCreate(s.clone())).await.unwrap();
        assert!(changed(r));
        // One snapshot under the lock, plus the read-back for the reply.
        assert_eq!(f.samba.observes.load(Ordering::SeqCst), 2);
        assert_eq!(f.samba.applies.load(Ordering::SeqCst), 1);
        assert_eq!(f.state().await.unwrap().shares.get("data"), Some(&s));
        assert_eq!(
            find(&f.samba.reg.lock().unwrap(), &s.name).map(|(_, p)| p.clone()),
            Some(share_param_map(&s))
        );

        let r = f.call(SmbMethod::ShareCreate(s.clone())).await.unwrap();
        assert!(!changed(r));
        assert_eq!(f.samba.observes.load(Ordering::SeqCst), 3);
        assert_eq!(f.samba.applies.load(Ordering::SeqCst), 1);
    }

    /// Runs `m` with an apply that fails; the error names the failure and the restore.
    async fn fails_and_restores(f: &Smb<Fake>, m: SmbMethod) {
        f.samba.fail_apply.store(true, Ordering::SeqCst);
        let e = f.call(m).await.unwrap_err();
        f.samba.fail_apply.store(false, Ordering::SeqCst);
        assert!(
            e.message.contains("reload refused")
                && e.message.ends_with("; the previous state was restored"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_failed_apply_restores_the_previous_state_and_says_so() {
        let (f, _d, path) = family();
        let first = spec(&path, "");
        fails_and_restores(&f, SmbMethod::ShareCreate(first.clone())).await;
        assert_eq!(f.state().await.unwrap(), SmbState::default());
        assert!(f.samba.reg.lock().unwrap().is_empty());

        f.call(SmbMethod::ShareCreate(first.clone())).await.unwrap();
        let before = f.state().await.unwrap();
        fails_and_restores(&f, SmbMethod::ShareUpdate(spec(&path, "changed"))).await;
        assert_eq!(f.samba.undos.load(Ordering::SeqCst), 2);
        assert_eq!(f.state().await.unwrap(), before);
        assert_eq!(
            find(&f.samba.reg.lock().unwrap(), &first.name).map(|(_, p)| p.clone()),
            Some(share_param_map(&first))
        );
    }

    #[tokio::test]
    async fn deleting_a_missing_share_answers_existed_false_without_applying() {
        let (f, _d, _path) = family();
        let r = f
            .call(SmbMethod::ShareDelete(ShareRef {
                name: ShareName::parse("nothing").unwrap(),
            }))
            .await
            .unwrap();
        assert!(matches!(
            r,
            MethodResult::SmbDelete(DeleteResult { existed: false })
        ));
        assert_eq!(f.samba.applies.load(Ordering::SeqCst), 0);
        assert_eq!(f.state().await.unwrap(), SmbState::default());
    }
}
