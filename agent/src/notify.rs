//! systemd's notification protocol (sd_notify): READY=1, WATCHDOG=1 and STATUS= lines, sent
//! as datagrams to `$NOTIFY_SOCKET`. Without that variable (not under systemd, or a unit that
//! is not `Type=notify`) every call is a no-op, so the agent runs the same everywhere.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::debug;

struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static N: OnceLock<Option<Notifier>> = OnceLock::new();
    N.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
        // '@' names a socket in the abstract namespace.
        let addr = if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, addr })
    })
    .as_ref()
}

fn send(msg: &str) {
    if let Some(n) = notifier() {
        if let Err(e) = n.socket.send_to_addr(msg.as_bytes(), &n.addr) {
            debug!(error = %e, "sd_notify failed");
        }
    }
}

/// The agent is running (config valid, session started; not necessarily connected: an
/// unreachable broker must not hold up boot).
pub fn ready() {
    send("READY=1");
}

/// One line for `systemctl status`: what the agent is doing now.
pub fn status(line: &str) {
    // A newline would start another assignment in the datagram.
    let line: String = line
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    send(&format!("STATUS={line}"));
}

pub fn stopping() {
    send("STOPPING=1");
}

pub fn reloading() {
    send("RELOADING=1");
}

/// How often to send WATCHDOG=1: half of `WatchdogSec=`, or `None` when no watchdog is set.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, must be us: the variable may be inherited by a child.
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends WATCHDOG=1 forever. It runs on the same single-threaded runtime as the session and
/// the dispatcher, so if anything wedges that thread the pings stop and systemd restarts us.
pub async fn watchdog_loop(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        send("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    // The protocol is exercised against a real socket in one test; NOTIFY_SOCKET is read once
    // per process, and this is the only test in the crate that sets it.
    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::ready();
        super::status("broker unreachable,\nretrying in 8 s");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=broker unreachable, retrying in 8 s");
    }
}
