//! A private smbd per test: in the foreground (`-F --no-process-group --debug-stdout`), on its
//! own smb.conf with `include = registry`, its own lock/state/cache/private/pid directories (so
//! its registry and passdb are its own) and a free loopback port. Stopped (SIGTERM, then
//! SIGKILL) on drop, together with the `samba-dcerpcd` it starts on demand for share listings.
//! Plus the client side: `smbclient` with an auth file, and `net conf` to look at (or tamper
//! with) the registry behind the agent's back.
//!
//! smbd needs root here (it switches to each user's uid); the test machine runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::broker::free_port;
use crate::config::{AgentConfig, SmbSection, StorageSection};
use crate::process::{self, read_lossy, ChildGuard, CmdOutput};
use crate::TIMEOUT;

pub struct Smbd {
    // Declared before `dir`: its log lives there.
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    port: u16,
    generation: u32,
}

enum StartError {
    PortTaken(String),
    Other(String),
}

/// A Samba or shadow tool: on PATH, or in the sbin directories that are not on every PATH.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

impl Smbd {
    /// Starts smbd on a free port; retries with another port if one was taken meanwhile.
    pub fn start() -> Smbd {
        let dir = tempfile::tempdir().expect("temp dir");
        // Users' smbd processes must be able to walk down to the shares.
        chmod(dir.path(), 0o755);
        for d in [
            "lock", "state", "cache", "private", "run", "ncalrpc", "root",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).expect("smbd dirs");
        }
        chmod(&dir.path().join("root"), 0o755);
        let mut s = Smbd {
            child: None,
            dir,
            port: 0,
            generation: 0,
        };
        let mut last = String::new();
        for _ in 0..10 {
            s.port = free_port();
            match s.try_spawn() {
                Ok(()) => return s,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("smbd could not get a free port in 10 tries; last log:\n{last}");
    }

    fn write_conf(&self) {
        let d = self.dir.path().display();
        let conf = format!(
            "[global]\n\
             \tserver role = standalone server\n\
             \tsmb ports = {port}\n\
             \tinterfaces = lo\n\
             \tbind interfaces only = yes\n\
             \tdisable netbios = yes\n\
             \tmap to guest = Bad User\n\
             \tload printers = no\n\
             \tprinting = bsd\n\
             \tprintcap name = /dev/null\n\
             \tdisable spoolss = yes\n\
             \tlock directory = {d}/lock\n\
             \tstate directory = {d}/state\n\
             \tcache directory = {d}/cache\n\
             \tprivate dir = {d}/private\n\
             \tpid directory = {d}/run\n\
             \tncalrpc dir = {d}/ncalrpc\n\
             \tpassdb backend = tdbsam:{d}/private/passdb.tdb\n\
             \tinclude = registry\n",
            port = self.port
        );
        std::fs::write(self.conf(), conf).expect("write smb.conf");
    }

    fn try_spawn(&mut self) -> Result<(), StartError> {
        self.write_conf();
        self.generation += 1;
        let mut cmd = Command::new(tool("smbd"));
        cmd.args([
            "-F",
            "--no-process-group",
            "--debug-stdout",
            "-d",
            "1",
            "-s",
        ])
        .arg(self.conf());
        // Its own process group: smbd signals its whole process group when it stops, which
        // would otherwise take the test itself down.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let name = format!("smbd-{}", self.generation);
        let mut child = ChildGuard::spawn(&name, cmd, self.dir.path())
            .map_err(|e| StartError::Other(format!("cannot start smbd: {e}")))?;
        let end = Instant::now() + TIMEOUT;
        loop {
            let log = child.log();
            if log.contains("Address already in use") {
                child.set_dump_on_panic(false);
                drop(child);
                return Err(StartError::PortTaken(log));
            }
            if !child.is_running() {
                return Err(StartError::Other(format!(
                    "smbd exited at start\n{log}\n----- smb.conf -----\n{}",
                    read_lossy(&self.conf())
                )));
            }
            let listening = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening && self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > end {
                return Err(StartError::Other(format!(
                    "smbd not ready on port {} within {TIMEOUT:?}\n{log}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("smb.conf")
    }

    /// A directory for the agent's `storage.roots` (mode 0755).
    pub fn root(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("root")).expect("root")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log of every smbd this harness started.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for g in 1..=self.generation {
            s.push_str(&format!(
                "----- smbd #{g} -----\n{}",
                read_lossy(&self.dir.path().join(format!("smbd-{g}.stdout")))
            ));
        }
        s
    }

    /// `smbcontrol -s CONF smbd ping` succeeds.
    pub fn ping(&self) -> bool {
        let mut c = Command::new("smbcontrol");
        c.arg("-s").arg(self.conf()).args(["smbd", "ping"]);
        process::run(c, TIMEOUT).code() == Some(0)
    }

    /// Stops smbd (SIGTERM, SIGKILL after 5 s) and the RPC helper it started.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal(nix::sys::signal::Signal::SIGTERM);
            if c.wait_exit(Duration::from_secs(5)).is_none() {
                c.kill9();
            }
            c.set_dump_on_panic(false);
        }
        self.stop_dcerpcd();
    }

    /// Kills smbd as a crash would: SIGKILL to its whole process group (the parent and the
    /// helpers it forked; no clean shutdown, its pid file stays behind), reaped at once so its
    /// pid is really gone. [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // smbd runs in a process group of its own (see `try_spawn`): -pid is that group.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(c.pid() as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
            c.kill9();
            c.set_dump_on_panic(false);
        }
        self.stop_dcerpcd();
    }

    /// Starts smbd again on the same port and state.
    pub fn restart(&mut self) {
        self.stop();
        let end = Instant::now() + TIMEOUT;
        loop {
            match self.try_spawn() {
                Ok(()) => return,
                Err(StartError::PortTaken(_)) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(StartError::PortTaken(log)) => panic!("port {} stays taken\n{log}", self.port),
                Err(StartError::Other(m)) => panic!("{m}"),
            }
        }
    }

    /// samba-dcerpcd (started by smbd for share enumeration) daemonizes: stop it by its pid
    /// file, after checking the pid is really ours.
    fn stop_dcerpcd(&self) {
        let pidfile = self.dir.path().join("run/samba-dcerpcd.pid");
        let Ok(pid) = read_lossy(&pidfile).trim().parse::<i32>() else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let conf = self.conf();
        if String::from_utf8_lossy(&cmdline).contains(conf.to_str().unwrap_or("\0")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    fn auth_file(&self, user: &str, password: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.dir.path().join(format!("auth-{}", crate::unique("a")));
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&p)
            .expect("auth file");
        write!(f, "username = {user}\npassword = {password}\n").expect("write auth file");
        p
    }

    /// `smbclient -p PORT -A AUTH //127.0.0.1/SHARE -c CMD` (the password in a 0600 file,
    /// never on the command line).
    pub fn smbclient(&self, share: &str, user: &str, password: &str, cmd: &str) -> CmdOutput {
        let target = format!("//127.0.0.1/{share}");
        self.run_smbclient(user, password, &[&target, "-c", cmd])
    }

    /// `smbclient -g -L`: the share list as `Disk|name|comment` lines.
    pub fn list_shares(&self, user: &str, password: &str) -> CmdOutput {
        self.run_smbclient(user, password, &["-g", "-L", "127.0.0.1"])
    }

    /// `smbclient -s CONF -p PORT -A AUTH ARGS`, the credentials in a file removed afterwards.
    fn run_smbclient(&self, user: &str, password: &str, args: &[&str]) -> CmdOutput {
        let auth = self.auth_file(user, password);
        let mut c = Command::new("smbclient");
        c.arg("-s")
            .arg(self.conf())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-A")
            .arg(&auth)
            .args(args);
        let out = process::run(c, TIMEOUT);
        let _ = std::fs::remove_file(auth);
        out
    }

    /// `net -s CONF conf ARGS`.
    pub fn net_conf(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new("net");
        c.arg("-s").arg(self.conf()).arg("conf").args(args);
        process::run(c, TIMEOUT)
    }

    /// `pdbedit -L` names.
    pub fn passdb_users(&self) -> Vec<String> {
        let mut c = Command::new("pdbedit");
        c.arg("-s").arg(self.conf()).arg("-L");
        let out = process::run(c, TIMEOUT);
        out.stdout
            .lines()
            .filter_map(|l| l.split(':').next())
            .map(String::from)
            .collect()
    }

    /// Points an agent at this smbd: `[storage]` (this smbd's share root, the agent's state in
    /// `state_dir`) and `[smb]`.
    pub fn configure(&self, c: &mut AgentConfig, state_dir: &Path) {
        c.storage = Some(StorageSection::new(&self.root(), state_dir).command_timeout_s(20));
        c.smb = Some(SmbSection::samba(&self.conf()));
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.stop_dcerpcd();
        if let Some(c) = &mut self.child {
            c.signal(nix::sys::signal::Signal::SIGTERM);
            if c.wait_exit(Duration::from_secs(3)).is_none() {
                c.kill9();
            }
        }
        self.stop_dcerpcd();
    }
}

/// Unix accounts a test makes (through the agent) on the real machine: unique names per test
/// process, removed on drop whatever happened.
pub struct TestUsers {
    prefix: String,
    made: Vec<String>,
}

impl TestUsers {
    pub fn new() -> TestUsers {
        TestUsers {
            prefix: format!("csge{}", std::process::id()),
            made: Vec::new(),
        }
    }

    /// A user name unique to this test process, e.g. `csge1234alice`.
    pub fn name(&mut self, tag: &str) -> String {
        let n = format!("{}{tag}", self.prefix);
        assert!(n.len() <= 32, "user name {n} too long");
        self.made.push(n.clone());
        n
    }

    /// Whether the Unix account exists (`getent passwd`).
    pub fn exists(name: &str) -> bool {
        let mut c = Command::new("getent");
        c.args(["passwd", name]);
        process::run(c, TIMEOUT).code() == Some(0)
    }
}

impl Default for TestUsers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestUsers {
    fn drop(&mut self) {
        for n in &self.made {
            if Self::exists(n) {
                let mut c = Command::new(tool("userdel"));
                c.arg("--").arg(n);
                let _ = process::run(c, TIMEOUT);
            }
        }
    }
}
