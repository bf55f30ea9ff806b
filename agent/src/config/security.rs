//! `[security]`: who may command this gateway (signed commands, per-key authorization) and the
//! limits that keep hostile input harmless.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecurity {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecuritySettings {}

impl RawSecurity {
    pub fn validate(&self, _p: &mut Vec<String>) -> SecuritySettings {
        SecuritySettings {}
    }
}
