//! A stand-in for exportfs(8), for the kernel NFS backend's tests: a mock, because this
//! kernel has no nfsd, so the real exportfs cannot run here.

use std::path::{Path, PathBuf};

use crate::config::NfsSection;
use crate::stubs;

/// Stand-in for exportfs(8) (a mock, because this kernel has no nfsd: see the file comment).
/// It records each argv as one line, keeps an "export table" built from the agent's file on
/// `-ra` (one `path client(options)` line per client, as `exportfs -s` prints), prints it on
/// `-s`, fails the next `-ra` (exit 1, a message on stderr) when told to, and makes `-ra`
/// slow when told to.
pub struct ExportfsStub {
    pub dir: PathBuf,
    pub exports: PathBuf,
}

impl ExportfsStub {
    /// A stub under `base` (its own `stub/` folder) that serves `base/exports.d/csg-agent.exports`.
    pub fn new(base: &Path) -> ExportfsStub {
        let exports = base.join("exports.d").join("csg-agent.exports");
        let dir = stubs::install(
            base,
            "exportfs",
            stubs::EXPORTFS,
            &[("EXPORTS", &exports.display().to_string())],
        );
        ExportfsStub { dir, exports }
    }
    pub fn program(&self) -> PathBuf {
        self.dir.join("exportfs")
    }
    /// `[nfs]` for the kernel backend on this stub and its exports file.
    pub fn nfs_section(&self) -> NfsSection {
        NfsSection::kernel(&self.exports, &self.program())
    }
    pub fn argv(&self) -> Vec<String> {
        stubs::argv(&self.dir)
    }
    /// Makes every later `-ra` take this long (after its argv line is recorded, before it
    /// applies anything), e.g. so a test can break the network while a change is being
    /// applied; `Duration::ZERO` makes it fast again.
    pub fn set_reexport_delay(&self, delay: std::time::Duration) {
        let path = self.dir.join("delay");
        if delay.is_zero() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, format!("{:.3}", delay.as_secs_f64())).unwrap();
        }
    }
    pub fn fail_next_reexport(&self, stderr: &str) {
        std::fs::write(self.dir.join("fail-once"), stderr).unwrap();
    }
    pub fn file(&self) -> Option<String> {
        std::fs::read_to_string(&self.exports).ok()
    }
    pub fn etab(&self) -> String {
        std::fs::read_to_string(self.dir.join("etab")).unwrap_or_default()
    }
}
