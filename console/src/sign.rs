//! Signing requests for gateways that require signed commands (`docs/protocol.md`, "Signed
//! commands"): keys, key files, and the [`Signer`] that [`crate::CallOptions`] carries.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use csg_protocol::jws::{self, ed25519_dalek::SigningKey};
use thiserror::Error;
use zeroize::Zeroizing;

/// A signed request may be valid for at most this long by default (the agent's
/// `security.max_command_validity_s` default).
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(300);

/// The shortest deadline csgctl gives a signed request it sends without `--deadline`, so a
/// console clock somewhat behind the gateway's does not turn every command into `EXPIRED`.
pub const MIN_SIGNED_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum SignError {
    #[error("cannot read signing key {path}: {message}")]
    Read { path: String, message: String },
    #[error("signing key {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("key id {0:?}: {1}")]
    KeyId(String, String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Signs every request of a call with one Ed25519 key under one key id. Cheap to clone; the
/// private key is zeroed when the last clone is dropped.
#[derive(Clone)]
pub struct Signer {
    key: Arc<SigningKey>,
    kid: String,
    /// The longest validity this console gives a signed request (the agent's limit).
    pub max_validity: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `key` under `kid` (the id the gateways know its public key by).
    pub fn new(key: SigningKey, kid: impl Into<String>) -> Result<Self, SignError> {
        let kid = kid.into();
        jws::check_key_id(&kid).map_err(|e| SignError::KeyId(kid.clone(), e.to_string()))?;
        Ok(Self {
            key: Arc::new(key),
            kid,
            max_validity: DEFAULT_MAX_VALIDITY,
        })
    }

    /// Reads a private key file (PEM PKCS#8 as written by `csgctl keygen` or `openssl genpkey
    /// -algorithm ed25519`, or one line of base64 holding the 32-byte seed). Without `kid`, the
    /// key id is the one `csgctl keygen` suggests for its public key.
    pub fn from_file(path: &Path, kid: Option<&str>) -> Result<Self, SignError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| SignError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if meta.len() > jws::MAX_KEY_FILE as u64 {
            return Err(SignError::Invalid {
                path: shown,
                message: format!("{} bytes is too large for a key file", meta.len()),
            });
        }
        // The key text is not kept: wiped when dropped.
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| SignError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?);
        let key = jws::parse_private_key(&text).map_err(|e| SignError::Invalid {
            path: shown,
            message: e.to_string(),
        })?;
        let kid = match kid {
            Some(k) => k.to_string(),
            None => jws::suggested_key_id(&key.verifying_key()),
        };
        Self::new(key, kid)
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs a request JSON for the gateway with client ID `aud`.
    pub fn sign(&self, request_json: &[u8], aud: &str) -> String {
        jws::sign(request_json, &self.kid, Some(aud), &self.key)
    }

    /// The deadline given to a signed request sent without an explicit one: the call's
    /// timeout, at least [`MIN_SIGNED_DEADLINE`], at most `max_validity`.
    pub fn default_deadline(&self, timeout: Duration) -> Duration {
        timeout.max(MIN_SIGNED_DEADLINE).min(self.max_validity)
    }
}

/// A fresh key pair from the operating system's random source.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Writes `PREFIX.key` (PEM PKCS#8, mode 0600, never over an existing file unless `force`) and
/// `PREFIX.pub` (PEM SubjectPublicKeyInfo, what the agent's `public_key_file` reads). Returns
/// the suggested key id and both paths.
pub fn write_key_pair(
    key: &SigningKey,
    prefix: &Path,
    force: bool,
) -> Result<(String, std::path::PathBuf, std::path::PathBuf), SignError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let (priv_path, pub_path) = (with_ext(".key"), with_ext(".pub"));
    let write = |path: &Path, mode: u32, text: &str| -> Result<(), SignError> {
        let err = |source| SignError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut o = std::fs::OpenOptions::new();
        o.write(true).mode(mode);
        if force {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let mut f = o.open(path).map_err(err)?;
        // An existing file keeps its mode on truncate: set it explicitly.
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    };
    if !force {
        for p in [&priv_path, &pub_path] {
            if p.exists() {
                return Err(SignError::Write {
                    path: p.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "already exists (use --force to replace it)",
                    ),
                });
            }
        }
    }
    let encode = |e: jws::KeyFileError| SignError::Invalid {
        path: priv_path.display().to_string(),
        message: e.to_string(),
    };
    // Wiped from memory when dropped.
    let pem = jws::private_key_pem(key).map_err(encode)?;
    write(&priv_path, 0o600, &pem)?;
    let vk = key.verifying_key();
    write(&pub_path, 0o644, &jws::public_key_pem(&vk).map_err(encode)?)?;
    Ok((jws::suggested_key_id(&vk), priv_path, pub_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn key_pair_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("ops");
        let key = generate_key();
        let (kid, priv_path, pub_path) = write_key_pair(&key, &prefix, false).unwrap();
        let mode = std::fs::metadata(&priv_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pubk = jws::parse_public_key(&std::fs::read_to_string(&pub_path).unwrap()).unwrap();
        assert_eq!(pubk, key.verifying_key());
        let s = Signer::from_file(&priv_path, None).unwrap();
        assert_eq!(s.key_id(), kid);
        let s2 = Signer::from_file(&priv_path, Some("ops-2026")).unwrap();
        let jws = s2.sign(b"{}", "G@@@gw");
        let v = jws::verify(jws.as_bytes(), 1024, |k| (k == "ops-2026").then_some(&pubk)).unwrap();
        assert_eq!(v.header.aud.as_deref(), Some("G@@@gw"));
        // No silent overwrite; --force replaces.
        assert!(write_key_pair(&key, &prefix, false).is_err());
        assert!(write_key_pair(&generate_key(), &prefix, true).is_ok());
        assert!(Signer::from_file(&pub_path, None).is_err());
        assert!(Signer::from_file(&priv_path, Some("bad id")).is_err());
        assert_eq!(
            s.default_deadline(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
        assert_eq!(
            s.default_deadline(Duration::from_secs(1000)),
            Duration::from_secs(300)
        );
    }
}
