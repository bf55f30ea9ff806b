//! Child processes that cannot outlive their test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A running child whose stdout and stderr go to files (so a chatty child can never block on a
/// full pipe, and the log survives the process). Dropping it kills and reaps the child.
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Print the log to the test's output if the test is panicking when this is dropped.
    dump_on_panic: bool,
    /// Left running on drop: see [`detach`](Self::detach).
    detached: bool,
}

impl ChildGuard {
    /// Starts `cmd` with its output captured to `{dir}/{name}.stdout` and `{dir}/{name}.stderr`
    /// (appended to, so a restarted process keeps one log).
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> std::io::Result<Self> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let open = |p: &Path| File::options().create(true).append(true).open(p);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(open(&stdout)?))
            .stderr(Stdio::from(open(&stderr)?));
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            child,
            status: None,
            stdout,
            stderr,
            dump_on_panic: true,
            detached: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// stderr then stdout, labelled, for failure messages.
    pub fn log(&self) -> String {
        let (out, err) = (self.stdout(), self.stderr());
        let mut s = format!(
            "----- {} (pid {}) stderr -----\n{err}",
            self.name,
            self.pid()
        );
        if !out.is_empty() {
            s.push_str(&format!("\n----- {} stdout -----\n{out}", self.name));
        }
        s
    }

    /// The exit status, if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on own child");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for the child to exit on its own; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&mut self, sig: Signal) {
        if self.is_running() {
            signal::kill(Pid::from_raw(self.pid() as i32), sig)
                .unwrap_or_else(|e| panic!("sending {sig} to {}: {e}", self.name));
        }
    }

    /// SIGKILL and reap: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait on own child");
        self.status = Some(s);
        s
    }

    pub fn set_dump_on_panic(&mut self, on: bool) {
        self.dump_on_panic = on;
    }

    /// Lets the child outlive this guard (a daemon started for a script, which stops it by
    /// its pid); returns the pid.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.pid()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let was_running = self.status.is_none();
        self.kill9();
        if self.dump_on_panic && std::thread::panicking() {
            eprintln!(
                "{}{}",
                self.log(),
                if was_running {
                    "\n(killed by the harness at the end of the failed test)"
                } else {
                    ""
                }
            );
        }
    }
}

pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a short-lived command did.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line, for failure messages.
    pub command: String,
}

impl CmdOutput {
    /// The exit code; `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything the command said, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\nexit: {:?} after {:?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
            self.command,
            self.status.code(),
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }
}

/// Runs `cmd` to completion; a command still running after `timeout` is killed and the test
/// fails, so a hung CLI cannot hang the suite.
pub fn run(cmd: Command, timeout: Duration) -> CmdOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let command = describe_command(&cmd);
    let start = Instant::now();
    let mut child = ChildGuard::spawn("cmd", cmd, dir.path())
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    child.set_dump_on_panic(false);
    let Some(status) = child.wait_exit(timeout) else {
        child.kill9();
        panic!(
            "{command} still running after {timeout:?}; killed\n{}",
            child.log()
        );
    };
    CmdOutput {
        status,
        stdout: child.stdout(),
        stderr: child.stderr(),
        elapsed: start.elapsed(),
        command,
    }
}

pub fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'', '{', '}']) {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Applies the log level the children should use: `CSG_E2E_RUST_LOG` when a developer sets it
/// to dig into a failure, otherwise none from the outer environment, so a stray `RUST_LOG` in
/// the shell cannot change what the tests see.
pub fn child_env(cmd: &mut Command) {
    // The same goes for the tools' own variables (csgctl reads e.g. CSG_BROKER): the tests
    // pass everything on the command line.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CSG_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    if let Some(v) = std::env::var_os("CSG_E2E_RUST_LOG") {
        cmd.env("RUST_LOG", v);
    }
    // Backtraces are for the harness's own panics, not the children's expected errors.
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
}
