//! `[iscsi]`: the iSCSI target the agent drives (tgt through tgtadm, or LIO through targetcli).

use std::path::PathBuf;

use csg_protocol::validate::check_path;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IscsiBackendKind {
    Disabled,
    Tgt,
    Lio,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIscsi {
    pub backend: IscsiBackendKind,
    /// Target IQN = iqn_prefix + ":" + name, unless a request gives an explicit iqn.
    pub iqn_prefix: String,
    /// TGT_IPC_SOCKET for tgtadm (tgtd appends ".0"), so a private tgtd can be driven.
    pub tgt_socket: String,
    pub tgtadm: String,
}

impl Default for RawIscsi {
    fn default() -> Self {
        Self {
            backend: IscsiBackendKind::Disabled,
            iqn_prefix: "iqn.2026-11.com.example.csg".into(),
            tgt_socket: "/var/run/tgtd/socket".into(),
            tgtadm: "/usr/sbin/tgtadm".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IscsiSettings {
    pub backend: IscsiBackendKind,
    pub iqn_prefix: String,
    pub tgt_socket: PathBuf,
    pub tgtadm: PathBuf,
}

impl RawIscsi {
    pub fn validate(&self, p: &mut Vec<String>) -> IscsiSettings {
        for (k, v) in [
            ("iscsi.tgt_socket", &self.tgt_socket),
            ("iscsi.tgtadm", &self.tgtadm),
        ] {
            if let Err(e) = check_path(k, v) {
                p.push(e.to_string());
            }
        }
        // The IQN grammar itself is checked by the iSCSI family when it builds names.
        if !self.iqn_prefix.starts_with("iqn.") || self.iqn_prefix.len() > 200 {
            p.push(format!(
                "iscsi.iqn_prefix = {:?}: must start with \"iqn.\" and leave room for a name (at most 200 bytes)",
                self.iqn_prefix
            ));
        }
        IscsiSettings {
            backend: self.backend,
            iqn_prefix: self.iqn_prefix.clone(),
            tgt_socket: PathBuf::from(&self.tgt_socket),
            tgtadm: PathBuf::from(&self.tgtadm),
        }
    }
}
