//! A private PostgreSQL for the store's tests: Debian's server binaries, a fresh cluster in a
//! temporary directory, a loopback port, trust authentication, fsync off. Nothing is shared with
//! a system cluster. When the server cannot start, `start` says why and the test fails.

#![allow(dead_code)]

pub mod consoled;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Pid, User};
use tempfile::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    // initdb and postgres refuse to run as root: as root, both run as the `postgres` user.
    run_as: Option<User>,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds a server.
fn server_bin_dir() -> Result<PathBuf, String> {
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(root).map_err(|e| {
        format!(
            "{}: {e} (install PostgreSQL: scripts/install-deps.sh)",
            root.display()
        )
    })? {
        let entry = entry.map_err(|e| e.to_string())?;
        let Ok(version) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file()
            && bin.join("initdb").is_file()
            && best.as_ref().is_none_or(|(v, _)| version > *v)
        {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server under /usr/lib/postgresql/*/bin (install it: scripts/install-deps.sh)"
            .to_owned()
    })
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// The last few KiB of a log, for a failure message.
fn tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

impl PgServer {
    pub fn start() -> Result<Self, String> {
        let bin = server_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("csg-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")
                .map_err(|e| format!("user postgres: {e}"))?
                .ok_or("running as root and there is no `postgres` user to run the server as")?;
            chown(dir.path(), Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
            Some(user)
        } else {
            None
        };
        let mut server = PgServer {
            dir,
            bin,
            port: free_port()?,
            run_as,
            child: None,
        };
        server.initdb()?;
        server.spawn_and_wait()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://csg@127.0.0.1:{}/postgres", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One SQL statement through `psql` (the server's own client, independent of the code
    /// under test); its rows unaligned, `|` between columns.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some(user) = &self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) -> Result<(), String> {
        let log = self.dir.path().join("initdb.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "--auth=trust",
                "-U",
                "csg",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("initdb: {e}"))?;
        let deadline = Instant::now() + INITDB_TIMEOUT;
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(format!("initdb: {status}: {}", tail(&log))),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "initdb: no result in {INITDB_TIMEOUT:?}: {}",
                        tail(&log)
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("postgres.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "csg",
                "-t",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("postgres.log");
        let deadline = Instant::now() + START_TIMEOUT;
        self.spawn()?;
        loop {
            if self.ready() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait().map_err(|e| e.to_string())?,
                None => None,
            };
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "postgres not ready in {START_TIMEOUT:?}: {}",
                    tail(&log)
                ));
            }
            if exited.is_some() {
                // After a kill, the old server's backends may still hold its shared memory for
                // a moment; the new postmaster refuses to start until they are gone.
                std::thread::sleep(Duration::from_millis(200));
                self.spawn()?;
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The postmaster dies at once (SIGKILL), as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_and_wait()
    }

    /// Immediate shutdown (SIGQUIT ends the backends too), then SIGKILL if it lingers.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
