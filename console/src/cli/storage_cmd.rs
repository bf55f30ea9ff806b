//! `csgctl nfs …`, `csgctl smb …`, `csgctl iscsi …`: friendly front ends to the storage
//! methods. Each turns flags into the protocol's typed [`Method`], sends it like `csgctl call`
//! (same retries, ids, exit codes and hints), and prints a table made from the typed result for
//! people, or the result's JSON for scripts (`--json`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use csg_console::{CallError, CallOptions, Console};
use csg_protocol::methods::{
    iscsi, nfs, smb, IscsiMethod, ListParams, Method, MethodResult, NfsMethod, SmbMethod,
};
use csg_protocol::validate::{Cidr, ValueError};
use csg_protocol::{ErrorCode, InstanceId, Reply, ReplyBody, RequestId};
use serde::de::value::StrDeserializer;
use serde::de::DeserializeOwned;

use super::duration::{format_duration, positive_duration};
use super::render::render;
use super::{out, read_arg_file, read_stdin, Exit, Usage};

/// Options every storage subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The gateway instance
    pub instance: InstanceId,
    /// Print the reply's result as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for a reply after this long
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Re-send the same request (same id) when no reply came within this long
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub attempt_timeout: Duration,
    /// Request id; repeat an earlier command's id to re-send it safely (it will not run twice)
    #[arg(long)]
    pub id: Option<RequestId>,
}

/// Options of every list command.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub common: Common,
    /// Ask for pages of at most this many entries (1 to 1000); every page is fetched and
    /// printed as one list. Without it the whole list is asked for at once, in pages of 100
    /// only if the gateway answers that it is over its reply cap
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(flatten)]
    pub common: Common,
    /// The resource's name
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum NfsCmd {
    /// Create an export (identical existing export: no change; different: CONFLICT)
    Create(NfsSpec),
    /// Change an existing export (missing: NOT_FOUND)
    Update(NfsSpec),
    /// Delete an export
    Delete(NameArgs),
    /// Show one export as the NFS server has it, next to the desired spec
    Get(NameArgs),
    /// List exports
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct NfsSpec {
    #[command(flatten)]
    pub common: Common,
    /// Export id: [a-z0-9][a-z0-9_-]{0,31}
    #[arg(long)]
    pub name: String,
    /// Directory to export (under one of the gateway's storage roots)
    #[arg(long)]
    pub path: String,
    /// MATCH:ACCESS:SQUASH[:ANONUID:ANONGID], e.g. 10.0.0.0/8:rw:root (repeatable)
    #[arg(long = "client", value_name = "CLIENT", required = true)]
    pub clients: Vec<String>,
    /// Reply before writes reach the disk (the default is sync)
    #[arg(long = "async")]
    pub async_writes: bool,
    /// NFSv4 pseudo path (Ganesha)
    #[arg(long)]
    pub pseudo: Option<String>,
    /// NFS versions, e.g. 3,4
    #[arg(long, value_delimiter = ',')]
    pub protocols: Vec<u8>,
}

// Parsed once per process: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SmbCmd {
    /// SMB shares
    #[command(subcommand)]
    Share(SmbShareCmd),
    /// Samba users (passwords travel to the gateway in the request, never on a command line)
    #[command(subcommand)]
    User(SmbUserCmd),
}

#[derive(Debug, Subcommand)]
pub enum SmbShareCmd {
    Create(SmbShareSpec),
    Update(SmbShareSpec),
    Delete(NameArgs),
    Get(NameArgs),
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct SmbShareSpec {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub path: String,
    #[arg(long)]
    pub comment: Option<String>,
    #[arg(long)]
    pub read_only: Option<bool>,
    #[arg(long)]
    pub browseable: Option<bool>,
    #[arg(long)]
    pub guest_ok: Option<bool>,
    /// Comma-separated user names (@group for groups)
    #[arg(long, value_delimiter = ',')]
    pub valid_users: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub write_list: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub admin_users: Vec<String>,
    /// Comma-separated addresses or CIDRs
    #[arg(long, value_delimiter = ',')]
    pub hosts_allow: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub hosts_deny: Vec<String>,
    /// Octal, e.g. 0644
    #[arg(long)]
    pub create_mask: Option<String>,
    #[arg(long)]
    pub directory_mask: Option<String>,
    #[arg(long)]
    pub force_user: Option<String>,
    #[arg(long)]
    pub force_group: Option<String>,
    #[arg(long)]
    pub access_based_enumeration: Option<bool>,
    /// off, desired or required
    #[arg(long)]
    pub encrypt: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SmbUserCmd {
    /// Add a user or change its password
    Set(SmbUserSet),
    Delete(SmbUserName),
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct SmbUserSet {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub username: String,
    /// Read the password from FILE (its first line)
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the password from standard input (its first line)
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct SmbUserName {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub username: String,
}

#[derive(Debug, Subcommand)]
pub enum IscsiCmd {
    /// iSCSI targets
    #[command(subcommand)]
    Target(IscsiTargetCmd),
}

#[derive(Debug, Subcommand)]
pub enum IscsiTargetCmd {
    Create(IscsiSpec),
    Update(IscsiSpec),
    Delete(IscsiDelete),
    Get(NameArgs),
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct IscsiSpec {
    #[command(flatten)]
    pub common: Common,
    /// Target name; the IQN is the gateway's prefix + ":" + name unless --iqn is given
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub iqn: Option<String>,
    /// LUN:PATH[:SIZE_BYTES][:ro], e.g. 1:/srv/csg/disk1.img:10737418240 (repeatable; the size
    /// is needed when the file does not exist yet, and must match it when it does)
    #[arg(long = "lun", value_name = "LUN", required = true)]
    pub luns: Vec<String>,
    /// Initiator IQN allowed to log in (repeatable)
    #[arg(long = "initiator")]
    pub initiators: Vec<String>,
    /// Network (CIDR) allowed to log in (repeatable)
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// CHAP user name (the secret is read from --chap-secret-file)
    #[arg(long, requires = "chap_secret_file")]
    pub chap_user: Option<String>,
    #[arg(long, value_name = "FILE", requires = "chap_user")]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target answers with
    #[arg(long, requires_all = ["mutual_chap_secret_file", "chap_user"])]
    pub mutual_chap_user: Option<String>,
    #[arg(long, value_name = "FILE", requires = "mutual_chap_user")]
    pub mutual_chap_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct IscsiDelete {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub name: String,
    /// Also delete the LUNs' backing files
    #[arg(long)]
    pub delete_backing_files: bool,
}

/// A storage command reduced to what is sent.
pub struct Request<'a> {
    pub common: &'a Common,
    pub method: Method,
}

fn req(common: &Common, method: Method) -> Request<'_> {
    Request { common, method }
}

/// A list method with `limit` (and no cursor: the first page).
fn list<'a>(a: &'a ListArgs, name: &'static str) -> Result<Request<'a>, Usage> {
    Ok(req(&a.common, list_page(name, a.limit, None)?))
}

/// One page of the list `name`.
fn list_page(name: &str, limit: Option<u32>, cursor: Option<String>) -> Result<Method, Usage> {
    let params = serde_json::to_value(ListParams { limit, cursor })
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Method::parse(name, params).map_err(|e| Usage(e.to_string()))
}

/// A usage error naming the flag, from a protocol value's own message.
fn flag(name: &'static str) -> impl Fn(ValueError) -> Usage {
    move |e| Usage(format!("{name}: {e}"))
}

/// A flag value in one of the protocol's enums (`rw`, `root`, `desired`, …), spelt on the
/// command line as on the wire.
fn wire_enum<T: DeserializeOwned>(s: &str) -> Option<T> {
    T::deserialize(StrDeserializer::<serde::de::value::Error>::new(s)).ok()
}

/// The first line of a secret's text, cut in place so that the secret is not copied: the
/// buffer moves into a zeroizing protocol type.
fn first_line(mut text: String) -> String {
    if let Some(end) = text.find('\n') {
        text.truncate(end);
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

pub fn parse_client(s: &str) -> Result<nfs::ClientParams, Usage> {
    let parts: Vec<&str> = s.split(':').collect();
    // IPv6 addresses contain ':' themselves: the fields are taken from the right.
    let bad = || {
        Usage(format!(
            "--client {s:?}: expected MATCH:ACCESS:SQUASH[:ANONUID:ANONGID], e.g. 10.0.0.0/8:rw:root"
        ))
    };
    let n = parts.len();
    // ACCESS is 4th from the right when the ids are given, else 2nd.
    let with_ids = n >= 5 && wire_enum::<nfs::Access>(parts[n - 4]).is_some();
    let at = if with_ids {
        n - 4
    } else if n >= 3 {
        n - 2
    } else {
        return Err(bad());
    };
    let access: nfs::Access = wire_enum(parts[at]).ok_or_else(bad)?;
    let squash: nfs::Squash = wire_enum(parts[at + 1])
        .ok_or_else(|| Usage(format!("--client {s:?}: SQUASH is root, all or none")))?;
    let (anonuid, anongid) = if with_ids {
        (
            parts[n - 2].parse().map_err(|_| bad())?,
            parts[n - 1].parse().map_err(|_| bad())?,
        )
    } else {
        (nfs::DEFAULT_ANON_ID, nfs::DEFAULT_ANON_ID)
    };
    Ok(nfs::ClientParams {
        matches: parts[..at].join(":"),
        access,
        squash,
        anonuid,
        anongid,
    })
}

pub fn parse_lun(s: &str) -> Result<iscsi::LunParams, Usage> {
    let bad = || {
        Usage(format!(
            "--lun {s:?}: expected LUN:PATH[:SIZE_BYTES][:ro], e.g. 1:/srv/csg/disk1.img:10737418240 \
             (SIZE_BYTES is needed when the file does not exist yet)"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (lun, path, size, readonly) = match parts.as_slice() {
        [l, p] => (l, p, None, false),
        [l, p, "ro"] => (l, p, None, true),
        [l, p, z] => (l, p, Some(z), false),
        [l, p, z, "ro"] => (l, p, Some(z), true),
        _ => return Err(bad()),
    };
    Ok(iscsi::LunParams {
        lun: lun.parse().map_err(|_| bad())?,
        path: path.to_string(),
        size_bytes: size.map(|z| z.parse()).transpose().map_err(|_| bad())?,
        readonly,
    })
}

fn export_spec(s: &NfsSpec) -> Result<nfs::ExportParams, Usage> {
    Ok(nfs::ExportParams {
        name: s.name.clone(),
        path: s.path.clone(),
        clients: s
            .clients
            .iter()
            .map(|c| parse_client(c))
            .collect::<Result<_, _>>()?,
        sync: !s.async_writes,
        pseudo: s.pseudo.clone(),
        protocols: (!s.protocols.is_empty()).then(|| s.protocols.clone()),
    })
}

pub fn nfs(cmd: &NfsCmd) -> Result<Request<'_>, Usage> {
    use NfsMethod as M;
    let name = |a: &NameArgs| nfs::NameParams {
        name: a.name.clone(),
    };
    Ok(match cmd {
        NfsCmd::Create(s) => req(&s.common, Method::Nfs(M::ExportCreate(export_spec(s)?))),
        NfsCmd::Update(s) => req(&s.common, Method::Nfs(M::ExportUpdate(export_spec(s)?))),
        NfsCmd::Delete(a) => req(&a.common, Method::Nfs(M::ExportDelete(name(a)))),
        NfsCmd::Get(a) => req(&a.common, Method::Nfs(M::ExportGet(name(a)))),
        NfsCmd::List(a) => list(a, nfs::EXPORT_LIST)?,
    })
}

/// The protocol's share spec from the flags: a flag left out takes the agent's default.
fn share_spec(s: &SmbShareSpec) -> Result<smb::ShareSpec, Usage> {
    fn principals(name: &'static str, v: &[String]) -> Result<Vec<smb::Principal>, Usage> {
        v.iter()
            .map(|p| smb::Principal::parse(p).map_err(flag(name)))
            .collect()
    }
    fn hosts(name: &'static str, v: &[String]) -> Result<Vec<smb::HostRule>, Usage> {
        v.iter()
            .map(|h| Cidr::parse(h).map(smb::HostRule).map_err(flag(name)))
            .collect()
    }
    let mut spec = smb::ShareSpec::new(
        smb::ShareName::parse(&s.name).map_err(flag("--name"))?,
        smb::SharePath::parse(&s.path).map_err(flag("--path"))?,
    );
    if let Some(c) = &s.comment {
        spec.comment = smb::Comment::parse(c).map_err(flag("--comment"))?;
    }
    spec.read_only = s.read_only.unwrap_or(spec.read_only);
    spec.browseable = s.browseable.unwrap_or(spec.browseable);
    spec.guest_ok = s.guest_ok.unwrap_or(spec.guest_ok);
    spec.valid_users = principals("--valid-users", &s.valid_users)?;
    spec.write_list = principals("--write-list", &s.write_list)?;
    spec.admin_users = principals("--admin-users", &s.admin_users)?;
    spec.hosts_allow = hosts("--hosts-allow", &s.hosts_allow)?;
    spec.hosts_deny = hosts("--hosts-deny", &s.hosts_deny)?;
    if let Some(m) = &s.create_mask {
        spec.create_mask = smb::Mask::parse(m).map_err(flag("--create-mask"))?;
    }
    if let Some(m) = &s.directory_mask {
        spec.directory_mask = smb::Mask::parse(m).map_err(flag("--directory-mask"))?;
    }
    if let Some(u) = &s.force_user {
        spec.force_user = Some(smb::UserName::parse(u).map_err(flag("--force-user"))?);
    }
    if let Some(g) = &s.force_group {
        spec.force_group = Some(smb::GroupName::parse(g).map_err(flag("--force-group"))?);
    }
    spec.access_based_enumeration = s
        .access_based_enumeration
        .unwrap_or(spec.access_based_enumeration);
    if let Some(e) = &s.encrypt {
        spec.encrypt = wire_enum(e).ok_or_else(|| {
            Usage(format!(
                "--encrypt {e:?}: expected default, off, if_required, desired or required"
            ))
        })?;
    }
    spec.check().map_err(|e| Usage(e.to_string()))?;
    Ok(spec)
}

pub fn smb(cmd: &SmbCmd) -> anyhow::Result<Request<'_>> {
    use SmbMethod as M;
    let share = |a: &NameArgs| -> Result<smb::ShareRef, Usage> {
        Ok(smb::ShareRef {
            name: smb::ShareName::parse(&a.name).map_err(flag("--name"))?,
        })
    };
    let username = |u: &str| smb::UserName::parse(u).map_err(flag("--username"));
    Ok(match cmd {
        SmbCmd::Share(SmbShareCmd::Create(s)) => {
            req(&s.common, Method::Smb(M::ShareCreate(share_spec(s)?)))
        }
        SmbCmd::Share(SmbShareCmd::Update(s)) => {
            req(&s.common, Method::Smb(M::ShareUpdate(share_spec(s)?)))
        }
        SmbCmd::Share(SmbShareCmd::Delete(a)) => {
            req(&a.common, Method::Smb(M::ShareDelete(share(a)?)))
        }
        SmbCmd::Share(SmbShareCmd::Get(a)) => req(&a.common, Method::Smb(M::ShareGet(share(a)?))),
        SmbCmd::Share(SmbShareCmd::List(a)) => list(a, smb::SHARE_LIST)?,
        SmbCmd::User(SmbUserCmd::Set(u)) => {
            let username = username(&u.username)?;
            let text = match (&u.password_file, u.password_stdin) {
                (Some(f), _) => read_arg_file(f)?,
                (None, true) => read_stdin()?,
                (None, false) => {
                    return Err(Usage(
                        "give the password with --password-file FILE or --password-stdin".into(),
                    )
                    .into())
                }
            };
            // The conversion wipes the text it is given, valid or not.
            let password =
                smb::Password::try_from(first_line(text)).map_err(|e| Usage(e.to_string()))?;
            req(
                &u.common,
                Method::Smb(M::UserSet(smb::UserSet { username, password })),
            )
        }
        SmbCmd::User(SmbUserCmd::Delete(u)) => req(
            &u.common,
            Method::Smb(M::UserDelete(smb::UserRef {
                username: username(&u.username)?,
            })),
        ),
        SmbCmd::User(SmbUserCmd::List(a)) => list(a, smb::USER_LIST)?,
    })
}

fn target_spec(s: &IscsiSpec) -> anyhow::Result<iscsi::TargetParams> {
    let luns = s
        .luns
        .iter()
        .map(|l| parse_lun(l))
        .collect::<Result<Vec<_>, _>>()?;
    let chap = match (&s.chap_user, &s.chap_secret_file) {
        (Some(user), Some(file)) => {
            // Each secret goes straight into `ChapParams`, which wipes it when dropped, even
            // when reading the next file fails.
            let mut chap = iscsi::ChapParams {
                username: user.clone(),
                secret: first_line(read_arg_file(file)?),
                mutual_username: None,
                mutual_secret: None,
            };
            if let (Some(mu), Some(mf)) = (&s.mutual_chap_user, &s.mutual_chap_secret_file) {
                chap.mutual_secret = Some(first_line(read_arg_file(mf)?));
                chap.mutual_username = Some(mu.clone());
            }
            Some(chap)
        }
        _ => None,
    };
    Ok(iscsi::TargetParams {
        name: s.name.clone(),
        iqn: s.iqn.clone(),
        luns,
        initiators: s.initiators.clone(),
        networks: s.networks.clone(),
        chap,
    })
}

pub fn iscsi(cmd: &IscsiCmd) -> anyhow::Result<Request<'_>> {
    use IscsiMethod as M;
    let IscsiCmd::Target(cmd) = cmd;
    Ok(match cmd {
        IscsiTargetCmd::Create(s) => {
            req(&s.common, Method::Iscsi(M::TargetCreate(target_spec(s)?)))
        }
        IscsiTargetCmd::Update(s) => {
            req(&s.common, Method::Iscsi(M::TargetUpdate(target_spec(s)?)))
        }
        IscsiTargetCmd::Delete(d) => req(
            &d.common,
            Method::Iscsi(M::TargetDelete(iscsi::DeleteParams {
                name: d.name.clone(),
                delete_backing_files: d.delete_backing_files,
                force: false,
            })),
        ),
        IscsiTargetCmd::Get(a) => req(
            &a.common,
            Method::Iscsi(M::TargetGet(iscsi::GetParams {
                name: a.name.clone(),
            })),
        ),
        IscsiTargetCmd::List(a) => list(a, iscsi::TARGET_LIST)?,
    })
}

/// First page size when a whole list did not fit the gateway's reply cap (halved while a page
/// still does not).
const FALLBACK_PAGE: u32 = 100;

/// The array a list's result pages (`None`: not a list).
fn list_field(method: &str) -> Option<&'static str> {
    Some(match method {
        nfs::EXPORT_LIST => "exports",
        smb::SHARE_LIST => "shares",
        smb::USER_LIST => "users",
        iscsi::TARGET_LIST => "targets",
        _ => return None,
    })
}

/// Most pages one list is followed for, and most entries gathered. Far above any gateway's
/// real configuration; past them the paging is taken as broken rather than followed for ever.
const MAX_PAGES: u32 = 10_000;
const MAX_ENTRIES: usize = 100_000;

/// Why a list's pages were not all fetched.
#[derive(Debug)]
enum PagesError {
    Call(CallError),
    /// The gateway's paging cannot be followed to an end (a cursor repeated or unusable, an
    /// empty page naming a next one, or past the caps): the gateway's fault, reported as a
    /// remote error rather than as a part of the list.
    Broken(String),
}

impl From<CallError> for PagesError {
    fn from(e: CallError) -> Self {
        PagesError::Call(e)
    }
}

/// Sends `method`; for a list, follows `next_cursor` to the last page and returns one reply
/// holding every entry (the first page's other fields, no `next_cursor`). A list or a page over
/// the gateway's reply cap is asked for again in smaller pages. The first request goes out with
/// the caller's id; each further one is a request of its own, with a fresh id.
async fn call_all_pages(
    console: &Console,
    instance: &InstanceId,
    method: &Method,
    opts: &CallOptions,
) -> Result<Reply, PagesError> {
    let first = console.call_method(instance, method, opts).await?;
    collect_pages(method, first, move |next| {
        let fresh = CallOptions {
            id: Some(console.new_request_id()),
            ..opts.clone()
        };
        async move { console.call_method(instance, &next, &fresh).await }
    })
    .await
}

/// The paging loop of [`call_all_pages`], from the reply to `method`; `fetch` sends a further
/// page's request.
async fn collect_pages<F, Fut>(
    method: &Method,
    mut reply: Reply,
    mut fetch: F,
) -> Result<Reply, PagesError>
where
    F: FnMut(Method) -> Fut,
    Fut: std::future::Future<Output = Result<Reply, CallError>>,
{
    let Some(field) = list_field(method.name()) else {
        return Ok(reply);
    };
    let mut limit = method
        .params()
        .get("limit")
        .and_then(serde_json::Value::as_u64)
        .and_then(|l| u32::try_from(l).ok());
    let mut cursor: Option<String> = None;
    let mut whole: Option<serde_json::Value> = None;
    let mut pages = 0u32;
    let mut entries = 0usize;
    let mut cursors = std::collections::HashSet::new();
    loop {
        match &reply.body {
            ReplyBody::Err(e) if e.code == ErrorCode::ReplyTooLarge && limit != Some(1) => {
                let smaller = limit.map_or(FALLBACK_PAGE, |l| (l / 2).max(1));
                eprintln!(
                    "note: {} is over the gateway's reply cap; asking for pages of {smaller}",
                    if whole.is_none() && limit.is_none() {
                        "the whole list"
                    } else {
                        "a page"
                    }
                );
                limit = Some(smaller);
            }
            // A page that failed is the outcome: a part of a list is not the list.
            ReplyBody::Err(_) => return Ok(reply),
            ReplyBody::Ok(page) => {
                let mut page = page.clone();
                let next = page
                    .as_object_mut()
                    .and_then(|o| o.remove("next_cursor"))
                    .and_then(|c| c.as_str().map(str::to_string));
                pages += 1;
                let got = page
                    .get(field)
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len);
                entries = entries.saturating_add(got);
                match whole.as_mut() {
                    None => whole = Some(page),
                    Some(all) => {
                        let more = page
                            .get_mut(field)
                            .and_then(serde_json::Value::as_array_mut)
                            .map(std::mem::take)
                            .unwrap_or_default();
                        if let Some(a) =
                            all.get_mut(field).and_then(serde_json::Value::as_array_mut)
                        {
                            a.extend(more);
                        }
                    }
                }
                let Some(c) = next else { break };
                // Each check stops a gateway that would otherwise be asked for pages for
                // ever: one that hands out a cursor again loops, one whose pages are empty
                // makes no progress, and the caps bound what is left.
                if got == 0 {
                    return Err(PagesError::Broken(format!(
                        "page {pages} has no {field} but names a next page"
                    )));
                }
                if !cursors.insert(c.clone()) {
                    return Err(PagesError::Broken(format!(
                        "page {pages} names as the next page a cursor it gave before"
                    )));
                }
                if pages >= MAX_PAGES || entries >= MAX_ENTRIES {
                    return Err(PagesError::Broken(format!(
                        "still more after {pages} pages and {entries} {field} \
                         (csgctl stops at {MAX_PAGES} pages or {MAX_ENTRIES} entries)"
                    )));
                }
                cursor = Some(c);
            }
        }
        let next = list_page(method.name(), limit, cursor.clone()).map_err(|e| {
            PagesError::Broken(format!(
                "page {pages} names a next page that cannot be asked for: {}",
                e.0
            ))
        })?;
        reply = fetch(next).await?;
    }
    if let Some(all) = whole {
        reply.body = ReplyBody::Ok(all);
    }
    Ok(reply)
}

/// Sends the request with `csgctl call`'s retry policy and prints the outcome.
pub async fn run(
    console: &Console,
    req: Request<'_>,
    signer: Option<csg_console::Signer>,
) -> anyhow::Result<Exit> {
    let c = req.common;
    let id = c.id.clone().unwrap_or_else(|| console.new_request_id());
    let opts = CallOptions {
        timeout: c.timeout,
        attempt_timeout: c.attempt_timeout,
        id: Some(id.clone()),
        noreply: false,
        deadline: None,
        retry_errors: true,
        signer,
        group: None,
    };
    let again = format!(
        "running the same command again with --id {id} is safe: the request will not run twice"
    );
    match call_all_pages(console, &c.instance, &req.method, &opts).await {
        Ok(reply) => match reply.body {
            ReplyBody::Ok(result) => {
                // `--json` prints the result as it came: fields a newer agent added included.
                let table = if c.json {
                    None
                } else {
                    match MethodResult::decode(req.method.name(), result.clone()) {
                        Ok(typed) => render(&typed),
                        Err(e) => {
                            eprintln!(
                                "warning: the {} result is not what this csgctl knows ({e}); \
                                 showing it as JSON",
                                req.method.name()
                            );
                            None
                        }
                    }
                };
                match table {
                    Some(t) => out(&t),
                    None => out(&format!("{}\n", serde_json::to_string_pretty(&result)?)),
                }
                Ok(Exit::Ok)
            }
            ReplyBody::Err(e) => {
                let retry = if e.retryable { " (retryable)" } else { "" };
                eprintln!("error: {}: {}{retry}", e.code, e.message);
                if e.retryable {
                    eprintln!("hint: {again}");
                }
                Ok(Exit::RemoteError)
            }
        },
        Err(PagesError::Broken(why)) => {
            eprintln!(
                "error: {}: cannot follow the {} pages to the end: {why}",
                c.instance,
                req.method.name()
            );
            Ok(Exit::RemoteError)
        }
        Err(PagesError::Call(CallError::NoReply {
            attempts, waited, ..
        })) => {
            eprintln!(
                "error: no reply from {} to request {id} within {} ({attempts} attempt(s)); \
                 the instance may be offline or unreachable",
                c.instance,
                format_duration(waited)
            );
            eprintln!("hint: {again}");
            Ok(Exit::NoReply)
        }
        Err(PagesError::Call(e)) => {
            eprintln!("error: {e}");
            Ok(Exit::Failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::{json, Map, Value};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        top: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        #[command(subcommand)]
        Nfs(NfsCmd),
        #[command(subcommand)]
        Smb(SmbCmd),
        #[command(subcommand)]
        Iscsi(IscsiCmd),
    }

    fn method(args: &[&str]) -> anyhow::Result<Method> {
        let argv = std::iter::once("csgctl").chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv)?;
        Ok(match &cli.top {
            Top::Nfs(c) => nfs(c)?.method,
            Top::Smb(c) => smb(c)?.method,
            Top::Iscsi(c) => iscsi(c)?.method,
        })
    }

    #[test]
    fn list_limits_are_checked_by_the_flag_parser() {
        for bad in ["0", "1001", "-1", "x"] {
            assert!(
                method(&["smb", "user", "list", "gw", "--limit", bad]).is_err(),
                "{bad}"
            );
        }
        let m = method(&["iscsi", "target", "list", "gw", "--limit", "1000"]).unwrap();
        assert_eq!(Value::Object(m.params()), json!({"limit": 1000}));
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn clients_parse_from_the_right() {
        let j = |c: nfs::ClientParams| serde_json::to_value(c).unwrap();
        assert_eq!(
            j(parse_client("10.0.0.0/8:rw:root").unwrap()),
            json!({"match":"10.0.0.0/8","access":"rw","squash":"root","anonuid":65534,"anongid":65534})
        );
        assert_eq!(
            j(parse_client("2001:db8::/32:ro:all:1000:1001").unwrap()),
            json!({"match":"2001:db8::/32","access":"ro","squash":"all","anonuid":1000,"anongid":1001})
        );
        for bad in [
            "10.0.0.0/8",
            "10.0.0.0/8:rx:root",
            "x:rw:root:a:b",
            "",
            "10.0.0.0/8:rw:no_root_squash",
        ] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn luns_parse() {
        let j = |l: iscsi::LunParams| serde_json::to_value(l).unwrap();
        assert_eq!(
            j(parse_lun("1:/srv/csg/d.img:1048576:ro").unwrap()),
            json!({"lun":1,"path":"/srv/csg/d.img","size_bytes":1048576,"readonly":true})
        );
        assert_eq!(
            j(parse_lun("2:/srv/csg/e.img").unwrap()),
            json!({"lun":2,"path":"/srv/csg/e.img","readonly":false})
        );
        for bad in ["1", "x:/p:1", "1:/p:big", "1:/p:1:rw", "70000:/p"] {
            assert!(parse_lun(bad).is_err(), "{bad}");
        }
    }

    /// Each command's typed method means what the params it sent as JSON meant: the agent
    /// parses both to the same `Method`.
    #[test]
    fn commands_send_what_they_sent_before() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("chap");
        let mutual = dir.path().join("mutual");
        std::fs::write(&secret, "Secret12chars\nnot this line\n").unwrap();
        std::fs::write(&mutual, "Mutual12chars\r\n").unwrap();
        let (secret, mutual) = (secret.to_str().unwrap(), mutual.to_str().unwrap());
        let cases: Vec<(Vec<&str>, &str, Value)> = vec![
            (
                vec![
                    "nfs",
                    "create",
                    "gw",
                    "--name",
                    "v1",
                    "--path",
                    "/srv/csg/v1",
                    "--client",
                    "10.0.0.0/8:rw:root",
                    "--client",
                    "::1:ro:all:1:2",
                ],
                "nfs.export.create",
                json!({"name": "v1", "path": "/srv/csg/v1", "sync": true, "clients": [
                    {"match": "10.0.0.0/8", "access": "rw", "squash": "root"},
                    {"match": "::1", "access": "ro", "squash": "all", "anonuid": 1, "anongid": 2}]}),
            ),
            (
                vec![
                    "nfs",
                    "update",
                    "gw",
                    "--name",
                    "v1",
                    "--path",
                    "/srv/csg/v1",
                    "--async",
                    "--client",
                    "10.0.0.0/8:ro:none",
                    "--pseudo",
                    "/p/v1",
                    "--protocols",
                    "4",
                ],
                "nfs.export.update",
                json!({"name": "v1", "path": "/srv/csg/v1", "sync": false, "pseudo": "/p/v1",
                       "protocols": [4], "clients": [{"match": "10.0.0.0/8", "access": "ro", "squash": "none"}]}),
            ),
            (
                vec!["nfs", "delete", "gw", "--name", "v1"],
                "nfs.export.delete",
                json!({"name": "v1"}),
            ),
            (
                vec!["nfs", "get", "gw", "--name", "v1"],
                "nfs.export.get",
                json!({"name": "v1"}),
            ),
            (vec!["nfs", "list", "gw"], "nfs.export.list", json!({})),
            (
                vec!["nfs", "list", "gw", "--limit", "5"],
                "nfs.export.list",
                json!({"limit": 5}),
            ),
            (
                vec![
                    "smb",
                    "share",
                    "create",
                    "gw",
                    "--name",
                    "data",
                    "--path",
                    "/srv/csg/data",
                ],
                "smb.share.create",
                json!({"name": "data", "path": "/srv/csg/data"}),
            ),
            (
                vec![
                    "smb",
                    "share",
                    "update",
                    "gw",
                    "--name",
                    "Data",
                    "--path",
                    "/srv/csg/data",
                    "--comment",
                    "Finance, 2026",
                    "--read-only",
                    "false",
                    "--browseable",
                    "false",
                    "--guest-ok",
                    "true",
                    "--valid-users",
                    "alice,@staff",
                    "--write-list",
                    "bob",
                    "--admin-users",
                    "carol",
                    "--hosts-allow",
                    "10.0.0.0/8,192.0.2.7",
                    "--hosts-deny",
                    "0.0.0.0/0",
                    "--create-mask",
                    "644",
                    "--directory-mask",
                    "0750",
                    "--force-user",
                    "svc",
                    "--force-group",
                    "svcg",
                    "--access-based-enumeration",
                    "true",
                    "--encrypt",
                    "required",
                ],
                "smb.share.update",
                json!({"name": "Data", "path": "/srv/csg/data", "comment": "Finance, 2026",
                       "read_only": false, "browseable": false, "guest_ok": true,
                       "valid_users": ["alice", "@staff"], "write_list": ["bob"],
                       "admin_users": ["carol"], "hosts_allow": ["10.0.0.0/8", "192.0.2.7"],
                       "hosts_deny": ["0.0.0.0/0"], "create_mask": "644", "directory_mask": "0750",
                       "force_user": "svc", "force_group": "svcg",
                       "access_based_enumeration": true, "encrypt": "required"}),
            ),
            (
                vec!["smb", "share", "delete", "gw", "--name", "data"],
                "smb.share.delete",
                json!({"name": "data"}),
            ),
            (
                vec!["smb", "share", "get", "gw", "--name", "data"],
                "smb.share.get",
                json!({"name": "data"}),
            ),
            (
                vec!["smb", "share", "list", "gw"],
                "smb.share.list",
                json!({}),
            ),
            (
                vec![
                    "smb",
                    "user",
                    "set",
                    "gw",
                    "--username",
                    "alice",
                    "--password-file",
                    secret,
                ],
                "smb.user.set",
                json!({"username": "alice", "password": "Secret12chars"}),
            ),
            (
                vec!["smb", "user", "delete", "gw", "--username", "alice"],
                "smb.user.delete",
                json!({"username": "alice"}),
            ),
            (
                vec!["smb", "user", "list", "gw"],
                "smb.user.list",
                json!({}),
            ),
            (
                vec![
                    "iscsi",
                    "target",
                    "create",
                    "gw",
                    "--name",
                    "vol1",
                    "--lun",
                    "1:/srv/csg/a.img:1048576",
                ],
                "iscsi.target.create",
                json!({"name": "vol1", "luns": [{"lun": 1, "path": "/srv/csg/a.img", "size_bytes": 1048576, "readonly": false}]}),
            ),
            (
                vec![
                    "iscsi",
                    "target",
                    "update",
                    "gw",
                    "--name",
                    "vol1",
                    "--iqn",
                    "eui.02004567a425678d",
                    "--lun",
                    "1:/srv/csg/a.img:ro",
                    "--initiator",
                    "iqn.1994-05.com.redhat:db1",
                    "--network",
                    "10.0.0.0/8",
                    "--chap-user",
                    "u1",
                    "--chap-secret-file",
                    secret,
                    "--mutual-chap-user",
                    "m1",
                    "--mutual-chap-secret-file",
                    mutual,
                ],
                "iscsi.target.update",
                json!({"name": "vol1", "iqn": "eui.02004567a425678d",
                       "luns": [{"lun": 1, "path": "/srv/csg/a.img", "readonly": true}],
                       "initiators": ["iqn.1994-05.com.redhat:db1"], "networks": ["10.0.0.0/8"],
                       "chap": {"username": "u1", "secret": "Secret12chars",
                                "mutual_username": "m1", "mutual_secret": "Mutual12chars"}}),
            ),
            (
                vec![
                    "iscsi",
                    "target",
                    "delete",
                    "gw",
                    "--name",
                    "vol1",
                    "--delete-backing-files",
                ],
                "iscsi.target.delete",
                json!({"name": "vol1", "delete_backing_files": true}),
            ),
            (
                vec!["iscsi", "target", "get", "gw", "--name", "vol1"],
                "iscsi.target.get",
                json!({"name": "vol1"}),
            ),
            (
                vec!["iscsi", "target", "list", "gw"],
                "iscsi.target.list",
                json!({}),
            ),
        ];
        let mut seen: Vec<&str> = Vec::new();
        for (args, name, before) in cases {
            let typed = method(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(typed.name(), name, "{args:?}");
            let agent_saw =
                Method::parse(name, obj(before)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(typed, agent_saw, "{args:?}");
            // And what goes on the wire parses back to it.
            assert_eq!(
                Method::parse(name, typed.params()).unwrap(),
                typed,
                "{args:?}"
            );
            seen.push(name);
        }
        seen.sort_unstable();
        seen.dedup();
        let storage: Vec<&str> = csg_protocol::methods::ALL
            .iter()
            .copied()
            .filter(|m| !m.starts_with("sys."))
            .collect();
        assert_eq!(seen, storage, "every storage method has a command");
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, flag) in [
            (
                vec![
                    "smb", "share", "create", "gw", "--name", "global", "--path", "/srv/a",
                ],
                "--name",
            ),
            (
                vec![
                    "smb", "share", "create", "gw", "--name", "a", "--path", "rel",
                ],
                "--path",
            ),
            (
                vec![
                    "smb",
                    "share",
                    "create",
                    "gw",
                    "--name",
                    "a",
                    "--path",
                    "/srv/a",
                    "--hosts-allow",
                    "host.example",
                ],
                "--hosts-allow",
            ),
            (
                vec![
                    "smb",
                    "share",
                    "create",
                    "gw",
                    "--name",
                    "a",
                    "--path",
                    "/srv/a",
                    "--encrypt",
                    "maybe",
                ],
                "--encrypt",
            ),
            (
                vec![
                    "smb",
                    "share",
                    "create",
                    "gw",
                    "--name",
                    "a",
                    "--path",
                    "/srv/a",
                    "--create-mask",
                    "999",
                ],
                "--create-mask",
            ),
            (
                vec!["smb", "user", "delete", "gw", "--username", "Root"],
                "--username",
            ),
        ] {
            let e = method(&args).unwrap_err();
            let usage = e
                .downcast_ref::<Usage>()
                .unwrap_or_else(|| panic!("{args:?}: {e}"));
            assert!(usage.0.starts_with(flag), "{args:?}: {usage}");
        }
    }

    #[test]
    fn a_bad_password_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "short\n").unwrap();
        let e = method(&[
            "smb",
            "user",
            "set",
            "gw",
            "--username",
            "alice",
            "--password-file",
            f.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
        assert!(!e.to_string().contains("short"), "{e}");
    }

    /// A gateway's page `n`: `len` exports, and a cursor after key `next` as its
    /// `next_cursor`.
    fn page(n: usize, len: usize, next: Option<&str>) -> Reply {
        let exports: Vec<Value> = (0..len).map(|i| json!(format!("p{n}e{i}"))).collect();
        let mut body = json!({ "exports": exports });
        if let Some(k) = next {
            body["next_cursor"] = json!(cursor(k));
        }
        Reply::ok(RequestId::new(format!("r{n}")).unwrap(), body)
    }

    fn cursor(key: &str) -> String {
        csg_protocol::methods::page::encode_cursor(nfs::EXPORT_LIST, key)
    }

    fn first_request() -> Method {
        list_page(nfs::EXPORT_LIST, Some(2), None).unwrap()
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_last_and_merged() {
        let mut asked = Vec::new();
        let mut n = 0;
        let reply = collect_pages(&first_request(), page(0, 2, Some("c1")), |m| {
            asked.push(m.params());
            n += 1;
            let next = (n < 2).then(|| format!("c{}", n + 1));
            let p = page(n, 2, next.as_deref());
            async move { Ok(p) }
        })
        .await
        .unwrap();
        let ReplyBody::Ok(all) = reply.body else {
            panic!("{:?}", reply.body)
        };
        assert_eq!(all["exports"].as_array().unwrap().len(), 6);
        assert!(all.get("next_cursor").is_none(), "{all}");
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[0]["cursor"], json!(cursor("c1")));
        assert_eq!(asked[1]["cursor"], json!(cursor("c2")));
        assert_eq!(asked[1]["limit"], json!(2));
    }

    #[tokio::test]
    async fn a_repeated_cursor_stops_the_paging() {
        let mut n = 0;
        let e = collect_pages(&first_request(), page(0, 2, Some("c1")), |_| {
            n += 1;
            let p = page(n, 2, Some(if n < 3 { "c2" } else { "c1" }));
            async move { Ok(p) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&e, PagesError::Broken(w) if w.contains("cursor")),
            "{e:?}"
        );
        assert_eq!(n, 2, "stopped at the first repeat");
    }

    #[tokio::test]
    async fn an_empty_page_naming_a_next_one_stops_the_paging() {
        let mut n = 0;
        let e = collect_pages(&first_request(), page(0, 2, Some("c1")), |_| {
            n += 1;
            let p = page(n, 0, Some(&format!("c{}", n + 1)));
            async move { Ok(p) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&e, PagesError::Broken(w) if w.contains("no exports")),
            "{e:?}"
        );
        assert_eq!(n, 1);
        // The first page too.
        let e = collect_pages(&first_request(), page(0, 0, Some("c1")), |_| async {
            Ok(page(1, 1, None))
        })
        .await
        .unwrap_err();
        assert!(matches!(e, PagesError::Broken(_)), "{e:?}");
    }

    #[tokio::test]
    async fn paging_stops_at_the_page_cap() {
        let mut n = 0usize;
        let e = collect_pages(&first_request(), page(0, 1, Some("c1")), |_| {
            n += 1;
            let p = page(n, 1, Some(&format!("c{}", n + 1)));
            async move { Ok(p) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&e, PagesError::Broken(w) if w.contains("10000 pages")),
            "{e:?}"
        );
        assert_eq!(n + 1, MAX_PAGES as usize);
    }

    #[tokio::test]
    async fn a_cursor_that_cannot_be_sent_back_stops_the_paging() {
        let mut first = page(0, 2, None);
        first.body = ReplyBody::Ok(json!({"exports": ["a", "b"], "next_cursor": "not base64!"}));
        let e = collect_pages(&first_request(), first, |_| async { Ok(page(1, 1, None)) })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PagesError::Broken(w) if w.contains("cursor")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_page_is_the_outcome() {
        let err = Reply::err(
            Some(RequestId::new("r1").unwrap()),
            csg_protocol::RpcError::new(ErrorCode::Internal, "boom"),
        );
        let reply = collect_pages(&first_request(), page(0, 2, Some("c1")), move |_| {
            let r = err.clone();
            async move { Ok(r) }
        })
        .await
        .unwrap();
        assert!(matches!(reply.body, ReplyBody::Err(_)), "{:?}", reply.body);
    }
}
