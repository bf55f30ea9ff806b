//! `[smb]`: the Samba server the agent drives through its registry (`net conf`).

use std::path::PathBuf;

use csg_protocol::validate::{check_path, WorldPolicy};
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
    /// Handed to net, smbcontrol, smbpasswd, pdbedit and testparm, so a private smbd can be
    /// driven. Its `[global]` must contain `include = registry`.
    pub smb_conf: String,
    pub net: String,
    pub smbcontrol: String,
    pub smbpasswd: String,
    pub pdbedit: String,
    pub testparm: String,
    /// Looks up Unix users and groups (through NSS).
    pub getent: String,
    pub useradd: String,
    pub userdel: String,
    /// `smb.user.set` for a name with no Unix account creates one
    /// (`useradd --system --no-create-home --shell /usr/sbin/nologin`); false refuses instead.
    pub create_unix_users: bool,
    /// An existing Unix account the agent did not create may get a Samba password only if its
    /// uid is at least this (system accounts and root stay out of reach).
    pub min_existing_uid: u32,
    /// `hosts_allow` entries reaching everyone (`0.0.0.0/0`, `::/0`, a prefix shorter than
    /// the minimums below) are allowed. Off: opening a share to the world is a choice.
    pub allow_world: bool,
    /// Shortest IPv4 prefix a `hosts_allow` entry may have without `allow_world`.
    pub min_prefix_v4: u8,
    /// Shortest IPv6 prefix a `hosts_allow` entry may have without `allow_world`.
    pub min_prefix_v6: u8,
}

impl Default for RawSmb {
    fn default() -> Self {
        Self {
            backend: SmbBackendKind::Disabled,
            smb_conf: "/etc/samba/smb.conf".into(),
            net: "/usr/bin/net".into(),
            smbcontrol: "/usr/bin/smbcontrol".into(),
            smbpasswd: "/usr/bin/smbpasswd".into(),
            pdbedit: "/usr/bin/pdbedit".into(),
            testparm: "/usr/bin/testparm".into(),
            getent: "/usr/bin/getent".into(),
            useradd: "/usr/sbin/useradd".into(),
            userdel: "/usr/sbin/userdel".into(),
            create_unix_users: true,
            min_existing_uid: 1000,
            allow_world: false,
            min_prefix_v4: WorldPolicy::strict("smb").min_prefix_v4,
            min_prefix_v6: WorldPolicy::strict("smb").min_prefix_v6,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmbSettings {
    pub backend: SmbBackendKind,
    pub smb_conf: PathBuf,
    pub net: PathBuf,
    pub smbcontrol: PathBuf,
    pub smbpasswd: PathBuf,
    pub pdbedit: PathBuf,
    pub testparm: PathBuf,
    pub getent: PathBuf,
    pub useradd: PathBuf,
    pub userdel: PathBuf,
    pub create_unix_users: bool,
    pub min_existing_uid: u32,
    pub world: WorldPolicy,
}

impl RawSmb {
    pub fn validate(&self, p: &mut Vec<String>) -> SmbSettings {
        for (k, v) in [
            ("smb.smb_conf", &self.smb_conf),
            ("smb.net", &self.net),
            ("smb.smbcontrol", &self.smbcontrol),
            ("smb.smbpasswd", &self.smbpasswd),
            ("smb.pdbedit", &self.pdbedit),
            ("smb.testparm", &self.testparm),
            ("smb.getent", &self.getent),
            ("smb.useradd", &self.useradd),
            ("smb.userdel", &self.userdel),
        ] {
            if let Err(e) = check_path(k, v) {
                p.push(e.to_string());
            }
        }
        if self.min_existing_uid == 0 {
            p.push("smb.min_existing_uid = 0 would let root log in over SMB: use 1 or more".into());
        }
        let world = super::nfs::world_policy(
            "smb",
            self.allow_world,
            self.min_prefix_v4,
            self.min_prefix_v6,
            p,
        );
        SmbSettings {
            world,
            backend: self.backend,
            smb_conf: PathBuf::from(&self.smb_conf),
            net: PathBuf::from(&self.net),
            smbcontrol: PathBuf::from(&self.smbcontrol),
            smbpasswd: PathBuf::from(&self.smbpasswd),
            pdbedit: PathBuf::from(&self.pdbedit),
            testparm: PathBuf::from(&self.testparm),
            getent: PathBuf::from(&self.getent),
            useradd: PathBuf::from(&self.useradd),
            userdel: PathBuf::from(&self.userdel),
            create_unix_users: self.create_unix_users,
            min_existing_uid: self.min_existing_uid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_debian_and_bad_values_are_named() {
        let mut p = Vec::new();
        let s = RawSmb::default().validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.smb_conf, PathBuf::from("/etc/samba/smb.conf"));
        assert!(s.create_unix_users);
        let raw = RawSmb {
            net: "net".into(),
            min_existing_uid: 0,
            ..RawSmb::default()
        };
        raw.validate(&mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("smb.net") && p[1].contains("min_existing_uid"));
    }
}
