//! Reading certificate, key and secret files.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use tracing::warn;
use zeroize::Zeroizing;

/// Identity of a file's current content as far as metadata tells: device, inode, size and
/// modification time. A replaced or rewritten file gets a new stamp, so comparing stamps tells
/// whether a file was rotated without reading (or keeping) its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Files larger than this are refused: certificates, keys and tokens are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a whole file into memory that is zeroed when dropped.
pub fn read_zeroizing(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes; the limit is {MAX_FILE_BYTES}"),
        ));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether a file's permissions let its group or others read it.
pub fn readable_by_others(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o044 != 0)
}

/// Warns (once per call) when a file holding a secret is readable by its group or others.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if readable_by_others(path) {
        warn!(
            file = %path.display(),
            "{what} is readable by group or others; restrict it (chmod 600, owned by the service user)"
        );
    }
}

/// Reads a secret (a password, an AccessKey secret, a token): one line of UTF-8, surrounding
/// whitespace (the trailing newline editors add) removed. Never empty. The error never
/// contains the content.
pub fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<String>, String> {
    warn_if_exposed(path, what);
    let bytes = read_zeroizing(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if trimmed.contains(['\n', '\r']) {
        return Err(format!(
            "{} holds more than one line; put only the {what} in it",
            path.display()
        ));
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secrets_are_trimmed_single_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  hunter2\n").unwrap();
        assert_eq!(read_secret(&p, "password").unwrap().as_str(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret(&p, "password").unwrap_err().contains("empty"));
        // The error names the file but never quotes its content (a word no temp path holds).
        std::fs::write(&p, "first\nsecond-line-secret\n").unwrap();
        let e = read_secret(&p, "password").unwrap_err();
        assert!(
            e.contains("more than one line") && !e.contains("second-line-secret"),
            "{e}"
        );
        assert!(read_secret(&dir.path().join("missing"), "password")
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn exposure_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!readable_by_others(&p));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(readable_by_others(&p));
        let a = FileStamp::of(&p).unwrap();
        assert_eq!(a, FileStamp::of(&p).unwrap());
        let q = dir.path().join("t");
        std::fs::write(&q, "xy").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_ne!(a, FileStamp::of(&p).unwrap());
    }
}
