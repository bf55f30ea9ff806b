//! Everything that talks to a broker, shared by csg-agent, csgctl and the test harness:
//!
//! * [`session`]: the one MQTT session (connect, subscribe, SUBACK, `Ready(epoch)`, inbound
//!   channel, urgent and normal outbound lanes, refusal classes, back-off); the only module
//!   that names the MQTT client library;
//! * [`backoff`]: exponential back-off with full jitter;
//! * [`tls`]: a rustls `ClientConfig` built from files (CA bundle or the system roots, an
//!   optional server-name override, an optional client certificate and key), and a
//!   classification of handshake failures into what an operator has to fix;
//! * [`auth`]: the broker credentials of each authentication mode (password, Alibaba Cloud
//!   MQTT signature and token modes), with every secret read from a file and zeroed after use.
//!
//! Files are read on every call, and the session builds both before each connect, so rotated
//! certificates, keys and secrets are picked up without a restart.

pub mod auth;
pub mod backoff;
pub mod files;
pub mod session;
pub mod tls;

pub use auth::{Auth, Credentials};
pub use backoff::Backoff;
pub use session::{
    Endpoint, Failure, Hooks, Inbound, LinkState, Message, NoHooks, Properties, Protocol,
    PublishError, Qos, Queues, Rotation, Session, SessionConfig, SubscribeError,
};
pub use tls::{TlsFailure, TlsOptions};

/// Installs ring as the process-wide rustls crypto provider. Idempotent. Every config this
/// crate builds names its provider explicitly anyway; this covers any other rustls user in the
/// process, which would otherwise have to guess.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
