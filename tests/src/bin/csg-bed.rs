//! The harness's building blocks for the scripts (bench, soak, fleet bench), so that they start
//! brokers, pick ports and read durations the way the end-to-end tests do.
//!
//! ```text
//! csg-bed free-ports [N]             N (default 1) distinct free loopback ports, on one line
//! csg-bed duration D...              the seconds in each duration (90, 30m, 1h30m, 1d ...)
//! csg-bed broker start DIR [--kind K] [--port P] [--line 'KEY VALUE']...
//!                                    a private broker (loopback, anonymous, Nagle off, no
//!                                    persistence) on a free port, or P; its config, log and
//!                                    pid in DIR; prints the port once it runs, and leaves it
//!                                    running. K: mosquitto (default, or CSG_TEST_BROKER) or
//!                                    aedes; --line adds a line to Mosquitto's config
//! csg-bed broker stop DIR            SIGTERM, SIGKILL after 10 s, to the broker started in DIR
//! ```
//!
//! Exit status: 0 done, 1 failed, 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use csg_e2e::broker::{self, BrokerKind, MakeConfig, StartError};
use csg_e2e::duration::parse_secs;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const USAGE: &str = "usage: csg-bed free-ports [N]
       csg-bed duration D...
       csg-bed broker start DIR [--kind mosquitto|aedes] [--port P] [--line 'KEY VALUE']...
       csg-bed broker stop DIR";

/// A command line that does not parse: exit 2 with the usage.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{USAGE}", self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Usage>() => {
            eprintln!("csg-bed: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("csg-bed: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["free-ports"] => free_ports("1"),
        ["free-ports", n] => free_ports(n),
        ["duration", ds @ ..] if !ds.is_empty() => {
            for d in ds {
                let s = parse_secs(d).ok_or_else(|| usage(format!("not a duration: {d}")))?;
                println!("{s}");
            }
            Ok(())
        }
        ["broker", "start", dir, opts @ ..] => broker_start(Path::new(dir), opts),
        ["broker", "stop", dir] => broker_stop(Path::new(dir)),
        _ => Err(usage("unknown command")),
    }
}

fn free_ports(n: &str) -> Result<()> {
    let n: usize = n
        .parse()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| usage(format!("not a number of ports (1 to 1000): {n}")))?;
    let ports = broker::free_ports(n).context("cannot bind a loopback port")?;
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    println!("{}", ports.join(" "));
    Ok(())
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("mosquitto.pid")
}

fn broker_start(dir: &Path, opts: &[&str]) -> Result<()> {
    let mut port: Option<u16> = None;
    let mut kind: Option<BrokerKind> = None;
    let mut lines = String::new();
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| usage(format!("{opt} needs a value")))?;
        match *opt {
            "--port" => {
                port = Some(
                    value
                        .parse()
                        .map_err(|_| usage(format!("not a port: {value}")))?,
                );
            }
            "--kind" => {
                kind = Some(match *value {
                    "mosquitto" => BrokerKind::Mosquitto,
                    "aedes" => BrokerKind::Aedes,
                    _ => return Err(usage(format!("not a broker kind: {value}"))),
                });
            }
            "--line" => {
                if value.contains('\n') {
                    return Err(usage("a --line is one line"));
                }
                lines.push_str(value);
                lines.push('\n');
            }
            _ => return Err(usage(format!("unknown option {opt}"))),
        }
    }
    let kind = kind.unwrap_or_else(BrokerKind::from_env);
    if kind != BrokerKind::Mosquitto && !lines.is_empty() {
        return Err(usage(format!(
            "--line is a Mosquitto config line; {} takes none",
            kind.name()
        )));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // mosquitto logs to stderr, where the readiness check looks for its "running" line. That
    // line is of type "information", which is logged by default but not once the caller
    // chooses log types of its own.
    if lines.lines().any(|l| l.starts_with("log_type")) {
        lines.push_str("log_type information\n");
    }
    let make: MakeConfig =
        Arc::new(move |p| format!("{}log_dest stderr\n{lines}", broker::base_config(p)));
    // A free port can be taken by someone else before mosquitto binds it: try another one,
    // unless the caller asked for this one.
    let tries = if port.is_some() { 1 } else { 10 };
    let mut last = String::new();
    for _ in 0..tries {
        let p = match port {
            Some(p) => p,
            None => broker::free_port(),
        };
        match broker::spawn(kind, p, dir, 1, &make) {
            Ok(child) => {
                let pid = child.detach();
                std::fs::write(pid_file(dir), format!("{pid}\n"))
                    .with_context(|| format!("cannot write {}", pid_file(dir).display()))?;
                println!("{p}");
                return Ok(());
            }
            Err(StartError::PortTaken(log)) => last = log,
            Err(StartError::Other(msg)) => bail!("{msg}"),
        }
    }
    bail!(
        "{} could not bind a port in {tries} tries:\n{last}",
        kind.name()
    )
}

/// Whether `pid` runs: a zombie does not. The broker outlived the `csg-bed` that started it,
/// so its exit is reaped by whoever adopted it, which may take a while (or never happen in a
/// container whose init does not reap).
fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn broker_stop(dir: &Path) -> Result<()> {
    let file = pid_file(dir);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("no broker started in {}", dir.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow!("{}: not a pid: {text:?}", file.display()))?;
    let pid = Pid::from_raw(pid);
    // Already gone (ESRCH) is stopped too.
    if kill(pid, Signal::SIGTERM).is_ok() {
        let end = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}
