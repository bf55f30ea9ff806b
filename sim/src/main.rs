//! `csg-sim`: a fleet of csg-agents in one process, for fleet-scale benchmarks and tests.
//!
//! Each simulated agent is the real thing, run through `csg_agent::run`: its own MQTT
//! session (clean session, Will, re-subscribe, back-off with jitter), dispatcher
//! (id memory, deadlines, admission), heartbeats and presence, with its own identity
//! `{group}@@@{prefix}{n:05}`. Only storage differs: NFS runs on an in-memory export table
//! and an in-memory desired state (handed to `Storage::builder`), which keeps the kernel backend's
//! validation, comparison and read-back, because thousands of agents on one machine cannot
//! each own an nfsd.
//!
//! Connects are paced: at most `--connects-in-flight` per broker at a time (Mosquitto's
//! listen backlog is 100; beyond it SYNs are dropped and the connect rate collapses). After
//! the ramp each agent reconnects on its own, with its own back-off.
//!
//! Standard output carries one JSON object per line: a `progress` line every `--report-ms`
//! (agents started and online, RSS, open files), one `ramp` line when every agent is online,
//! and a `stopped` line at the end. SIGTERM or SIGINT stops every agent the way a real one
//! stops (offline presence, acknowledged, then DISCONNECT).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use csg_agent::backends::memory::MemoryExports;
use csg_agent::config::{Config, RawConfig};
use csg_agent::families::Storage;
use csg_agent::notify::Notifier;
use csg_agent::session::LinkState;
use csg_agent::state::StateStore;
use csg_agent::status::Host;
use serde_json::json;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::Instrument;

/// Runs many csg-agent sessions in one process (fleet simulator).
#[derive(Parser, Debug)]
#[command(name = "csg-sim", version, about)]
struct Cli {
    /// Broker URL; repeat it to spread the agents over several brokers (agent n goes to
    /// broker n mod the number of brokers).
    #[arg(long = "broker", required = true, value_name = "URL")]
    brokers: Vec<String>,
    /// How many agents to run.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Number of the first agent (several simulator processes cover one fleet).
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Instance ids are this prefix followed by the agent's number, five digits or more.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// An agent configuration file (agent.toml) used as the template for every agent;
    /// identity.instance_id and mqtt.url are replaced per agent. Without it, the defaults
    /// with `--group` and `--export-root`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// identity.group_id when no template is given.
    #[arg(long, conflicts_with = "config", default_value = "GID_csg")]
    group: String,
    /// storage.roots when no template is given: in-memory NFS exports must name real
    /// directories under it.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "DIR",
        default_value = "/srv/csg"
    )]
    export_root: String,
    /// agent.heartbeat_interval_s when no template is given.
    #[arg(long, conflicts_with = "config", default_value_t = 30)]
    heartbeat_s: u64,
    /// mqtt.max_inflight for every agent (the MQTT client keeps a slot table of this size per
    /// session; an agent's replies are few, so a small table is enough).
    #[arg(long, default_value_t = 16)]
    max_inflight: u16,
    /// Connects in flight per broker during the ramp.
    #[arg(long, default_value_t = 64)]
    connects_in_flight: usize,
    /// Heartbeats of all agents share one host sample at most this old.
    #[arg(long, default_value_t = 1000)]
    host_sample_ms: u64,
    /// Interval of the progress lines on stdout (0: none).
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Worker threads; 0 (the default) runs everything on the main thread, as a real agent
    /// does: on a small machine shared with brokers that is cheaper than waking threads
    /// (10k agents on 2 cores: 1.08 s of CPU to come online instead of 1.51 s with 2).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// mqtt.protocol for every agent, "3.1.1" or "5"; without it, the template's (3.1.1 by
    /// default).
    #[arg(long, value_name = "VERSION")]
    mqtt_protocol: Option<String>,
    /// Stop by itself after this many seconds (0: run until SIGTERM/SIGINT).
    #[arg(long, default_value_t = 0)]
    duration_s: u64,
}

/// The per-agent configs, validated with the agent's own rules. Boxed one by one: each goes
/// to its agent's task, which then carries a pointer, not 1.4 KB of config.
#[allow(clippy::vec_box)]
fn configs(cli: &Cli) -> anyhow::Result<Vec<Box<Config>>> {
    let template: RawConfig = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => {
            let text = format!(
                "[identity]\ngroup_id = {:?}\ninstance_id = \"x\"\n[mqtt]\nurl = {:?}\n\
                 [agent]\nheartbeat_interval_s = {}\nlog = \"warn\"\n[storage]\nroots = [{:?}]\n",
                cli.group, cli.brokers[0], cli.heartbeat_s, cli.export_root
            );
            toml::from_str(&text).context("built-in template")?
        }
    };
    let mut out = Vec::with_capacity(cli.count as usize);
    for i in 0..cli.count {
        let n = cli.first + i;
        let mut raw = template.clone();
        raw.identity.instance_id = format!("{}{n:05}", cli.prefix);
        raw.mqtt.url = cli.brokers[n as usize % cli.brokers.len()].clone();
        // Each simulated agent gets one broker of its own, whatever the template lists.
        raw.mqtt.urls.clear();
        raw.mqtt.max_inflight = cli.max_inflight;
        if let Some(p) = &cli.mqtt_protocol {
            raw.mqtt.protocol.clone_from(p);
        }
        match raw.validate() {
            Ok(cfg) => out.push(Box::new(cfg)),
            Err(problems) => bail!(
                "agent {n}: the configuration is invalid:\n  - {}",
                problems.join("\n  - ")
            ),
        }
    }
    Ok(out)
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, std::iter::Iterator::count)
}

fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.count == 0 {
        bail!("--count must be at least 1");
    }
    if cli.connects_in_flight == 0 {
        bail!("--connects-in-flight must be at least 1");
    }
    if cli.first.checked_add(cli.count - 1).is_none() {
        bail!(
            "--first {} --count {}: agent numbers must stay below {}",
            cli.first,
            cli.count,
            u64::from(u32::MAX) + 1
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, as the agent does: a log file or a
        // pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    csg_transport::install_crypto_provider();
    // One thread: the agents' tasks run on the main thread, like a real agent's.
    let mut rt = if cli.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cli.threads);
        b
    };
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(simulate(cli))
}

async fn simulate(cli: Cli) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let base_rss = proc_status_kb("VmRSS:");
    let t0 = Instant::now();
    let configs = configs(&cli)?;
    // Before any agent runs: a SIGTERM from then on must stop the agents cleanly (offline
    // presence, DISCONNECT), not kill the process with their sessions open (worker threads
    // start connecting at once).
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let count = configs.len();
    // Every agent describes this one host: one read of its facts, one shared sample.
    let host = Arc::new(Host::read(Duration::from_millis(cli.host_sample_ms)));
    let gates: Vec<Arc<Semaphore>> = cli
        .brokers
        .iter()
        .map(|_| Arc::new(Semaphore::new(cli.connects_in_flight)))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (links_tx, mut links_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut agents = tokio::task::JoinSet::new();
    for (i, cfg) in configs.into_iter().enumerate() {
        let n = cli.first as usize + i;
        let gate = gates[n % gates.len()].clone();
        let mut stop = stop_rx.clone();
        let host = host.clone();
        let links_tx = links_tx.clone();
        agents.spawn(async move {
            let instance = cfg.client_id.instance().to_string();
            // Paced: hold a connect slot of this agent's broker until it is online (or gave
            // up for now; its own back-off takes over from there).
            let permit = gate.acquire_owned().await.expect("gate open");
            if *stop.borrow() {
                return;
            }
            let storage = Storage::builder(&cfg)
                .state(std::sync::Arc::new(StateStore::in_memory()))
                .nfs(Box::new(MemoryExports::new()))
                .build();
            let storage = match storage {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the agent's storage");
                    return;
                }
            };
            let (started_tx, started_rx) = oneshot::channel();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            // The agents are not services of this process's supervisor: they tell it nothing.
            let mut ctl = csg_agent::Control::new(shutdown, Notifier::none(), host);
            ctl.set_log = Box::new(|_| Err("the simulator's log filter is RUST_LOG".into()));
            ctl.started = Some(started_tx);
            // Thousands of sessions in one process: let the MQTT client's event buffer grow on
            // demand instead of reserving room for 100 events (~14 KB) in each.
            ctl.queues = Some(csg_transport::Queues {
                events: 0,
                ..csg_agent::session::default_queues()
            });
            let span = tracing::info_span!("agent", id = %instance);
            let run = tokio::spawn(csg_agent::run(cfg, storage, ctl).instrument(span));
            if let Ok(csg_agent::Started { mut link }) = started_rx.await {
                let _ = links_tx.send(link.clone());
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    link.wait_for(LinkState::is_ready),
                )
                .await;
            }
            drop(permit);
            let _ = run.await;
        });
    }
    drop(links_tx);

    let until = (cli.duration_s > 0).then(|| Instant::now() + Duration::from_secs(cli.duration_s));
    let report_every = (cli.report_ms > 0).then(|| Duration::from_millis(cli.report_ms));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut links: Vec<watch::Receiver<LinkState>> = Vec::with_capacity(count);
    let mut ramp_done = false;
    let mut last_report = Instant::now();
    let reason = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = tick.tick() => {}
        }
        while let Ok(l) = links_rx.try_recv() {
            links.push(l);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break "duration";
        }
        let due = report_every.is_some_and(|every| last_report.elapsed() >= every);
        if ramp_done && !due {
            continue;
        }
        let online = links.iter().filter(|l| l.borrow().is_ready()).count();
        if !ramp_done && online == count {
            ramp_done = true;
            let rss = proc_status_kb("VmRSS:");
            emit(json!({
                "event": "ramp", "agents": count, "online": online,
                "elapsed_ms": t0.elapsed().as_millis() as u64,
                "rss_kb": rss, "base_rss_kb": base_rss,
                "bytes_per_agent": (rss * 1024) / count as u64,
                "bytes_per_agent_above_base": (rss.saturating_sub(base_rss) * 1024) / count as u64,
                "open_files": open_files(),
            }));
        }
        if due {
            last_report = Instant::now();
            emit(json!({
                "event": "progress", "t_ms": t0.elapsed().as_millis() as u64,
                "agents": count, "started": links.len(), "online": online,
                "rss_kb": proc_status_kb("VmRSS:"), "open_files": open_files(),
                "threads": proc_status_kb("Threads:"),
            }));
        }
    };
    tracing::warn!(reason, "stopping every simulated agent");
    stop_tx.send_replace(true);
    let stopping = Instant::now();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while agents.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    emit(json!({
        "event": "stopped", "reason": reason, "agents": count,
        "all_stopped": drained,
        "stop_ms": stopping.elapsed().as_millis() as u64,
    }));
    if !drained {
        // Scripts must notice: some agents did not announce offline in time.
        bail!("some agents did not stop within 30 s");
    }
    Ok(())
}
