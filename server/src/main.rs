//! `csg-consoled`: the console service. Runs the fleet (MQTT status ingest → live state →
//! store) and the HTTP API; manages API tokens.

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use csg_console::{Console, IdGenerator};
use csg_consoled::calls::CallService;
use csg_consoled::cli::{Cli, Command, TokenCommand};
use csg_consoled::config::Config;
use csg_consoled::events::Bus;
use csg_consoled::fleet::driver::{self, system_clock, DriverConfig, SharedFleet};
use csg_consoled::fleet::mqtt::DEFAULT_QUEUE;
use csg_consoled::fleet::{Fleet, MqttStatusSource};
use csg_consoled::http::{self, AppState, HttpLimits};
use csg_consoled::metrics::Metrics;
use csg_consoled::rpc::ConsoleCaller;
use csg_consoled::sink::StoreSink;
use csg_consoled::store::{self, NewToken, Scope, TokenName, TokenSecret};
use csg_consoled::tls;
use csg_protocol::identity::GroupId;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csg-consoled: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("csg-consoled: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        None => run(config, &cli.config).await,
        Some(Command::CheckConfig) => {
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Some(Command::Token(t)) => token(&config, t).await,
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn store::Store>> {
    ensure_sqlite_dir(&config.store_url)?;
    store::open(&config.store_url)
        .await
        .context("opening the store")
}

async fn token(config: &Config, cmd: TokenCommand) -> Result<()> {
    let store = open_store(config).await?;
    let result = token_with(store.as_ref(), cmd).await;
    store.close().await;
    result
}

async fn token_with(store: &dyn store::Store, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            scopes,
            groups,
        } => {
            let name = TokenName::new(name)?;
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let groups = groups
                .iter()
                .map(|g| GroupId::new(g.as_str()).with_context(|| format!("--group {g:?}")))
                .collect::<Result<Vec<_>>>()?;
            let secret = TokenSecret::generate()?;
            store
                .create_token(&NewToken {
                    name: name.clone(),
                    hash: secret.hash(),
                    scopes,
                    groups,
                    created_ms: now_ms(),
                })
                .await
                .with_context(|| format!("creating token {name}"))?;
            println!("{}", secret.expose());
        }
        TokenCommand::List => {
            for t in store.list_tokens().await? {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let groups: Vec<&str> = t.groups.iter().map(GroupId::as_str).collect();
                println!(
                    "{}\tscopes={}\tgroups={}\tcreated_ms={}\t{}",
                    t.name,
                    scopes.join(","),
                    if groups.is_empty() {
                        "*".to_owned()
                    } else {
                        groups.join(",")
                    },
                    t.created_ms,
                    t.revoked_ms
                        .map_or("active".to_owned(), |r| format!("revoked_ms={r}"))
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let name = TokenName::new(name)?;
            if !store.revoke_token(&name, now_ms()).await? {
                bail!("no active token named {name}");
            }
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

type LogFilter = reload::Handle<EnvFilter, Registry>;

/// `CSG_LOG` when set (it wins over the file, at start and at SIGHUP), else `log.filter`.
fn log_filter(config: &Config) -> EnvFilter {
    EnvFilter::try_from_env("CSG_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log_filter))
}

fn init_logging(config: &Config) -> LogFilter {
    let (filter, handle) = reload::Layer::new(log_filter(config));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                // Colour codes only for a person at a terminal, not in the journal.
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .try_init();
    handle
}

/// SIGHUP: the file is read and checked again; if it is valid, the certificate and key and
/// the log filter are replaced (open connections keep theirs). Anything wrong in it: nothing
/// changes. Every other setting applies at the next start.
fn reload(path: &Path, cert: Option<&tls::ReloadableCert>, log: &LogFilter) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!(
                "SIGHUP: configuration refused, nothing reloaded, the running settings stay: {e}"
            );
            return;
        }
    };
    match (cert, &new.http_tls) {
        (Some(cert), Some(pair)) => {
            cert.set(pair);
            info!(cert = %pair.cert_file.display(), key = %pair.key_file.display(), "SIGHUP: certificate and key reloaded");
        }
        (None, None) => {}
        _ => warn!("SIGHUP: turning HTTPS on or off takes a restart"),
    }
    match log.reload(log_filter(&new)) {
        Ok(()) => {
            info!(filter = %new.log_filter, "SIGHUP: log filter reloaded (CSG_LOG, when set, wins)");
        }
        Err(e) => error!(error = %e, "SIGHUP: log filter not reloaded"),
    }
}

async fn run(config: Config, path: &Path) -> Result<()> {
    let log = init_logging(&config);
    csg_transport::install_crypto_provider();
    let store = open_store(&config).await?;

    // One MQTT session for the region: the console library's, carrying calls and, through
    // its tap, the status ingest (two sessions with one client id would kick each other).
    let (source, status_tap) =
        MqttStatusSource::new(config.parents(), &config.share_group, DEFAULT_QUEUE)?;
    let mut options = config.console_options();
    options.subscriptions = status_tap.subscriptions;
    options.tap = Some(status_tap.tap);
    // Started without waiting: the service runs, and says "broker down", while it is away.
    let console = Console::start(options).context("starting the MQTT session")?;
    let link = console.link();
    let bus = Bus::default();
    let metrics = Metrics::new();
    metrics.attach_ingest(source.stats());

    let fleet: SharedFleet = Arc::new(Mutex::new(Fleet::new(
        config.region.as_str(),
        config.fleet.clone(),
    )));
    // The fleet as stored, before any message: a restart forgets nothing it knew.
    let restored = csg_consoled::sink::restore_fleet(store.as_ref(), &config.region, &fleet)
        .await
        .context("restoring the fleet from the store")?;
    info!(restored, "fleet restored from the store");
    let clock = system_clock();
    let sink = StoreSink {
        store: store.clone(),
        region: config.region.clone(),
        clock: clock.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
    };
    // Before the fleet runs, so its first events are logged too: every event published from
    // here on is logged in the store (with its webhook deliveries); the tail hands every
    // replica's logged events to this replica's streams.
    let log_tail = csg_consoled::eventlog::LogTail::new(store.clone());
    let delivered = Arc::new(tokio::sync::Notify::new());
    let event_log = csg_consoled::eventlog::Service::start(
        &log_tail,
        &bus,
        csg_consoled::webhooks::hook_kinds(&config.webhooks),
        config.client_id.instance().as_str().to_owned(),
        config.events,
        delivered.clone(),
    )
    .await
    .context("reading the event log")?;
    let (stop_fleet, stop_rx) = oneshot::channel();
    let flush_every = config.flush_every;
    let fleet_task = tokio::spawn(async move {
        driver::run(
            source,
            fleet,
            sink,
            DriverConfig { flush_every },
            clock,
            stop_rx,
        )
        .await;
    });

    let webhooks = csg_consoled::webhooks::Service::start(
        config.webhooks.clone(),
        store.clone(),
        delivered,
        metrics.clone(),
    )?;
    let caller: Arc<dyn csg_consoled::rpc::Caller> = Arc::new(ConsoleCaller {
        console: console.clone(),
        signer: config.signer.clone(),
    });
    // Jobs run on every replica; each job is leased to one of them in the store.
    let (stop_jobs, jobs_stop_rx) = oneshot::channel();
    let runner = csg_consoled::jobs::Runner::spawn(
        store.clone(),
        caller.clone(),
        bus.clone(),
        csg_consoled::jobs::RunnerConfig::new(
            config.client_id.instance().as_str(),
            config.region.clone(),
        ),
        jobs_stop_rx,
    );
    let job_metrics = metrics.follow_jobs(&bus);
    let calls = Arc::new(CallService {
        store: store.clone(),
        caller,
        region: config.region.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        link: link.clone(),
        ids: IdGenerator::new(config.client_id.instance().as_str()),
        in_flight: Arc::default(),
    });
    if let Some(s) = &config.signer {
        info!(key_id = s.key_id(), "every command is signed");
    }
    let calls_in_flight = calls.in_flight.clone();
    let state = AppState {
        store: store.clone(),
        region: config.region.clone(),
        link,
        bus: bus.clone(),
        log: log_tail,
        metrics: metrics.clone(),
        calls,
    };
    let mut app = http::router(
        state.clone(),
        &HttpLimits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    // /metrics on its own address when configured, else beside the API.
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (metrics)"))?;
            info!(listen = %addr, "metrics served");
            let m = http::metrics::router(state);
            Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = metrics_stopped.await;
                };
                axum::serve(l, m).with_graceful_shutdown(stopped).await
            }))
        }
        None => {
            app = app.merge(http::metrics::router(state));
            None
        }
    };
    let cert = config.http_tls.as_ref().map(tls::ReloadableCert::new);
    info!(listen = %config.listen, https = cert.is_some(), region = %config.region, store = ?store.engine(), webhooks = config.webhooks.len(), "csg-consoled serving");

    let mut hup = signal(SignalKind::hangup())?;
    let reloader = {
        let (path, cert) = (path.to_path_buf(), cert.clone());
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload(&path, cert.as_deref(), &log);
            }
        })
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stopping, stopped) = oneshot::channel::<()>();
    let closing = bus.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        // Event streams never end on their own: end them, or the server waits for them.
        closing.close();
        let _ = stopping.send(());
    };
    // The client's address reaches the handlers (the audit log records it).
    let app = app.into_make_service_with_connect_info::<http::PeerAddr>();
    let serve = async {
        match &cert {
            None => axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(anyhow::Error::from),
            Some(cert) => {
                let tls = tls::TlsListener::new(listener, cert.server_config()?)?;
                axum::serve(tls, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    };
    // Requests under way are bounded by request_timeout; a connection still open a second
    // after that (a client that never finishes its request headers: hyper has no timer for
    // them here) is cut, so a stop never hangs. A call to a gateway still waiting then is not
    // lost: it runs in a task of its own, ends when the MQTT session closes below, and records
    // its outcome (failed, to be retried under the same id) before the store closes.
    let drain = config.request_timeout + Duration::from_secs(1);
    let served = tokio::select! {
        r = serve => r,
        () = async {
            match stopped.await {
                Ok(()) => tokio::time::sleep(drain).await,
                Err(_) => std::future::pending().await,
            }
        } => {
            warn!(after_ms = drain.as_millis(), "connections still open at the end of the drain: closed");
            Ok(())
        }
    };
    reloader.abort();

    // Calls of jobs under way get a bounded time to finish; their jobs' leases are given up
    // so another replica (or the next start) takes them at once.
    let _ = stop_jobs.send(());
    if let Err(e) = runner.await {
        error!(error = %e, "the job runner failed");
    }
    job_metrics.abort();
    // Stop taking status, write what the fleet holds (its last events reach the event log's
    // queue), let the webhooks' attempts under way finish; once the last calls have recorded
    // their outcome, log the events still queued, then close the store.
    let _ = stop_fleet.send(());
    if let Err(e) = fleet_task.await {
        error!(error = %e, "the fleet task failed");
    }
    webhooks.stop().await;
    let _ = stop_metrics.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    console.disconnect().await;
    if !calls_in_flight.wait_idle(Duration::from_secs(5)).await {
        warn!("calls still recording their outcome after 5 s: left pending (a retry under the same id resends them)");
    }
    event_log.stop().await;
    store.close().await;
    served.context("serving HTTP")?;
    info!("stopped");
    Ok(())
}

/// SQLite creates the file, not its directory; a missing one is created (owner only).
fn ensure_sqlite_dir(url: &str) -> Result<()> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.exists() {
            // Owner only: the database holds token hashes and the fleet's inventory.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the store's directory {}", dir.display()))?;
        }
    }
    Ok(())
}
