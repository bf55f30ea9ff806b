//! Paths that reach a backend: syntax first (pure, in the protocol crate), then the file
//! system: the path must resolve to itself (no symlink anywhere along it) and lie strictly
//! inside one of the configured roots.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use csg_protocol::validate::{check_path, ValueError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PathError {
    #[error(transparent)]
    Syntax(#[from] ValueError),
    #[error("{what} {path}: does not exist")]
    Missing { what: &'static str, path: String },
    #[error("{what} {path}: {reason}")]
    Refused {
        what: &'static str,
        path: String,
        reason: String,
    },
}

/// What the path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// An existing directory (NFS exports, SMB shares).
    Dir,
    /// A regular file, or one that does not exist yet in an existing directory (iSCSI backing
    /// files, created sparse by the caller); a block device too when `devices` is true.
    BackingFile { devices: bool },
}

/// A path that passed every check. Only `resolve` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    path: PathBuf,
    pub exists: bool,
    pub is_device: bool,
}

impl SafePath {
    pub fn as_path(&self) -> &Path {
        &self.path
    }
    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("validated paths are ASCII")
    }
}

#[derive(Debug, Clone)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self(roots)
    }

    fn inside(&self, canonical: &Path) -> bool {
        self.0.iter().any(|r| {
            // Roots are resolved each time: an operator may mount or re-link them.
            let r = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
            canonical.starts_with(&r) && canonical != r
        })
    }

    /// Checks `p` for `what`, e.g. `("path", "/srv/csg/vol1", PathKind::Dir)`.
    pub fn resolve(
        &self,
        what: &'static str,
        p: &str,
        kind: PathKind,
    ) -> Result<SafePath, PathError> {
        check_path(what, p)?;
        let refused = |reason: &str| PathError::Refused {
            what,
            path: p.to_string(),
            reason: reason.to_string(),
        };
        let requested = PathBuf::from(p);
        let (canonical, exists) = match std::fs::canonicalize(&requested) {
            Ok(c) => (c, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if kind == PathKind::Dir {
                    return Err(PathError::Missing {
                        what,
                        path: p.to_string(),
                    });
                }
                // A backing file may be created: its directory must exist and be clean.
                let parent = requested.parent().expect("absolute path has a parent");
                let cp = std::fs::canonicalize(parent).map_err(|_| PathError::Missing {
                    what,
                    path: parent.display().to_string(),
                })?;
                if cp != parent {
                    return Err(refused("its directory is reached through a symbolic link"));
                }
                (requested.clone(), false)
            }
            Err(e) => return Err(refused(&format!("cannot resolve it: {e}"))),
        };
        if exists && canonical != requested {
            return Err(refused(
                "it is reached through a symbolic link; give the real path",
            ));
        }
        if !self.inside(&canonical) {
            return Err(refused(
                "it is not inside any of the configured storage roots",
            ));
        }
        let mut is_device = false;
        if exists {
            let ft = std::fs::metadata(&canonical)
                .map_err(|e| refused(&format!("cannot stat it: {e}")))?
                .file_type();
            match kind {
                PathKind::Dir if !ft.is_dir() => return Err(refused("not a directory")),
                PathKind::BackingFile { devices } => {
                    if ft.is_block_device() {
                        if !devices {
                            return Err(refused(
                                "block devices are not allowed (storage.allow_devices)",
                            ));
                        }
                        is_device = true;
                    } else if !ft.is_file() {
                        return Err(refused("not a regular file or block device"));
                    }
                }
                _ => {}
            }
        }
        Ok(SafePath {
            path: canonical,
            exists,
            is_device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Roots, String) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("vol1")).unwrap();
        std::fs::create_dir_all(d.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("vol1"), root.join("alias")).unwrap();
        std::fs::write(root.join("vol1/disk.img"), b"").unwrap();
        let r = std::fs::canonicalize(&root).unwrap();
        (
            d,
            Roots::new(vec![r.clone()]),
            r.to_str().unwrap().to_string(),
        )
    }

    #[test]
    fn directories() {
        let (_d, roots, r) = setup();
        assert!(roots
            .resolve("path", &format!("{r}/vol1"), PathKind::Dir)
            .is_ok());
        for (p, why) in [
            (format!("{r}/escape"), "symbolic link"),
            (format!("{r}/alias"), "symbolic link"),
            (format!("{r}/missing"), "does not exist"),
            (r.clone(), "not inside"),
            ("/etc".to_string(), "not inside"),
            (format!("{r}/vol1/disk.img"), "not a directory"),
            (format!("{r}/../outside"), "'..'"),
        ] {
            let e = roots
                .resolve("path", &p, PathKind::Dir)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn backing_files() {
        let (_d, roots, r) = setup();
        let k = PathKind::BackingFile { devices: false };
        let f = roots
            .resolve("lun path", &format!("{r}/vol1/disk.img"), k)
            .unwrap();
        assert!(f.exists && !f.is_device);
        let n = roots
            .resolve("lun path", &format!("{r}/vol1/new.img"), k)
            .unwrap();
        assert!(!n.exists);
        assert!(roots
            .resolve("lun path", &format!("{r}/escape/new.img"), k)
            .is_err());
        assert!(roots
            .resolve("lun path", &format!("{r}/nodir/new.img"), k)
            .is_err());
        assert!(roots.resolve("lun path", &format!("{r}/vol1"), k).is_err());
        let e = roots.resolve(
            "lun path",
            "/dev/null",
            PathKind::BackingFile { devices: true },
        );
        assert!(e.is_err(), "char device or outside root");
    }
}
