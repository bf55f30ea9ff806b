//! `[smb]`: the Samba server the agent drives through its registry (`net conf`).

use std::path::PathBuf;

use csg_protocol::validate::check_path;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmbBackendKind {
    Disabled,
    Samba,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSmb {
    pub backend: SmbBackendKind,
    /// Handed to net, smbcontrol and smbpasswd, so a private smbd can be driven.
    pub smb_conf: String,
    pub net: String,
    pub smbcontrol: String,
    pub smbpasswd: String,
}

impl Default for RawSmb {
    fn default() -> Self {
        Self {
            backend: SmbBackendKind::Disabled,
            smb_conf: "/etc/samba/smb.conf".into(),
            net: "/usr/bin/net".into(),
            smbcontrol: "/usr/bin/smbcontrol".into(),
            smbpasswd: "/usr/bin/smbpasswd".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmbSettings {
    pub backend: SmbBackendKind,
    pub smb_conf: PathBuf,
    pub net: PathBuf,
    pub smbcontrol: PathBuf,
    pub smbpasswd: PathBuf,
}

impl RawSmb {
    pub fn validate(&self, p: &mut Vec<String>) -> SmbSettings {
        for (k, v) in [
            ("smb.smb_conf", &self.smb_conf),
            ("smb.net", &self.net),
            ("smb.smbcontrol", &self.smbcontrol),
            ("smb.smbpasswd", &self.smbpasswd),
        ] {
            if let Err(e) = check_path(k, v) {
                p.push(e.to_string());
            }
        }
        SmbSettings {
            backend: self.backend,
            smb_conf: PathBuf::from(&self.smb_conf),
            net: PathBuf::from(&self.net),
            smbcontrol: PathBuf::from(&self.smbcontrol),
            smbpasswd: PathBuf::from(&self.smbpasswd),
        }
    }
}
