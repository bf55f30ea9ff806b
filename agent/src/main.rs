//! `csg-agent`: command line, logging, signals.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use csg_agent::cli::{Cli, Command, LogFormat};
use csg_agent::config::{Config, ConfigError};
use csg_agent::notify::{Notifier, SystemdEnv};
use csg_agent::status::Host;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration the agent refuses to run with.
const EXIT_CONFIG: u8 = 2;

use csg_agent::SetLog;

/// Prefixes each line with its syslog priority (`<3>` error … `<7>` debug), which the journal
/// turns into the entry's level, so `journalctl -p warning` works.
struct JournalPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prio = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{prio}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

fn init_logging(directives: &str, format: LogFormat) -> SetLog {
    // RUST_LOG, when set, wins over the config file (also over a reloaded one).
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| {
        EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Each format is its own subscriber type, hence its own handle type: box the setter.
    macro_rules! install {
        ($b:expr) => {{
            // Reloading wraps the finished formatter, so it comes last.
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |d: &str| {
                if pinned {
                    return Err("RUST_LOG is set and takes precedence".to_string());
                }
                let f = EnvFilter::try_new(d).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            }) as SetLog
        }};
    }
    match format {
        // Log shippers want every field, and a timestamp of their own.
        LogFormat::Json => install!(builder.json().with_current_span(false)),
        // Under systemd the journal stamps each line itself, and reads the level from a
        // `<N>` syslog prefix (SyslogLevelPrefix=, on by default).
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            let inner = tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false)
                .with_ansi(false);
            install!(builder.event_format(JournalPrefix(inner)))
        }
        LogFormat::Text => install!(builder.with_ansi(std::io::stderr().is_terminal())),
    }
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
    // One rustls crypto provider (ring) for the whole process, before anything uses TLS.
    csg_transport::install_crypto_provider();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match load(&cli.config) {
            Ok(cfg) => {
                println!(
                    "config OK: {} as {} (commands on {})",
                    cfg.broker, cfg.client_id, cfg.topics.commands
                );
                for note in cfg.notes() {
                    println!("{note}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            let cfg = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let set_log = init_logging(&cfg.agent.log, cli.log_format);
            match run(cfg, cli.config.clone(), set_log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("csg-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(mut cfg: Config, path: PathBuf, set_log: SetLog) -> anyhow::Result<()> {
    let mut set_log = Some(set_log);
    // What outlives a run: systemd's variables are read once, here, and the host's facts once.
    let notifier = Notifier::systemd(
        &SystemdEnv::read(|k| std::env::var_os(k)),
        std::process::id(),
    );
    let host = Arc::new(Host::read(Duration::ZERO));
    loop {
        let storage = csg_agent::families::Storage::new(&cfg).context("cannot start storage")?;
        // One thread: every request crosses session → dispatcher → handler → session, and on one
        // thread those hand-offs cost no cross-thread wake-ups. Handlers never block (programs run
        // as async child processes), so one thread is not a bottleneck; it also keeps RSS small.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let setter = set_log
            .take()
            .expect("the log setter is handed back after every run");
        let outside = Outside {
            path: path.clone(),
            set_log: setter,
            notifier: notifier.clone(),
            host: host.clone(),
        };
        let (end, setter) = rt.block_on(run_once(cfg, storage, outside))?;
        // Dropping the runtime ends every task of the run, so nothing of it (the state lock
        // included) outlives it into the next one.
        drop(rt);
        set_log = Some(setter);
        match end {
            csg_agent::RunEnd::Stopped => return Ok(()),
            csg_agent::RunEnd::Restart(new) => {
                cfg = *new;
                if let Some(set) = &set_log {
                    let _ = set(&cfg.agent.log);
                }
            }
        }
    }
}

/// What one run gets from the process around it.
struct Outside {
    /// The configuration file, re-read on SIGHUP.
    path: PathBuf,
    set_log: SetLog,
    notifier: Notifier,
    host: Arc<Host>,
}

async fn run_once(
    cfg: Config,
    storage: csg_agent::families::Storage,
    outside: Outside,
) -> anyhow::Result<(csg_agent::RunEnd, SetLog)> {
    let Outside {
        path,
        set_log,
        notifier,
        host,
    } = outside;
    use tokio::signal::unix::{signal, SignalKind};
    // Every handler is installed before anything starts: a signal that arrives early must mean
    // what it says, not death by the default disposition.
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    // SIGHUP: re-read and validate the file here; only a valid config reaches the agent.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn({
        let notifier = notifier.clone();
        async move {
            while hup.recv().await.is_some() {
                tracing::info!(config = %path.display(), "SIGHUP received: reloading the configuration");
                match Config::load(&path) {
                    Ok(c) => {
                        if reload_tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload refused; running with the previous configuration");
                        notifier.status(&format!(
                            "configuration reload refused ({}); running with the previous configuration",
                            e.to_string()
                                .lines()
                                .map(str::trim)
                                .collect::<Vec<_>>()
                                .join(" ")
                        ));
                        notifier.ready();
                    }
                }
            }
        }
    });
    // The setter goes into the run and must come back for the next one: share it.
    let set_log = Arc::new(set_log);
    let shared = set_log.clone();
    let end = csg_agent::run(
        Box::new(cfg),
        storage,
        csg_agent::Control {
            shutdown,
            reloads: Some(reload_rx),
            set_log: Box::new(move |d: &str| shared(d)),
            notifier,
            host,
            started: None,
            queues: None,
        },
    )
    .await;
    reader.abort();
    let _ = reader.await;
    let set_log = Arc::try_unwrap(set_log)
        .unwrap_or_else(|_| unreachable!("the run dropped its copy of the log setter"));
    Ok((end, set_log))
}
