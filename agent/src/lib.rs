//! csg-agent: the daemon inside each storage-gateway VM.
//!
//! The path of one request, top to bottom, each module importing only from those below it:
//! `session` (the agent's use of `csg_transport`'s MQTT session) → `dispatch` (signature,
//! envelope, typed `Method`, authorization, id memory, deadline, admission, the one audit
//! line) → `handlers` (sys methods; storage methods to `families::Storage`) → `families`
//! (validate → one snapshot under the family lock → plan → apply → desired state) →
//! `backends` (exportfs, Ganesha, Samba, tgt, LIO, memory: each implements its family's trait
//! from `model`) → `exec` (argv, timeout, bounded output, `ToolError`), with `state`,
//! `journal`, `fsutil` and `storage::paths` at the bottom. The reply goes back through
//! `dispatch` → `uplink` → `session`. `status` publishes heartbeats; `config` loads and
//! validates the TOML file; `main.rs` wires it together with signals and systemd.

pub(crate) mod auth;
pub mod backends;
pub mod cli;
pub mod config;
pub(crate) mod dispatch;
pub(crate) mod exec;
pub mod families;
pub(crate) mod fsutil;
pub(crate) mod handlers;
pub(crate) mod journal;
pub(crate) mod model;
pub mod notify;
pub(crate) mod ratelimit;
pub(crate) mod reply_cache;
pub mod session;
pub mod state;
pub(crate) mod stats;
pub mod status;
pub mod storage;
pub(crate) mod uplink;

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
use crate::notify::Notifier;
use crate::session::{LinkState, Session};
use crate::stats::Stats;
use crate::status::{Host, HostFacts, StatusSource};
use crate::uplink::Uplink;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Commands waiting for the dispatcher. The dispatcher takes microseconds per message, so
/// this only fills if it is wedged; beyond it commands are dropped (and re-sent by consoles).
const INBOUND_QUEUE: usize = 1024;

fn info_result(cfg: &Config, storage: &Storage, host: &HostFacts) -> InfoResult {
    let HostFacts {
        hostname,
        os,
        kernel,
    } = host.clone();
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

/// What a run takes from its caller besides the config and storage: everything outside the
/// run that it reads or tells, so a run holds no process-global state and many can share one
/// process.
pub struct Control<S> {
    /// Resolves when the run is to stop (SIGTERM/SIGINT in the agent).
    pub shutdown: S,
    /// Validated configs to apply (re-read on SIGHUP in the agent); `None`: this run is never
    /// reloaded, and holds no channel (tokio allocates a block of 32 configs, ~45 KB, per
    /// channel).
    pub reloads: Option<mpsc::Receiver<Config>>,
    /// Replaces the log filter (`agent.log`).
    pub set_log: SetLog,
    /// Tells the service manager how the run is doing.
    pub notifier: Notifier,
    /// The host it reports on (`sys.info`, heartbeats).
    pub host: Arc<Host>,
    /// Receives what the caller can watch once the session has started; `None`: nobody.
    pub started: Option<oneshot::Sender<Started>>,
    /// The MQTT session's queue sizes; `None`: the agent's defaults (the fleet simulator's
    /// agents take smaller ones).
    pub queues: Option<csg_transport::Queues>,
}

impl<S> Control<S> {
    /// A run that stops when `shutdown` resolves, reports to `notifier` and describes `host`;
    /// no reloads, a fixed log filter, nobody watching. Set the other fields to change that.
    pub fn new(shutdown: S, notifier: Notifier, host: Arc<Host>) -> Self {
        Self {
            shutdown,
            reloads: None,
            set_log: Box::new(|_| Err("the log filter of this run is fixed".into())),
            notifier,
            host,
            started: None,
            queues: None,
        }
    }
}

/// What a started run lets its caller watch.
#[derive(Debug)]
pub struct Started {
    /// The session's link state (online with its epoch, or offline).
    pub link: watch::Receiver<LinkState>,
}

/// Whether `new` can be applied to a running session, or needs a new one.
fn needs_restart(old: &Config, new: &Config) -> bool {
    let agent_limits = |c: &Config| {
        let a = &c.agent;
        (
            a.max_payload_bytes,
            a.max_reply_bytes,
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

/// What applying a reloaded config works on: the running agent's parts, and how to report.
struct Live<'a> {
    set_log: &'a (dyn Fn(&str) -> Result<(), String> + Send + Sync),
    notifier: &'a Notifier,
    host: &'a HostFacts,
    storage: &'a SharedStorage,
    handlers: &'a Handlers,
    dispatcher: &'a Dispatcher,
    interval: &'a watch::Sender<std::time::Duration>,
}

/// Applies a reloaded config to the running agent: log filter, heartbeat interval, backend
/// settings. Backends are rebuilt first, because they are the part that can fail; a refused
/// reload changes nothing.
async fn reload(cfg: &mut Config, new: Config, live: &Live<'_>) -> Reload {
    let Live {
        set_log,
        host,
        storage,
        handlers,
        interval,
        ..
    } = *live;
    if needs_restart(cfg, &new) {
        return Reload::Restart;
    }
    let mut applied = Vec::new();
    if storage_changed(cfg, &new) {
        let mut guard = storage.write().await;
        match guard.rebuild(&new) {
            Some(Ok(rebuilt)) => {
                *guard = rebuilt;
                *handlers.info.write().expect("info lock") = info_result(&new, &guard, host);
                applied.push("storage backends");
            }
            Some(Err(e)) => return Reload::Refused(e.to_string()),
            None => {}
        }
    }
    if cfg.agent.log != new.agent.log {
        if let Err(e) = set_log(&new.agent.log) {
            warn!(error = %e, "log filter not changed");
        } else {
            applied.push("log filter");
        }
    }
    if cfg.agent.heartbeat_interval != new.agent.heartbeat_interval {
        interval.send_replace(new.agent.heartbeat_interval);
        applied.push("heartbeat interval");
    }
    // Signing, family options and methods all show there: refreshed on every applied reload.
    *handlers
        .capabilities
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        handlers::sys::Capabilities::new(&new, &*storage.read().await);
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
async fn apply_reload(cfg: &mut Config, new: Config, live: Live<'_>) -> Option<RunEnd> {
    let notifier = live.notifier;
    notifier.reloading();
    let old_security = cfg.security.clone();
    match reload(cfg, new.clone(), &live).await {
        Reload::Restart => {
            info!("reloaded config changes identity, broker, topics, limits or the state directory: starting a new session");
            return Some(RunEnd::Restart(Box::new(new)));
        }
        Reload::Applied(mut what) => {
            if cfg.security != old_security {
                // Key files were read again with the config: rotation needs no restart.
                let policy = auth::Policy::new(&cfg.security, cfg.client_id.as_str());
                live.dispatcher.set_policy(policy);
                what.push("signed-command keys");
            }
            info!(applied = ?what, "configuration reloaded");
            notifier.status(&format!(
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
            notifier.status(&format!(
                "configuration reload refused ({e}); running with the previous configuration"
            ));
        }
    }
    notifier.ready();
    None
}

/// Passes the session's status lines on to the service manager (`systemctl status`).
async fn forward_status(mut lines: watch::Receiver<String>, notifier: Notifier) {
    while lines.changed().await.is_ok() {
        let line = lines.borrow_and_update().clone();
        notifier.status(&line);
    }
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
        notifier,
        host,
        started,
        queues,
    } = ctl;
    let stats = Arc::new(Stats::default());
    let journal = storage.take_journal();
    let info = info_result(&cfg, &storage, &host.facts);
    let capabilities = handlers::sys::Capabilities::new(&cfg, &storage);
    let storage: SharedStorage = Arc::new(tokio::sync::RwLock::new(storage));
    let status = Arc::new(StatusSource::with_host(
        cfg.client_id.instance().as_str(),
        cfg.client_id.group().as_str(),
        stats.clone(),
        storage.clone(),
        host.sampler.clone(),
    ));
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    // Commands the dispatcher has no room for are answered BUSY by it, from the poll task;
    // the dispatcher exists only once the session does, hence the late binding.
    let overflow_to: Arc<std::sync::OnceLock<Arc<Dispatcher>>> = Arc::default();
    let session = Session::start(
        &cfg,
        queues,
        inbound_tx,
        {
            let overflow_to = overflow_to.clone();
            Arc::new(move |msg| {
                if let Some(d) = overflow_to.get() {
                    d.refuse_busy(msg);
                }
            })
        },
        stats.clone(),
    );
    if let Some(tx) = started {
        let _ = tx.send(Started {
            link: session.link.clone(),
        });
    }
    // Only spawned when someone listens: the fleet simulator's agents report to nobody.
    let status_task = notifier
        .is_active()
        .then(|| tokio::spawn(forward_status(session.status.clone(), notifier.clone())));
    let uplink: Arc<dyn Uplink> = session.uplink.clone();
    let handlers = Arc::new(Handlers {
        status: status.clone(),
        limits: handlers::FamilyLimits::new(cfg.agent.max_per_family),
        info: std::sync::RwLock::new(info),
        capabilities: std::sync::RwLock::new(capabilities),
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
            max_reply: cfg.agent.max_reply_bytes,
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
    notifier.status(&format!("connecting to {}", cfg.broker));
    notifier.ready();
    let watchdog_task = notifier
        .watchdog_interval()
        .map(|i| tokio::spawn(notifier.clone().watchdog_loop(i)));

    tokio::pin!(shutdown);
    let end = loop {
        tokio::select! {
            _ = &mut shutdown => break RunEnd::Stopped,
            Some(new) = next_reload(&mut reloads) => {
                // Boxed: a reload handles two configs, and inline they would make every run
                // future (one per agent; thousands in the fleet simulator) that much larger
                // for an event that rarely happens.
                let live = Live {
                    set_log: &*set_log,
                    notifier: &notifier,
                    host: &host.facts,
                    storage: &storage,
                    handlers: &handlers,
                    dispatcher: &dispatcher,
                    interval: &interval_tx,
                };
                let applied = Box::pin(apply_reload(&mut cfg, new, live)).await;
                if let Some(end) = applied {
                    break end;
                }
            }
        }
    };
    info!("shutting down");
    // From here on the connection's ups and downs are part of stopping, not news.
    if let Some(t) = status_task {
        t.abort();
    }
    notifier.stopping();
    notifier.status("stopping: finishing running requests, announcing offline");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::notify::tests::Recorder;

    /// Nothing listens on port 1: the session keeps failing to connect, which is all a run
    /// needs to start and stop.
    const UNREACHABLE: &str = r#"
[identity]
group_id = "GID_csg"
instance_id = "gw-001"
[mqtt]
url = "mqtt://127.0.0.1:1"
"#;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "gw-host".into(),
            os: "Debian GNU/Linux 13".into(),
            kernel: "6.12.0".into(),
        }
    }

    #[test]
    fn sys_info_describes_the_host_the_caller_gave() {
        let cfg = Config::from_toml(UNREACHABLE).unwrap();
        let storage = Storage::new(&cfg).unwrap();
        let info = info_result(&cfg, &storage, &facts());
        assert_eq!(info.hostname, "gw-host");
        assert_eq!(info.os, "Debian GNU/Linux 13");
        assert_eq!(info.kernel, "6.12.0");
    }

    #[tokio::test]
    async fn a_run_tells_its_notifier_ready_then_stopping_in_order() {
        let cfg = Config::from_toml(UNREACHABLE).unwrap();
        let storage = Storage::new(&cfg).unwrap();
        let rec = Arc::new(Recorder::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel();
        let host = Arc::new(Host {
            facts: facts(),
            sampler: Arc::new(status::HostSampler::new(Duration::ZERO)),
        });
        let mut ctl = Control::new(
            async {
                let _ = stop_rx.await;
            },
            Notifier::to_sink(rec.clone(), None),
            host,
        );
        ctl.started = Some(started_tx);
        let run = tokio::spawn(run(Box::new(cfg), storage, ctl));

        let started = started_rx.await.unwrap();
        assert!(!started.link.borrow().is_ready());
        // The session's own lines reach the notifier too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !rec.lines().iter().any(|l| l.contains("unreachable")) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no status line about the unreachable broker: {:?}",
                rec.lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(()).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, RunEnd::Stopped));

        let lines = rec.lines();
        let at = |want: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(want))
                .unwrap_or_else(|| panic!("no {want:?} in {lines:?}"))
        };
        assert!(at("STATUS=connecting to mqtt://127.0.0.1:1") < at("READY=1"));
        assert!(at("READY=1") < at("STATUS=broker mqtt://127.0.0.1:1 unreachable"));
        assert_eq!(
            &lines[lines.len() - 2..],
            [
                "STOPPING=1",
                "STATUS=stopping: finishing running requests, announcing offline"
            ],
            "stopping comes last: {lines:?}"
        );
    }
}
