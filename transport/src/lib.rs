//! What csg-agent and csgctl share about the link to the broker, apart from MQTT itself:
//!
//! * [`tls`]: a rustls `ClientConfig` built from files (CA bundle or the system roots, an
//!   optional server-name override, an optional client certificate and key), and a
//!   classification of handshake failures into what an operator has to fix;
//! * [`auth`]: the broker credentials of each authentication mode (password, Alibaba Cloud
//!   MQTT signature and token modes), with every secret read from a file and zeroed after use.
//!
//! Neither touches the MQTT client: the callers put the results into it. Files are read on
//! every call, so a caller that builds before each connect picks up rotated certificates,
//! keys and secrets without a restart.

pub mod auth;
pub mod files;
pub mod tls;

pub use auth::{Auth, Credentials};
pub use tls::{TlsFailure, TlsOptions};

/// Installs ring as the process-wide rustls crypto provider. Idempotent. Every config this
/// crate builds names its provider explicitly anyway; this covers any other rustls user in the
/// process, which would otherwise have to guess.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
