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
//!
//! A full disk: an append that fails (or writes only part of its record) is cut off again, so
//! the records appended after it are not hidden behind a torn one; and a compaction that cannot
//! be written (at start, or every `COMPACT_AFTER` appends) keeps the file as it is instead of
//! failing, so an agent on a full state directory still starts and answers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

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
    /// Where the last whole record ends: anything past it is the remains of a failed append.
    len: u64,
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
fn decode_all(bytes: &[u8]) -> Vec<Record> {
    decode_prefix(bytes).0
}

/// The records up to the first torn/corrupt one, and how many bytes they take.
fn decode_prefix(all: &[u8]) -> (Vec<Record>, usize) {
    let mut bytes = all;
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
    (out, all.len() - bytes.len())
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
        let (all, whole) = decode_prefix(&bytes);
        let live: Vec<Record> = all
            .into_iter()
            .filter(|r| now_ms.saturating_sub(r.finished_ms) < ttl_ms)
            .collect();
        let compacted: Vec<u8> = live.iter().flat_map(encode).collect();
        let append_err = |source| JournalError::Append {
            path: path.clone(),
            source,
        };
        let (file, len) = match write_atomic(&path, &compacted, 0o600) {
            Ok(()) => (open_append(&path).map_err(append_err)?, compacted.len()),
            Err(e) => {
                // The rewrite needs room for a second copy; a full state directory must not
                // keep the agent from starting (it could not even report why). Keep the file,
                // cut after its last whole record (truncating needs no space), compact later.
                // Expired records stay in it until then; they are skipped when read.
                let kept = open_append(&path).and_then(|f| {
                    f.set_len(whole as u64)?;
                    Ok(f)
                });
                let Ok(file) = kept else {
                    return Err(e.into());
                };
                warn!(error = %e, "reply journal not compacted; appending to it as it is");
                (file, whole)
            }
        };
        Ok((
            Self {
                path,
                ttl_ms,
                inner: Mutex::new(Inner {
                    file,
                    appended: 0,
                    len: len as u64,
                }),
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
        let inner = &mut *inner;
        // A failed append whose remains could not be cut (below) is cut now: a record written
        // behind a torn one would be lost at the next start, which stops reading there.
        if inner.file.metadata().map_err(err)?.len() != inner.len {
            inner.file.set_len(inner.len).map_err(err)?;
        }
        let bytes = encode(r);
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(e) = written {
            // Disk full: part of the record may be on disk. Cut it off (truncating needs no
            // space), so the next record goes where this one started.
            let _ = inner.file.set_len(inner.len);
            return Err(err(e));
        }
        inner.len += bytes.len() as u64;
        inner.appended += 1;
        if inner.appended >= COMPACT_AFTER {
            inner.appended = 0;
            // Rewrite with only live records, then append to the new file. The record is
            // already durable: a compaction that fails (disk full) is tried again later, and
            // is not this append's failure.
            if let Err(e) = self.compact(inner, r.finished_ms) {
                warn!(error = %e, "reply journal not compacted; appending to it as it is");
            }
        }
        Ok(())
    }

    fn compact(&self, inner: &mut Inner, now_ms: u64) -> Result<(), JournalError> {
        let err = |source| JournalError::Append {
            path: self.path.clone(),
            source,
        };
        let bytes = std::fs::read(&self.path).map_err(err)?;
        let live: Vec<u8> = decode_all(&bytes)
            .iter()
            .filter(|x| now_ms.saturating_sub(x.finished_ms) < self.ttl_ms)
            .flat_map(encode)
            .collect();
        write_atomic(&self.path, &live, 0o600)?;
        inner.file = open_append(&self.path).map_err(err)?;
        inner.len = live.len() as u64;
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
    fn the_remains_of_a_failed_append_do_not_hide_later_records() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), 600_000, 10).unwrap();
        j.append(&rec("a", 5)).unwrap();
        // What a write cut short by a full disk leaves: the first part of a record.
        let torn = encode(&rec("lost", 6));
        let mut f = open_append(&d.path().join(FILE_NAME)).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        j.append(&rec("b", 7)).unwrap();
        drop(j);
        let (_j, live) = Journal::open(d.path(), 600_000, 10).unwrap();
        assert_eq!(live, vec![rec("a", 5), rec("b", 7)]);
    }

    #[test]
    fn a_journal_that_cannot_be_rewritten_still_opens_and_appends() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let mut bytes = encode(&rec("old", 1));
        bytes.extend_from_slice(&encode(&rec("a", 500_000)));
        bytes.extend_from_slice(&encode(&rec("torn", 500_001))[..5]);
        std::fs::write(&path, &bytes).unwrap();
        // A directory squatting on the temp name makes the atomic rewrite fail, as a full
        // disk would.
        let squat = crate::fsutil::temp_path(&path);
        std::fs::create_dir(&squat).unwrap();
        let (j, live) = Journal::open(d.path(), 600_000, 700_000).unwrap();
        assert_eq!(live, vec![rec("a", 500_000)]);
        // Kept as it was up to its last whole record (the expired one too), torn tail cut.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            bytes.len() - 5
        );
        j.append(&rec("b", 600_000)).unwrap();
        drop(j);
        std::fs::remove_dir(&squat).unwrap();
        let (_j, live) = Journal::open(d.path(), 600_000, 700_000).unwrap();
        assert_eq!(live, vec![rec("a", 500_000), rec("b", 600_000)]);
    }

    #[test]
    fn garbage_lengths_do_not_allocate() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), [0xff; 64]).unwrap();
        let (_j, live) = Journal::open(d.path(), 600_000, 10).unwrap();
        assert!(live.is_empty());
    }
}
