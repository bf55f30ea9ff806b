//! `csg-agent`: command line, logging, signals.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use csg_agent::config::{Config, ConfigError};
use tracing_subscriber::EnvFilter;

const DEFAULT_CONFIG: &str = "/etc/csg-agent/agent.toml";

/// Cloud storage gateway agent: dials out to an MQTT broker, takes commands from the console,
/// and reports heartbeats and presence.
#[derive(Parser)]
#[command(name = "csg-agent", version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// Log line format on stderr: plain text, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration, print every problem at once, and exit.
    CheckConfig,
    /// Write man pages and shell completions into DIR (used when building packages).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// Exit code for a configuration the agent refuses to run with.
const EXIT_CONFIG: u8 = 2;

fn init_logging(directives: &str, format: LogFormat) {
    // RUST_LOG, when set, wins over the config file.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        // Log shippers want every field, and a timestamp of their own.
        LogFormat::Json => builder.json().with_current_span(false).init(),
        // Under systemd the journal stamps each line itself.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            builder.with_ansi(false).without_time().init()
        }
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Man pages (one per subcommand) and bash/zsh/fish completions, from the clap definition, so
/// they never drift from the real flags.
fn generate_docs(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "csg-agent", dir)?;
    }
    Ok(())
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("csg-agent: {e}");
        if matches!(e, ConfigError::Read { .. }) {
            eprintln!("csg-agent: give the configuration file with --config FILE");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match load(&cli.config) {
            Ok(cfg) => {
                println!(
                    "config OK: {} as {} (commands on {})",
                    cfg.broker, cfg.client_id, cfg.topics.commands
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::GenerateDocs { dir } => match generate_docs(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("csg-agent: cannot write docs into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Run => {
            let cfg = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg.agent.log, cli.log_format);
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("csg-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let storage = csg_agent::storage::Storage::new(&cfg).context("cannot start storage")?;
    // One thread: every request crosses session → dispatcher → handler → session, and on one
    // thread those hand-offs cost no cross-thread wake-ups. Handlers never block (programs run
    // as async child processes), so one thread is not a bottleneck; it also keeps RSS small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        // Both handlers are installed before anything starts: a signal that arrives early must
        // still mean a clean stop, not death by the default disposition.
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot install the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        csg_agent::run(cfg, storage, shutdown).await;
        Ok(())
    })
}
