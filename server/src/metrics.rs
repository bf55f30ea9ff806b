//! The service's metrics, in the Prometheus (OpenMetrics) text format, through the Prometheus
//! project's own crate (`prometheus-client`). Names start with `csg_`; counters end in
//! `_total`, durations are seconds.
//!
//! Whoever measures something holds a [`Metrics`] (cheap to clone) and records into it: the
//! store sink times its writes, the HTTP middleware counts requests, the calls route observes
//! each call's latency, the jobs runner reports its counts. Values read from elsewhere (the
//! ingest's counters, the instances per presence in the store) are taken at each scrape.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fleet::IngestStats;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct call methods kept as label values; beyond them calls count under `other`, so a
/// client inventing method names cannot grow the scrape without bound.
pub const MAX_CALL_METHODS: usize = 256;

/// Label values longer than this are cut (a label is not a place for a payload).
const MAX_LABEL_LEN: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PresenceLabels {
    region: String,
    presence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    region: String,
    method: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
}

/// Instances per (region, presence), as last counted in the store.
pub type PresenceCounts = Vec<(String, String, u64)>;

/// One of the ingest's counters.
type Field = fn(&IngestStats) -> &std::sync::atomic::AtomicU64;

/// The ingest's counters, per region, read at each scrape (they live in each region's ingest,
/// as atomics).
#[derive(Debug, Default)]
struct IngestCollector {
    stats: Mutex<Vec<(String, Arc<IngestStats>)>>,
    links: Mutex<
        Vec<(
            String,
            tokio::sync::watch::Receiver<csg_transport::LinkState>,
        )>,
    >,
}

impl Collector for IngestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let links: Vec<(String, bool)> = lock(&self.links)
            .iter()
            .map(|(r, l)| {
                (
                    r.clone(),
                    matches!(*l.borrow(), csg_transport::LinkState::Ready(_)),
                )
            })
            .collect();
        if !links.is_empty() {
            let mut e = encoder.encode_descriptor(
                "csg_broker_up",
                "1 when the region's MQTT session is connected and subscribed, else 0.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (region, up) in &links {
                let labels = [("region", region.as_str())];
                ConstGauge::new(i64::from(*up)).encode(e.encode_family(&labels)?)?;
            }
        }
        let all = lock(&self.stats).clone();
        if all.is_empty() {
            return Ok(());
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, Field); 2] = [
            (
                "csg_heartbeats_ingested",
                "Heartbeats taken in from the broker, by region (the rate is the scraper's job).",
                |s| &s.heartbeats,
            ),
            (
                "csg_presence_messages_ingested",
                "Presence messages (online, shutdown, Will) taken in from the broker, by region.",
                |s| &s.presence,
            ),
        ];
        for (name, help, field) in counters {
            let mut e = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (region, s) in &all {
                let labels = [("region", region.as_str())];
                ConstCounter::new(load(field(s))).encode(e.encode_family(&labels)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "csg_status_dropped",
            "Status messages dropped, by region and reason (overflow: the console fell behind).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (region, s) in &all {
            let dropped = [
                ("bad_topic", load(&s.bad_topic)),
                ("bad_payload", load(&s.bad_payload)),
                ("instance_mismatch", load(&s.instance_mismatch)),
                ("oversized", load(&s.oversized)),
                ("overflow", load(&s.overflow)),
            ];
            for (reason, v) in dropped {
                let labels = [("region", region.as_str()), ("reason", reason)];
                ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    ingest: Arc<IngestCollector>,
    instances: Family<PresenceLabels, Gauge>,
    /// The label sets set at the last count, so a combination that disappears goes to 0
    /// rather than keeping its old value.
    presence_seen: Mutex<HashSet<PresenceLabels>>,
    calls: Family<CallLabels, Histogram, fn() -> Histogram>,
    call_methods: Mutex<HashSet<String>>,
    executions: Family<StateLabels, Gauge>,
    jobs_running: Gauge,
    jobs_finished: Family<StateLabels, Counter>,
    job_counts: Mutex<HashMap<String, BTreeMap<String, u64>>>,
    store_writes: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    events_published: Family<EventLabels, Counter>,
    sse_listeners: Gauge,
    sse_lagged: Counter,
    webhook_deliveries: Family<WebhookLabels, Counter>,
    webhook_pending: Gauge,
    webhook_events_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s: a call's round trip, a store write, an HTTP request.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// The service's metrics. Cheap to clone; every method is safe from any task.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay whole whatever panicked while holding them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn label(s: &str) -> String {
    s.chars().take(MAX_LABEL_LEN).collect()
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let ingest = Arc::new(IngestCollector::default());
        registry.register_collector(Box::new(ingest.clone()));
        let inner = Inner {
            registry: Registry::default(),
            ingest,
            instances: Family::default(),
            presence_seen: Mutex::new(HashSet::new()),
            calls: Family::new_with_constructor(latency_histogram),
            call_methods: Mutex::new(HashSet::new()),
            executions: Family::default(),
            jobs_running: Gauge::default(),
            jobs_finished: Family::default(),
            job_counts: Mutex::new(HashMap::new()),
            store_writes: Family::new_with_constructor(latency_histogram),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            events_published: Family::default(),
            sse_listeners: Gauge::default(),
            sse_lagged: Counter::default(),
            webhook_deliveries: Family::default(),
            webhook_pending: Gauge::default(),
            webhook_events_dropped: Counter::default(),
        };
        // The crate ends each help text with a period.
        registry.register(
            "csg_instances",
            "Gateways by region and presence, as stored (the whole fleet, on every replica)",
            inner.instances.clone(),
        );
        registry.register(
            "csg_call_duration_seconds",
            "Calls to gateways through the console, by method and outcome (ok, the agent's error code, or the console's own failure)",
            inner.calls.clone(),
        );
        registry.register(
            "csg_job_executions",
            "Executions of the running jobs, by state",
            inner.executions.clone(),
        );
        registry.register(
            "csg_jobs_running",
            "Jobs not finished",
            inner.jobs_running.clone(),
        );
        registry.register(
            "csg_jobs_finished",
            "Jobs finished, by final state",
            inner.jobs_finished.clone(),
        );
        registry.register(
            "csg_store_write_duration_seconds",
            "Writes of the fleet's batches to the store (one per flush with changes), by outcome",
            inner.store_writes.clone(),
        );
        registry.register(
            "csg_http_requests",
            "HTTP requests answered, by route (the pattern, not the path), method and status",
            inner.http_requests.clone(),
        );
        registry.register(
            "csg_http_request_duration_seconds",
            "Time to the response's head, by route",
            inner.http_seconds.clone(),
        );
        registry.register(
            "csg_events_published",
            "Live events published, by type",
            inner.events_published.clone(),
        );
        registry.register(
            "csg_event_stream_listeners",
            "Open GET /v1/events streams",
            inner.sse_listeners.clone(),
        );
        registry.register(
            "csg_event_stream_lagged_events",
            "Events event-stream listeners fell behind their replica's tail by (each read them from the store instead)",
            inner.sse_lagged.clone(),
        );
        registry.register(
            "csg_webhook_deliveries",
            "Webhook delivery attempts, by webhook and outcome (delivered, retry, failed)",
            inner.webhook_deliveries.clone(),
        );
        registry.register(
            "csg_webhook_deliveries_pending",
            "Webhook deliveries waiting to be sent or retried, as stored",
            inner.webhook_pending.clone(),
        );
        registry.register(
            "csg_webhook_events_dropped",
            "Events the webhooks' queue could not take (100,000 waiting to be stored): not delivered",
            inner.webhook_events_dropped.clone(),
        );
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// A region's ingest, whose counters to expose (its MQTT source's, once it is started).
    pub fn attach_ingest(&self, region: &str, stats: Arc<IngestStats>) {
        lock(&self.inner.ingest.stats).push((region.to_owned(), stats));
    }

    /// A region's broker link, shown as `csg_broker_up{region}`.
    pub fn attach_link(
        &self,
        region: &str,
        link: tokio::sync::watch::Receiver<csg_transport::LinkState>,
    ) {
        lock(&self.inner.ingest.links).push((region.to_owned(), link));
    }

    /// One call to a gateway finished: its method, outcome (`ok`, the agent's error code, or
    /// the console's own failure such as `timeout`) and round trip.
    pub fn observe_call(&self, region: &str, method: &str, outcome: &str, latency: Duration) {
        let method = {
            let mut known = lock(&self.inner.call_methods);
            if known.contains(method) || known.len() < MAX_CALL_METHODS {
                known.insert(method.to_owned());
                label(method)
            } else {
                "other".to_owned()
            }
        };
        self.inner
            .calls
            .get_or_create(&CallLabels {
                region: label(region),
                method,
                outcome: label(outcome),
            })
            .observe(latency.as_secs_f64());
    }

    /// Follows the jobs' progress events on the bus into the job gauges, until aborted. The
    /// events carry whole counts, so one missed by a lagging listener is made good by the
    /// next.
    pub fn follow_jobs(&self, bus: &crate::events::Bus) -> tokio::task::JoinHandle<()> {
        let mut rx = bus.subscribe();
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(p) => {
                        if let crate::events::Event::Job {
                            id, state, counts, ..
                        } = &p.event
                        {
                            let counts: Vec<(&str, u64)> = counts
                                .as_object()
                                .map(|m| {
                                    m.iter()
                                        .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()?)))
                                        .collect()
                                })
                                .unwrap_or_default();
                            metrics.observe_job(id, state, &counts);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// A job's progress: its state and its executions' counts by state (`queued`,
    /// `in_progress`, `succeeded`, …; a `total` entry is ignored). A job in a final state
    /// (`succeeded`, `failed`, `aborted`, `cancelled`) leaves the gauges and counts once in
    /// `csg_jobs_finished_total`.
    pub fn observe_job(&self, job_id: &str, state: &str, counts: &[(&str, u64)]) {
        let finished = matches!(state, "succeeded" | "failed" | "aborted" | "cancelled");
        let mut jobs = lock(&self.inner.job_counts);
        if finished {
            if jobs.remove(job_id).is_some() {
                self.inner
                    .jobs_finished
                    .get_or_create(&StateLabels {
                        state: label(state),
                    })
                    .inc();
            }
        } else {
            let c: BTreeMap<String, u64> = counts
                .iter()
                .filter(|(k, _)| *k != "total")
                .map(|(k, v)| (label(k), *v))
                .collect();
            jobs.insert(job_id.to_owned(), c);
        }
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        for c in jobs.values() {
            for (k, v) in c {
                *sums.entry(k.clone()).or_default() += v;
            }
        }
        self.inner.executions.clear();
        for (state, v) in sums {
            self.inner
                .executions
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        self.inner
            .jobs_running
            .set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
    }

    /// One write of the fleet's batch to the store.
    pub fn observe_store_write(&self, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .store_writes
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// One HTTP request answered. `route` is the matched pattern (`/v1/instances/{id}`), so
    /// the label's values are bounded by the routes.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: label(method),
                status,
            })
            .inc();
        self.inner
            .http_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn event_published(&self, kind: crate::events::EventKind) {
        self.inner
            .events_published
            .get_or_create(&EventLabels {
                r#type: kind.as_str(),
            })
            .inc();
    }

    /// An event stream opened; the guard counts it closed when dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.inner.sse_listeners.inc();
        StreamGuard(self.clone())
    }

    pub fn stream_lagged(&self, missed: u64) {
        self.inner.sse_lagged.inc_by(missed);
    }

    /// One delivery attempt: `delivered`, `retry` (failed, will be tried again) or `failed`
    /// (given up).
    pub fn webhook_attempt(&self, webhook: &str, outcome: &'static str) {
        self.inner
            .webhook_deliveries
            .get_or_create(&WebhookLabels {
                webhook: label(webhook),
                outcome,
            })
            .inc();
    }

    /// Deliveries pending, as last counted in the store.
    pub fn set_webhooks_pending(&self, n: u64) {
        self.inner
            .webhook_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Events dropped by the webhooks' queue since start (the bus counts them).
    pub fn set_webhook_events_dropped(&self, total: u64) {
        let c = &self.inner.webhook_events_dropped;
        c.inc_by(total.saturating_sub(c.get()));
    }

    /// Instances per (region, presence), counted in the store at a scrape.
    pub fn set_instances(&self, presence: &PresenceCounts) {
        let mut seen = lock(&self.inner.presence_seen);
        let now: HashSet<PresenceLabels> = presence
            .iter()
            .map(|(region, presence, n)| {
                let l = PresenceLabels {
                    region: region.clone(),
                    presence: presence.clone(),
                };
                self.inner
                    .instances
                    .get_or_create(&l)
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
                l
            })
            .collect();
        for gone in seen.difference(&now) {
            self.inner.instances.get_or_create(gone).set(0);
        }
        *seen = seen.union(&now).cloned().collect();
    }

    /// The text a scraper reads.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// Held by an open event stream.
pub struct StreamGuard(Metrics);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.inner.sse_listeners.dec();
    }
}

/// Parses the text format strictly enough to catch a malformed exposition: every line is a
/// `# HELP`, `# TYPE`, `# UNIT` or `# EOF` comment, or a sample `name{labels} value` whose name
/// belongs to the last `# TYPE`d family and whose value is a number. Returns the samples by
/// their full name with labels.
pub fn parse_text(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut samples = BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if eof {
            return Err(at("after # EOF"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("EOF"), None, None) => eof = true,
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "info" | "unknown"
                    ) {
                        return Err(at("unknown type"));
                    }
                    family = Some((name.to_owned(), kind.to_owned()));
                }
                (Some("HELP" | "UNIT"), Some(_), _) => {}
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("value not a number"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        if let Some(labels) = series.strip_prefix(name) {
            if !(labels.is_empty() || labels.starts_with('{') && labels.ends_with('}')) {
                return Err(at("bad labels"));
            }
        }
        let Some((fam, kind)) = &family else {
            return Err(at("sample before any # TYPE"));
        };
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| name == format!("{fam}{s}")) {
            return Err(at("sample outside its family"));
        }
        if samples.insert(series.to_owned(), value).is_some() {
            return Err(at("sample repeated"));
        }
    }
    if !eof {
        return Err("no # EOF at the end".to_owned());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_recorded_appears_in_text_that_parses() {
        let m = Metrics::new();
        let stats = Arc::new(IngestStats::default());
        stats.heartbeats.fetch_add(7, Ordering::Relaxed);
        stats.bad_payload.fetch_add(2, Ordering::Relaxed);
        m.attach_ingest("default", stats.clone());
        m.observe_call("default", "sys.ping", "ok", Duration::from_millis(3));
        m.observe_call("default", "sys.ping", "timeout", Duration::from_secs(30));
        m.observe_job(
            "j1",
            "running",
            &[("total", 10), ("queued", 6), ("succeeded", 4)],
        );
        m.observe_job("j2", "running", &[("queued", 1)]);
        m.observe_store_write(true, Duration::from_millis(4));
        m.observe_http("/v1/instances", "GET", 200, Duration::from_millis(2));
        m.set_instances(&vec![("default".into(), "online".into(), 3)]);
        m.set_webhooks_pending(1);
        let text = m.encode().unwrap();
        let s = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s["csg_heartbeats_ingested_total{region=\"default\"}"], 7.0);
        assert_eq!(
            s["csg_status_dropped_total{region=\"default\",reason=\"bad_payload\"}"],
            2.0
        );
        assert_eq!(
            s["csg_instances{region=\"default\",presence=\"online\"}"],
            3.0
        );
        assert_eq!(
            s["csg_call_duration_seconds_count{region=\"default\",method=\"sys.ping\",outcome=\"ok\"}"],
            1.0
        );
        assert_eq!(s["csg_job_executions{state=\"queued\"}"], 7.0);
        assert_eq!(s["csg_jobs_running"], 2.0);
        assert_eq!(
            s["csg_http_requests_total{route=\"/v1/instances\",method=\"GET\",status=\"200\"}"],
            1.0
        );
        assert_eq!(s["csg_webhook_deliveries_pending"], 1.0);

        // Values move; a job that ends leaves the gauges; a vanished presence goes to 0.
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        m.observe_job("j1", "succeeded", &[]);
        m.observe_job("j1", "succeeded", &[]);
        m.set_instances(&vec![("default".into(), "offline".into(), 3)]);
        let s = parse_text(&m.encode().unwrap()).unwrap();
        assert_eq!(s["csg_heartbeats_ingested_total{region=\"default\"}"], 8.0);
        assert_eq!(s["csg_jobs_running"], 1.0);
        assert_eq!(s["csg_job_executions{state=\"queued\"}"], 1.0);
        assert!(!s.contains_key("csg_job_executions{state=\"succeeded\"}"));
        assert_eq!(s["csg_jobs_finished_total{state=\"succeeded\"}"], 1.0);
        assert_eq!(
            s["csg_instances{region=\"default\",presence=\"online\"}"],
            0.0
        );
    }

    #[test]
    fn invented_methods_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_CALL_METHODS + 10 {
            m.observe_call(
                "default",
                &format!("x.m{i}"),
                "ok",
                Duration::from_millis(1),
            );
        }
        let s = parse_text(&m.encode().unwrap()).unwrap();
        assert_eq!(
            s["csg_call_duration_seconds_count{region=\"default\",method=\"other\",outcome=\"ok\"}"],
            10.0
        );
    }

    #[test]
    fn the_parser_refuses_malformed_text() {
        for bad in [
            "x 1\n# EOF\n",
            "# TYPE x gauge\nx one\n# EOF\n",
            "# TYPE x gauge\ny 1\n# EOF\n",
            "# TYPE x gauge\nx 1\n",
            "# TYPE x gauge\nx 1\nx 1\n# EOF\n",
            "# TYPE x counter\nx 1\n# EOF\n",
        ] {
            assert!(parse_text(bad).is_err(), "{bad:?}");
        }
        assert!(parse_text("# TYPE x counter\nx_total 1\n# EOF\n").is_ok());
    }
}
