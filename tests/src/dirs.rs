//! One test's own storage on disk: a temp dir holding the agent's storage root, its state
//! directory and a directory outside the root (for paths that must be refused).

use std::path::{Path, PathBuf};

use crate::config::StorageSection;

/// Removed, with everything in it, when dropped. Paths are canonical: the agent resolves
/// symlinks (the temp dir itself may be behind one) and reports the resolved paths.
pub struct StorageDirs {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Default for StorageDirs {
    fn default() -> Self {
        Self::new()
    }
}

impl StorageDirs {
    /// The root is `root/`.
    pub fn new() -> StorageDirs {
        Self::with_root("root")
    }

    /// The root is `{name}/`; `state/` and `outside/` are next to it.
    pub fn with_root(name: &str) -> StorageDirs {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        let root = base.join(name);
        let state = base.join("state");
        for d in [&root, &base.join("outside")] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        StorageDirs {
            _dir: dir,
            base,
            root,
            state,
        }
    }

    /// The temp dir itself.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The agent's storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The agent's state directory (the agent makes it).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// `name` under the root, as a string for request params.
    pub fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// `[storage]` for this root and state directory, with a 10 s command timeout.
    pub fn section(&self) -> StorageSection {
        StorageSection::new(&self.root, &self.state).command_timeout_s(10)
    }

    /// The agent's state file, or "" while it has none.
    pub fn state_text(&self) -> String {
        std::fs::read_to_string(self.state.join("state.json")).unwrap_or_default()
    }
}
