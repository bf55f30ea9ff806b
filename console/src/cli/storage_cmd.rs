//! `csgctl nfs …`, `csgctl smb …`, `csgctl iscsi …`: friendly front ends to the storage
//! methods. Each turns flags into the method's params, sends it like `csgctl call` (same
//! retries, ids, exit codes and hints), and prints a table for people or `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use csg_console::{CallError, CallOptions, Console};
use csg_protocol::{InstanceId, MethodName, ReplyBody, RequestId};
use serde_json::{json, Map, Value};

use super::duration::{format_duration, positive_duration};
use super::table::Table;
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
    List(Common),
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
    List(Common),
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
    List(Common),
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
    List(Common),
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
    pub method: &'static str,
    pub params: Map<String, Value>,
}

fn req<'a>(common: &'a Common, method: &'static str, params: Map<String, Value>) -> Request<'a> {
    Request {
        common,
        method,
        params,
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("built from json!({{…}})"),
    }
}

/// Inserts `key` only when the flag was given, so the agent's defaults apply otherwise.
fn put<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

fn put_list(m: &mut Map<String, Value>, key: &str, v: &[String]) {
    if !v.is_empty() {
        m.insert(key.into(), json!(v));
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

pub fn parse_client(s: &str) -> Result<Value, Usage> {
    let parts: Vec<&str> = s.split(':').collect();
    // IPv6 addresses contain ':' themselves: the fields are taken from the right.
    let bad = || {
        Usage(format!(
            "--client {s:?}: expected MATCH:ACCESS:SQUASH[:ANONUID:ANONGID], e.g. 10.0.0.0/8:rw:root"
        ))
    };
    let is_access = |x: &str| x == "rw" || x == "ro";
    let n = parts.len();
    let (matched, access, squash, ids) = if n >= 5 && is_access(parts[n - 4]) {
        (
            parts[..n - 4].join(":"),
            parts[n - 4],
            parts[n - 3],
            Some((parts[n - 2], parts[n - 1])),
        )
    } else if n >= 3 && is_access(parts[n - 2]) {
        (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1], None)
    } else {
        return Err(bad());
    };
    let mut c = obj(json!({"match": matched, "access": access, "squash": squash}));
    if let Some((u, g)) = ids {
        let u: u32 = u.parse().map_err(|_| bad())?;
        let g: u32 = g.parse().map_err(|_| bad())?;
        c.insert("anonuid".into(), u.into());
        c.insert("anongid".into(), g.into());
    }
    Ok(Value::Object(c))
}

pub fn parse_lun(s: &str) -> Result<Value, Usage> {
    let bad = || {
        Usage(format!(
            "--lun {s:?}: expected LUN:PATH[:SIZE_BYTES][:ro], e.g. 1:/srv/csg/disk1.img:10737418240 \
             (SIZE_BYTES is needed when the file does not exist yet)"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (lun, path, size, ro) = match parts.as_slice() {
        [l, p] => (l, p, None, false),
        [l, p, "ro"] => (l, p, None, true),
        [l, p, z] => (l, p, Some(z), false),
        [l, p, z, "ro"] => (l, p, Some(z), true),
        _ => return Err(bad()),
    };
    let lun: u32 = lun.parse().map_err(|_| bad())?;
    let mut m = obj(json!({"lun": lun, "path": path, "readonly": ro}));
    if let Some(z) = size {
        let size: u64 = z.parse().map_err(|_| bad())?;
        m.insert("size_bytes".into(), size.into());
    }
    Ok(Value::Object(m))
}

fn name_params(name: &str) -> Map<String, Value> {
    obj(json!({ "name": name }))
}

pub fn nfs(cmd: &NfsCmd) -> Result<Request<'_>, Usage> {
    let spec = |s: &NfsSpec| -> Result<Map<String, Value>, Usage> {
        let clients = s
            .clients
            .iter()
            .map(|c| parse_client(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut m = obj(
            json!({"name": s.name, "path": s.path, "clients": clients, "sync": !s.async_writes}),
        );
        put(&mut m, "pseudo", s.pseudo.clone());
        if !s.protocols.is_empty() {
            m.insert("protocols".into(), json!(s.protocols));
        }
        Ok(m)
    };
    Ok(match cmd {
        NfsCmd::Create(s) => req(&s.common, "nfs.export.create", spec(s)?),
        NfsCmd::Update(s) => req(&s.common, "nfs.export.update", spec(s)?),
        NfsCmd::Delete(a) => req(&a.common, "nfs.export.delete", name_params(&a.name)),
        NfsCmd::Get(a) => req(&a.common, "nfs.export.get", name_params(&a.name)),
        NfsCmd::List(c) => req(c, "nfs.export.list", Map::new()),
    })
}

pub fn smb(cmd: &SmbCmd) -> anyhow::Result<Request<'_>> {
    let spec = |s: &SmbShareSpec| {
        let mut m = obj(json!({"name": s.name, "path": s.path}));
        put(&mut m, "comment", s.comment.clone());
        put(&mut m, "read_only", s.read_only);
        put(&mut m, "browseable", s.browseable);
        put(&mut m, "guest_ok", s.guest_ok);
        put_list(&mut m, "valid_users", &s.valid_users);
        put_list(&mut m, "write_list", &s.write_list);
        put_list(&mut m, "admin_users", &s.admin_users);
        put_list(&mut m, "hosts_allow", &s.hosts_allow);
        put_list(&mut m, "hosts_deny", &s.hosts_deny);
        put(&mut m, "create_mask", s.create_mask.clone());
        put(&mut m, "directory_mask", s.directory_mask.clone());
        put(&mut m, "force_user", s.force_user.clone());
        put(&mut m, "force_group", s.force_group.clone());
        put(
            &mut m,
            "access_based_enumeration",
            s.access_based_enumeration,
        );
        put(&mut m, "encrypt", s.encrypt.clone());
        m
    };
    Ok(match cmd {
        SmbCmd::Share(SmbShareCmd::Create(s)) => req(&s.common, "smb.share.create", spec(s)),
        SmbCmd::Share(SmbShareCmd::Update(s)) => req(&s.common, "smb.share.update", spec(s)),
        SmbCmd::Share(SmbShareCmd::Delete(a)) => {
            req(&a.common, "smb.share.delete", name_params(&a.name))
        }
        SmbCmd::Share(SmbShareCmd::Get(a)) => req(&a.common, "smb.share.get", name_params(&a.name)),
        SmbCmd::Share(SmbShareCmd::List(c)) => req(c, "smb.share.list", Map::new()),
        SmbCmd::User(SmbUserCmd::Set(u)) => {
            let password = match (&u.password_file, u.password_stdin) {
                (Some(f), _) => first_line(&read_arg_file(f)?),
                (None, true) => first_line(&read_stdin()?),
                (None, false) => {
                    return Err(Usage(
                        "give the password with --password-file FILE or --password-stdin".into(),
                    )
                    .into())
                }
            };
            req(
                &u.common,
                "smb.user.set",
                obj(json!({"username": u.username, "password": password})),
            )
        }
        SmbCmd::User(SmbUserCmd::Delete(u)) => req(
            &u.common,
            "smb.user.delete",
            obj(json!({"username": u.username})),
        ),
        SmbCmd::User(SmbUserCmd::List(c)) => req(c, "smb.user.list", Map::new()),
    })
}

pub fn iscsi(cmd: &IscsiCmd) -> anyhow::Result<Request<'_>> {
    let IscsiCmd::Target(cmd) = cmd;
    let spec = |s: &IscsiSpec| -> anyhow::Result<Map<String, Value>> {
        let luns = s
            .luns
            .iter()
            .map(|l| parse_lun(l))
            .collect::<Result<Vec<_>, _>>()?;
        let mut m = obj(json!({"name": s.name, "luns": luns}));
        put(&mut m, "iqn", s.iqn.clone());
        put_list(&mut m, "initiators", &s.initiators);
        put_list(&mut m, "networks", &s.networks);
        if let (Some(user), Some(file)) = (&s.chap_user, &s.chap_secret_file) {
            let mut chap =
                obj(json!({"username": user, "secret": first_line(&read_arg_file(file)?)}));
            if let (Some(mu), Some(mf)) = (&s.mutual_chap_user, &s.mutual_chap_secret_file) {
                chap.insert("mutual_username".into(), mu.as_str().into());
                chap.insert(
                    "mutual_secret".into(),
                    first_line(&read_arg_file(mf)?).into(),
                );
            }
            m.insert("chap".into(), Value::Object(chap));
        }
        Ok(m)
    };
    Ok(match cmd {
        IscsiTargetCmd::Create(s) => req(&s.common, "iscsi.target.create", spec(s)?),
        IscsiTargetCmd::Update(s) => req(&s.common, "iscsi.target.update", spec(s)?),
        IscsiTargetCmd::Delete(d) => req(
            &d.common,
            "iscsi.target.delete",
            obj(json!({"name": d.name, "delete_backing_files": d.delete_backing_files})),
        ),
        IscsiTargetCmd::Get(a) => req(&a.common, "iscsi.target.get", name_params(&a.name)),
        IscsiTargetCmd::List(c) => req(c, "iscsi.target.list", Map::new()),
    })
}

/// A cell: strings as they are, lists joined by commas, objects as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// Tables for people, whatever the result's shape. The list of objects in a result (`exports`,
/// `shares`, `targets`, …) becomes rows, with one column per plain field of its items: nested
/// specs (`desired`, `actual`) are left to `--json`, and `drift` shows what differs. The
/// result's other plain fields follow as `field: value` lines; an object without a list becomes
/// FIELD/VALUE rows.
pub fn render(result: &Value, listing: bool) -> String {
    let (rows, rest): (Option<&Vec<Value>>, Vec<(&String, &Value)>) = match result {
        Value::Object(m) if !listing => (None, m.iter().collect()),
        Value::Array(a) => (Some(a), Vec::new()),
        Value::Object(m) => {
            let lists: Vec<&String> = m
                .iter()
                .filter(|(_, v)| {
                    v.as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
                })
                .map(|(k, _)| k)
                .collect();
            let empty_lists = m
                .values()
                .filter(|v| v.as_array().is_some_and(Vec::is_empty))
                .count();
            match lists.as_slice() {
                [one] => (
                    m.get(one.as_str()).and_then(Value::as_array),
                    m.iter().filter(|(k, _)| k != one).collect(),
                ),
                // A listing with nothing in it: say so, then the other fields.
                [] if empty_lists > 0 => {
                    let mut out = "(none)\n".to_string();
                    for (k, v) in m
                        .iter()
                        .filter(|(_, v)| !v.as_array().is_some_and(Vec::is_empty))
                    {
                        out.push_str(&format!("{k}: {}\n", cell(v)));
                    }
                    return out;
                }
                _ => (None, m.iter().collect()),
            }
        }
        other => return format!("{other}\n"),
    };
    let Some(rows) = rows else {
        if rest.is_empty() {
            return "(none)\n".into();
        }
        let mut t = Table::new(&["FIELD", "VALUE"]);
        for (k, v) in rest {
            t.push(vec![k.clone(), cell(v)]);
        }
        return t.render();
    };
    let plain =
        |v: &Value| !v.is_object() && !v.as_array().is_some_and(|a| a.iter().any(Value::is_object));
    let mut keys: Vec<String> = Vec::new();
    for r in rows.iter().filter_map(Value::as_object) {
        for (k, v) in r {
            if plain(v) && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    // Identifying columns first, the rest in key order.
    keys.sort_by_key(|k| {
        (
            !matches!(k.as_str(), "name" | "username" | "iqn"),
            k.clone(),
        )
    });
    let headers: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(&headers);
    for r in rows {
        t.push(
            keys.iter()
                .map(|k| match r.get(k.as_str()) {
                    Some(Value::Array(a)) if a.is_empty() => "-".to_string(),
                    Some(v) => cell(v),
                    None => "-".to_string(),
                })
                .collect(),
        );
    }
    let mut out = t.render();
    for (k, v) in rest {
        let empty = v.as_array().is_some_and(Vec::is_empty) || v.is_null();
        if !empty {
            out.push_str(&format!("{k}: {}\n", cell(v)));
        }
    }
    out
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
    };
    let method = MethodName::new(req.method).expect("static method names are valid");
    let again = format!(
        "running the same command again with --id {id} is safe: the request will not run twice"
    );
    match console.call(&c.instance, &method, req.params, &opts).await {
        Ok(reply) => match reply.body {
            ReplyBody::Ok(result) => {
                if c.json {
                    out(&format!("{}\n", serde_json::to_string_pretty(&result)?));
                } else {
                    out(&render(&result, req.method.ends_with(".list")));
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
        Err(CallError::NoReply {
            attempts, waited, ..
        }) => {
            eprintln!(
                "error: no reply from {} to request {id} within {} ({attempts} attempt(s)); \
                 the instance may be offline or unreachable",
                c.instance,
                format_duration(waited)
            );
            eprintln!("hint: {again}");
            Ok(Exit::NoReply)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(Exit::Failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_parse_from_the_right() {
        assert_eq!(
            parse_client("10.0.0.0/8:rw:root").unwrap(),
            json!({"match":"10.0.0.0/8","access":"rw","squash":"root"})
        );
        assert_eq!(
            parse_client("2001:db8::/32:ro:all:65534:65534").unwrap(),
            json!({"match":"2001:db8::/32","access":"ro","squash":"all","anonuid":65534,"anongid":65534})
        );
        for bad in ["10.0.0.0/8", "10.0.0.0/8:rx:root", "x:rw:root:a:b", ""] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn luns_parse() {
        assert_eq!(
            parse_lun("1:/srv/csg/d.img:1048576:ro").unwrap(),
            json!({"lun":1,"path":"/srv/csg/d.img","size_bytes":1048576,"readonly":true})
        );
        assert_eq!(
            parse_lun("2:/srv/csg/e.img").unwrap(),
            json!({"lun":2,"path":"/srv/csg/e.img","readonly":false})
        );
        for bad in ["1", "x:/p:1", "1:/p:big", "1:/p:1:rw"] {
            assert!(parse_lun(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn render_lists_and_objects() {
        let list = json!({"backend": "tgt", "unexpected": [], "targets": [
            {"name":"a","managed":true,"desired":{"path":"/srv/a"},"drift":[]},
            {"name":"b","managed":true,"desired":{"path":"/srv/b"},"drift":["missing on the server"]}]});
        let t = render(&list, true);
        assert_eq!(
            t,
            "NAME  DRIFT                  MANAGED\n\
             a     -                      true\n\
             b     missing on the server  true\n\
             backend: tgt\n"
        );
        let one = render(&json!({"existed": false, "deleted_files": []}), false);
        assert!(one.contains("existed") && one.contains("false"), "{one}");
        assert_eq!(render(&json!({"exports": []}), true), "(none)\n");
    }
}
