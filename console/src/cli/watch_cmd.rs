//! `csgctl watch`: heartbeats and presence, as a live table, plain lines or JSON lines.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use csg_console::{Console, StatusEvent, WatchEvent, WatchFilter};
use csg_protocol::{Heartbeat, InstanceId, PresenceState};
use serde_json::json;

use super::table::Table;
use super::{instances, read_arg_file, Exit, Usage, WatchArgs};

pub fn filter(args: &WatchArgs) -> anyhow::Result<WatchFilter> {
    let mut list = args.instances.clone();
    if let Some(path) = &args.instances_file {
        let text = read_arg_file(path)?;
        list.extend(instances::parse_file(&path.display().to_string(), &text).map_err(Usage)?);
    }
    let mut seen = std::collections::HashSet::new();
    list.retain(|i| seen.insert(i.clone()));
    Ok(if list.is_empty() {
        WatchFilter::All
    } else {
        WatchFilter::Instances(list)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Plain,
    Table,
}

pub async fn run(console: &Console, args: &WatchArgs, filter: WatchFilter) -> anyhow::Result<Exit> {
    let mut watch = console.watch(filter).await?;
    if let Some(n) = args.until_online {
        return until_online(console, &mut watch, n, args.timeout).await;
    }
    let mode = if args.json {
        Mode::Json
    } else if std::io::stdout().is_terminal() {
        Mode::Table
    } else {
        Mode::Plain
    };
    if args.count == Some(0) {
        return Ok(Exit::Ok);
    }
    let mut fleet = Fleet::default();
    let mut seen = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut link = LinkWatch::default();
    loop {
        tokio::select! {
            event = watch.next() => {
                let Some(event) = event else {
                    eprintln!("error: the broker connection closed");
                    return Ok(Exit::Failure);
                };
                seen += 1;
                let done = args.count.is_some_and(|n| seen >= n);
                let line = match mode {
                    Mode::Json => Some(json_line(&event).to_string()),
                    Mode::Plain => Some(plain_line(&event)),
                    Mode::Table => {
                        fleet.update(event);
                        if done {
                            redraw(console, &fleet);
                        }
                        None
                    }
                };
                // A closed pipe (`| head`) ends the watch quietly.
                if let Some(line) = line {
                    if writeln!(std::io::stdout(), "{line}").is_err() {
                        return Ok(Exit::Ok);
                    }
                }
                if done {
                    break;
                }
            }
            _ = tick.tick() => {
                if mode == Mode::Table {
                    // The table's title line says when the connection is down.
                    redraw(console, &fleet);
                } else {
                    link.check(console);
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    Ok(Exit::Ok)
}

/// `--until-online N`: counts instances whose latest presence is online until there are N.
/// Only presence matters (a heartbeat alone does not say the command subscription is live).
async fn until_online(
    console: &Console,
    watch: &mut csg_console::Watch,
    want: usize,
    timeout: Option<Duration>,
) -> anyhow::Result<Exit> {
    let mut link = LinkWatch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut online = std::collections::HashSet::new();
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let report = |online: usize, reached: bool| {
        let line = json!({"online": online, "wanted": want, "reached": reached,
                          "elapsed_ms": start.elapsed().as_millis() as u64});
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    while online.len() < want {
        tokio::select! {
            event = watch.next() => {
                let Some(event) = event else {
                    eprintln!("error: the broker connection closed");
                    return Ok(Exit::Failure);
                };
                if let WatchEvent::Presence(p) = &event.event {
                    match p.state {
                        PresenceState::Online => online.insert(event.instance),
                        PresenceState::Offline => online.remove(&event.instance),
                    };
                }
            }
            _ = tick.tick() => link.check(console),
            _ = &mut deadline => {
                report(online.len(), false);
                link.check(console);
                if let Some(reason) = &link.lost {
                    // What was missed while our own connection was down says nothing about
                    // the gateways.
                    eprintln!(
                        "error: {} of {want} instances seen online when the timeout passed; the \
                         connection to the broker was lost ({reason}), so the others were not \
                         necessarily offline",
                        online.len()
                    );
                    return Ok(Exit::Failure);
                }
                eprintln!("error: {} of {want} instances online when the timeout passed", online.len());
                return Ok(Exit::NoReply);
            }
            _ = &mut ctrl_c => {
                report(online.len(), false);
                return Ok(Exit::Failure);
            }
        }
    }
    report(online.len(), true);
    Ok(Exit::Ok)
}

/// Notices the console's own broker connection dropping, and says so once per drop: events
/// missed meanwhile are the connection's doing, not the gateways'.
#[derive(Default)]
struct LinkWatch {
    down: bool,
    /// Why the connection was last lost, once it was.
    lost: Option<String>,
}

impl LinkWatch {
    fn check(&mut self, console: &Console) {
        let up = console.is_connected();
        if !up && !self.down {
            let why = console
                .last_connection_error()
                .unwrap_or_else(|| "the connection closed".into());
            eprintln!(
                "note: the connection to the broker was lost ({why}); reconnecting. Gateways \
                 were not necessarily offline meanwhile"
            );
            self.lost = Some(why);
        }
        self.down = !up;
    }
}

fn json_line(e: &StatusEvent) -> serde_json::Value {
    let body = match &e.event {
        WatchEvent::Heartbeat(h) => serde_json::to_value(h),
        WatchEvent::Presence(p) => serde_json::to_value(p),
    }
    .unwrap_or(serde_json::Value::Null);
    json!({"topic": e.topic, "event": body})
}

fn plain_line(e: &StatusEvent) -> String {
    match &e.event {
        WatchEvent::Heartbeat(h) => format!(
            "{} heartbeat seq={} cpu={:.1}% load1={:.2} mem={}/{} uptime={}",
            e.instance,
            h.seq,
            h.system.cpu_pct,
            h.system.load1,
            bytes(h.system.mem_used),
            bytes(h.system.mem_total),
            uptime(h.uptime_s)
        ),
        WatchEvent::Presence(p) => {
            let mut s = format!("{} presence {}", e.instance, state(p.state));
            if let Some(r) = &p.reason {
                s.push_str(&format!(" reason={r}"));
            }
            if e.retained {
                s.push_str(" (retained)");
            }
            s
        }
    }
}

fn state(s: PresenceState) -> &'static str {
    match s {
        PresenceState::Online => "online",
        PresenceState::Offline => "offline",
    }
}

/// What the live table knows about each instance.
#[derive(Debug, Default)]
struct Fleet {
    rows: BTreeMap<InstanceId, Row>,
}

#[derive(Debug, Default)]
struct Row {
    presence: Option<PresenceState>,
    heartbeat: Option<(Instant, Heartbeat)>,
}

impl Fleet {
    fn update(&mut self, e: StatusEvent) {
        let row = self.rows.entry(e.instance).or_default();
        match e.event {
            WatchEvent::Heartbeat(h) => row.heartbeat = Some((e.received, h)),
            WatchEvent::Presence(p) => row.presence = Some(p.state),
        }
    }

    fn online(&self) -> usize {
        self.rows
            .values()
            .filter(|r| r.presence == Some(PresenceState::Online))
            .count()
    }

    fn render(&self, now: Instant) -> String {
        let mut t = Table::new(&[
            "INSTANCE", "PRESENCE", "LAST HB", "SEQ", "CPU%", "LOAD1", "MEM", "UPTIME",
        ])
        .align_right(2)
        .align_right(3)
        .align_right(4)
        .align_right(5);
        for (id, row) in &self.rows {
            let presence = row.presence.map_or("?", state).to_string();
            let cells = match &row.heartbeat {
                Some((at, h)) => [
                    age(now.saturating_duration_since(*at)),
                    h.seq.to_string(),
                    format!("{:.1}", h.system.cpu_pct),
                    format!("{:.2}", h.system.load1),
                    format!("{}/{}", bytes(h.system.mem_used), bytes(h.system.mem_total)),
                    uptime(h.uptime_s),
                ],
                None => std::array::from_fn(|_| "-".to_string()),
            };
            let mut r = vec![id.to_string(), presence];
            r.extend(cells);
            t.push(r);
        }
        t.render()
    }
}

fn redraw(console: &Console, fleet: &Fleet) {
    let mut screen = String::from("\x1b[H\x1b[2J");
    screen.push_str(&format!(
        "{} instances, {} online — {}",
        fleet.rows.len(),
        fleet.online(),
        console.options().broker
    ));
    if !console.is_connected() {
        let why = console.last_connection_error().unwrap_or_default();
        screen.push_str(&format!(" — broker connection down, reconnecting ({why})"));
    }
    screen.push_str("\n\n");
    screen.push_str(&fleet.render(Instant::now()));
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(screen.as_bytes());
    let _ = out.flush();
}

/// `0.8s`, `12s`, `3m05s`, `2h03m`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// `42s`, `5m07s`, `1h02m`, `3d04h`.
fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Binary units, one decimal: `512B`, `1.5K`, `7.8G`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::{Presence, SystemStats};

    fn heartbeat(instance: &str, seq: u64) -> Heartbeat {
        Heartbeat {
            v: 1,
            kind: "heartbeat".into(),
            instance_id: instance.into(),
            group_id: "GID_csg".into(),
            seq,
            ts_ms: 1,
            agent_version: "0.1.0".into(),
            uptime_s: 3720,
            interval_s: 30,
            system: SystemStats {
                cpu_pct: 3.25,
                load1: 0.1,
                mem_total: 8 * 1024 * 1024 * 1024,
                mem_used: 1536 * 1024 * 1024,
            },
            disks: vec![],
            services: Default::default(),
            storage: Default::default(),
            counters: Default::default(),
            dropped: Default::default(),
        }
    }

    fn event(instance: &str, event: WatchEvent, received: Instant) -> StatusEvent {
        StatusEvent {
            topic: format!("csg-status/{instance}"),
            instance: InstanceId::new(instance).unwrap(),
            event,
            retained: false,
            received,
        }
    }

    #[test]
    fn table_rendering() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.update(event(
            "gw-2",
            WatchEvent::Presence(Presence::new(
                "gw-2",
                PresenceState::Offline,
                "0.1",
                "shutdown",
                1,
            )),
            now,
        ));
        fleet.update(event(
            "gw-1",
            WatchEvent::Heartbeat(heartbeat("gw-1", 42)),
            now,
        ));
        fleet.update(event(
            "gw-1",
            WatchEvent::Presence(Presence::new(
                "gw-1",
                PresenceState::Online,
                "0.1",
                "connected",
                1,
            )),
            now,
        ));
        assert_eq!(fleet.online(), 1);
        assert_eq!(
            fleet.render(now + Duration::from_millis(1500)),
            "INSTANCE  PRESENCE  LAST HB  SEQ  CPU%  LOAD1  MEM        UPTIME\n\
             gw-1      online       1.5s   42   3.2   0.10  1.5G/8.0G  1h02m\n\
             gw-2      offline         -    -     -      -  -          -\n"
        );
    }

    #[test]
    fn plain_and_json_lines() {
        let now = Instant::now();
        let hb = event("gw-1", WatchEvent::Heartbeat(heartbeat("gw-1", 7)), now);
        assert_eq!(
            plain_line(&hb),
            "gw-1 heartbeat seq=7 cpu=3.2% load1=0.10 mem=1.5G/8.0G uptime=1h02m"
        );
        let j = json_line(&hb);
        assert_eq!(j["topic"], "csg-status/gw-1");
        assert_eq!(j["event"]["seq"], 7);
        assert_eq!(j["event"]["type"], "heartbeat");
        let mut p = event(
            "gw-1",
            WatchEvent::Presence(Presence::new(
                "gw-1",
                PresenceState::Online,
                "0.1",
                "connected",
                1,
            )),
            now,
        );
        p.retained = true;
        assert_eq!(
            plain_line(&p),
            "gw-1 presence online reason=connected (retained)"
        );
        assert_eq!(json_line(&p)["event"]["state"], "online");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(307), "5m07s");
        assert_eq!(uptime(90_000), "1d01h");
        assert_eq!(age(Duration::from_millis(800)), "0.8s");
        assert_eq!(age(Duration::from_secs(185)), "3m05s");
    }
}
