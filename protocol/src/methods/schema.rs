//! JSON Schemas (2020-12) of every method's params and result, generated from the types the
//! agent itself decodes and encodes, so the schemas `sys.capabilities` hands a console cannot
//! drift from what the agent accepts.
//!
//! Values that are built checked (names, paths, masks, IQNs, …) say their real rules here
//! (pattern, length, range), written next to the parser they describe; the tests hold every
//! documented example to these schemas.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::sys::{MethodCaps, ProtocolCaps};
use super::{iscsi, nfs, page::ListParams, smb, sys, Kind, ReconcileReport};
use crate::status::Heartbeat;

/// Protocol versions this build speaks, oldest first. `v` on the wire stays the major version.
pub const VERSIONS: &[&str] = &["1.0", "1.1"];

/// Params of a method that takes none: `{}`.
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its schema is used.
struct NoParams {}

pub fn protocol() -> ProtocolCaps {
    ProtocolCaps {
        versions: VERSIONS.iter().map(ToString::to_string).collect(),
        current: VERSIONS.last().copied().unwrap_or("1.0").to_string(),
        envelope_v: crate::PROTOCOL_VERSION,
    }
}

/// Whether the method named `name` may change the gateway (`None`: not a method). Agrees with
/// [`super::Method::kind`]; the tests hold them together.
pub fn kind(name: &str) -> Option<Kind> {
    Some(spec(name)?.0)
}

type Gen = fn(&mut SchemaGenerator) -> Schema;

fn root<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.root_schema_for::<T>()
}

/// A method's kind, and the generators of its params (as decoded) and result (as encoded).
fn spec(name: &str) -> Option<(Kind, Gen, Gen)> {
    use Kind::{Mutation as M, Read as R};
    Some(match name {
        sys::PING => (R, root::<NoParams>, root::<sys::PingResult>),
        sys::INFO => (R, root::<NoParams>, root::<sys::InfoResult>),
        sys::CAPABILITIES => (R, root::<NoParams>, root::<sys::CapabilitiesResult>),
        sys::STATUS => (R, root::<NoParams>, root::<Heartbeat>),
        sys::RECONCILE => (M, root::<NoParams>, root::<ReconcileReport>),
        nfs::EXPORT_CREATE | nfs::EXPORT_UPDATE => {
            (M, root::<nfs::ExportParams>, root::<nfs::MutateResult>)
        }
        nfs::EXPORT_DELETE => (M, root::<nfs::NameParams>, root::<nfs::DeleteResult>),
        nfs::EXPORT_GET => (R, root::<nfs::NameParams>, root::<nfs::ExportStatus>),
        nfs::EXPORT_LIST => (R, root::<ListParams>, root::<nfs::ListResult>),
        smb::SHARE_CREATE | smb::SHARE_UPDATE => {
            (M, root::<smb::ShareSpec>, root::<smb::ShareResult>)
        }
        smb::SHARE_DELETE => (M, root::<smb::ShareRef>, root::<smb::DeleteResult>),
        smb::SHARE_GET => (R, root::<smb::ShareRef>, root::<smb::ShareInfo>),
        smb::SHARE_LIST => (R, root::<ListParams>, root::<smb::ShareList>),
        smb::USER_SET => (M, root::<smb::UserSet>, root::<smb::UserSetResult>),
        smb::USER_DELETE => (M, root::<smb::UserRef>, root::<smb::DeleteResult>),
        smb::USER_LIST => (R, root::<ListParams>, root::<smb::UserList>),
        iscsi::TARGET_CREATE | iscsi::TARGET_UPDATE => {
            (M, root::<iscsi::TargetParams>, root::<iscsi::ApplyResult>)
        }
        iscsi::TARGET_DELETE => (M, root::<iscsi::DeleteParams>, root::<iscsi::DeleteResult>),
        iscsi::TARGET_GET => (R, root::<iscsi::GetParams>, root::<iscsi::TargetView>),
        iscsi::TARGET_LIST => (R, root::<ListParams>, root::<iscsi::ListResult>),
        _ => return None,
    })
}

/// Drops the prose (`description`, `title`) from every schema and subschema: with it, every
/// method's schemas in one `sys.capabilities` reply came to ~79 KB, over the 60 KiB reply cap;
/// without it ~50 KB. The prose is in docs/methods; the rules (types, patterns, lengths,
/// ranges, enums, required fields) all stay.
fn no_prose(s: &mut Schema) {
    s.remove("description");
    s.remove("title");
}

/// Params are described as the agent decodes them (a field with a default is optional);
/// results as it encodes them (a field it leaves out when empty is optional).
fn generators() -> (SchemaGenerator, SchemaGenerator) {
    let prose = RecursiveTransform(no_prose as fn(&mut Schema));
    let params = SchemaSettings::draft2020_12()
        .with_transform(prose.clone())
        .into_generator();
    let result = SchemaSettings::draft2020_12()
        .for_serialize()
        .with_transform(prose)
        .into_generator();
    (params, result)
}

/// The kind and schemas of the method named `name` (`None`: not a method).
pub fn describe(name: &str) -> Option<MethodCaps> {
    let (kind, params, result) = spec(name)?;
    let (mut pg, mut rg) = generators();
    Some(MethodCaps {
        kind: match kind {
            Kind::Read => "read",
            Kind::Mutation => "mutation",
        }
        .to_string(),
        params: params(&mut pg).to_value(),
        result: result(&mut rg).to_value(),
    })
}

// ---------------------------------------------------------------------------------------------
// Values built checked: a string with its rule.

/// A string schema, inlined where it is used (a console reads the rule at the field).
macro_rules! checked_string {
    ($t:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $t {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// `check_path`: absolute, `[A-Za-z0-9._/-]`, no empty, `.`, `..` or `-`-led component.
pub(crate) const PATH_PATTERN: &str = r"^(/(?!\.\.?(/|$))[A-Za-z0-9._][A-Za-z0-9._-]*)+$";
/// An IP address or CIDR network (the parser also refuses host bits set in a CIDR).
const CIDR_PATTERN: &str = r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$";
const ACCOUNT_PATTERN: &str = "^[a-z_][a-z0-9_-]{0,31}$";

checked_string!(smb::ShareName, "ShareName", {
    "type": "string",
    "description": "Samba share name; not global, homes, printers, print$ or ipc$ (any case)",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$",
    "maxLength": 80
});
checked_string!(smb::UserName, "UserName", {
    "type": "string", "pattern": ACCOUNT_PATTERN, "maxLength": 32
});
checked_string!(smb::GroupName, "GroupName", {
    "type": "string", "pattern": ACCOUNT_PATTERN, "maxLength": 32
});
checked_string!(smb::Principal, "Principal", {
    "type": "string",
    "description": "a user name, or @ and a group name",
    "pattern": "^@?[a-z_][a-z0-9_-]{0,31}$",
    "maxLength": 33
});
checked_string!(smb::Mask, "Mask", {
    "type": "string",
    "description": "octal permission mask; written back with four digits",
    "pattern": "^0?[0-7]{3}$"
});
checked_string!(smb::Comment, "Comment", {
    "type": "string",
    "description": "no control characters, %, \" or \\, no leading or trailing blanks",
    "pattern": "^(?![ \\t])(?!.*[ \\t]$)[^%\"\\\\\\u0000-\\u001f\\u007f]*$",
    "maxLength": 256
});
checked_string!(smb::SharePath, "SharePath", {
    "type": "string", "pattern": PATH_PATTERN, "maxLength": 1023
});
checked_string!(smb::HostRule, "HostRule", {
    "type": "string", "description": "an IP address or CIDR network",
    "pattern": CIDR_PATTERN, "maxLength": 43
});
checked_string!(smb::Password, "Password", {
    "type": "string",
    "description": "8 to 127 bytes, no control characters; never returned",
    "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
    "minLength": 8,
    "maxLength": 127,
    "writeOnly": true
});
checked_string!(iscsi::TargetName, "TargetName", {
    "type": "string", "pattern": iscsi::NAME_PATTERN, "maxLength": 63
});
checked_string!(iscsi::Iqn, "Iqn", {
    "type": "string",
    "description": "iqn.YYYY-MM.reversed.domain[:unique], eui. + 16 hex or naa. + 16/32 hex; lowercase",
    "pattern": iscsi::IQN_PATTERN,
    "maxLength": 223
});
checked_string!(iscsi::ChapUser, "ChapUser", {
    "type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", "maxLength": 64
});
checked_string!(iscsi::CidrKey, "Cidr", {
    "type": "string", "description": "an IP address or CIDR network",
    "pattern": CIDR_PATTERN, "maxLength": 43
});

/// An error code is any upper-case word: a console must accept codes it does not know (a newer
/// agent's), so the schema lists today's as `examples`, not as an `enum`.
impl JsonSchema for crate::ErrorCode {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        use crate::ErrorCode as E;
        let known: Vec<&str> = [
            E::BadRequest,
            E::UnknownMethod,
            E::InvalidParams,
            E::NotFound,
            E::Conflict,
            E::Expired,
            E::Busy,
            E::Unauthorized,
            E::Unavailable,
            E::Timeout,
            E::BackendError,
            E::Internal,
            E::ReplyTooLarge,
        ]
        .iter()
        .map(|c| c.as_str())
        .collect();
        json_schema!({"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$", "examples": known})
    }
}

/// Every method's description, for the tests and for tools: `(name, caps)` for each of
/// [`super::ALL`].
pub fn all() -> Vec<(&'static str, MethodCaps)> {
    super::ALL
        .iter()
        .filter_map(|&m| describe(m).map(|c| (m, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_described() {
        for &m in super::super::ALL {
            let d = describe(m).unwrap_or_else(|| panic!("{m} has no schema"));
            for s in [&d.params, &d.result] {
                assert_eq!(
                    s["$schema"], "https://json-schema.org/draft/2020-12/schema",
                    "{m}"
                );
            }
        }
        assert!(describe("sys.nope").is_none());
    }
}
