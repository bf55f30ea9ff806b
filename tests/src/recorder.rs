//! A raw MQTT client that keeps every message it receives and can publish anything.
//!
//! It plays the console and the operator's eye at once: tests inject hand-made (and hostile)
//! payloads with it, and observe the agent's replies, heartbeats and presence — including the
//! retain flag and QoS the broker delivered them with, and when they arrived.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

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
    connacks: u32,
    subacks: u32,
    pubacks: u64,
    last_error: Option<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// Position in the recording, to look only at what arrived after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(usize);

/// A recording MQTT client. Dropping it disconnects it.
pub struct Recorder {
    client: Client,
    shared: Arc<Shared>,
    client_id: String,
    started: Instant,
    qos1_queued: AtomicU64,
}

impl Recorder {
    /// Connects to the broker on `port`, subscribes `filters` at QoS 1 and returns once the
    /// broker has acknowledged the subscription, so nothing published after this returns can
    /// be missed.
    pub fn connect(port: u16, filters: &[&str]) -> Recorder {
        let client_id = crate::unique("e2e-rec");
        let mut opts = MqttOptions::new(client_id.clone(), "127.0.0.1", port);
        opts.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            // Large enough to inject payloads far over the agent's 64 KiB cap, and to receive
            // whatever the agent might wrongly send back.
            .set_max_packet_size(4 << 20, 4 << 20);
        // Big enough that a burst of test publishes never blocks on the request channel.
        let (client, mut connection) = Client::new(opts, 1024);
        let mut net = connection.eventloop.network_options();
        net.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(net);

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let subs: Vec<(String, QoS)> = filters
            .iter()
            .map(|f| (f.to_string(), QoS::AtLeastOnce))
            .collect();
        if !subs.is_empty() {
            client
                .subscribe_many(
                    subs.iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), *q)),
                )
                .expect("queue subscribe");
        }
        let poll_client = client.clone();
        let poll_shared = shared.clone();
        thread::Builder::new()
            .name(format!("rec-{client_id}"))
            .spawn(move || {
                for event in connection.iter() {
                    let mut st = poll_shared.state.lock().unwrap();
                    if st.stop {
                        break;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => st.msgs.push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos as u8,
                            at: Instant::now(),
                        }),
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            st.connacks += 1;
                            // Clean session: after a reconnect the broker has forgotten our
                            // subscriptions, and rumqttc does not restore them.
                            if st.connacks > 1 && !subs.is_empty() {
                                let _ = poll_client
                                    .try_subscribe_many(subs.iter().map(|(f, q)| {
                                        rumqttc::SubscribeFilter::new(f.clone(), *q)
                                    }));
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => st.subacks += 1,
                        Ok(Event::Incoming(Packet::PubAck(_))) => st.pubacks += 1,
                        Ok(_) => {}
                        Err(e) => {
                            st.last_error = Some(e.to_string());
                            drop(st);
                            poll_shared.cv.notify_all();
                            // rumqttc reconnects on the next poll without any pause.
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    drop(st);
                    poll_shared.cv.notify_all();
                }
            })
            .expect("spawn recorder thread");

        let rec = Recorder {
            client,
            shared,
            client_id,
            started: Instant::now(),
            qos1_queued: AtomicU64::new(0),
        };
        let want = u32::from(!filters.is_empty());
        let ok = rec.wait_state(crate::TIMEOUT, |st| st.connacks >= 1 && st.subacks >= want);
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

    /// Times the broker accepted our CONNECT (more than one after a broker restart).
    pub fn connacks(&self) -> u32 {
        self.shared.state.lock().unwrap().connacks
    }

    /// Waits until the recorder has reconnected and re-subscribed after a broker restart.
    pub fn wait_resubscribed(&self, connacks: u32) -> bool {
        self.wait_state(crate::TIMEOUT, |st| {
            st.connacks >= connacks && st.subacks >= connacks
        })
    }

    /// Publishes at QoS 1, not retained. Returns at once; MQTT keeps the order of one
    /// client's QoS 1 messages, which the tests rely on for barriers.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, QoS::AtLeastOnce, false, payload);
    }

    pub fn publish_with(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        if qos != QoS::AtMostOnce {
            self.qos1_queued.fetch_add(1, Ordering::SeqCst);
        }
        self.client
            .publish(topic, qos, retain, payload.into())
            .expect("queue publish");
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: the message is at the broker.
    /// Mosquitto acknowledges one client's publishes in order, so the n-th QoS 1 publish is
    /// acknowledged once n PUBACKs have come back.
    pub fn publish_acked(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish(topic, payload);
        let n = self.qos1_queued.load(Ordering::SeqCst);
        assert!(
            self.wait_state(crate::TIMEOUT, |st| st.pubacks >= n),
            "no PUBACK for a publish to {topic} within {:?}",
            crate::TIMEOUT
        );
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
        let mut found = Vec::new();
        self.wait_state(timeout, |st| {
            found = st.msgs[mark.0..]
                .iter()
                .filter(|m| pred(m))
                .cloned()
                .collect();
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
            "recorder {} saw {} message(s) (connacks {}, last error {:?}):\n",
            self.client_id,
            st.msgs.len(),
            st.connacks,
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
        self.shared.state.lock().unwrap().stop = true;
        // The poll thread ends on its own once the DISCONNECT is out or every client handle
        // is gone (rumqttc then reports RequestsDone); nobody waits for it.
        let _ = self.client.try_disconnect();
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
        a.publish_with("t/retained", QoS::AtLeastOnce, true, &b"kept"[..]);
        a.publish("t/one", &b"\xff\xfe not utf-8"[..]);
        a.publish_with("t/zero", QoS::AtMostOnce, false, "{\"n\":1}");
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
