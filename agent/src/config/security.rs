//! `[security]`: who may command this gateway (signed commands, per-key authorization) and the
//! limits that keep hostile input harmless.
//!
//! ```toml
//! [security]
//! require_signed_commands = true
//! max_command_validity_s = 300
//! clock_skew_s = 30
//! [security.trusted_keys.ops-2026]
//! public_key_file = "/etc/csg-agent/keys/ops-2026.pub"
//! allow = ["*"]
//! [security.trusted_keys.monitoring]
//! public_key_file = "/etc/csg-agent/keys/monitoring.pub"
//! allow = ["sys.*", "*.get", "*.list"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use csg_protocol::jws::{self, ed25519_dalek::VerifyingKey};
use serde::Deserialize;

use csg_protocol::methods::MethodPattern;

/// The id memory lasts at least this long (`agent.reply_cache_ttl_s` is never below it), so a
/// signed request can never outlive the memory of its id.
const ID_MEMORY_S: u64 = crate::config::MIN_REPLY_CACHE_TTL_S;

/// Most keys one agent trusts at once.
const MAX_TRUSTED_KEYS: usize = 64;

/// Most allow patterns per key.
const MAX_PATTERNS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecurity {
    pub require_signed_commands: bool,
    pub max_command_validity_s: u64,
    pub clock_skew_s: u64,
    pub trusted_keys: BTreeMap<String, RawTrustedKey>,
}

impl Default for RawSecurity {
    fn default() -> Self {
        Self {
            require_signed_commands: false,
            max_command_validity_s: 300,
            clock_skew_s: 30,
            trusted_keys: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedKey {
    pub public_key_file: PathBuf,
    /// Required: `["*"]` allows every method.
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySettings {
    pub require_signed_commands: bool,
    pub max_command_validity: Duration,
    pub clock_skew: Duration,
    pub trusted_keys: BTreeMap<String, TrustedKey>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        RawSecurity::default().validate(&mut Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrustedKey {
    pub public_key: VerifyingKey,
    pub allow: Vec<MethodPattern>,
    /// Where the key was read from (for logs).
    pub file: PathBuf,
}

fn read_key(path: &std::path::Path) -> Result<VerifyingKey, String> {
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > jws::MAX_KEY_FILE as u64 {
        return Err(format!(
            "{} bytes; a key file is at most {}",
            meta.len(),
            jws::MAX_KEY_FILE
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    jws::parse_public_key(&text).map_err(|e| e.to_string())
}

impl RawSecurity {
    pub fn validate(&self, p: &mut Vec<String>) -> SecuritySettings {
        if !(1..=ID_MEMORY_S).contains(&self.max_command_validity_s) {
            p.push(format!(
                "security.max_command_validity_s = {}: must be from 1 to {ID_MEMORY_S}",
                self.max_command_validity_s
            ));
        }
        if self.clock_skew_s > 300 {
            p.push(format!(
                "security.clock_skew_s = {}: the limit is 300",
                self.clock_skew_s
            ));
        }
        if self.max_command_validity_s + self.clock_skew_s > ID_MEMORY_S {
            p.push(format!(
                "security.max_command_validity_s + clock_skew_s = {}: must be at most {ID_MEMORY_S}, \
                 the time request ids are remembered, or a replay could outlive the memory of its id",
                self.max_command_validity_s + self.clock_skew_s
            ));
        }
        if self.require_signed_commands && self.trusted_keys.is_empty() {
            p.push(
                "security.require_signed_commands = true needs at least one entry in security.trusted_keys"
                    .into(),
            );
        }
        if self.trusted_keys.len() > MAX_TRUSTED_KEYS {
            p.push(format!(
                "security.trusted_keys: {} keys; the limit is {MAX_TRUSTED_KEYS}",
                self.trusted_keys.len()
            ));
        }
        let mut keys = BTreeMap::new();
        for (kid, k) in &self.trusted_keys {
            let at = format!("security.trusted_keys.{kid}");
            let mut ok = true;
            if let Err(e) = jws::check_key_id(kid) {
                p.push(format!("{at}: {e}"));
                ok = false;
            }
            let allow = match &k.allow {
                None => {
                    p.push(format!(
                        "{at}.allow is required: a list of method patterns (\"*\" allows every method)"
                    ));
                    ok = false;
                    Vec::new()
                }
                Some(list) if list.is_empty() => {
                    p.push(format!(
                        "{at}.allow is empty: a key that may call nothing; remove the key instead"
                    ));
                    ok = false;
                    Vec::new()
                }
                Some(list) if list.len() > MAX_PATTERNS => {
                    p.push(format!(
                        "{at}.allow: {} patterns; the limit is {MAX_PATTERNS}",
                        list.len()
                    ));
                    ok = false;
                    Vec::new()
                }
                Some(list) => list
                    .iter()
                    .filter_map(|s| {
                        MethodPattern::new(s)
                            .map_err(|e| {
                                p.push(format!("{at}.allow: {e}"));
                                ok = false;
                            })
                            .ok()
                    })
                    .collect(),
            };
            let key = read_key(&k.public_key_file)
                .map_err(|e| {
                    p.push(format!(
                        "{at}.public_key_file = {:?}: {e}",
                        k.public_key_file.display().to_string()
                    ));
                    ok = false;
                })
                .ok();
            if let (true, Some(public_key)) = (ok, key) {
                keys.insert(
                    kid.clone(),
                    TrustedKey {
                        public_key,
                        allow,
                        file: k.public_key_file.clone(),
                    },
                );
            }
        }
        SecuritySettings {
            require_signed_commands: self.require_signed_commands,
            max_command_validity: Duration::from_secs(self.max_command_validity_s),
            clock_skew: Duration::from_secs(self.clock_skew_s),
            trusted_keys: keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::jws::ed25519_dalek::SigningKey;

    fn parse(text: &str) -> Result<SecuritySettings, Vec<String>> {
        #[derive(Deserialize)]
        struct W {
            security: RawSecurity,
        }
        let w: W = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut p = Vec::new();
        let s = w.security.validate(&mut p);
        if p.is_empty() {
            Ok(s)
        } else {
            Err(p)
        }
    }

    #[test]
    fn defaults() {
        let s = SecuritySettings::default();
        assert!(!s.require_signed_commands);
        assert_eq!(s.max_command_validity, Duration::from_secs(300));
        assert_eq!(s.clock_skew, Duration::from_secs(30));
        assert!(s.trusted_keys.is_empty());
    }

    #[test]
    fn keys_are_read_and_every_problem_reported() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let pem = dir.path().join("a.pub");
        std::fs::write(&pem, jws::public_key_pem(&k).unwrap()).unwrap();
        let text = format!(
            r#"[security]
require_signed_commands = true
[security.trusted_keys.ops]
public_key_file = "{}"
allow = ["*"]
[security.trusted_keys.ro]
public_key_file = "{}"
allow = ["sys.*", "*.get", "*.list"]
"#,
            pem.display(),
            pem.display()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.trusted_keys.len(), 2);
        assert_eq!(s.trusted_keys["ro"].public_key, k);
        assert_eq!(s.trusted_keys["ro"].allow.len(), 3);

        std::fs::write(dir.path().join("bad.pub"), "garbage").unwrap();
        let text = format!(
            r#"[security]
require_signed_commands = true
max_command_validity_s = 590
clock_skew_s = 20
[security.trusted_keys."bad id"]
public_key_file = "{0}"
allow = ["*"]
[security.trusted_keys.missing]
public_key_file = "{1}/none.pub"
allow = ["sys.*"]
[security.trusted_keys.garbage]
public_key_file = "{1}/bad.pub"
allow = ["Sys.*", "a..b"]
[security.trusted_keys.noallow]
public_key_file = "{0}"
[security.trusted_keys.emptyallow]
public_key_file = "{0}"
allow = []
[security.trusted_keys.relative]
public_key_file = "keys/a.pub"
allow = ["*"]
"#,
            pem.display(),
            dir.path().display()
        );
        let p = parse(&text).unwrap_err();
        // validity + skew, bad id, missing file, garbage file, two patterns, no allow, empty
        // allow, relative path.
        assert_eq!(p.len(), 9, "{p:#?}");
        assert!(p
            .iter()
            .any(|m| m.contains("none.pub") && m.contains("cannot read")));
        assert!(p.iter().any(|m| m.contains("bad.pub")));
        assert!(p.iter().any(|m| m.contains("absolute")));
        // require without keys
        let p = parse("[security]\nrequire_signed_commands = true\n").unwrap_err();
        assert_eq!(p.len(), 1);
        let p = parse("[security]\nmax_command_validity_s = 0\nclock_skew_s = 301\n").unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
