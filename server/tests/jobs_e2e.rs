//! Jobs against a real Mosquitto and real agents: the fleet writes presence to a SQLite store,
//! jobs are made through the API (in process), and the runner sends them with the service's
//! caller (`rpc::ConsoleCaller` over a `csg_console::Console`).
//!
//! Build the agent first: `cargo build -p csg-agent --bins`.

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use csg_console::{CallError, Console, ConsoleOptions};
use csg_consoled::events::Bus;
use csg_consoled::fleet::driver::{self, system_clock, DriverConfig, SharedFleet};
use csg_consoled::fleet::{Fleet, FleetConfig, MqttStatusSource, ShareGroup};
use csg_consoled::http::{self, AppState, HttpLimits, RegionHandle, Regions};
use csg_consoled::jobs::{Runner, RunnerConfig};
use csg_consoled::rpc::{CallSpec, Caller, ConsoleCaller};
use csg_consoled::sink::StoreSink;
use csg_consoled::store::{self, NewToken, Presence, Region, Scope, Store, TokenName, TokenSecret};
use csg_e2e::{Agent, AgentConfig, Broker, TIMEOUT};
use csg_protocol::envelope::{Reply, ReplyBody};
use csg_protocol::identity::{GroupId, InstanceId, MethodName, RequestId};
use csg_protocol::{BrokerList, TopicParents};
use csg_transport::Protocol;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

const KEEP_ALIVE: Duration = Duration::from_secs(5);

fn region() -> Region {
    Region::new("e2e").unwrap()
}

fn agent_config(broker: &Broker, id: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new(id, &broker.url());
    cfg.heartbeat_interval_s = 1;
    cfg.keep_alive_s = KEEP_ALIVE.as_secs();
    cfg
}

/// The console side: a store fed by the fleet, the API, and a console session for calls.
struct Side {
    store: Arc<dyn Store>,
    app: axum::Router,
    token: String,
    caller: Arc<ConsoleCaller>,
    fleet_stop: Option<oneshot::Sender<()>>,
    fleet_task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Side {
    async fn start(broker: &Broker) -> Side {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("console.db").display());
        let store = store::open(&url).await.unwrap();

        // The service's shape: one console session carries calls and, through its tap, the
        // status ingest.
        let mut opts = ConsoleOptions::new(
            BrokerList::parse(&broker.url()).unwrap(),
            GroupId::new("GID_csg").unwrap(),
            InstanceId::new(csg_e2e::unique("consoled-jobs")).unwrap(),
        );
        if csg_e2e::mqtt5() {
            opts.protocol = Protocol::V5;
        }
        opts.keep_alive = KEEP_ALIVE;
        opts.connect_timeout = TIMEOUT;
        let (source, tap) = MqttStatusSource::new(
            TopicParents::default(),
            &ShareGroup::new("consoled").unwrap(),
            1024,
        )
        .unwrap();
        opts.subscriptions = tap.subscriptions;
        opts.tap = Some(tap.tap);
        let console = Console::connect(opts)
            .await
            .expect("the console did not connect and subscribe");
        let link = console.link();
        let bus = Bus::default();
        let metrics = csg_consoled::metrics::Metrics::new();
        let fleet: SharedFleet = Arc::new(Mutex::new(Fleet::new("e2e", FleetConfig::default())));
        let clock = system_clock();
        let sink = StoreSink {
            store: store.clone(),
            region: region(),
            clock: clock.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            host_samples: true,
        };
        let (fleet_stop, rx) = oneshot::channel();
        let fleet_task = tokio::spawn(driver::run(
            source,
            fleet,
            sink,
            DriverConfig {
                flush_every: Duration::from_millis(50),
            },
            clock,
            rx,
        ));

        let caller = Arc::new(ConsoleCaller {
            console,
            signer: None,
        });
        let calls = Arc::new(csg_consoled::calls::CallService {
            store: store.clone(),
            caller: caller.clone(),
            region: region(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            link: link.clone(),
            ids: csg_console::IdGenerator::new("consoled-jobs"),
            in_flight: Arc::default(),
        });
        let app = http::router(
            AppState {
                store: store.clone(),
                regions: Regions::one(RegionHandle {
                    region: region(),
                    link,
                    calls,
                }),
                bus,
                // No log writer or tail runs here: these tests read no event stream.
                log: csg_consoled::eventlog::LogTail::new(store.clone()),
                metrics,
            },
            &HttpLimits {
                max_body_bytes: 1 << 20,
                request_timeout: Duration::from_secs(10),
            },
        );
        let secret = TokenSecret::generate().unwrap();
        store
            .create_token(&NewToken {
                name: TokenName::new("ops").unwrap(),
                hash: secret.hash(),
                scopes: vec![Scope::Operate],
                groups: vec![],
                created_ms: 0,
            })
            .await
            .unwrap();

        Side {
            store,
            app,
            token: secret.expose().to_owned(),
            caller,
            fleet_stop: Some(fleet_stop),
            fleet_task: Some(fleet_task),
            _dir: dir,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create(&self, body: Value) -> String {
        let (s, j) = self.api("POST", "/v1/jobs", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        j["id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        let (s, j) = self.api("GET", &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        j
    }

    /// Waits until the job is in `state`; returns it.
    async fn wait_job(&self, id: &str, state: &str, limit: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let j = self.job(id).await;
            if j["state"] == json!(state) {
                return j;
            }
            assert!(
                t0.elapsed() < limit,
                "job {id} not {state} after {limit:?}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_presence(&self, id: &str, want: Presence) {
        let t0 = Instant::now();
        let iid = InstanceId::new(id).unwrap();
        loop {
            let row = self.store.get_instance(&region(), &iid).await.unwrap();
            if row.as_ref().is_some_and(|r| r.presence == want) {
                return;
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "{id} never {want:?} in the store: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The agent's request counters (`sys.status`).
    async fn counters(&self, id: &str) -> Value {
        let reply = self
            .caller
            .call(&CallSpec {
                instance: InstanceId::new(id).unwrap(),
                method: MethodName::new("sys.status").unwrap(),
                params: Map::new(),
                id: RequestId::new(csg_e2e::unique("status")).unwrap(),
                timeout: TIMEOUT,
                group: None,
            })
            .await
            .unwrap();
        match reply.body {
            ReplyBody::Ok(v) => v["counters"].clone(),
            ReplyBody::Err(e) => panic!("sys.status: {e}"),
        }
    }

    async fn executions(&self, id: &str) -> Vec<Value> {
        let (_, p) = self
            .api("GET", &format!("/v1/jobs/{id}/executions?limit=100"), None)
            .await;
        p["items"].as_array().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(s) = self.fleet_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.fleet_task.take() {
            t.await.unwrap();
        }
        self.caller.console.disconnect().await;
    }
}

/// A console that dies right after the agent answered: the request ran, its outcome was never
/// recorded. It wraps the real caller, so the agent really ran it.
struct DiesAfterSending(Arc<ConsoleCaller>);

#[async_trait]
impl Caller for DiesAfterSending {
    async fn call(&self, spec: &CallSpec) -> Result<Reply, CallError> {
        let _ = self.0.call(spec).await;
        std::future::pending().await
    }
}

fn runner_cfg() -> RunnerConfig {
    let mut c = RunnerConfig::new("console-1", region());
    c.tick = Duration::from_millis(20);
    c.claim_every = Duration::from_millis(100);
    c
}

fn start_runner(side: &Side, caller: Arc<dyn Caller>) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, rx) = oneshot::channel();
    let task = Runner::spawn(side.store.clone(), caller, Bus::default(), runner_cfg(), rx);
    (stop, task)
}

fn job_body(method: &str, params: Value, targets: &[&str]) -> Value {
    json!({"method": method, "params": params, "target": {"instances": targets},
           "rate_per_minute": 6000, "max_in_flight": 3, "execution_timeout_ms": 10000,
           "retry": {"max_attempts": 3, "base_ms": 100, "max_ms": 1000}})
}

fn grew(before: &Value, after: &Value, key: &str) -> i64 {
    after[key].as_i64().unwrap() - before[key].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_real_agents_through_restarts_offline_gateways_aborts_and_retries() {
    let broker = Broker::start();
    let side = Side::start(&broker).await;
    let ids = ["gw-job-1", "gw-job-2", "gw-job-3"];
    let configs: Vec<AgentConfig> = ids.iter().map(|i| agent_config(&broker, i)).collect();
    let mut agents: Vec<Agent> = configs.iter().map(Agent::spawn).collect();
    for id in ids {
        side.wait_presence(id, Presence::Online).await;
    }

    // 1. sys.ping over three agents: succeeded, one execution each.
    let (stop, task) = start_runner(&side, side.caller.clone());
    let ping = side.create(job_body("sys.ping", json!({}), &ids)).await;
    let j = side.wait_job(&ping, "succeeded", TIMEOUT).await;
    assert_eq!(j["counts"]["succeeded"], json!(3), "{j}");
    for e in side.executions(&ping).await {
        assert_eq!(e["state"], json!("succeeded"), "{e}");
        assert_eq!(e["attempts"], json!(1));
        assert_eq!(e["reply"]["pong"], json!(true), "{e}");
    }
    let _ = stop.send(());
    task.await.unwrap();

    // 2. A mutation, and the runner dies after the agents ran it but before it recorded their
    //    answers; another runner on the same store finishes it, re-sending the same ids: each
    //    agent ran it once and answered the re-send from its id memory.
    let before: Vec<Value> = futures_join(&side, &ids).await;
    let dying = start_runner(&side, Arc::new(DiesAfterSending(side.caller.clone())));
    let mutation = side
        .create(job_body("sys.reconcile", json!({}), &ids))
        .await;
    let t0 = Instant::now();
    loop {
        let j = side.job(&mutation).await;
        if j["counts"]["in_progress"] == json!(3) {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "never all in progress: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the agents their moment to answer the dying runner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    dying.1.abort();
    let _ = dying.1.await;
    let (stop, task) = start_runner(&side, side.caller.clone());
    let j = side.wait_job(&mutation, "succeeded", TIMEOUT).await;
    assert_eq!(j["counts"]["succeeded"], json!(3), "{j}");
    for (i, id) in ids.iter().enumerate() {
        let after = side.counters(id).await;
        // One status call is in the later snapshot's counts, whichever way the agent counts it.
        assert_eq!(
            grew(&before[i], &after, "executed") - 1,
            1,
            "{id} ran the mutation once: {after}"
        );
        assert_eq!(
            grew(&before[i], &after, "duplicates"),
            1,
            "{id} answered the re-send from memory: {after}"
        );
    }

    // 3. The abort rule: no agent has NFS configured, so nfs.export.list is refused
    //    (UNKNOWN_METHOD: rejected); one rejection in one executed is over 10 %.
    let mut body = job_body("nfs.export.list", json!({}), &ids);
    body["max_in_flight"] = json!(1);
    body["abort"] = json!({"failure_type": "rejected", "threshold_pct": 10, "min_executed": 1});
    let aborted = side.create(body).await;
    let j = side.wait_job(&aborted, "aborted", TIMEOUT).await;
    assert_eq!(j["counts"]["rejected"], json!(1), "{j}");
    assert_eq!(j["counts"]["cancelled"], json!(2), "{j}");
    assert!(
        j["state_reason"].as_str().unwrap().contains("abort rule"),
        "{j}"
    );

    // 4. Cancel: at one a minute only the first goes; cancelling stops the rest.
    let mut body = job_body("sys.ping", json!({}), &ids);
    body["rate_per_minute"] = json!(1);
    let slow = side.create(body).await;
    let t0 = Instant::now();
    while side.job(&slow).await["counts"]["succeeded"] != json!(1) {
        assert!(t0.elapsed() < TIMEOUT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, c) = side
        .api("POST", &format!("/v1/jobs/{slow}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["state"], json!("cancelled"));
    assert_eq!(
        (
            c["counts"]["succeeded"].clone(),
            c["counts"]["cancelled"].clone()
        ),
        (json!(1), json!(2))
    );

    // 5. An offline gateway: its execution waits, and is sent when it comes back.
    agents[1].kill9();
    side.wait_presence(ids[1], Presence::Offline).await;
    let waiting = side.create(job_body("sys.ping", json!({}), &ids)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = side.job(&waiting).await;
    assert_eq!(j["state"], json!("running"), "{j}");
    assert_eq!(
        (
            j["counts"]["succeeded"].clone(),
            j["counts"]["queued"].clone()
        ),
        (json!(2), json!(1)),
        "{j}"
    );
    agents[1] = Agent::spawn(&configs[1]);
    side.wait_presence(ids[1], Presence::Online).await;
    let j = side.wait_job(&waiting, "succeeded", TIMEOUT).await;
    assert_eq!(j["counts"]["succeeded"], json!(3), "{j}");

    // 6. A gateway offline past the job's deadline times out; retry-failed makes a child job
    //    over it, which succeeds once the gateway is back.
    agents[2].kill9();
    side.wait_presence(ids[2], Presence::Offline).await;
    let mut body = job_body("sys.ping", json!({}), &ids);
    body["deadline_ms"] = json!(csg_e2e::now_ms() as i64 + 2000);
    let late = side.create(body).await;
    let j = side.wait_job(&late, "failed", TIMEOUT).await;
    assert_eq!(
        (
            j["counts"]["succeeded"].clone(),
            j["counts"]["timed_out"].clone()
        ),
        (json!(2), json!(1)),
        "{j}"
    );
    agents[2] = Agent::spawn(&configs[2]);
    side.wait_presence(ids[2], Presence::Online).await;
    let (s, child) = side
        .api("POST", &format!("/v1/jobs/{late}/retry-failed"), None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{child}");
    assert_eq!(child["parent_job_id"], json!(late));
    assert_eq!(child["target"], json!({"instances": [ids[2]]}));
    let child_id = child["id"].as_str().unwrap().to_owned();
    let j = side.wait_job(&child_id, "succeeded", TIMEOUT).await;
    assert_eq!(j["counts"]["succeeded"], json!(1), "{j}");

    // What the API answered matches the OpenAPI document it serves.
    let (_, doc) = side.api("GET", "/v1/openapi.json", None).await;
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/executions",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/resume",
        "/v1/jobs/{id}/retry-failed",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    let conforms = |schema: &str, value: &Value| {
        let root = json!({
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"],
        });
        let v = jsonschema::draft202012::new(&root).unwrap();
        let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{schema}: {errors:?}\n{value}");
    };
    let mut body = job_body("sys.ping", json!({}), &ids);
    body["waves"] = json!([{"percent": 50, "success_threshold_pct": 90}]);
    body["abort"] = json!({"failure_type": "any", "threshold_pct": 10, "min_executed": 2});
    conforms("JobRequest", &body);
    let (s, dry) = side.api("POST", "/v1/jobs?dry_run=true", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    conforms("DryRunOut", &dry);
    conforms("JobOut", &side.job(&late).await);
    conforms("JobOut", &child);
    conforms("JobOut", &c);
    let (_, page) = side.api("GET", "/v1/jobs?limit=3", None).await;
    conforms("JobPage", &page);
    let (_, execs) = side
        .api("GET", &format!("/v1/jobs/{late}/executions"), None)
        .await;
    assert!(
        execs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["error"]["code"] == json!("DEADLINE")),
        "{execs}"
    );
    conforms("ExecutionPage", &execs);
    let (_, execs) = side
        .api("GET", &format!("/v1/jobs/{mutation}/executions"), None)
        .await;
    conforms("ExecutionPage", &execs);
    let (s, problem) = side
        .api(
            "POST",
            "/v1/jobs",
            Some(job_body("sys.nope", json!({}), &ids)),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    conforms("Problem", &problem);

    let _ = stop.send(());
    task.await.unwrap();
    side.stop().await;
}

/// Every agent's counters, in order.
async fn futures_join(side: &Side, ids: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(side.counters(id).await);
    }
    out
}
