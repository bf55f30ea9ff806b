//! Webhooks: live events POSTed to configured URLs as JSON, signed with HMAC-SHA256, retried
//! with back-off, every delivery stored (so one pending when the service stops is sent after
//! it starts again) and listed by the API.
//!
//! Deliveries are stored by the event log's writer ([`crate::eventlog`]), in the transaction
//! that logs their event: one per webhook that wants its type and logged event, whichever
//! replica stored the event (the store keeps `(webhook, event_id)` unique). The *sender* here
//! claims due deliveries from the store (a lease, so a process that dies mid-send lets another
//! attempt happen when the lease ends), POSTs them and records each attempt.
//!
//! Signature: `X-Csg-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`,
//! made afresh at each attempt. A receiver recomputes it over the raw body, compares in
//! constant time, rejects a `t` too far from its clock (replays), and drops a delivery id it
//! has already handled (`X-Csg-Delivery`).

use crate::now_ms;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csg_transport::Backoff;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::events::{EventKind, EventKinds};
use crate::metrics::Metrics;
use crate::store::{Attempt, DeliveryRow, HookKinds, Store};

/// Retries start at most this far apart and double to [`RETRY_MAX`] (full jitter).
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// A receiver's response body is read up to this much (then dropped): it is only shown in the
/// delivery's `last_error`, cut shorter still.
pub const MAX_RESPONSE_READ: usize = 64 * 1024;
const MAX_ERROR_LEN: usize = 300;
/// Deliveries sent at once.
const BATCH: u32 = 16;

/// A webhook's secret, read from its file; never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// The file's content less surrounding whitespace; 16 bytes to 4 KiB.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4097).read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() > 4096 {
            return Err(format!("{}: longer than 4 KiB", path.display()));
        }
        let text = String::from_utf8_lossy(&bytes);
        let s = text.trim();
        if s.len() < 16 {
            return Err(format!(
                "{}: a secret of at least 16 characters is needed",
                path.display()
            ));
        }
        Ok(Secret(Arc::from(s.as_bytes())))
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        Secret(Arc::from(b))
    }
}

/// `t=…,v1=…` for a body sent at `unix_s`.
pub fn signature(secret: &Secret, unix_s: u64, body: &[u8]) -> String {
    format!("t={unix_s},v1={}", hex::encode(mac(secret, unix_s, body)))
}

fn mac(secret: &Secret, unix_s: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so this cannot fail.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&secret.0) else {
        return Vec::new();
    };
    m.update(unix_s.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// What a receiver does: true when `header` signs `body` with `secret` and its time is within
/// `tolerance_s` of `now_s`.
pub fn verify(secret: &Secret, header: &str, body: &[u8], now_s: u64, tolerance_s: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now_s) > tolerance_s {
        return false;
    }
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&secret.0) else {
        return false;
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    // Constant time.
    m.verify_slice(&v1).is_ok()
}

/// One configured webhook, checked.
#[derive(Clone)]
pub struct Webhook {
    /// Names it in deliveries and metrics; its URL (which may carry a token) is never shown.
    pub name: String,
    pub url: reqwest::Url,
    pub secret: Secret,
    pub events: EventKinds,
    pub max_attempts: u32,
    pub timeout: Duration,
}

impl fmt::Debug for Webhook {
    /// The URL's scheme and host only: its path or query may carry a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field(
                "url",
                &format_args!(
                    "{}://{}/…",
                    self.url.scheme(),
                    self.url.host_str().unwrap_or_default()
                ),
            )
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A `[[webhooks]]` entry as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub name: String,
    pub url: String,
    pub secret_file: PathBuf,
    pub events: Vec<String>,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_attempts() -> u32 {
    10
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Checks every entry; problems are pushed to `p`, named by `webhooks[i]`.
pub fn check(raw: &[RawWebhook], p: &mut Vec<String>) -> Vec<Webhook> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, w) in raw.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let before = p.len();
        let name_ok = !w.name.is_empty()
            && w.name.len() <= 64
            && w.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            p.push(format!("{at}.name: 1 to 64 of A-Z a-z 0-9 . _ -"));
        } else if !names.insert(w.name.clone()) {
            p.push(format!("{at}.name {:?}: used twice", w.name));
        }
        // The URL may hold a credential: problems name its scheme only.
        let url = match reqwest::Url::parse(&w.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(u) => {
                p.push(format!(
                    "{at}.url: http:// or https:// with a host, got scheme {:?}",
                    u.scheme()
                ));
                None
            }
            Err(e) => {
                p.push(format!("{at}.url: {e}"));
                None
            }
        };
        let secret = Secret::read(&w.secret_file)
            .map_err(|e| p.push(format!("{at}.secret_file: {e}")))
            .ok();
        let events = EventKinds::parse(w.events.iter().map(String::as_str))
            .map_err(|e| p.push(format!("{at}.events: {e}")))
            .ok();
        if !(1..=100).contains(&w.max_attempts) {
            p.push(format!(
                "{at}.max_attempts = {}: must be from 1 to 100",
                w.max_attempts
            ));
        }
        if !(100..=60_000).contains(&w.timeout_ms) {
            p.push(format!(
                "{at}.timeout_ms = {}: must be from 100 to 60000",
                w.timeout_ms
            ));
        }
        if let (Some(url), Some(secret), Some(events), true) =
            (url, secret, events, p.len() == before)
        {
            out.push(Webhook {
                name: w.name.clone(),
                url,
                secret,
                events,
                max_attempts: w.max_attempts,
                timeout: Duration::from_millis(w.timeout_ms),
            });
        }
    }
    out
}

/// Which kinds of event each webhook takes, for the event log's writer.
pub fn hook_kinds(hooks: &[Webhook]) -> Vec<HookKinds> {
    hooks
        .iter()
        .map(|h| HookKinds {
            webhook: h.name.clone(),
            kinds: EventKind::ALL
                .into_iter()
                .filter(|k| h.events.contains(*k))
                .map(EventKind::as_str)
                .collect(),
        })
        .collect()
}

/// The running webhooks.
pub struct Service {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts the sender; `wake` is notified when deliveries were stored. With no webhook
    /// configured nothing is enqueued, but the sender still settles deliveries left from an
    /// earlier configuration (as failed).
    pub fn start(
        hooks: Vec<Webhook>,
        store: Arc<dyn Store>,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> anyhow::Result<Service> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // A redirect is a failed attempt, never followed: the signed body goes only where
            // it was configured to go.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("csg-consoled/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let hooks = Arc::new(hooks);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![tokio::spawn(send(
            client, hooks, store, metrics, wake, stop_rx,
        ))];
        Ok(Service { stop, tasks })
    }

    /// Lets attempts under way finish (each is bounded by
    /// its webhook's timeout) and stops.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn send(
    client: reqwest::Client,
    hooks: Arc<Vec<Webhook>>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // The lease outlasts the slowest attempt, so a row is never sent twice at once.
    let longest = hooks
        .iter()
        .map(|h| h.timeout)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let lease = longest + Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            return;
        }
        let now = now_ms();
        let lease_until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(60_000));
        let claimed = match store.claim_due_deliveries(now, lease_until, BATCH).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "webhook deliveries not read; retried");
                Vec::new()
            }
        };
        if !claimed.is_empty() {
            let attempts = claimed
                .into_iter()
                .map(|d| attempt(&client, &hooks, &store, &metrics, d));
            futures_util::future::join_all(attempts).await;
            continue;
        }
        // Nothing due: sleep until the earliest pending one is, a wake-up, or 5 s at most
        // (another replica may have added some).
        let wait = match store.pending_deliveries().await {
            Ok((n, due)) => {
                metrics.set_webhooks_pending(n);
                due.map_or(5_000, |d| d.saturating_sub(now_ms()).clamp(0, 5_000))
            }
            Err(_) => 5_000,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The delay before attempt `attempts + 1`, after `attempts` failed: full jitter under a
/// ceiling that doubles from [`RETRY_MIN`] to [`RETRY_MAX`].
pub fn retry_delay(attempts: u32) -> Duration {
    let mut b = Backoff::new(RETRY_MIN, RETRY_MAX);
    for _ in 1..attempts {
        b.next_delay();
    }
    b.next_delay()
}

async fn attempt(
    client: &reqwest::Client,
    hooks: &[Webhook],
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    d: DeliveryRow,
) {
    let Some(hook) = hooks.iter().find(|h| h.name == d.webhook) else {
        let a = Attempt::Failed {
            status: None,
            error: "the webhook is no longer configured".to_owned(),
            at_ms: now_ms(),
        };
        if let Err(e) = store.record_delivery_attempt(d.id, &a).await {
            warn!(error = %e, delivery = d.id, "webhook delivery not updated");
        }
        return;
    };
    let result = post(client, hook, &d).await;
    let at_ms = now_ms();
    let attempts = d.attempts.saturating_add(1);
    let (a, outcome) = match result {
        Ok(status) if (200..300).contains(&status) => {
            (Attempt::Delivered { status, at_ms }, "delivered")
        }
        other => {
            let (status, error) = match other {
                Ok(status) => (Some(status), format!("HTTP {status}")),
                Err((status, e)) => (status, e),
            };
            if attempts >= hook.max_attempts {
                (
                    Attempt::Failed {
                        status,
                        error,
                        at_ms,
                    },
                    "failed",
                )
            } else {
                let delay = i64::try_from(retry_delay(attempts).as_millis()).unwrap_or(i64::MAX);
                (
                    Attempt::Retry {
                        status,
                        error,
                        at_ms,
                        next_attempt_ms: at_ms.saturating_add(delay),
                    },
                    "retry",
                )
            }
        }
    };
    match &a {
        Attempt::Delivered { .. } => {
            debug!(webhook = %hook.name, delivery = d.id, attempts, "webhook delivered");
        }
        Attempt::Retry { error, .. } => {
            info!(webhook = %hook.name, delivery = d.id, attempts, error = %error, "webhook attempt failed; retried");
        }
        Attempt::Failed { error, .. } => {
            warn!(webhook = %hook.name, delivery = d.id, attempts, error = %error, "webhook delivery given up");
        }
    }
    metrics.webhook_attempt(&hook.name, outcome);
    if let Err(e) = store.record_delivery_attempt(d.id, &a).await {
        // The lease ends and the delivery is sent again: at least once, never lost.
        warn!(error = %e, delivery = d.id, "webhook attempt not recorded; it will be repeated");
    }
}

/// One POST; the status, or why there is none (with the status when the body failed).
async fn post(
    client: &reqwest::Client,
    hook: &Webhook,
    d: &DeliveryRow,
) -> Result<u16, (Option<u16>, String)> {
    let unix_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let req = client
        .post(hook.url.clone())
        .timeout(hook.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "X-Csg-Signature",
            signature(&hook.secret, unix_s, d.payload.as_bytes()),
        )
        .header("X-Csg-Delivery", d.id.to_string())
        .header("X-Csg-Event", d.event_type.as_str())
        .body(d.payload.clone());
    // Errors leave without the URL: it may carry a credential.
    let mut resp = req
        .send()
        .await
        .map_err(|e| (None, cut(&e.without_url().to_string())))?;
    let status = resp.status().as_u16();
    let mut read = Vec::new();
    let body = tokio::time::timeout(hook.timeout, async {
        while let Some(chunk) = resp.chunk().await? {
            let room = MAX_RESPONSE_READ.saturating_sub(read.len());
            read.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if read.len() >= MAX_RESPONSE_READ {
                break;
            }
        }
        Ok::<(), reqwest::Error>(())
    })
    .await;
    if (200..300).contains(&status) {
        return Ok(status);
    }
    match body {
        Ok(Ok(())) if !read.is_empty() => Err((
            Some(status),
            cut(&format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&read)
            )),
        )),
        _ => Ok(status),
    }
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_ERROR_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_time_or_secret_does_not() {
        let s = Secret::from_bytes(b"0123456789abcdef");
        let h = signature(&s, 1_700_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert!(verify(&s, &h, b"{\"a\":1}", 1_700_000_100, 300));
        assert!(!verify(&s, &h, b"{\"a\":2}", 1_700_000_100, 300));
        assert!(
            !verify(&s, &h, b"{\"a\":1}", 1_700_000_400, 300),
            "a replay"
        );
        let other = Secret::from_bytes(b"fedcba9876543210");
        assert!(!verify(&other, &h, b"{\"a\":1}", 1_700_000_100, 300));
        assert!(!verify(
            &s,
            "t=1700000000",
            b"{\"a\":1}",
            1_700_000_000,
            300
        ));
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn retry_delays_stay_under_a_doubling_ceiling() {
        for attempts in 1..20 {
            let ceiling = RETRY_MIN
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(RETRY_MAX);
            for _ in 0..50 {
                assert!(retry_delay(attempts) <= ceiling, "{attempts}");
            }
        }
    }

    #[test]
    fn entries_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("s");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let raw = |name: &str, url: &str, secret: &Path, events: &[&str]| RawWebhook {
            name: name.into(),
            url: url.into(),
            secret_file: secret.into(),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            max_attempts: 10,
            timeout_ms: 1000,
        };
        let mut p = Vec::new();
        let ok = check(
            &[
                raw(
                    "ops",
                    "https://hooks.example/x?token=hunter2",
                    &good,
                    &["presence", "job"],
                ),
                raw("ops", "ftp://x", &short, &["presences"]),
                raw("b", "http://127.0.0.1:1/", &dir.path().join("none"), &[]),
            ],
            &mut p,
        );
        assert_eq!(ok.len(), 1);
        assert!(ok[0].events.contains(crate::events::EventKind::Job));
        for want in [
            "webhooks[1].name",
            "webhooks[1].url",
            "webhooks[1].secret_file",
            "webhooks[1].events",
            "webhooks[2].secret_file",
            "webhooks[2].events",
        ] {
            assert!(p.iter().any(|m| m.starts_with(want)), "{want}: {p:#?}");
        }
        assert!(!p.iter().any(|m| m.contains("hunter2")), "{p:#?}");
        let shown = format!("{:?}", ok[0]);
        assert!(
            shown.contains("https://hooks.example/")
                && !shown.contains("hunter2")
                && !shown.contains("0123"),
            "{shown}"
        );
    }
}
