//! `[mqtt.auth]`: how the agent authenticates to the broker.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthSettings {}

impl RawAuth {
    pub fn validate(&self, _p: &mut Vec<String>) -> AuthSettings {
        AuthSettings {}
    }
}
