//! The `csg-agent` command line. It lives in the library so that the packaging task builds the
//! man pages and shell completions from the very definitions the binary parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where the agent looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/csg-agent/agent.toml";

/// Cloud storage gateway agent: dials out to an MQTT broker, takes commands from the console,
/// and reports heartbeats and presence.
#[derive(Debug, Parser)]
#[command(name = "csg-agent", version, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG, value_name = "FILE")]
    pub config: PathBuf,
    /// Log line format on stderr: plain text, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration, print every problem at once, and exit.
    CheckConfig,
}

/// The clap definition of `csg-agent`, for generated documentation.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_definition_is_consistent() {
        super::command().debug_assert();
    }
}
