//! Telling a service manager how the agent is doing: systemd's notification protocol
//! (sd_notify: READY=1, STATUS=, STOPPING=1, RELOADING=1, WATCHDOG=1 lines as datagrams to
//! `$NOTIFY_SOCKET`), or nothing at all.
//!
//! The library never reads the environment: `main.rs` reads systemd's variables once at start
//! and builds a [`Notifier`], which every run receives through `Control`. A program that is not
//! a service (the fleet simulator, tests) passes [`Notifier::none`], so its runs cannot talk to
//! whatever supervises that program.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

/// Receives notification lines (`READY=1`, `STATUS=…`). systemd's socket is one; a test can
/// record them.
pub trait NotifySink: Send + Sync {
    fn send(&self, msg: &str);
}

/// How a run reports its state to the service manager. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    sink: Option<Arc<dyn NotifySink>>,
    watchdog: Option<Duration>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("active", &self.sink.is_some())
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

/// systemd's variables as the process found them, read by the binary at start.
#[derive(Debug, Clone, Default)]
pub struct SystemdEnv {
    /// `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.
    pub notify_socket: Option<OsString>,
    /// `WATCHDOG_USEC`: `WatchdogSec=` in microseconds.
    pub watchdog_usec: Option<OsString>,
    /// `WATCHDOG_PID`: the process the watchdog is meant for.
    pub watchdog_pid: Option<OsString>,
}

impl SystemdEnv {
    /// Reads the variables through `var` (`std::env::var_os` in a binary).
    pub fn read(var: impl Fn(&str) -> Option<OsString>) -> Self {
        Self {
            notify_socket: var("NOTIFY_SOCKET"),
            watchdog_usec: var("WATCHDOG_USEC"),
            watchdog_pid: var("WATCHDOG_PID"),
        }
    }
}

impl Notifier {
    /// Tells nobody anything.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends every line to `sink`, and WATCHDOG=1 every `watchdog` if given.
    pub fn to_sink(sink: Arc<dyn NotifySink>, watchdog: Option<Duration>) -> Self {
        Self {
            sink: Some(sink),
            watchdog,
        }
    }

    /// systemd, as described by `env` for the process `pid`. Without `NOTIFY_SOCKET` (not
    /// under systemd, or a unit that is not `Type=notify`), or with one that cannot be used,
    /// this is [`Notifier::none`], so the agent runs the same everywhere.
    pub fn systemd(env: &SystemdEnv, pid: u32) -> Self {
        let Some(sink) = env.notify_socket.as_deref().and_then(SdNotify::open) else {
            return Self::none();
        };
        Self::to_sink(Arc::new(sink), watchdog_interval(env, pid))
    }

    /// Whether anything listens: callers skip work whose only use is a notification.
    pub fn is_active(&self) -> bool {
        self.sink.is_some()
    }

    fn send(&self, msg: &str) {
        if let Some(sink) = &self.sink {
            sink.send(msg);
        }
    }

    /// The agent is running (config valid, session started; not necessarily connected: an
    /// unreachable broker must not hold up boot).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// One line for `systemctl status`: what the agent is doing now.
    pub fn status(&self, line: &str) {
        if self.sink.is_none() {
            return;
        }
        // A newline would start another assignment in the datagram.
        let line: String = line
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// How often to send WATCHDOG=1 (half of `WatchdogSec=`), or `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.sink.as_ref().and(self.watchdog)
    }

    /// Sends WATCHDOG=1 forever. It runs on the same single-threaded runtime as the session
    /// and the dispatcher, so if anything wedges that thread the pings stop and systemd
    /// restarts us.
    pub async fn watchdog_loop(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            self.send("WATCHDOG=1");
        }
    }
}

/// Half of `WatchdogSec=`, when the watchdog is meant for `pid`.
fn watchdog_interval(env: &SystemdEnv, pid: u32) -> Option<Duration> {
    let usec: u64 = env.watchdog_usec.as_deref()?.to_str()?.parse().ok()?;
    // WATCHDOG_PID, when set, must be us: the variable may be inherited by a child.
    if let Some(for_pid) = &env.watchdog_pid {
        if for_pid.to_str()?.parse::<u32>().ok()? != pid {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// systemd's notification socket.
struct SdNotify {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl SdNotify {
    fn open(path: &std::ffi::OsStr) -> Option<Self> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
        // '@' names a socket in the abstract namespace.
        let addr = if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name).ok()?
        } else {
            SocketAddr::from_pathname(std::path::Path::new(path)).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Self { socket, addr })
    }
}

impl NotifySink for SdNotify {
    fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            debug!(error = %e, "sd_notify failed");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps every line it is sent, in order.
    #[derive(Default)]
    pub(crate) struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        pub(crate) fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl NotifySink for Recorder {
        fn send(&self, msg: &str) {
            self.0.lock().unwrap().push(msg.to_string());
        }
    }

    fn env(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> SystemdEnv {
        SystemdEnv {
            notify_socket: socket.map(Into::into),
            watchdog_usec: usec.map(Into::into),
            watchdog_pid: pid.map(Into::into),
        }
    }

    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::systemd(
            &env(Some(path.to_str().unwrap()), None, None),
            std::process::id(),
        );
        assert!(n.is_active());
        n.ready();
        n.status("broker unreachable,\nretrying in 8 s");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=broker unreachable, retrying in 8 s");
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let name = format!("csg-agent-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::systemd(&env(Some(&format!("@{name}")), None, None), 1);
        n.stopping();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_active() {
        let n = Notifier::systemd(&env(None, Some("10000000"), None), 1);
        assert!(!n.is_active());
        assert_eq!(n.watchdog_interval(), None);
        // Sending to nobody is harmless.
        n.ready();
        n.status("x");
        assert!(!Notifier::none().is_active());
    }

    #[test]
    fn the_watchdog_is_half_of_watchdog_sec_and_only_for_our_pid() {
        let e = env(Some("/nonexistent"), Some("10000000"), None);
        assert_eq!(watchdog_interval(&e, 7), Some(Duration::from_secs(5)));
        let e = env(Some("/x"), Some("10000000"), Some("7"));
        assert_eq!(watchdog_interval(&e, 7), Some(Duration::from_secs(5)));
        let e = env(Some("/x"), Some("10000000"), Some("8"));
        assert_eq!(watchdog_interval(&e, 7), None, "meant for another process");
        assert_eq!(watchdog_interval(&env(None, Some("0"), None), 7), None);
        assert_eq!(watchdog_interval(&env(None, Some("x"), None), 7), None);
        assert_eq!(watchdog_interval(&env(None, None, None), 7), None);
    }

    #[test]
    fn the_environment_is_read_through_the_callers_function() {
        let e = SystemdEnv::read(|k| match k {
            "NOTIFY_SOCKET" => Some("/run/systemd/notify".into()),
            "WATCHDOG_USEC" => Some("4000000".into()),
            _ => None,
        });
        assert_eq!(
            e.notify_socket.as_deref(),
            Some("/run/systemd/notify".as_ref())
        );
        assert_eq!(watchdog_interval(&e, 1), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_recording_sink_sees_every_line_in_order() {
        let rec = Arc::new(Recorder::default());
        let n = Notifier::to_sink(rec.clone(), None);
        n.status("connecting");
        n.ready();
        n.reloading();
        n.stopping();
        assert_eq!(
            rec.lines(),
            ["STATUS=connecting", "READY=1", "RELOADING=1", "STOPPING=1"]
        );
    }

    #[tokio::test]
    async fn the_watchdog_loop_pings_every_interval() {
        let rec = Arc::new(Recorder::default());
        let n = Notifier::to_sink(rec.clone(), Some(Duration::from_millis(20)));
        let every = n.watchdog_interval().unwrap();
        let task = tokio::spawn(n.watchdog_loop(every));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rec.lines().len() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let lines = rec.lines();
        assert!(lines.len() >= 3, "{lines:?}");
        assert!(lines.iter().all(|l| l == "WATCHDOG=1"), "{lines:?}");
    }
}
