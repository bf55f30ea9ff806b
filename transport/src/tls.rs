//! The rustls client configuration for `mqtts://` brokers, and what a failed handshake means.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};
use thiserror::Error;

use crate::files::{read_zeroizing, warn_if_exposed};

/// Where the TLS settings come from. Only paths and names: the files are read by
/// [`TlsOptions::client_config`] each time it is called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM bundle of the CAs to trust; `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, instead of the host of the URL (for
    /// brokers reached by IP address, or through a name their certificate does not list).
    pub server_name: Option<String>,
    /// PEM client certificate chain for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// Why a client configuration could not be built (a local problem: files, not the broker).
#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Content {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "no system root certificates found (install the CA certificates package, or set a CA file)"
    )]
    NoSystemRoots,
    #[error("server name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error(
        "a client certificate needs its key and a key needs its certificate: give both or neither"
    )]
    HalfClientIdentity,
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = read_zeroizing(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Content {
            what,
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Content {
            what,
            path: path.to_path_buf(),
            reason: "holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    const WHAT: &str = "client key file";
    warn_if_exposed(path, "the TLS client key file");
    let bytes = read_zeroizing(path).map_err(|source| TlsSetupError::Read {
        what: WHAT,
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsSetupError::Content {
        what: WHAT,
        path: path.to_path_buf(),
        reason: format!("holds no usable private key ({e})"),
    })
}

impl TlsOptions {
    /// Whether anything is set (a plain `mqtt://` URL with TLS options is a mistake).
    pub fn is_set(&self) -> bool {
        self != &TlsOptions::default()
    }

    /// Checks what can be checked without reading files.
    pub fn check_shape(&self) -> Result<(), TlsSetupError> {
        if let Some(name) = &self.server_name {
            ServerName::try_from(name.as_str())
                .map_err(|_| TlsSetupError::ServerName(name.clone()))?;
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(TlsSetupError::HalfClientIdentity);
        }
        Ok(())
    }

    /// Builds the client configuration, reading every file now: TLS 1.2 or 1.3, ring as the
    /// crypto provider, the CA file or the system roots, the server-name override and the
    /// client certificate when given.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        self.check_shape()?;
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = read_certs(path, "CA file")?;
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsSetupError::Content {
                        what: "CA file",
                        path: path.clone(),
                        reason: "holds no usable CA certificate".into(),
                    });
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsSetupError::NoSystemRoots);
                }
            }
        }
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &self.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| TlsSetupError::ServerName(name.clone()))?;
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NameOverride { inner, name }))
            }
        };
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate file")?;
                let key = read_key(key)?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// Verifies the broker's certificate fully (chain, validity, signatures) but against the
/// configured name instead of the URL's host. SNI still carries the URL's host (none for an
/// IP address): the MQTT client hands that to rustls.
#[derive(Debug)]
struct NameOverride {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS handshake failure that retrying will not fix: the operator has to act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The broker's certificate has expired (or the local clock is wrong).
    ServerCertExpired,
    /// The broker's certificate is not valid yet (or the local clock is wrong).
    ServerCertNotYetValid,
    /// The broker's certificate does not chain to a trusted CA.
    UnknownCa,
    /// The broker's certificate does not name the host we connected to (or the override).
    NameMismatch,
    /// The broker's certificate was revoked.
    ServerCertRevoked,
    /// The broker's certificate is unusable for another reason.
    BadServerCert(String),
    /// The broker refused our client certificate (missing, expired, unknown CA …).
    ClientCertRefused(String),
    /// Another TLS error (protocol versions, ciphers, a broken peer).
    Other(String),
}

impl TlsFailure {
    /// One line for the log and for systemd's STATUS=.
    pub fn describe(&self) -> String {
        match self {
            TlsFailure::ServerCertExpired => {
                "TLS: the broker's certificate has expired (or this machine's clock is wrong)".into()
            }
            TlsFailure::ServerCertNotYetValid => {
                "TLS: the broker's certificate is not valid yet (or this machine's clock is wrong)".into()
            }
            TlsFailure::UnknownCa => {
                "TLS: the broker's certificate is not signed by a trusted CA (check the CA file)".into()
            }
            TlsFailure::NameMismatch => {
                "TLS: the broker's certificate does not match the broker's name (check the URL host or the server name override)".into()
            }
            TlsFailure::ServerCertRevoked => "TLS: the broker's certificate is revoked".into(),
            TlsFailure::BadServerCert(e) => format!("TLS: the broker's certificate is unusable: {e}"),
            TlsFailure::ClientCertRefused(why) => format!(
                "TLS: the broker refused our client certificate ({why}); check the client certificate, its key and its expiry"
            ),
            TlsFailure::Other(e) => format!("TLS handshake failed: {e}"),
        }
    }

    /// Short machine-friendly name, for log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            TlsFailure::ServerCertExpired => "server_cert_expired",
            TlsFailure::ServerCertNotYetValid => "server_cert_not_yet_valid",
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::NameMismatch => "name_mismatch",
            TlsFailure::ServerCertRevoked => "server_cert_revoked",
            TlsFailure::BadServerCert(_) => "bad_server_cert",
            TlsFailure::ClientCertRefused(_) => "client_cert_refused",
            TlsFailure::Other(_) => "tls",
        }
    }
}

fn classify_rustls(e: &rustls::Error) -> TlsFailure {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => TlsFailure::ServerCertExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::ServerCertNotYetValid,
            C::UnknownIssuer => TlsFailure::UnknownCa,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
            C::Revoked => TlsFailure::ServerCertRevoked,
            other => TlsFailure::BadServerCert(format!("{other:?}")),
        },
        rustls::Error::AlertReceived(a) => match a {
            AlertDescription::CertificateExpired => {
                TlsFailure::ClientCertRefused("it has expired".into())
            }
            AlertDescription::CertificateRequired => {
                TlsFailure::ClientCertRefused("the broker requires one".into())
            }
            AlertDescription::UnknownCA => {
                TlsFailure::ClientCertRefused("signed by a CA the broker does not trust".into())
            }
            AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure => TlsFailure::ClientCertRefused(format!(
                "alert {a:?}; a missing client certificate looks like this"
            )),
            other => TlsFailure::Other(format!("the broker sent alert {other:?}")),
        },
        other => TlsFailure::Other(other.to_string()),
    }
}

/// Finds a rustls error in an error's chain (also inside `std::io::Error`, whose `source()`
/// skips the wrapped error) and says what it means. `None`: not a TLS failure (a network
/// error, a timeout, an MQTT refusal).
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(classify_rustls(r));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(classify_rustls(r));
                }
                cur = Some(inner);
                depth += 1;
                if depth > 16 {
                    return None;
                }
                continue;
            }
        }
        cur = e.source();
        depth += 1;
        if depth > 16 {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked_before_files() {
        let o = TlsOptions {
            client_cert_file: Some("/nonexistent/c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            o.check_shape(),
            Err(TlsSetupError::HalfClientIdentity)
        ));
        let o = TlsOptions {
            server_name: Some("bad name!".into()),
            ..Default::default()
        };
        assert!(matches!(o.check_shape(), Err(TlsSetupError::ServerName(_))));
        let o = TlsOptions {
            server_name: Some("10.0.0.1".into()),
            ..Default::default()
        };
        assert!(o.check_shape().is_ok());
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let o = TlsOptions {
            ca_file: Some(ca.clone()),
            ..Default::default()
        };
        let e = o.client_config().unwrap_err().to_string();
        assert!(
            e.contains("cannot read CA file") && e.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&ca, "not pem\n").unwrap();
        let e = o.client_config().unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn errors_are_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        assert_eq!(classify(&io), Some(TlsFailure::UnknownCa));
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
        );
        assert!(matches!(
            classify(&alert),
            Some(TlsFailure::ClientCertRefused(_))
        ));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&plain), None);
    }
}
