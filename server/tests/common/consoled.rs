//! The real `csg-consoled` binary for the end-to-end tests: its configuration in a temporary
//! directory (a SQLite file there unless another store is given, a free loopback port), the
//! process started, waited for, stopped or killed, its tokens made with its own `token create`,
//! and HTTP through `curl` (the token in a header file and the body in a file, never in argv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csg_e2e::broker::free_port;
use csg_e2e::process::{self, child_env, ChildGuard};
use csg_e2e::TIMEOUT;
use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

pub const CONSOLED: &str = env!("CARGO_BIN_EXE_csg-consoled");

/// What a test changes in the configuration; everything else is the tests' usual file.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The store URL; a SQLite file in the temporary directory when `None`.
    pub store: Option<String>,
    /// The share group the replicas split heartbeats in; a unique one when `None`.
    pub share_group: Option<String>,
    /// The console id (the second half of the client id); a unique one when `None`.
    pub console_id: Option<String>,
    /// Lines added to `[http]`.
    pub http: String,
    /// TOML appended to the file (other sections: `[signing]`, `[[webhooks]]`).
    pub extra: String,
}

pub struct Consoled {
    pub dir: TempDir,
    pub config: PathBuf,
    pub port: u16,
    child: Option<ChildGuard>,
    last_log: String,
}

impl Consoled {
    /// SQLite in a temporary directory, `extra` appended; not started.
    pub fn new(broker_url: &str, extra: &str) -> Consoled {
        Self::with(
            broker_url,
            Options {
                extra: extra.to_owned(),
                ..Options::default()
            },
        )
    }

    /// Writes the configuration; not started.
    pub fn with(broker_url: &str, o: Options) -> Consoled {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let store = o.store.unwrap_or_else(|| {
            format!("sqlite://{}", dir.path().join("state/console.db").display())
        });
        let config = dir.path().join("console.toml");
        let toml = format!(
            r#"
[identity]
group_id = "GID_console"
console_id = "{console}"
[mqtt]
url = "{broker_url}"
protocol = "{protocol}"
keep_alive_s = 5
[http]
listen = "127.0.0.1:{port}"
{http}
[store]
url = "{store}"
[fleet]
share_group = "{group}"
default_interval_s = 1
{extra}
"#,
            console = o.console_id.unwrap_or_else(|| csg_e2e::unique("consoled")),
            protocol = csg_e2e::mqtt_protocol(),
            http = o.http,
            group = o.share_group.unwrap_or_else(|| csg_e2e::unique("consoled")),
            extra = o.extra,
        );
        std::fs::write(&config, toml).unwrap();
        Consoled {
            dir,
            config,
            port,
            child: None,
            last_log: String::new(),
        }
    }

    /// `csg-consoled {args…} --config FILE`, to its end.
    pub fn command(&self, args: &[&str]) -> process::CmdOutput {
        let mut cmd = Command::new(CONSOLED);
        cmd.args(args).arg("--config").arg(&self.config);
        child_env(&mut cmd);
        process::run(cmd, TIMEOUT)
    }

    pub fn token(&self, name: &str, scope: &str) -> String {
        self.token_with(&["--name", name, "--scope", scope])
    }

    /// `token create {args…}`; the token printed.
    pub fn token_with(&self, args: &[&str]) -> String {
        let mut argv = vec!["token", "create"];
        argv.extend_from_slice(args);
        let out = self.command(&argv);
        out.assert_code(0);
        let token = out.stdout.trim().to_owned();
        assert!(
            token.starts_with("csgc_") && !token.contains('\n'),
            "stdout must be the token alone: {out:?}"
        );
        token
    }

    /// Starts it and waits until `/readyz` answers 200.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts it without waiting for readiness.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(CONSOLED);
        cmd.arg("--config").arg(&self.config);
        child_env(&mut cmd);
        self.child = Some(ChildGuard::spawn("csg-consoled", cmd, self.dir.path()).unwrap());
    }

    pub fn wait_ready(&self) {
        let ready = wait_for(TIMEOUT, || self.get("/readyz", None).status == 200);
        assert!(ready.is_some(), "csg-consoled never ready\n{}", self.log());
    }

    /// The running process's log, or the last one's once it has exited.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map_or_else(|| self.last_log.clone(), ChildGuard::log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().pid()
    }

    /// SIGTERM, and its exit status (`None`: still running after the harness's timeout).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_within(TIMEOUT)
    }

    pub fn stop_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().unwrap();
        child.signal(Signal::SIGTERM);
        let status = child.wait_exit(limit);
        child.set_dump_on_panic(false);
        self.last_log = child.log();
        status
    }

    /// Sends a signal to the running process (SIGHUP: reload).
    pub fn signal(&mut self, sig: Signal) {
        self.child.as_mut().unwrap().signal(sig);
    }

    /// Waits for the process to exit after a signal; its status, and the process is done with.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut().unwrap().wait_exit(limit);
        if status.is_some() {
            if let Some(mut child) = self.child.take() {
                child.set_dump_on_panic(false);
                // The log stays readable through the files the harness keeps in its directory.
                self.last_log = child.log();
            }
        }
        status
    }

    /// SIGKILL, as in a crash: nothing of the process's own stop runs.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill9();
        child.set_dump_on_panic(false);
        self.last_log = child.log();
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request("GET", path, None, &[], token)
    }

    /// A GET that must answer 200; its JSON body.
    pub fn json(&self, path: &str, token: &str) -> Value {
        let r = self.get(path, Some(token));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    }

    /// `method path` with a JSON body and extra headers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[&str],
        token: Option<&str>,
    ) -> Reply {
        let mut extra: Vec<String> = vec!["-X".into(), method.into()];
        for h in headers {
            extra.push("-H".into());
            extra.push((*h).to_owned());
        }
        let body_file = body.map(|b| {
            let f = self
                .dir
                .path()
                .join(format!("{}.json", csg_e2e::unique("body")));
            std::fs::write(&f, b.to_string()).unwrap();
            f
        });
        if let Some(f) = &body_file {
            extra.extend([
                "-H".into(),
                "content-type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", f.display()),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let reply = self.curl(&extra, path, token);
        if let Some(f) = body_file {
            let _ = std::fs::remove_file(f);
        }
        reply
    }

    /// `POST /v1/instances/{id}/calls`.
    pub fn call(&self, id: &str, body: &Value, key: Option<&str>, token: &str) -> Reply {
        let header = key.map(|k| format!("Idempotency-Key: {k}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        self.request(
            "POST",
            &format!("/v1/instances/{id}/calls"),
            Some(body),
            &headers,
            Some(token),
        )
    }

    /// `curl {extra…} URL` with the token in a header file.
    pub fn curl(&self, extra: &[&str], path: &str, token: Option<&str>) -> Reply {
        http(self.dir.path(), self.port, extra, path, token)
    }
}

/// An HTTP answer: status 0 when there was none (not listening, the connection cut).
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// A problem response of this status, as RFC 9457 shapes it.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        for key in ["type", "title", "detail"] {
            assert!(p[key].is_string(), "problem without {key}: {p}");
        }
        p
    }

    /// This status; the JSON body (null when empty).
    pub fn assert_ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// `curl -i` with a timeout longer than any call budget the tests use (and than the store's 5 s
/// pool timeout, so a 503 for an unreachable store arrives); the token in a header file of its
/// own, so requests from several threads do not share one.
pub fn http(dir: &Path, port: u16, extra: &[&str], path: &str, token: Option<&str>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-i"]).args(extra);
    let header = token.map(|t| {
        let h = dir.join(format!("{}.header", csg_e2e::unique("auth")));
        std::fs::write(&h, format!("Authorization: Bearer {t}\n")).unwrap();
        h
    });
    if let Some(h) = &header {
        cmd.arg("-H").arg(format!("@{}", h.display()));
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = process::run(cmd, Duration::from_secs(70));
    if let Some(h) = header {
        let _ = std::fs::remove_file(h);
    }
    if out.code() != Some(0) {
        return Reply {
            status: 0,
            headers: String::new(),
            body: out.stderr,
        };
    }
    // A 100 Continue (curl sends Expect for large bodies) comes before the real head.
    let mut rest = out.stdout.as_str();
    let (mut head, mut body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    while head.starts_with("HTTP/1.1 100") {
        rest = body;
        (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Polls `cond` every 50 ms; how long it took, or `None` when it never held within `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
