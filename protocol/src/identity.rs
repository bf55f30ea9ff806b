//! Identities: group, instance, client and request ids, and method names.
//!
//! Each is a newtype whose only constructor checks the charset and the length, so a value of
//! these types is valid by construction and can be put into a topic or a log line as is.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::MAX_CLIENT_ID_LEN;

/// Separator between group and instance in a client ID, fixed by Alibaba Cloud MQTT.
pub const CLIENT_ID_SEPARATOR: &str = "@@@";

/// Longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Longest method name accepted.
pub const MAX_METHOD_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("{what} is empty; it needs 1 or more characters of [A-Za-z0-9_.:-]")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is {len} characters long; the limit is {limit}")]
    TooLong {
        what: &'static str,
        value: String,
        len: usize,
        limit: usize,
    },
    #[error("{what} {value:?} has the character {ch:?}; only {allowed} are allowed")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
}

const ID_CHARSET: &str = "[A-Za-z0-9_.:-]";

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn check(
    what: &'static str,
    value: &str,
    limit: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::Empty { what });
    }
    // Check the charset first: it bounds every character to one byte, so len() is the count.
    if let Some(ch) = value.chars().find(|c| !ok(*c)) {
        return Err(IdentityError::BadChar {
            what,
            value: truncate_for_message(value),
            ch,
            allowed,
        });
    }
    if value.len() > limit {
        return Err(IdentityError::TooLong {
            what,
            value: truncate_for_message(value),
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

/// Values echoed in error messages are cut so a hostile 1 MiB id cannot bloat a reply or a log.
fn truncate_for_message(value: &str) -> String {
    const KEEP: usize = 80;
    if value.chars().count() <= KEEP {
        value.to_string()
    } else {
        let mut s: String = value.chars().take(KEEP).collect();
        s.push('…');
        s
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $limit:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdentityError> {
                let value = value.into();
                check($what, &value, $limit, ID_CHARSET, is_id_char)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdentityError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// `group_id`: the Alibaba Cloud MQTT group (e.g. `GID_csg`), the first half of the client ID.
    GroupId,
    "group_id",
    MAX_CLIENT_ID_LEN - CLIENT_ID_SEPARATOR.len() - 1
);
id_type!(
    /// `instance_id`: one gateway (or one console), the second half of the client ID.
    InstanceId,
    "instance_id",
    MAX_CLIENT_ID_LEN - CLIENT_ID_SEPARATOR.len() - 1
);
id_type!(
    /// A request id: 1–64 characters of `[A-Za-z0-9_.:-]`, unique per command the console means.
    RequestId,
    "request id",
    MAX_REQUEST_ID_LEN
);

/// `{group_id}@@@{instance_id}`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    full: String,
    group: GroupId,
    instance: InstanceId,
}

impl ClientId {
    pub fn new(group: GroupId, instance: InstanceId) -> Result<Self, IdentityError> {
        let full = format!("{group}{CLIENT_ID_SEPARATOR}{instance}");
        if full.len() > MAX_CLIENT_ID_LEN {
            return Err(IdentityError::TooLong {
                what: "client ID (group_id@@@instance_id)",
                len: full.len(),
                value: full,
                limit: MAX_CLIENT_ID_LEN,
            });
        }
        Ok(Self {
            full,
            group,
            instance,
        })
    }

    /// Splits `GROUP@@@INSTANCE` back into its halves, checking both.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let (g, i) = s
            .split_once(CLIENT_ID_SEPARATOR)
            .ok_or(IdentityError::BadChar {
                what: "client ID",
                value: truncate_for_message(s),
                ch: '?',
                allowed: "GROUP@@@INSTANCE",
            })?;
        Self::new(GroupId::new(g)?, InstanceId::new(i)?)
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
    pub fn group(&self) -> &GroupId {
        &self.group
    }
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// A method name such as `sys.ping`: lower-case dotted words, `[a-z0-9_.]`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MethodName(String);

impl MethodName {
    pub fn new(value: impl Into<String>) -> Result<Self, IdentityError> {
        let value = value.into();
        check("method", &value, MAX_METHOD_LEN, "[a-z0-9_.]", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
        })?;
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The family is the part before the last dot: `nfs.export` for `nfs.export.create`.
    pub fn family(&self) -> &str {
        self.0.rsplit_once('.').map_or(&self.0, |(f, _)| f)
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_joins_and_parses_back() {
        let c = ClientId::new(
            GroupId::new("GID_csg").unwrap(),
            InstanceId::new("gw-001").unwrap(),
        )
        .unwrap();
        assert_eq!(c.as_str(), "GID_csg@@@gw-001");
        let back = ClientId::parse(c.as_str()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.instance().as_str(), "gw-001");
    }

    #[test]
    fn client_id_over_64_names_value_and_limit() {
        let g = GroupId::new("G".repeat(30)).unwrap();
        let i = InstanceId::new("i".repeat(32)).unwrap();
        let err = ClientId::new(g, i).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("65 characters"), "{msg}");
        assert!(msg.contains("limit is 64"), "{msg}");
        assert!(msg.contains("GGGG"), "{msg}");
    }

    #[test]
    fn exactly_64_is_accepted() {
        let g = GroupId::new("G".repeat(30)).unwrap();
        let i = InstanceId::new("i".repeat(31)).unwrap();
        assert_eq!(ClientId::new(g, i).unwrap().as_str().len(), 64);
    }

    #[test]
    fn charset_is_enforced() {
        for bad in ["", "a/b", "a+b", "a#", "gw 1", "gw\u{0}", "é", "a@b"] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?} accepted");
            assert!(RequestId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "gw-001", "A.b_c:d-9"] {
            InstanceId::new(good).unwrap();
        }
        assert!(RequestId::new("x".repeat(64)).is_ok());
        assert!(RequestId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn method_names() {
        assert_eq!(
            MethodName::new("nfs.export.create").unwrap().family(),
            "nfs.export"
        );
        assert!(MethodName::new("Sys.Ping").is_err());
        assert!(MethodName::new("sys/ping").is_err());
        assert!(MethodName::new("").is_err());
    }

    #[test]
    fn long_hostile_values_are_truncated_in_messages() {
        let err = RequestId::new("x".repeat(100_000)).unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}
