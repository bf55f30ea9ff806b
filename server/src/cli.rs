//! The command line of `csg-consoled`, in the library so that the man pages and shell
//! completions (`cargo run -p xtask -- package-docs`) are generated from the very definition
//! the binary parses.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "csg-consoled", version, about = "The csg console service")]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/csg-console/console.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Checks the configuration and reports every problem at once.
    CheckConfig,
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it (only it) on stdout, once: it is stored hashed.
    Create {
        #[arg(long)]
        name: String,
        /// read, operate, admin or audit; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Limits the token to these groups of gateways; repeatable. None: every group.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Revokes a token by name.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

/// The command as clap sees it: for the man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
