//! `iscsi.target.*`: iSCSI targets with their LUNs, access rules and CHAP credentials.
//!
//! Params are parsed into typed specs here (pure, no I/O): an [`Iqn`], [`ChapUser`],
//! [`ChapSecret`], [`Cidr`] or checked path exists only once it passed its rule, so nothing
//! unchecked can reach a tgtadm or targetcli argument vector. Whether a path lies under an
//! export root, and whether it exists, is the agent's check.
//!
//! `docs/methods/iscsi.md` is the same contract in prose.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::validate::{check_path, invalid, Cidr, ValueError};

pub const TARGET_CREATE: &str = "iscsi.target.create";
pub const TARGET_UPDATE: &str = "iscsi.target.update";
pub const TARGET_DELETE: &str = "iscsi.target.delete";
pub const TARGET_GET: &str = "iscsi.target.get";
pub const TARGET_LIST: &str = "iscsi.target.list";

/// Every method of the family, sorted.
pub const METHODS: &[&str] = &[
    TARGET_CREATE,
    TARGET_DELETE,
    TARGET_GET,
    TARGET_LIST,
    TARGET_UPDATE,
];

/// Longest iSCSI name (RFC 3720 §3.2.6.1).
pub const MAX_IQN_BYTES: usize = 223;
/// Highest LUN number (tgt and LIO both stop at 255; LUN 0 is tgt's controller).
pub const MAX_LUN: u16 = 255;
/// Limits per target, so one request cannot run thousands of commands.
pub const MAX_LUNS: usize = 64;
pub const MAX_INITIATORS: usize = 64;
pub const MAX_NETWORKS: usize = 64;
/// LUN sizes are whole 512-byte blocks, at most 64 TiB.
pub const BLOCK: u64 = 512;
/// What [`TargetName::parse`] accepts, for the schema.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// What [`Iqn::parse`] accepts, for the schema (length and month checks included).
pub const IQN_PATTERN: &str = "^(iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[a-z0-9.:-]+)?|eui\\.[0-9a-f]{16}|naa\\.([0-9a-f]{16}|[0-9a-f]{32}))$";
pub const MAX_SIZE_BYTES: u64 = 64 << 40;

// ---------------------------------------------------------------------------------------------
// Names

/// A target's id: `[a-z0-9][a-z0-9-]{0,62}`, not ending in `-`. It becomes the last part of
/// the target IQN (`<iqn_prefix>:<name>`) unless an explicit `iqn` is given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName(String);

impl TargetName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "name";
        if s.is_empty() || s.len() > 63 {
            return Err(invalid(WHAT, s, "must be 1 to 63 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(WHAT, s, "only [a-z0-9-] are allowed"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(invalid(WHAT, s, "may not start or end with '-'"));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TargetName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<TargetName> for String {
    fn from(n: TargetName) -> String {
        n.0
    }
}
impl std::fmt::Display for TargetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An iSCSI name in one of the forms of RFC 3720/3721, lowercase only (the stringprep form of
/// RFC 3722), at most 223 bytes:
/// * `iqn.YYYY-MM.reversed.domain[:unique]` (the date's month 01–12; domain labels
///   `[a-z0-9]([a-z0-9-]*[a-z0-9])?`; the unique part `[a-z0-9.:-]+`),
/// * `eui.` + 16 hex digits,
/// * `naa.` + 16 or 32 hex digits.
///
/// Every accepted name is also accepted by tgtd (`[A-Za-z0-9:.-]`) and by rtslib.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Iqn(String);

fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

impl Iqn {
    pub fn parse(what: &'static str, s: &str) -> Result<Self, ValueError> {
        if s.len() > MAX_IQN_BYTES {
            return Err(invalid(
                what,
                s,
                format!("{} bytes; the limit is {MAX_IQN_BYTES}", s.len()),
            ));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | ':' | '-'))
        }) {
            return Err(invalid(
                what,
                s,
                format!(
                    "the character {c:?} is not allowed; iSCSI names are lowercase [a-z0-9.:-]"
                ),
            ));
        }
        let hex = |h: &str| h.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(h) = s.strip_prefix("eui.") {
            if h.len() == 16 && hex(h) {
                return Ok(Self(s.into()));
            }
            return Err(invalid(what, s, "an eui. name has exactly 16 hex digits"));
        }
        if let Some(h) = s.strip_prefix("naa.") {
            if (h.len() == 16 || h.len() == 32) && hex(h) {
                return Ok(Self(s.into()));
            }
            return Err(invalid(what, s, "a naa. name has 16 or 32 hex digits"));
        }
        let rest = s
            .strip_prefix("iqn.")
            .ok_or_else(|| invalid(what, s, "must start with \"iqn.\", \"eui.\" or \"naa.\""))?;
        let b = rest.as_bytes();
        let date_ok = b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && matches!(
                &rest[5..7],
                "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
            )
            && b[7] == b'.';
        if !date_ok {
            return Err(invalid(
                what,
                s,
                "an iqn. name continues with a date YYYY-MM (month 01-12), a '.' and a reversed domain name",
            ));
        }
        let after = &rest[8..];
        let (domain, unique) = match after.split_once(':') {
            Some((d, u)) => (d, Some(u)),
            None => (after, None),
        };
        if !domain.split('.').all(is_label) {
            return Err(invalid(
                what,
                s,
                "the naming authority must be a reversed domain name of labels [a-z0-9]([a-z0-9-]*[a-z0-9])?",
            ));
        }
        if unique == Some("") {
            return Err(invalid(what, s, "nothing after ':'"));
        }
        Ok(Self(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Iqn {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse("iSCSI name", &s)
    }
}
impl From<Iqn> for String {
    fn from(n: Iqn) -> String {
        n.0
    }
}
impl std::fmt::Display for Iqn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CHAP user name: `[A-Za-z0-9._-]{1,64}`, not starting with `-` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChapUser(String);

impl ChapUser {
    pub fn parse(what: &'static str, s: &str) -> Result<Self, ValueError> {
        if s.is_empty() || s.len() > 64 {
            return Err(invalid(what, s, "must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(what, s, "only [A-Za-z0-9._-] are allowed"));
        }
        if s.starts_with(['-', '.']) {
            return Err(invalid(what, s, "may not start with '-' or '.'"));
        }
        Ok(Self(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChapUser {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse("CHAP username", &s)
    }
}
impl From<ChapUser> for String {
    fn from(n: ChapUser) -> String {
        n.0
    }
}

/// A CHAP secret: 12 to 16 characters of `[A-Za-z0-9]` (what Windows and AWS accept, and safe
/// in any argv or config file). Its `Debug` never shows the value, and it is not `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret(String);

impl ChapSecret {
    pub fn parse(what: &'static str, s: &str) -> Result<Self, ValueError> {
        // The value is never echoed in the error.
        let n = s.chars().count();
        if !(12..=16).contains(&n) {
            return Err(invalid(
                what,
                "<hidden>",
                format!("{n} characters; it must be 12 to 16"),
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(what, "<hidden>", "only [A-Za-z0-9] are allowed"));
        }
        Ok(Self(s.into()))
    }
    /// The secret itself, for the one argv that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets are wiped from memory when dropped, not left for the allocator to hand out.
impl Drop for ChapSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChapSecret(<hidden>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Params (as on the wire)

/// One LUN as sent by a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LunParams {
    /// 1–255 (LUN 0 is the target's controller).
    #[schemars(range(min = 1, max = 255))]
    pub lun: u16,
    /// A regular file under a storage root (created sparse when absent), or an existing block
    /// device where the config allows devices.
    pub path: String,
    /// Required when the file does not exist yet; when it exists, must equal its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub readonly: bool,
}

/// CHAP credentials as sent by a console. The secrets never come back in any reply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChapParams {
    /// The initiator authenticates as this user.
    #[schemars(pattern(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"), length(max = 64))]
    pub username: String,
    #[schemars(pattern(r"^[A-Za-z0-9]{12,16}$"), extend("writeOnly" = true))]
    pub secret: String,
    /// Mutual CHAP: the target authenticates to the initiator as this user (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"), length(max = 64))]
    pub mutual_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9]{12,16}$"), extend("writeOnly" = true))]
    pub mutual_secret: Option<String>,
}

impl Drop for ChapParams {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
        if let Some(s) = &mut self.mutual_secret {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl std::fmt::Debug for ChapParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapParams")
            .field("username", &self.username)
            .field("mutual_username", &self.mutual_username)
            .finish_non_exhaustive()
    }
}

/// `iscsi.target.create` and `iscsi.target.update` (update replaces the whole spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetParams {
    #[schemars(pattern(NAME_PATTERN), length(max = 63))]
    pub name: String,
    /// Explicit target IQN; default `<iscsi.iqn_prefix>:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IQN_PATTERN), length(max = 223))]
    pub iqn: Option<String>,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub luns: Vec<LunParams>,
    /// Initiator IQNs allowed to log in.
    #[serde(default)]
    #[schemars(length(max = 64), inner(pattern(IQN_PATTERN), length(max = 223)))]
    pub initiators: Vec<String>,
    /// Initiator addresses (IP or CIDR) allowed to log in.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapParams>,
}

/// `iscsi.target.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    #[schemars(pattern(NAME_PATTERN), length(max = 63))]
    pub name: String,
    /// Also remove the regular backing files (never block devices, never a file another
    /// target uses).
    #[serde(default)]
    pub delete_backing_files: bool,
    /// Delete even while initiators are logged in (their sessions are dropped).
    #[serde(default)]
    pub force: bool,
}

/// `iscsi.target.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    #[schemars(pattern(NAME_PATTERN), length(max = 63))]
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Validated specs

/// One LUN after its syntax checks (the path is syntax-checked only; the agent resolves it).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    pub lun: u16,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub readonly: bool,
}

/// Validated CHAP credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub username: ChapUser,
    pub secret: ChapSecret,
    pub mutual: Option<(ChapUser, ChapSecret)>,
}

/// A target after every pure check: what the agent stores (without secrets) and applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: TargetName,
    pub iqn: Iqn,
    /// Sorted by LUN number.
    pub luns: Vec<LunSpec>,
    pub initiators: BTreeSet<Iqn>,
    pub networks: BTreeSet<CidrKey>,
    pub chap: Option<Chap>,
}

/// A [`Cidr`] that sorts and serializes as its canonical text (`10.0.0.0/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CidrKey(pub Cidr);

impl Ord for CidrKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0.addr, self.0.prefix).cmp(&(o.0.addr, o.0.prefix))
    }
}
impl PartialOrd for CidrKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl TryFrom<String> for CidrKey {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Cidr::parse(&s).map(CidrKey)
    }
}
impl From<CidrKey> for String {
    fn from(c: CidrKey) -> String {
        c.0.to_string()
    }
}
impl std::fmt::Display for CidrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A field-named validation failure (the agent answers it with `INVALID_PARAMS`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct SpecError {
    pub field: String,
    pub source: ValueError,
}

fn at(field: impl Into<String>) -> impl FnOnce(ValueError) -> SpecError {
    let field = field.into();
    move |source| SpecError { field, source }
}

impl TargetParams {
    /// Every pure check; `iqn_prefix` is the configured prefix (`iscsi.iqn_prefix`).
    pub fn validate(&self, iqn_prefix: &str) -> Result<TargetSpec, SpecError> {
        let name = TargetName::parse(&self.name).map_err(at("name"))?;
        let iqn = match &self.iqn {
            Some(i) => Iqn::parse("iqn", i).map_err(at("iqn"))?,
            None => Iqn::parse(
                "iqn (iscsi.iqn_prefix + \":\" + name)",
                &format!("{iqn_prefix}:{name}"),
            )
            .map_err(at("iqn"))?,
        };
        if self.luns.len() > MAX_LUNS {
            return Err(at("luns")(invalid(
                "luns",
                &format!("{} entries", self.luns.len()),
                format!("at most {MAX_LUNS} LUNs per target"),
            )));
        }
        let mut luns = Vec::new();
        let mut seen_lun = BTreeSet::new();
        let mut seen_path = BTreeSet::new();
        for (i, l) in self.luns.iter().enumerate() {
            let f = |k: &str| format!("luns[{i}].{k}");
            if !(1..=MAX_LUN).contains(&l.lun) {
                return Err(at(f("lun"))(invalid(
                    "lun",
                    &l.lun.to_string(),
                    format!("must be 1 to {MAX_LUN} (LUN 0 is the controller)"),
                )));
            }
            if !seen_lun.insert(l.lun) {
                return Err(at(f("lun"))(invalid(
                    "lun",
                    &l.lun.to_string(),
                    "used twice",
                )));
            }
            check_path("path", &l.path).map_err(at(f("path")))?;
            if !seen_path.insert(l.path.clone()) {
                return Err(at(f("path"))(invalid("path", &l.path, "used by two LUNs")));
            }
            if let Some(sz) = l.size_bytes {
                if sz == 0 || sz % BLOCK != 0 || sz > MAX_SIZE_BYTES {
                    return Err(at(f("size_bytes"))(invalid(
                        "size_bytes",
                        &sz.to_string(),
                        format!("must be a positive multiple of {BLOCK}, at most {MAX_SIZE_BYTES}"),
                    )));
                }
            }
            luns.push(LunSpec {
                lun: l.lun,
                path: l.path.clone(),
                size_bytes: l.size_bytes,
                readonly: l.readonly,
            });
        }
        luns.sort();
        let too_many = |k: &'static str, n: usize, max: usize| {
            at(k)(invalid(
                k,
                &format!("{n} entries"),
                format!("at most {max}"),
            ))
        };
        if self.initiators.len() > MAX_INITIATORS {
            return Err(too_many(
                "initiators",
                self.initiators.len(),
                MAX_INITIATORS,
            ));
        }
        if self.networks.len() > MAX_NETWORKS {
            return Err(too_many("networks", self.networks.len(), MAX_NETWORKS));
        }
        let mut initiators = BTreeSet::new();
        for (i, s) in self.initiators.iter().enumerate() {
            initiators.insert(Iqn::parse("initiator", s).map_err(at(format!("initiators[{i}]")))?);
        }
        let mut networks = BTreeSet::new();
        for (i, s) in self.networks.iter().enumerate() {
            networks.insert(CidrKey(
                Cidr::parse(s).map_err(at(format!("networks[{i}]")))?,
            ));
        }
        let chap = match &self.chap {
            None => None,
            Some(c) => {
                let username =
                    ChapUser::parse("username", &c.username).map_err(at("chap.username"))?;
                let secret = ChapSecret::parse("secret", &c.secret).map_err(at("chap.secret"))?;
                let mutual = match (&c.mutual_username, &c.mutual_secret) {
                    (None, None) => None,
                    (Some(u), Some(s)) => {
                        let u = ChapUser::parse("mutual_username", u)
                            .map_err(at("chap.mutual_username"))?;
                        let s = ChapSecret::parse("mutual_secret", s)
                            .map_err(at("chap.mutual_secret"))?;
                        if u == username {
                            return Err(at("chap.mutual_username")(invalid(
                                "mutual_username",
                                u.as_str(),
                                "must differ from chap.username",
                            )));
                        }
                        if s == secret {
                            return Err(at("chap.mutual_secret")(invalid(
                                "mutual_secret",
                                "<hidden>",
                                "must differ from chap.secret",
                            )));
                        }
                        Some((u, s))
                    }
                    _ => {
                        return Err(at("chap")(invalid(
                            "chap",
                            "",
                            "mutual_username and mutual_secret go together",
                        )))
                    }
                };
                Some(Chap {
                    username,
                    secret,
                    mutual,
                })
            }
        };
        Ok(TargetSpec {
            name,
            iqn,
            luns,
            initiators,
            networks,
            chap,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// What a console asked for, as reported back (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetDesired {
    pub iqn: String,
    pub luns: Vec<LunSpec>,
    pub initiators: Vec<String>,
    pub networks: Vec<String>,
    /// CHAP user names; the secrets are never reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_mutual_username: Option<String>,
}

/// One LUN as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LunActual {
    pub lun: u16,
    pub path: String,
    pub readonly: bool,
    /// Size of the backing store now, bytes (`None` when it cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// The target as the backend really has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetActual {
    /// tgt's target id (not stable across tgtd restarts); absent on LIO, which has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub iqn: String,
    pub luns: Vec<LunActual>,
    pub initiators: Vec<String>,
    pub networks: Vec<String>,
    /// Incoming CHAP accounts bound to the target.
    pub chap_usernames: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_mutual_username: Option<String>,
    /// Initiator sessions logged in now.
    pub sessions: u32,
}

/// One target in `get` and `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetView {
    pub name: String,
    pub desired: TargetDesired,
    /// `None` when the backend does not have the target.
    pub actual: Option<TargetActual>,
    /// Each difference between desired and actual, in words; empty when in sync.
    pub drift: Vec<String>,
}

/// `iscsi.target.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListResult {
    pub targets: Vec<TargetView>,
    /// Targets under the agent's IQN prefix that the backend has and the desired state does not
    /// (whole on every page: it is not paged).
    pub unexpected: Vec<String>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and when
    /// no `limit` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `iscsi.target.create` / `update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplyResult {
    pub name: String,
    pub iqn: String,
    /// false when the request matched what was already there (nothing was run).
    pub changed: bool,
    /// Backing files this request created.
    pub created_files: Vec<String>,
}

/// `iscsi.target.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeleteResult {
    pub existed: bool,
    pub deleted_files: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "iqn.2026-11.com.example.csg";

    fn params(v: serde_json::Value) -> TargetParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn iqns() {
        for good in [
            "iqn.2001-04.com.example:storage.disk1",
            "iqn.2001-04.com.example",
            "iqn.1994-05.com.redhat:client1",
            "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls",
            "eui.02004567a425678d",
            "naa.52004567ba64678d",
            "naa.52004567ba64678d52004567ba64678d",
        ] {
            Iqn::parse("iqn", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let long = format!("iqn.2001-04.com.example:{}", "a".repeat(200));
        for bad in [
            "",
            "iqn.2001-13.com.example:x",
            "iqn.2001-00.com.example:x",
            "iqn.01-04.com.example:x",
            "iqn.2001-04",
            "iqn.2001-04.:x",
            "iqn.2001-04.com..example:x",
            "iqn.2001-04.-com.example:x",
            "iqn.2001-04.com.example:",
            "IQN.2001-04.com.example:x",
            "iqn.2001-04.com.Example:x",
            "iqn.2001-04.com.example:a_b",
            "iqn.2001-04.com.example:a b",
            "iqn.2001-04.com.example:a\nb",
            "iqn.2001-04.com.example:x;rm",
            "iqn.2001-04.com.example:x#y",
            "ALL",
            "eui.02004567a425678",
            "eui.02004567a425678g",
            "naa.52004567ba64678d5",
            "--initiator-address=ALL",
            long.as_str(),
        ] {
            assert!(Iqn::parse("iqn", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn chap_values_and_secret_never_in_errors_or_debug() {
        ChapUser::parse("u", "chap.user_1-x").unwrap();
        for bad in ["", "-x", ".x", "a b", "a;b", "a\nb", &"a".repeat(65)] {
            assert!(ChapUser::parse("u", bad).is_err(), "{bad:?}");
        }
        ChapSecret::parse("s", "Secret12chars").unwrap();
        for bad in [
            "short1",
            "Secret12chars-x",
            "Secret 12chars",
            "Secret12chars#",
            "abcdefghijklmnopq",
        ] {
            let e = ChapSecret::parse("s", bad).unwrap_err().to_string();
            assert!(!e.contains(bad), "secret echoed: {e}");
        }
        let s = ChapSecret::parse("s", "Secret12chars").unwrap();
        assert!(!format!("{s:?}").contains("Secret12"));
        let p = params(json!({"name":"v","chap":{"username":"u1","secret":"Secret12chars"}}));
        assert!(!format!("{p:?}").contains("Secret12"));
        let spec = p.validate(P).unwrap();
        assert!(!format!("{spec:?}").contains("Secret12"));
    }

    #[test]
    fn a_full_spec_parses_and_defaults_the_iqn() {
        let s = params(json!({
            "name": "vol1",
            "luns": [{"lun": 2, "path": "/srv/csg/b.img", "size_bytes": 1048576},
                     {"lun": 1, "path": "/srv/csg/a.img", "readonly": true}],
            "initiators": ["iqn.1994-05.com.redhat:client1"],
            "networks": ["10.0.0.0/8", "192.0.2.7"],
            "chap": {"username": "u1", "secret": "Secret12chars",
                     "mutual_username": "m1", "mutual_secret": "Mutual12chars"}
        }))
        .validate(P)
        .unwrap();
        assert_eq!(s.iqn.as_str(), "iqn.2026-11.com.example.csg:vol1");
        assert_eq!(s.luns[0].lun, 1);
        assert!(s.luns[0].readonly);
        assert_eq!(s.networks.len(), 2);
        assert!(s.chap.unwrap().mutual.is_some());
        let e = params(json!({"name":"vol1","iqn":"eui.02004567a425678d"}))
            .validate(P)
            .unwrap();
        assert_eq!(e.iqn.as_str(), "eui.02004567a425678d");
    }

    #[test]
    fn hostile_params_are_refused_with_the_field_named() {
        for (v, field) in [
            (json!({"name": "Vol1"}), "name"),
            (json!({"name": "a:b"}), "name"),
            (json!({"name": "-a"}), "name"),
            (json!({"name": "v", "iqn": "iqn.2026-11.com.x:a b"}), "iqn"),
            (
                json!({"name": "v", "luns": [{"lun": 0, "path": "/srv/csg/a"}]}),
                "luns[0].lun",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 256, "path": "/srv/csg/a"}]}),
                "luns[0].lun",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 1, "path": "/srv/csg/../etc/passwd"}]}),
                "luns[0].path",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 1, "path": "/srv/csg/a"}, {"lun": 1, "path": "/srv/csg/b"}]}),
                "luns[1].lun",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 1, "path": "/srv/csg/a"}, {"lun": 2, "path": "/srv/csg/a"}]}),
                "luns[1].path",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 1, "path": "/srv/csg/a", "size_bytes": 1000}]}),
                "luns[0].size_bytes",
            ),
            (
                json!({"name": "v", "luns": [{"lun": 1, "path": "/srv/csg/a", "size_bytes": 0}]}),
                "luns[0].size_bytes",
            ),
            (json!({"name": "v", "initiators": ["ALL"]}), "initiators[0]"),
            (json!({"name": "v", "networks": ["ALL"]}), "networks[0]"),
            (
                json!({"name": "v", "networks": ["10.0.0.0/8 --initiator-name x"]}),
                "networks[0]",
            ),
            (
                json!({"name": "v", "networks": ["10.0.0.0/8,ALL"]}),
                "networks[0]",
            ),
            (json!({"name": "v", "networks": ["-I"]}), "networks[0]"),
            (
                json!({"name": "v", "chap": {"username": "u", "secret": "short"}}),
                "chap.secret",
            ),
            (
                json!({"name": "v", "chap": {"username": "u", "secret": "Secret12chars", "mutual_username": "m"}}),
                "chap",
            ),
            (
                json!({"name": "v", "chap": {"username": "u", "secret": "Secret12chars", "mutual_username": "u", "mutual_secret": "Mutual12chars"}}),
                "chap.mutual_username",
            ),
            (
                json!({"name": "v", "chap": {"username": "u", "secret": "Secret12chars", "mutual_username": "m", "mutual_secret": "Secret12chars"}}),
                "chap.mutual_secret",
            ),
        ] {
            let e = params(v.clone()).validate(P).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        // A prefix that would make a bad IQN is caught too.
        assert!(params(json!({"name": "v"})).validate("iqn.bad").is_err());
        // Unknown keys never pass.
        assert!(
            serde_json::from_value::<TargetParams>(json!({"name": "v", "acl": "ALL"})).is_err()
        );
        assert!(serde_json::from_value::<TargetParams>(
            json!({"name": "v", "luns": [{"lun": 1, "path": "/a", "bstype": "sg"}]})
        )
        .is_err());
    }
}
