//! Every gateway's live state, from heartbeats, presence and the passing of time. Pure: no
//! I/O, and the clock is an argument, so every rule is tested without a broker.
//!
//! Two clocks meet here. Ordering uses the agent's (`ts_ms`, `seq`, `uptime_s` in its messages):
//! arrival order means nothing once several replicas split the heartbeats. Liveness uses the
//! console's (`now_ms`, when a message arrived): a gateway's skewed clock must not make it look
//! stale or alive.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use csg_protocol::status::FamilySummary;
use csg_protocol::{Heartbeat, InstanceId, Presence, PresenceState};
use serde::{Deserialize, Serialize};

use crate::json::JsonText;

/// Two heartbeats whose process start estimates (`ts_ms - uptime_s * 1000`) are this close come
/// from one agent process: `uptime_s` is truncated to whole seconds, so one process's estimates
/// spread over a second, plus the time between the two clock reads.
pub const SAME_PROCESS_MS: u64 = 2_000;

/// An agent's Will carries the time its connection was made, before CONNECT; its `online`
/// carries a time after the SUBACK. A Will ends an online period announced at most this long
/// after the Will's own time (the connect timeout plus the subscription's wait).
pub const CONNECT_SLACK_MS: u64 = 60_000;

/// Presence events kept for `take_events` before the oldest are dropped (and counted): a sink
/// that stops taking them must not grow the process without bound.
pub const MAX_PENDING_EVENTS: usize = 100_000;

/// Where reason strings from the wire are cut, so a gateway cannot grow our memory with them.
const MAX_VERSION_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Heartbeat interval assumed for a gateway whose heartbeats carry `interval_s` 0 (agents
    /// older than protocol 1.1) or that has sent none yet.
    pub default_interval_s: u64,
    /// Missed heartbeat intervals before an online gateway is stale (3 by default, as the
    /// protocol advises).
    pub stale_after_missed: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            default_interval_s: 30,
            stale_after_missed: 3,
        }
    }
}

/// What the console believes about a gateway's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Online,
    /// Said to be online, but no heartbeat for `stale_after_missed` intervals: the only signal
    /// where the broker has no Will (Alibaba Cloud MQTT), and the first one where it is slow.
    Stale,
    Offline,
}

/// Why a gateway is in its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its `online` presence.
    Connected,
    /// A heartbeat, without (or before) an `online` presence.
    Heartbeat,
    /// Its own `offline` at a clean stop.
    Shutdown,
    /// The broker's Will (or an `offline` with a reason this version does not know).
    ConnectionLost,
    /// No heartbeat for `stale_after_missed` intervals.
    NoHeartbeat,
}

impl Reason {
    /// The reason as the store keeps it (its serialized name).
    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "connected" => Reason::Connected,
            "heartbeat" => Reason::Heartbeat,
            "shutdown" => Reason::Shutdown,
            "connection_lost" => Reason::ConnectionLost,
            "no_heartbeat" => Reason::NoHeartbeat,
            _ => return None,
        })
    }

    /// Whether `since_ms` of a presence with this reason is on the agent's clock (a presence
    /// message's `ts_ms`) rather than the console's.
    fn agent_clock(self) -> bool {
        matches!(
            self,
            Reason::Connected | Reason::Shutdown | Reason::ConnectionLost
        )
    }
}

/// A gateway as a store row left it, for [`Fleet::restore`].
#[derive(Debug, Clone)]
pub struct Restored {
    pub instance_id: InstanceId,
    pub group_id: Option<String>,
    pub presence: PresenceView,
    /// Console clock, as stored.
    pub last_seen_ms: u64,
    pub agent_version: Option<String>,
    pub heartbeat: Option<Beat>,
}

/// A heartbeat as the fleet takes it: what orders and judges it, and its text for the store.
/// The parsed message is not kept: a gateway's last heartbeat held as a tree of small
/// allocations cost several KB per gateway, and the text is what the store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub group_id: String,
    pub agent_version: String,
    pub storage: StorageTotals,
    pub last: LastBeat,
}

/// What a gateway keeps of its newest heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastBeat {
    pub seq: u64,
    pub ts_ms: u64,
    pub uptime_s: u64,
    pub interval_s: u64,
    /// The whole heartbeat, compact JSON made once when it arrived.
    pub text: JsonText,
    /// Its host figures, for the gateway's chart (the store keeps the recent ones).
    #[serde(skip)]
    pub host: HostFigures,
}

/// A heartbeat's CPU and memory figures, as it said them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct HostFigures {
    /// 0 to 100.
    pub cpu_pct: f32,
    /// Bytes.
    pub mem_used: u64,
    /// Bytes.
    pub mem_total: u64,
}

// `LastBeat` is compared whole (tests, the fleet's merges); a NaN CPU figure cannot come from
// a heartbeat (JSON has no NaN), so equality of the figures is an equivalence here.
impl Eq for HostFigures {}

/// The members of a stored heartbeat the fleet needs, read without the rest.
#[derive(Deserialize)]
struct BeatParts {
    group_id: String,
    agent_version: String,
    seq: u64,
    ts_ms: u64,
    uptime_s: u64,
    #[serde(default)]
    interval_s: u64,
    #[serde(default)]
    storage: BTreeMap<String, FamilySummary>,
    #[serde(default)]
    system: HostFigures,
}

impl Beat {
    /// A heartbeat just received (checked by its parse): its text is made here, once.
    pub fn of(hb: &Heartbeat) -> Result<Self, serde_json::Error> {
        Ok(Self {
            group_id: hb.group_id.clone(),
            agent_version: hb.agent_version.clone(),
            storage: totals(hb.storage.values()),
            last: LastBeat {
                seq: hb.seq,
                ts_ms: hb.ts_ms,
                uptime_s: hb.uptime_s,
                interval_s: hb.interval_s,
                text: JsonText::of(hb)?,
                host: HostFigures {
                    cpu_pct: hb.system.cpu_pct,
                    mem_used: hb.system.mem_used,
                    mem_total: hb.system.mem_total,
                },
            },
        })
    }

    /// A heartbeat as the store kept it (what [`Beat::of`] made, maybe on another replica):
    /// only the members the fleet needs are read; the text is kept as it is.
    pub fn stored(text: JsonText) -> Result<Self, serde_json::Error> {
        let p: BeatParts = serde_json::from_str(text.as_str())?;
        Ok(Self {
            group_id: p.group_id,
            agent_version: p.agent_version,
            storage: totals(p.storage.values()),
            last: LastBeat {
                seq: p.seq,
                ts_ms: p.ts_ms,
                uptime_s: p.uptime_s,
                interval_s: p.interval_s,
                text,
                host: p.system,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PresenceView {
    pub state: Liveness,
    /// When the state began: the agent's clock for a presence message (for a Will, the last
    /// time the gateway was known alive), the console's for a heartbeat that brought it back
    /// and for stale.
    pub since_ms: u64,
    pub reason: Reason,
}

/// Storage managed by a gateway, summed over its families, from its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StorageTotals {
    pub count: u64,
    pub drift: u64,
}

/// One gateway as the console knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub region: Arc<str>,
    pub instance_id: InstanceId,
    /// From its heartbeats (presence messages do not carry it).
    pub group_id: Option<String>,
    pub presence: PresenceView,
    /// Console clock: when the last heartbeat or `online` that counted arrived; 0 never.
    pub last_seen_ms: u64,
    pub agent_version: Option<String>,
    /// The newest heartbeat by the agent's own order (never the last to arrive).
    pub heartbeat: Option<LastBeat>,
    pub storage: StorageTotals,
    /// Agent clock: the newest evidence that set the presence. Older presence never wins.
    #[serde(skip)]
    stamp_ms: u64,
    /// Agent clock: set by the last `online` presence; a Will from a connection made before
    /// this does not end the current online period (see [`Instance::will_floor_ms`]).
    #[serde(skip)]
    online_floor_ms: u64,
}

impl Instance {
    /// The earliest connection time whose Will still ends the current online period. Both
    /// bounds are below the current connection's Will time: the last `online` less the connect
    /// slack, and the current heartbeat's process start (a connection is made after its
    /// process starts). Derived from the state, not from the order messages came in.
    fn will_floor_ms(&self) -> u64 {
        let process = self.heartbeat.as_ref().map_or(0, |h| {
            HeartbeatKey::of(h).start_ms.saturating_sub(SAME_PROCESS_MS)
        });
        self.online_floor_ms.max(process)
    }

    fn new(region: Arc<str>, instance_id: InstanceId) -> Self {
        Self {
            region,
            instance_id,
            group_id: None,
            presence: PresenceView {
                state: Liveness::Offline,
                since_ms: 0,
                reason: Reason::ConnectionLost,
            },
            last_seen_ms: 0,
            agent_version: None,
            heartbeat: None,
            storage: StorageTotals::default(),
            stamp_ms: 0,
            online_floor_ms: 0,
        }
    }
}

/// A change of presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEvent {
    pub region: Arc<str>,
    pub instance_id: InstanceId,
    /// `None` the first time the console hears of the gateway.
    pub from: Option<Liveness>,
    pub to: Liveness,
    pub reason: Reason,
    pub since_ms: u64,
    /// Console clock, when the console made the change.
    pub at_ms: u64,
}

/// What a message did to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It changed the gateway's state.
    Changed,
    /// Older than what the fleet holds, or nothing new: dropped.
    Stale,
}

/// The agent's order of its own heartbeats. A restart resets `seq`, so a process is told by
/// its start time; within one process `seq` decides (and survives wall clock steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeartbeatKey {
    start_ms: u64,
    seq: u64,
    ts_ms: u64,
}

impl HeartbeatKey {
    fn of(hb: &LastBeat) -> Self {
        Self {
            start_ms: hb.ts_ms.saturating_sub(hb.uptime_s.saturating_mul(1000)),
            seq: hb.seq,
            ts_ms: hb.ts_ms,
        }
    }

    fn is_newer_than(&self, other: &Self) -> bool {
        if self.start_ms.abs_diff(other.start_ms) > SAME_PROCESS_MS {
            self.start_ms > other.start_ms
        } else {
            (self.seq, self.ts_ms) > (other.seq, other.ts_ms)
        }
    }
}

/// A heartbeat's storage summed over its families.
fn totals<'a>(families: impl Iterator<Item = &'a FamilySummary>) -> StorageTotals {
    families.fold(StorageTotals::default(), |t, f| StorageTotals {
        count: t.count.saturating_add(f.count),
        drift: t.drift.saturating_add(f.drift),
    })
}

/// The live state of one region's gateways.
#[derive(Debug)]
pub struct Fleet {
    region: Arc<str>,
    cfg: FleetConfig,
    instances: HashMap<InstanceId, Instance>,
    dirty: HashSet<InstanceId>,
    events: VecDeque<PresenceEvent>,
    events_dropped: u64,
}

fn bounded(mut s: String) -> String {
    let mut end = s.len().min(MAX_VERSION_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.shrink_to_fit();
    s
}

impl Fleet {
    pub fn new(region: &str, cfg: FleetConfig) -> Self {
        Self {
            region: Arc::from(region),
            cfg,
            instances: HashMap::new(),
            dirty: HashSet::new(),
            events: VecDeque::new(),
            events_dropped: 0,
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn get(&self, id: &InstanceId) -> Option<&Instance> {
        self.instances.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// How many gateways are in each state.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::from([("online", 0), ("stale", 0), ("offline", 0)]);
        for i in self.instances.values() {
            let k = match i.presence.state {
                Liveness::Online => "online",
                Liveness::Stale => "stale",
                Liveness::Offline => "offline",
            };
            *out.entry(k).or_default() += 1;
        }
        out
    }

    /// Presence events dropped because nobody took them (see [`MAX_PENDING_EVENTS`]).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// The gateways changed since the last call, as they are now: one row each, however many
    /// messages changed it.
    pub fn take_dirty(&mut self) -> Vec<Instance> {
        let ids: Vec<InstanceId> = self.dirty.drain().collect();
        ids.iter()
            .filter_map(|id| self.instances.get(id).cloned())
            .collect()
    }

    /// Marks gateways changed again, e.g. after a failed write of what `take_dirty` gave.
    pub fn mark_dirty(&mut self, ids: impl IntoIterator<Item = InstanceId>) {
        for id in ids {
            if self.instances.contains_key(&id) {
                self.dirty.insert(id);
            }
        }
    }

    /// Presence transitions since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<PresenceEvent> {
        self.events.drain(..).collect()
    }

    /// Puts events back in front (a failed write), within the same bound.
    pub fn requeue_events(&mut self, events: Vec<PresenceEvent>) {
        for e in events.into_iter().rev() {
            self.events.push_front(e);
        }
        while self.events.len() > MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
    }

    fn entry(&mut self, id: &InstanceId) -> (&mut Instance, bool) {
        let region = &self.region;
        let mut created = false;
        let inst = self.instances.entry(id.clone()).or_insert_with(|| {
            created = true;
            Instance::new(region.clone(), id.clone())
        });
        (inst, created)
    }

    fn push_event(&mut self, e: PresenceEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Sets a presence and records the transition (or the first sighting).
    fn transition(&mut self, id: &InstanceId, from: Option<Liveness>, to: PresenceView, now: u64) {
        let region = self.region.clone();
        if let Some(inst) = self.instances.get_mut(id) {
            inst.presence = to;
        }
        if from != Some(to.state) {
            self.push_event(PresenceEvent {
                region,
                instance_id: id.clone(),
                from,
                to: to.state,
                reason: to.reason,
                since_ms: to.since_ms,
                at_ms: now,
            });
        }
    }

    /// A heartbeat for `id` (the topic's instance; the caller checks it matches the body).
    pub fn on_heartbeat(&mut self, id: &InstanceId, hb: Beat, now_ms: u64) -> Applied {
        let key = HeartbeatKey::of(&hb.last);
        let (inst, created) = self.entry(id);
        if let Some(cur) = &inst.heartbeat {
            if !key.is_newer_than(&HeartbeatKey::of(cur)) {
                return Applied::Stale;
            }
        }
        inst.group_id = Some(bounded(hb.group_id));
        inst.agent_version = Some(bounded(hb.agent_version));
        inst.last_seen_ms = inst.last_seen_ms.max(now_ms);
        inst.storage = hb.storage;
        let ts = hb.last.ts_ms;
        inst.heartbeat = Some(hb.last);
        let from = (!created).then_some(inst.presence.state);
        // A heartbeat sent after the latest presence evidence proves the gateway online.
        let change = if created || ts > inst.stamp_ms {
            inst.stamp_ms = inst.stamp_ms.max(ts);
            if inst.presence.state != Liveness::Online {
                Some(PresenceView {
                    state: Liveness::Online,
                    since_ms: now_ms,
                    reason: Reason::Heartbeat,
                })
            } else {
                None
            }
        } else {
            None
        };
        self.dirty.insert(id.clone());
        if let Some(to) = change {
            self.transition(id, from, to, now_ms);
        }
        Applied::Changed
    }

    /// What another replica saw: a gateway's heartbeat and when it arrived there (a store row).
    /// With a shared subscription each replica gets about 1/N of a gateway's heartbeats, so
    /// without this its own tick would call live gateways stale. The heartbeat is ordered as
    /// any other; `seen_ms` only ever moves `last_seen_ms` forward. Not marked dirty when only
    /// `last_seen_ms` moved: the row came from the store.
    pub fn merge_seen(&mut self, id: &InstanceId, hb: Beat, seen_ms: u64) -> Applied {
        let applied = self.on_heartbeat(id, hb, seen_ms);
        if let Some(inst) = self.instances.get_mut(id) {
            inst.last_seen_ms = inst.last_seen_ms.max(seen_ms);
        }
        applied
    }

    /// A presence message for `id`.
    pub fn on_presence(&mut self, id: &InstanceId, p: &Presence, now_ms: u64) -> Applied {
        let (inst, created) = self.entry(id);
        let from = (!created).then_some(inst.presence.state);
        let ts = p.ts_ms;
        let to = match p.state {
            PresenceState::Online => {
                if !created && ts <= inst.stamp_ms {
                    return Applied::Stale;
                }
                inst.stamp_ms = ts;
                inst.online_floor_ms = ts.saturating_sub(CONNECT_SLACK_MS);
                inst.last_seen_ms = inst.last_seen_ms.max(now_ms);
                inst.agent_version = Some(bounded(p.agent_version.clone()));
                if inst.presence.state == Liveness::Online && !created {
                    // A reconnect whose offline we never saw: still online, same period.
                    self.dirty.insert(id.clone());
                    return Applied::Changed;
                }
                PresenceView {
                    state: Liveness::Online,
                    since_ms: ts,
                    reason: Reason::Connected,
                }
            }
            PresenceState::Offline if p.reason.as_deref() == Some("shutdown") => {
                // Written by the agent after its last heartbeat, on its own clock.
                if !created && ts < inst.stamp_ms {
                    return Applied::Stale;
                }
                inst.stamp_ms = ts;
                PresenceView {
                    state: Liveness::Offline,
                    since_ms: ts,
                    reason: Reason::Shutdown,
                }
            }
            PresenceState::Offline => {
                // The Will's ts_ms is when its connection was made, so it is older than what
                // that connection sent; it ends the current online period unless that period
                // began on a later connection.
                let ends_current = created
                    || (inst.presence.state != Liveness::Offline && ts >= inst.will_floor_ms());
                if !ends_current {
                    return Applied::Stale;
                }
                let last_alive = inst.heartbeat.as_ref().map_or(0, |h| h.ts_ms);
                let since = ts.max(last_alive);
                inst.stamp_ms = inst.stamp_ms.max(since);
                PresenceView {
                    state: Liveness::Offline,
                    since_ms: since,
                    reason: Reason::ConnectionLost,
                }
            }
        };
        self.dirty.insert(id.clone());
        self.transition(id, from, to, now_ms);
        Applied::Changed
    }

    /// Seeds the fleet with a gateway as the store had it, before any message (a console
    /// starting again). It is neither changed nor an event: the store holds it already. A
    /// gateway stored `online` that fell silent while the console was down turns stale at the
    /// first tick, judged by its stored `last_seen_ms`, which is what a console on a broker
    /// without Will or retained presence (Alibaba Cloud MQTT) relies on. Ignored for a gateway
    /// the fleet already knows.
    pub fn restore(&mut self, r: Restored) {
        if self.instances.contains_key(&r.instance_id) {
            return;
        }
        let mut inst = Instance::new(self.region.clone(), r.instance_id.clone());
        let hb_ts = r.heartbeat.as_ref().map_or(0, |h| h.last.ts_ms);
        let presence_ts = if r.presence.reason.agent_clock() {
            r.presence.since_ms
        } else {
            0
        };
        inst.stamp_ms = hb_ts.max(presence_ts);
        if r.presence.reason == Reason::Connected {
            inst.online_floor_ms = r.presence.since_ms.saturating_sub(CONNECT_SLACK_MS);
        }
        inst.group_id = r.group_id.map(bounded);
        inst.agent_version = r.agent_version.map(bounded);
        inst.presence = r.presence;
        inst.last_seen_ms = r.last_seen_ms;
        if let Some(hb) = r.heartbeat {
            inst.storage = hb.storage;
            inst.heartbeat = Some(hb.last);
        }
        self.instances.insert(r.instance_id, inst);
    }

    /// The online gateways whose last heartbeat (or `online`) arrived more than
    /// `stale_after_missed` of their own intervals before `now_ms`: those the next
    /// [`Fleet::tick`] turns stale unless something newer is heard of them (from another
    /// replica, through [`Fleet::merge_seen`]).
    // A scan: about a millisecond per 100k gateways, once per flush.
    pub fn due_stale(&self, now_ms: u64) -> Vec<InstanceId> {
        let missed = u64::from(self.cfg.stale_after_missed.max(1));
        let default = self.cfg.default_interval_s.max(1);
        self.instances
            .values()
            .filter(|i| i.presence.state == Liveness::Online)
            .filter(|i| {
                let interval = i
                    .heartbeat
                    .as_ref()
                    .map(|h| h.interval_s)
                    .filter(|s| *s > 0)
                    .unwrap_or(default);
                let window = interval.saturating_mul(missed).saturating_mul(1000);
                now_ms > i.last_seen_ms.saturating_add(window)
            })
            .map(|i| i.instance_id.clone())
            .collect()
    }

    /// Marks stale every gateway of [`Fleet::due_stale`]. Returns how many turned.
    pub fn tick(&mut self, now_ms: u64) -> usize {
        let turned = self.due_stale(now_ms);
        for id in &turned {
            self.dirty.insert(id.clone());
            self.transition(
                id,
                Some(Liveness::Online),
                PresenceView {
                    state: Liveness::Stale,
                    since_ms: now_ms,
                    reason: Reason::NoHeartbeat,
                },
                now_ms,
            );
        }
        turned.len()
    }
}
