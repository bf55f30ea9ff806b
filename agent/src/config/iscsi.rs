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
    /// The tgtadm program (tgt backend).
    pub tgtadm: String,
    /// The targetcli program (lio backend).
    pub targetcli: String,
    /// Where configfs shows the LIO target core (lio backend): read back, never written.
    pub configfs_root: String,
    /// How often the agent checks that tgtd still has every desired target (a restarted tgtd
    /// has none) and puts them back; 0 turns the watcher off (start-up and `sys.reconcile`
    /// still re-apply). tgt only: LIO keeps its targets while the kernel runs.
    pub watch_interval_s: u64,
}

impl Default for RawIscsi {
    fn default() -> Self {
        Self {
            backend: IscsiBackendKind::Disabled,
            iqn_prefix: "iqn.2026-11.com.example.csg".into(),
            tgt_socket: "/var/run/tgtd/socket".into(),
            tgtadm: "/usr/sbin/tgtadm".into(),
            targetcli: "/usr/bin/targetcli".into(),
            configfs_root: "/sys/kernel/config/target".into(),
            watch_interval_s: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IscsiSettings {
    pub backend: IscsiBackendKind,
    pub iqn_prefix: String,
    pub tgt_socket: PathBuf,
    pub tgtadm: PathBuf,
    pub targetcli: PathBuf,
    pub configfs_root: PathBuf,
    pub watch_interval: Option<std::time::Duration>,
}

impl RawIscsi {
    pub fn validate(&self, p: &mut Vec<String>) -> IscsiSettings {
        for (k, v) in [
            ("iscsi.tgt_socket", &self.tgt_socket),
            ("iscsi.tgtadm", &self.tgtadm),
            ("iscsi.targetcli", &self.targetcli),
            ("iscsi.configfs_root", &self.configfs_root),
        ] {
            if let Err(e) = check_path(k, v) {
                p.push(e.to_string());
            }
        }
        // The prefix must make a valid IQN with any name appended.
        let iqn_ok = csg_protocol::methods::iscsi::Iqn::parse("iscsi.iqn_prefix", &self.iqn_prefix)
            .is_ok_and(|_| !self.iqn_prefix.contains(':'));
        if !self.iqn_prefix.starts_with("iqn.") || self.iqn_prefix.len() > 150 || !iqn_ok {
            p.push(format!(
                "iscsi.iqn_prefix = {:?}: must be an iqn. name without a ':' part \
                 (iqn.YYYY-MM.reversed.domain, lowercase), at most 150 bytes so names fit",
                self.iqn_prefix
            ));
        }
        if self.watch_interval_s > 3600 {
            p.push(format!(
                "iscsi.watch_interval_s = {}: must be from 0 (off) to 3600",
                self.watch_interval_s
            ));
        }
        IscsiSettings {
            backend: self.backend,
            iqn_prefix: self.iqn_prefix.clone(),
            tgt_socket: PathBuf::from(&self.tgt_socket),
            tgtadm: PathBuf::from(&self.tgtadm),
            targetcli: PathBuf::from(&self.targetcli),
            configfs_root: PathBuf::from(&self.configfs_root),
            watch_interval: (self.watch_interval_s > 0)
                .then(|| std::time::Duration::from_secs(self.watch_interval_s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let mut p = Vec::new();
        let s = RawIscsi::default().validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.watch_interval, Some(std::time::Duration::from_secs(5)));
        for (raw, key) in [
            (
                RawIscsi {
                    iqn_prefix: "iqn.2026-11.com.example:x".into(),
                    ..Default::default()
                },
                "iscsi.iqn_prefix",
            ),
            (
                RawIscsi {
                    iqn_prefix: "IQN.2026-11.com.example".into(),
                    ..Default::default()
                },
                "iscsi.iqn_prefix",
            ),
            (
                RawIscsi {
                    tgt_socket: "/run/tgt sock".into(),
                    ..Default::default()
                },
                "iscsi.tgt_socket",
            ),
            (
                RawIscsi {
                    configfs_root: "sys/kernel/config/target".into(),
                    ..Default::default()
                },
                "iscsi.configfs_root",
            ),
            (
                RawIscsi {
                    watch_interval_s: 4000,
                    ..Default::default()
                },
                "iscsi.watch_interval_s",
            ),
        ] {
            let mut p = Vec::new();
            raw.validate(&mut p);
            assert!(p.len() == 1 && p[0].contains(key), "{key}: {p:?}");
        }
    }
}
