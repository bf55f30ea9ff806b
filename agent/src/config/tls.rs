//! `[mqtt.tls]`: TLS towards the broker (for `mqtts://` URLs).

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {}

impl RawTls {
    pub fn validate(&self, _p: &mut Vec<String>) -> TlsSettings {
        TlsSettings {}
    }
}
