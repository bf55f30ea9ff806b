//! A private broker per test, on a free loopback port, with its own config and log.
//!
//! Mosquitto by default; `CSG_TEST_BROKER=aedes` runs the same tests against another broker
//! (see [`BrokerKind`]), so the contract is checked on more than one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bins;
use crate::process::{read_lossy, ChildGuard};

/// Which broker the tests run against, from `CSG_TEST_BROKER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// Mosquitto 2 (Debian's package): the default.
    Mosquitto,
    /// aedes (npm), run by `tests/brokers/aedes/server.js`: MQTT 3.1.1 only.
    Aedes,
}

impl BrokerKind {
    /// The kind named by `CSG_TEST_BROKER` (unset or empty: Mosquitto). An unknown name fails
    /// the test rather than quietly testing Mosquitto again.
    pub fn from_env() -> BrokerKind {
        match std::env::var("CSG_TEST_BROKER").as_deref() {
            Err(_) | Ok("") | Ok("mosquitto") => BrokerKind::Mosquitto,
            Ok("aedes") => BrokerKind::Aedes,
            Ok(other) => panic!("CSG_TEST_BROKER={other:?}: not one of mosquitto, aedes"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Aedes => "aedes",
        }
    }

    /// Whether the broker accepts an MQTT 5 CONNECT.
    pub fn speaks_mqtt5(self) -> bool {
        match self {
            BrokerKind::Mosquitto => true,
            BrokerKind::Aedes => false,
        }
    }
}

/// Refuses a run whose MQTT version (`CSG_TEST_MQTT`) the broker cannot speak: every test
/// would fail at CONNECT, far from the cause.
fn check_protocol(kind: BrokerKind) {
    let mqtt5 = std::env::var("CSG_TEST_MQTT").is_ok_and(|v| v == "5");
    assert!(
        !mqtt5 || kind.speaks_mqtt5(),
        "CSG_TEST_MQTT=5 but CSG_TEST_BROKER={} speaks MQTT 3.1.1 only",
        kind.name()
    );
}

/// A running broker. Dropping it kills it.
pub struct Broker {
    // Declared before `dir`: the child's log lives there and is printed when a failing
    // test drops the broker, so the directory must outlive it.
    child: ChildGuard,
    dir: tempfile::TempDir,
    kind: BrokerKind,
    port: u16,
    /// Bumped on every start so each incarnation has its own log file.
    generation: u32,
    /// Makes Mosquitto's config file for a port: [`config`] unless the test gave its own.
    /// Other kinds take their few settings on the command line.
    make_config: MakeConfig,
}

/// Builds a Mosquitto config for a port.
pub type MakeConfig = Arc<dyn Fn(u16) -> String + Send + Sync>;

/// How a start attempt failed.
pub enum StartError {
    /// Someone else holds the port (another test picked the same free port).
    PortTaken(String),
    Other(String),
}

impl Broker {
    /// Starts a broker of the kind `CSG_TEST_BROKER` names on a free port chosen by the OS.
    pub fn start() -> Broker {
        Self::start_env(BrokerKind::from_env(), Arc::new(config))
    }

    /// Starts a Mosquitto on a free port with a config of the test's own making (e.g. a TLS
    /// listener, a password file), given the port. [`config`] is a good base.
    ///
    /// Such a test depends on Mosquitto's own settings: under another `CSG_TEST_BROKER` it
    /// fails here, saying so, rather than passing without having tested anything.
    pub fn start_with(make: impl Fn(u16) -> String + Send + Sync + 'static) -> Broker {
        let kind = BrokerKind::from_env();
        assert!(
            kind == BrokerKind::Mosquitto,
            "this test configures Mosquitto itself (TLS, passwords, listeners) and cannot run \
             on CSG_TEST_BROKER={}; the interop run leaves it out",
            kind.name()
        );
        Self::start_env(kind, Arc::new(make))
    }

    /// Starts a broker of `kind` whatever `CSG_TEST_BROKER` and `CSG_TEST_MQTT` say, e.g. to
    /// check the harness's own support for a kind in every run with clients of its choosing.
    pub fn start_of(kind: BrokerKind) -> Broker {
        Self::start_kind(kind, Arc::new(config))
    }

    fn start_env(kind: BrokerKind, make: MakeConfig) -> Broker {
        check_protocol(kind);
        Self::start_kind(kind, make)
    }

    fn start_kind(kind: BrokerKind, make: MakeConfig) -> Broker {
        // Choosing a free port and then binding it is racy when tests run in parallel: retry
        // with a fresh port when another test won the race.
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            match Self::try_start(kind, port, tempfile::tempdir().expect("temp dir"), 1, &make) {
                Ok(b) => return b,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "{} could not get a free port in 10 tries; last log:\n{last}",
            kind.name()
        );
    }

    /// Starts a broker on `port`, e.g. where an agent is already trying to connect. Retries
    /// for a while if the port is still held (a broker that was just killed).
    pub fn start_on(port: u16) -> Broker {
        let kind = BrokerKind::from_env();
        check_protocol(kind);
        let make: MakeConfig = Arc::new(config);
        let end = Instant::now() + crate::TIMEOUT;
        loop {
            match Self::try_start(kind, port, tempfile::tempdir().expect("temp dir"), 1, &make) {
                Ok(b) => return b,
                Err(StartError::PortTaken(log)) if Instant::now() < end => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartError::PortTaken(log)) => {
                    panic!("port {port} stayed taken; {} log:\n{log}", kind.name())
                }
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
    }

    /// Kills this broker (SIGKILL: no goodbye to its clients, no retained state kept, since
    /// persistence is off) and starts a fresh one on the same port. The log of the old one
    /// stays in the same directory.
    pub fn restart(&mut self) {
        self.kill();
        let end = Instant::now() + crate::TIMEOUT;
        loop {
            let generation = self.generation + 1;
            match spawn(
                self.kind,
                self.port,
                self.dir.path(),
                generation,
                &self.make_config,
            ) {
                Ok(child) => {
                    self.child = child;
                    self.generation = generation;
                    return;
                }
                Err(StartError::PortTaken(_)) if Instant::now() < end => {
                    self.generation = generation;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartError::PortTaken(log)) => {
                    panic!("port {} stayed taken after restart:\n{log}", self.port)
                }
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
    }

    fn try_start(
        kind: BrokerKind,
        port: u16,
        dir: tempfile::TempDir,
        generation: u32,
        make: &MakeConfig,
    ) -> Result<Broker, StartError> {
        let child = spawn(kind, port, dir.path(), generation, make)?;
        Ok(Broker {
            kind,
            port,
            dir,
            child,
            generation,
            make_config: make.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The URL for a broker whose listener speaks TLS.
    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log of every incarnation of this broker, oldest first.
    pub fn log(&self) -> String {
        (1..=self.generation)
            .map(|g| read_lossy(&self.log_path(g)))
            .collect::<Vec<_>>()
            .join("")
    }

    /// The log of the current incarnation only.
    pub fn current_log(&self) -> String {
        read_lossy(&self.log_path(self.generation))
    }

    fn log_path(&self, generation: u32) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{generation}.stderr", self.kind.name()))
    }

    /// How many times a client with this id completed CONNECT, across every incarnation.
    pub fn connects_of(&self, client_id: &str) -> usize {
        count_connects(&self.log(), client_id)
    }

    /// The `(p2, c1, k60)` part of the latest CONNECT of `client_id`: protocol, clean session
    /// and keep-alive as the broker saw them.
    pub fn connect_flags_of(&self, client_id: &str) -> Option<String> {
        let needle = format!(" as {client_id} (");
        self.log()
            .lines()
            .rfind(|l| l.contains("New client connected") && l.contains(&needle))
            .and_then(|l| l.split(&needle).nth(1))
            .map(|rest| rest.trim_end_matches('.').trim_end_matches(')').to_string())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The broker's process id, e.g. to freeze it with SIGSTOP (a peer that is there but
    /// answers nothing, as a hung broker or a black-holed link looks).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL. Clients see their connection reset.
    pub fn kill(&mut self) {
        self.child.kill9();
    }
}

/// Starts a broker of `kind` on `port`, its files in `dir` named `{kind}-{generation}.*`
/// (Mosquitto: with the config `make(port)`), and returns once it reports running.
pub fn spawn(
    kind: BrokerKind,
    port: u16,
    dir: &Path,
    generation: u32,
    make: &MakeConfig,
) -> Result<ChildGuard, StartError> {
    let name = format!("{}-{generation}", kind.name());
    let cmd = match kind {
        BrokerKind::Mosquitto => {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, make(port))
                .map_err(|e| StartError::Other(format!("cannot write {}: {e}", conf.display())))?;
            let mut cmd = Command::new(bins::mosquitto());
            cmd.arg("-c").arg(&conf);
            cmd
        }
        BrokerKind::Aedes => {
            let mut cmd = Command::new(node());
            cmd.arg(aedes_server()?)
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"]);
            cmd
        }
    };
    let mut child = ChildGuard::spawn(&name, cmd, dir)
        .map_err(|e| StartError::Other(format!("cannot start {}: {e}", kind.name())))?;
    // " running" is logged once every listener is open (by Mosquitto, and by the aedes
    // server in the same words); a TCP probe would work too but would add a connection to
    // the log of every test.
    let end = Instant::now() + crate::TIMEOUT;
    loop {
        let log = child.stderr();
        if log.contains(" running") {
            return Ok(child);
        }
        if !child.is_running() {
            child.set_dump_on_panic(false);
            return Err(if log.contains("Address already in use") {
                StartError::PortTaken(log)
            } else {
                StartError::Other(format!(
                    "{} exited at start ({:?}):\n{}",
                    kind.name(),
                    child.try_status(),
                    child.log()
                ))
            });
        }
        if Instant::now() >= end {
            return Err(StartError::Other(format!(
                "{} did not report running within {:?}:\n{}",
                kind.name(),
                crate::TIMEOUT,
                child.log()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Node.js: `NODE_BIN`, else `node` from PATH.
fn node() -> PathBuf {
    std::env::var_os("NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// The aedes server script, once its packages are installed.
fn aedes_server() -> Result<PathBuf, StartError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("brokers/aedes");
    if !dir.join("node_modules/aedes/package.json").is_file() {
        return Err(StartError::Other(format!(
            "aedes is not installed in {}: run scripts/install-deps.sh (npm ci there)",
            dir.display()
        )));
    }
    Ok(dir.join("server.js"))
}

/// Counts "New client connected from … as ID (" lines for exactly this client id.
pub fn count_connects(log: &str, client_id: &str) -> usize {
    let needle = format!(" as {client_id} (");
    log.lines()
        .filter(|l| l.contains("New client connected") && l.contains(&needle))
        .count()
}

/// The Mosquitto config every test uses: loopback only, anonymous, Nagle off (without it every
/// round trip costs ~44 ms), nothing kept across restarts (a restarted broker must really be
/// empty, as a crashed one would be), and everything logged so a failure can be explained.
pub fn config(port: u16) -> String {
    format!(
        "{}\
         log_type all\n\
         log_dest stderr\n\
         log_timestamp true\n\
         log_timestamp_format %H:%M:%S\n\
         connection_messages true\n\
         max_queued_messages 100000\n",
        base_config(port)
    )
}

/// What every private broker has, the tests' and the scripts' (see `csg-bed broker`):
/// loopback only, anonymous, Nagle off (without it every round trip costs ~44 ms), and nothing
/// kept across restarts.
pub fn base_config(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         set_tcp_nodelay true\n\
         persistence false\n"
    )
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// `n` distinct loopback ports nobody listens on right now: all held at once while they are
/// chosen, so none repeats (the caller binds them a moment later).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connects_of_one_client_only() {
        let log = "\
06:13:43: New client connected from 127.0.0.1:1 as G@@@gw-1 (p2, c1, k5).
06:13:43: New client connected from 127.0.0.1:2 as G@@@gw-10 (p2, c1, k5).
06:13:44: New client connected from 127.0.0.1:3 as G@@@gw-1 (p2, c1, k5).
";
        assert_eq!(count_connects(log, "G@@@gw-1"), 2);
        assert_eq!(count_connects(log, "G@@@gw-10"), 1);
        assert_eq!(count_connects(log, "G@@@gw"), 0);
    }

    #[test]
    fn broker_starts_logs_and_restarts_on_the_same_port() {
        let mut b = Broker::start();
        assert!(b.is_running());
        let port = b.port();
        assert!(b.log().contains(&format!("port {port}")), "{}", b.log());
        b.restart();
        assert_eq!(b.port(), port);
        assert!(b.is_running());
        assert_eq!(b.log().matches(" running").count(), 2, "{}", b.log());
    }

    /// The aedes server logs what the tests read from a broker log, in Mosquitto's shape: if
    /// it stopped doing so, the interop run would fail far from the cause. Runs in the main
    /// suite too, so a change to the script is caught there. The clients are Mosquitto's
    /// command-line ones speaking MQTT 3.1.1 (aedes speaks nothing newer), whatever protocol
    /// the rest of the run uses.
    #[test]
    fn the_aedes_server_logs_what_the_tests_read() {
        let b = Broker::start_of(BrokerKind::Aedes);
        assert_eq!(b.kind(), BrokerKind::Aedes);
        let port = b.port().to_string();
        let client = |name: &str, args: &[&str]| {
            let mut cmd = Command::new(name);
            cmd.args(["-p", &port, "-V", "mqttv311", "-q", "1"])
                .args(args);
            crate::process::run(cmd, crate::TIMEOUT)
        };
        let publish = client(
            "mosquitto_pub",
            &[
                "-i",
                "harness-pub",
                "-t",
                "harness/kept",
                "-m",
                "x",
                "-r",
                "--will-topic",
                "harness/will",
                "--will-payload",
                "gone",
                "--will-retain",
                "--will-qos",
                "1",
            ],
        );
        publish.assert_code(0);
        let sub = client(
            "mosquitto_sub",
            &[
                "-i",
                "harness-sub",
                "-t",
                "harness/#",
                "-C",
                "1",
                "-W",
                "10",
                "-v",
            ],
        );
        sub.assert_code(0);
        assert_eq!(sub.stdout.trim(), "harness/kept x", "the retained message");
        assert!(
            crate::wait_until(crate::TIMEOUT, || b
                .log()
                .contains("Client harness-sub disconnected.")),
            "{}",
            b.log()
        );
        let log = b.log();
        assert_eq!(b.connects_of("harness-pub"), 1, "{log}");
        assert_eq!(
            b.connect_flags_of("harness-pub").as_deref(),
            Some("p2, c1, k60"),
            "{log}"
        );
        for line in [
            "Will message specified (4 bytes) (r1, q1).",
            "\tharness/will\n",
            "Received PUBLISH from harness-pub (d0, q1, r1, m",
            "'harness/kept', ... (1 bytes))",
            "Received DISCONNECT from harness-pub\n",
            "Client harness-pub disconnected.",
            "No will message specified.",
            "Received SUBSCRIBE from harness-sub\n",
            "\tharness/# (QoS 1)\n",
            "Sending SUBACK to harness-sub\n",
        ] {
            assert!(log.contains(line), "no {line:?} in the log:\n{log}");
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut p = free_ports(5).unwrap();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn parallel_brokers_get_distinct_ports() {
        let a = Broker::start();
        let b = Broker::start();
        assert_ne!(a.port(), b.port());
    }
}
