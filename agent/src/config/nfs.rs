//! `[nfs]`: which NFS server the agent drives, and where its files are.

use std::path::PathBuf;

use csg_protocol::validate::check_path;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NfsBackendKind {
    Disabled,
    /// Kernel nfsd: one agent-owned file in /etc/exports.d, applied with `exportfs -ra`.
    Kernel,
    /// NFS-Ganesha: one EXPORT file per export in a directory ganesha.conf includes.
    Ganesha,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNfs {
    pub backend: NfsBackendKind,
    pub exports_file: String,
    pub exportfs: String,
    /// Clients may be host names, wildcards and @netgroups (not only IPs and CIDRs).
    pub allow_hostnames: bool,
}

impl Default for RawNfs {
    fn default() -> Self {
        Self {
            backend: NfsBackendKind::Disabled,
            exports_file: "/etc/exports.d/csg-agent.exports".into(),
            exportfs: "/usr/sbin/exportfs".into(),
            allow_hostnames: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NfsSettings {
    pub backend: NfsBackendKind,
    pub exports_file: PathBuf,
    pub exportfs: PathBuf,
    pub allow_hostnames: bool,
}

impl RawNfs {
    pub fn validate(&self, p: &mut Vec<String>) -> NfsSettings {
        for (k, v) in [
            ("nfs.exports_file", &self.exports_file),
            ("nfs.exportfs", &self.exportfs),
        ] {
            if let Err(e) = check_path(k, v) {
                p.push(e.to_string());
            }
        }
        if self.backend == NfsBackendKind::Kernel && !self.exports_file.ends_with(".exports") {
            p.push(format!(
                "nfs.exports_file = {:?}: exportfs only reads files ending in .exports",
                self.exports_file
            ));
        }
        NfsSettings {
            backend: self.backend,
            exports_file: PathBuf::from(&self.exports_file),
            exportfs: PathBuf::from(&self.exportfs),
            allow_hostnames: self.allow_hostnames,
        }
    }
}
