//! A private tgtd per test: in the foreground (`-f`), on its own control socket
//! (`TGT_IPC_SOCKET=<dir>/socket`, tgtd adds `.0`) and its own portal on a free loopback
//! port, killed (SIGKILL: tgtd ignores SIGTERM while it has targets) and reaped on drop.
//! Plus the libiscsi client tools that check it from the initiator side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::broker::free_port;
use crate::config::IscsiSection;
use crate::process::{self, ChildGuard, CmdOutput};
use crate::TIMEOUT;

pub struct Tgtd {
    child: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
    generation: u32,
}

/// Why one start attempt failed.
enum StartError {
    /// Another process holds the portal port: try another.
    PortTaken(String),
    Failed(String),
}

fn tgtd_bin() -> PathBuf {
    for d in ["/usr/sbin", "/usr/local/sbin", "/sbin"] {
        let p = Path::new(d).join("tgtd");
        if p.is_file() {
            return p;
        }
    }
    panic!("tgtd not found in /usr/sbin; install the tgt package (scripts/install-deps.sh)");
}

fn tgtadm_bin() -> PathBuf {
    let p = tgtd_bin().with_file_name("tgtadm");
    assert!(p.is_file(), "tgtadm not found next to tgtd");
    p
}

impl Tgtd {
    /// Starts a tgtd on a free port; returns once its control socket answers and its portal
    /// listens. Fails the test with tgtd's log otherwise.
    pub fn start() -> Tgtd {
        let mut last = String::new();
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            match Self::spawn(dir.path(), port, 1) {
                Ok(child) => {
                    return Tgtd {
                        child,
                        dir,
                        port,
                        generation: 1,
                    }
                }
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Failed(log)) => panic!("tgtd did not start:\n{log}"),
            }
        }
        panic!("tgtd could not get a free port in 10 tries; last log:\n{last}");
    }

    fn spawn(dir: &Path, port: u16, generation: u32) -> Result<ChildGuard, StartError> {
        let mut cmd = Command::new(tgtd_bin());
        cmd.args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .env("TGT_IPC_SOCKET", dir.join("socket"));
        let mut child = ChildGuard::spawn(&format!("tgtd-{generation}"), cmd, dir)
            .unwrap_or_else(|e| panic!("cannot start tgtd: {e}"));
        let want = format!("Portal: 127.0.0.1:{port},");
        let end = Instant::now() + TIMEOUT;
        loop {
            let log = child.stderr();
            if log.contains("failed to create/bind to portal") {
                child.kill9();
                return Err(StartError::PortTaken(child.log()));
            }
            if !child.is_running() {
                return Err(StartError::Failed(child.log()));
            }
            let o = Self::tgtadm_at(dir, &["--mode", "portal", "--op", "show"]);
            if o.code() == Some(0) && o.stdout.contains(&want) {
                return Ok(child);
            }
            if Instant::now() >= end {
                child.kill9();
                return Err(StartError::Failed(format!(
                    "not ready within {TIMEOUT:?}\n{}\n{}",
                    o.describe(),
                    child.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tgtadm_at(dir: &Path, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(tgtadm_bin());
        cmd.args(["--lld", "iscsi"])
            .args(args)
            .env("TGT_IPC_SOCKET", dir.join("socket"));
        process::run(cmd, TIMEOUT)
    }

    /// tgtadm on this tgtd, for checks and for breaking things on purpose.
    pub fn tgtadm(&self, args: &[&str]) -> CmdOutput {
        Self::tgtadm_at(self.dir.path(), args)
    }

    /// `tgtadm --op show --mode target`, the raw text.
    pub fn show(&self) -> String {
        let o = self.tgtadm(&["--mode", "target", "--op", "show"]);
        o.assert_code(0);
        o.stdout
    }

    /// The value for the agent's `iscsi.tgt_socket`.
    pub fn socket(&self) -> String {
        self.dir.path().join("socket").display().to_string()
    }

    /// `[iscsi]` for the tgt backend on this tgtd.
    pub fn iscsi_section(&self, iqn_prefix: &str) -> IscsiSection {
        IscsiSection::tgt(iqn_prefix, &self.socket())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn portal(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.child.log()
    }

    /// SIGKILL: tgtd forgets every target.
    pub fn kill(&mut self) {
        self.child.kill9();
    }

    /// Kills tgtd and starts a fresh (empty) one on the same socket and portal.
    pub fn restart(&mut self) {
        self.child.kill9();
        let end = Instant::now() + TIMEOUT;
        loop {
            self.generation += 1;
            match Self::spawn(self.dir.path(), self.port, self.generation) {
                Ok(c) => {
                    self.child = c;
                    return;
                }
                Err(StartError::PortTaken(log)) if Instant::now() < end => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::PortTaken(log)) | Err(StartError::Failed(log)) => {
                    panic!("tgtd did not restart on port {}:\n{log}", self.port)
                }
            }
        }
    }

    /// `iscsi-ls -s` as `initiator` (with CHAP credentials in the environment when given).
    pub fn iscsi_ls(&self, initiator: &str, chap: Option<(&str, &str)>) -> CmdOutput {
        client(
            "iscsi-ls",
            &["-s", "-i", initiator, &format!("{}/", self.portal())],
            chap,
        )
    }

    /// `iscsi-inq` on one LUN.
    pub fn iscsi_inq(
        &self,
        iqn: &str,
        lun: u16,
        initiator: &str,
        chap: Option<(&str, &str)>,
    ) -> CmdOutput {
        client(
            "iscsi-inq",
            &["-i", initiator, &format!("{}/{iqn}/{lun}", self.portal())],
            chap,
        )
    }

    /// The LUN's size in bytes through `iscsi-readcapacity16`; `Err` with its output when
    /// the login or the command fails.
    pub fn capacity(
        &self,
        iqn: &str,
        lun: u16,
        initiator: &str,
        chap: Option<(&str, &str)>,
    ) -> Result<u64, String> {
        let o = client(
            "iscsi-readcapacity16",
            &["-i", initiator, &format!("{}/{iqn}/{lun}", self.portal())],
            chap,
        );
        if o.code() != Some(0) {
            return Err(o.describe());
        }
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Total size:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| o.describe())
    }
}

impl Tgtd {
    /// An initiator logged in and reading for up to `secs` seconds (`iscsi-perf`, which does
    /// not reconnect: `-x 0`), so a target has a session. Killed on drop.
    pub fn hold_session(&self, iqn: &str, lun: u16, initiator: &str, secs: u32) -> ChildGuard {
        let mut cmd = Command::new("iscsi-perf");
        cmd.args([
            "-i",
            initiator,
            "-t",
            &secs.to_string(),
            "-x",
            "0",
            "-m",
            "2",
            &format!("{}/{iqn}/{lun}", self.portal()),
        ]);
        let mut g = ChildGuard::spawn("iscsi-perf", cmd, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start iscsi-perf: {e}"));
        g.set_dump_on_panic(false);
        g
    }
}

fn client(tool: &str, args: &[&str], chap: Option<(&str, &str)>) -> CmdOutput {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env_remove("LIBISCSI_CHAP_USERNAME")
        .env_remove("LIBISCSI_CHAP_PASSWORD");
    if let Some((u, p)) = chap {
        cmd.env("LIBISCSI_CHAP_USERNAME", u)
            .env("LIBISCSI_CHAP_PASSWORD", p);
    }
    process::run(cmd, TIMEOUT)
}
