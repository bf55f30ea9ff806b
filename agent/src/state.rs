//! The desired state: what the console asked for, in one versioned JSON file under the state
//! directory, written atomically. Each method family owns one part of it (its own schema,
//! serialized by the family), so families evolve their specs without touching this file.
//! Never holds secrets: families strip passwords and CHAP secrets before storing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::fsutil::{write_atomic, WriteError};

pub const STATE_VERSION: u32 = 1;
const FILE_NAME: &str = "state.json";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("state file {path} has version {found}; this agent reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("another csg-agent (pid {holder}) already uses the state directory {dir}; one agent per state directory")]
    Locked { dir: PathBuf, holder: String },
    #[error("cannot lock the state directory {dir}: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("state of {family} does not match its schema: {message}")]
    Schema { family: String, message: String },
}

impl StateError {
    /// The reply to a request this error stopped. Writing the state file failed (disk full,
    /// read-only file system): the gateway's own storage refused the change, which is
    /// `BACKEND_ERROR` with the reason, not a bug (`INTERNAL`); nothing was applied.
    pub fn to_rpc(&self) -> csg_protocol::RpcError {
        let code = match self {
            StateError::Write(_) => csg_protocol::ErrorCode::BackendError,
            _ => csg_protocol::ErrorCode::Internal,
        };
        csg_protocol::RpcError::new(code, format!("desired state: {self}"))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Family name (`nfs`, `smb`, `iscsi`) → that family's desired state.
    #[serde(default)]
    families: BTreeMap<String, Value>,
}

pub struct StateStore {
    /// Where the file lives; `None` for a store kept in memory only (the fleet simulator's
    /// agents, which have no disk of their own).
    path: Option<PathBuf>,
    file: Mutex<StateFile>,
    /// Held for the life of the process: a second agent on the same directory is refused.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

const LOCK_NAME: &str = "agent.lock";

/// Takes the directory's lock (flock, released by the kernel when the process dies, so a crash
/// never leaves a stale lock) and writes our pid into it for the next one's error message.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StateError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_NAME);
    let err = |source| StateError::Lock {
        dir: dir.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(err)?;
            lock.rewind().map_err(err)?;
            write!(lock, "{}", std::process::id()).map_err(err)?;
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(StateError::Locked {
                dir: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            })
        }
        Err((_, errno)) => Err(err(std::io::Error::from(errno))),
    }
}

impl StateStore {
    /// Opens (or starts) the state file in `dir`, creating the directory (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        // A previous agent that was just killed may still be letting go of the lock (its last
        // child process between fork and exec holds the descriptor for a moment): wait briefly
        // before calling it a second agent.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let lock = loop {
            match lock_dir(dir) {
                Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other?,
            }
        };
        let path = dir.join(FILE_NAME);
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if f.version != STATE_VERSION {
                    return Err(StateError::Version {
                        path,
                        found: f.version,
                    });
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: STATE_VERSION,
                families: BTreeMap::new(),
            },
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok(Self {
            path: Some(path),
            file: Mutex::new(file),
            _lock: Some(lock),
        })
    }

    /// A store that lives in memory only: nothing survives the process. For simulated agents.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            file: Mutex::new(StateFile {
                version: STATE_VERSION,
                families: BTreeMap::new(),
            }),
            _lock: None,
        }
    }

    /// The state file; `None` for a store in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// One family's desired state (its default when it has none yet).
    pub async fn get<T: DeserializeOwned + Default>(&self, family: &str) -> Result<T, StateError> {
        let f = self.file.lock().await;
        match f.families.get(family) {
            None => Ok(T::default()),
            Some(v) => T::deserialize(v).map_err(|e| StateError::Schema {
                family: family.into(),
                message: e.to_string(),
            }),
        }
    }

    /// Replaces one family's desired state and writes the whole file atomically. On a write
    /// failure (disk full, read-only) the in-memory state is left as it was.
    pub async fn put<T: Serialize>(&self, family: &str, value: &T) -> Result<(), StateError> {
        let v = serde_json::to_value(value).map_err(|e| StateError::Schema {
            family: family.into(),
            message: e.to_string(),
        })?;
        let mut f = self.file.lock().await;
        let mut next = f.clone();
        next.families.insert(family.to_string(), v);
        if let Some(path) = self.path.clone() {
            let bytes = serde_json::to_vec_pretty(&next).expect("state serializes");
            tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, 0o600))
                .await
                .expect("state writer does not panic")?;
        }
        *f = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Fam {
        items: BTreeMap<String, u32>,
    }

    #[tokio::test]
    async fn survives_a_reopen_and_keeps_families_apart() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.get::<Fam>("nfs").await.unwrap(), Fam::default());
        let mut a = Fam::default();
        a.items.insert("vol1".into(), 1);
        s.put("nfs", &a).await.unwrap();
        s.put("smb", &Fam::default()).await.unwrap();
        drop(s);
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.get::<Fam>("nfs").await.unwrap(), a);
        let text = std::fs::read_to_string(d.path().join("state.json")).unwrap();
        assert!(text.contains("\"version\": 1"));
    }

    #[tokio::test]
    async fn one_store_per_directory() {
        let d = tempfile::tempdir().unwrap();
        let first = StateStore::open(d.path()).unwrap();
        let e = StateStore::open(d.path())
            .err()
            .expect("second open refused");
        let msg = e.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert!(msg.contains("one agent per state directory"), "{msg}");
        drop(first);
        StateStore::open(d.path()).expect("free again once the first is gone");
    }

    #[tokio::test]
    async fn corrupt_or_future_files_are_refused_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("state.json"), b"{\"version\":1,\"fam").unwrap();
        assert!(matches!(
            StateStore::open(d.path()),
            Err(StateError::Corrupt { .. })
        ));
        std::fs::write(d.path().join("state.json"), b"{\"version\":9}").unwrap();
        assert!(matches!(
            StateStore::open(d.path()),
            Err(StateError::Version { found: 9, .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_old_state() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        let mut a = Fam::default();
        a.items.insert("x".into(), 1);
        s.put("nfs", &a).await.unwrap();
        // Make the directory unwritable to the temp file by replacing it with a file path.
        let s2 = StateStore {
            path: Some(d.path().join("no-such-dir").join("state.json")),
            file: Mutex::new(s.file.lock().await.clone()),
            _lock: None,
        };
        let mut b = Fam::default();
        b.items.insert("y".into(), 2);
        assert!(s2.put("nfs", &b).await.is_err());
        assert_eq!(s2.get::<Fam>("nfs").await.unwrap(), a);
    }
}
