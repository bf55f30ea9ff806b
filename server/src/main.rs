//! `csg-consoled`: the console service. Runs the fleet (MQTT status ingest → live state →
//! store) and the HTTP API; manages API tokens.

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use csg_console::{Console, IdGenerator};
use csg_consoled::calls::CallService;
use csg_consoled::cli::{Cli, Command, TokenCommand};
use csg_consoled::config::{Config, RegionConfig};
use csg_consoled::events::Bus;
use csg_consoled::fleet::driver::{self, system_clock, DriverConfig, SharedFleet};
use csg_consoled::fleet::mqtt::DEFAULT_QUEUE;
use csg_consoled::fleet::{Fleet, MqttStatusSource};
use csg_consoled::http::{self, AppState, HttpLimits, RegionHandle, Regions};
use csg_consoled::metrics::Metrics;
use csg_consoled::now_ms;
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

    let bus = Bus::default();
    let metrics = Metrics::new();
    // Before the fleet runs, so its first events are logged too: every event published from
    // here on is logged in the store (with its webhook deliveries); the tail hands every
    // replica's logged events to this replica's streams.
    let log_tail = csg_consoled::eventlog::LogTail::new(store.clone());
    let delivered = Arc::new(tokio::sync::Notify::new());
    let event_log = csg_consoled::eventlog::Service::start(
        &log_tail,
        &bus,
        csg_consoled::webhooks::hook_kinds(&config.webhooks),
        config.console_id().as_str().to_owned(),
        config.events,
        delivered.clone(),
    )
    .await
    .context("reading the event log")?;
    // Started before the regions, so no presence change of a region's first moments is missed.
    let webhooks = csg_consoled::webhooks::Service::start(
        config.webhooks.clone(),
        store.clone(),
        delivered,
        metrics.clone(),
    )?;
    let job_metrics = metrics.follow_jobs(&bus);
    if let Some(s) = &config.signer {
        info!(key_id = s.key_id(), "every command is signed");
    }
    let mut running = Vec::new();
    for rc in config.regions.iter() {
        running.push(
            start_region(&config, rc, &store, &bus, &metrics)
                .await
                .with_context(|| format!("region {}", rc.region))?,
        );
    }
    let mut handles = running.iter().map(|r| r.handle.clone());
    let Some(home) = handles.next() else {
        bail!("no region configured");
    };
    let state = AppState {
        store: store.clone(),
        regions: Regions::new(home, handles.collect()),
        bus: bus.clone(),
        log: log_tail,
        metrics: metrics.clone(),
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
    let names: Vec<&str> = config.regions.iter().map(|r| r.region.as_str()).collect();
    info!(listen = %config.listen, https = cert.is_some(), regions = %names.join(","), store = ?store.engine(), webhooks = config.webhooks.len(), "csg-consoled serving");

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

    for r in &mut running {
        if let Some(stop) = r.stop_sweeper.take() {
            let _ = stop.send(());
        }
    }
    for r in &mut running {
        if let Some(sweeper) = r.sweeper.take() {
            let _ = sweeper.await;
        }
    }
    // Calls of jobs under way get a bounded time to finish; their jobs' leases are given up
    // so another replica (or the next start) takes them at once. Every region's runner stops
    // at once, so the bound does not add up per region.
    for r in &mut running {
        if let Some(stop) = r.stop_jobs.take() {
            let _ = stop.send(());
        }
    }
    for r in &mut running {
        if let Some(runner) = r.runner.take() {
            if let Err(e) = runner.await {
                error!(region = %r.handle.region, error = %e, "the job runner failed");
            }
        }
    }
    job_metrics.abort();
    // Stop taking status, write what each fleet holds (its last events reach the event
    // log's queue), let the webhooks' attempts under way finish; once the last calls have
    // recorded their outcome, log the events still queued, then close the store.
    for r in &mut running {
        if let Some(stop) = r.stop_fleet.take() {
            let _ = stop.send(());
        }
    }
    for r in &mut running {
        if let Some(task) = r.fleet_task.take() {
            if let Err(e) = task.await {
                error!(region = %r.handle.region, error = %e, "the fleet task failed");
            }
        }
    }
    webhooks.stop().await;
    let _ = stop_metrics.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    for r in &running {
        r.console.disconnect().await;
    }
    for r in &running {
        if !r
            .handle
            .calls
            .in_flight
            .wait_idle(Duration::from_secs(5))
            .await
        {
            warn!(region = %r.handle.region, "calls still recording their outcome after 5 s: left pending (a retry under the same id resends them)");
        }
    }
    event_log.stop().await;
    store.close().await;
    served.context("serving HTTP")?;
    info!("stopped");
    Ok(())
}

/// One region at work: its MQTT session, fleet and job runner, and what the API reaches.
struct RunningRegion {
    handle: RegionHandle,
    console: Console,
    stop_fleet: Option<oneshot::Sender<()>>,
    fleet_task: Option<tokio::task::JoinHandle<()>>,
    stop_jobs: Option<oneshot::Sender<()>>,
    runner: Option<tokio::task::JoinHandle<()>>,
    stop_sweeper: Option<oneshot::Sender<()>>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a region: its one MQTT session (the console library's, carrying calls and, through
/// its tap, the status ingest: two sessions with one client id would kick each other), its
/// fleet restored from the store, its ingest, its job runner and its call path.
async fn start_region(
    config: &Config,
    rc: &RegionConfig,
    store: &Arc<dyn store::Store>,
    bus: &Bus,
    metrics: &Metrics,
) -> Result<RunningRegion> {
    let (source, status_tap) =
        MqttStatusSource::new(rc.parents.clone(), &config.share_group, DEFAULT_QUEUE)?;
    let mut options = rc.console_options();
    options.subscriptions = status_tap.subscriptions;
    options.tap = Some(status_tap.tap);
    // Started without waiting: the service runs, and says "broker down", while it is away.
    let console = Console::start(options).context("starting the MQTT session")?;
    let link = console.link();
    metrics.attach_ingest(rc.region.as_str(), source.stats());
    metrics.attach_link(rc.region.as_str(), link.clone());

    let fleet: SharedFleet = Arc::new(Mutex::new(Fleet::new(
        rc.region.as_str(),
        config.fleet.clone(),
    )));
    // The fleet as stored, before any message: a restart forgets nothing it knew.
    let restored = csg_consoled::sink::restore_fleet(store.as_ref(), &rc.region, &fleet)
        .await
        .context("restoring the fleet from the store")?;
    info!(region = %rc.region, restored, "fleet restored from the store");
    let clock = system_clock();
    let sink = StoreSink {
        store: store.clone(),
        region: rc.region.clone(),
        clock: clock.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        host_samples: config.host_samples,
    };
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

    let caller: Arc<dyn csg_consoled::rpc::Caller> = Arc::new(ConsoleCaller {
        console: console.clone(),
        signer: config.signer.clone(),
    });
    // Jobs run on every replica; each job is leased to one of them in the store. With several
    // regions each has a runner of its own, leasing only its region's jobs, under its own name.
    let owner = if config.regions.len() == 1 {
        config.console_id().as_str().to_owned()
    } else {
        format!("{}/{}", config.console_id().as_str(), rc.region)
    };
    let (stop_jobs, jobs_stop_rx) = oneshot::channel();
    let runner = csg_consoled::jobs::Runner::spawn(
        store.clone(),
        caller.clone(),
        bus.clone(),
        csg_consoled::jobs::RunnerConfig::new(owner, rc.region.clone()),
        jobs_stop_rx,
    );
    let calls = Arc::new(CallService {
        store: store.clone(),
        caller,
        region: rc.region.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        link: link.clone(),
        ids: IdGenerator::new(config.console_id().as_str()),
        in_flight: Arc::default(),
    });
    // Calls left pending by a process that died are sent again or ended (calls.rs).
    let (stop_sweeper, sweeper_stop_rx) = oneshot::channel();
    let sweeper = calls.spawn_sweeper(sweeper_stop_rx);
    Ok(RunningRegion {
        handle: RegionHandle {
            region: rc.region.clone(),
            link,
            calls,
        },
        console,
        stop_fleet: Some(stop_fleet),
        fleet_task: Some(fleet_task),
        stop_jobs: Some(stop_jobs),
        runner: Some(runner),
        stop_sweeper: Some(stop_sweeper),
        sweeper: Some(sweeper),
    })
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
