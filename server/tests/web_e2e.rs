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

    // The chart gains a point per heartbeat while the page is open.
    b.until(
        "three points on the chart",
        Duration::from_secs(20),
        "var s = document.getElementById('host-chart'); return parseInt(s.getAttribute('data-points') || '0', 10) >= 3;",
    )
    .await;
    let points = b
        .run("return document.querySelector('#host-chart polyline.cpu').getAttribute('points');")
        .await;
    assert!(points.as_str().unwrap().split(' ').count() >= 3, "{points}");
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
        "return !!document.querySelector('[data-job-page]') && !!document.getElementById('cancel');",
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
