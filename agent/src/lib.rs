//! csg-agent: the daemon inside each storage-gateway VM.
//!
//! The path of one request, top to bottom:
//! `session` (MQTT, the only module that touches rumqttc) → `dispatch` (envelope, reply
//! cache, deadline, admission) → `handlers::*` (params → spec → apply) → back through
//! `dispatch` → `uplink` → `session`. `status` publishes heartbeats; `config` loads and
//! validates the TOML file; `main.rs` wires it together with signals.

pub mod auth;
pub mod backends;
pub mod backoff;
pub mod config;
pub mod dispatch;
pub mod exec;
pub mod families;
pub mod fsutil;
pub mod handlers;
pub mod journal;
pub mod model;
pub mod notify;
pub mod reply_cache;
pub mod session;
pub mod state;
pub mod stats;
pub mod status;
pub mod storage;
pub mod uplink;

use std::future::Future;
use std::sync::Arc;

use csg_protocol::methods::sys::InfoResult;
use csg_protocol::{now_ms, TopicMode, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::dispatch::{Dispatcher, Limits};
use crate::families::{SharedStorage, Storage};
use crate::handlers::Handlers;
use crate::session::{LinkState, Session};
use crate::stats::Stats;
use crate::status::{HostSampler, StatusSource};
use crate::uplink::Uplink;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Commands waiting for the dispatcher. The dispatcher takes microseconds per message, so
/// this only fills if it is wedged; beyond it commands are dropped (and re-sent by consoles).
const INBOUND_QUEUE: usize = 1024;

/// Host name, OS and kernel: read once per process (they do not change while it runs, and the
/// fleet simulator's thousands of agents would otherwise each read them).
fn host_facts() -> &'static (String, String, String) {
    static FACTS: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    FACTS.get_or_init(|| {
        (
            sysinfo::System::host_name().unwrap_or_default(),
            sysinfo::System::long_os_version().unwrap_or_default(),
            sysinfo::System::kernel_version().unwrap_or_default(),
        )
    })
}

fn info_result(cfg: &Config, storage: &Storage) -> InfoResult {
    let (hostname, os, kernel) = host_facts().clone();
    InfoResult {
        agent_version: AGENT_VERSION.into(),
        protocol_version: PROTOCOL_VERSION,
        group_id: cfg.client_id.group().to_string(),
        instance_id: cfg.client_id.instance().to_string(),
        client_id: cfg.client_id.to_string(),
        hostname,
        os,
        kernel,
        arch: std::env::consts::ARCH.into(),
        topic_mode: match cfg.mode {
            TopicMode::Standard => "standard".into(),
            TopicMode::P2p { .. } => "p2p".into(),
        },
        methods: handlers::methods(storage),
        storage_backends: storage.backends(),
        max_payload: cfg.agent.max_payload_bytes,
        started_ms: now_ms(),
    }
}

/// How a run ended.
pub enum RunEnd {
    /// SIGTERM/SIGINT: the process exits.
    Stopped,
    /// A reloaded config changes what a session is (identity, broker, topics, limits, state
    /// directory): the caller starts a fresh run with it. The session is dropped and made again.
    Restart(Box<Config>),
}

/// Replaces the log filter at run time (`agent.log` reloaded); errors say why not.
pub type SetLog = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a run takes from its caller besides the config.
pub struct Control<S> {
    /// Resolves on SIGTERM/SIGINT.
    pub shutdown: S,
    /// Validated configs re-read on SIGHUP; `None`: this run is never reloaded (a simulated
    /// agent; a channel would cost a block of 32 configs, ~45 KB, per agent).
    pub reloads: Option<mpsc::Receiver<Config>>,
    /// Replaces the log filter (`agent.log`).
    pub set_log: SetLog,
    /// Samples the host for heartbeats; `None`: the run makes its own. The fleet simulator's
    /// agents share one.
    pub host: Option<Arc<HostSampler>>,
    /// Gets the session's link state once the session has started (the fleet simulator paces
    /// its connects by it).
    pub link: Option<oneshot::Sender<watch::Receiver<LinkState>>>,
}

/// Whether `new` can be applied to a running session, or needs a new one.
fn needs_restart(old: &Config, new: &Config) -> bool {
    let agent_limits = |c: &Config| {
        let a = &c.agent;
        (
            a.max_payload_bytes,
            a.max_in_flight,
            a.max_per_family,
            a.reply_cache_ttl,
            a.reply_cache_max,
            a.shutdown_grace,
        )
    };
    old.client_id != new.client_id
        || old.broker != new.broker
        || old.mqtt != new.mqtt
        || old.parents != new.parents
        || old.mode != new.mode
        || old.topics != new.topics
        || agent_limits(old) != agent_limits(new)
        || old.storage.state_dir != new.storage.state_dir
        || Storage::enabled(old) != Storage::enabled(new)
}

fn storage_changed(old: &Config, new: &Config) -> bool {
    old.storage != new.storage || old.nfs != new.nfs || old.smb != new.smb || old.iscsi != new.iscsi
}

enum Reload {
    Applied(Vec<&'static str>),
    Restart,
    Refused(String),
}

/// Applies a reloaded config to the running agent: log filter, heartbeat interval, backend
/// settings. Backends are rebuilt first, because they are the part that can fail; a refused
/// reload changes nothing.
async fn reload(
    cfg: &mut Config,
    new: Config,
    ctl_set_log: &(dyn Fn(&str) -> Result<(), String> + Send + Sync),
    storage: &SharedStorage,
    handlers: &Handlers,
    interval: &watch::Sender<std::time::Duration>,
) -> Reload {
    if needs_restart(cfg, &new) {
        return Reload::Restart;
    }
    let mut applied = Vec::new();
    if storage_changed(cfg, &new) {
        let mut guard = storage.write().await;
        match guard.rebuild(&new) {
            Some(Ok(rebuilt)) => {
                *guard = rebuilt;
                *handlers.info.write().expect("info lock") = info_result(&new, &guard);
                applied.push("storage backends");
            }
            Some(Err(e)) => return Reload::Refused(e.to_string()),
            None => {}
        }
    }
    if cfg.agent.log != new.agent.log {
        if let Err(e) = ctl_set_log(&new.agent.log) {
            warn!(error = %e, "log filter not changed");
        } else {
            applied.push("log filter");
        }
    }
    if cfg.agent.heartbeat_interval != new.agent.heartbeat_interval {
        interval.send_replace(new.agent.heartbeat_interval);
        applied.push("heartbeat interval");
    }
    let backends = applied.contains(&"storage backends");
    *cfg = new;
    if backends {
        // New roots or backend paths: put the desired state onto what is configured now.
        let storage = storage.clone();
        tokio::spawn(async move {
            storage.read().await.reconcile().await;
        });
    }
    Reload::Applied(applied)
}

/// Applies a config re-read on SIGHUP and reports how it went (log, STATUS=); `Some` ends
/// the run when the new config needs a new session.
async fn apply_reload(
    cfg: &mut Config,
    new: Config,
    set_log: &(dyn Fn(&str) -> Result<(), String> + Send + Sync),
    storage: &SharedStorage,
    handlers: &Handlers,
    dispatcher: &Dispatcher,
    interval_tx: &watch::Sender<std::time::Duration>,
) -> Option<RunEnd> {
    notify::reloading();
    let old_security = cfg.security.clone();
    match reload(cfg, new.clone(), set_log, storage, handlers, interval_tx).await {
        Reload::Restart => {
            info!("reloaded config changes identity, broker, topics, limits or the state directory: starting a new session");
            return Some(RunEnd::Restart(Box::new(new)));
        }
        Reload::Applied(mut what) => {
            if cfg.security != old_security {
                // Key files were read again with the config: rotation needs no restart.
                let policy = auth::Policy::new(&cfg.security, cfg.client_id.as_str());
                dispatcher.set_policy(policy);
                what.push("signed-command keys");
            }
            info!(applied = ?what, "configuration reloaded");
            notify::status(&format!(
                "configuration reloaded ({}); connected to {}",
                if what.is_empty() {
                    "no change".to_string()
                } else {
                    what.join(", ")
                },
                cfg.broker
            ));
        }
        Reload::Refused(e) => {
            tracing::error!(error = %e, "configuration reload refused; running with the previous configuration");
            notify::status(&format!(
                "configuration reload refused ({e}); running with the previous configuration"
            ));
        }
    }
    notify::ready();
    None
}

/// The next reloaded config; never, when the run takes no reloads.
async fn next_reload(reloads: &mut Option<mpsc::Receiver<Config>>) -> Option<Config> {
    match reloads {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until `shutdown` resolves, then stops in order: stop taking commands, let
/// running ones finish (bounded), announce offline, disconnect. SIGHUP's configs apply live
/// when they can, or end the run with `RunEnd::Restart`.
///
/// `storage` is built by the caller (`Storage::new`), so a state directory or backend that
/// cannot start stops the agent before it connects.
///
/// The config comes boxed: the run future lives as long as the agent (once per agent; thousands
/// of times in the fleet simulator), and a config inline would add 1.4 KB to each.
pub async fn run<S: Future<Output = ()>>(
    mut cfg: Box<Config>,
    mut storage: Storage,
    ctl: Control<S>,
) -> RunEnd {
    let Control {
        shutdown,
        mut reloads,
        set_log,
        host,
        link,
    } = ctl;
    let stats = Arc::new(Stats::default());
    let journal = storage.take_journal();
    let info = info_result(&cfg, &storage);
    let storage: SharedStorage = Arc::new(tokio::sync::RwLock::new(storage));
    let status = Arc::new(StatusSource::with_host(
        cfg.client_id.instance().as_str(),
        cfg.client_id.group().as_str(),
        stats.clone(),
        storage.clone(),
        host.unwrap_or_else(|| Arc::new(HostSampler::new(std::time::Duration::ZERO))),
    ));
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    // Commands the dispatcher has no room for are answered BUSY by it, from the poll task;
    // the dispatcher exists only once the session does, hence the late binding.
    let overflow_to: Arc<std::sync::OnceLock<Arc<Dispatcher>>> = Arc::default();
    let session = Session::start(&cfg, inbound_tx, {
        let overflow_to = overflow_to.clone();
        Arc::new(move |msg| {
            if let Some(d) = overflow_to.get() {
                d.refuse_busy(msg);
            }
        })
    });
    if let Some(tx) = link {
        let _ = tx.send(session.link.clone());
    }
    let uplink: Arc<dyn Uplink> = session.uplink.clone();
    let handlers = Arc::new(Handlers {
        status: status.clone(),
        limits: handlers::FamilyLimits::new(cfg.agent.max_per_family),
        info: std::sync::RwLock::new(info),
        storage: storage.clone(),
    });
    // Put the desired state back on the OS (after a reboot, a daemon restart, a crash in the
    // middle of an apply) without holding up the connection.
    let reconcile_task = tokio::spawn({
        let storage = storage.clone();
        async move {
            storage.read().await.reconcile().await;
        }
    });
    let dispatcher = Dispatcher::new(
        cfg.topics.clone(),
        uplink.clone(),
        handlers.clone(),
        stats,
        Limits {
            max_payload: cfg.agent.max_payload_bytes,
            max_in_flight: cfg.agent.max_in_flight,
            reply_cache_ttl: cfg.agent.reply_cache_ttl,
            reply_cache_max: cfg.agent.reply_cache_max,
        },
        journal,
    );
    dispatcher.set_policy(auth::Policy::new(&cfg.security, cfg.client_id.as_str()));
    let _ = overflow_to.set(dispatcher.clone());
    let dispatch_task = tokio::spawn(dispatcher.clone().run(inbound_rx));
    let (interval_tx, interval_rx) = watch::channel(cfg.agent.heartbeat_interval);
    let heartbeat_task = tokio::spawn(status::heartbeat_loop(
        status,
        uplink,
        cfg.topics.heartbeat.clone(),
        interval_rx,
        session.link.clone(),
    ));

    // Running: config valid, session started. Not "connected": a broker that cannot be
    // reached must not hold up boot; STATUS= lines say how the connection is doing.
    notify::status(&format!("connecting to {}", cfg.broker));
    notify::ready();
    let watchdog_task = notify::watchdog_interval().map(|i| tokio::spawn(notify::watchdog_loop(i)));

    tokio::pin!(shutdown);
    let end = loop {
        tokio::select! {
            _ = &mut shutdown => break RunEnd::Stopped,
            Some(new) = next_reload(&mut reloads) => {
                // Boxed: a reload handles two configs, and inline they would make every run
                // future (one per agent; thousands in the fleet simulator) that much larger
                // for an event that rarely happens.
                let applied = Box::pin(apply_reload(&mut cfg, new, &*set_log, &storage, &handlers, &dispatcher, &interval_tx)).await;
                if let Some(end) = applied {
                    break end;
                }
            }
        }
    };
    info!("shutting down");
    notify::stopping();
    notify::status("stopping: finishing running requests, announcing offline");
    // Commands that arrive from now on are not started; the console will re-send them.
    dispatch_task.abort();
    let left = dispatcher.drain(cfg.agent.shutdown_grace).await;
    if left > 0 {
        warn!(
            running = left,
            "stopping with requests still running; their ids were not answered"
        );
    }
    heartbeat_task.abort();
    reconcile_task.abort();
    session.shutdown().await;
    if let Some(t) = watchdog_task {
        t.abort();
    }
    end
}
