//! `smb.*`: Samba shares and Samba users.
//!
//! Params are parsed into validated types (`ShareSpec`, `UserName`, `Password`, …) before
//! anything reaches a backend: every value that can end up in Samba's registry or on a command
//! line passes a strict allow-list here, so nothing can inject a parameter, a section or an
//! option. The agent adds the file-system checks (the path exists, is a directory, lies
//! inside a storage root and is reached without symbolic links).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::{check_path, check_text, invalid, Cidr, ValueError, WorldPolicy};

pub const SHARE_CREATE: &str = "smb.share.create";
pub const SHARE_UPDATE: &str = "smb.share.update";
pub const SHARE_DELETE: &str = "smb.share.delete";
pub const SHARE_GET: &str = "smb.share.get";
pub const SHARE_LIST: &str = "smb.share.list";
pub const USER_SET: &str = "smb.user.set";
pub const USER_DELETE: &str = "smb.user.delete";
pub const USER_LIST: &str = "smb.user.list";

/// Every `smb.*` method.
pub const METHODS: &[&str] = &[
    SHARE_CREATE,
    SHARE_UPDATE,
    SHARE_DELETE,
    SHARE_GET,
    SHARE_LIST,
    USER_SET,
    USER_DELETE,
    USER_LIST,
];

/// Longest comment, in characters.
pub const MAX_COMMENT: usize = 256;
/// Most entries in one user list or host list.
pub const MAX_LIST: usize = 64;
/// Share names Samba reserves (compared case-insensitively).
pub const RESERVED_SHARE_NAMES: &[&str] = &["global", "homes", "printers", "print$", "ipc$"];

// ---------------------------------------------------------------------------------------------
// Validated values

/// A share name: `^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`, not one of Samba's reserved sections.
/// Share names are case-insensitive in Samba: compare with [`ShareName::key`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShareName(String);

impl ShareName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "share name";
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(invalid(WHAT, s, "it is empty")),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(invalid(WHAT, s, "it must start with a letter or a digit"))
            }
            _ => {}
        }
        if s.len() > 80 {
            return Err(invalid(WHAT, s, "longer than 80 characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(invalid(
                WHAT,
                s,
                format!("the character {c:?} is not allowed; use [A-Za-z0-9._-]"),
            ));
        }
        if RESERVED_SHARE_NAMES
            .iter()
            .any(|r| r.eq_ignore_ascii_case(s))
        {
            return Err(invalid(WHAT, s, "it is reserved by Samba"));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name as Samba compares it (case-insensitively).
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
    pub fn same(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl TryFrom<String> for ShareName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<ShareName> for String {
    fn from(n: ShareName) -> String {
        n.0
    }
}
impl fmt::Display for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_account(what: &'static str, s: &str) -> Result<(), ValueError> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err(invalid(what, s, "it is empty")),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return Err(invalid(
                what,
                s,
                "it must start with a lower-case letter or '_'",
            ))
        }
        _ => {}
    }
    if s.len() > 32 {
        return Err(invalid(what, s, "longer than 32 characters"));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        return Err(invalid(
            what,
            s,
            format!("the character {c:?} is not allowed; use [a-z0-9_-]"),
        ));
    }
    Ok(())
}

/// A Unix user name: `^[a-z_][a-z0-9_-]{0,31}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        check_account("user name", s)?;
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for UserName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<UserName> for String {
    fn from(n: UserName) -> String {
        n.0
    }
}
impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Unix group name: the same rule as user names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        check_account("group name", s)?;
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for GroupName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<GroupName> for String {
    fn from(n: GroupName) -> String {
        n.0
    }
}
impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entry of `valid_users`, `write_list` or `admin_users`: a user (`alice`) or a Unix group
/// (`@staff`). Samba's `+group`/`&group` forms and quoted names are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Principal {
    User(UserName),
    Group(GroupName),
}

impl Principal {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        match s.strip_prefix('@') {
            Some(g) => GroupName::parse(g).map(Principal::Group).map_err(|_| {
                invalid(
                    "user list entry",
                    s,
                    "a group is '@' followed by [a-z_][a-z0-9_-]{0,31}",
                )
            }),
            None => UserName::parse(s).map(Principal::User).map_err(|_| {
                invalid(
                    "user list entry",
                    s,
                    "expected a user name [a-z_][a-z0-9_-]{0,31} or @group",
                )
            }),
        }
    }
}
impl TryFrom<String> for Principal {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<Principal> for String {
    fn from(p: Principal) -> String {
        p.to_string()
    }
}
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(u) => write!(f, "{u}"),
            Principal::Group(g) => write!(f, "@{g}"),
        }
    }
}

/// A permission mask: octal, `^0?[0-7]{3}$` (`644`, `0644`); shown as four digits (`0644`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mask(u16);

impl Mask {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let digits = match s.len() {
            3 => s,
            4 if s.starts_with('0') => &s[1..],
            _ => return Err(invalid("mask", s, "expected 3 octal digits, e.g. 0644")),
        };
        if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(invalid("mask", s, "expected 3 octal digits, e.g. 0644"));
        }
        Ok(Self(u16::from_str_radix(digits, 8).expect("octal digits")))
    }
    pub const fn from_bits(bits: u16) -> Self {
        Self(bits & 0o777)
    }
    pub fn bits(self) -> u16 {
        self.0
    }
}
impl TryFrom<String> for Mask {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<Mask> for String {
    fn from(m: Mask) -> String {
        m.to_string()
    }
}
impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// A share comment: printable, at most 256 characters, no control characters, no `%`, `"` or
/// `\`, no leading or trailing blanks (Samba would strip them, and the read-back would differ).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(String);

impl Comment {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        check_text("comment", s, MAX_COMMENT)?;
        if s.trim() != s {
            return Err(invalid(
                "comment",
                s,
                "leading or trailing blanks are not allowed",
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
impl TryFrom<String> for Comment {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<Comment> for String {
    fn from(c: Comment) -> String {
        c.0
    }
}

/// SMB encryption for the share (`server smb encrypt`); `default` leaves the global setting.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Encrypt {
    #[default]
    Default,
    Off,
    IfRequired,
    Desired,
    Required,
}

impl Encrypt {
    /// The value Samba takes, `None` for `default` (the parameter is not set).
    pub fn samba_value(self) -> Option<&'static str> {
        match self {
            Encrypt::Default => None,
            Encrypt::Off => Some("off"),
            Encrypt::IfRequired => Some("if_required"),
            Encrypt::Desired => Some("desired"),
            Encrypt::Required => Some("required"),
        }
    }
}

/// A share path: absolute, `[A-Za-z0-9._/-]` only (so no `%` substitution), no `.`/`..`
/// components. That it exists, is a directory and lies inside a storage root is the agent's
/// check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SharePath(String);

impl SharePath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        check_path("path", s)?;
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for SharePath {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}
impl From<SharePath> for String {
    fn from(p: SharePath) -> String {
        p.0
    }
}

/// A host rule of `hosts_allow` / `hosts_deny`: an IP address or a CIDR network, nothing else
/// (no host names, no `EXCEPT`, no wildcards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostRule(pub Cidr);

impl TryFrom<String> for HostRule {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Cidr::parse(&s).map(HostRule)
    }
}
impl From<HostRule> for String {
    fn from(h: HostRule) -> String {
        h.0.to_string()
    }
}
impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Shares

pub const DEFAULT_CREATE_MASK: Mask = Mask::from_bits(0o744);
pub const DEFAULT_DIRECTORY_MASK: Mask = Mask::from_bits(0o755);

fn yes() -> bool {
    true
}
fn default_create_mask() -> Mask {
    DEFAULT_CREATE_MASK
}
fn default_directory_mask() -> Mask {
    DEFAULT_DIRECTORY_MASK
}

/// A complete, validated share: the params of `smb.share.create` and `smb.share.update` (the
/// whole spec, not a patch; defaults filled in), what the agent keeps as its desired state, and
/// what `get`/`list` report as `desired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareSpec {
    pub name: ShareName,
    pub path: SharePath,
    #[serde(default)]
    pub comment: Comment,
    #[serde(default = "yes")]
    pub read_only: bool,
    #[serde(default = "yes")]
    pub browseable: bool,
    #[serde(default)]
    pub guest_ok: bool,
    #[serde(default)]
    pub valid_users: Vec<Principal>,
    #[serde(default)]
    pub write_list: Vec<Principal>,
    #[serde(default)]
    pub admin_users: Vec<Principal>,
    #[serde(default)]
    pub hosts_allow: Vec<HostRule>,
    #[serde(default)]
    pub hosts_deny: Vec<HostRule>,
    #[serde(default = "default_create_mask")]
    pub create_mask: Mask,
    #[serde(default = "default_directory_mask")]
    pub directory_mask: Mask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_user: Option<UserName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_group: Option<GroupName>,
    #[serde(default)]
    pub access_based_enumeration: bool,
    #[serde(default)]
    pub encrypt: Encrypt,
}

impl ShareSpec {
    /// A share with every optional param at its default (what the agent fills in when a
    /// console leaves them out).
    pub fn new(name: ShareName, path: SharePath) -> Self {
        Self {
            name,
            path,
            comment: Comment::default(),
            read_only: yes(),
            browseable: yes(),
            guest_ok: false,
            valid_users: Vec::new(),
            write_list: Vec::new(),
            admin_users: Vec::new(),
            hosts_allow: Vec::new(),
            hosts_deny: Vec::new(),
            create_mask: default_create_mask(),
            directory_mask: default_directory_mask(),
            force_user: None,
            force_group: None,
            access_based_enumeration: false,
            encrypt: Encrypt::default(),
        }
    }

    /// Checks what serde cannot: list sizes and duplicates.
    pub fn check(&self) -> Result<(), ValueError> {
        fn list<T: PartialEq + fmt::Display>(
            what: &'static str,
            l: &[T],
        ) -> Result<(), ValueError> {
            if l.len() > MAX_LIST {
                return Err(invalid(
                    what,
                    &format!("{} entries", l.len()),
                    format!("at most {MAX_LIST} entries"),
                ));
            }
            for (i, a) in l.iter().enumerate() {
                if l[..i].contains(a) {
                    return Err(invalid(what, &a.to_string(), "listed twice"));
                }
            }
            Ok(())
        }
        list("valid_users", &self.valid_users)?;
        list("write_list", &self.write_list)?;
        list("admin_users", &self.admin_users)?;
        list("hosts_allow", &self.hosts_allow)?;
        list("hosts_deny", &self.hosts_deny)?;
        Ok(())
    }

    /// Refuses a `hosts_allow` entry that reaches the world under `policy` (`0.0.0.0/0`,
    /// `::/0`, a prefix shorter than the minimum). `hosts_deny` may be as wide as one likes.
    /// Kept apart from [`ShareSpec::check`] so shares stored before the policy still load.
    pub fn check_world(&self, policy: &WorldPolicy) -> Result<(), ValueError> {
        match self.world_hosts(policy).into_iter().next() {
            Some((h, why)) => Err(invalid("hosts_allow", &h, why)),
            None => Ok(()),
        }
    }

    /// Each `hosts_allow` entry `policy` refuses, with the reason.
    pub fn world_hosts(&self, policy: &WorldPolicy) -> Vec<(String, String)> {
        self.hosts_allow
            .iter()
            .filter_map(|h| policy.refuses_net(&h.0).map(|w| (h.to_string(), w)))
            .collect()
    }

    /// Parses `smb.share.create` params.
    pub fn from_params(params: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        check_fields(&params)?;
        let spec: ShareSpec = parse_params(params)?;
        spec.check().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// Share params one by one, so that an error names its field (serde's own messages do not).
fn check_fields(params: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    use serde::de::DeserializeOwned;
    fn one<T: DeserializeOwned>(v: &serde_json::Value) -> Result<(), String> {
        T::deserialize(v)
            .map(|_| ())
            .map_err(|e| crate::validate::excerpt(&e.to_string(), crate::validate::ERROR_EXCERPT))
    }
    for (k, v) in params {
        let r = match k.as_str() {
            "name" => one::<ShareName>(v),
            "path" => one::<SharePath>(v),
            "comment" => one::<Comment>(v),
            "read_only" | "browseable" | "guest_ok" | "access_based_enumeration" => one::<bool>(v),
            "valid_users" | "write_list" | "admin_users" => one::<Vec<Principal>>(v),
            "hosts_allow" | "hosts_deny" => one::<Vec<HostRule>>(v),
            "create_mask" | "directory_mask" => one::<Mask>(v),
            "force_user" => one::<UserName>(v),
            "force_group" => one::<GroupName>(v),
            "encrypt" => one::<Encrypt>(v),
            _ => Err(
                "unknown param; share params are: name, path, comment, read_only, \
                      browseable, guest_ok, valid_users, write_list, admin_users, hosts_allow, \
                      hosts_deny, create_mask, directory_mask, force_user, force_group, \
                      access_based_enumeration, encrypt"
                    .to_string(),
            ),
        };
        r.map_err(|e| format!("{}: {e}", k.chars().take(64).collect::<String>()))?;
    }
    Ok(())
}

/// Params of `smb.share.get` and `smb.share.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRef {
    pub name: ShareName,
}

/// One share as `get`/`list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShareInfo {
    /// The name as the agent (or, for an unmanaged share, Samba's registry) spells it.
    pub name: String,
    /// Whether the agent created it (it is in the desired state). Unmanaged registry shares are
    /// reported but never changed.
    pub managed: bool,
    /// What the console asked for (`null` for unmanaged shares).
    pub desired: Option<ShareSpec>,
    /// The share's parameters as read back from Samba's registry (`null` when it is not there).
    pub actual: Option<BTreeMap<String, String>>,
    /// Every difference between `desired` and `actual`, in words; empty when in sync.
    pub drift: Vec<String>,
}

/// Result of `smb.share.create` and `smb.share.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShareResult {
    /// False when Samba already had exactly this share (a repeated create or a no-op update).
    pub changed: bool,
    pub share: ShareInfo,
}

/// Result of `smb.share.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShareList {
    pub shares: Vec<ShareInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and when
    /// no `limit` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Result of `smb.share.delete` and `smb.user.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeleteResult {
    pub existed: bool,
}

// ---------------------------------------------------------------------------------------------
// Users

/// A Samba password: 8–127 bytes, no control characters (it travels on stdin, one per line).
/// Never printed: `Debug` shows `<redacted>`, and it has no `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Password(String);

impl Password {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        // The value itself never goes into an error message.
        let err = |reason: &str| invalid("password", "<redacted>", reason);
        if s.len() < 8 || s.len() > 127 {
            return Err(err("it must be 8 to 127 bytes long"));
        }
        if s.chars().any(char::is_control) {
            return Err(err("control characters (newline, NUL, …) are not allowed"));
        }
        Ok(Self(s.to_string()))
    }
    /// The secret itself, for the one place that feeds it to Samba's stdin.
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Password {
    type Error = ValueError;
    fn try_from(mut s: String) -> Result<Self, ValueError> {
        let p = Self::parse(&s);
        zeroize::Zeroize::zeroize(&mut s);
        p
    }
}
impl From<Password> for String {
    fn from(mut p: Password) -> String {
        std::mem::take(&mut p.0)
    }
}
/// Wiped from memory when dropped, not left for the allocator to hand out.
impl Drop for Password {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}
impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Params of `smb.user.set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSet {
    pub username: UserName,
    pub password: Password,
}

/// Params of `smb.user.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    pub username: UserName,
}

/// Result of `smb.user.set` (never carries the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserSetResult {
    pub username: String,
    /// True when the Samba account is new, false when only its password changed.
    pub created: bool,
    /// True when the agent created the Unix account for it (and will remove it on delete).
    pub unix_user_created: bool,
}

/// One user as `smb.user.list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserInfo {
    pub username: String,
    /// Whether the agent set it up (it is in the desired state).
    pub managed: bool,
    /// Whether Samba's passdb has it.
    pub in_passdb: bool,
    /// Whether the agent created its Unix account.
    pub unix_user_created: bool,
    /// Differences from the desired state, in words.
    pub drift: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserList {
    pub users: Vec<UserInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and when
    /// no `limit` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Parses params into `T`, or a message naming the field and the rule.
pub fn parse_params<T: serde::de::DeserializeOwned>(
    params: serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(params))
        .map_err(|e| crate::validate::excerpt(&e.to_string(), crate::validate::ERROR_EXCERPT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn base() -> Value {
        json!({"name": "data", "path": "/srv/csg/data"})
    }

    fn with(k: &str, v: Value) -> serde_json::Map<String, Value> {
        let mut m = obj(base());
        m.insert(k.into(), v);
        m
    }

    #[test]
    fn share_names() {
        for good in ["data", "Data-1", "a", "x.y_z", &"a".repeat(80), "global1"] {
            ShareName::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "global",
            "GLOBAL",
            "Homes",
            "printers",
            "ipc$",
            "print$",
            "-x",
            ".x",
            "_x",
            "a b",
            "a]\n[b",
            "foo]",
            "a%u",
            "a/b",
            "a$",
            "a;b",
            "é",
            &"a".repeat(81),
        ] {
            assert!(ShareName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(ShareName::parse("Data").unwrap().key(), "data");
    }

    #[test]
    fn accounts_and_principals() {
        for good in ["alice", "_svc", "a-b_c9", &"a".repeat(32)] {
            UserName::parse(good).unwrap();
        }
        for bad in [
            "",
            "Alice",
            "9a",
            "-a",
            "a b",
            "a,b",
            "a@b",
            "root\n",
            &"a".repeat(33),
        ] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Principal::parse("@staff").unwrap(),
            Principal::Group(GroupName::parse("staff").unwrap())
        );
        assert_eq!(Principal::parse("@staff").unwrap().to_string(), "@staff");
        for bad in [
            "+staff",
            "&staff",
            "@",
            "@@x",
            "\"a b\"",
            "a b",
            "%u",
            "alice,bob",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(Mask::parse("0644").unwrap().to_string(), "0644");
        assert_eq!(Mask::parse("755").unwrap().to_string(), "0755");
        for bad in ["", "64", "0888", "1755", "07777", "0x1ff", "+644", "644 "] {
            assert!(Mask::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn comments() {
        Comment::parse("Finance, 2026; #1").unwrap();
        Comment::parse("").unwrap();
        for bad in [
            "a\nb",
            "a\rb",
            "100%",
            "%u",
            "a\\",
            "a\"b",
            " lead",
            "trail ",
            "\t",
            &"x".repeat(257),
        ] {
            assert!(Comment::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn create_params_fill_defaults() {
        let s = ShareSpec::from_params(obj(base())).unwrap();
        assert!(s.read_only && s.browseable && !s.guest_ok);
        assert_eq!(s.create_mask.to_string(), "0744");
        assert_eq!(s.directory_mask.to_string(), "0755");
        assert_eq!(s.encrypt, Encrypt::Default);
        // Round trip through the desired-state form.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(ShareSpec::from_params(obj(v)).unwrap(), s);
    }

    #[test]
    fn new_has_the_defaults_of_omitted_params() {
        let parsed = ShareSpec::from_params(obj(base())).unwrap();
        let built = ShareSpec::new(
            ShareName::parse("data").unwrap(),
            SharePath::parse("/srv/csg/data").unwrap(),
        );
        assert_eq!(built, parsed);
    }

    #[test]
    fn hostile_create_params_are_refused() {
        let cases: Vec<(&str, Value)> = vec![
            ("comment", json!("line1\nline2")),
            ("comment", json!("100% sure")),
            ("path", json!("/srv/csg/../etc")),
            ("path", json!("/srv/csg/%u")),
            ("path", json!("relative")),
            ("name", json!("global")),
            ("name", json!("x]\n[evil")),
            ("hosts_allow", json!(["10.0.0.0/8 EXCEPT 10.1.1.1"])),
            ("hosts_allow", json!(["10.0.0.0/8, 0.0.0.0/0"])),
            ("hosts_allow", json!(["host.example"])),
            ("hosts_allow", json!(["ALL"])),
            ("hosts_deny", json!(["10.0.0.1/8"])),
            ("valid_users", json!(["alice bob"])),
            ("valid_users", json!(["alice", "alice"])),
            ("write_list", json!(["+staff"])),
            ("admin_users", json!(["%U"])),
            ("create_mask", json!("0999")),
            ("directory_mask", json!(755)),
            ("force_user", json!("root\n")),
            ("force_group", json!("@staff")),
            ("encrypt", json!("maybe")),
            ("read_only", json!("no")),
            ("vfs_objects", json!(["recycle"])),
        ];
        for (k, v) in cases {
            let r = ShareSpec::from_params(with(k, v.clone()));
            assert!(r.is_err(), "{k}={v} accepted: {r:?}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("u{i}")).collect();
        assert!(ShareSpec::from_params(with("valid_users", json!(many))).is_err());
    }

    #[test]
    fn world_hosts_allow_needs_the_opt_in() {
        let strict = WorldPolicy::strict("smb");
        for world in [
            "0.0.0.0/0",
            "::/0",
            "::0/0",
            "8.0.0.0/7",
            "::ffff:0.0.0.0/96",
        ] {
            let spec =
                ShareSpec::from_params(with("hosts_allow", json!(["10.0.0.0/8", world]))).unwrap();
            let e = spec.check_world(&strict).unwrap_err().to_string();
            assert!(
                e.starts_with("hosts_allow ") && e.contains("smb.allow_world"),
                "{e}"
            );
            spec.check_world(&WorldPolicy {
                allow_world: true,
                ..strict
            })
            .unwrap();
        }
        // Denying the world is always fine, and ALL never parses.
        ShareSpec::from_params(with("hosts_deny", json!(["0.0.0.0/0", "::/0"])))
            .unwrap()
            .check_world(&strict)
            .unwrap();
        assert!(ShareSpec::from_params(with("hosts_allow", json!(["ALL"]))).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let e = ShareSpec::from_params(with("force_user", json!("Root"))).unwrap_err();
        assert!(e.starts_with("force_user: "), "{e}");
        let e = ShareSpec::from_params(with("hosts_deny", json!(["10.0.0.1/8"]))).unwrap_err();
        assert!(e.starts_with("hosts_deny: "), "{e}");
        let e = ShareSpec::from_params(with("bogus", json!(1))).unwrap_err();
        assert!(e.starts_with("bogus: unknown param"), "{e}");
    }

    #[test]
    fn passwords_never_show() {
        let p = Password::parse("Secret123456").unwrap();
        assert_eq!(format!("{p:?}"), "<redacted>");
        let u: UserSet = parse_params(obj(
            json!({"username": "alice", "password": "Secret123456"}),
        ))
        .unwrap();
        assert!(!format!("{u:?}").contains("Secret"));
        for bad in [
            "short",
            "Secret12\nSecret12",
            "Secret12\0",
            &"x".repeat(128),
        ] {
            let e = Password::parse(bad).unwrap_err().to_string();
            assert!(!e.contains(bad), "{e}");
        }
        let e = parse_params::<UserSet>(obj(
            json!({"username": "alice", "password": "a\nbcdefghij"}),
        ))
        .unwrap_err();
        assert!(!e.contains("bcdefghij"), "{e}");
    }
}
