//! The real `csgctl` binary.

use std::process::Command;
use std::time::Duration;

use crate::bins;
use crate::process::{self, child_env, CmdOutput};

/// `csgctl --broker URL [global options] …`.
#[derive(Debug, Clone)]
pub struct Csgctl {
    broker_url: String,
    /// `--mqtt-protocol`: the run's version ([`crate::mqtt_protocol`]) unless set.
    pub protocol: String,
    global: Vec<String>,
    /// The harness's own limit per command: well above any `--timeout` the tests pass, so
    /// only a hung CLI hits it.
    pub limit: Duration,
}

impl Csgctl {
    pub fn new(broker_url: &str) -> Self {
        Self {
            broker_url: broker_url.to_string(),
            protocol: crate::mqtt_protocol().to_string(),
            global: Vec::new(),
            limit: Duration::from_secs(60),
        }
    }

    /// Speaks `protocol` (`"3.1.1"` or `"5"`) whatever the run's version.
    pub fn with_protocol(mut self, protocol: &str) -> Self {
        self.protocol = protocol.to_string();
        self
    }

    /// Adds global options (e.g. `--p2p`, `--console-id X`) to every command.
    pub fn with_global(mut self, args: &[&str]) -> Self {
        self.global.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn run(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(bins::csgctl());
        cmd.arg("--broker").arg(&self.broker_url);
        cmd.arg("--mqtt-protocol").arg(&self.protocol);
        cmd.args(&self.global);
        cmd.args(args);
        child_env(&mut cmd);
        process::run(cmd, self.limit)
    }
}

/// Every non-empty stdout line parsed as JSON; panics naming the line that is not.
pub fn json_lines(out: &CmdOutput) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("stdout line is not JSON ({e}): {l}\n{}", out.describe())
            })
        })
        .collect()
}

/// The whole stdout as one JSON document.
pub fn json_stdout(out: &CmdOutput) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", out.describe()))
}
