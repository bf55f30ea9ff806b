//! The web console in a real browser: Debian's Chromium, headless, driven through WebDriver
//! (chromedriver) against the real `csg-consoled` binary, a real Mosquitto and real agents.
//!
//! The WebDriver client is the few commands the test needs, spoken over the `reqwest` client
//! the service already builds with (rustls, no OpenSSL, no second crypto provider).
//! Screenshots of every page land in `target/web-screenshots/` as PNG files.
//!
//! Needs `chromium` and `chromium-driver` (scripts/install-deps.sh) and the agent built
//! (`cargo build -p csg-agent --bins`). A browser or daemon that cannot start fails the test
//! with the reason.

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csg_e2e::broker::free_port;
use csg_e2e::process::{self, child_env, ChildGuard};
use csg_e2e::{Agent, AgentConfig, Broker, TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tempfile::TempDir;

const CONSOLED: &str = env!("CARGO_BIN_EXE_csg-consoled");
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Consoled {
    dir: TempDir,
    config: PathBuf,
    port: u16,
    child: Option<ChildGuard>,
}

impl Consoled {
    fn new(broker: &Broker) -> Consoled {
        Self::with_store(broker, None)
    }

    /// The same on another store (PostgreSQL's URL).
    fn with_store(broker: &Broker, store: Option<String>) -> Consoled {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("console.toml");
        let toml = format!(
            r#"
[identity]
group_id = "GID_console"
console_id = "{console}"
[mqtt]
url = "{url}"
protocol = "{protocol}"
keep_alive_s = 5
[http]
listen = "127.0.0.1:{port}"
[store]
url = "{store}"
[fleet]
share_group = "{group}"
default_interval_s = 1
"#,
            console = csg_e2e::unique("consoled"),
            url = broker.url(),
            protocol = csg_e2e::mqtt_protocol(),
            store = store.unwrap_or_else(|| format!(
                "sqlite://{}",
                dir.path().join("state/console.db").display()
            )),
            group = csg_e2e::unique("web"),
        );
        std::fs::write(&config, toml).unwrap();
        Consoled {
            dir,
            config,
            port,
            child: None,
        }
    }

    fn command(&self, args: &[&str]) -> process::CmdOutput {
        let mut cmd = Command::new(CONSOLED);
        cmd.args(args).arg("--config").arg(&self.config);
        child_env(&mut cmd);
        process::run(cmd, TIMEOUT)
    }

    fn token(&self, name: &str, scope: &str) -> String {
        let out = self.command(&["token", "create", "--name", name, "--scope", scope]);
        out.assert_code(0);
        out.stdout.trim().to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn start(&mut self, http: &reqwest::Client) {
        let mut cmd = Command::new(CONSOLED);
        cmd.arg("--config").arg(&self.config);
        child_env(&mut cmd);
        self.child = Some(
            ChildGuard::spawn("csg-consoled", cmd, self.dir.path())
                .unwrap_or_else(|e| panic!("csg-consoled does not start: {e}")),
        );
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "csg-consoled never ready\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        self.child.as_ref().map(ChildGuard::log).unwrap_or_default()
    }

    async fn api(&self, http: &reqwest::Client, path: &str, token: &str) -> Value {
        let r = http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }
}

/// A WebDriver session on chromedriver, and the chromedriver process.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: ChildGuard,
    shots: PathBuf,
}

impl Browser {
    async fn start(dir: &Path) -> Browser {
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let driver = ChildGuard::spawn("chromedriver", cmd, dir).unwrap_or_else(|e| {
            panic!("chromedriver does not start ({e}); install chromium-driver (scripts/install-deps.sh)")
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{root}/status")).send().await {
                let v: Value =
                    serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "chromedriver never ready\n{}",
                driver.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--user-data-dir=".to_owned() + &dir.join("profile").display().to_string()],
            }
        }}});
        let r = http
            .post(format!("{root}/session"))
            .body(caps.to_string())
            .send()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium does not start: {v}\n{}", driver.log()))
            .to_owned();
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            http,
            base: format!("{root}/session/{id}"),
            _driver: driver,
            shots,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            v["value"].get("error").is_none(),
            "WebDriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn run(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of the first element matching `css`, or `None`.
    async fn text(&self, css: &str) -> Option<String> {
        let s = format!(
            "var e = document.querySelector({}); return e ? e.textContent.trim() : null;",
            Value::from(css)
        );
        self.run(&s).await.as_str().map(str::to_owned)
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The viewport of a phone (`Some((width, height))`, CSS pixels) or the window's again
    /// (`None`), through Chromium's device emulation (resizing a headless window can stall).
    async fn phone(&self, size: Option<(u32, u32)>) {
        let (cmd, params) = match size {
            Some((w, h)) => (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": true}),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Polls `check` until it holds, or panics saying what was awaited.
    async fn until(&self, what: &str, limit: Duration, script: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.run(script).await == Value::Bool(true) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "never: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The handle of the window the commands go to.
    async fn window(&self) -> String {
        self.cmd(reqwest::Method::GET, "/window", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A second window (not a tab: each window's page stays shown), made the one the
    /// commands go to; its handle.
    async fn new_window(&self) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "window"})),
            )
            .await;
        let handle = v["handle"].as_str().unwrap().to_owned();
        self.switch_to(&handle).await;
        handle
    }

    async fn switch_to(&self, handle: &str) {
        self.cmd(
            reqwest::Method::POST,
            "/window",
            Some(json!({"handle": handle})),
        )
        .await;
    }

    async fn close(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

fn presence_is(key: &str, state: &str) -> String {
    format!(
        "var e = document.querySelector('tr[data-gw=\"{key}\"] [data-presence]'); return !!e && e.textContent.trim() === '{state}';"
    )
}

/// The value of a form's hidden `csrf` field on the page the browser shows.
async fn csrf_on_page(b: &Browser) -> String {
    b.text("input[name=csrf]").await;
    b.run("return document.querySelector('input[name=csrf]').value;")
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

/// A POST the page's script sends (same origin, the session cookie included); its status.
async fn forged_post(b: &Browser, path: &str, body: &str) -> u64 {
    let script = format!(
        "return fetch({}, {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: {}, redirect: 'manual'}}).then(r => r.status);",
        Value::from(path),
        Value::from(body)
    );
    b.run(&script).await.as_u64().unwrap()
}

async fn sign_in(b: &Browser, c: &Consoled, token: &str) {
    b.goto(&c.url("/ui/")).await;
    assert!(
        b.current_url().await.ends_with("/ui/signin"),
        "not sent to sign in: {}",
        b.current_url().await
    );
    b.type_into("#token", token).await;
    b.click("form[action='/ui/signin'] button").await;
    b.until(
        "the fleet page after signing in",
        TIMEOUT,
        "return location.pathname === '/ui/' && !!document.querySelector('h1') && document.querySelector('h1').textContent === 'Fleet';",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_console_signs_in_shows_the_fleet_live_and_refuses_a_read_tokens_changes() {
    // reqwest is built without a crypto provider (the build has one, ring): the test names it
    // (it speaks plain HTTP on loopback only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("web-operator", "operate");
    let reader = c.token("web-reader", "read");
    let admin = c.token("web-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    // Headers and cookies, as any client sees them.
    let r = http.get(c.url("/ui/signin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let signin_cookie = h["set-cookie"].to_str().unwrap().to_owned();
    assert!(signin_cookie.contains("HttpOnly") && signin_cookie.contains("SameSite=Strict"));
    let html = r.text().await.unwrap();
    let asset = |ext: &str| {
        let at = html.find(&format!(".{ext}\"")).unwrap();
        let start = html[..at].rfind('"').unwrap() + 1;
        html[start..at + ext.len() + 1].to_owned()
    };
    for url in [asset("css"), asset("js")] {
        let r = http.get(c.url(&url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
    }
    // A sign-in without the form's CSRF token is refused before the token is looked at.
    let r = http
        .post(c.url("/ui/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={operator}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A page without a session goes to sign in; a POST without one is refused.
    let r = http.get(c.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/signin");
    let r = http
        .post(c.url("/ui/gateways/gw-web-1/reconcile"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let b = Browser::start(c.dir.path()).await;
    let began = Instant::now();
    let step = |what: &str| eprintln!("{:>6} ms  {what}", began.elapsed().as_millis());

    // The empty fleet, signed in as the operator.
    sign_in(&b, &c, &operator).await;
    assert_eq!(
        b.text(".empty h2").await.as_deref(),
        Some("No gateways yet")
    );
    b.screenshot("fleet-empty").await;
    step("fleet-empty");

    // Two agents come online and are listed online.
    let mut agents: Vec<Agent> = ["gw-web-1", "gw-web-2"]
        .iter()
        .map(|id| {
            let mut cfg = AgentConfig::new(id, &broker.url());
            cfg.heartbeat_interval_s = 1;
            Agent::spawn(&cfg)
        })
        .collect();
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        if page["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "agents never online\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.goto(&c.url("/ui/")).await;
    for id in ["gw-web-1", "gw-web-2"] {
        let key = format!("default/{id}");
        b.until(
            &format!("{id} online"),
            TIMEOUT,
            &presence_is(&key, "online"),
        )
        .await;
    }
    assert_eq!(b.text("#n-online").await.as_deref(), Some("2"));
    b.until(
        "the live stream open",
        TIMEOUT,
        "return document.getElementById('live').textContent === 'live';",
    )
    .await;
    b.screenshot("fleet").await;
    step("fleet");

    // Killed, the agent's Will turns its row offline on the open page, without a reload.
    b.run("window.__same_page = 'yes'; return true;").await;
    let killed = Instant::now();
    agents[1].kill9();
    let shown = b
        .until(
            "gw-web-2 shown offline without a reload",
            Duration::from_secs(30),
            &presence_is("default/gw-web-2", "offline"),
        )
        .await;
    assert_eq!(
        b.run("return window.__same_page || null;").await,
        "yes",
        "the page reloaded"
    );
    eprintln!(
        "an agent killed: its row offline on the open page {} ms later",
        killed.elapsed().max(shown).as_millis()
    );
    assert_eq!(
        b.text("tr[data-gw='default/gw-web-1'] [data-presence]")
            .await
            .as_deref(),
        Some("online")
    );
    // The counts follow the row.
    assert_eq!(b.text("#n-offline").await.as_deref(), Some("1"));
    assert_eq!(b.text("#n-online").await.as_deref(), Some("1"));
    b.screenshot("fleet-offline").await;
    step("fleet-offline");

    // The filter: offline gateways only. Chosen in the form, htmx (under the pages' strict
    // CSP) swaps the table in place and the URL keeps the filter; loaded by URL, the same.
    let only_offline = "return document.querySelectorAll('tr[data-gw]').length === 1 && !!document.querySelector('tr[data-gw=\"default/gw-web-2\"]');";
    b.run("var s = document.getElementById('presence'); s.value = 'offline'; s.dispatchEvent(new Event('change', {bubbles: true})); return true;").await;
    b.until(
        "only the offline gateway listed, swapped in by htmx",
        TIMEOUT,
        only_offline,
    )
    .await;
    assert_eq!(
        b.run("return window.__same_page || null;").await,
        "yes",
        "the filter reloaded the page instead of swapping the table"
    );
    assert!(
        b.current_url()
            .await
            .ends_with("/ui/?q=&presence=offline&group=&version=&drift="),
        "{}",
        b.current_url().await
    );
    b.goto(&c.url("/ui/?presence=offline")).await;
    b.until("only the offline gateway listed", TIMEOUT, only_offline)
        .await;

    // The gateway page: identity, host figures, storage, history, and the operator's form.
    b.goto(&c.url("/ui/")).await;
    b.click("tr[data-gw='default/gw-web-1'] a").await;
    b.until(
        "the gateway page",
        TIMEOUT,
        "return location.pathname === '/ui/gateways/gw-web-1';",
    )
    .await;
    assert!(b.text("h1").await.unwrap().starts_with("gw-web-1"));
    assert_eq!(
        b.text("[data-presence-badge]").await.as_deref(),
        Some("online")
    );
    let host = b.text("section[aria-labelledby='h-host']").await.unwrap();
    assert!(
        host.contains("Memory used") && host.contains("GiB"),
        "{host}"
    );
    let history = b
        .text("section[aria-labelledby='h-history']")
        .await
        .unwrap();
    assert!(history.contains("online"), "{history}");
    assert!(b.text("form[action$='/reconcile'] button").await.is_some());
    b.screenshot("gateway").await;
    step("gateway");
    // Reconcile through the form: sent, and listed among the calls.
    b.click("form[action$='/reconcile'] button").await;
    b.until(
        "the reconcile sent",
        Duration::from_secs(40),
        "return !!document.querySelector('.flash.ok');",
    )
    .await;
    let calls = b.text("section[aria-labelledby='h-calls']").await.unwrap();
    assert!(calls.contains("sys.reconcile"), "{calls}");
    b.screenshot("gateway-reconciled").await;
    step("gateway-reconciled");

    // A phone's width: the gateway page still reads.
    b.phone(Some((390, 844))).await;
    b.goto(&c.url("/ui/gateways/gw-web-2")).await;
    assert_eq!(
        b.text("[data-presence-badge]").await.as_deref(),
        Some("offline")
    );
    assert!(b.text(".flash.warn").await.unwrap().contains("offline"));
    assert!(b
        .text("#res-off")
        .await
        .unwrap()
        .contains("the gateway is offline"));
    b.screenshot("gateway-offline-phone").await;
    step("gateway-offline-phone");
    b.phone(None).await;

    // Sign out: the session is gone, pages go to sign in.
    b.goto(&c.url("/ui/")).await;
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "the sign-in page after signing out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;
    // A wrong token: refused, said on the form.
    b.type_into("#token", "csgc_not-a-token").await;
    b.click("form[action='/ui/signin'] button").await;
    b.until(
        "the refusal on the form",
        TIMEOUT,
        "return !!document.getElementById('signin-error');",
    )
    .await;
    b.screenshot("signin-refused").await;
    step("signin-refused");

    // The read token: every page, no form that changes anything, and forged POSTs refused.
    sign_in(&b, &c, &reader).await;
    let post_forms = "return document.querySelectorAll('form[method=post]:not([action=\"/ui/signout\"])').length;";
    assert_eq!(b.run(post_forms).await, 0);
    b.goto(&c.url("/ui/gateways/gw-web-1")).await;
    assert!(b.text("h1").await.unwrap().starts_with("gw-web-1"));
    assert_eq!(b.run(post_forms).await, 0, "a read token sees a form");
    b.screenshot("gateway-read").await;
    step("gateway-read");
    let calls_before = c.api(&http, "/v1/instances/gw-web-1/calls", &admin).await["items"]
        .as_array()
        .unwrap()
        .len();
    let csrf = csrf_on_page(&b).await;
    let path = "/ui/gateways/gw-web-1/reconcile";
    assert_eq!(
        forged_post(&b, path, "region=default").await,
        403,
        "without CSRF"
    );
    assert_eq!(
        forged_post(&b, path, &format!("region=default&csrf={csrf}")).await,
        403,
        "with the session's CSRF token"
    );
    let calls_after = c.api(&http, "/v1/instances/gw-web-1/calls", &admin).await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(calls_before, calls_after, "a read token's POST made a call");
    // A gateway never seen: a 404 page.
    b.goto(&c.url("/ui/gateways/gw-never-seen")).await;
    assert!(b.text("h1").await.unwrap().contains("404"));
    b.screenshot("not-found").await;
    step("not-found");

    // The audit log has the sign-ins and the refusals.
    let audit = c.api(&http, "/v1/audit?limit=100", &admin).await;
    let items = audit["items"].as_array().unwrap();
    let has = |action: &str, token: Option<&str>, outcome: &str| {
        items.iter().any(|e| {
            e["action"] == action
                && token.is_none_or(|t| e["token_name"] == t)
                && e["outcome"] == outcome
        })
    };
    assert!(has("web.signin", Some("web-operator"), "ok"), "{audit}");
    assert!(has("web.signin", Some("web-reader"), "ok"), "{audit}");
    assert!(has("web.signout", Some("web-operator"), "ok"), "{audit}");
    assert!(has("refused", Some("web-reader"), "403"), "{audit}");
    assert!(
        items.iter().any(|e| e["action"] == "refused"
            && e["outcome"] == "401"
            && e["params"]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("web sign-in: the token is unknown"))),
        "the wrong token's sign-in is not in the audit log: {audit}"
    );
    // Over plain HTTP the cookies are not Secure (the browser would drop them).
    assert!(!signin_cookie.contains("Secure"), "{signin_cookie}");

    // Revoking the token ends its session at once: the next page goes to sign in, and the
    // open stream ends.
    c.command(&["token", "revoke", "--name", "web-reader"])
        .assert_code(0);
    b.goto(&c.url("/ui/")).await;
    assert!(b.current_url().await.ends_with("/ui/signin"));

    // The fleet at a phone's width, signed in again (last: leaving this page under Chromium's
    // device emulation can stall the next navigation for a minute).
    sign_in(&b, &c, &admin).await;
    b.phone(Some((390, 844))).await;
    b.goto(&c.url("/ui/")).await;
    b.until(
        "the fleet at a phone's width",
        TIMEOUT,
        &presence_is("default/gw-web-2", "offline"),
    )
    .await;
    b.screenshot("fleet-phone").await;
    step("fleet-phone");
    // A dozen pages with live streams, opened one after another, do not stall: each page's
    // stream closes when it is left (a browser holds six connections to a host; streams of
    // pages left open would make the seventh page wait for a minute).
    assert!(
        began.elapsed() < Duration::from_secs(45),
        "the pages took {} ms",
        began.elapsed().as_millis()
    );

    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// The pages' states when a part is away: the region's broker (a banner on the fleet page; on
/// the gateway page a banner and the reconcile button disabled, saying why), then the store (a
/// 503 page saying that retrying is safe), and the pages again once the store is back (the
/// session, kept in the store, still valid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_say_when_the_broker_or_the_store_is_away() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut pg = tokio::task::spawn_blocking(common::PgServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let mut broker = Broker::start();
    let mut c = Consoled::with_store(&broker, Some(pg.url()));
    let operator = c.token("web-operator", "operate");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;
    let mut cfg = AgentConfig::new("gw-away-1", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let mut agent = Agent::spawn(&cfg);
    let t0 = Instant::now();
    while c
        .api(&http, "/v1/instances?presence=online", &operator)
        .await["items"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            t0.elapsed() < TIMEOUT,
            "the agent never online\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    b.goto(&c.url("/ui/gateways/gw-away-1")).await;
    assert!(b
        .text("form[action$='/reconcile'] button:not([disabled])")
        .await
        .is_some());

    // The broker goes away: the fleet page names the region, the gateway page disables the
    // button and says why.
    broker.kill();
    let t0 = Instant::now();
    loop {
        b.goto(&c.url("/ui/")).await;
        if b.text(".flash.bad")
            .await
            .is_some_and(|t| t.contains("broker of region default"))
        {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "no broker banner\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.screenshot("fleet-broker-away").await;
    b.goto(&c.url("/ui/gateways/gw-away-1")).await;
    assert!(b
        .text(".flash.bad")
        .await
        .unwrap()
        .contains("is unreachable"));
    assert!(b
        .text("#why-disabled")
        .await
        .unwrap()
        .contains("broker of region default is unreachable"));
    // The resources are not asked for; the section says why, and no form is offered.
    assert!(b
        .text("#res-off")
        .await
        .unwrap()
        .contains("broker of region default is unreachable"));
    assert!(b.text("a[data-new]").await.is_none());
    assert!(b
        .text("form[action$='/reconcile'] button[disabled]")
        .await
        .is_some());
    b.screenshot("gateway-broker-away").await;

    // The store goes away: a 503 page, retry safe, with Retry-After.
    tokio::task::block_in_place(|| pg.kill());
    b.goto(&c.url("/ui/")).await;
    let h1 = b.text("h1").await.unwrap();
    assert!(h1.contains("503"), "{h1}");
    assert!(b.text(".retry").await.unwrap().contains("Retrying is safe"));
    b.screenshot("store-away").await;

    // Back: the same session reads the pages again.
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    let t0 = Instant::now();
    loop {
        b.goto(&c.url("/ui/")).await;
        if b.text("h1").await.as_deref() == Some("Fleet") {
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "the pages never came back\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.close().await;
    agent.signal(Signal::SIGTERM);
}

/// The resource forms in the browser: one real agent serving NFS (the kernel backend over the
/// harness's exportfs stub, as `calls_e2e` does: this kernel has no nfsd) and SMB (a real
/// smbd); an export and a share created through the forms and listed with no drift, a bad
/// path's error next to the path field, a deletion confirmed, the capabilities and the chart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_pages_forms_create_list_and_delete_resources() {
    use csg_e2e::exportfs_stub::ExportfsStub;
    use csg_e2e::smbd::Smbd;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("forms-operator", "operate");
    let admin = c.token("forms-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    let smbd = Smbd::start();
    let work = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(work.path()).unwrap();
    std::fs::create_dir_all(base.join("state")).unwrap();
    let root = std::fs::canonicalize(smbd.root()).unwrap();
    for d in ["vol1", "docs"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let stub = ExportfsStub::new(&base);
    let id = "gw-forms-1";
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    smbd.configure(&mut cfg, &base.join("state"));
    cfg.nfs = Some(stub.nfs_section());
    let _agent = Agent::spawn(&cfg);
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        let storage = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["instance_id"] == id);
        if storage {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "agent never online\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    let page = c.url(&format!("/ui/gateways/{id}"));
    // The first heartbeat names the families; the page lists a section for each.
    // The page loads them from the agent after it has loaded itself (htmx swaps them in).
    let both = "return !!document.getElementById('h-nfs-exports') && !!document.getElementById('h-smb-shares');";
    let t0 = Instant::now();
    'sections: loop {
        b.goto(&page).await;
        for _ in 0..30 {
            if b.run(both).await == Value::Bool(true) {
                break 'sections;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(t0.elapsed() < TIMEOUT, "no resource sections\n{}", c.log());
    }
    // The capabilities, collapsed until opened.
    assert_eq!(
        b.run("return document.getElementById('caps').open;").await,
        false
    );
    let caps = b.text("#caps").await.unwrap();
    assert!(
        caps.contains("1.1") && caps.contains("kernel") && caps.contains("samba"),
        "{caps}"
    );
    assert!(caps.contains("max_reply_bytes"), "{caps}");

    // An export created through the form: listed with no drift, the stub's file has it.
    b.click("a[data-new='nfs-exports']").await;
    b.until(
        "the new export form",
        TIMEOUT,
        "return !!document.getElementById('f-path');",
    )
    .await;
    b.type_into("#f-name", "vol1").await;
    b.type_into("#f-path", &root.join("vol1").display().to_string())
        .await;
    b.type_into("#f-clients", r#"[{"match": "10.0.0.0/8", "access": "rw"}]"#)
        .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "back on the gateway page with vol1 created",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('NFS export vol1 created') >= 0;",
    )
    .await;
    assert!(b.current_url().await.contains("done=created"));
    b.until(
        "the vol1 row of nfs-exports",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='nfs-exports'] tr[data-name='vol1']\");",
    )
    .await;
    let row = b
        .text("table[data-kind='nfs-exports'] tr[data-name='vol1']")
        .await
        .unwrap();
    assert!(row.contains("present") && row.contains("none"), "{row}");
    assert!(
        stub.file().unwrap_or_default().contains("/vol1"),
        "{:?}",
        stub.file()
    );
    let api = c
        .api(
            &http,
            &format!("/v1/instances/{id}/nfs/exports/vol1"),
            &admin,
        )
        .await;
    assert_eq!(api["drift"], json!([]), "{api}");

    // An SMB share on the real smbd, the same way.
    b.click("a[data-new='smb-shares']").await;
    b.until(
        "the new share form",
        TIMEOUT,
        "return !!document.getElementById('f-path');",
    )
    .await;
    b.type_into("#f-name", "docs").await;
    b.type_into("#f-path", &root.join("docs").display().to_string())
        .await;
    b.type_into("#f-comment", "Documents").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the share created",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('SMB share docs created') >= 0;",
    )
    .await;
    b.until(
        "the docs row of smb-shares",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='smb-shares'] tr[data-name='docs']\");",
    )
    .await;
    let row = b
        .text("table[data-kind='smb-shares'] tr[data-name='docs']")
        .await
        .unwrap();
    assert!(row.contains("present") && row.contains("none"), "{row}");
    assert!(
        smbd.net_conf(&["showshare", "docs"])
            .stdout
            .contains("Documents"),
        "smbd's registry lacks the share"
    );
    // Changed through its form, filled with what the agent holds: the name fixed.
    b.click("table[data-kind='smb-shares'] tr[data-name='docs'] a[href$='/edit']")
        .await;
    b.until(
        "the change form",
        TIMEOUT,
        "var n = document.getElementById('f-name'); return !!n && n.readOnly && n.value === 'docs';",
    )
    .await;
    assert_eq!(
        b.run("return document.getElementById('f-comment').value;")
            .await,
        "Documents"
    );
    b.run("document.getElementById('f-comment').value = ''; return true;")
        .await;
    b.type_into("#f-comment", "Shared documents").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the share updated",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('SMB share docs updated') >= 0;",
    )
    .await;
    b.until(
        "the docs row of smb-shares",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='smb-shares'] tr[data-name='docs']\");",
    )
    .await;
    assert!(
        smbd.net_conf(&["showshare", "docs"])
            .stdout
            .contains("Shared documents"),
        "smbd's registry lacks the new comment"
    );
    b.run("document.getElementById('h-res').scrollIntoView(); return true;")
        .await;
    b.screenshot("gateway-resources").await;

    // A path that does not exist: the agent's INVALID_PARAMS next to the path field, the
    // values kept, nothing created.
    b.click("a[data-new='nfs-exports']").await;
    b.until(
        "the new export form",
        TIMEOUT,
        "return !!document.getElementById('f-path');",
    )
    .await;
    let missing = root.join("nope").display().to_string();
    b.type_into("#f-name", "vol2").await;
    b.type_into("#f-path", &missing).await;
    b.type_into("#f-clients", r#"[{"match": "10.0.0.0/8"}]"#)
        .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the error next to the path field",
        Duration::from_secs(40),
        "return !!document.querySelector(\".field[data-field='path'] .error-text\");",
    )
    .await;
    let err = b
        .text(".field[data-field='path'] .error-text")
        .await
        .unwrap();
    assert!(err.contains("does not exist"), "{err}");
    assert!(b
        .text(".field[data-field='name'] .error-text")
        .await
        .is_none());
    assert!(b.text("#form-error").await.is_none());
    assert_eq!(
        b.run("return document.getElementById('f-path').value;")
            .await,
        Value::from(missing.clone())
    );
    assert_eq!(
        b.run("return document.getElementById('f-path').getAttribute('aria-invalid');")
            .await,
        "true"
    );
    b.screenshot("gateway-form-error").await;
    // A member the form does not have (a key inside the clients' JSON) goes next to the
    // field that holds it; JSON that does not read is refused before anything is sent.
    b.run("document.getElementById('f-path').value = ''; return true;")
        .await;
    b.type_into("#f-path", &root.join("vol1").display().to_string())
        .await;
    b.run("document.getElementById('f-clients').value = '[{oops'; return true;")
        .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the JSON error next to clients",
        TIMEOUT,
        "var e = document.querySelector(\".field[data-field='clients'] .error-text\"); return !!e && e.textContent.indexOf('not JSON') === 0;",
    )
    .await;
    // A member no field of the form holds (a misspelt key inside the clients' JSON): the
    // message above the form, the fields unmarked.
    b.run("document.getElementById('f-clients').value = ''; return true;")
        .await;
    b.type_into("#f-clients", r#"[{"match": "10.0.0.0/8", "mode": "rw"}]"#)
        .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the unknown member above the form",
        TIMEOUT,
        "var e = document.getElementById('form-error'); return !!e && e.textContent.indexOf('mode') >= 0;",
    )
    .await;
    assert!(b.text(".field .error-text").await.is_none());
    b.phone(Some((390, 844))).await;
    b.screenshot("gateway-form-phone").await;
    b.phone(None).await;
    let list = c
        .api(&http, &format!("/v1/instances/{id}/nfs/exports"), &admin)
        .await;
    assert_eq!(list["exports"].as_array().unwrap().len(), 1, "{list}");

    // Deleting asks first: without the box ticked nothing happens; ticked, it is gone.
    b.goto(&page).await;
    b.until(
        "the vol1 row of nfs-exports",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='nfs-exports'] tr[data-name='vol1']\");",
    )
    .await;
    b.click("table[data-kind='nfs-exports'] tr[data-name='vol1'] a[href$='/delete']")
        .await;
    b.until(
        "the confirmation",
        TIMEOUT,
        "return !!document.getElementById('confirm');",
    )
    .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "asked to tick the box",
        TIMEOUT,
        "var e = document.querySelector('.flash.bad'); return !!e && e.textContent.indexOf('Tick the box') >= 0;",
    )
    .await;
    let list = c
        .api(&http, &format!("/v1/instances/{id}/nfs/exports"), &admin)
        .await;
    assert_eq!(list["exports"].as_array().unwrap().len(), 1, "{list}");
    b.click("#confirm").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "vol1 deleted",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('NFS export vol1 deleted') >= 0;",
    )
    .await;
    b.until(
        "the resources loaded",
        TIMEOUT,
        "return !!document.getElementById('h-nfs-exports');",
    )
    .await;
    assert!(b
        .text("table[data-kind='nfs-exports'] tr[data-name='vol1']")
        .await
        .is_none());
    let list = c
        .api(&http, &format!("/v1/instances/{id}/nfs/exports"), &admin)
        .await;
    assert_eq!(list["exports"], json!([]), "{list}");

    // A form sent without the session's CSRF token (another site's, say) is refused and
    // sends nothing; a deletion too.
    let forged = format!(
        "mode=create&f.name=vol9&f.path={}&f.clients=%5B%7B%22match%22%3A%2210.0.0.0%2F8%22%7D%5D",
        root.join("vol1").display()
    );
    let path = format!("/ui/gateways/{id}/resources/nfs-exports");
    assert_eq!(forged_post(&b, &path, &forged).await, 403);
    let path = format!("/ui/gateways/{id}/resources/smb-shares/docs/delete");
    assert_eq!(forged_post(&b, &path, "confirm=yes").await, 403);
    let list = c
        .api(&http, &format!("/v1/instances/{id}/nfs/exports"), &admin)
        .await;
    assert_eq!(list["exports"], json!([]), "{list}");
    let shares = c
        .api(&http, &format!("/v1/instances/{id}/smb/shares"), &admin)
        .await;
    assert_eq!(
        shares["shares"].as_array().map(Vec::len),
        Some(1),
        "{shares}"
    );

    // The chart opens with the heartbeats before the page was loaded (the store keeps a
    // gateway's last 60; this agent has sent one a second all along), in time order, and
    // gains a point per heartbeat while the page is open.
    b.goto(&page).await;
    let given = b
        .run("return JSON.parse(document.getElementById('host-chart').getAttribute('data-points-json'));")
        .await;
    let given = given.as_array().unwrap();
    assert!(given.len() >= 5, "{given:?}");
    assert!(given.len() <= 60, "{}", given.len());
    let times: Vec<u64> = given.iter().map(|p| p["ts_ms"].as_u64().unwrap()).collect();
    // Whole seconds: two heartbeats may share one.
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(given
        .iter()
        .all(|p| (0.0..=100.0).contains(&p["cpu_pct"].as_f64().unwrap())));
    let points = b
        .run("return document.querySelector('#host-chart polyline.cpu').getAttribute('points');")
        .await;
    assert!(
        points.as_str().unwrap().split(' ').count() >= given.len(),
        "{points}"
    );
    // The caption says how many (the script may have added the newest by now) and when.
    let span = b.text("#chart-span").await.unwrap();
    let said: usize = span
        .split_once(" heartbeats, ")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (given.len()..=given.len() + 2).contains(&said) && span.ends_with(" UTC"),
        "{span}"
    );
    b.until(
        "a point more on the chart",
        Duration::from_secs(20),
        &format!(
            "var s = document.getElementById('host-chart'); return parseInt(s.getAttribute('data-points') || '0', 10) > {};",
            given.len().min(59)
        ),
    )
    .await;
    b.screenshot("gateway-chart").await;

    // Without JavaScript the gateway page links to the resources' own page.
    b.goto(&format!("{page}/resources")).await;
    assert_eq!(b.text("h1").await.as_deref(), Some("gw-forms-1: resources"));
    assert!(b
        .text("table[data-kind='smb-shares'] tr[data-name='docs']")
        .await
        .is_some());

    // The changes are audited as the web's, with the operator's name.
    let audit = c.api(&http, "/v1/audit?limit=100", &admin).await;
    let actions: Vec<String> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["token_name"] == "forms-operator")
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    for a in ["web.resource.create", "web.resource.delete"] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
    b.close().await;
}

/// Sets a form field's value in the page (clearing what the form had).
async fn set_field(b: &Browser, css: &str, value: &str) {
    let script = format!(
        "var e = document.querySelector({}); e.value = {}; return true;",
        Value::from(css),
        Value::from(value)
    );
    assert_eq!(b.run(&script).await, Value::Bool(true));
}

/// The integer in the first element matching `css`.
async fn number(b: &Browser, css: &str) -> u64 {
    b.text(css)
        .await
        .unwrap_or_else(|| panic!("no {css}"))
        .parse()
        .unwrap()
}

/// Jobs from the fleet page's filter: a dry run naming the three gateways, then the job,
/// followed to its end on the open page without a reload; a slow one cancelled; the jobs list;
/// the audit page (the actions listed; refused to a token without the `audit` scope, with no
/// link to it); a `read` token without any job form, its forged POSTs refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_start_from_the_fleet_filter_run_live_cancel_and_reach_the_audit_page() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("job-operator", "operate");
    let reader = c.token("job-reader", "read");
    let admin = c.token("job-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;
    let mut agents: Vec<Agent> = ["gw-job-1", "gw-job-2", "gw-job-3"]
        .iter()
        .map(|id| {
            let mut cfg = AgentConfig::new(id, &broker.url());
            cfg.heartbeat_interval_s = 1;
            Agent::spawn(&cfg)
        })
        .collect();
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        if page["items"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "three agents never online: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    // An operate token has no audit link, and the page refuses it.
    assert!(b.text("nav a[href='/ui/audit']").await.is_none());
    b.goto(&c.url("/ui/audit")).await;
    let refusal = b.text("main").await.unwrap();
    assert!(refusal.contains("audit scope"), "{refusal}");

    // From the fleet's filter to a dry run naming the three, then the job.
    b.goto(&c.url("/ui/?presence=online")).await;
    assert_eq!(
        b.text("#run-job").await.as_deref(),
        Some("Run a method on these 3 gateways")
    );
    b.screenshot("jobs-fleet-run").await;
    b.click("#run-job").await;
    b.until(
        "the new-job form",
        TIMEOUT,
        "return location.pathname === '/ui/jobs/new' && !!document.getElementById('dry-run');",
    )
    .await;
    // Bad params: said next to the field, nothing started.
    set_field(&b, "#params", "[1, 2]").await;
    b.click("#dry-run").await;
    b.until(
        "the params' error next to the field",
        TIMEOUT,
        "var e = document.getElementById('err-params'); return !!e && e.textContent.indexOf('JSON object') >= 0;",
    )
    .await;
    assert!(b
        .text("main > p:nth-of-type(2)")
        .await
        .unwrap()
        .contains("gateways with presence online"));
    b.screenshot("job-new-error").await;
    set_field(&b, "#params", "{}").await;
    // 30 a minute: one every 2 s, so the page is open while it runs.
    set_field(&b, "#rate", "30").await;
    b.click("#dry-run").await;
    b.until(
        "the dry run's count",
        TIMEOUT,
        "var e = document.getElementById('preview-count'); return !!e && e.textContent === '3';",
    )
    .await;
    let names = b
        .run("return Array.from(document.querySelectorAll('ul.names li')).map(e => e.textContent).join(',');")
        .await;
    assert_eq!(names, "gw-job-1,gw-job-2,gw-job-3");
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    assert_eq!(
        jobs["items"].as_array().unwrap().len(),
        0,
        "a dry run stores nothing"
    );
    b.screenshot("job-dry-run").await;
    b.click("#confirm").await;
    b.until(
        "the job's page",
        TIMEOUT,
        "return location.pathname.indexOf('/ui/jobs/') === 0 && !!document.querySelector('[data-job-page]');",
    )
    .await;
    let job_url = b.current_url().await;
    // Marked: a reload would lose the mark.
    b.run("window.__stay = 1; return true;").await;
    let done_at_load = number(&b, "#c-done").await;
    assert!(done_at_load < 3, "the job ended before its page was open");
    b.screenshot("job-running").await;
    let took = b
        .until(
            "the job succeeded on the open page",
            Duration::from_secs(30),
            "return document.getElementById('job-state').textContent === 'succeeded' \
             && document.getElementById('c-succeeded').textContent === '3' \
             && document.querySelectorAll('#execs .x-succeeded').length === 3 \
             && document.getElementById('job-progress').value === 100;",
        )
        .await;
    assert_eq!(
        b.run("return window.__stay === 1;").await,
        Value::Bool(true),
        "the page reloaded"
    );
    eprintln!(
        "the job finished on the open page {} ms after it opened",
        took.as_millis()
    );
    b.screenshot("job-succeeded").await;

    // A slow one (1 a minute: one gateway now, the others a minute apart), cancelled.
    b.goto(&c.url("/ui/jobs/new?presence=online")).await;
    set_field(&b, "#rate", "1").await;
    b.click("#dry-run").await;
    b.until(
        "the second dry run",
        TIMEOUT,
        "return !!document.getElementById('confirm');",
    )
    .await;
    b.click("#confirm").await;
    b.until(
        "the slow job's page with its cancel button",
        TIMEOUT,
        "return !!document.querySelector('[data-job-page]') && !!document.getElementById('cancel') \
         && document.body.hasAttribute('data-job-read');",
    )
    .await;
    let slow_url = b.current_url().await;
    assert_ne!(slow_url, job_url);
    b.click("#cancel").await;
    b.until(
        "the slow job cancelled",
        TIMEOUT,
        "return document.getElementById('job-state').textContent === 'cancelled' \
         && parseInt(document.getElementById('c-cancelled').textContent, 10) >= 2 \
         && !document.getElementById('cancel');",
    )
    .await;
    b.screenshot("job-cancelled").await;
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    let states: Vec<&str> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cancelled", "succeeded"], "{jobs}");

    b.goto(&c.url("/ui/jobs")).await;
    assert_eq!(
        b.run("return document.querySelectorAll('tr[data-job]').length;")
            .await,
        json!(2)
    );
    b.screenshot("jobs-list").await;
    b.goto(&c.url("/ui/jobs?state=cancelled")).await;
    assert_eq!(
        b.run("return document.querySelectorAll('tr[data-job]').length;")
            .await,
        json!(1)
    );
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "signed out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;

    // The audit page, for a token with the audit scope (admin holds it).
    sign_in(&b, &c, &admin).await;
    assert!(b.text("nav a[href='/ui/audit']").await.is_some());
    b.click("nav a[href='/ui/audit']").await;
    b.until(
        "the audit page",
        TIMEOUT,
        "return location.pathname === '/ui/audit' && !!document.querySelector('table.audit');",
    )
    .await;
    b.screenshot("audit").await;
    for (action, n) in [("job.create", 2), ("job.cancel", 1), ("web.signin", 1)] {
        b.goto(&c.url(&format!("/ui/audit?action={action}&token=job-operator")))
            .await;
        let rows = b
            .run(&format!(
                "return document.querySelectorAll('tr[data-action=\"{action}\"]').length;"
            ))
            .await;
        assert_eq!(rows, json!(n), "{action}");
    }
    // A time range: everything so far is before now.
    b.goto(&c.url("/ui/audit?since=2099-01-01T00:00")).await;
    assert!(b.text(".empty").await.unwrap().contains("No audit event"));
    b.goto(&c.url("/ui/audit?until=yesterday")).await;
    assert!(b.text(".flash.bad").await.unwrap().contains("UTC"));
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "signed out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;

    // A read token: no job form anywhere, and its forged POSTs refused.
    sign_in(&b, &c, &reader).await;
    b.goto(&c.url("/ui/?presence=online")).await;
    assert!(b.text("#run-job").await.is_none());
    b.goto(&slow_url).await;
    assert!(b.text("form[action$='/cancel']").await.is_none());
    b.goto(&job_url).await;
    assert!(b.text("form[action$='/retry-failed']").await.is_none());
    let csrf = csrf_on_page(&b).await;
    let job_id = job_url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let body = format!(
        "csrf={csrf}&step=start&method=sys.ping&params=%7B%7D&rate=60&in_flight=1&timeout_s=30"
    );
    assert_eq!(forged_post(&b, "/ui/jobs", &body).await, 403);
    assert_eq!(
        forged_post(
            &b,
            &format!("/ui/jobs/{job_id}/cancel"),
            &format!("csrf={csrf}")
        )
        .await,
        403
    );
    b.goto(&c.url("/ui/jobs/new")).await;
    assert!(b.text("main").await.unwrap().contains("operate scope"));
    b.screenshot("job-read-token").await;
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    assert_eq!(
        jobs["items"].as_array().unwrap().len(),
        2,
        "nothing created"
    );
    let refused = c
        .api(&http, "/v1/audit?action=refused&token=job-reader", &admin)
        .await;
    assert!(refused["items"].as_array().unwrap().len() >= 3, "{refused}");

    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// The value of the form field matching `css`.
async fn value_of(b: &Browser, css: &str) -> String {
    let s = format!(
        "var e = document.querySelector({}); return e ? e.value : null;",
        Value::from(css)
    );
    b.run(&s)
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no {css}"))
        .to_owned()
}

/// Rolling a change out over four gateways from the new-job form: the rollout's fields (closed,
/// their defaults said); values the API refuses (a rate of 0, a threshold of 150 %) said next
/// to their fields, kept, nothing created; a method chosen (with JavaScript, and with the
/// "Choose" button) showing one field a member of its params, a required one left empty and a
/// member the protocol refuses said next to their fields; the dry run's wave sizes; the job started with a
/// first wave of one gateway at 100 %, its waves as the API stores them. The first wave's
/// gateway serves no NFS, so `nfs.export.list` fails there and the job pauses: its page says
/// why; a `read` token sees no Resume button and its forged resume is refused; "Resume" runs
/// the rest to the end on the open page, and is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rolls_out_in_waves_pauses_on_a_failed_wave_and_resumes_from_its_page() {
    use csg_e2e::exportfs_stub::ExportfsStub;
    use csg_e2e::StorageDirs;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("wave-operator", "operate");
    let reader = c.token("wave-reader", "read");
    let admin = c.token("wave-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;
    // Four gateways: the first (in id order, so the first wave's) serves no NFS; the other
    // three serve it (the kernel backend over the harness's exportfs stub, as calls_e2e.rs:
    // this kernel has no nfsd).
    let mut kept = Vec::new();
    let mut agents: Vec<Agent> = ["gw-wave-1", "gw-wave-2", "gw-wave-3", "gw-wave-4"]
        .iter()
        .map(|id| {
            let mut cfg = AgentConfig::new(id, &broker.url());
            cfg.heartbeat_interval_s = 1;
            if *id != "gw-wave-1" {
                let dirs = StorageDirs::new();
                let stub = ExportfsStub::new(dirs.base());
                cfg.storage = Some(dirs.section());
                cfg.nfs = Some(stub.nfs_section());
                kept.push((dirs, stub));
            }
            Agent::spawn(&cfg)
        })
        .collect();
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        if page["items"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "four agents never online: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;

    // A method and its members in the form's address (a link, a bookmark): their fields filled.
    b.goto(&c.url("/ui/jobs/new?presence=online&method=nfs.export.delete&f.name=vol1"))
        .await;
    assert_eq!(value_of(&b, "#method").await, "nfs.export.delete");
    assert_eq!(value_of(&b, "#f-name").await, "vol1");

    // The rollout: closed, saying what its empty fields mean.
    b.goto(&c.url("/ui/jobs/new?presence=online")).await;
    assert_eq!(
        b.run("return document.querySelector('#rollout details').open;")
            .await,
        json!(false)
    );
    let summary = b.text("#rollout-summary").await.unwrap();
    assert_eq!(
        summary,
        "600 a minute, at most 10 in flight, 30 s an execution, 3 attempts, deadline in 24 h, \
         no waves, no abort rule"
    );
    b.click("#rollout-summary").await;
    b.until(
        "the rollout open",
        TIMEOUT,
        "return document.querySelector('#rollout details').open && document.getElementById('w1_size').offsetWidth > 0;",
    )
    .await;
    assert_eq!(
        b.run("return document.getElementById('rate').placeholder;")
            .await,
        json!("600")
    );
    b.screenshot("job-rollout").await;

    // Out of the API's range: each said next to its field, the values kept, nothing created.
    b.type_into("#rate", "0").await;
    b.type_into("#w1_size", "1").await;
    b.type_into("#w1_pct", "150").await;
    b.click("#dry-run").await;
    b.until(
        "the refusals next to their fields",
        TIMEOUT,
        "var r = document.getElementById('err-rate'), w = document.getElementById('err-w1_pct'); \
         return !!r && !!w;",
    )
    .await;
    assert_eq!(
        b.text("#err-rate").await.unwrap(),
        "rate_per_minute: 1 to 1000000, got 0"
    );
    assert_eq!(
        b.text("#err-w1_pct").await.unwrap(),
        "waves[0].success_threshold_pct: a percentage, 0 to 100"
    );
    assert_eq!(
        b.run(
            "return [document.getElementById('rate').getAttribute('aria-invalid'), \
               document.getElementById('rate').getAttribute('aria-describedby'), \
               document.querySelector('#rollout details').open];"
        )
        .await,
        json!(["true", "err-rate", true])
    );
    assert_eq!(value_of(&b, "#rate").await, "0");
    assert_eq!(value_of(&b, "#w1_size").await, "1");
    assert_eq!(value_of(&b, "#w1_pct").await, "150");
    assert!(b.text("#err-in_flight").await.is_none());
    assert!(b.text("#preview").await.is_none(), "no dry run answered");
    b.screenshot_page("job-rollout-refused").await;
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    assert_eq!(jobs["items"], json!([]), "nothing created");

    // A method chosen (the select's change, with JavaScript): one field a member of its
    // params, from the protocol's schema; the values typed so far kept.
    assert!(
        b.text("#method-params").await.is_none(),
        "sys.ping takes none"
    );
    assert_eq!(
        b.text("#hint-params").await.as_deref(),
        Some("sys.ping takes no params")
    );
    b.run(
        "var m = document.getElementById('method'); m.value = 'nfs.export.delete'; \
         m.dispatchEvent(new Event('change', {bubbles: true})); return true;",
    )
    .await;
    b.until(
        "nfs.export.delete's fields",
        TIMEOUT,
        "return !!document.querySelector('#method-params [data-field=\"name\"]');",
    )
    .await;
    assert_eq!(
        b.text("#method-params label[for='f-name']").await.unwrap(),
        "name (required)"
    );
    assert_eq!(value_of(&b, "#method").await, "nfs.export.delete");
    assert_eq!(
        value_of(&b, "#rate").await,
        "0",
        "the rollout's values kept"
    );
    assert!(
        b.text("#err-rate").await.is_none(),
        "choosing checks nothing"
    );
    // Its required member left empty: said next to its field, nothing sent.
    set_field(&b, "#rate", "30").await;
    b.click("#dry-run").await;
    b.until(
        "the required member said next to its field",
        TIMEOUT,
        "var e = document.getElementById('e-name'); return !!e && e.textContent === 'required';",
    )
    .await;
    assert!(b.text("#preview").await.is_none());
    // Without JavaScript's help: the "Choose" button.
    set_field(&b, "#method", "nfs.export.list").await;
    b.click("#choose").await;
    b.until(
        "nfs.export.list's fields",
        TIMEOUT,
        "return !!document.getElementById('f-limit') && !!document.getElementById('f-cursor') \
         && !document.getElementById('f-name');",
    )
    .await;
    assert_eq!(
        b.text("[data-field='limit'] .hint").await.as_deref(),
        Some("1 to 1000")
    );
    // A member the protocol refuses: its message next to its field, the values kept.
    set_field(&b, "#f-limit", "5000").await;
    b.click("#dry-run").await;
    b.until(
        "the protocol's refusal next to the limit",
        TIMEOUT,
        "return !!document.getElementById('e-limit');",
    )
    .await;
    assert_eq!(
        b.text("#e-limit").await.unwrap(),
        "nfs.export.list: limit 5000 is out of range; it must be from 1 to 1000"
    );
    assert_eq!(
        b.run("return document.getElementById('f-limit').getAttribute('aria-invalid');")
            .await,
        json!("true")
    );
    assert_eq!(value_of(&b, "#f-limit").await, "5000");
    assert_eq!(value_of(&b, "#w1_pct").await, "150");
    assert!(b.text("#err-w1_pct").await.is_some());
    assert!(b.text("#preview").await.is_none());
    b.screenshot_page("job-method-fields-refused").await;
    // The form with its fields, the rollout open and refusals shown passes the accessibility
    // checks, at 1280 px and at a phone's width.
    assert_eq!(b.violations().await, Vec::<String>::new());
    b.phone(Some((390, 844))).await;
    assert_eq!(
        b.violations().await,
        Vec::<String>::new(),
        "at a phone's width"
    );
    b.screenshot_page("job-method-fields-phone").await;
    b.phone(None).await;
    assert_eq!(c.api(&http, "/v1/jobs", &admin).await["items"], json!([]));

    // A first wave of one gateway at 100 %, 30 a minute: the dry run (Enter in a field: the
    // dry run, not the form's first button, "Choose") says the waves' sizes.
    set_field(&b, "#w1_pct", "100").await;
    set_field(&b, "#f-limit", "").await;
    b.type_into("#f-limit", &format!("10{ENTER}")).await;
    b.until(
        "the dry run's count",
        TIMEOUT,
        "var e = document.getElementById('preview-count'); return !!e && e.textContent === '4';",
    )
    .await;
    let waves = b
        .run("return Array.from(document.querySelectorAll('#preview-waves li')).map(e => e.textContent);")
        .await;
    assert_eq!(
        waves,
        json!([
            "wave 1: 1 gateway, going on at 100 % succeeded",
            "wave 2 (the rest): 3 gateways"
        ])
    );
    assert!(b.text("#err-rate").await.is_none());
    b.screenshot_page("job-rollout-dry-run").await;
    assert_eq!(c.api(&http, "/v1/jobs", &admin).await["items"], json!([]));
    b.click("#confirm").await;
    b.until(
        "the job's page",
        TIMEOUT,
        "return !!document.querySelector('[data-job-page]');",
    )
    .await;
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    let job = &jobs["items"][0];
    assert_eq!(
        job["waves"],
        json!([{"count": 1, "success_threshold_pct": 100}]),
        "{job}"
    );
    assert_eq!(job["rate_per_minute"], 30);
    assert_eq!(job["max_in_flight"], 10);
    assert_eq!(job["execution_timeout_ms"], 30_000);
    assert_eq!(job["abort"], Value::Null);
    assert_eq!(job["params"], json!({"limit": 10}));
    let job_id = job["id"].as_str().unwrap().to_owned();
    let job_url = c.url(&format!("/ui/jobs/{job_id}"));

    // The first wave's gateway has no NFS (UNKNOWN_METHOD: rejected): 0 of 1, below 100 %.
    b.until(
        "the job paused on its page, saying why",
        Duration::from_secs(30),
        "return document.getElementById('job-state').textContent === 'paused' \
         && !!document.getElementById('paused-why') && !!document.getElementById('resume');",
    )
    .await;
    assert_eq!(
        b.text("#paused-why").await.unwrap(),
        "Paused after wave 1 of 2: 0 of 1 succeeded (0 %), below its threshold of 100 %. \
         Resuming sends wave 2 (3 gateways); cancelling stops the job here."
    );
    assert_eq!(b.text("#job-wave").await.unwrap(), "wave 1 of 2");
    assert_eq!(b.text("#resume").await.unwrap(), "Resume with wave 2");
    let waves = b
        .run("return Array.from(document.querySelectorAll('#waves tbody tr')).map(r => Array.from(r.children).map(c => c.textContent.trim()).join('|'));")
        .await;
    assert_eq!(
        waves,
        json!([
            "1|1 gateway|1|100 %|paused|0 of 1 succeeded (0 %)",
            "2|the rest|3|none (the last)|waiting|"
        ])
    );
    let states = b
        .run("return Array.from(document.querySelectorAll('#execs tbody tr')).map(r => r.getAttribute('data-exec') + ':' + r.querySelector('.xstate').textContent);")
        .await;
    assert_eq!(
        states,
        json!([
            "gw-wave-1:rejected",
            "gw-wave-2:queued",
            "gw-wave-3:queued",
            "gw-wave-4:queued"
        ])
    );
    let api_job = c.api(&http, &format!("/v1/jobs/{job_id}"), &admin).await;
    assert_eq!(api_job["state"], "paused");
    assert_eq!(api_job["current_wave"], 0);
    b.screenshot_page("job-paused").await;
    assert_eq!(b.violations().await, Vec::<String>::new());
    b.phone(Some((390, 844))).await;
    assert_eq!(
        b.violations().await,
        Vec::<String>::new(),
        "at a phone's width"
    );
    b.phone(None).await;
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "signed out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;

    // A read token: the paused job and why, no Resume; its forged resume refused.
    sign_in(&b, &c, &reader).await;
    b.goto(&job_url).await;
    assert!(b.text("#paused-why").await.is_some());
    assert!(b.text("#resume").await.is_none());
    assert!(b.text("form[action$='/resume']").await.is_none());
    let csrf = csrf_on_page(&b).await;
    assert_eq!(
        forged_post(
            &b,
            &format!("/ui/jobs/{job_id}/resume"),
            &format!("csrf={csrf}")
        )
        .await,
        403
    );
    b.screenshot("job-paused-read-token").await;
    let api_job = c.api(&http, &format!("/v1/jobs/{job_id}"), &admin).await;
    assert_eq!(
        api_job["state"], "paused",
        "the forged resume changed nothing"
    );
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "signed out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;

    // Resumed: the second wave (30 a minute, so it runs for seconds) to the end, live.
    sign_in(&b, &c, &operator).await;
    b.goto(&job_url).await;
    b.click("#resume").await;
    b.until(
        "the job's page again, resumed",
        TIMEOUT,
        "return !!document.querySelector('[data-job-page]') && location.search.indexOf('flash=resumed') >= 0;",
    )
    .await;
    b.run("window.__stay = 1; return true;").await;
    let done_at_load = number(&b, "#c-done").await;
    assert!(done_at_load < 4, "the job ended before its page was open");
    assert!(b.text("#paused-why").await.is_none());
    assert!(b.text("#resume").await.is_none());
    b.until(
        "the job's end on the open page",
        Duration::from_secs(40),
        "return document.getElementById('job-state').textContent === 'failed' \
         && document.getElementById('c-succeeded').textContent === '3' \
         && document.getElementById('job-wave').textContent === 'wave 2 of 2' \
         && document.querySelectorAll('#execs .x-succeeded').length === 3 \
         && document.querySelector('#waves tr[data-wave=\"2\"] .wstate').textContent === 'done';",
    )
    .await;
    assert_eq!(
        b.run("return window.__stay === 1;").await,
        Value::Bool(true),
        "the page reloaded"
    );
    assert_eq!(
        b.text("#waves tr[data-wave='2'] td:last-child")
            .await
            .unwrap(),
        "3 of 3 succeeded (100 %)"
    );
    b.screenshot_page("job-resumed-ended").await;
    let resumed = c
        .api(
            &http,
            "/v1/audit?action=job.resume&token=wave-operator",
            &admin,
        )
        .await;
    assert_eq!(resumed["items"].as_array().unwrap().len(), 1, "{resumed}");
    assert_eq!(resumed["items"][0]["params"]["job_id"], job_id.as_str());

    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// A token limited to a group, with the operate scope: its fleet filter runs a job over its
/// group's gateways only (the other group's is online too, and not counted), and the job's page
/// shows its progress and its end live, without a reload. Another token of the same group ran a
/// job over the same gateways while the session's stream was open: never announced on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_limited_tokens_job_page_follows_its_job_live_and_no_other_job_is_announced() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let limited = |name: &str| {
        let out = c.command(&[
            "token", "create", "--name", name, "--scope", "operate", "--group", "GID_csg",
        ]);
        out.assert_code(0);
        out.stdout.trim().to_owned()
    };
    let (ours, peer) = (limited("team-op"), limited("team-peer"));
    let admin = c.token("team-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;
    let mut agents: Vec<Agent> = ["gw-team-1", "gw-team-2", "gw-team-3", "gw-else-1"]
        .iter()
        .map(|id| {
            let mut cfg = AgentConfig::new(id, &broker.url());
            cfg.heartbeat_interval_s = 1;
            if id.starts_with("gw-else") {
                cfg.group_id = "GID_else".into();
            }
            Agent::spawn(&cfg)
        })
        .collect();
    let t0 = Instant::now();
    while c.api(&http, "/v1/instances?presence=online", &admin).await["items"]
        .as_array()
        .unwrap()
        .len()
        < 4
    {
        assert!(t0.elapsed() < TIMEOUT, "four agents never online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &ours).await;
    // The session's own stream, read beside the pages (the same cookie, so the same events the
    // pages get), from before the other token's job to after this token's job ended.
    let cookies = b.cmd(reqwest::Method::GET, "/cookie", None).await;
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "csg_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"))["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = reqwest::Client::new()
        .get(c.url("/ui/events"))
        .header("cookie", format!("csg_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = events.chunk().await {
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk));
            }
        })
    };
    let heard = |s: &str| seen.lock().unwrap().contains(s);
    let t0 = Instant::now();
    while !heard(": open") {
        assert!(t0.elapsed() < TIMEOUT, "the session's stream never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The other token's job over the same gateways, run to its end through the API.
    let body = json!({"method": "sys.ping", "params": {}, "target": {"selector": {"group": ["GID_csg"]}},
                      "rate_per_minute": 6000, "max_in_flight": 3, "execution_timeout_ms": 10000});
    let r = http
        .post(c.url("/v1/jobs"))
        .bearer_auth(&peer)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let other: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let other = other["id"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    while c.api(&http, &format!("/v1/jobs/{other}"), &admin).await["state"] != "succeeded" {
        assert!(t0.elapsed() < TIMEOUT, "the other token's job never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // From the fleet's filter: this token's three gateways, not the other group's.
    b.goto(&c.url("/ui/?presence=online")).await;
    assert_eq!(
        b.text("#run-job").await.as_deref(),
        Some("Run a method on these 3 gateways")
    );
    b.click("#run-job").await;
    b.until(
        "the new-job form",
        TIMEOUT,
        "return location.pathname === '/ui/jobs/new' && !!document.getElementById('dry-run');",
    )
    .await;
    // 12 a minute: one every 5 s, so the page is open while it runs.
    set_field(&b, "#rate", "12").await;
    b.click("#dry-run").await;
    b.until(
        "the dry run's count",
        TIMEOUT,
        "var e = document.getElementById('preview-count'); return !!e && e.textContent === '3';",
    )
    .await;
    b.click("#confirm").await;
    b.until(
        "the job's page",
        TIMEOUT,
        "return !!document.querySelector('[data-job-page]') && document.body.hasAttribute('data-job-read');",
    )
    .await;
    let job = b
        .run("return document.querySelector('[data-job-page]').getAttribute('data-job-page');")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    // Marked: a reload would lose the mark.
    b.run("window.__stay = 1; return true;").await;
    let done_at_load = number(&b, "#c-done").await;
    assert!(
        done_at_load < 2,
        "the job went too far before its page was open"
    );
    b.until(
        "the job's progress on the open page",
        Duration::from_secs(30),
        &format!(
            "return document.getElementById('job-state').textContent === 'running' \
             && parseInt(document.getElementById('c-done').textContent, 10) > {done_at_load} \
             && document.getElementById('job-progress').value < 100;"
        ),
    )
    .await;
    b.screenshot("job-group-limited-running").await;
    b.until(
        "the job succeeded on the open page",
        Duration::from_secs(60),
        "return document.getElementById('job-state').textContent === 'succeeded' \
         && document.getElementById('c-succeeded').textContent === '3' \
         && document.querySelectorAll('#execs .x-succeeded').length === 3 \
         && document.getElementById('job-progress').value === 100;",
    )
    .await;
    assert_eq!(
        b.run("return window.__stay === 1;").await,
        Value::Bool(true),
        "the page reloaded"
    );
    b.screenshot("job-group-limited-succeeded").await;

    // The session's stream had this job's events to its end, in the log's order after every
    // event of the other token's job: none of those was on it.
    let end = format!("\"id\":\"{job}\",\"state\":\"succeeded\"");
    let t0 = Instant::now();
    while !heard(&end) {
        assert!(
            t0.elapsed() < TIMEOUT,
            "the job's end never on the session's stream: {}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!heard(&other), "{}", seen.lock().unwrap());
    recorder.abort();
    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// The accessibility checks run in the page (WebDriver's execute/sync): a list of violations,
/// empty when the page passes. Names of inputs and buttons, unique ids, images and SVG named
/// or hidden, one h1, the document's language; the contrast of every visible text against
/// its effective background (WCAG 2's relative luminance; 4.5:1, 3:1 for large text); no
/// sideways scroll of the page and nothing outside the viewport but inside a box that scrolls.
const A11Y_CHECK: &str = r#"
var out = [];
function vis(e) {
  if (e.checkVisibility && !e.checkVisibility({visibilityProperty: true, opacityProperty: true})) { return false; }
  var r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0;
}
function desc(e) {
  var s = e.tagName.toLowerCase();
  if (e.id) { s += '#' + e.id; }
  if (e.getAttribute('name')) { s += '[name=' + e.getAttribute('name') + ']'; }
  if (e.className && typeof e.className === 'string') { s += '.' + e.className.trim().split(/\s+/).join('.'); }
  var t = (e.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 40);
  return t ? s + ' "' + t + '"' : s;
}
function textOf(id) { var e = document.getElementById(id); return e ? e.textContent.trim() : ''; }
function named(e) {
  if ((e.getAttribute('aria-label') || '').trim()) { return true; }
  var lb = e.getAttribute('aria-labelledby');
  if (lb && lb.split(/\s+/).map(textOf).join('')) { return true; }
  if (e.id) {
    var ls = document.querySelectorAll('label[for="' + CSS.escape(e.id) + '"]');
    for (var i = 0; i < ls.length; i++) { if (ls[i].textContent.trim()) { return true; } }
  }
  var p = e.closest('label');
  if (p && p.textContent.trim()) { return true; }
  if (e.tagName === 'BUTTON' && e.textContent.trim()) { return true; }
  if (e.tagName === 'INPUT' && /^(submit|button|reset)$/.test(e.type) && e.value.trim()) { return true; }
  return false;
}
document.querySelectorAll('input:not([type=hidden]), select, textarea, button').forEach(function (e) {
  if (vis(e) && !named(e)) { out.push('no accessible name: ' + desc(e)); }
});
document.querySelectorAll('a[href]').forEach(function (e) {
  if (vis(e) && !e.textContent.trim() && !(e.getAttribute('aria-label') || '').trim()) { out.push('a link without text: ' + desc(e)); }
});
var seen = {};
document.querySelectorAll('[id]').forEach(function (e) {
  if (seen[e.id]) { out.push('duplicate id: ' + e.id); }
  seen[e.id] = true;
});
document.querySelectorAll('img').forEach(function (e) {
  if (!e.hasAttribute('alt') && !e.getAttribute('aria-label') && e.getAttribute('aria-hidden') !== 'true') { out.push('an image without alt: ' + desc(e)); }
});
document.querySelectorAll('svg').forEach(function (e) {
  var hidden = e.getAttribute('aria-hidden') === 'true' || /^(presentation|none)$/.test(e.getAttribute('role') || '');
  var name = (e.getAttribute('aria-label') || '').trim() || (e.getAttribute('aria-labelledby') || '').split(/\s+/).map(textOf).join('');
  if (!hidden && !name) { out.push('an svg neither named nor hidden: ' + desc(e)); }
});
var h1 = Array.prototype.filter.call(document.querySelectorAll('h1'), vis).length;
if (h1 !== 1) { out.push('h1 count ' + h1 + ', not one'); }
if (!(document.documentElement.getAttribute('lang') || '').trim()) { out.push('html has no lang'); }

function rgba(s) {
  var m = /rgba?\(([^)]+)\)/.exec(s);
  if (!m) { return null; }
  var p = m[1].split(/[\s,\/]+/).filter(Boolean).map(parseFloat);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
}
function over(top, under) {
  var a = top[3];
  return [top[0] * a + under[0] * (1 - a), top[1] * a + under[1] * (1 - a), top[2] * a + under[2] * (1 - a), 1];
}
function background(e) {
  var layers = [];
  for (var n = e; n && n.nodeType === 1; n = n.parentElement) {
    var c = rgba(getComputedStyle(n).backgroundColor);
    if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) { break; } }
  }
  var b = [255, 255, 255, 1];
  for (var i = layers.length - 1; i >= 0; i--) { b = over(layers[i], b); }
  return b;
}
function lum(c) {
  var v = [c[0], c[1], c[2]].map(function (x) { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
}
function ratio(a, b) { var x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }
var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
var done = new Set();
for (var t = walker.nextNode(); t; t = walker.nextNode()) {
  var el = t.parentElement;
  if (!el || done.has(el) || !t.textContent.trim() || /^(SCRIPT|STYLE|OPTION|TEMPLATE)$/.test(el.tagName) || !vis(el)) { continue; }
  done.add(el);
  var s = getComputedStyle(el);
  var bg = background(el);
  var fg = over(rgba(s.color) || [0, 0, 0, 1], bg);
  var size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight, 10) >= 700;
  var need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
  var r = ratio(fg, bg);
  if (r < need) { out.push('contrast ' + r.toFixed(2) + ' < ' + need + ': ' + desc(el) + ' (' + s.color + ' on rgb(' + bg.slice(0, 3).map(Math.round).join(', ') + '))'); }
}

var w = window.innerWidth;
if (document.documentElement.scrollWidth > w) { out.push('the page scrolls sideways: ' + document.documentElement.scrollWidth + ' > ' + w); }
document.querySelectorAll('body *').forEach(function (e) {
  if (!vis(e)) { return; }
  var r = e.getBoundingClientRect();
  if (r.width <= 1 && r.height <= 1) { return; }
  if (r.left >= -1 && r.right <= w + 1) { return; }
  for (var p = e.parentElement; p && p !== document.body; p = p.parentElement) {
    if (getComputedStyle(p).overflowX !== 'visible') { return; }
  }
  out.push('outside the viewport (' + Math.round(r.left) + '..' + Math.round(r.right) + ' of ' + w + '): ' + desc(e));
});
return {violations: out, texts: done.size};
"#;

/// What has the keyboard's focus, and whether its focus shows (an outline or a shadow).
const FOCUSED: &str = r#"
var e = document.activeElement;
if (!e || e === document.body) { return {tag: 'body', shown: false}; }
var s = getComputedStyle(e);
var shown = (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || (s.boxShadow && s.boxShadow !== 'none');
return {tag: e.tagName.toLowerCase(), id: e.id, cls: String(e.className || ''), text: (e.textContent || '').trim().slice(0, 60),
        href: e.getAttribute('href'), nav: !!e.closest('nav'), row: !!e.closest('tr[data-gw]'), shown: !!shown};
"#;

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

impl Browser {
    /// Keys pressed and released one after another on whatever has the focus (WebDriver's
    /// actions), as a keyboard user would.
    async fn keys(&self, keys: &str) {
        let mut acts = Vec::new();
        for ch in keys.chars() {
            acts.push(json!({"type": "keyDown", "value": ch.to_string()}));
            acts.push(json!({"type": "keyUp", "value": ch.to_string()}));
        }
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": acts}]})),
        )
        .await;
    }

    /// The whole page, not only the viewport (Chromium's own capture, through CDP).
    async fn screenshot_page(&self, name: &str) {
        use base64::Engine as _;
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                Some(json!({"cmd": "Page.captureScreenshot",
                            "params": {"format": "png", "captureBeyondViewport": true}})),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The page's accessibility violations ([`A11Y_CHECK`]). The check must have seen the
    /// page's text (a check over nothing passes anything).
    async fn violations(&self) -> Vec<String> {
        let v = self.run(A11Y_CHECK).await;
        let texts = v["texts"].as_u64().unwrap();
        assert!(texts >= 5, "the check saw {texts} texts: {v}");
        v["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

/// Notes, under `key` in the page's session storage (kept across the navigation), how the form
/// `css` looked just after it was submitted: its submit buttons disabled, its "Sending…"
/// note, `aria-busy`, and whether a second submit got through. The listener is on the window,
/// so it runs after the page's own (on the document), and looks once their work is done.
async fn watch_submit(b: &Browser, css: &str, key: &str) {
    let script = format!(
        "var f = document.querySelector({css}), key = {key};\
         window.addEventListener('submit', function (ev) {{ if (ev.target !== f) {{ return; }} setTimeout(function () {{\
           var buttons = Array.from(f.querySelectorAll('button[type=submit]')), note = f.querySelector('.sending');\
           var again = false; var watch = function (e) {{ again = !e.defaultPrevented; }};\
           window.addEventListener('submit', watch); f.requestSubmit(); window.removeEventListener('submit', watch);\
           sessionStorage.setItem(key, JSON.stringify({{disabled: buttons.length > 0 && buttons.every(function (x) {{ return x.disabled; }}),\
             note: note ? note.textContent : null, busy: f.getAttribute('aria-busy'), second_sent: again}}));\
         }}, 0); }}, {{once: true}});\
         return !!f;",
        css = Value::from(css),
        key = Value::from(key),
    );
    assert_eq!(b.run(&script).await, Value::Bool(true), "no form {css}");
}

/// What [`watch_submit`] noted under `key`.
async fn submit_seen(b: &Browser, key: &str) -> Value {
    let v = b
        .run(&format!(
            "return sessionStorage.getItem({});",
            Value::from(key)
        ))
        .await;
    serde_json::from_str(v.as_str().expect("the submit was not observed in flight")).unwrap()
}

/// Every page, at 1280 px and at a phone's width, passes the accessibility checks (and a
/// page made to fail them is reported); the keyboard alone signs in, skips to the content,
/// shows its focus and opens a gateway; the gateway's resources say they are loading, and
/// what failed (with the code and whether reading again is safe) when the agent does not
/// answer or the console refuses; a posting form cannot be sent twice and works without
/// JavaScript; "Retry failed" pressed on a job's page runs the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_is_accessible_says_its_states_and_retries_from_the_browser() {
    use csg_e2e::exportfs_stub::ExportfsStub;
    use csg_e2e::StorageDirs;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let admin = c.token("a11y-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    // One agent serving NFS (the kernel backend over the harness's exportfs stub: this
    // kernel has no nfsd), and one plain agent that is later stopped (SIGSTOP): it stays
    // connected, so it looks online, but answers nothing.
    let dirs = StorageDirs::new();
    let stub = ExportfsStub::new(dirs.base());
    let nfs_id = "gw-a11y-nfs";
    let mut cfg = AgentConfig::new(nfs_id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.storage = Some(dirs.section());
    cfg.nfs = Some(stub.nfs_section());
    let _nfs_agent = Agent::spawn(&cfg);
    let slow_id = "gw-a11y-slow";
    let mut cfg = AgentConfig::new(slow_id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    // The broker keeps a stopped client for 1.5 keep-alives: long enough to look online.
    cfg.keep_alive_s = 120;
    let mut slow_agent = Agent::spawn(&cfg);
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        if page["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "agents never online: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let b = Browser::start(c.dir.path()).await;

    // Signing in with the keyboard alone: Tab to the token field, type, Enter.
    b.goto(&c.url("/ui/signin")).await;
    let mut at_token = false;
    for _ in 0..6 {
        if b.run("return document.activeElement && document.activeElement.id === 'token';")
            .await
            == Value::Bool(true)
        {
            at_token = true;
            break;
        }
        b.keys(TAB).await;
    }
    assert!(at_token, "Tab never reached the token field");
    let focus = b.run(FOCUSED).await;
    assert_eq!(
        focus["shown"], true,
        "the token field's focus is not shown: {focus}"
    );
    b.keys(&admin).await;
    b.keys(ENTER).await;
    b.until(
        "the fleet after signing in with the keyboard",
        TIMEOUT,
        "return location.pathname === '/ui/' && !!document.querySelector('h1') && document.querySelector('h1').textContent === 'Fleet';",
    )
    .await;

    // From the page's start: the skip link first, then the navigation; every stop's focus
    // shown, to the first gateway's link, which Enter opens.
    b.goto(&c.url("/ui/")).await;
    b.keys(TAB).await;
    let first = b.run(FOCUSED).await;
    assert_eq!(first["text"], "Skip to content", "{first}");
    assert_eq!(first["shown"], true, "{first}");
    b.keys(TAB).await;
    let second = b.run(FOCUSED).await;
    assert_eq!(
        second["nav"], true,
        "the nav does not follow the skip link: {second}"
    );
    let mut stops = vec![first, second];
    let mut on_row = false;
    for _ in 0..40 {
        b.keys(TAB).await;
        let f = b.run(FOCUSED).await;
        assert_eq!(f["shown"], true, "focus not shown on {f}");
        let row = f["row"] == true && f["tag"] == "a";
        stops.push(f);
        if row {
            on_row = true;
            break;
        }
    }
    assert!(on_row, "Tab never reached a gateway's link: {stops:?}");
    let kinds: std::collections::BTreeSet<String> = stops
        .iter()
        .map(|s| s["tag"].as_str().unwrap().to_owned())
        .collect();
    for tag in ["a", "button", "input", "select"] {
        assert!(
            kinds.contains(tag),
            "no {tag} among the Tab stops: {stops:?}"
        );
    }
    let gw_link = stops.last().unwrap()["href"].as_str().unwrap().to_owned();
    b.keys(ENTER).await;
    b.until(
        "the gateway page opened with Enter",
        TIMEOUT,
        &format!(
            "return location.pathname === {} && !!document.querySelector('h1.gw-title');",
            Value::from(gw_link.split('?').next().unwrap())
        ),
    )
    .await;
    // The skip link moves the focus to the content.
    b.goto(&c.url("/ui/jobs")).await;
    b.keys(TAB).await;
    b.keys(ENTER).await;
    b.keys(TAB).await;
    let inside = b
        .run("return !!document.activeElement.closest('main');")
        .await;
    assert_eq!(
        inside, true,
        "Tab after the skip link is not in the content"
    );

    // A job with a failure: `nfs.export.get` of an export that does not exist yet is the
    // agent's NOT_FOUND (failed, not retried).
    b.goto(&c.url(&format!("/ui/jobs/new?q={nfs_id}"))).await;
    set_field(&b, "#method", "nfs.export.get").await;
    set_field(&b, "#params", r#"{"name": "vol-a11y"}"#).await;
    b.click("#dry-run").await;
    b.until(
        "the dry run",
        TIMEOUT,
        "var e = document.getElementById('preview-count'); return !!e && e.textContent === '1';",
    )
    .await;
    // Starting it: the form's buttons disabled while the post is out; a second submit (a
    // double click) starts nothing more.
    watch_submit(&b, "form.job-form", "start").await;
    b.click("#confirm").await;
    let t0 = Instant::now();
    while b.run("var s = document.getElementById('job-state'); return !!s && ['failed', 'succeeded'].indexOf(s.textContent) >= 0;").await != Value::Bool(true) {
        if t0.elapsed() > Duration::from_secs(30) {
            let jobs = c.api(&http, "/v1/jobs", &admin).await;
            panic!("never ended: {jobs}\n{}", b.text("main").await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let main = b.text("main").await.unwrap();
    assert!(
        b.text("#job-state").await.as_deref() == Some("failed") && b.text("#retry").await.is_some(),
        "{main}"
    );
    let failed_job = b.current_url().await;
    assert_eq!(
        submit_seen(&b, "start").await,
        json!({"disabled": true, "note": "Sending…", "busy": "true", "second_sent": false})
    );
    let jobs = c.api(&http, "/v1/jobs", &admin).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1, "{jobs}");

    // The pages checked: each at 1280 px, then at a phone's width.
    let nfs_page = c.url(&format!("/ui/gateways/{nfs_id}"));
    let pages: Vec<(&str, String)> = vec![
        ("fleet", c.url("/ui/")),
        ("gateway", nfs_page.clone()),
        (
            "gateway-new",
            c.url(&format!("/ui/gateways/{nfs_id}/resources/nfs-exports/new")),
        ),
        (
            "gateway-delete",
            c.url(&format!(
                "/ui/gateways/{nfs_id}/resources/nfs-exports/vol-a11y/delete"
            )),
        ),
        ("jobs", c.url("/ui/jobs")),
        ("job-new", c.url("/ui/jobs/new?presence=online")),
        ("job", failed_job.clone()),
        ("audit", c.url("/ui/audit")),
        ("error", c.url("/ui/gateways/gw-never-seen")),
    ];
    let mut report = Vec::new();
    for (width, size) in [("1280", None), ("phone", Some((375, 812)))] {
        b.phone(size).await;
        for (name, url) in &pages {
            b.goto(url).await;
            if *name == "gateway" {
                b.until(
                    "the resources loaded",
                    Duration::from_secs(15),
                    "return !!document.getElementById('h-nfs-exports');",
                )
                .await;
            }
            let v = b.violations().await;
            if !v.is_empty() {
                report.push(format!("{name} at {width}:\n  {}", v.join("\n  ")));
            }
            b.screenshot_page(&format!("a11y-{name}-{width}")).await;
        }
    }
    // Sign-in, signed out (at the phone's width still, then at 1280 px).
    b.goto(&c.url("/ui/jobs")).await;
    b.click("form[action='/ui/signout'] button").await;
    b.until(
        "signed out",
        TIMEOUT,
        "return location.pathname === '/ui/signin';",
    )
    .await;
    for (width, size) in [("phone", Some((375, 812))), ("1280", None)] {
        b.phone(size).await;
        b.goto(&c.url("/ui/signin")).await;
        let v = b.violations().await;
        if !v.is_empty() {
            report.push(format!("signin at {width}:\n  {}", v.join("\n  ")));
        }
        b.screenshot_page(&format!("a11y-signin-{width}")).await;
    }
    assert!(
        report.is_empty(),
        "accessibility violations:\n{}",
        report.join("\n")
    );

    // The checks can fail: a page given an unlabelled input, a duplicate id, faint text, a
    // second h1 and a box wider than the screen reports each.
    b.run(
        "var m = document.querySelector('main');\
         var i = document.createElement('input'); i.id = 'bad-input'; m.appendChild(i);\
         var p = document.createElement('p'); p.id = 'bad-twice'; p.textContent = 'faint text'; p.style.color = '#aaaaaa'; m.appendChild(p);\
         m.appendChild(p.cloneNode(true));\
         var h = document.createElement('h1'); h.textContent = 'A second title'; m.appendChild(h);\
         var d = document.createElement('div'); d.textContent = 'too wide'; d.style.width = '3000px'; m.appendChild(d);\
         return true;",
    )
    .await;
    let v = b.violations().await;
    for expected in [
        "no accessible name: input#bad-input",
        "duplicate id: bad-twice",
        "contrast 2.32 < 4.5: p#bad-twice",
        "h1 count 2",
        "the page scrolls sideways",
        "outside the viewport",
    ] {
        assert!(
            v.iter().any(|x| x.contains(expected)),
            "the check missed {expected:?}: {v:?}"
        );
    }
    sign_in(&b, &c, &admin).await;

    // A form refused for its fields (the required ones left empty): the messages next to
    // them pass the checks too, at both widths.
    b.goto(&c.url(&format!("/ui/gateways/{nfs_id}/resources/nfs-exports/new")))
        .await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the fields' errors",
        TIMEOUT,
        "return document.querySelectorAll('.field .error-text').length >= 2;",
    )
    .await;
    for (width, size) in [("phone", Some((375, 812))), ("1280", None)] {
        b.phone(size).await;
        let v = b.violations().await;
        assert!(v.is_empty(), "the form's errors at {width}: {v:?}");
        b.screenshot_page(&format!("a11y-gateway-form-error-{width}"))
            .await;
    }

    // A form that posts: its button disabled and "Sending…" while the post is out (the
    // stub's reexport made slow), a second submit stopped; one create reaches the console.
    stub.set_reexport_delay(Duration::from_secs(2));
    b.goto(&c.url(&format!("/ui/gateways/{nfs_id}/resources/nfs-exports/new")))
        .await;
    b.type_into("#f-name", "vol-a11y").await;
    b.type_into(
        "#f-path",
        &dirs.root().join("vol-a11y").display().to_string(),
    )
    .await;
    b.type_into("#f-clients", r#"[{"match": "10.0.0.0/8", "access": "rw"}]"#)
        .await;
    std::fs::create_dir_all(dirs.root().join("vol-a11y")).unwrap();
    watch_submit(&b, "form.resource", "create").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "vol-a11y created",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('NFS export vol-a11y created') >= 0;",
    )
    .await;
    assert_eq!(
        submit_seen(&b, "create").await,
        json!({"disabled": true, "note": "Sending…", "busy": "true", "second_sent": false})
    );
    stub.set_reexport_delay(Duration::ZERO);
    let creates = c
        .api(&http, "/v1/audit?action=web.resource.create", &admin)
        .await;
    assert_eq!(
        creates["items"].as_array().unwrap().len(),
        1,
        "one create for one press: {creates}"
    );

    // "Retry the 1 failed" pressed on the job's page, now that the export exists: the child
    // job's page opens and its execution runs to success.
    b.goto(&failed_job).await;
    // Once live, the page reads itself again (it may have been rendered before the stream
    // opened); the button is pressed after that.
    b.until(
        "the job's page live and read again",
        TIMEOUT,
        "return document.body.hasAttribute('data-job-read');",
    )
    .await;
    assert_eq!(
        b.text("#retry").await.as_deref(),
        Some("Retry the 1 failed")
    );
    b.click("#retry").await;
    b.until(
        "the retry's page, its execution succeeded",
        Duration::from_secs(30),
        "var s = document.getElementById('job-state'); return !!s && location.href !== '' && s.textContent === 'succeeded' \
         && document.getElementById('c-succeeded').textContent === '1' \
         && document.querySelectorAll('#execs .x-succeeded').length === 1;",
    )
    .await;
    let child = b.current_url().await;
    assert_ne!(child, failed_job);
    let parent_id = failed_job
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(
        b.run(&format!(
            "return !!document.querySelector(\"a[href='/ui/jobs/{parent_id}']\");"
        ))
        .await,
        Value::Bool(true),
        "the child does not name its parent"
    );
    b.screenshot("job-retried").await;

    // Without JavaScript a form still posts: the deletion, confirmed, with scripts off.
    b.goto(&c.url(&format!(
        "/ui/gateways/{nfs_id}/resources/nfs-exports/vol-a11y/delete"
    )))
    .await;
    b.cmd(
        reqwest::Method::POST,
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setScriptExecutionDisabled", "params": {"value": true}})),
    )
    .await;
    b.click("#confirm").await;
    b.click("form.resource button[type=submit]").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.cmd(
        reqwest::Method::POST,
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setScriptExecutionDisabled", "params": {"value": false}})),
    )
    .await;
    b.until(
        "vol-a11y deleted without JavaScript",
        Duration::from_secs(20),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('NFS export vol-a11y deleted') >= 0;",
    )
    .await;

    // The slow gateway: stopped, it looks online but answers nothing. Its page says the
    // resources are being read (busy), then, at the call path's deadline, what failed.
    slow_agent.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    b.goto(&c.url(&format!("/ui/gateways/{slow_id}"))).await;
    b.until(
        "the resources loading",
        TIMEOUT,
        "var r = document.getElementById('resources'); return !!r && r.getAttribute('aria-busy') === 'true' && r.textContent.indexOf('Reading from the agent') >= 0;",
    )
    .await;
    let v = b.violations().await;
    assert!(v.is_empty(), "the read in flight: {v:?}");
    b.screenshot("a11y-gateway-loading").await;
    b.until(
        "the resources' failure said",
        Duration::from_secs(25),
        "var r = document.getElementById('res-error'); return !!r && r.closest('[aria-busy=true]') === null;",
    )
    .await;
    let took = t0.elapsed();
    let said = b.text("#res-error").await.unwrap();
    assert!(
        said.contains("(code ")
            && said.contains("Reading again is safe")
            && said.contains("may succeed"),
        "{said}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("the stopped agent's resources failed on the page after {took:?}: {said}");
    let v = b.violations().await;
    assert!(v.is_empty(), "the failed read: {v:?}");
    b.screenshot("a11y-gateway-timeout").await;
    slow_agent.signal(Signal::SIGKILL);
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=offline", &admin).await;
        if page["items"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(200),
            "never offline: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The console refusing the read (the gateway offline now: 503): the section says the
    // status, the console's reason and whether a retry is safe, never loading for ever. The
    // section is added to an open page as the gateway page has it, pointed at the offline
    // gateway, since a page is not offered the read of an offline gateway.
    b.goto(&nfs_page).await;
    b.until(
        "the page ready",
        TIMEOUT,
        "return !!window.htmx && !!document.getElementById('h-nfs-exports');",
    )
    .await;
    b.run(&format!(
        "var d = document.createElement('div'); d.id = 'probe'; d.setAttribute('data-loading', 'Reading from the agent…');\
         d.setAttribute('hx-get', '/ui/gateways/{slow_id}/resources'); d.setAttribute('hx-trigger', 'load');\
         var r = document.getElementById('resources'); r.parentNode.insertBefore(d, r); htmx.process(d); d.scrollIntoView(); return true;"
    ))
    .await;
    b.until(
        "the refusal said in place",
        TIMEOUT,
        "var d = document.getElementById('probe'); return !!d && d.getAttribute('aria-busy') === 'false' && !!d.querySelector('[role=alert]');",
    )
    .await;
    let said = b.text("#probe").await.unwrap();
    assert!(
        said.contains("503") && said.contains("offline") && said.contains("etry"),
        "{said}"
    );
    let v = b.violations().await;
    assert!(v.is_empty(), "the refused read: {v:?}");
    b.screenshot("a11y-gateway-refused").await;

    b.close().await;
}

/// The instance ids in the fleet table, top to bottom.
async fn table_ids(b: &Browser) -> Vec<String> {
    let v = b
        .run("return Array.from(document.querySelectorAll('table.gateways tbody th a')).map(a => a.textContent.trim());")
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Clicks the header link of a column and waits for the table sorted that way.
async fn sort_by(b: &Browser, label: &str, state: &str) {
    let script = format!(
        "return Array.from(document.querySelectorAll('table.gateways thead th')).find(th => th.textContent.trim().startsWith({l}));",
        l = Value::from(label)
    );
    let th = b.run(&script).await;
    let e = th[ELEMENT]
        .as_str()
        .unwrap_or_else(|| panic!("no header {label}"));
    let link = b
        .cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/element"),
            Some(json!({"using": "css selector", "value": "a"})),
        )
        .await;
    let link = link[ELEMENT].as_str().unwrap().to_owned();
    b.cmd(
        reqwest::Method::POST,
        &format!("/element/{link}/click"),
        Some(json!({})),
    )
    .await;
    b.until(
        &format!("the table sorted by {label}, {state}"),
        TIMEOUT,
        &format!(
            "return Array.from(document.querySelectorAll('table.gateways thead th')).some(th => th.textContent.trim().startsWith({l}) && th.getAttribute('aria-sort') === {s});",
            l = Value::from(label),
            s = Value::from(state)
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_table_sorts_by_its_columns_pages_in_that_order_and_keeps_it_when_filtered() {
    use csg_consoled::store::{self, InstanceRow, Presence, Region, StorageSummary};
    use csg_protocol::identity::{GroupId, InstanceId};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let reader = c.token("web-sort", "read");
    // 150 gateways known from before, offline, each with its own time of going offline, a
    // version (or none), a drift and a group; one real agent online besides.
    let rows: Vec<InstanceRow> = (0..150i64)
        .map(|i| InstanceRow {
            region: Region::new("default").unwrap(),
            instance_id: InstanceId::new(format!("gw-sort-{i:03}")).unwrap(),
            group_id: GroupId::new(format!("GID_g{}", i % 3)).unwrap(),
            presence: Presence::Offline,
            since_ms: 1_764_000_000_000 + ((i * 37) % 150) * 1000,
            reason: Some("went away".into()),
            last_seen_ms: Some(1_764_000_000_000),
            agent_version: match i % 3 {
                0 => Some("0.1.0".into()),
                1 => Some("0.2.0".into()),
                _ => None,
            },
            heartbeat: None,
            storage: Some(StorageSummary {
                count: 2,
                drift: if i % 7 == 0 { (i % 4 + 1) as u64 } else { 0 },
            }),
            updated_ms: 1,
            sample: None,
        })
        .collect();
    let db = c.dir.path().join("state/console.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let st = store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    st.upsert_instances(&rows).await.unwrap();
    st.close().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;
    let mut cfg = AgentConfig::new("gw-sort-live", &broker.url());
    cfg.heartbeat_interval_s = 1;
    let _agent = Agent::spawn(&cfg);
    let t0 = Instant::now();
    while c.api(&http, "/v1/instances?presence=online", &reader).await["items"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(t0.elapsed() < TIMEOUT, "the agent never online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The expected orders, from the rows as written (ties by region, then id).
    let ids_by = |key: &dyn Fn(&InstanceRow) -> (i64, String), rev: bool| -> Vec<String> {
        let mut v: Vec<&InstanceRow> = rows.iter().collect();
        v.sort_by_key(|r| (key(r), r.instance_id.to_string()));
        if rev {
            v.reverse();
        }
        v.iter().map(|r| r.instance_id.to_string()).collect()
    };
    let since_asc = ids_by(&|r| (r.since_ms, String::new()), false);
    let since_desc = ids_by(&|r| (r.since_ms, String::new()), true);

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &reader).await;
    // By region and id at first; the live agent's id sorts after the seeded ones.
    let ids = table_ids(&b).await;
    assert_eq!(ids.len(), 100);
    assert_eq!(ids[0], "gw-sort-000");
    assert_eq!(
        b.run(
            "return document.querySelector('table.gateways thead th').getAttribute('aria-sort');"
        )
        .await,
        "ascending"
    );

    // Since, ascending (the first click), then descending; the second page goes on in order.
    sort_by(&b, "Since", "ascending").await;
    assert!(
        b.current_url().await.contains("sort=since"),
        "{}",
        b.current_url().await
    );
    let ids = table_ids(&b).await;
    // The live agent changed presence now: it comes last in ascending order.
    assert_eq!(ids[..], since_asc[..100]);
    sort_by(&b, "Since", "descending").await;
    let ids = table_ids(&b).await;
    assert_eq!(ids[0], "gw-sort-live", "the newest change first");
    assert_eq!(ids[1..], since_desc[..99]);
    // The table came in by htmx; the page's stream goes on, and its caption says so.
    b.until(
        "the swapped table's caption saying the page is live",
        TIMEOUT,
        "var e = document.getElementById('live'); return !!e && e.textContent === 'live';",
    )
    .await;
    b.screenshot("fleet-sorted").await;
    b.click("nav.pager a[rel=next]").await;
    b.until(
        "the second page",
        TIMEOUT,
        "return location.search.indexOf('cursor=') >= 0 && !!document.querySelector('nav.pager a:not([rel])');",
    )
    .await;
    assert!(
        b.current_url().await.contains("sort=-since"),
        "{}",
        b.current_url().await
    );
    let ids = table_ids(&b).await;
    assert_eq!(ids[..], since_desc[99..], "page 2 in the same order");

    // A filter keeps the order: drift only, still newest change first.
    b.goto(&c.url("/ui/?sort=-since")).await;
    b.run("var s = document.getElementById('drift'); s.value = 'true'; s.dispatchEvent(new Event('change', {bubbles: true}));")
        .await;
    b.until(
        "the drift filter applied",
        TIMEOUT,
        "return location.search.indexOf('drift=true') >= 0;",
    )
    .await;
    let want: Vec<String> = since_desc
        .iter()
        .filter(|id| {
            let i: i64 = id[8..].parse().unwrap();
            i % 7 == 0
        })
        .cloned()
        .collect();
    b.until(
        "the filtered rows",
        TIMEOUT,
        &format!(
            "return document.querySelectorAll('table.gateways tbody tr').length === {};",
            want.len()
        ),
    )
    .await;
    assert_eq!(table_ids(&b).await, want);
    assert!(b.current_url().await.contains("sort=-since"));

    // Drift: most first; presence: offline first, then the online agent first.
    b.goto(&c.url("/ui/")).await;
    sort_by(&b, "Drift", "descending").await;
    let drift_desc = ids_by(&|r| (r.drift(), String::new()), true);
    // The live agent (no drift) sorts among the seeded ones without: left out of the match.
    let seeded: Vec<String> = table_ids(&b)
        .await
        .into_iter()
        .filter(|id| id != "gw-sort-live")
        .collect();
    assert_eq!(seeded[..99], drift_desc[..99]);
    sort_by(&b, "Presence", "descending").await;
    assert_eq!(table_ids(&b).await[0], "gw-sort-149");
    sort_by(&b, "Presence", "ascending").await;
    assert_eq!(table_ids(&b).await[0], "gw-sort-live");
    // Version: none reported first, then 0.1.0, 0.2.0.
    sort_by(&b, "Version", "ascending").await;
    let ids = table_ids(&b).await;
    assert_eq!(ids[0], "gw-sort-002");
    assert!(ids[..50]
        .iter()
        .all(|id| id[8..].parse::<i64>().unwrap() % 3 == 2));
    b.screenshot("fleet-sorted-version").await;

    // The same orders through the API; a bad order is refused, naming the known ones.
    let page = c
        .api(
            &http,
            "/v1/instances?sort=-since&limit=3&fields=presence",
            &reader,
        )
        .await;
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "gw-sort-live",
            since_desc[0].as_str(),
            since_desc[1].as_str()
        ]
    );
    let r = http
        .get(c.url("/v1/instances?sort=last_seen"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("id, group, presence, since, version, drift"),
        "{text}"
    );
    // On the page: said where the table would be.
    b.goto(&c.url("/ui/?sort=bogus")).await;
    let flash = b.text("#fleet .flash").await.unwrap_or_default();
    assert!(flash.contains("sort"), "{flash}");
    b.close().await;
}

/// The cell of a fleet row by its column among the row's `td`s (1: group, … 6: resources,
/// 7: drift; one region, so no region column).
fn cell(key: &str, nth: u32) -> String {
    format!("tr[data-gw=\"{key}\"] td:nth-of-type({nth})")
}

/// How many times the fleet table's rows were refreshed (-1: no table), as a JS expression.
const REFRESHED: &str = "(function () { var t = document.querySelector('#fleet tbody'); return t ? parseInt(t.getAttribute('data-refreshed') || '0', 10) : -1; })()";

/// A script that holds when the element's text is `want`.
fn text_is(css: &str, want: &str) -> String {
    format!(
        "var e = document.querySelector({}); return !!e && e.textContent.trim() === {};",
        Value::from(css),
        Value::from(want)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_rows_and_the_gateway_page_follow_the_agents_without_a_reload() {
    use csg_e2e::exportfs_stub::ExportfsStub;
    use csg_e2e::StorageSection;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("live-operator", "operate");
    let admin = c.token("live-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    // A gateway with NFS on the kernel backend over the exportfs stub (as calls_e2e.rs: this
    // kernel has no nfsd), heartbeats every second: its resources and drift are real changes
    // its agent reports.
    let work = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(work.path()).unwrap();
    for d in ["srv/vol1", "state"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let stub = ExportfsStub::new(&base);
    let agent = |id: &str, nfs: bool| {
        let mut cfg = AgentConfig::new(id, &broker.url());
        cfg.heartbeat_interval_s = 1;
        if nfs {
            cfg.storage = Some(StorageSection::new(&base.join("srv"), &base.join("state")));
            cfg.nfs = Some(stub.nfs_section());
        }
        Agent::spawn(&cfg)
    };
    let online = |ids: &'static [&'static str]| {
        let c = &c;
        let http = &http;
        let admin = &admin;
        async move {
            let t0 = Instant::now();
            loop {
                let page = c.api(http, "/v1/instances?presence=online", admin).await;
                let items = page["items"].as_array().unwrap();
                if ids
                    .iter()
                    .all(|id| items.iter().any(|i| i["instance_id"] == *id))
                {
                    return;
                }
                assert!(t0.elapsed() < TIMEOUT, "{ids:?} never online\n{}", c.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut agents = vec![agent("gw-live-1", true)];
    online(&["gw-live-1"]).await;

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    let key = "default/gw-live-1";
    // A filter in the URL: the rows' refresh asks for this very view.
    b.goto(&c.url("/ui/?q=gw-live")).await;
    b.until(
        "gw-live-1 listed with its first heartbeat's storage",
        TIMEOUT,
        &text_is(&cell(key, 6), "0"),
    )
    .await;
    assert_eq!(b.text(&cell(key, 7)).await.as_deref(), Some("0"));
    assert_eq!(
        b.text(&cell(key, 5)).await.as_deref(),
        Some(csg_e2e::WORKSPACE_VERSION)
    );
    // The rows alone, as the page's refresh asks for them: the same filter, no counts, no
    // page around them, marked as rows.
    let rows = b
        .run(
            "return fetch(location.href, {headers: {'x-fleet-rows': '1'}}).then(function (r) { return r.text().then(function (t) { return [r.headers.get('x-fleet-rows'), t]; }); });",
        )
        .await;
    assert_eq!(rows[0], "1", "{rows}");
    let html = rows[1].as_str().unwrap();
    assert!(html.contains(&format!("data-gw=\"{key}\"")), "{html}");
    assert!(
        !html.contains("<html") && !html.contains("n-online") && !html.contains("<tbody"),
        "{html}"
    );
    let plain = b
        .run("return fetch(location.href).then(function (r) { return r.headers.get('x-fleet-rows'); });")
        .await;
    assert_eq!(plain, Value::Null, "a page without the header is the page");

    // The page is marked (a reload would lose the mark) and the search box holds the focus.
    b.run("window.__kept = 'yes'; return true;").await;
    b.click("#q").await;
    assert_eq!(
        b.run("return document.activeElement.id;").await,
        "q",
        "the search box has the focus"
    );

    // An export created through the API: the next heartbeat counts it, the row follows.
    let vol1 = base.join("srv/vol1").display().to_string();
    let r = http
        .put(c.url("/v1/instances/gw-live-1/nfs/exports/vol1"))
        .bearer_auth(&operator)
        .header("content-type", "application/json")
        .body(
            json!({"path": vol1, "clients": [{"match": "10.0.0.0/8", "access": "rw"}]}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let took = b
        .until(
            "the row's resources cell at 1 without a reload",
            Duration::from_secs(20),
            &text_is(&cell(key, 6), "1"),
        )
        .await;
    eprintln!("resources 0 → 1 on the open page after {took:?}");
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    assert!(
        b.run(&format!("return {REFRESHED};"))
            .await
            .as_i64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        b.run("return document.activeElement.id;").await,
        "q",
        "a refresh leaves the focus in the search box"
    );
    assert_eq!(b.text(&cell(key, 7)).await.as_deref(), Some("0"));

    // Drift: the stub's export table loses the export (as if someone ran `exportfs -u`); the
    // agent finds it missing at its next heartbeat, and the row says so.
    let etab = stub.etab();
    assert!(etab.contains("/vol1"), "{etab}");
    std::fs::write(stub.dir.join("etab"), "").unwrap();
    b.until(
        "the row's drift at 1",
        Duration::from_secs(20),
        &text_is(&cell(key, 7), "1"),
    )
    .await;
    assert_eq!(
        b.run(&format!(
            "return document.querySelector({}).classList.contains('has-drift');",
            Value::from(cell(key, 7))
        ))
        .await,
        true
    );
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");

    // The focus on a link in the table pauses the refresh (a swap must not take it away);
    // leaving the table lets it go on.
    b.run("document.querySelector('#fleet tbody a').focus(); return true;")
        .await;
    let before = b
        .run(&format!("return {REFRESHED};"))
        .await
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        b.run(&format!("return {REFRESHED};"))
            .await
            .as_i64()
            .unwrap(),
        before,
        "no refresh while the focus is in the table"
    );
    b.click("#q").await;
    b.until(
        "a refresh once the focus left the table",
        Duration::from_secs(10),
        &format!("return {REFRESHED} > {before};"),
    )
    .await;

    // Two gateways new to the console: one matches the page's filter (`gw-live`), one does
    // not. The page says "1 new gateway", adds no row under the reader, and its link loads
    // the view again, with the new row.
    agents.push(agent("gw-other-1", false));
    agents.push(agent("gw-live-2", false));
    online(&["gw-other-1", "gw-live-2"]).await;
    b.until(
        "the notice of a new gateway",
        TIMEOUT,
        "var n = document.getElementById('new-gateways'); return !!n && n.textContent.indexOf('new gateway') >= 0;",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let notice = b.text("#new-gateways").await.unwrap();
    assert!(
        notice.starts_with("1 new gateway since this page was loaded."),
        "{notice}"
    );
    assert_eq!(
        b.run(
            "return document.querySelectorAll('#fleet tr[data-gw=\"default/gw-live-2\"]').length;"
        )
        .await,
        0,
        "no row moved in under the reader"
    );
    // The counts are the fleet's, not the filter's: both new gateways add to them.
    b.until("3 gateways counted", TIMEOUT, &text_is("#n-total", "3"))
        .await;
    assert_eq!(b.text("#n-online").await.as_deref(), Some("3"));
    // The drift count, which no event carries, follows with the counts read every sixth
    // refresh; the answer to such a refresh carries them.
    let counted = b
        .run("return fetch(location.href, {headers: {'x-fleet-rows': 'counts'}}).then(function (r) { return r.headers.get('x-fleet-counts'); });")
        .await;
    let counted: Value = serde_json::from_str(counted.as_str().unwrap()).unwrap();
    assert_eq!(counted["drift"], 1, "{counted}");
    assert_eq!(counted["total"], 3, "{counted}");
    b.until(
        "the drift count at 1 on the open page",
        Duration::from_secs(40),
        &text_is("#n-drift", "1"),
    )
    .await;
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    // By now refreshes have brought gw-live-2 among the view's rows too: counted once, as new.
    assert_eq!(
        b.run(NOTICE).await,
        "1 new gateway since this page was loaded."
    );
    b.screenshot("fleet-new-gateway").await;
    b.click("#new-gateways-link").await;
    b.until(
        "the view loaded again with gw-live-2",
        TIMEOUT,
        "return !window.__kept && !!document.querySelector('#fleet tr[data-gw=\"default/gw-live-2\"]');",
    )
    .await;
    assert!(b.current_url().await.contains("q=gw-live"));
    assert_eq!(
        b.run(
            "return document.querySelectorAll('#fleet tr[data-gw=\"default/gw-other-1\"]').length;"
        )
        .await,
        0
    );
    assert_eq!(b.text("#new-gateways").await.as_deref(), Some(""));

    // The gateway page: its last heartbeat, resources and drift follow the chart's poll.
    b.goto(&c.url("/ui/gateways/gw-live-1")).await;
    b.until(
        "the gateway page with its drift",
        TIMEOUT,
        &text_is("[data-fig=drift]", "1"),
    )
    .await;
    assert_eq!(b.text("[data-fig=count]").await.as_deref(), Some("1"));
    let nfs_drift = "[data-fig-families] tr td:nth-of-type(4)";
    assert_eq!(b.text(nfs_drift).await.as_deref(), Some("1"));
    assert_eq!(
        b.text("[data-fig=version]").await.as_deref(),
        Some(csg_e2e::WORKSPACE_VERSION)
    );
    b.run("window.__kept = 'yes'; return true;").await;
    let seen = b.text("[data-fig=last_seen]").await.unwrap();
    assert!(seen.contains("UTC"), "{seen}");
    b.until(
        "a newer last heartbeat on the page",
        TIMEOUT,
        &format!(
            "var e = document.querySelector('[data-fig=last_seen]'); return !!e && e.textContent.slice(0, 23) !== {};",
            Value::from(&seen[..23])
        ),
    )
    .await;
    // The export back in the table: drift 0 without a reload.
    std::fs::write(stub.dir.join("etab"), &etab).unwrap();
    b.until(
        "the gateway page's drift back at 0",
        Duration::from_secs(20),
        &text_is("[data-fig=drift]", "0"),
    )
    .await;
    assert_eq!(
        b.run("return document.querySelector('[data-fig=drift]').parentNode.className;")
            .await,
        ""
    );
    assert_eq!(b.text(nfs_drift).await.as_deref(), Some("0"));
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    b.screenshot("gateway-live").await;

    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// A script that holds when the fleet row of `key` is marked as no longer in the page's view,
/// visibly (its class, the note in its header cell, which a screen reader reads with the row)
/// and with the presence `state`.
fn marked_gone(key: &str, state: &str) -> String {
    format!(
        "var r = document.querySelector('#fleet tr[data-gw=\"{key}\"]'); if (!r) {{ return false; }} var n = r.querySelector('th .gone-note'); var p = r.querySelector('[data-presence]'); return r.classList.contains('gone') && !!n && n.textContent === 'no longer in this view' && p.textContent.trim() === '{state}';"
    )
}

/// How many times the fleet's view was refreshed, rows or none (-1: no view), as a JS
/// expression.
const VIEW_REFRESHED: &str = "(function () { var v = document.getElementById('fleet'); return v ? parseInt(v.getAttribute('data-refreshed') || '0', 10) : -1; })()";

/// The notice above the fleet's table, without its link ("" when there is none).
const NOTICE: &str = "var n = document.getElementById('new-gateways'); var a = document.getElementById('new-gateways-link'); return n.textContent.replace(a ? a.textContent : '', '').trim();";

/// Two fleet pages open side by side, one filtered to `online` and one to `offline`, while a
/// gateway goes offline (its agent killed: its Will) and comes back: the online page marks its
/// row as no longer in its view (and unmarks it once it is back), the offline page says that
/// one gateway now matches it, and its link shows it. No row is added or removed under the
/// reader, and neither page reloads until the link is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_marks_rows_that_left_its_view_and_counts_those_that_came_into_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("rows-operator", "operate");
    let admin = c.token("rows-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    let ids = ["gw-rows-1", "gw-rows-2", "gw-rows-3"];
    let spawn = |id: &str| {
        let mut cfg = AgentConfig::new(id, &broker.url());
        cfg.heartbeat_interval_s = 1;
        Agent::spawn(&cfg)
    };
    let mut agents: Vec<Agent> = ids.iter().map(|id| spawn(id)).collect();
    let online_count = |n: usize| {
        let c = &c;
        let http = &http;
        let admin = &admin;
        async move {
            let t0 = Instant::now();
            loop {
                let page = c.api(http, "/v1/instances?presence=online", admin).await;
                if page["items"].as_array().unwrap().len() == n {
                    return;
                }
                assert!(t0.elapsed() < TIMEOUT, "never {n} online\n{}", c.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    online_count(3).await;

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    let live_open = "return document.body.hasAttribute('data-live-open');";

    // The first window: the page filtered to offline, which has no row yet.
    let offline_win = b.window().await;
    b.goto(&c.url("/ui/?presence=offline")).await;
    b.until(
        "the offline view, empty, its stream open",
        TIMEOUT,
        "return !!document.querySelector('#fleet p.empty') && document.querySelectorAll('#fleet tr[data-gw]').length === 0 && document.body.hasAttribute('data-live-open');",
    )
    .await;
    b.run("window.__kept = 'yes'; return true;").await;

    // The second window: the page filtered to online, its three rows; a refresh of an
    // unchanged view marks nothing and says nothing.
    let online_win = b.new_window().await;
    b.goto(&c.url("/ui/?presence=online")).await;
    b.until(
        "the three gateways listed online",
        TIMEOUT,
        "return document.querySelectorAll('#fleet tr[data-gw]').length === 3;",
    )
    .await;
    b.until("the online page's stream open", TIMEOUT, live_open)
        .await;
    b.until(
        "a refresh of the online page",
        Duration::from_secs(20),
        &format!("return {VIEW_REFRESHED} >= 1;"),
    )
    .await;
    assert_eq!(b.run(NOTICE).await, "", "nothing differs yet");
    assert_eq!(
        b.run("return document.querySelectorAll('#fleet tr.gone, #fleet .gone-note').length;")
            .await,
        0
    );
    b.run("window.__kept = 'yes'; return true;").await;

    // gw-rows-2 killed: its Will turns it offline. On the online page its row stays where it
    // is, marked, and the notice says one row shown no longer matches.
    let key = "default/gw-rows-2";
    agents[1].kill9();
    b.until(
        "gw-rows-2's row marked as no longer in the online view",
        Duration::from_secs(30),
        &marked_gone(key, "offline"),
    )
    .await;
    let at = b
        .run(&format!("return {VIEW_REFRESHED};"))
        .await
        .as_i64()
        .unwrap();
    b.until(
        "a refresh after the row was marked",
        Duration::from_secs(20),
        &format!("return {VIEW_REFRESHED} > {at};"),
    )
    .await;
    // The answer lacks the row: still marked, as the answer's (`data-absent`), not only the
    // event's.
    assert_eq!(b.run(&marked_gone(key, "offline")).await, true);
    assert_eq!(
        b.run(&format!(
            "return document.querySelector('#fleet tr[data-gw=\"{key}\"]').hasAttribute('data-absent');"
        ))
        .await,
        true
    );
    assert_eq!(
        b.run("return Array.prototype.map.call(document.querySelectorAll('#fleet tr[data-gw]'), function (r) { return r.getAttribute('data-gw') + (r.classList.contains('gone') ? ' gone' : ''); }).join(',');")
            .await,
        "default/gw-rows-1,default/gw-rows-2 gone,default/gw-rows-3",
        "no row added or removed, one marked"
    );
    assert_eq!(
        b.run(NOTICE).await,
        "1 gateway shown no longer matches this view."
    );
    // The row's header cell (what a screen reader says with the row) carries the note.
    assert_eq!(
        b.text(&format!("#fleet tr[data-gw=\"{key}\"] th"))
            .await
            .as_deref(),
        Some("gw-rows-2 no longer in this view")
    );
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    // The marked row and the notice keep the pages' accessibility (the dimmed row's contrast).
    let v = b.violations().await;
    assert!(v.is_empty(), "the marked row: {v:?}");
    b.screenshot("fleet-row-gone").await;

    // The offline page: one gateway now matches it; no row moved in, no reload.
    b.switch_to(&offline_win).await;
    b.until(
        "the offline page's notice",
        Duration::from_secs(30),
        &format!(
            "return (function () {{ {NOTICE} }})() === '1 gateway now matches this view and is not shown.';"
        ),
    )
    .await;
    assert_eq!(
        b.run("return document.querySelectorAll('#fleet tr[data-gw]').length;")
            .await,
        0,
        "no row moved in under the reader"
    );
    assert_eq!(
        b.text("#new-gateways-link").await.as_deref(),
        Some("Show the current rows")
    );
    assert_eq!(
        b.run("return document.getElementById('new-gateways').getAttribute('aria-live');")
            .await,
        "polite"
    );
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    let v = b.violations().await;
    assert!(v.is_empty(), "the notice: {v:?}");
    b.screenshot("fleet-now-matching").await;
    b.click("#new-gateways-link").await;
    b.until(
        "the offline view loaded again, with gw-rows-2",
        TIMEOUT,
        &format!(
            "return !window.__kept && document.querySelectorAll('#fleet tr[data-gw]').length === 1 && (function () {{ {} }})();",
            presence_is(key, "offline")
        ),
    )
    .await;
    assert!(b.current_url().await.ends_with("/ui/?presence=offline"));
    assert_eq!(b.run(NOTICE).await, "");
    b.until(
        "the reloaded offline page's stream open",
        TIMEOUT,
        live_open,
    )
    .await;
    b.run("window.__kept = 'yes'; return true;").await;

    // gw-rows-2 back: the online page unmarks its row once a refresh has it again, and says
    // nothing any more; the offline page marks it.
    agents[1] = spawn("gw-rows-2");
    online_count(3).await;
    b.until(
        "gw-rows-2's row marked on the offline page",
        Duration::from_secs(30),
        &marked_gone(key, "online"),
    )
    .await;
    b.until(
        "the offline page's notice of its row",
        Duration::from_secs(20),
        &format!(
            "return (function () {{ {NOTICE} }})() === '1 gateway shown no longer matches this view.';"
        ),
    )
    .await;
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");
    b.switch_to(&online_win).await;
    b.until(
        "gw-rows-2's row unmarked on the online page, the notice gone",
        Duration::from_secs(30),
        &format!(
            "return document.querySelectorAll('#fleet tr.gone, #fleet .gone-note, #fleet tr[data-absent]').length === 0 && (function () {{ {} }})() && (function () {{ {NOTICE} }})() === '';",
            presence_is(key, "online")
        ),
    )
    .await;
    assert_eq!(
        b.text(&format!("#fleet tr[data-gw=\"{key}\"] th"))
            .await
            .as_deref(),
        Some("gw-rows-2")
    );
    assert_eq!(b.run("return window.__kept;").await, "yes", "no reload");

    b.close().await;
    for a in &mut agents {
        a.signal(Signal::SIGTERM);
    }
}

/// The iSCSI target and SMB user forms in the browser against one agent with the tgt backend
/// on a private, real tgtd (its own control socket and portal) and Samba on a private, real
/// smbd: a target with a file LUN created through the form, listed with no drift and present in
/// tgtd (`tgtadm --op show`); a bad IQN refused with the agent's message next to the IQN field
/// and nothing created; the target deleted through the confirmation (its backing file too) and
/// gone from the page, the API and tgtd. Then an SMB user set through its form (in smbd's
/// passdb, its Unix account made), a short password refused next to its field and never shown
/// back, and the user deleted through the confirmation (gone from the passdb and the system).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iscsi_target_and_smb_user_forms_create_list_refuse_and_delete_on_real_daemons() {
    use csg_e2e::smbd::{Smbd, TestUsers};
    use csg_e2e::tgtd::Tgtd;

    const PREFIX: &str = "iqn.2026-11.test.web";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::start();
    let mut c = Consoled::new(&broker);
    let operator = c.token("iscsi-operator", "operate");
    let admin = c.token("iscsi-admin", "admin");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    c.start(&http).await;

    let tgtd = Tgtd::start();
    let smbd = Smbd::start();
    let mut users = TestUsers::new();
    let work = tempfile::tempdir().unwrap();
    let state = std::fs::canonicalize(work.path()).unwrap().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The LUN's file lives under the storage root smbd's shares use (one root for both).
    let root = std::fs::canonicalize(smbd.root()).unwrap();
    let id = "gw-iscsi-web";
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    smbd.configure(&mut cfg, &state);
    cfg.iscsi = Some(tgtd.iscsi_section(PREFIX));
    let _agent = Agent::spawn(&cfg);
    let t0 = Instant::now();
    loop {
        let page = c.api(&http, "/v1/instances?presence=online", &admin).await;
        if page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["instance_id"] == id)
        {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "agent never online\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let b = Browser::start(c.dir.path()).await;
    sign_in(&b, &c, &operator).await;
    let page = c.url(&format!("/ui/gateways/{id}"));
    // The section appears once a heartbeat has named the family.
    let t0 = Instant::now();
    'section: loop {
        b.goto(&page).await;
        for _ in 0..30 {
            if b.run("return !!document.getElementById('h-iscsi-targets') && !!document.getElementById('h-smb-users');")
                .await
                == Value::Bool(true)
            {
                break 'section;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(t0.elapsed() < TIMEOUT, "no iSCSI section\n{}", c.log());
    }
    let caps = b.text("#caps").await.unwrap();
    assert!(caps.contains("tgt") && caps.contains("samba"), "{caps}");

    // A target with a file LUN (created sparse by the agent) and one initiator.
    let img = root.join("web1.img").display().to_string();
    let iqn = format!("{PREFIX}:web1");
    b.click("a[data-new='iscsi-targets']").await;
    b.until(
        "the new target form",
        TIMEOUT,
        "return !!document.getElementById('f-luns') && !!document.getElementById('f-iqn');",
    )
    .await;
    b.type_into("#f-name", "web1").await;
    set_field(
        &b,
        "#f-luns",
        &json!([{"lun": 1, "path": img, "size_bytes": 8 << 20}]).to_string(),
    )
    .await;
    set_field(&b, "#f-initiators", r#"["iqn.2026-11.test.client:c1"]"#).await;
    b.screenshot("iscsi-form").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "back on the gateway page with web1 created",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('iSCSI target web1 created') >= 0;",
    )
    .await;
    b.until(
        "the web1 row of iscsi-targets",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='iscsi-targets'] tr[data-name='web1']\");",
    )
    .await;
    let row = b
        .text("table[data-kind='iscsi-targets'] tr[data-name='web1']")
        .await
        .unwrap();
    assert!(row.contains("present") && row.contains("none"), "{row}");
    let api = c
        .api(
            &http,
            &format!("/v1/instances/{id}/iscsi/targets/web1"),
            &admin,
        )
        .await;
    assert_eq!(api["drift"], json!([]), "{api}");
    let shown = tgtd.show();
    assert!(shown.contains(&iqn), "tgtd lacks {iqn}:\n{shown}");
    assert!(shown.contains(&img), "tgtd lacks the LUN {img}:\n{shown}");
    assert!(
        shown.contains("iqn.2026-11.test.client:c1"),
        "tgtd lacks the initiator:\n{shown}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    b.run("document.getElementById('h-iscsi-targets').scrollIntoView(); return true;")
        .await;
    b.screenshot("iscsi-listed").await;

    // An IQN with upper case: the agent's INVALID_PARAMS next to the IQN field, the values
    // kept, nothing created in tgtd.
    b.click("a[data-new='iscsi-targets']").await;
    b.until(
        "the new target form",
        TIMEOUT,
        "return !!document.getElementById('f-iqn');",
    )
    .await;
    let bad = "iqn.2026-11.test.web:Bad_Name";
    b.type_into("#f-name", "web2").await;
    b.type_into("#f-iqn", bad).await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the error next to the IQN field",
        Duration::from_secs(40),
        "return !!document.querySelector(\".field[data-field='iqn'] .error-text\");",
    )
    .await;
    let err = b
        .text(".field[data-field='iqn'] .error-text")
        .await
        .unwrap();
    assert!(
        err.contains("is invalid") && err.contains("lowercase"),
        "{err}"
    );
    assert!(b
        .text(".field[data-field='name'] .error-text")
        .await
        .is_none());
    assert_eq!(
        b.run("return document.getElementById('f-iqn').value;")
            .await,
        Value::from(bad)
    );
    assert_eq!(
        b.run("return document.getElementById('f-iqn').getAttribute('aria-invalid');")
            .await,
        "true"
    );
    b.screenshot("iscsi-form-error").await;
    let list = c
        .api(&http, &format!("/v1/instances/{id}/iscsi/targets"), &admin)
        .await;
    assert_eq!(list["targets"].as_array().unwrap().len(), 1, "{list}");
    assert!(!tgtd.show().contains("web2"));

    // Deleted through the confirmation, its backing file with it.
    b.goto(&page).await;
    b.until(
        "the web1 row of iscsi-targets",
        TIMEOUT,
        "return !!document.querySelector(\"table[data-kind='iscsi-targets'] tr[data-name='web1']\");",
    )
    .await;
    b.click("table[data-kind='iscsi-targets'] tr[data-name='web1'] a[href$='/delete']")
        .await;
    b.until(
        "the confirmation",
        TIMEOUT,
        "return !!document.getElementById('confirm') && !!document.getElementById('o-delete_backing_files');",
    )
    .await;
    b.click("#confirm").await;
    b.click("#o-delete_backing_files").await;
    b.screenshot("iscsi-delete").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "web1 deleted",
        Duration::from_secs(40),
        "var d = document.getElementById('done'); return !!d && d.textContent.indexOf('iSCSI target web1 deleted') >= 0;",
    )
    .await;
    b.until(
        "the resources loaded",
        TIMEOUT,
        "return !!document.getElementById('h-iscsi-targets');",
    )
    .await;
    assert!(b
        .text("table[data-kind='iscsi-targets'] tr[data-name='web1']")
        .await
        .is_none());
    let list = c
        .api(&http, &format!("/v1/instances/{id}/iscsi/targets"), &admin)
        .await;
    assert_eq!(list["targets"], json!([]), "{list}");
    let shown = tgtd.show();
    assert!(!shown.contains(&iqn), "tgtd still has {iqn}:\n{shown}");
    assert!(!Path::new(&img).exists(), "{img} left behind");

    // An SMB user set through its form: in smbd's passdb, its Unix account made by the agent.
    let alice = users.name("alice");
    let secret = "Web-user-pass-1234";
    b.click("a[data-new='smb-users']").await;
    b.until(
        "the new user form",
        TIMEOUT,
        "var p = document.getElementById('f-password'); return !!p && p.type === 'password' && !!document.getElementById('f-username');",
    )
    .await;
    b.type_into("#f-username", &alice).await;
    b.type_into("#f-password", secret).await;
    b.click("form.resource button[type=submit]").await;
    let done = format!("SMB user {alice} created");
    b.until(
        "the user created",
        Duration::from_secs(40),
        &format!(
            "var d = document.getElementById('done'); return !!d && d.textContent.indexOf({}) >= 0;",
            Value::from(done.as_str())
        ),
    )
    .await;
    let user_row = format!("table[data-kind='smb-users'] tr[data-name='{alice}']");
    b.until(
        "the user's row",
        TIMEOUT,
        &format!(
            "return !!document.querySelector({});",
            Value::from(user_row.as_str())
        ),
    )
    .await;
    let row = b.text(&user_row).await.unwrap();
    assert!(row.contains("none"), "{row}");
    assert!(
        smbd.passdb_users().contains(&alice),
        "{:?}",
        smbd.passdb_users()
    );
    assert!(TestUsers::exists(&alice));
    let api = c
        .api(&http, &format!("/v1/instances/{id}/smb/users"), &admin)
        .await;
    let entry = api["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == alice.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{alice} not listed: {api}"));
    assert_eq!(entry["drift"], json!([]), "{entry}");
    assert!(!api.to_string().contains(secret));
    b.run("document.getElementById('h-smb-users').scrollIntoView(); return true;")
        .await;
    b.screenshot("smb-user-listed").await;

    // A password too short: the agent's INVALID_PARAMS next to the password field, the
    // password neither echoed nor written back into the form, no user made.
    let bob = users.name("bob");
    b.click("a[data-new='smb-users']").await;
    b.until(
        "the new user form",
        TIMEOUT,
        "return !!document.getElementById('f-password');",
    )
    .await;
    b.type_into("#f-username", &bob).await;
    b.type_into("#f-password", "Short1").await;
    b.click("form.resource button[type=submit]").await;
    b.until(
        "the error next to the password field",
        Duration::from_secs(40),
        "return !!document.querySelector(\".field[data-field='password'] .error-text\");",
    )
    .await;
    let err = b
        .text(".field[data-field='password'] .error-text")
        .await
        .unwrap();
    assert!(err.contains("password"), "{err}");
    assert!(!err.contains("Short1"), "the password echoed: {err}");
    assert_eq!(
        b.run("return document.getElementById('f-password').value;")
            .await,
        ""
    );
    assert_eq!(
        b.run("return document.getElementById('f-username').value;")
            .await,
        Value::from(bob.as_str())
    );
    let html = b.run("return document.documentElement.outerHTML;").await;
    assert!(!html.as_str().unwrap().contains("Short1"));
    b.screenshot("smb-user-form-error").await;
    assert!(!smbd.passdb_users().contains(&bob));
    assert!(!TestUsers::exists(&bob));

    // Deleted through the confirmation: gone from the page, the passdb and the system.
    b.goto(&page).await;
    b.until(
        "the user's row",
        TIMEOUT,
        &format!(
            "return !!document.querySelector({});",
            Value::from(user_row.as_str())
        ),
    )
    .await;
    b.click(&format!("{user_row} a[href$='/delete']")).await;
    b.until(
        "the confirmation",
        TIMEOUT,
        "return !!document.getElementById('confirm');",
    )
    .await;
    b.click("#confirm").await;
    b.click("form.resource button[type=submit]").await;
    let done = format!("SMB user {alice} deleted");
    b.until(
        "the user deleted",
        Duration::from_secs(40),
        &format!(
            "var d = document.getElementById('done'); return !!d && d.textContent.indexOf({}) >= 0;",
            Value::from(done.as_str())
        ),
    )
    .await;
    b.until(
        "the resources loaded",
        TIMEOUT,
        "return !!document.getElementById('h-smb-users');",
    )
    .await;
    assert!(b.text(&user_row).await.is_none());
    assert!(
        !smbd.passdb_users().contains(&alice),
        "{:?}",
        smbd.passdb_users()
    );
    assert!(!TestUsers::exists(&alice));
    b.close().await;
}
