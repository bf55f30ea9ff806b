//! A private NFS-Ganesha per test: its own dbus-daemon (a "system" bus on a socket in a temp
//! dir, with a policy that lets anyone own and call `org.ganesha.nfsd`), and ganesha.nfsd in
//! the foreground with its own config (FSAL VFS, NFSv4 only, loopback, free high ports, a
//! private recovery dir, `%dir <tmp>/agent.d/*.conf` for the agent's export files).
//!
//! NFSv4 only, because Ganesha 4.3 exits ("Fatal errors. Server exiting...") when it cannot
//! register NFSv3/MOUNT with rpcbind, and a real rpcbind cannot be private to a test (it
//! binds port 111 and a fixed socket path). NFSv4 registration failure is only logged, and
//! NFSv4 needs no portmapper: `nfs-ls "nfs://127.0.0.1/PSEUDO?version=4&nfsport=PORT"`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::NfsSection;
use crate::process::{self, read_lossy, ChildGuard, CmdOutput};

pub const GANESHA: &str = "/usr/bin/ganesha.nfsd";
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";
pub const DBUS_SEND: &str = "/usr/bin/dbus-send";
pub const NFS_LS: &str = "/usr/bin/nfs-ls";
const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/ganesha";

pub struct Ganesha {
    // Children before the directory: their logs live there.
    ganesha: ChildGuard,
    bus: ChildGuard,
    dir: tempfile::TempDir,
    nfs_port: u16,
    bus_address: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Ganesha {
    /// Starts the bus and Ganesha and waits until Ganesha answers on both D-Bus and its NFS
    /// port; panics with both logs if it does not.
    pub fn start() -> Ganesha {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("agent.d")).unwrap();
        std::fs::create_dir_all(d.join("recov")).unwrap();
        let sock = d.join("bus.sock");
        std::fs::write(
            d.join("bus.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(DBUS_DAEMON);
        cmd.arg(format!("--config-file={}", d.join("bus.conf").display()))
            .args(["--nofork", "--nopidfile", "--print-address"]);
        let mut bus = ChildGuard::spawn("dbus-daemon", cmd, &d).expect("start dbus-daemon");
        let bus_address = format!("unix:path={}", sock.display());
        let end = Instant::now() + crate::TIMEOUT;
        while !sock.exists() {
            if !bus.is_running() || Instant::now() > end {
                panic!("private dbus-daemon did not start\n{}", bus.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let mut last = String::new();
        for _attempt in 0..5 {
            let nfs_port = free_port();
            let mnt_port = free_port();
            std::fs::write(
                d.join("ganesha.conf"),
                format!(
                    "NFS_CORE_PARAM {{\n\
                     \x20   Protocols = 4;\n\
                     \x20   NFS_Port = {nfs_port};\n\
                     \x20   MNT_Port = {mnt_port};\n\
                     \x20   Bind_addr = 127.0.0.1;\n\
                     \x20   Enable_NLM = false;\n\
                     \x20   Enable_RQUOTA = false;\n\
                     \x20   Enable_UDP = false;\n\
                     \x20   mount_path_pseudo = true;\n\
                     \x20   Plugins_Dir = \"{PLUGINS}\";\n\
                     }}\n\
                     NFSv4 {{\n\
                     \x20   Graceless = true;\n\
                     \x20   RecoveryRoot = \"{}\";\n\
                     }}\n\
                     %dir {}/*.conf\n",
                    d.join("recov").display(),
                    d.join("agent.d").display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new(GANESHA);
            cmd.arg("-F")
                .arg("-f")
                .arg(d.join("ganesha.conf"))
                .arg("-L")
                .arg("/dev/stderr")
                .arg("-p")
                .arg(d.join("ganesha.pid"))
                .args(["-N", "NIV_EVENT"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
                .current_dir(&d);
            let mut ganesha = ChildGuard::spawn("ganesha.nfsd", cmd, &d).expect("start ganesha");
            ganesha.set_dump_on_panic(false);
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                if !ganesha.is_running() {
                    last = ganesha.log();
                    break;
                }
                let listening = TcpStream::connect(("127.0.0.1", nfs_port)).is_ok();
                if listening && dbus_ok(&bus_address) {
                    ganesha.set_dump_on_panic(true);
                    return Ganesha {
                        ganesha,
                        bus,
                        dir,
                        nfs_port,
                        bus_address,
                    };
                }
                if Instant::now() > end {
                    panic!(
                        "ganesha.nfsd not ready within 30 s (NFS port {nfs_port}, bus {bus_address})\n{}\n{}",
                        ganesha.log(),
                        bus.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Exited: a port taken by a parallel test is worth another try; anything else is not.
            if !last.contains("Cannot bind") && !last.contains("Address already in use") {
                break;
            }
        }
        panic!("ganesha.nfsd exited at start\n{last}\n{}", bus.log());
    }

    /// Where the agent's EXPORT files go (`nfs.ganesha_dir`).
    pub fn exports_dir(&self) -> PathBuf {
        self.dir.path().join("agent.d")
    }

    /// `nfs.dbus_address` for the agent.
    /// `[nfs]` for the Ganesha backend on this daemon.
    pub fn nfs_section(&self) -> NfsSection {
        NfsSection::ganesha(&self.exports_dir(), self.bus_address())
    }

    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    pub fn nfs_port(&self) -> u16 {
        self.nfs_port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `nfs-ls` of a pseudo path over NFSv4, as a client would see it.
    pub fn nfs_ls(&self, pseudo: &str) -> CmdOutput {
        let mut cmd = Command::new(NFS_LS);
        cmd.arg(format!(
            "nfs://127.0.0.1{pseudo}?version=4&nfsport={}",
            self.nfs_port
        ));
        process::run(cmd, crate::TIMEOUT)
    }

    /// Calls an ExportMgr method directly (to change Ganesha behind the agent's back).
    pub fn export_mgr(&self, method: &str, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(DBUS_SEND);
        cmd.arg(format!("--bus={}", self.bus_address))
            .args([
                "--print-reply",
                "--dest=org.ganesha.nfsd",
                "/org/ganesha/nfsd/ExportMgr",
            ])
            .arg(format!("org.ganesha.nfsd.exportmgr.{method}"))
            .args(args);
        process::run(cmd, crate::TIMEOUT)
    }

    /// Export ids Ganesha serves (from ShowExports), without the pseudo root 0.
    pub fn export_ids(&self) -> Vec<u16> {
        let out = self.export_mgr("ShowExports", &[]);
        out.assert_code(0);
        let mut ids: Vec<u16> = out
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("uint16 "))
            .filter_map(|n| n.parse().ok())
            .filter(|n| *n != 0)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn log(&self) -> String {
        format!(
            "{}\n{}\n(config)\n{}",
            self.ganesha.log(),
            self.bus.log(),
            read_lossy(&self.dir.path().join("ganesha.conf"))
        )
    }

    pub fn is_running(&mut self) -> bool {
        self.ganesha.is_running()
    }
}

fn dbus_ok(address: &str) -> bool {
    let mut cmd = Command::new(DBUS_SEND);
    cmd.arg(format!("--bus={address}")).args([
        "--print-reply",
        "--dest=org.ganesha.nfsd",
        "/org/ganesha/nfsd/ExportMgr",
        "org.ganesha.nfsd.exportmgr.ShowExports",
    ]);
    process::run(cmd, crate::TIMEOUT).code() == Some(0)
}
