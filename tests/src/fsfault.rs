//! Local fault injection: a small file system that can be filled to the last byte (a tmpfs
//! mounted for the test), and a program wrapper that stops at a chosen call until the test lets
//! it go (so a daemon can be killed while the agent is in the middle of a command).
//!
//! Mounting needs root; the test machine runs as root. A mount that fails fails the test with
//! the reason: a fault test that quietly skips proves nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process;
use crate::TIMEOUT;

/// tmpfs hands out space in pages: "free" is counted in these.
pub const PAGE: u64 = 4096;

/// A tmpfs mounted on a directory for the life of this value; unmounted on drop, also when the
/// test panics (lazily if something still holds it, so a failed test never leaves a mount).
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `at` (created if missing). Panics with `mount`'s own
    /// words if it cannot.
    pub fn mount(at: &Path, size: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
        let mut c = Command::new("mount");
        c.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(at);
        let out = process::run(c, TIMEOUT);
        assert_eq!(
            out.code(),
            Some(0),
            "cannot mount a {size}-byte tmpfs on {} (the disk-full tests need root and \
             permission to mount):\n{}",
            at.display(),
            out.describe()
        );
        Tmpfs {
            at: at.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    fn filler(&self) -> PathBuf {
        self.at.join("filler")
    }

    /// Bytes still available to writers (what `df` says).
    pub fn avail(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.at)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.at.display()));
        s.blocks_available() as u64 * s.fragment_size() as u64
    }

    /// Fills the file system to the last byte with a filler file (written, not sparse: tmpfs
    /// would not count a hole), then gives `pages` whole pages back. Returns the filler's size.
    pub fn fill_leaving(&self, pages: u64) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap_or_else(|e| panic!("filler on {}: {e}", self.at.display()));
        let buf = vec![0xa5u8; PAGE as usize];
        // write(2) until ENOSPC: the last call may be short (the end of the last page), the
        // next one fails.
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.at.display()),
            }
        }
        f.sync_all().ok();
        let len = f.metadata().expect("filler metadata").len();
        assert_eq!(
            self.avail(),
            0,
            "{} not full after filling",
            self.at.display()
        );
        let give_back = pages * PAGE;
        assert!(
            len >= give_back,
            "filler of {len} bytes cannot give back {pages} pages"
        );
        // Truncation frees whole pages past the new end at once.
        f.set_len(len - give_back).expect("shrink the filler");
        len - give_back
    }

    /// Fills the file system completely.
    pub fn fill(&self) -> u64 {
        self.fill_leaving(0)
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the filler on {}: {e}", self.at.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The agent (killed just before by its own guard) may hold a file open for a moment.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.at)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let lazy = Command::new("umount").arg("-l").arg(&self.at).output();
        if !lazy.map(|o| o.status.success()).unwrap_or(false) {
            eprintln!(
                "warning: could not unmount the tmpfs on {}",
                self.at.display()
            );
        }
    }
}

/// A wrapper around a real program that, once armed, stops the first call whose arguments
/// contain every word of `when` and none of `unless`, says so (a file), and waits until the
/// test releases it (at most 30 s) before running the real program. Every other call runs the
/// real program at once.
pub struct Gate {
    dir: PathBuf,
    program: PathBuf,
}

impl Gate {
    /// Writes the wrapper `{dir}/{name}` around `real`.
    pub fn wrap(dir: &Path, name: &str, real: &Path, when: &[&str], unless: &[&str]) -> Gate {
        let plain = |w: &&str| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.=".contains(c))
        };
        assert!(
            when.iter().all(plain) && unless.iter().all(plain),
            "gate words must be plain"
        );
        let gate = dir.join(format!("{name}.gate"));
        std::fs::create_dir_all(&gate).expect("gate dir");
        let program = dir.join(name);
        crate::stubs::write(
            &program,
            crate::stubs::GATE,
            &[
                ("GATE", &gate.display().to_string()),
                ("WHEN", &when.join(" ")),
                ("UNLESS", &unless.join(" ")),
                ("REAL", &real.display().to_string()),
            ],
        );
        Gate { dir: gate, program }
    }

    /// The wrapper, for the agent's config.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The next matching call will stop.
    pub fn arm(&self) {
        for f in ["reached", "taken", "go"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        std::fs::write(self.dir.join("armed"), "").expect("arm the gate");
    }

    /// Waits until a call stopped at the gate.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.dir.join("reached").exists())
    }

    /// Lets the stopped call go on (to the real program).
    pub fn release(&self) {
        std::fs::write(self.dir.join("go"), "").expect("release the gate");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Never leave a wrapper waiting: a call still stopped goes on at once.
        let _ = std::fs::remove_file(self.dir.join("armed"));
        let _ = std::fs::write(self.dir.join("go"), "");
    }
}
