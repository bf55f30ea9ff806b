//! `[storage]`: where exports and backing files may live, and where the agent keeps its state.

use std::path::PathBuf;
use std::time::Duration;

use csg_protocol::validate::check_path;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// Every export path and backing file lies under one of these (after resolving symlinks).
    pub roots: Vec<String>,
    /// Desired state and other agent-owned files.
    pub state_dir: String,
    /// Whether iSCSI LUNs may be existing block devices (otherwise files under a root only).
    pub allow_devices: bool,
    /// Every external program is killed after this long (→ `TIMEOUT`).
    pub command_timeout_s: u64,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            roots: vec!["/srv/csg".into()],
            state_dir: "/var/lib/csg-agent".into(),
            allow_devices: false,
            command_timeout_s: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageSettings {
    pub roots: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub allow_devices: bool,
    pub command_timeout: Duration,
}

impl RawStorage {
    pub fn validate(&self, p: &mut Vec<String>) -> StorageSettings {
        if self.roots.is_empty() {
            p.push("storage.roots is empty: list at least one directory".into());
        }
        for r in &self.roots {
            if let Err(e) = check_path("storage.roots entry", r) {
                p.push(e.to_string());
            }
        }
        if let Err(e) = check_path("storage.state_dir", &self.state_dir) {
            p.push(e.to_string());
        }
        if !(1..=3600).contains(&self.command_timeout_s) {
            p.push(format!(
                "storage.command_timeout_s = {}: must be from 1 to 3600",
                self.command_timeout_s
            ));
        }
        StorageSettings {
            roots: self.roots.iter().map(PathBuf::from).collect(),
            state_dir: PathBuf::from(&self.state_dir),
            allow_devices: self.allow_devices,
            command_timeout: Duration::from_secs(self.command_timeout_s),
        }
    }
}
