//! The real `csg-agent` binary, configured through a TOML file in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bins;
pub use crate::config::AgentConfig;
use crate::process::{self, child_env, ChildGuard, CmdOutput};

/// A config file on disk that lives as long as this value.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn write(toml: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml).expect("write agent config");
        ConfigFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A running agent. Dropping it kills it (and prints its log if the test failed).
pub struct Agent {
    // Declared before `file`: fields drop in order, and the child's log lives in the config
    // file's temp dir, which must still exist when a failing test's drop prints the log.
    child: ChildGuard,
    file: ConfigFile,
    pub config: AgentConfig,
}

impl Agent {
    /// `csg-agent --config FILE`.
    pub fn spawn(config: &AgentConfig) -> Agent {
        Self::spawn_with(config, &[])
    }

    /// `csg-agent {args_before} --config FILE`, e.g. `["run"]` for the subcommand form.
    pub fn spawn_with(config: &AgentConfig, args_before: &[&str]) -> Agent {
        let file = ConfigFile::write(&config.to_toml());
        let child = Self::spawn_file(&file, args_before);
        Agent {
            child,
            file,
            config: config.clone(),
        }
    }

    /// `{wrapper…} csg-agent --config FILE`: the agent started through a program that sets
    /// something up and then execs it, e.g. `ip netns exec NS` to run it in a network
    /// namespace (see [`crate::netns`]). Such a wrapper execs, so the process id is the
    /// agent's and killing the guard kills the agent.
    pub fn spawn_wrapped(config: &AgentConfig, wrapper: &[&str]) -> Agent {
        let file = ConfigFile::write(&config.to_toml());
        let child = Self::spawn_cmd(&file, wrapper, &[]);
        Agent {
            child,
            file,
            config: config.clone(),
        }
    }

    fn spawn_file(file: &ConfigFile, args_before: &[&str]) -> ChildGuard {
        Self::spawn_cmd(file, &[], args_before)
    }

    fn spawn_cmd(file: &ConfigFile, wrapper: &[&str], args_before: &[&str]) -> ChildGuard {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bins::agent()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bins::agent());
                c
            }
        };
        cmd.args(args_before).arg("--config").arg(file.path());
        child_env(&mut cmd);
        ChildGuard::spawn("csg-agent", cmd, file.dir())
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins::agent().display()))
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn config_path(&self) -> &Path {
        self.file.path()
    }

    /// The agent's stderr (its tracing log) and stdout.
    pub fn log(&self) -> String {
        self.child.log()
    }

    pub fn stderr(&self) -> String {
        self.child.stderr()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_status()
    }

    pub fn signal(&mut self, sig: Signal) {
        self.child.signal(sig);
    }

    pub fn kill9(&mut self) -> std::process::ExitStatus {
        self.child.kill9()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// Panics with the agent's log unless it is still running: used where a test needs the
    /// agent alive and a crash would otherwise show up only as a confusing timeout.
    pub fn assert_running(&mut self, context: &str) {
        if let Some(s) = self.try_status() {
            panic!("agent exited ({s}) {context}\n{}", self.log());
        }
    }
}

/// `csg-agent check-config --config FILE` on this TOML.
pub fn check_config(toml: &str) -> CmdOutput {
    let file = ConfigFile::write(toml);
    let mut cmd = Command::new(bins::agent());
    cmd.arg("check-config").arg("--config").arg(file.path());
    child_env(&mut cmd);
    process::run(cmd, crate::TIMEOUT)
}

/// Runs the agent on this TOML expecting it to stop by itself (a refused config); a process
/// still running after the timeout is killed and the test fails.
pub fn run_to_exit(toml: &str, args_before: &[&str]) -> CmdOutput {
    let file = ConfigFile::write(toml);
    let mut cmd = Command::new(bins::agent());
    cmd.args(args_before).arg("--config").arg(file.path());
    child_env(&mut cmd);
    process::run(cmd, crate::TIMEOUT)
}

/// `csg-agent ARGS` with no config, e.g. `--version`.
pub fn run_args(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(bins::agent());
    cmd.args(args);
    child_env(&mut cmd);
    process::run(cmd, crate::TIMEOUT)
}
