//! `nfs.*`: NFS exports (kernel nfsd or NFS-Ganesha).
//!
//! Params are parsed into a validated [`ExportSpec`]; only a spec reaches a backend, so a value
//! that could break an exports line or a Ganesha block (a newline, `(`, `,`, a quote, a space)
//! never gets that far. Checks here are pure; whether the path exists and lies under a storage
//! root is the agent's check.

use serde::{Deserialize, Serialize};

use crate::validate::{check_path, invalid, Cidr, ValueError, WorldPolicy};

pub const EXPORT_CREATE: &str = "nfs.export.create";
pub const EXPORT_UPDATE: &str = "nfs.export.update";
pub const EXPORT_DELETE: &str = "nfs.export.delete";
pub const EXPORT_GET: &str = "nfs.export.get";
pub const EXPORT_LIST: &str = "nfs.export.list";

pub const METHODS: &[&str] = &[
    EXPORT_CREATE,
    EXPORT_DELETE,
    EXPORT_GET,
    EXPORT_LIST,
    EXPORT_UPDATE,
];

/// What [`ExportName::parse`] accepts, for the schema.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,31}$";

/// Most client entries one export may have.
pub const MAX_CLIENTS: usize = 64;
/// The anonymous uid/gid when none is given (`nobody`).
pub const DEFAULT_ANON_ID: u32 = 65534;
/// Largest anonuid/anongid (`(uid_t)-1` is "no id").
pub const MAX_ANON_ID: u32 = 4_294_967_294;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Ro,
    Rw,
}

/// Which client ids are mapped to the anonymous uid/gid.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Squash {
    /// uid/gid 0 only (`root_squash`).
    #[default]
    Root,
    /// Every id (`all_squash`).
    All,
    /// None (`no_root_squash`).
    None,
}

fn default_anon() -> u32 {
    DEFAULT_ANON_ID
}
fn yes() -> bool {
    true
}

/// One client entry as sent by a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientParams {
    /// An IP address or CIDR; host names, wildcards and `@netgroup`s only where the agent's
    /// config allows them (`nfs.allow_hostnames`).
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 253))]
    pub matches: String,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub squash: Squash,
    #[serde(default = "default_anon")]
    #[schemars(range(max = 4_294_967_294u32))]
    pub anonuid: u32,
    #[serde(default = "default_anon")]
    #[schemars(range(max = 4_294_967_294u32))]
    pub anongid: u32,
}

/// Params of `nfs.export.create` and `nfs.export.update` (the whole spec each time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[schemars(pattern(NAME_PATTERN), length(max = 32))]
    pub name: String,
    #[schemars(pattern(super::schema::PATH_PATTERN), length(max = 1023))]
    pub path: String,
    #[schemars(length(min = 1, max = 64))]
    pub clients: Vec<ClientParams>,
    #[serde(default = "yes")]
    pub sync: bool,
    /// NFSv4 pseudo path (Ganesha). Default `/` + name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::schema::PATH_PATTERN), length(max = 1023))]
    pub pseudo: Option<String>,
    /// NFS versions served (Ganesha): a non-empty subset of `[3, 4]`. Default `[3, 4]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2), inner(range(min = 3, max = 4)))]
    pub protocols: Option<Vec<u8>>,
}

/// Params of `nfs.export.get` and `nfs.export.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    #[schemars(pattern(NAME_PATTERN), length(max = 32))]
    pub name: String,
}

/// An export name: `[a-z0-9][a-z0-9_-]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportName(String);

impl ExportName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "name";
        let ok_first = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_rest = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if s.is_empty() || s.len() > 32 || !ok_first || !ok_rest {
            return Err(invalid(
                WHAT,
                s,
                "must match [a-z0-9][a-z0-9_-]{0,31} (1 to 32 characters, lowercase)",
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ExportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a client entry matches. Every form is made of characters that are plain tokens in
/// both the exports(5) and the Ganesha config grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientMatch {
    /// An address or network (always allowed).
    Net(Cidr),
    /// A DNS name, lowercase (config `nfs.allow_hostnames`).
    Host(String),
    /// A name pattern with `*` or `?`, or `*` alone (everyone) (config `nfs.allow_hostnames`).
    Wildcard(String),
    /// `@name` (config `nfs.allow_hostnames`); the string is without the `@`.
    Netgroup(String),
}

fn is_hostname(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

impl ClientMatch {
    pub fn parse(s: &str, allow_hostnames: bool) -> Result<Self, ValueError> {
        const WHAT: &str = "client match";
        if let Ok(c) = Cidr::parse(s) {
            return Ok(ClientMatch::Net(c));
        }
        let rule = if allow_hostnames {
            "use an IP address, a CIDR (10.0.0.0/8), a lowercase host name, a wildcard \
             (*.example.com) or @netgroup; no options, spaces, commas or parentheses"
        } else {
            "use an IP address or a CIDR such as 10.0.0.0/8 (host names, wildcards and \
             netgroups are off: config nfs.allow_hostnames); no options, spaces, commas or \
             parentheses"
        };
        if !allow_hostnames {
            return Err(invalid(WHAT, s, rule));
        }
        if let Some(ng) = s.strip_prefix('@') {
            let ok = !ng.is_empty()
                && ng.len() <= 64
                && ng
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !ng.starts_with('-');
            return if ok {
                Ok(ClientMatch::Netgroup(ng.to_string()))
            } else {
                Err(invalid(WHAT, s, "a netgroup is @ and [A-Za-z0-9_.-]{1,64}"))
            };
        }
        if s.contains(['*', '?']) {
            // The same name rules, with `*`/`?` standing for letters.
            let probe: String = s
                .chars()
                .map(|c| if matches!(c, '*' | '?') { 'a' } else { c })
                .collect();
            return if s.len() <= 253 && is_hostname(&probe) {
                Ok(ClientMatch::Wildcard(s.to_string()))
            } else {
                Err(invalid(WHAT, s, rule))
            };
        }
        // A dotted string of digits that did not parse as an address is a typo, not a name.
        if is_hostname(s) && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Ok(ClientMatch::Host(s.to_string()));
        }
        Err(invalid(WHAT, s, rule))
    }
}

impl ClientMatch {
    /// Why this entry exports to the world under `policy`, or `None`. A wildcard counts as the
    /// world unless a domain follows its last `*`/`?` (`.example.com`: at least two literal
    /// labels): mountd matches the client's reverse name, and whoever owns an address chooses
    /// its reverse name, so `nfs*` or `*.com` admit anyone who picks a matching one.
    pub fn refused_by(&self, policy: &WorldPolicy) -> Option<String> {
        match self {
            ClientMatch::Net(c) => policy.refuses_net(c),
            ClientMatch::Wildcard(w) if !policy.allow_world => {
                let tail = w.rsplit(['*', '?']).next().unwrap_or_default();
                // The labels after the first dot of the literal tail are fixed.
                let anchored = tail.split_once('.').is_some_and(|(_, domain)| {
                    domain.split('.').filter(|l| !l.is_empty()).count() >= 2
                });
                (!anchored).then(|| {
                    format!(
                        "{w} matches any host that names itself to fit (no domain of at least \
                         two labels after the last wildcard's label, as in *.example.com); a rule that \
                         wide needs {}.allow_world = true in the agent's config",
                        policy.section
                    )
                })
            }
            ClientMatch::Wildcard(_) | ClientMatch::Host(_) | ClientMatch::Netgroup(_) => None,
        }
    }
}

impl std::fmt::Display for ClientMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMatch::Net(c) => write!(f, "{c}"),
            ClientMatch::Host(h) | ClientMatch::Wildcard(h) => f.write_str(h),
            ClientMatch::Netgroup(n) => write!(f, "@{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub matches: ClientMatch,
    pub access: Access,
    pub squash: Squash,
    pub anonuid: u32,
    pub anongid: u32,
}

/// A validated export. Only [`ExportParams::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    name: ExportName,
    path: String,
    clients: Vec<ClientSpec>,
    sync: bool,
    pseudo: String,
    protocols: Vec<u8>,
}

impl ExportSpec {
    pub fn name(&self) -> &ExportName {
        &self.name
    }
    /// Absolute, normalised, `[A-Za-z0-9._/-]` only.
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn clients(&self) -> &[ClientSpec] {
        &self.clients
    }
    pub fn sync(&self) -> bool {
        self.sync
    }
    /// The NFSv4 pseudo path (same character rules as `path`).
    pub fn pseudo(&self) -> &str {
        &self.pseudo
    }
    /// Sorted, non-empty subset of `[3, 4]`.
    pub fn protocols(&self) -> &[u8] {
        &self.protocols
    }

    /// Refuses a spec with a client entry that reaches the world under `policy` (see
    /// [`ClientMatch::refused_by`]). Kept apart from [`ExportParams::validate`] so exports
    /// stored before the policy existed still load.
    pub fn check_world(&self, policy: &WorldPolicy) -> Result<(), ValueError> {
        match self.world_clients(policy).into_iter().next() {
            Some((m, why)) => Err(invalid("client match", &m, why)),
            None => Ok(()),
        }
    }

    /// Each client entry `policy` refuses, with the reason.
    pub fn world_clients(&self, policy: &WorldPolicy) -> Vec<(String, String)> {
        self.clients
            .iter()
            .filter_map(|c| {
                c.matches
                    .refused_by(policy)
                    .map(|w| (c.matches.to_string(), w))
            })
            .collect()
    }

    /// The params with every default filled in: what the agent stores and compares.
    pub fn to_params(&self) -> ExportParams {
        ExportParams {
            name: self.name.0.clone(),
            path: self.path.clone(),
            clients: self
                .clients
                .iter()
                .map(|c| ClientParams {
                    matches: c.matches.to_string(),
                    access: c.access,
                    squash: c.squash,
                    anonuid: c.anonuid,
                    anongid: c.anongid,
                })
                .collect(),
            sync: self.sync,
            pseudo: Some(self.pseudo.clone()),
            protocols: Some(self.protocols.clone()),
        }
    }
}

impl ExportParams {
    /// Every rule that needs no I/O. `allow_hostnames` is the agent's config
    /// `nfs.allow_hostnames`.
    pub fn validate(&self, allow_hostnames: bool) -> Result<ExportSpec, ValueError> {
        let name = ExportName::parse(&self.name)?;
        check_path("path", &self.path)?;
        if self.clients.is_empty() {
            return Err(invalid(
                "clients",
                "[]",
                "at least one client entry is needed (an export nobody may mount is refused)",
            ));
        }
        if self.clients.len() > MAX_CLIENTS {
            return Err(invalid(
                "clients",
                &format!("{} entries", self.clients.len()),
                format!("at most {MAX_CLIENTS} entries"),
            ));
        }
        let mut clients: Vec<ClientSpec> = Vec::with_capacity(self.clients.len());
        for c in &self.clients {
            let m = ClientMatch::parse(&c.matches, allow_hostnames)?;
            if clients.iter().any(|o| o.matches == m) {
                return Err(invalid(
                    "client match",
                    &c.matches,
                    "listed twice; give each client once",
                ));
            }
            for (what, v) in [("anonuid", c.anonuid), ("anongid", c.anongid)] {
                if v > MAX_ANON_ID {
                    return Err(invalid(
                        what,
                        &v.to_string(),
                        format!("must be from 0 to {MAX_ANON_ID}"),
                    ));
                }
            }
            clients.push(ClientSpec {
                matches: m,
                access: c.access,
                squash: c.squash,
                anonuid: c.anonuid,
                anongid: c.anongid,
            });
        }
        let pseudo = match &self.pseudo {
            Some(p) => {
                check_path("pseudo", p)?;
                p.clone()
            }
            None => format!("/{}", name.0),
        };
        let protocols = match &self.protocols {
            None => vec![3, 4],
            Some(v) => {
                let mut p = v.clone();
                p.sort_unstable();
                let before = p.len();
                p.dedup();
                if p.is_empty() || p.len() != before || p.iter().any(|x| !matches!(x, 3 | 4)) {
                    return Err(invalid(
                        "protocols",
                        &format!("{v:?}"),
                        "a non-empty list of distinct versions from [3, 4]",
                    ));
                }
                p
            }
        };
        Ok(ExportSpec {
            name,
            path: self.path.clone(),
            clients,
            sync: self.sync,
            pseudo,
            protocols,
        })
    }
}

/// One client entry as the backend really has it. Fields the backend does not report are
/// absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActualClient {
    #[serde(rename = "match")]
    pub matches: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub squash: Option<Squash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonuid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anongid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<bool>,
}

/// An export as read back from the backend (`exportfs -s`, or Ganesha's `DisplayExport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActualExport {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseudo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_id: Option<u16>,
    pub clients: Vec<ActualClient>,
}

/// One export in `get`/`list` results and after a mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExportStatus {
    pub name: String,
    /// What the console asked for (defaults filled in).
    pub desired: ExportParams,
    /// What the backend has; `null` when the export is missing there.
    pub actual: Option<ActualExport>,
    /// Each difference between `desired` and `actual`, in words; empty when in sync.
    pub drift: Vec<String>,
}

/// Result of `create` and `update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MutateResult {
    /// False when the spec was already in place (nothing was applied).
    pub changed: bool,
    pub export: ExportStatus,
}

/// Result of `delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeleteResult {
    pub name: String,
    pub existed: bool,
}

/// Result of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListResult {
    /// `kernel` or `ganesha`.
    pub backend: String,
    pub exports: Vec<ExportStatus>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and when
    /// no `limit` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: serde_json::Value) -> ExportParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = params(json!({"name": "vol1", "path": "/srv/csg/vol1",
                              "clients": [{"match": "10.0.0.0/8"}]}))
        .validate(false)
        .unwrap();
        let p = s.to_params();
        assert!(p.sync);
        assert_eq!(p.pseudo.as_deref(), Some("/vol1"));
        assert_eq!(p.protocols, Some(vec![3, 4]));
        let c = &p.clients[0];
        assert_eq!(
            (c.access, c.squash, c.anonuid, c.anongid),
            (Access::Ro, Squash::Root, 65534, 65534)
        );
        // Normalised params validate to the same spec: what the agent stores compares equal.
        assert_eq!(p.validate(false).unwrap(), s);
    }

    #[test]
    fn names() {
        for good in ["a", "vol1", "0", "a-b_c", &"x".repeat(32)] {
            ExportName::parse(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            "_a",
            "Vol",
            "a b",
            "a\nb",
            "a.b",
            "a/b",
            &"x".repeat(33),
            "é",
        ] {
            assert!(ExportName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_matches_without_hostnames() {
        for good in [
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::1",
            "0.0.0.0/0",
        ] {
            assert!(
                matches!(ClientMatch::parse(good, false), Ok(ClientMatch::Net(_))),
                "{good}"
            );
        }
        for bad in [
            "10.0.0.0/8(rw,no_root_squash)",
            "10.0.0.0/8 *(rw)",
            "10.0.0.1/8",
            "host.example.com",
            "*",
            "@ng",
            "10.0.0.0/8\n/etc *(rw)",
            "",
        ] {
            let e = ClientMatch::parse(bad, false).unwrap_err().to_string();
            assert!(e.contains("client match"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn client_matches_with_hostnames() {
        use ClientMatch::*;
        assert_eq!(
            ClientMatch::parse("nfs1.example.com", true).unwrap(),
            Host("nfs1.example.com".into())
        );
        assert_eq!(
            ClientMatch::parse("*.example.com", true).unwrap(),
            Wildcard("*.example.com".into())
        );
        assert_eq!(ClientMatch::parse("*", true).unwrap(), Wildcard("*".into()));
        assert_eq!(
            ClientMatch::parse("@admins", true).unwrap(),
            Netgroup("admins".into())
        );
        assert_eq!(
            ClientMatch::parse("@admins", true).unwrap().to_string(),
            "@admins"
        );
        for bad in [
            "host(rw)",
            "host,other",
            "Host.Example.com",
            "a b",
            "-host",
            "host-",
            "a..b",
            "@",
            "@ng(rw)",
            "@-x",
            "*(rw,no_root_squash)",
            "[ab]*.example.com",
            "10.0.0.1/8",
            "300.1.1.1",
            "host\"x",
            "host#x",
            "host\\x",
            "x\ny",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(ClientMatch::parse(bad, true).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostile_exports_are_refused() {
        let base = json!({"name": "vol1", "path": "/srv/csg/vol1",
                          "clients": [{"match": "10.0.0.0/8", "access": "rw"}]});
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("path", json!("/srv/csg/../etc")),
            ("path", json!("/srv/csg/vol1\n/etc *(rw)")),
            ("path", json!("/srv/csg/a b")),
            ("path", json!("/srv/csg/\"x\"")),
            ("path", json!("/srv/csg/#x")),
            ("path", json!("relative")),
            ("name", json!("vol1\n")),
            ("name", json!("../x")),
            ("clients", json!([])),
            (
                "clients",
                json!([{"match": "10.0.0.0/8(rw,no_root_squash)"}]),
            ),
            (
                "clients",
                json!([{"match": "10.0.0.0/8"}, {"match": "10.0.0.0/8"}]),
            ),
            (
                "clients",
                json!([{"match": "10.0.0.0/8", "anonuid": 4294967295u32}]),
            ),
            ("pseudo", json!("/")),
            ("pseudo", json!("/a\nb")),
            ("pseudo", json!("vol1")),
            ("protocols", json!([])),
            ("protocols", json!([2])),
            ("protocols", json!([4, 4])),
        ];
        for (k, v) in cases {
            let mut p = base.clone();
            p[k] = v.clone();
            let parsed: Result<ExportParams, _> = serde_json::from_value(p);
            if let Ok(p) = parsed {
                assert!(p.validate(true).is_err(), "{k} = {v} accepted");
            }
        }
        // Wrong types and unknown keys are refused by the decoder.
        for bad in [
            json!({"name": "v", "path": "/srv/v", "clients": [], "extra": 1}),
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "10.0.0.0/8", "access": "all"}]}),
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "10.0.0.0/8", "squash": "no_root_squash"}]}),
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "10.0.0.0/8", "options": "rw"}]}),
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "10.0.0.0/8", "anonuid": -1}]}),
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "10.0.0.0/8"}], "protocols": [300]}),
        ] {
            assert!(
                serde_json::from_value::<ExportParams>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn world_clients_need_the_opt_in() {
        let strict = WorldPolicy::strict("nfs");
        let open = WorldPolicy {
            allow_world: true,
            ..strict
        };
        for world in [
            "0.0.0.0/0",
            "0.0.0.0/7",
            "::/0",
            "::0/0",
            "2000::/3",
            "::/64",
            "::ffff:0.0.0.0/96",
            "::ffff:0.0.0.0/100",
            "*",
            "*.*",
            "**",
            "?*",
            "*.com",
            "*.*.*",
            "nfs*",
            "*example.com",
            "a*.b*.com",
        ] {
            let m = ClientMatch::parse(world, true).unwrap();
            let why = m
                .refused_by(&strict)
                .unwrap_or_else(|| panic!("{world} passed"));
            assert!(why.contains("nfs.allow_world"), "{world}: {why}");
            assert_eq!(m.refused_by(&open), None, "{world}");
        }
        for fine in [
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::1",
            "::ffff:10.0.0.0/104",
            "0.0.0.0",
            "*.example.com",
            "nfs?.example.com",
            "a*b.example.com",
            "host.example.com",
            "@admins",
        ] {
            let m = ClientMatch::parse(fine, true).unwrap();
            assert_eq!(m.refused_by(&strict), None, "{fine}");
        }
        // Spellings exportfs reads as everyone that never parse at all.
        for never in [
            "0/0",
            "0.0.0.0/0.0.0.0",
            "::/::",
            "0.0.0.0/-1",
            "gss/krb5",
            "[a]*",
        ] {
            assert!(ClientMatch::parse(never, true).is_err(), "{never}");
        }
        let spec = params(json!({"name": "v", "path": "/srv/v",
            "clients": [{"match": "10.0.0.0/8"}, {"match": "::/0"}]}))
        .validate(false)
        .unwrap();
        let e = spec.check_world(&strict).unwrap_err().to_string();
        assert!(e.contains("::/0") && e.contains("nfs.min_prefix_v6"), "{e}");
        spec.check_world(&open).unwrap();
        let narrow = WorldPolicy {
            min_prefix_v4: 16,
            ..strict
        };
        assert!(ClientMatch::parse("10.0.0.0/8", false)
            .unwrap()
            .refused_by(&narrow)
            .is_some_and(|w| w.contains("nfs.min_prefix_v4 = 16")));
    }

    #[test]
    fn protocols_are_normalised() {
        let s = params(
            json!({"name": "v", "path": "/srv/v", "clients": [{"match": "::1"}],
                              "protocols": [4, 3], "pseudo": "/exports/v"}),
        )
        .validate(false)
        .unwrap();
        assert_eq!(s.protocols(), &[3, 4]);
        assert_eq!(s.pseudo(), "/exports/v");
    }
}
