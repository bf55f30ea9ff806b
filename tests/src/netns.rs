//! A real network link between the agent and the broker that a test can break.
//!
//! [`Netns`] makes a network namespace with a veth pair: the agent runs inside the namespace
//! (`ip netns exec NS csg-agent …`, see [`Netns::spawn_agent`]) and reaches the broker on the
//! host end of the veth, so everything it says to the broker crosses that link, while the
//! test's recorder and csgctl stay on loopback, as a console near the broker would.
//!
//! Faults are nftables rules on the link's *input* side at both ends (the host's input hook
//! for what the agent sends, the namespace's input hook for what it receives): dropped
//! packets vanish silently, as on a broken WAN, instead of failing the sender's `send()` with
//! `EPERM` as an output-hook drop would.
//! - [`Netns::partition`]: every packet dropped both ways (a black hole, not a reset);
//! - [`Netns::loss`]: `numgen random mod 100 < N` drops N % of the packets each way;
//! - [`Netns::heal`]: the rules go, the link is whole again.
//!
//! Latency: `tc qdisc … netem` is the usual tool, but this kernel has no netem ("Specified
//! qdisc kind is unknown", and no module to load; tbf and htb exist but only shape rate).
//! The closest real thing is [`DelayRelay`], a userspace TCP relay placed between the veth
//! link and Mosquitto that holds every chunk of bytes for the delay before forwarding it, in
//! order, per direction. Unlike netem it delays data, not TCP's own handshake and ACKs (the
//! relay terminates TCP), which is what an MQTT round trip feels either way.
//!
//! Names and addresses: every namespace gets a slot, a number held with an `flock` on
//! `/run/csg-e2e-netns/slot-N.lock` for the life of the guard (released by the kernel even if
//! the test process is killed), so tests in parallel processes under nextest never share a
//! veth name, an nftables table or a subnet. The namespace's name carries the test's pid and
//! a counter; the veth names, the nftables table and the /30 subnet `10.(200+x).y.4k` are
//! derived from the slot. Whatever a killed test left behind (its slot's veth pair and host
//! table, its namespace) is removed by the next test that makes a namespace.
//!
//! Dropping a [`Netns`] deletes the host's nftables table, the veth pair and the namespace
//! (its own nftables rules go with it), also when the test panicked. A failure to set any of
//! it up fails the test with the command's output: these tests need root, `ip` (iproute2) and
//! `nft` (nftables), which `scripts/install-deps.sh` installs; they are never skipped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::agent::{Agent, AgentConfig};
use crate::bed::Bed;
use crate::broker::{self, Broker};

/// Slots: 55 × 256 × 64 /30 subnets in 10.200.0.0–10.254.255.255.
const SLOTS: u64 = 55 * 256 * 64;

/// A network namespace joined to the host by a veth pair. See the module comment.
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    /// The nftables table (`inet`) holding the fault rules, on the host and in the namespace.
    table: String,
    /// What exists and must be removed on drop.
    made_ns: bool,
    made_link: bool,
    made_host_table: bool,
    /// Held for the life of the guard; dropped (unlocked) after everything else is gone.
    _slot: Flock<File>,
}

impl Netns {
    /// Creates the namespace, the veth pair with its /30 addresses, and empty fault tables.
    /// Panics with the failing command's output if anything cannot be made.
    pub fn create() -> Netns {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        sweep_dead_namespaces();
        let (slot, lock) = take_slot();
        let (x, y, k) = (slot / (256 * 64), (slot / 64) % 256, slot % 64);
        let base = Ipv4Addr::new(10, 200 + x as u8, y as u8, (4 * k) as u8);
        let host_ip = Ipv4Addr::from(u32::from(base) + 1);
        let ns_ip = Ipv4Addr::from(u32::from(base) + 2);
        let mut ns = Netns {
            name: format!("csg-e2e-{pid}-{counter}"),
            // Interface names are at most 15 bytes; the slot is below 0x100000.
            host_if: format!("csg{slot:05x}h"),
            ns_if: format!("csg{slot:05x}n"),
            host_ip,
            ns_ip,
            table: format!("csg_e2e_{slot}"),
            made_ns: false,
            made_link: false,
            made_host_table: false,
            _slot: lock,
        };
        // Leftovers of a killed test that held this slot (we hold its lock now, so they are
        // nobody's): its veth pair and its host table. Absent is the normal case.
        let _ = run(&ip(), &["link", "del", &ns.host_if], None);
        let _ = run(&nft(), &["delete", "table", "inet", &ns.table], None);
        let (name, host_if, ns_if) = (ns.name.clone(), ns.host_if.clone(), ns.ns_if.clone());
        // From here on a panic drops `ns`, which removes whatever was made so far.
        ns.must(&ip(), &["netns", "add", &name], None);
        ns.made_ns = true;
        ns.must(
            &ip(),
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
            ],
            None,
        );
        ns.made_link = true;
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        ns.must(&ip(), &["addr", "add", &host_cidr, "dev", &host_if], None);
        ns.must(&ip(), &["link", "set", &host_if, "up"], None);
        ns.must(
            &ip(),
            &["-n", &name, "addr", "add", &ns_cidr, "dev", &ns_if],
            None,
        );
        ns.must(&ip(), &["-n", &name, "link", "set", &ns_if, "up"], None);
        ns.must(&ip(), &["-n", &name, "link", "set", "lo", "up"], None);
        // The fault tables: a named counter (kept across rule changes, so `dropped` counts
        // every packet any fault dropped) and an input chain, empty until a fault is set.
        let table = ns.table.clone();
        let decl = format!(
            "add table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             \x20 counter drops {{ }}\n\
             \x20 chain input {{ type filter hook input priority -10; policy accept; }}\n\
             }}\n"
        );
        ns.must(&nft(), &["-f", "-"], Some(&decl));
        ns.made_host_table = true;
        ns.must_in_ns(&["nft", "-f", "-"], Some(&decl));
        // Both ends up: wait until the namespace can reach the host end (IPv4 needs no DAD,
        // but the veth's carrier comes up asynchronously).
        let probe = TcpListener::bind((host_ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind {host_ip} on {host_if}: {e}"));
        let port = probe.local_addr().unwrap().port().to_string();
        let reachable = crate::wait_until(crate::TIMEOUT, || {
            // bash's /dev/tcp: a TCP connect from inside the namespace, no extra tool needed.
            let script = format!("exec 3<>/dev/tcp/{host_ip}/{port}");
            run(
                &ip(),
                &["netns", "exec", &name, "bash", "-c", &script],
                None,
            )
            .is_ok()
        });
        assert!(
            reachable,
            "namespace {name} cannot reach {host_ip} over its veth within {:?}",
            crate::TIMEOUT
        );
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of the link: where the broker (or the relay) listens for the agent.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The agent's address, as the broker sees it.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// A broker config for [`Broker::start_with`]: the standard loopback listener (for the
    /// recorder and csgctl) plus one on the host end of the link, same port, for the agent.
    pub fn broker_config(&self) -> impl Fn(u16) -> String + Send + Sync + 'static {
        let host_ip = self.host_ip;
        move |port| format!("{}listener {port} {host_ip}\n", broker::config(port))
    }

    /// `csg-agent --config FILE` inside the namespace.
    pub fn spawn_agent(&self, config: &AgentConfig) -> Agent {
        let ip = ip();
        let ip = ip.to_str().expect("ip's path is UTF-8");
        Agent::spawn_wrapped(config, &[ip, "netns", "exec", &self.name])
    }

    /// A [`Bed`] whose agent runs in this namespace and reaches the broker over the link:
    /// a broker with [`broker_config`](Self::broker_config), a recorder on loopback, and the
    /// agent; returns once the agent is online.
    pub fn bed(&self, instance: &str, adjust: impl FnOnce(&mut AgentConfig)) -> Bed {
        let broker = Broker::start_with(self.broker_config());
        let url = format!("mqtt://{}:{}", self.host_ip, broker.port());
        self.bed_on(broker, &url, instance, adjust)
    }

    /// A [`Bed`] on a broker the test started, with the agent (in this namespace) connecting
    /// to `url`, e.g. a [`DelayRelay`] on the host end of the link.
    pub fn bed_on(
        &self,
        broker: Broker,
        url: &str,
        instance: &str,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> Bed {
        Bed::start_on(broker, url, instance, adjust, |c| self.spawn_agent(c))
    }

    /// Drops every packet on the link, both ways, silently.
    pub fn partition(&self) {
        self.set_fault("");
    }

    /// Drops `percent` % of the packets on the link, each way, at random.
    pub fn loss(&self, percent: u32) {
        assert!(percent <= 100, "loss of {percent} %");
        self.set_fault(&format!("numgen random mod 100 < {percent}"));
    }

    /// Removes every fault: the link carries everything again.
    pub fn heal(&self) {
        let flush = format!("flush chain inet {} input\n", self.table);
        self.must(&nft(), &["-f", "-"], Some(&flush));
        self.must_in_ns(&["nft", "-f", "-"], Some(&flush));
    }

    /// Packets dropped by the faults so far, both ends together.
    pub fn dropped(&self) -> u64 {
        let host = self.must(
            &nft(),
            &["list", "counter", "inet", &self.table, "drops"],
            None,
        );
        let inside = self.must_in_ns(
            &["nft", "list", "counter", "inet", &self.table, "drops"],
            None,
        );
        packets(&host) + packets(&inside)
    }

    /// Replaces the fault rules with one drop rule per end matching `expr` (empty: every
    /// packet) on the link's interface.
    fn set_fault(&self, expr: &str) {
        let rules = |ifname: &str| {
            format!(
                "flush chain inet {t} input\n\
                 add rule inet {t} input iifname \"{ifname}\" {expr} counter name \"drops\" drop\n",
                t = self.table
            )
        };
        // The namespace's end first: what the broker sends stops before what the agent
        // sends, so no answer slips through between the two transactions.
        self.must_in_ns(&["nft", "-f", "-"], Some(&rules(&self.ns_if)));
        self.must(&nft(), &["-f", "-"], Some(&rules(&self.host_if)));
    }

    /// Runs a command inside the namespace.
    fn must_in_ns(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        self.must(&ip(), &full, stdin)
    }

    fn must(&self, program: &PathBuf, args: &[&str], stdin: Option<&str>) -> String {
        run(program, args, stdin).unwrap_or_else(|e| {
            panic!(
                "network namespace {} (veth {}/{}, {}/{}): {e}\n\
                 these tests need root, iproute2 and nftables (scripts/install-deps.sh)",
                self.name, self.host_if, self.ns_if, self.host_ip, self.ns_ip
            )
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if self.made_host_table {
            if let Err(e) = run(&nft(), &["delete", "table", "inet", &self.table], None) {
                problems.push(e);
            }
        }
        if self.made_link {
            // Deleting one end deletes its peer in the namespace too.
            if let Err(e) = run(&ip(), &["link", "del", &self.host_if], None) {
                problems.push(e);
            }
        }
        if self.made_ns {
            if let Err(e) = run(&ip(), &["netns", "del", &self.name], None) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            // Not a panic: this may run while a test is already panicking. The next holder
            // of the slot removes the leftovers.
            eprintln!(
                "netns {}: cleanup incomplete:\n{}",
                self.name,
                problems.join("\n")
            );
        }
    }
}

/// Takes the lowest free slot. Starting from 0 every time keeps the lock files (and the
/// subnets in use) few: as many as tests ever ran at once.
fn take_slot() -> (u64, Flock<File>) {
    let dir = PathBuf::from("/run/csg-e2e-netns");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for slot in 0..SLOTS {
        let path = dir.join(format!("slot-{slot}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return (slot, lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => panic!("cannot lock {}: {e}", path.display()),
        }
    }
    panic!("no free network namespace slot in /run/csg-e2e-netns");
}

/// Deletes the namespaces of test processes that no longer exist (killed before their guard
/// could run). Best effort: another test may be sweeping at the same time.
fn sweep_dead_namespaces() {
    let Ok(list) = run(&ip(), &["netns", "list"], None) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("csg-e2e-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = run(&ip(), &["netns", "del", name], None);
        }
    }
}

/// `packets N` from `nft list counter`.
fn packets(listing: &str) -> u64 {
    listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in:\n{listing}"))
}

/// Runs a program to completion; the error names the command, its status and its stderr.
fn run(program: &PathBuf, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = crate::process::describe_command(&cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {line}: {e}"))?;
    if let Some(text) = stdin {
        let mut input = child.stdin.take().expect("stdin is piped");
        input
            .write_all(text.as_bytes())
            .map_err(|e| format!("{line}: writing stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{line}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "$ {line}{}\n{}\n{}{}",
            stdin.map(|s| format!(" <<EOF\n{s}EOF")).unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip() -> PathBuf {
    sbin_tool("ip", "iproute2")
}

fn nft() -> PathBuf {
    sbin_tool("nft", "nftables")
}

/// A system tool, on PATH or in the sbin directories (not on every user's PATH).
fn sbin_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install {package} (scripts/install-deps.sh)"))
}

/// A TCP relay that delays every byte by a fixed time per direction, keeping order: the
/// stand-in for netem's `delay` (see the module comment). Listens on `listen`:0, forwards
/// each accepted connection to `upstream`. Dropping it closes every connection and joins
/// every thread.
pub struct DelayRelay {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    /// Every socket of every connection, to shut them down on drop (which ends the threads).
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// One direction's queue: a chunk (or the end of the stream, `None`) and when it may leave.
type Chunk = (Instant, Option<Vec<u8>>);

impl DelayRelay {
    pub fn start(listen: IpAddr, upstream: SocketAddr, delay: Duration) -> DelayRelay {
        let listener = TcpListener::bind((listen, 0))
            .unwrap_or_else(|e| panic!("relay cannot listen on {listen}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("relay address");
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (delay_ms, stop, accepted, sockets, threads) = (
                delay_ms.clone(),
                stop.clone(),
                accepted.clone(),
                sockets.clone(),
                threads.clone(),
            );
            std::thread::spawn(move || {
                // Polling accept: a blocking one could not see `stop`.
                while !stop.load(Ordering::Acquire) {
                    let (down, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(e) => {
                            eprintln!("relay {addr}: accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = down.set_nonblocking(false);
                    let up = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
                        Ok(up) => up,
                        Err(_) => {
                            // Upstream down: the client sees its connection closed, as it
                            // would see a refused one.
                            let _ = down.shutdown(Shutdown::Both);
                            continue;
                        }
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let mut socks = sockets.lock().unwrap();
                    let mut ths = threads.lock().unwrap();
                    for (from, to) in [(&down, &up), (&up, &down)] {
                        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                            continue;
                        };
                        socks.push(from.try_clone().expect("clone socket"));
                        let (tx, rx) = mpsc::channel::<Chunk>();
                        let delay_ms = delay_ms.clone();
                        let reader_from = from.try_clone().expect("clone socket");
                        ths.push(std::thread::spawn(move || {
                            read_side(reader_from, tx, delay_ms)
                        }));
                        let stop = stop.clone();
                        ths.push(std::thread::spawn(move || write_side(rx, from, to, stop)));
                    }
                }
            })
        };
        DelayRelay {
            addr,
            delay_ms,
            stop,
            accepted,
            sockets,
            threads,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the delay for bytes read from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Reads chunks and queues each with the time it may be forwarded; the end of the stream
/// (or an error) is queued too, so it also arrives after the data before it.
fn read_side(mut from: TcpStream, tx: mpsc::Sender<Chunk>, delay_ms: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let due = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Acquire));
        let chunk = (n > 0).then(|| buf[..n].to_vec());
        let end = chunk.is_none();
        if tx.send((due, chunk)).is_err() || end {
            return;
        }
    }
}

/// Forwards queued chunks when they are due. At the end of the stream it half-closes the
/// other side (as TCP would pass a FIN on); if the other side is gone it closes both, which
/// ends the reader too.
fn write_side(
    rx: mpsc::Receiver<Chunk>,
    from: TcpStream,
    mut to: TcpStream,
    stop: Arc<AtomicBool>,
) {
    while let Ok((due, chunk)) = rx.recv() {
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        match chunk {
            Some(bytes) => {
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            None => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}
