//! A stand-in for targetcli(8), for the LIO backend's tests: a mock, because this kernel has no
//! configfs (`/sys/kernel/config/target` does not exist), so neither LIO nor the real targetcli
//! can run here.
//!
//! It records every argv, one line per call, and keeps a fake configfs tree the way LIO would
//! (`core/<hba>/<object>/udev_path`, `iscsi/<iqn>/tpgt_1/{enable,attrib,auth,lun,acls,np}`, LUN
//! and mapped-LUN symlinks, ACL `auth` and `info`), so that the agent's read-back works. Like
//! the real one it refuses to create what exists and to delete what does not. `saveconfig`
//! records a listing of the tree. It can be told to fail the next call whose argv contains a
//! given text (exit 1, a message on stderr, nothing changed). Run without arguments it reads
//! one command per line on stdin, as targetcli does, recording each like an argv; it refuses a
//! secret (`password=`) in argv.

use std::path::{Path, PathBuf};

use crate::config::IscsiSection;
use crate::stubs;

pub struct TargetcliStub {
    pub dir: PathBuf,
    /// The fake configfs target root (`iscsi.configfs_root`).
    pub root: PathBuf,
}

impl TargetcliStub {
    /// A stub under `base` (its own `stub/` folder) with an empty fake configfs at
    /// `base/configfs/target` (as after the target modules are loaded).
    pub fn new(base: &Path) -> TargetcliStub {
        let root = base.join("configfs").join("target");
        std::fs::create_dir_all(root.join("core")).unwrap();
        std::fs::create_dir_all(root.join("iscsi").join("discovery_auth")).unwrap();
        std::fs::write(root.join("iscsi").join("lio_version"), "stub\n").unwrap();
        let dir = stubs::install(
            base,
            "targetcli",
            stubs::TARGETCLI,
            &[("ROOT", &root.display().to_string())],
        );
        TargetcliStub { dir, root }
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join("targetcli")
    }

    /// `[iscsi]` for the LIO backend on this stub and its fake configfs.
    pub fn iscsi_section(&self, iqn_prefix: &str) -> IscsiSection {
        IscsiSection::lio(iqn_prefix, &self.program(), &self.root)
    }

    /// Every argv so far, one line each (arguments joined by spaces).
    pub fn argv(&self) -> Vec<String> {
        stubs::argv(&self.dir)
    }

    /// The argvs after the first `n`.
    pub fn argv_since(&self, n: usize) -> Vec<String> {
        self.argv().into_iter().skip(n).collect()
    }

    /// Fails the next call whose argv contains `text`.
    pub fn fail_on(&self, text: &str) {
        std::fs::write(self.dir.join("fail-on"), text).unwrap();
    }

    /// The tree listing the last `saveconfig` recorded.
    pub fn saved(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("saved")).ok()
    }

    /// A target's TPG directory in the fake tree.
    pub fn tpg(&self, iqn: &str) -> PathBuf {
        self.root.join("iscsi").join(iqn).join("tpgt_1")
    }

    /// Every path under the fake tree, sorted (symlinks with their targets).
    pub fn listing(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let ft = e.file_type().unwrap();
                if ft.is_symlink() {
                    let to = std::fs::read_link(&p).unwrap();
                    let to = to.strip_prefix(root).unwrap_or(&to).display().to_string();
                    out.push(format!("{rel} -> {to}"));
                } else if ft.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else {
                    let v = std::fs::read_to_string(&p).unwrap_or_default();
                    out.push(format!("{rel} = {}", v.trim()));
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root, &self.root, &mut v);
        v.sort();
        v
    }
}
