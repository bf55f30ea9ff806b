//! A test bed: one broker, one recorder that sees every topic, one agent, and helpers to talk
//! to the agent the way a console does.

use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::{Agent, AgentConfig};
use crate::broker::Broker;
use crate::csgctl::Csgctl;
use crate::recorder::{Mark, Msg, Recorder};
use crate::rpc;
use crate::TIMEOUT;

/// The first online presence of the agent with `config` that `rec` saw after `mark`, waiting up
/// to `timeout` for it. By contract, online means its command subscription is live.
pub fn wait_online(
    rec: &Recorder,
    mark: Mark,
    config: &AgentConfig,
    timeout: Duration,
) -> Option<Msg> {
    let presence = config.presence_topic();
    rec.wait_for_since(mark, timeout, |m| {
        m.topic == presence && m.field("state").as_deref() == Some("online")
    })
}

pub struct Bed {
    // Field order is drop order: the agent goes first so its Will (if any) reaches a
    // live broker, and the broker's log is printed last on failure.
    pub agent: Agent,
    pub rec: Recorder,
    pub broker: Broker,
    /// Where this bed's replies go; under the reply parent, as a console's would be.
    pub reply_to: String,
}

impl Bed {
    /// Broker, recorder on `#`, and an agent with the test defaults; returns once the agent is
    /// online (which, by contract, means its command subscription is live).
    pub fn start(instance: &str) -> Bed {
        Self::start_with(instance, |_| {})
    }

    /// Like [`start`](Self::start), with the config adjusted first.
    pub fn start_with(instance: &str, adjust: impl FnOnce(&mut AgentConfig)) -> Bed {
        let broker = Broker::start();
        let url = broker.url();
        Self::start_on(broker, &url, instance, adjust, Agent::spawn)
    }

    /// A bed on a broker the caller started, with the agent connecting to `url` (e.g. a relay
    /// in front of the broker) and started by `spawn` (e.g. inside a network namespace).
    pub fn start_on(
        broker: Broker,
        url: &str,
        instance: &str,
        adjust: impl FnOnce(&mut AgentConfig),
        spawn: impl FnOnce(&AgentConfig) -> Agent,
    ) -> Bed {
        // Subscribed before the agent exists, so its very first messages are seen.
        let rec = Recorder::connect(broker.port(), &["#"]);
        let mut config = AgentConfig::new(instance, url);
        adjust(&mut config);
        let reply_to = format!("{}/{}", config.up, crate::unique("e2e-console"));
        let agent = spawn(&config);
        let mut bed = Bed {
            agent,
            rec,
            broker,
            reply_to,
        };
        bed.wait_online(Mark::default());
        bed
    }

    pub fn config(&self) -> &AgentConfig {
        &self.agent.config
    }

    pub fn instance(&self) -> &str {
        &self.agent.config.instance_id
    }

    pub fn client_id(&self) -> String {
        self.agent.config.client_id()
    }

    pub fn broker_pid(&self) -> u32 {
        self.broker.pid()
    }

    pub fn csgctl(&self) -> Csgctl {
        Csgctl::new(&self.broker.url())
    }

    /// Whether `m` is this agent's presence with `state`.
    pub fn is_presence(&self, m: &Msg, state: &str) -> bool {
        m.topic == self.config().presence_topic() && m.field("state").as_deref() == Some(state)
    }

    /// Waits for an online presence after `mark`; fails with the agent's log (and exit
    /// status if it died) otherwise.
    pub fn wait_online(&mut self, mark: Mark) -> Msg {
        let found = wait_online(&self.rec, mark, self.config(), TIMEOUT);
        match found {
            Some(m) => m,
            None => {
                let status = self.agent.try_status();
                panic!(
                    "agent {} did not publish online presence on {} within {TIMEOUT:?} \
                     (process: {})\n{}\n{}\n----- broker log -----\n{}",
                    self.instance(),
                    self.config().presence_topic(),
                    match status {
                        Some(s) => format!("exited, {s}"),
                        None => "still running".into(),
                    },
                    self.agent.log(),
                    self.rec.dump(),
                    self.broker.log()
                );
            }
        }
    }

    /// Publishes raw bytes to the agent's command topic.
    pub fn send_raw(&self, payload: impl Into<Vec<u8>>) {
        self.rec.publish(&self.config().command_topic(), payload);
    }

    /// Publishes a request and returns its raw reply (the first message on `reply_to` with
    /// this id); panics with everything seen if none arrives.
    pub fn call_raw(&self, id: &str, method: &str, params: Value) -> Value {
        let mark = self.rec.mark();
        self.send_raw(rpc::bytes(&rpc::request(
            id,
            method,
            params,
            Some(&self.reply_to),
        )));
        self.reply_since(mark, id)
    }

    /// The first reply with `id` on this bed's reply topic after `mark`.
    pub fn reply_since(&self, mark: Mark, id: &str) -> Value {
        self.reply_on_since(&self.reply_to, mark, id)
    }

    pub fn reply_on_since(&self, topic: &str, mark: Mark, id: &str) -> Value {
        let m = self
            .rec
            .expect_since(mark, &format!("reply to {id} on {topic}"), TIMEOUT, |m| {
                m.topic == topic && m.field("id").as_deref() == Some(id)
            });
        assert_eq!(m.qos, 1, "replies are published at QoS 1: {}", m.summary());
        assert!(!m.retain, "replies are not retained: {}", m.summary());
        m.json_or_panic()
    }

    /// Calls `method` and returns its result, failing unless the reply is ok.
    pub fn call_ok(&self, method: &str, params: Value) -> Value {
        let id = crate::unique("call");
        let reply = self.call_raw(&id, method, params);
        rpc::expect_ok(&reply, &id)
    }

    /// Calls `method` expecting an error reply with `code`; returns the error object.
    pub fn call_err(&self, method: &str, params: Value, code: &str) -> Value {
        let id = crate::unique("call");
        let reply = self.call_raw(&id, method, params);
        rpc::expect_err(&reply, Some(&id), code)
    }

    /// `sys.status` result.
    pub fn status(&self) -> Value {
        self.call_ok("sys.status", json!({}))
    }

    /// The request counters from `sys.status`.
    pub fn counters(&self) -> Value {
        self.status()["counters"].clone()
    }

    pub fn counter(&self, name: &str) -> u64 {
        let c = self.counters();
        c[name]
            .as_u64()
            .unwrap_or_else(|| panic!("counters.{name} missing or not a number: {c}"))
    }

    /// How the counters grew since `base` (an earlier [`counters`](Self::counters)),
    /// polling `sys.status` until every counter in `want` has grown by at least its number.
    ///
    /// The `sys.status` calls made here are themselves received and executed; they are taken
    /// out of `received` and `executed`, so the growth is what the test itself caused and can
    /// be compared exactly. (Whether an agent counts a status call before or after taking its
    /// snapshot, the difference between two snapshots contains exactly one status call per
    /// poll.)
    pub fn counters_growth(&self, base: &Value, want: &[(&str, u64)]) -> Value {
        let end = std::time::Instant::now() + TIMEOUT;
        let mut polls = 0u64;
        loop {
            let now = self.counters();
            polls += 1;
            let mut growth = serde_json::Map::new();
            if let Some(obj) = now.as_object() {
                for (k, v) in obj {
                    let (Some(v), Some(b)) = (v.as_u64(), base[k].as_u64()) else {
                        continue;
                    };
                    let own = if k == "received" || k == "executed" {
                        polls
                    } else {
                        0
                    };
                    growth.insert(k.clone(), json!(v as i64 - b as i64 - own as i64));
                }
            }
            let growth = Value::Object(growth);
            let done = want
                .iter()
                .all(|(k, n)| growth[*k].as_i64().is_some_and(|g| g >= *n as i64));
            if done || std::time::Instant::now() >= end {
                return growth;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`counters_growth`](Self::counters_growth), then asserts each named counter grew by
    /// exactly the number given: more would mean double counting or double execution.
    pub fn assert_growth(&self, base: &Value, exact: &[(&str, u64)]) -> Value {
        let g = self.counters_growth(base, exact);
        for (k, n) in exact {
            assert_eq!(
                g[*k].as_i64(),
                Some(*n as i64),
                "counters.{k} should have grown by {n}; growth: {g}
base: {base}
{}",
                self.agent.log()
            );
        }
        g
    }

    /// Starts another agent on this bed's broker and waits until it is online.
    pub fn spawn_agent(&self, instance: &str, adjust: impl FnOnce(&mut AgentConfig)) -> Agent {
        let mut config = AgentConfig::new(instance, &self.broker.url());
        adjust(&mut config);
        let mark = self.rec.mark();
        let mut agent = Agent::spawn(&config);
        if wait_online(&self.rec, mark, &config, TIMEOUT).is_none() {
            let status = agent.try_status();
            panic!(
                "agent {instance} not online within {TIMEOUT:?} (exit: {status:?})
{}
{}",
                agent.log(),
                self.dump()
            );
        }
        agent
    }

    /// A full round trip through the agent after everything sent before it: the agent reads
    /// one topic in order, so once this ping is answered every earlier message on the command
    /// topic has been read. A short quiet period then covers replies produced on other tasks.
    pub fn barrier(&self) {
        let r = self.call_ok("sys.ping", json!({}));
        assert_eq!(r["pong"], json!(true), "{r}");
        std::thread::sleep(crate::QUIET);
    }

    /// Messages after `mark` that the agent published in answer to something: everything
    /// except what the recorder itself sent to the command topic and the agent's heartbeats.
    pub fn agent_publications_since(&self, mark: Mark) -> Vec<Msg> {
        let cmd = self.config().command_topic();
        let hb = self.config().heartbeat_topic();
        self.rec
            .matching_since(mark, |m| m.topic != cmd && m.topic != hb)
    }

    /// Diagnostics for failure messages: the recording and the broker log.
    pub fn dump(&self) -> String {
        format!(
            "{}\n----- broker log -----\n{}",
            self.rec.dump(),
            self.broker.log()
        )
    }
}
