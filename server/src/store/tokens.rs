//! API tokens: what is stored about them, and the hash the store keeps instead of the secret.
//!
//! A token's secret is 256 random bits, so a plain SHA-256 of it is enough: there is nothing to
//! guess that a slow, salted hash (argon2) would protect, and an unsalted digest lets a request's
//! token be found with one index lookup instead of verifying against every stored hash.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use csg_protocol::identity::GroupId;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::StoreError;

/// What a token may do. `read` ⊂ `operate` ⊂ `admin`; `audit` (reading the audit log) is held
/// by `admin` or given on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Operate,
    Admin,
    Audit,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
            Scope::Audit => "audit",
        }
    }

    pub fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "read" => Ok(Scope::Read),
            "operate" => Ok(Scope::Operate),
            "admin" => Ok(Scope::Admin),
            "audit" => Ok(Scope::Audit),
            other => Err(StoreError::Invalid(format!(
                "scope {other:?}: read, operate, admin or audit"
            ))),
        }
    }
}

/// A token's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenName(String);

impl TokenName {
    pub fn new(value: impl Into<String>) -> Result<Self, StoreError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(TokenName(value))
        } else {
            Err(StoreError::Invalid(format!(
                "token name {value:?}: 1 to 64 of A-Z a-z 0-9 . _ -"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token's secret as shown once to its owner. Never stored, never logged.
pub struct TokenSecret(String);

impl TokenSecret {
    const PREFIX: &'static str = "csgc_";

    /// 256 bits from the operating system's random source.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| StoreError::Other(format!("random source: {e}")))?;
        Ok(TokenSecret(format!(
            "{}{}",
            Self::PREFIX,
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The text to print once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

/// SHA-256 of a presented token: what the store keeps and looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of what a client presented (it need not be a well-formed token: a wrong one
    /// simply finds nothing).
    pub fn of(presented: &str) -> Self {
        TokenHash(Sha256::digest(presented.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: TokenName,
    pub hash: TokenHash,
    pub scopes: Vec<Scope>,
    /// Empty: every group.
    pub groups: Vec<GroupId>,
    pub created_ms: i64,
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub name: TokenName,
    pub scopes: Vec<Scope>,
    pub groups: Vec<GroupId>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

pub(crate) fn scopes_to_text(scopes: &[Scope]) -> String {
    let mut s: Vec<Scope> = scopes.to_vec();
    s.sort();
    s.dedup();
    s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

pub(crate) fn scopes_from_text(text: &str) -> Result<Vec<Scope>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(Scope::parse)
        .collect()
}

pub(crate) fn groups_to_text(groups: &[GroupId]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn groups_from_text(text: &str) -> Result<Vec<GroupId>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Other(format!("stored groups: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_consistently() {
        let a = TokenSecret::generate().unwrap();
        let b = TokenSecret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash(), TokenHash::of(a.expose()));
        assert_ne!(a.hash(), b.hash());
        assert!(a.expose().len() > 40);
        assert!(!format!("{a:?}").contains(&a.expose()[5..]));
    }

    #[test]
    fn names_and_scopes_parse_checked() {
        assert!(TokenName::new("ci-deploy.1").is_ok());
        assert!(TokenName::new("").is_err());
        assert!(TokenName::new("a b").is_err());
        assert_eq!(
            scopes_from_text(&scopes_to_text(&[Scope::Admin, Scope::Read, Scope::Admin])).unwrap(),
            vec![Scope::Read, Scope::Admin]
        );
        assert!(Scope::parse("root").is_err());
    }
}
