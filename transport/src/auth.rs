//! Broker credentials: none, username + password, and Alibaba Cloud MQTT's signature and
//! token modes.
//!
//! Alibaba Cloud MQTT (ApsaraMQ for MQTT) puts the mode, the AccessKey ID and the instance ID
//! into the MQTT username, `Mode|AccessKeyId|InstanceId`:
//!
//! * signature mode: username `Signature|{AccessKeyId}|{InstanceId}`, password
//!   `Base64(HMAC-SHA1(key = AccessKey secret, data = client ID))`;
//! * token mode: username `Token|{AccessKeyId}|{InstanceId}`, password the token string
//!   `{type}|{token}[|{type}|{token}…]` with type `R`, `W` or `RW` (e.g. `RW|abc…`), as the
//!   token service hands it out.
//!
//! Secrets come from files, are read for each connect, and live in zeroed-on-drop buffers.

use std::path::PathBuf;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::files::read_secret;

/// How to authenticate to the broker. Holds only names and file paths, never secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No username or password.
    #[default]
    None,
    /// A username and a password read from a file.
    Password {
        username: String,
        password_file: PathBuf,
    },
    /// Alibaba Cloud MQTT signature mode.
    AlibabaSignature {
        access_key_id: String,
        instance_id: String,
        access_key_secret_file: PathBuf,
    },
    /// Alibaba Cloud MQTT token mode.
    AlibabaToken {
        access_key_id: String,
        instance_id: String,
        token_file: PathBuf,
    },
}

/// A username and password for one CONNECT. The password is zeroed when dropped, and is
/// never shown by `Debug`.
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The Alibaba Cloud MQTT signature-mode password: Base64(HMAC-SHA1(secret, client ID)).
pub fn alibaba_signature(access_key_secret: &[u8], client_id: &str) -> Zeroizing<String> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, access_key_secret);
    let tag = ring::hmac::sign(&key, client_id.as_bytes());
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
}

/// Whether a token-mode password has Alibaba's shape: `TYPE|TOKEN` pairs, TYPE one of
/// `R`, `W`, `RW`, each type at most once.
pub fn token_shape_ok(token: &str) -> bool {
    let parts: Vec<&str> = token.split('|').collect();
    if parts.is_empty() || !parts.len().is_multiple_of(2) {
        return false;
    }
    let mut seen = Vec::new();
    for pair in parts.chunks(2) {
        let (kind, value) = (pair[0], pair[1]);
        if !matches!(kind, "R" | "W" | "RW") || value.is_empty() || seen.contains(&kind) {
            return false;
        }
        seen.push(kind);
    }
    true
}

/// A field that goes between `|` separators of an Alibaba username.
fn alibaba_field_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains('|') && !s.chars().any(char::is_control)
}

impl Auth {
    /// Rules that need no file: non-empty names, no `|` inside Alibaba fields. Each problem
    /// is named with `prefix` (e.g. `mqtt.auth.`).
    pub fn check_shape(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        match self {
            Auth::None => {}
            Auth::Password { username, .. } => {
                if username.is_empty() || username.chars().any(char::is_control) {
                    p.push(format!(
                        "{prefix}username: must be non-empty, without control characters"
                    ));
                }
            }
            Auth::AlibabaSignature {
                access_key_id,
                instance_id,
                ..
            }
            | Auth::AlibabaToken {
                access_key_id,
                instance_id,
                ..
            } => {
                if !alibaba_field_ok(access_key_id) {
                    p.push(format!(
                        "{prefix}access_key_id: must be non-empty, without '|'"
                    ));
                }
                if !alibaba_field_ok(instance_id) {
                    p.push(format!(
                        "{prefix}instance_id: the Alibaba Cloud MQTT instance id (e.g. mqtt-cn-…) must be non-empty, without '|'"
                    ));
                }
            }
        }
        p
    }

    /// The secret file of this mode, if any, and what it holds.
    pub fn secret_file(&self) -> Option<(&std::path::Path, &'static str)> {
        match self {
            Auth::None => None,
            Auth::Password { password_file, .. } => Some((password_file, "password file")),
            Auth::AlibabaSignature {
                access_key_secret_file,
                ..
            } => Some((access_key_secret_file, "AccessKey secret file")),
            Auth::AlibabaToken { token_file, .. } => Some((token_file, "token file")),
        }
    }

    /// Reads the secret file and makes the credentials for a CONNECT as `client_id`.
    /// `Ok(None)` for [`Auth::None`]. Errors name the file, never its content.
    pub fn credentials(&self, client_id: &str) -> Result<Option<Credentials>, String> {
        Ok(Some(match self {
            Auth::None => return Ok(None),
            Auth::Password {
                username,
                password_file,
            } => Credentials {
                username: username.clone(),
                password: read_secret(password_file, "password")?,
            },
            Auth::AlibabaSignature {
                access_key_id,
                instance_id,
                access_key_secret_file,
            } => {
                let secret = read_secret(access_key_secret_file, "AccessKey secret")?;
                Credentials {
                    username: format!("Signature|{access_key_id}|{instance_id}"),
                    password: alibaba_signature(secret.as_bytes(), client_id),
                }
            }
            Auth::AlibabaToken {
                access_key_id,
                instance_id,
                token_file,
            } => {
                let token = read_secret(token_file, "token")?;
                if !token_shape_ok(&token) {
                    return Err(format!(
                        "{} does not hold an Alibaba token string (TYPE|TOKEN pairs, TYPE R, W or RW, e.g. RW|…)",
                        token_file.display()
                    ));
                }
                Credentials {
                    username: format!("Token|{access_key_id}|{instance_id}"),
                    password: token,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc2202_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?",
        // HMAC-SHA1 = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        let expected = base64::engine::general_purpose::STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ]);
        assert_eq!(
            alibaba_signature(b"Jefe", "what do ya want for nothing?").as_str(),
            expected
        );
    }

    #[test]
    fn credentials_per_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "Jefe\n").unwrap();
        let a = Auth::AlibabaSignature {
            access_key_id: "AK".into(),
            instance_id: "mqtt-cn-x".into(),
            access_key_secret_file: f.clone(),
        };
        let c = a.credentials("GID_csg@@@gw-1").unwrap().unwrap();
        assert_eq!(c.username, "Signature|AK|mqtt-cn-x");
        assert_eq!(*c.password, *alibaba_signature(b"Jefe", "GID_csg@@@gw-1"));
        assert!(!format!("{c:?}").contains(c.password.as_str()));

        std::fs::write(&f, "RW|tok123\n").unwrap();
        let t = Auth::AlibabaToken {
            access_key_id: "AK".into(),
            instance_id: "mqtt-cn-x".into(),
            token_file: f.clone(),
        };
        let c = t.credentials("GID_csg@@@gw-1").unwrap().unwrap();
        assert_eq!(c.username, "Token|AK|mqtt-cn-x");
        assert_eq!(c.password.as_str(), "RW|tok123");
        std::fs::write(&f, "tok123\n").unwrap();
        let e = t.credentials("x").unwrap_err();
        assert!(!e.contains("tok123"), "{e}");

        assert!(Auth::None.credentials("x").unwrap().is_none());
    }

    #[test]
    fn token_shapes() {
        for ok in ["R|a", "W|b", "RW|c", "R|a|W|b", "W|b|R|a"] {
            assert!(token_shape_ok(ok), "{ok}");
        }
        for bad in ["", "a", "R|", "R|a|R|b", "X|a", "R|a|W"] {
            assert!(!token_shape_ok(bad), "{bad}");
        }
    }

    #[test]
    fn alibaba_fields_refuse_separators() {
        let a = Auth::AlibabaSignature {
            access_key_id: "A|K".into(),
            instance_id: String::new(),
            access_key_secret_file: "/x".into(),
        };
        assert_eq!(a.check_shape("mqtt.auth.").len(), 2);
    }
}
