//! `[mqtt.auth]`: how the agent authenticates to the broker.
//!
//! ```toml
//! [mqtt.auth]
//! mode = "password"                 # none | password | alibaba_signature | alibaba_token
//! username = "gw-001"
//! password_file = "/etc/csg-agent/broker-password"
//! ```
//!
//! Secrets live in files (mode 0600), are read at validation (to report a missing or empty
//! one) and again before every connect, and are never logged or kept.

use std::path::PathBuf;

use csg_transport::files::FileStamp;
use csg_transport::Auth;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAuthMode {
    #[default]
    None,
    Password,
    AlibabaSignature,
    AlibabaToken,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub mode: RawAuthMode,
    /// Password mode.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Alibaba modes.
    pub access_key_id: Option<String>,
    /// Alibaba Cloud MQTT instance id (e.g. `mqtt-cn-…`), not the gateway's instance id.
    pub instance_id: Option<String>,
    /// Signature mode.
    pub access_key_secret_file: Option<PathBuf>,
    /// Token mode.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthSettings {
    pub method: Auth,
    /// Stamp of the secret file: a rotated secret makes a SIGHUP start a new session.
    pub stamp: Option<FileStamp>,
}

impl RawAuth {
    pub fn validate(&self, p: &mut Vec<String>) -> AuthSettings {
        use RawAuthMode as M;
        let mode_name = match self.mode {
            M::None => "none",
            M::Password => "password",
            M::AlibabaSignature => "alibaba_signature",
            M::AlibabaToken => "alibaba_token",
        };
        // Which keys each mode uses; any other key given is a mistake worth reporting.
        let keys: [(&str, bool, &[RawAuthMode]); 6] = [
            ("username", self.username.is_some(), &[M::Password]),
            (
                "password_file",
                self.password_file.is_some(),
                &[M::Password],
            ),
            (
                "access_key_id",
                self.access_key_id.is_some(),
                &[M::AlibabaSignature, M::AlibabaToken],
            ),
            (
                "instance_id",
                self.instance_id.is_some(),
                &[M::AlibabaSignature, M::AlibabaToken],
            ),
            (
                "access_key_secret_file",
                self.access_key_secret_file.is_some(),
                &[M::AlibabaSignature],
            ),
            ("token_file", self.token_file.is_some(), &[M::AlibabaToken]),
        ];
        let mut complete = true;
        for (key, given, modes) in keys {
            let used = modes.contains(&self.mode);
            if given && !used {
                p.push(format!(
                    "mqtt.auth.{key}: not used with mode = \"{mode_name}\"; remove it or change the mode"
                ));
            } else if used && !given {
                p.push(format!(
                    "mqtt.auth.{key}: required with mode = \"{mode_name}\""
                ));
                complete = false;
            }
        }
        if !complete {
            return AuthSettings::default();
        }
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let f = |v: &Option<PathBuf>| v.clone().unwrap_or_default();
        let method = match self.mode {
            M::None => Auth::None,
            M::Password => Auth::Password {
                username: s(&self.username),
                password_file: f(&self.password_file),
            },
            M::AlibabaSignature => Auth::AlibabaSignature {
                access_key_id: s(&self.access_key_id),
                instance_id: s(&self.instance_id),
                access_key_secret_file: f(&self.access_key_secret_file),
            },
            M::AlibabaToken => Auth::AlibabaToken {
                access_key_id: s(&self.access_key_id),
                instance_id: s(&self.instance_id),
                token_file: f(&self.token_file),
            },
        };
        p.extend(method.check_shape("mqtt.auth."));
        let mut stamp = None;
        if let Some((path, what)) = method.secret_file() {
            if !path.is_absolute() {
                p.push(format!(
                    "mqtt.auth: {what} {:?} must be an absolute path",
                    path.display()
                ));
            } else {
                // Reads the secret once (zeroed on drop) so a missing, empty or malformed file
                // is a config error now, not a connect failure later.
                match method.credentials("check") {
                    Ok(_) => stamp = FileStamp::of(path).ok(),
                    Err(e) => p.push(format!("mqtt.auth: {e}")),
                }
            }
        }
        AuthSettings { method, stamp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawAuth {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn none_is_the_default() {
        let mut p = Vec::new();
        let a = RawAuth::default().validate(&mut p);
        assert!(p.is_empty());
        assert_eq!(a.method, Auth::None);
    }

    #[test]
    fn every_problem_is_reported() {
        let mut p = Vec::new();
        parse("mode = \"alibaba_signature\"\nusername = \"u\"\ntoken_file = \"/t\"\n")
            .validate(&mut p);
        // username and token_file do not belong; access_key_id, instance_id and the secret
        // file are missing.
        assert_eq!(p.len(), 5, "{p:#?}");
    }

    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        let text = format!(
            "mode = \"password\"\nusername = \"gw\"\npassword_file = {:?}\n",
            f.display().to_string()
        );
        let mut p = Vec::new();
        parse(&text).validate(&mut p);
        assert!(p.len() == 1 && p[0].contains("cannot read"), "{p:?}");
        std::fs::write(&f, "s3cret\n").unwrap();
        let mut p = Vec::new();
        let a = parse(&text).validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert!(a.stamp.is_some());
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
