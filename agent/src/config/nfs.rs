//! `[nfs]`: which NFS server the agent drives, and where its files are.

use std::path::PathBuf;

use csg_protocol::validate::{check_path, WorldPolicy};
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
    /// Kernel: the one exports file the agent owns (must end in `.exports`).
    pub exports_file: String,
    /// Kernel: the exportfs program.
    pub exportfs: String,
    /// Clients may be host names, wildcards and @netgroups (not only IPs and CIDRs).
    pub allow_hostnames: bool,
    /// Clients reaching everyone (`*`, `0.0.0.0/0`, `::/0`, a wildcard with no domain, a prefix
    /// shorter than the minimums below) are allowed. Off: exporting to the world is a choice.
    pub allow_world: bool,
    /// Shortest IPv4 prefix a client may have without `allow_world`.
    pub min_prefix_v4: u8,
    /// Shortest IPv6 prefix a client may have without `allow_world`.
    pub min_prefix_v6: u8,
    /// Ganesha: the directory of the agent's EXPORT files; ganesha.conf must contain
    /// `%dir <ganesha_dir>/*.conf` (or `%dir <ganesha_dir>`).
    pub ganesha_dir: String,
    /// Ganesha: the dbus-send program.
    pub dbus_send: String,
    /// Ganesha: the D-Bus address Ganesha listens on; empty means the system bus.
    pub dbus_address: String,
    /// Ganesha: the first Export_Id the agent hands out (ids below it are left to the
    /// operator's own exports in ganesha.conf).
    pub first_export_id: u32,
}

impl Default for RawNfs {
    fn default() -> Self {
        Self {
            backend: NfsBackendKind::Disabled,
            exports_file: "/etc/exports.d/csg-agent.exports".into(),
            exportfs: "/usr/sbin/exportfs".into(),
            allow_hostnames: false,
            allow_world: false,
            min_prefix_v4: WorldPolicy::strict("nfs").min_prefix_v4,
            min_prefix_v6: WorldPolicy::strict("nfs").min_prefix_v6,
            ganesha_dir: "/etc/ganesha/csg-agent.d".into(),
            dbus_send: "/usr/bin/dbus-send".into(),
            dbus_address: String::new(),
            first_export_id: 10000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NfsSettings {
    pub backend: NfsBackendKind,
    pub exports_file: PathBuf,
    pub exportfs: PathBuf,
    pub allow_hostnames: bool,
    pub world: WorldPolicy,
    pub ganesha_dir: PathBuf,
    pub dbus_send: PathBuf,
    /// `None`: the system bus.
    pub dbus_address: Option<String>,
    pub first_export_id: u16,
}

/// Where nfs-utils' exportfs reads the files of other programs (besides `/etc/exports`).
const EXPORTS_DIR: &str = "/etc/exports.d";

/// The system's exportfs, by the paths distributions install it at. Another program (a wrapper,
/// a test's stand-in) may read its exports from elsewhere, so only these are held to
/// `EXPORTS_DIR`.
const SYSTEM_EXPORTFS: &[&str] = &["/usr/sbin/exportfs", "/sbin/exportfs"];

/// A D-Bus address as dbus-send takes it after `--bus=`: `unix:path=/run/x/bus`,
/// `tcp:host=127.0.0.1,port=1234`, … (a strict character set; no spaces or quotes).
fn dbus_address_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.contains(':')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,%".contains(&b))
}

/// The `allow_world` / `min_prefix_v4` / `min_prefix_v6` keys of `section`, checked.
pub(crate) fn world_policy(
    section: &'static str,
    allow_world: bool,
    min_prefix_v4: u8,
    min_prefix_v6: u8,
    p: &mut Vec<String>,
) -> WorldPolicy {
    if min_prefix_v4 > 32 {
        p.push(format!(
            "{section}.min_prefix_v4 = {min_prefix_v4}: an IPv4 prefix is 0 to 32"
        ));
    }
    if min_prefix_v6 > 128 {
        p.push(format!(
            "{section}.min_prefix_v6 = {min_prefix_v6}: an IPv6 prefix is 0 to 128"
        ));
    }
    WorldPolicy {
        section,
        allow_world,
        min_prefix_v4: min_prefix_v4.min(32),
        min_prefix_v6: min_prefix_v6.min(128),
    }
}

impl RawNfs {
    pub fn validate(&self, p: &mut Vec<String>) -> NfsSettings {
        for (k, v) in [
            ("nfs.exports_file", &self.exports_file),
            ("nfs.exportfs", &self.exportfs),
            ("nfs.ganesha_dir", &self.ganesha_dir),
            ("nfs.dbus_send", &self.dbus_send),
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
        if self.backend == NfsBackendKind::Kernel
            && SYSTEM_EXPORTFS.contains(&self.exportfs.as_str())
            && std::path::Path::new(&self.exports_file).parent()
                != Some(std::path::Path::new(EXPORTS_DIR))
        {
            // Every create would apply, fail its read-back and roll back: refuse it here.
            p.push(format!(
                "nfs.exports_file = {:?}: the system's exportfs reads /etc/exports and the \
                 *.exports files in {EXPORTS_DIR} only; put the file in {EXPORTS_DIR}",
                self.exports_file
            ));
        }
        let world = world_policy(
            "nfs",
            self.allow_world,
            self.min_prefix_v4,
            self.min_prefix_v6,
            p,
        );
        if !self.dbus_address.is_empty() && !dbus_address_ok(&self.dbus_address) {
            p.push(format!(
                "nfs.dbus_address = {:?}: not a D-Bus address such as unix:path=/run/ganesha/bus \
                 (characters [A-Za-z0-9-_./:=,%])",
                self.dbus_address
            ));
        }
        if !(1..=65000).contains(&self.first_export_id) {
            p.push(format!(
                "nfs.first_export_id = {}: must be from 1 to 65000 (0 is Ganesha's pseudo root)",
                self.first_export_id
            ));
        }
        NfsSettings {
            backend: self.backend,
            exports_file: PathBuf::from(&self.exports_file),
            exportfs: PathBuf::from(&self.exportfs),
            allow_hostnames: self.allow_hostnames,
            world,
            ganesha_dir: PathBuf::from(&self.ganesha_dir),
            dbus_send: PathBuf::from(&self.dbus_send),
            dbus_address: (!self.dbus_address.is_empty()).then(|| self.dbus_address.clone()),
            first_export_id: self.first_export_id.clamp(1, 65000) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let mut p = Vec::new();
        let s = RawNfs::default().validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.dbus_address, None);
        assert_eq!(s.world, WorldPolicy::strict("nfs"));
        let raw = RawNfs {
            backend: NfsBackendKind::Kernel,
            exports_file: "/etc/exports.d/x.conf".into(),
            dbus_address: "unix:path=/x y".into(),
            first_export_id: 0,
            ganesha_dir: "relative".into(),
            min_prefix_v4: 33,
            min_prefix_v6: 129,
            ..RawNfs::default()
        };
        let mut p = Vec::new();
        raw.validate(&mut p);
        let all = p.join("\n");
        for k in [
            "nfs.exports_file",
            "nfs.dbus_address",
            "nfs.first_export_id",
            "nfs.ganesha_dir",
            "nfs.min_prefix_v4",
            "nfs.min_prefix_v6",
        ] {
            assert!(all.contains(k), "{k} not named in {all}");
        }
        assert!(dbus_address_ok("unix:path=/tmp/t/bus.sock,guid=abc"));
    }

    #[test]
    fn the_system_exportfs_needs_the_file_in_exports_d() {
        let raw = |file: &str, exportfs: &str| RawNfs {
            backend: NfsBackendKind::Kernel,
            exports_file: file.into(),
            exportfs: exportfs.into(),
            ..RawNfs::default()
        };
        let mut p = Vec::new();
        raw("/srv/nfs/csg.exports", "/usr/sbin/exportfs").validate(&mut p);
        assert!(p.len() == 1 && p[0].contains("/etc/exports.d"), "{p:?}");
        let mut p = Vec::new();
        raw("/etc/exports.d/sub/csg.exports", "/sbin/exportfs").validate(&mut p);
        assert_eq!(p.len(), 1, "{p:?}");
        // Another exportfs program reads where it reads.
        let mut p = Vec::new();
        raw("/srv/nfs/csg.exports", "/opt/test/exportfs").validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        let mut p = Vec::new();
        raw("/etc/exports.d/csg.exports", "/usr/sbin/exportfs").validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
    }
}
