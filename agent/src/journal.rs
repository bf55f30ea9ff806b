//! The reply journal: replies of executed mutations, on disk, so that "never run the same
//! request id twice" survives a restart or a crash of the agent.
//!
//! The in-memory reply cache answers repeats while the agent runs. A console that re-sends a
//! mutation after the agent restarted would otherwise run it again (and get a different
//! answer: a second `delete` says `existed: false`). So before a mutation's reply is
//! published, its record is appended here and fsync'd; at start the records still within the
//! id-memory window are loaded back into the cache.
//!
//! Format: a sequence of records `[len: u32 LE][crc32: u32 LE][postcard(Record)]`. A torn or
//! corrupt tail (a crash mid-append) ends the journal there; the file is rewritten
//! (compacted, atomically) at every start, keeping only live records.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{write_atomic, WriteError};

const FILE_NAME: &str = "replies.journal";
/// Records larger than this are not valid (a reply is at most a few KiB).
const MAX_RECORD: usize = 1 << 20;
/// After this many appends the file is compacted again.
const COMPACT_AFTER: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub method: String,
    /// Unix ms when the request finished.
    pub finished_ms: u64,
    /// The reply exactly as published.
    pub reply: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot read reply journal {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot append to reply journal {path}: {source}")]
    Append {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Compact(#[from] WriteError),
}

pub struct Journal {
    path: PathBuf,
    ttl_ms: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    appended: usize,
}

fn encode(r: &Record) -> Vec<u8> {
    let body = postcard::to_allocvec(r).expect("a record always encodes");
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes records until the end or the first torn/corrupt one.
fn decode_all(mut bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || bytes.len() < 8 + len {
            break;
        }
        let body = &bytes[8..8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(body) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        bytes = &bytes[8 + len..];
    }
    out
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl Journal {
    /// Opens the journal in `dir`, returns it with the records still within `ttl_ms` of `now_ms`
    /// (oldest first), and compacts the file to exactly those.
    pub fn open(dir: &Path, ttl_ms: u64, now_ms: u64) -> Result<(Self, Vec<Record>), JournalError> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        let live: Vec<Record> = decode_all(&bytes)
            .into_iter()
            .filter(|r| now_ms.saturating_sub(r.finished_ms) < ttl_ms)
            .collect();
        let compacted: Vec<u8> = live.iter().flat_map(encode).collect();
        write_atomic(&path, &compacted, 0o600)?;
        let file = open_append(&path).map_err(|source| JournalError::Append {
            path: path.clone(),
            source,
        })?;
        Ok((
            Self {
                path,
                ttl_ms,
                inner: Mutex::new(Inner { file, appended: 0 }),
            },
            live,
        ))
    }

    /// Appends a record and makes it durable. Blocking: call from a blocking thread.
    pub fn append(&self, r: &Record) -> Result<(), JournalError> {
        let err = |source| JournalError::Append {
            path: self.path.clone(),
            source,
        };
        let mut inner = self.inner.lock().expect("journal lock");
        inner.file.write_all(&encode(r)).map_err(err)?;
        inner.file.sync_data().map_err(err)?;
        inner.appended += 1;
        if inner.appended >= COMPACT_AFTER {
            // Rewrite with only live records, then append to the new file.
            let bytes = std::fs::read(&self.path).map_err(err)?;
            let live: Vec<u8> = decode_all(&bytes)
                .iter()
                .filter(|x| r.finished_ms.saturating_sub(x.finished_ms) < self.ttl_ms)
                .flat_map(encode)
                .collect();
            write_atomic(&self.path, &live, 0o600)?;
            inner.file = open_append(&self.path).map_err(err)?;
            inner.appended = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ms: u64) -> Record {
        Record {
            id: id.into(),
            method: "nfs.export.delete".into(),
            finished_ms: ms,
            reply: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let (j, live) = Journal::open(d.path(), 600_000, 1_000_000).unwrap();
        assert!(live.is_empty());
        j.append(&rec("a", 1_000_000)).unwrap();
        j.append(&rec("b", 1_100_000)).unwrap();
        drop(j);
        let (_j, live) = Journal::open(d.path(), 600_000, 1_200_000).unwrap();
        assert_eq!(live, vec![rec("a", 1_000_000), rec("b", 1_100_000)]);
        // 10 minutes after "a" finished, only "b" is left, and the file was compacted.
        let (_j, live) = Journal::open(d.path(), 600_000, 1_600_000).unwrap();
        assert_eq!(live, vec![rec("b", 1_100_000)]);
        let len = std::fs::metadata(d.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(len as usize, encode(&rec("b", 1_100_000)).len());
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = encode(&rec("a", 5));
        let second = encode(&rec("b", 6));
        bytes.extend_from_slice(&second[..second.len() - 3]);
        std::fs::write(d.path().join(FILE_NAME), &bytes).unwrap();
        let (_j, live) = Journal::open(d.path(), 600_000, 10).unwrap();
        assert_eq!(live, vec![rec("a", 5)]);
    }

    #[test]
    fn a_corrupt_record_ends_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = encode(&rec("a", 5));
        let mut bad = encode(&rec("b", 6));
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&encode(&rec("c", 7)));
        std::fs::write(d.path().join(FILE_NAME), &bytes).unwrap();
        let (_j, live) = Journal::open(d.path(), 600_000, 10).unwrap();
        assert_eq!(live, vec![rec("a", 5)]);
    }

    #[test]
    fn garbage_lengths_do_not_allocate() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), [0xff; 64]).unwrap();
        let (_j, live) = Journal::open(d.path(), 600_000, 10).unwrap();
        assert!(live.is_empty());
    }
}
