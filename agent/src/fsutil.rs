//! Crash-safe file writes: temp file in the same directory (a name no include pattern
//! matches), write, fsync, rename over the target, fsync the directory. After a crash at any
//! instant the target is either the old or the new content, never a torn mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot write {path} atomically ({step}): {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub step: &'static str,
    pub source: std::io::Error,
}

/// The temp name: hidden, with a suffix no `*.conf`/`*.exports` include pattern matches.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |step| {
        move |source| WriteError {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("create temp file"))?;
        f.write_all(data).map_err(err("write"))?;
        f.sync_all().map_err(err("fsync"))?;
        drop(f);
        fs::rename(&tmp, path).map_err(err("rename"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `content` to `path` atomically (creating its directory), or removes `path` when
/// `content` is `None` (a file already gone is fine). Blocking: call from a blocking thread.
pub fn write_or_remove(path: &Path, content: Option<&[u8]>, mode: u32) -> Result<(), String> {
    match content {
        Some(c) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            write_atomic(path, c, mode).map_err(|e| e.to_string())
        }
        None => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.conf");
        write_atomic(&p, b"one", 0o640).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.conf"]);
    }

    #[test]
    fn failure_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("x");
        assert!(write_atomic(&p, b"x", 0o600).is_err());
    }

    #[test]
    fn temp_name_does_not_match_include_patterns() {
        let t = temp_path(Path::new("/etc/exports.d/csg-agent.exports"));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with('.') && name.ends_with(".tmp"));
        assert!(!name.ends_with(".exports") && !name.ends_with(".conf"));
    }
}
