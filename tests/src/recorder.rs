//! A raw MQTT client that keeps every message it receives and can publish anything.
//!
//! It plays the console and the operator's eye at once: tests inject hand-made (and hostile)
//! payloads with it, and observe the agent's replies, heartbeats and presence — including the
//! retain flag and QoS the broker delivered them with, and when they arrived.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use csg_transport::Properties;
pub use csg_transport::Qos;
use csg_transport::{
    LinkState, Message, NoHooks, Protocol, PublishError, Queues, Session, SessionConfig,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// One received PUBLISH.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set by the broker when the message came from its retained store (MQTT 3.1.1 clears it
    /// on live delivery), so it tells "retained" apart from "published just now".
    pub retain: bool,
    /// The QoS it was delivered at: min(publish QoS, our subscription QoS = 1).
    pub qos: u8,
    /// MQTT 5 properties (empty on 3.1.1).
    pub props: Properties,
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// The payload as JSON; panics naming the topic when it is not JSON.
    pub fn json_or_panic(&self) -> Value {
        self.json().unwrap_or_else(|| {
            panic!(
                "message on {} is not JSON: {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The string field `key` of a JSON payload.
    pub fn field(&self, key: &str) -> Option<String> {
        self.json()
            .and_then(|v| v.get(key).and_then(Value::as_str).map(str::to_string))
    }

    /// Short form for failure messages.
    pub fn summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.payload);
        let text: String = if text.chars().count() > 300 {
            format!(
                "{}… ({} bytes)",
                text.chars().take(300).collect::<String>(),
                self.payload.len()
            )
        } else {
            text.into_owned()
        };
        format!(
            "{} [q{} r{}] {}",
            self.topic,
            self.qos,
            u8::from(self.retain),
            text
        )
    }
}

#[derive(Default)]
struct State {
    msgs: Vec<Msg>,
    /// Sessions that became ready (connected and subscribed): more than one after a broker
    /// restart.
    sessions: u32,
    last_error: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.cv.notify_all();
    }
}

/// Position in the recording, to look only at what arrived after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(usize);

/// A recording MQTT client. Dropping it disconnects it.
pub struct Recorder {
    session: Arc<Session>,
    shared: Arc<Shared>,
    client_id: String,
    started: Instant,
    stop: Option<oneshot::Sender<()>>,
}

impl Recorder {
    /// Connects to the broker on `port`, subscribes `filters` at QoS 1 and returns once the
    /// broker has acknowledged the subscription, so nothing published after this returns can
    /// be missed.
    pub fn connect(port: u16, filters: &[&str]) -> Recorder {
        let protocol = match crate::mqtt_protocol() {
            "5" => Protocol::V5,
            _ => Protocol::V311,
        };
        Self::connect_with(port, filters, protocol)
    }

    /// [`connect`](Self::connect) speaking `protocol`, whatever the run's version.
    pub fn connect_with(port: u16, filters: &[&str], protocol: Protocol) -> Recorder {
        let client_id = crate::unique("e2e-rec");
        let mut cfg = SessionConfig::new(client_id.clone(), "127.0.0.1", port);
        cfg.protocol = protocol;
        cfg.keep_alive = Duration::from_secs(30);
        cfg.connect_timeout = Duration::from_secs(5);
        // Large enough to inject payloads far over the agent's 64 KiB cap, and to receive
        // whatever the agent might wrongly send back.
        cfg.max_packet_size = 4 << 20;
        cfg.reconnect_min = Duration::from_millis(50);
        cfg.reconnect_max = Duration::from_millis(200);
        cfg.stable_after = Duration::ZERO;
        cfg.refusal_backoff = Duration::from_millis(200);
        cfg.subscriptions = filters.iter().map(|f| f.to_string()).collect();
        // Big enough that a burst of test publishes never finds the queue full.
        cfg.queues = Queues {
            requests: 1024,
            ..Queues::default()
        };

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("recorder runtime");
        // Room for any burst a test makes: a message that found it full would be dropped.
        let (inbound_tx, mut inbound) = mpsc::channel(1 << 16);
        let session = {
            let _in_rt = rt.enter();
            Arc::new(Session::start(cfg, Arc::new(NoHooks), inbound_tx))
        };
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let poll_session = session.clone();
        let poll_shared = shared.clone();
        thread::Builder::new()
            .name(format!("rec-{client_id}"))
            .spawn(move || {
                rt.block_on(async move {
                    let mut link = poll_session.link();
                    loop {
                        tokio::select! {
                            _ = &mut stop => break,
                            msg = inbound.recv() => match msg {
                                Some(m) => poll_shared.update(|st| st.msgs.push(Msg {
                                    topic: m.topic,
                                    payload: m.payload.to_vec(),
                                    retain: m.retain,
                                    qos: match m.qos {
                                        Qos::AtMostOnce => 0,
                                        Qos::AtLeastOnce => 1,
                                    },
                                    props: m.props,
                                    at: Instant::now(),
                                })),
                                None => break,
                            },
                            changed = link.changed() => {
                                if changed.is_err() {
                                    break;
                                }
                                let state = link.borrow_and_update().clone();
                                poll_shared.update(|st| match state {
                                    LinkState::Ready(epoch) => {
                                        st.sessions = u32::try_from(epoch).unwrap_or(u32::MAX)
                                    }
                                    LinkState::Down(Some(f)) => st.last_error = Some(f.describe()),
                                    LinkState::Down(None) => {}
                                });
                            }
                        }
                    }
                    poll_session.shutdown().await;
                });
            })
            .expect("spawn recorder thread");

        let rec = Recorder {
            session,
            shared,
            client_id,
            started: Instant::now(),
            stop: Some(stop_tx),
        };
        let ok = rec.wait_state(crate::TIMEOUT, |st| st.sessions >= 1);
        if !ok {
            let err = rec.shared.state.lock().unwrap().last_error.clone();
            panic!(
                "recorder could not connect/subscribe to 127.0.0.1:{port} within {:?}: {err:?}",
                crate::TIMEOUT
            );
        }
        rec
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    fn wait_state(&self, timeout: Duration, mut f: impl FnMut(&State) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if f(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = self.shared.cv.wait_timeout(st, end - now).unwrap().0;
        }
    }

    /// Waits until the recorder has reconnected and re-subscribed after a broker restart:
    /// its `sessions`-th session is ready.
    pub fn wait_resubscribed(&self, sessions: u32) -> bool {
        self.wait_state(crate::TIMEOUT, |st| st.sessions >= sessions)
    }

    /// Publishes at QoS 1, not retained. Returns at once; MQTT keeps the order of one
    /// client's QoS 1 messages, which the tests rely on for barriers.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, Qos::AtLeastOnce, false, payload);
    }

    /// Waits while the outgoing queue is full: a flood goes out as fast as the broker takes it.
    pub fn publish_with(&self, topic: &str, qos: Qos, retain: bool, payload: impl Into<Vec<u8>>) {
        let msg = Self::message(topic, qos, retain, payload);
        loop {
            match self.session.publish(msg.clone()) {
                Ok(()) => return,
                Err(PublishError::Full) => thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("cannot publish to {topic}: {e}"),
            }
        }
    }

    /// Publishes at QoS 1 with MQTT 5 properties (a recorder on MQTT 3.1.1 cannot send them).
    pub fn publish_props(&self, topic: &str, payload: impl Into<Vec<u8>>, props: Properties) {
        let mut msg = Self::message(topic, Qos::AtLeastOnce, false, payload);
        msg.props = props;
        loop {
            match self.session.publish(msg.clone()) {
                Ok(()) => return,
                Err(PublishError::Full) => thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("cannot publish to {topic}: {e}"),
            }
        }
    }

    fn message(topic: &str, qos: Qos, retain: bool, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            topic: topic.to_string(),
            payload: Bytes::from(payload.into()),
            qos,
            retain,
            props: Default::default(),
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: the message is at the broker.
    pub fn publish_acked(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let msg = Self::message(topic, Qos::AtLeastOnce, false, payload);
        let mut ack = Some(tx);
        loop {
            match self.session.publish_with_ack(msg.clone(), &mut ack) {
                Ok(()) => break,
                Err(PublishError::Full) => thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("cannot publish to {topic}: {e}"),
            }
        }
        let end = Instant::now() + crate::TIMEOUT;
        let mut rx = rx;
        loop {
            match rx.try_recv() {
                Ok(()) => return,
                Err(oneshot::error::TryRecvError::Closed) => {
                    panic!("the connection dropped before the PUBACK for a publish to {topic}")
                }
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() < end => {
                    thread::sleep(Duration::from_millis(2))
                }
                Err(oneshot::error::TryRecvError::Empty) => panic!(
                    "no PUBACK for a publish to {topic} within {:?}",
                    crate::TIMEOUT
                ),
            }
        }
    }

    /// Where the recording is now.
    pub fn mark(&self) -> Mark {
        Mark(self.shared.state.lock().unwrap().msgs.len())
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Msg> {
        self.shared.state.lock().unwrap().msgs.clone()
    }

    /// Every message so far that matches.
    pub fn matching(&self, pred: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        self.messages().into_iter().filter(|m| pred(m)).collect()
    }

    /// Every message after `mark` that matches.
    pub fn matching_since(&self, mark: Mark, pred: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let st = self.shared.state.lock().unwrap();
        st.msgs[mark.0..]
            .iter()
            .filter(|m| pred(m))
            .cloned()
            .collect()
    }

    /// The first message (in the whole recording) that matches, waiting up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.wait_for_since(Mark(0), timeout, pred)
    }

    /// The first message after `mark` that matches, waiting up to `timeout`.
    pub fn wait_for_since(
        &self,
        mark: Mark,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let mut found = None;
        self.wait_state(timeout, |st| {
            found = st.msgs[mark.0..].iter().find(|m| pred(m)).cloned();
            found.is_some()
        });
        found
    }

    /// Waits until `n` messages after `mark` match; returns all that matched by then (fewer
    /// than `n` on timeout).
    pub fn wait_for_count(
        &self,
        mark: Mark,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Vec<Msg> {
        // Each wake-up looks only at what arrived since the last one: a flood test waits for
        // 20,000 replies among 40,000 messages, and rescanning (and parsing) them all on every
        // arrival held the lock long enough to starve the thread that records them.
        let mut found = Vec::new();
        let mut scanned = mark.0;
        self.wait_state(timeout, |st| {
            if let Some(new) = st.msgs.get(scanned..) {
                found.extend(new.iter().filter(|m| pred(m)).cloned());
            }
            scanned = st.msgs.len();
            found.len() >= n
        });
        found
    }

    /// Like [`wait_for_since`](Self::wait_for_since), but a timeout fails the test with
    /// `what` and everything that did arrive.
    pub fn expect_since(
        &self,
        mark: Mark,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Msg {
        match self.wait_for_since(mark, timeout, pred) {
            Some(m) => m,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.dump()
            ),
        }
    }

    pub fn expect(&self, what: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.expect_since(Mark(0), what, timeout, pred)
    }

    /// The recording, one line per message with its arrival time, for failure messages.
    pub fn dump(&self) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut s = format!(
            "recorder {} saw {} message(s) (sessions {}, last error {:?}):\n",
            self.client_id,
            st.msgs.len(),
            st.sessions,
            st.last_error
        );
        for m in &st.msgs {
            let t = m.at.saturating_duration_since(self.started);
            s.push_str(&format!("  +{:>7.3}s {}\n", t.as_secs_f64(), m.summary()));
        }
        s
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The recorder's thread disconnects cleanly and ends; nobody waits for it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Broker;

    #[test]
    fn records_topic_payload_retain_qos_and_order() {
        let broker = Broker::start();
        let a = Recorder::connect(broker.port(), &["t/#"]);
        a.publish_with("t/retained", Qos::AtLeastOnce, true, &b"kept"[..]);
        a.publish("t/one", &b"\xff\xfe not utf-8"[..]);
        a.publish_with("t/zero", Qos::AtMostOnce, false, "{\"n\":1}");
        let zero = a.expect("t/zero", crate::TIMEOUT, |m| m.topic == "t/zero");
        assert_eq!(zero.qos, 0);
        assert_eq!(zero.json().unwrap()["n"], 1);
        let one = a.expect("t/one", crate::TIMEOUT, |m| m.topic == "t/one");
        assert_eq!(one.payload, b"\xff\xfe not utf-8");
        assert_eq!(one.qos, 1);
        assert!(!one.retain);
        // Live delivery clears the retain flag; a later subscriber sees it set.
        let live = a.expect("t/retained", crate::TIMEOUT, |m| m.topic == "t/retained");
        assert!(!live.retain);
        let b = Recorder::connect(broker.port(), &["t/#"]);
        let stored = b.expect("retained t/retained", crate::TIMEOUT, |m| {
            m.topic == "t/retained"
        });
        assert!(stored.retain);
        assert_eq!(stored.payload, b"kept");
    }

    #[test]
    fn big_payloads_pass_and_marks_limit_the_view() {
        let broker = Broker::start();
        let r = Recorder::connect(broker.port(), &["#"]);
        r.publish("big", vec![b'x'; 200 * 1024]);
        let m = r.expect("big", crate::TIMEOUT, |m| m.topic == "big");
        assert_eq!(m.payload.len(), 200 * 1024);
        let mark = r.mark();
        assert!(r
            .wait_for_since(mark, Duration::from_millis(100), |m| m.topic == "big")
            .is_none());
        r.publish_acked("after", "x");
        let after = r.wait_for_count(mark, 1, crate::TIMEOUT, |m| m.topic == "after");
        assert_eq!(after.len(), 1);
    }

    #[test]
    fn survives_a_broker_restart_and_resubscribes() {
        let mut broker = Broker::start();
        let r = Recorder::connect(broker.port(), &["a/#"]);
        broker.restart();
        assert!(r.wait_resubscribed(2), "{}", r.dump());
        let other = Recorder::connect(broker.port(), &[]);
        other.publish_acked("a/x", "after restart");
        r.expect("a/x after restart", crate::TIMEOUT, |m| m.topic == "a/x");
    }
}
