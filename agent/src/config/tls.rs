//! `[mqtt.tls]`: TLS towards the broker (for `mqtts://` URLs).
//!
//! The files are checked (read and parsed) at validation, so `check-config` reports a missing
//! or broken one, and read again by the session before every connect, so rotated certificates
//! and keys are used from the next connection on without a restart. Their stamps (inode, size,
//! modification time) are part of the settings: a SIGHUP after a rotation is a change and
//! makes a new session at once.

use std::path::PathBuf;

use csg_transport::files::FileStamp;
use csg_transport::TlsOptions;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM bundle of trusted CAs; absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Name to verify the broker's certificate against instead of the URL's host.
    pub server_name: Option<String>,
    /// Mutual TLS: client certificate chain (PEM) and its key (PEM); both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {
    /// `None` for `mqtt://` URLs.
    pub options: Option<TlsOptions>,
    /// Stamps of the files named in `options`, in a fixed order.
    pub stamps: Vec<Option<FileStamp>>,
}

impl RawTls {
    fn options(&self) -> TlsOptions {
        TlsOptions {
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    /// `tls_url`: whether the broker URL is `mqtts://`.
    pub fn validate(&self, tls_url: bool, p: &mut Vec<String>) -> TlsSettings {
        let options = self.options();
        if !tls_url {
            if options.is_set() {
                p.push(
                    "mqtt.tls: TLS settings are given but mqtt.url is mqtt:// (plain TCP); use mqtts://"
                        .into(),
                );
            }
            return TlsSettings::default();
        }
        let mut ok = true;
        for (key, path) in [
            ("ca_file", &options.ca_file),
            ("client_cert_file", &options.client_cert_file),
            ("client_key_file", &options.client_key_file),
        ] {
            if let Some(path) = path {
                if !path.is_absolute() {
                    p.push(format!(
                        "mqtt.tls.{key} = {:?}: must be an absolute path",
                        path.display()
                    ));
                    ok = false;
                }
            }
        }
        if let Err(e) = options.check_shape() {
            p.push(format!("mqtt.tls: {e}"));
            ok = false;
        }
        if ok {
            // Reads and parses every file now (and the system roots when no CA file is given).
            if let Err(e) = options.client_config() {
                p.push(format!("mqtt.tls: {e}"));
            }
        }
        let stamps = [
            &options.ca_file,
            &options.client_cert_file,
            &options.client_key_file,
        ]
        .iter()
        .map(|f| f.as_ref().and_then(|f| FileStamp::of(f).ok()))
        .collect();
        TlsSettings {
            options: Some(options),
            stamps,
        }
    }
}
