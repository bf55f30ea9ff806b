//! The real `csg-agent` binary, configured through a TOML file in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bins;
use crate::process::{self, child_env, ChildGuard, CmdOutput};

/// Every config key of the contract, with values suited to tests: fast reconnects so a broker
/// restart is noticed and healed within the test timeouts, a short keep-alive so a dead link
/// is noticed, and debug logs from the agent itself so a failure can be explained.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub group_id: String,
    pub instance_id: String,
    pub url: String,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub down: String,
    pub up: String,
    pub status: String,
    /// `"standard"` or `"p2p"`.
    pub mode: String,
    pub subscribe_p2p: bool,
    pub max_len: u64,
    pub heartbeat_interval_s: u64,
    pub max_payload_bytes: u64,
    pub max_in_flight: u64,
    pub reply_cache_ttl_s: u64,
    pub log: String,
    /// Appended as is: more sections, e.g. `[storage]` and a backend's section, `[mqtt.tls]`.
    pub extra_toml: String,
    /// Appended as is inside `[mqtt]`: more keys of that section (one per line).
    pub mqtt_extra: String,
}

impl AgentConfig {
    pub fn new(instance_id: &str, url: &str) -> Self {
        Self {
            group_id: "GID_csg".into(),
            instance_id: instance_id.into(),
            url: url.into(),
            keep_alive_s: 5,
            connect_timeout_s: 5,
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            down: "csg-down".into(),
            up: "csg-up".into(),
            status: "csg-status".into(),
            mode: "standard".into(),
            subscribe_p2p: false,
            max_len: 64,
            // Long by default so a heartbeat seen in a test is not mistaken for cadence;
            // cadence tests lower it.
            heartbeat_interval_s: 30,
            max_payload_bytes: 65536,
            max_in_flight: 64,
            reply_cache_ttl_s: 600,
            log: "info,csg_agent=debug".into(),
            extra_toml: String::new(),
            mqtt_extra: String::new(),
        }
    }

    pub fn client_id(&self) -> String {
        format!("{}@@@{}", self.group_id, self.instance_id)
    }

    /// Where commands for this agent go.
    pub fn command_topic(&self) -> String {
        if self.mode == "p2p" {
            format!("{}/p2p/{}", self.down, self.client_id())
        } else {
            format!("{}/{}", self.down, self.instance_id)
        }
    }

    pub fn heartbeat_topic(&self) -> String {
        format!("{}/{}", self.status, self.instance_id)
    }

    pub fn presence_topic(&self) -> String {
        format!("{}/{}/presence", self.status, self.instance_id)
    }

    /// The TOML file the agent reads, with every key of the contract spelled out.
    pub fn to_toml(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).expect("string to JSON");
        format!(
            "[identity]\n\
             group_id = {}\n\
             instance_id = {}\n\
             \n\
             [mqtt]\n\
             url = {}\n\
             keep_alive_s = {}\n\
             connect_timeout_s = {}\n\
             reconnect_min_ms = {}\n\
             reconnect_max_ms = {}\n\
             {}\
             \n\
             [topics]\n\
             down = {}\n\
             up = {}\n\
             status = {}\n\
             mode = {}\n\
             subscribe_p2p = {}\n\
             max_len = {}\n\
             \n\
             [agent]\n\
             heartbeat_interval_s = {}\n\
             max_payload_bytes = {}\n\
             max_in_flight = {}\n\
             reply_cache_ttl_s = {}\n\
             log = {}\n\
             {}",
            s(&self.group_id),
            s(&self.instance_id),
            s(&self.url),
            self.keep_alive_s,
            self.connect_timeout_s,
            self.reconnect_min_ms,
            self.reconnect_max_ms,
            self.mqtt_extra,
            s(&self.down),
            s(&self.up),
            s(&self.status),
            s(&self.mode),
            self.subscribe_p2p,
            self.max_len,
            self.heartbeat_interval_s,
            self.max_payload_bytes,
            self.max_in_flight,
            self.reply_cache_ttl_s,
            s(&self.log),
            self.extra_toml,
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_contract_key_once() {
        let toml = AgentConfig::new("gw-1", "mqtt://127.0.0.1:1").to_toml();
        for key in [
            "group_id",
            "instance_id",
            "url",
            "keep_alive_s",
            "connect_timeout_s",
            "reconnect_min_ms",
            "reconnect_max_ms",
            "down",
            "up",
            "status",
            "mode",
            "subscribe_p2p",
            "max_len",
            "heartbeat_interval_s",
            "max_payload_bytes",
            "max_in_flight",
            "reply_cache_ttl_s",
            "log",
        ] {
            let n = toml
                .lines()
                .filter(|l| l.starts_with(&format!("{key} = ")))
                .count();
            assert_eq!(n, 1, "{key} in\n{toml}");
        }
        for section in ["[identity]", "[mqtt]", "[topics]", "[agent]"] {
            assert!(toml.contains(section));
        }
        assert!(toml.contains("instance_id = \"gw-1\""));
        assert!(toml.contains("subscribe_p2p = false"));
    }

    #[test]
    fn topics_follow_the_mode() {
        let mut c = AgentConfig::new("gw-1", "mqtt://127.0.0.1:1");
        assert_eq!(c.command_topic(), "csg-down/gw-1");
        assert_eq!(c.presence_topic(), "csg-status/gw-1/presence");
        c.mode = "p2p".into();
        assert_eq!(c.command_topic(), "csg-down/p2p/GID_csg@@@gw-1");
    }
}
