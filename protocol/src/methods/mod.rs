//! Parameters and results per method family, shared by the agent and Rust consoles, and the
//! one typed [`Method`] a request becomes once its name and params are parsed.
//!
//! A method name is matched here and nowhere else: the agent's dispatcher calls
//! [`Method::parse`] and hands the typed value down; a console builds a `Method` and sends
//! [`Method::name`] with [`Method::params`]. Whether a method may change the gateway is
//! [`Method::kind`], decided by the method, never guessed from its name.

pub mod iscsi;
pub mod nfs;
pub mod page;
mod pattern;
pub mod schema;
pub mod smb;
pub mod sys;

pub use page::{ListParams, Page};
pub use pattern::MethodPattern;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::{ErrorCode, RpcError};
use crate::status::Heartbeat;
use crate::validate::{excerpt, ERROR_EXCERPT};

/// Whether a method may change the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Changes nothing: safe to run again, so its id is not remembered once it has finished.
    Read,
    /// May change the gateway: at most once per request id, journaled, audited.
    Mutation,
}

/// `sys.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysMethod {
    Ping,
    Info,
    /// What this agent supports: versions, limits, signing, families, every method's schemas.
    Capabilities,
    Status,
    Reconcile,
}

/// `nfs.export.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NfsMethod {
    ExportCreate(nfs::ExportParams),
    ExportUpdate(nfs::ExportParams),
    ExportDelete(nfs::NameParams),
    ExportGet(nfs::NameParams),
    ExportList(Page),
}

/// `smb.share.*` and `smb.user.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmbMethod {
    ShareCreate(smb::ShareSpec),
    ShareUpdate(smb::ShareSpec),
    ShareDelete(smb::ShareRef),
    ShareGet(smb::ShareRef),
    ShareList(Page),
    UserSet(smb::UserSet),
    UserDelete(smb::UserRef),
    UserList(Page),
}

/// `iscsi.target.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IscsiMethod {
    TargetCreate(iscsi::TargetParams),
    TargetUpdate(iscsi::TargetParams),
    TargetDelete(iscsi::DeleteParams),
    TargetGet(iscsi::GetParams),
    TargetList(Page),
}

/// One request's method with its parsed params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Sys(SysMethod),
    Nfs(NfsMethod),
    Smb(SmbMethod),
    Iscsi(IscsiMethod),
}

/// Every method of the protocol, sorted.
pub const ALL: &[&str] = &[
    iscsi::TARGET_CREATE,
    iscsi::TARGET_DELETE,
    iscsi::TARGET_GET,
    iscsi::TARGET_LIST,
    iscsi::TARGET_UPDATE,
    nfs::EXPORT_CREATE,
    nfs::EXPORT_DELETE,
    nfs::EXPORT_GET,
    nfs::EXPORT_LIST,
    nfs::EXPORT_UPDATE,
    smb::SHARE_CREATE,
    smb::SHARE_DELETE,
    smb::SHARE_GET,
    smb::SHARE_LIST,
    smb::SHARE_UPDATE,
    smb::USER_DELETE,
    smb::USER_LIST,
    smb::USER_SET,
    sys::CAPABILITIES,
    sys::INFO,
    sys::PING,
    sys::RECONCILE,
    sys::STATUS,
];

/// Why a method name and its params do not make a [`Method`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("unknown method {0:?}; sys.info lists the methods this agent supports")]
    Unknown(String),
    /// The message names the field and the rule (never a secret's value).
    #[error("{0}")]
    InvalidParams(String),
}

impl From<MethodError> for RpcError {
    fn from(e: MethodError) -> Self {
        match e {
            MethodError::Unknown(_) => RpcError::new(ErrorCode::UnknownMethod, e.to_string()),
            MethodError::InvalidParams(m) => RpcError::invalid_params(m),
        }
    }
}

/// Params into `T`; the message is prefixed with the method's name (`nfs.*`, `iscsi.*`).
fn named<T: DeserializeOwned>(method: &str, params: Map<String, Value>) -> Result<T, MethodError> {
    serde_json::from_value(Value::Object(params)).map_err(|e| {
        MethodError::InvalidParams(format!(
            "{method}: {}",
            excerpt(&e.to_string(), ERROR_EXCERPT)
        ))
    })
}

/// Params into `T`; the message is serde's alone (`smb.*` names the field itself).
fn plain<T: DeserializeOwned>(params: Map<String, Value>) -> Result<T, MethodError> {
    smb::parse_params(params).map_err(MethodError::InvalidParams)
}

/// Refuses params a method does not take: a typo in a key must not pass silently.
fn none(method: &str, params: &Map<String, Value>) -> Result<(), MethodError> {
    match params.keys().next() {
        None => Ok(()),
        Some(k) => Err(MethodError::InvalidParams(format!(
            "{method} takes no params, got {:?}",
            k.chars().take(64).collect::<String>()
        ))),
    }
}

/// Params as a JSON object (what goes on the wire).
fn object<T: Serialize>(p: &T) -> Map<String, Value> {
    match serde_json::to_value(p) {
        Ok(Value::Object(m)) => m,
        // Every params type is a struct of plain fields: it always serializes to an object.
        _ => Map::new(),
    }
}

impl Method {
    /// A request's method and params, checked as far as the protocol can without the gateway
    /// (roots, backends and what exists are the agent's checks).
    pub fn parse(name: &str, params: Map<String, Value>) -> Result<Self, MethodError> {
        use IscsiMethod as I;
        use NfsMethod as N;
        use SmbMethod as S;
        use SysMethod as Y;
        Ok(match name {
            sys::PING | sys::INFO | sys::CAPABILITIES | sys::STATUS | sys::RECONCILE => {
                none(name, &params)?;
                Method::Sys(match name {
                    sys::PING => Y::Ping,
                    sys::INFO => Y::Info,
                    sys::CAPABILITIES => Y::Capabilities,
                    sys::STATUS => Y::Status,
                    _ => Y::Reconcile,
                })
            }
            nfs::EXPORT_CREATE => Method::Nfs(N::ExportCreate(named(name, params)?)),
            nfs::EXPORT_UPDATE => Method::Nfs(N::ExportUpdate(named(name, params)?)),
            nfs::EXPORT_DELETE => Method::Nfs(N::ExportDelete(named(name, params)?)),
            nfs::EXPORT_GET => Method::Nfs(N::ExportGet(named(name, params)?)),
            nfs::EXPORT_LIST => Method::Nfs(N::ExportList(Page::parse(nfs::EXPORT_LIST, params)?)),
            smb::SHARE_CREATE => Method::Smb(S::ShareCreate(
                smb::ShareSpec::from_params(params).map_err(MethodError::InvalidParams)?,
            )),
            smb::SHARE_UPDATE => Method::Smb(S::ShareUpdate(
                smb::ShareSpec::from_params(params).map_err(MethodError::InvalidParams)?,
            )),
            smb::SHARE_DELETE => Method::Smb(S::ShareDelete(plain(params)?)),
            smb::SHARE_GET => Method::Smb(S::ShareGet(plain(params)?)),
            smb::SHARE_LIST => Method::Smb(S::ShareList(Page::parse(smb::SHARE_LIST, params)?)),
            smb::USER_SET => Method::Smb(S::UserSet(plain(params)?)),
            smb::USER_DELETE => Method::Smb(S::UserDelete(plain(params)?)),
            smb::USER_LIST => Method::Smb(S::UserList(Page::parse(smb::USER_LIST, params)?)),
            iscsi::TARGET_CREATE => Method::Iscsi(I::TargetCreate(named(name, params)?)),
            iscsi::TARGET_UPDATE => Method::Iscsi(I::TargetUpdate(named(name, params)?)),
            iscsi::TARGET_DELETE => Method::Iscsi(I::TargetDelete(named(name, params)?)),
            iscsi::TARGET_GET => {
                let p: iscsi::GetParams = named(name, params)?;
                // A name that cannot exist is refused as such, not looked up and quoted.
                iscsi::TargetName::parse(&p.name)
                    .map_err(|e| MethodError::InvalidParams(e.to_string()))?;
                Method::Iscsi(I::TargetGet(p))
            }
            iscsi::TARGET_LIST => {
                Method::Iscsi(I::TargetList(Page::parse(iscsi::TARGET_LIST, params)?))
            }
            other => return Err(MethodError::Unknown(other.to_string())),
        })
    }

    /// The method's name on the wire.
    pub fn name(&self) -> &'static str {
        use IscsiMethod as I;
        use NfsMethod as N;
        use SmbMethod as S;
        use SysMethod as Y;
        match self {
            Method::Sys(Y::Ping) => sys::PING,
            Method::Sys(Y::Info) => sys::INFO,
            Method::Sys(Y::Capabilities) => sys::CAPABILITIES,
            Method::Sys(Y::Status) => sys::STATUS,
            Method::Sys(Y::Reconcile) => sys::RECONCILE,
            Method::Nfs(N::ExportCreate(_)) => nfs::EXPORT_CREATE,
            Method::Nfs(N::ExportUpdate(_)) => nfs::EXPORT_UPDATE,
            Method::Nfs(N::ExportDelete(_)) => nfs::EXPORT_DELETE,
            Method::Nfs(N::ExportGet(_)) => nfs::EXPORT_GET,
            Method::Nfs(N::ExportList(_)) => nfs::EXPORT_LIST,
            Method::Smb(S::ShareCreate(_)) => smb::SHARE_CREATE,
            Method::Smb(S::ShareUpdate(_)) => smb::SHARE_UPDATE,
            Method::Smb(S::ShareDelete(_)) => smb::SHARE_DELETE,
            Method::Smb(S::ShareGet(_)) => smb::SHARE_GET,
            Method::Smb(S::ShareList(_)) => smb::SHARE_LIST,
            Method::Smb(S::UserSet(_)) => smb::USER_SET,
            Method::Smb(S::UserDelete(_)) => smb::USER_DELETE,
            Method::Smb(S::UserList(_)) => smb::USER_LIST,
            Method::Iscsi(I::TargetCreate(_)) => iscsi::TARGET_CREATE,
            Method::Iscsi(I::TargetUpdate(_)) => iscsi::TARGET_UPDATE,
            Method::Iscsi(I::TargetDelete(_)) => iscsi::TARGET_DELETE,
            Method::Iscsi(I::TargetGet(_)) => iscsi::TARGET_GET,
            Method::Iscsi(I::TargetList(_)) => iscsi::TARGET_LIST,
        }
    }

    /// The family: the first segment of the name (`sys`, `nfs`, `smb`, `iscsi`).
    pub fn family(&self) -> &'static str {
        match self {
            Method::Sys(_) => "sys",
            Method::Nfs(_) => "nfs",
            Method::Smb(_) => "smb",
            Method::Iscsi(_) => "iscsi",
        }
    }

    /// Whether it may change the gateway.
    pub fn kind(&self) -> Kind {
        use IscsiMethod as I;
        use NfsMethod as N;
        use SmbMethod as S;
        use SysMethod as Y;
        match self {
            Method::Sys(Y::Ping | Y::Info | Y::Capabilities | Y::Status)
            | Method::Nfs(N::ExportGet(_) | N::ExportList(_))
            | Method::Smb(S::ShareGet(_) | S::ShareList(_) | S::UserList(_))
            | Method::Iscsi(I::TargetGet(_) | I::TargetList(_)) => Kind::Read,
            Method::Sys(Y::Reconcile)
            | Method::Nfs(N::ExportCreate(_) | N::ExportUpdate(_) | N::ExportDelete(_))
            | Method::Smb(
                S::ShareCreate(_)
                | S::ShareUpdate(_)
                | S::ShareDelete(_)
                | S::UserSet(_)
                | S::UserDelete(_),
            )
            | Method::Iscsi(I::TargetCreate(_) | I::TargetUpdate(_) | I::TargetDelete(_)) => {
                Kind::Mutation
            }
        }
    }

    /// The export, share, user or target the request names, as sent (not yet validated: for
    /// logs, which quote it).
    pub fn resource(&self) -> Option<&str> {
        use IscsiMethod as I;
        use NfsMethod as N;
        use SmbMethod as S;
        match self {
            Method::Sys(_)
            | Method::Nfs(N::ExportList(_))
            | Method::Smb(S::ShareList(_) | S::UserList(_))
            | Method::Iscsi(I::TargetList(_)) => None,
            Method::Nfs(N::ExportCreate(p) | N::ExportUpdate(p)) => Some(&p.name),
            Method::Nfs(N::ExportDelete(p) | N::ExportGet(p)) => Some(&p.name),
            Method::Smb(S::ShareCreate(p) | S::ShareUpdate(p)) => Some(p.name.as_str()),
            Method::Smb(S::ShareDelete(p) | S::ShareGet(p)) => Some(p.name.as_str()),
            Method::Smb(S::UserSet(p)) => Some(p.username.as_str()),
            Method::Smb(S::UserDelete(p)) => Some(p.username.as_str()),
            Method::Iscsi(I::TargetCreate(p) | I::TargetUpdate(p)) => Some(&p.name),
            Method::Iscsi(I::TargetDelete(p)) => Some(&p.name),
            Method::Iscsi(I::TargetGet(p)) => Some(&p.name),
        }
    }

    /// The params as they go on the wire (an empty object for methods that take none).
    pub fn params(&self) -> Map<String, Value> {
        use IscsiMethod as I;
        use NfsMethod as N;
        use SmbMethod as S;
        match self {
            Method::Sys(_) => Map::new(),
            Method::Nfs(N::ExportList(p))
            | Method::Smb(S::ShareList(p) | S::UserList(p))
            | Method::Iscsi(I::TargetList(p)) => object(&p.to_params()),
            Method::Nfs(N::ExportCreate(p) | N::ExportUpdate(p)) => object(p),
            Method::Nfs(N::ExportDelete(p) | N::ExportGet(p)) => object(p),
            Method::Smb(S::ShareCreate(p) | S::ShareUpdate(p)) => object(p),
            Method::Smb(S::ShareDelete(p) | S::ShareGet(p)) => object(p),
            Method::Smb(S::UserSet(p)) => object(p),
            Method::Smb(S::UserDelete(p)) => object(p),
            Method::Iscsi(I::TargetCreate(p) | I::TargetUpdate(p)) => object(p),
            Method::Iscsi(I::TargetDelete(p)) => object(p),
            Method::Iscsi(I::TargetGet(p)) => object(p),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// One entry of `smb.changes` in a reconcile report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SmbChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `created`, `updated`, `deleted` or `failed`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A target reconcile changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IscsiChanged {
    pub target: String,
    /// `created`, `repaired` or `removed`.
    pub action: String,
    /// How many backend commands it took (optional when decoding: earlier builds left it out
    /// for a removed target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<u64>,
}

/// A target reconcile could not put right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IscsiFailed {
    pub target: String,
    pub error: String,
}

/// `iscsi.changes` in a reconcile report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IscsiChanges {
    pub changed: Vec<IscsiChanged>,
    pub failed: Vec<IscsiFailed>,
}

/// What one family's reconcile changed, in that family's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Changes {
    /// NFS: what was found wrong and fixed, in words.
    Nfs(Vec<String>),
    Smb(Vec<SmbChange>),
    Iscsi(IscsiChanges),
}

/// One family in a reconcile report: `{"ok": true, "changes": …}` or
/// `{"ok": false, "error": {code, message, retryable}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FamilyReconcile {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl FamilyReconcile {
    pub fn done(changes: Changes) -> Self {
        Self {
            ok: true,
            changes: Some(changes),
            error: None,
        }
    }
    pub fn failed(error: RpcError) -> Self {
        Self {
            ok: false,
            changes: None,
            error: Some(error),
        }
    }
}

/// Result of `sys.reconcile` (and the start-up pass): one entry per configured family, by
/// family name; `{}` with no storage configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct ReconcileReport(pub std::collections::BTreeMap<String, FamilyReconcile>);

/// The result of any method, typed. Serializes to exactly the method's result object.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum MethodResult {
    Ping(sys::PingResult),
    Info(Box<sys::InfoResult>),
    Capabilities(Box<sys::CapabilitiesResult>),
    Status(Box<Heartbeat>),
    Reconcile(ReconcileReport),
    NfsMutate(Box<nfs::MutateResult>),
    NfsDelete(nfs::DeleteResult),
    NfsGet(Box<nfs::ExportStatus>),
    NfsList(nfs::ListResult),
    SmbShare(Box<smb::ShareResult>),
    SmbDelete(smb::DeleteResult),
    SmbShareGet(Box<smb::ShareInfo>),
    SmbShareList(smb::ShareList),
    SmbUserSet(smb::UserSetResult),
    SmbUserList(smb::UserList),
    IscsiApply(iscsi::ApplyResult),
    IscsiDelete(iscsi::DeleteResult),
    IscsiGet(Box<iscsi::TargetView>),
    IscsiList(iscsi::ListResult),
}

impl MethodResult {
    /// The result object of a reply, typed by the method that was called (what a console
    /// does with a reply to its own request).
    pub fn decode(method: &str, result: Value) -> Result<Self, MethodError> {
        fn d<T: DeserializeOwned>(v: Value) -> Result<T, MethodError> {
            serde_json::from_value(v).map_err(|e| {
                MethodError::InvalidParams(format!(
                    "result: {}",
                    excerpt(&e.to_string(), ERROR_EXCERPT)
                ))
            })
        }
        use MethodResult as R;
        Ok(match method {
            sys::PING => R::Ping(d(result)?),
            sys::INFO => R::Info(d(result)?),
            sys::CAPABILITIES => R::Capabilities(d(result)?),
            sys::STATUS => R::Status(d(result)?),
            sys::RECONCILE => R::Reconcile(d(result)?),
            nfs::EXPORT_CREATE | nfs::EXPORT_UPDATE => R::NfsMutate(d(result)?),
            nfs::EXPORT_DELETE => R::NfsDelete(d(result)?),
            nfs::EXPORT_GET => R::NfsGet(d(result)?),
            nfs::EXPORT_LIST => R::NfsList(d(result)?),
            smb::SHARE_CREATE | smb::SHARE_UPDATE => R::SmbShare(d(result)?),
            smb::SHARE_DELETE | smb::USER_DELETE => R::SmbDelete(d(result)?),
            smb::SHARE_GET => R::SmbShareGet(d(result)?),
            smb::SHARE_LIST => R::SmbShareList(d(result)?),
            smb::USER_SET => R::SmbUserSet(d(result)?),
            smb::USER_LIST => R::SmbUserList(d(result)?),
            iscsi::TARGET_CREATE | iscsi::TARGET_UPDATE => R::IscsiApply(d(result)?),
            iscsi::TARGET_DELETE => R::IscsiDelete(d(result)?),
            iscsi::TARGET_GET => R::IscsiGet(d(result)?),
            iscsi::TARGET_LIST => R::IscsiList(d(result)?),
            other => return Err(MethodError::Unknown(other.to_string())),
        })
    }

    /// The result as it goes on the wire.
    pub fn to_value(&self) -> Result<Value, RpcError> {
        serde_json::to_value(self)
            .map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The rule docs/protocol.md states by name (reads are get, list, ping, info, status), as an
    /// oracle for `Method::kind`, which decides by the method itself.
    fn kind_of(name: &str) -> Option<Kind> {
        if !ALL.contains(&name) {
            return None;
        }
        Some(match name.rsplit('.').next() {
            Some("get" | "list" | "ping" | "info" | "capabilities" | "status") => Kind::Read,
            _ => Kind::Mutation,
        })
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn every_name_parses_back_to_itself_and_kind_agrees() {
        let samples: Vec<(&str, Value)> = vec![
            (sys::PING, json!({})),
            (sys::INFO, json!({})),
            (sys::CAPABILITIES, json!({})),
            (sys::STATUS, json!({})),
            (sys::RECONCILE, json!({})),
            (
                nfs::EXPORT_CREATE,
                json!({"name":"e1","path":"/srv/a","clients":[{"match":"10.0.0.0/8"}]}),
            ),
            (
                nfs::EXPORT_UPDATE,
                json!({"name":"e1","path":"/srv/a","clients":[{"match":"10.0.0.0/8"}]}),
            ),
            (nfs::EXPORT_DELETE, json!({"name":"e1"})),
            (nfs::EXPORT_GET, json!({"name":"e1"})),
            (nfs::EXPORT_LIST, json!({})),
            (nfs::EXPORT_LIST, json!({"limit": 10})),
            (smb::SHARE_CREATE, json!({"name":"s1","path":"/srv/s"})),
            (smb::SHARE_UPDATE, json!({"name":"s1","path":"/srv/s"})),
            (smb::SHARE_DELETE, json!({"name":"s1"})),
            (smb::SHARE_GET, json!({"name":"s1"})),
            (smb::SHARE_LIST, json!({})),
            (
                smb::USER_SET,
                json!({"username":"alice","password":"correct horse"}),
            ),
            (smb::USER_DELETE, json!({"username":"alice"})),
            (smb::USER_LIST, json!({})),
            (iscsi::TARGET_CREATE, json!({"name":"t1"})),
            (iscsi::TARGET_UPDATE, json!({"name":"t1"})),
            (iscsi::TARGET_DELETE, json!({"name":"t1"})),
            (iscsi::TARGET_GET, json!({"name":"t1"})),
            (iscsi::TARGET_LIST, json!({})),
        ];
        let mut seen: Vec<&str> = Vec::new();
        for (name, params) in samples {
            let m =
                Method::parse(name, obj(params.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.name(), name);
            assert_eq!(Some(m.kind()), kind_of(name), "{name}");
            assert_eq!(schema::kind(name), Some(m.kind()), "{name}");
            assert_eq!(m.family(), name.split('.').next().unwrap_or(""));
            // What a console sends parses to the same method.
            let again = Method::parse(name, m.params()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(again, m, "{name}");
            seen.push(name);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, ALL);
    }

    #[test]
    fn reads_and_mutations() {
        for n in [
            sys::PING,
            nfs::EXPORT_LIST,
            smb::SHARE_GET,
            iscsi::TARGET_LIST,
        ] {
            assert_eq!(kind_of(n), Some(Kind::Read), "{n}");
        }
        for n in [
            sys::RECONCILE,
            nfs::EXPORT_DELETE,
            smb::USER_SET,
            iscsi::TARGET_CREATE,
        ] {
            assert_eq!(kind_of(n), Some(Kind::Mutation), "{n}");
        }
        assert_eq!(kind_of("nfs.export.frobnicate"), None);
    }

    #[test]
    fn refusals_keep_their_messages() {
        let e = Method::parse("nfs.export.nope", Map::new()).unwrap_err();
        assert_eq!(
            RpcError::from(e).code,
            ErrorCode::UnknownMethod,
            "an unknown name is UNKNOWN_METHOD"
        );
        let e = Method::parse(sys::PING, obj(json!({"x": 1}))).unwrap_err();
        assert_eq!(e.to_string(), "sys.ping takes no params, got \"x\"");
        let e = Method::parse(nfs::EXPORT_GET, obj(json!({"nam": "a"}))).unwrap_err();
        assert!(e.to_string().starts_with("nfs.export.get: "), "{e}");
        let e = Method::parse(iscsi::TARGET_GET, obj(json!({"name": "-x"}))).unwrap_err();
        assert_eq!(RpcError::from(e).code, ErrorCode::InvalidParams);
    }

    #[test]
    fn reconcile_report_keeps_its_json() {
        let j = json!({
            "nfs": {"ok": true, "changes": ["e1: client 10.0.0.0/8 missing"]},
            "smb": {"ok": true, "changes": [{"share": "s1", "action": "created", "drift": []},
                                              {"user": "bob", "action": "failed", "error": "x"}]},
            "iscsi": {"ok": false, "error": {"code": "UNAVAILABLE", "message": "tgtd is down", "retryable": true}}
        });
        let r: ReconcileReport = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), j);
        let r = MethodResult::decode(sys::RECONCILE, j.clone()).unwrap();
        assert_eq!(r.to_value().unwrap(), j);
    }
}
