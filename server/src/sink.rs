//! The fleet's batches written to the store: changed gateways as instance rows, presence
//! transitions as events. Once a batch is written its presence transitions are published on
//! the event bus (so a listener never hears of a change the API cannot show yet), and each
//! write is timed for the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use csg_protocol::identity::{GroupId, InstanceId};

use crate::events::{Bus, Event};
use crate::fleet::driver::{Batch, Clock, FleetSink, Seen, SharedFleet, SinkError};
use crate::fleet::{Beat, Instance, Liveness, PresenceEvent, PresenceView, Reason, Restored};
use crate::metrics::Metrics;
use crate::store::{
    self, HostSample, InstanceFilter, InstanceOrder, InstanceRow, PageLimit, Presence, Region,
    StorageSummary, Store, StoreError,
};

/// A [`FleetSink`] backed by a [`Store`].
pub struct StoreSink {
    pub store: Arc<dyn Store>,
    pub region: Region,
    pub clock: Clock,
    pub bus: Bus,
    pub metrics: Metrics,
    /// `[fleet] host_samples`: rows carry their heartbeat's host figures for the chart.
    pub host_samples: bool,
}

fn presence(l: Liveness) -> Presence {
    match l {
        Liveness::Online => Presence::Online,
        Liveness::Stale => Presence::Stale,
        Liveness::Offline => Presence::Offline,
    }
}

fn reason_text(r: crate::fleet::Reason) -> Option<String> {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The row of one gateway; `group` when the fleet has not learnt it (a gateway heard of by
/// presence only since this process started). The heartbeat's text was made when it arrived;
/// nothing is serialized here. `samples`: the row carries its heartbeat's host figures.
pub fn row_of(
    i: &Instance,
    region: &Region,
    group: GroupId,
    now_ms: i64,
    samples: bool,
) -> InstanceRow {
    InstanceRow {
        region: region.clone(),
        instance_id: i.instance_id.clone(),
        group_id: group,
        presence: presence(i.presence.state),
        since_ms: ms(i.presence.since_ms),
        reason: reason_text(i.presence.reason),
        last_seen_ms: (i.last_seen_ms > 0).then(|| ms(i.last_seen_ms)),
        agent_version: i.agent_version.clone(),
        heartbeat: i.heartbeat.as_ref().map(|h| h.text.clone()),
        storage: Some(StorageSummary {
            count: i.storage.count,
            drift: i.storage.drift,
        }),
        updated_ms: now_ms,
        sample: i
            .heartbeat
            .as_ref()
            .filter(|_| samples)
            .map(|h| HostSample::of(h.ts_ms, h.host.cpu_pct, h.host.mem_used, h.host.mem_total)),
    }
}

pub fn event_of(e: &PresenceEvent, region: &Region) -> store::PresenceEvent {
    store::PresenceEvent {
        region: region.clone(),
        instance_id: e.instance_id.clone(),
        state: presence(e.to),
        reason: reason_text(e.reason),
        at_ms: ms(e.at_ms),
    }
}

impl StoreSink {
    /// The stored rows of these gateways (at most a page of ids).
    async fn rows_of(&self, ids: Vec<InstanceId>) -> Result<Vec<InstanceRow>, StoreError> {
        let filter = InstanceFilter {
            region: Some(self.region.clone()),
            ids,
            ..InstanceFilter::default()
        };
        let limit = PageLimit::new(PageLimit::MAX)?;
        Ok(self
            .store
            .list_instances(&filter, InstanceOrder::default(), limit, None)
            .await?
            .items)
    }

    /// The stored groups of gateways the fleet has no group for, a page of ids per query.
    async fn stored_groups(
        &self,
        ids: Vec<InstanceId>,
    ) -> Result<HashMap<InstanceId, GroupId>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(InstanceFilter::MAX_IDS) {
            let rows = self.rows_of(chunk.to_vec()).await?;
            found.extend(rows.into_iter().map(|r| (r.instance_id, r.group_id)));
        }
        Ok(found)
    }

    /// Writes the batch; on success returns the group of each gateway written (for the
    /// events).
    async fn write_batch(&self, batch: &Batch) -> Result<HashMap<InstanceId, GroupId>, StoreError> {
        let now = ms((self.clock)());
        let known = |i: &Instance| i.group_id.as_deref().and_then(|g| GroupId::new(g).ok());
        let unknown: Vec<InstanceId> = batch
            .instances
            .iter()
            .filter(|i| known(i).is_none())
            .map(|i| i.instance_id.clone())
            .collect();
        let stored = if unknown.is_empty() {
            HashMap::new()
        } else {
            self.stored_groups(unknown).await?
        };
        // A gateway known only from its presence and never stored has no group yet; it is
        // written with its first heartbeat (which marks it changed again).
        let rows: Vec<InstanceRow> = batch
            .instances
            .iter()
            .filter_map(|i| {
                let group = known(i).or_else(|| stored.get(&i.instance_id).cloned())?;
                Some(row_of(i, &self.region, group, now, self.host_samples))
            })
            .collect();
        if !rows.is_empty() {
            self.store.upsert_instances(&rows).await?;
        }
        if !batch.events.is_empty() {
            let events: Vec<_> = batch
                .events
                .iter()
                .map(|e| event_of(e, &self.region))
                .collect();
            self.store.record_presence_events(&events).await?;
        }
        Ok(rows
            .into_iter()
            .map(|r| (r.instance_id, r.group_id))
            .collect())
    }

    fn publish(&self, batch: &Batch, groups: &HashMap<InstanceId, GroupId>) {
        let text = |l: Liveness| presence(l).as_str().to_owned();
        for e in &batch.events {
            let event = Event::Presence {
                region: self.region.as_str().to_owned(),
                instance_id: e.instance_id.as_str().to_owned(),
                group_id: groups.get(&e.instance_id).map(|g| g.as_str().to_owned()),
                from: e.from.map(text),
                to: text(e.to),
                reason: reason_text(e.reason),
                since_ms: ms(e.since_ms),
                at_ms: ms(e.at_ms),
            };
            self.metrics.event_published(event.kind());
            self.bus.publish(event);
        }
    }
}

impl FleetSink for StoreSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let t0 = Instant::now();
        let written = self.write_batch(batch).await;
        self.metrics
            .observe_store_write(written.is_ok(), t0.elapsed());
        let groups = written.map_err(|e| SinkError(e.to_string()))?;
        self.publish(batch, &groups);
        Ok(())
    }

    async fn seen_elsewhere(&mut self, ids: &[InstanceId]) -> Result<Vec<Seen>, SinkError> {
        let mut seen = Vec::new();
        for chunk in ids.chunks(InstanceFilter::MAX_IDS) {
            let rows = self
                .rows_of(chunk.to_vec())
                .await
                .map_err(|e| SinkError(e.to_string()))?;
            seen.extend(rows.iter().filter_map(seen_in));
        }
        Ok(seen)
    }
}

/// What a stored row says was seen of its gateway: the heartbeat any replica stored, and when
/// that replica received it (its clock; replicas' clocks are assumed synchronised, as the
/// stale window of several seconds allows).
fn seen_in(row: &InstanceRow) -> Option<Seen> {
    let heartbeat = heartbeat_of(row)?;
    Some(Seen {
        instance_id: row.instance_id.clone(),
        heartbeat,
        seen_ms: u64::try_from(row.last_seen_ms?).ok()?,
    })
}

fn heartbeat_of(row: &InstanceRow) -> Option<Beat> {
    let text = row.heartbeat.clone()?;
    // The store keeps what the fleet wrote, so this parses; a row that does not (written by
    // another version) is simply not merged. Only what the fleet needs is read.
    Beat::stored(text).ok()
}

/// Seeds `fleet` with every gateway the store holds for its region, a page at a time, before
/// the fleet hears any message: a console that starts again knows its fleet at once, and a
/// gateway stored `online` that fell silent meanwhile turns stale at the first tick. Returns
/// how many were restored.
pub async fn restore_fleet(
    store: &dyn Store,
    region: &Region,
    fleet: &SharedFleet,
) -> Result<usize, StoreError> {
    let filter = InstanceFilter {
        region: Some(region.clone()),
        ..InstanceFilter::default()
    };
    let limit = PageLimit::new(PageLimit::MAX)?;
    let mut cursor: Option<String> = None;
    let mut restored = 0;
    loop {
        let page = store
            .list_instances(&filter, InstanceOrder::default(), limit, cursor.as_deref())
            .await?;
        {
            let mut f = crate::fleet::driver::lock(fleet);
            for row in &page.items {
                f.restore(restored_of(row));
                restored += 1;
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(restored),
        }
    }
}

fn restored_of(row: &InstanceRow) -> Restored {
    let state = match row.presence {
        Presence::Online => Liveness::Online,
        Presence::Stale => Liveness::Stale,
        Presence::Offline => Liveness::Offline,
    };
    // Only reasons this version writes are stored; anything else reads as a lost connection.
    let reason = row
        .reason
        .as_deref()
        .and_then(Reason::parse)
        .unwrap_or(Reason::ConnectionLost);
    Restored {
        instance_id: row.instance_id.clone(),
        group_id: Some(row.group_id.as_str().to_owned()),
        presence: PresenceView {
            state,
            since_ms: u64::try_from(row.since_ms).unwrap_or(0),
            reason,
        },
        last_seen_ms: row
            .last_seen_ms
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        agent_version: row.agent_version.clone(),
        heartbeat: heartbeat_of(row),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::fleet::driver::{self, SharedFleet};
    use crate::fleet::{Fleet, FleetConfig};

    fn heartbeat(id: &str, seq: u64, ts_ms: u64) -> Beat {
        let json = serde_json::json!({
            "v": 1, "type": "heartbeat", "instance_id": id, "group_id": "GID_a",
            "seq": seq, "ts_ms": ts_ms, "agent_version": "1.2.3", "uptime_s": 10,
            "interval_s": 1,
            "system": {"cpu_pct": 1.0, "load1": 0.1, "mem_total": 100, "mem_used": 50},
            "disks": [], "services": {},
            "storage": {"nfs": {"count": 2, "drift": 1}}
        });
        let hb: csg_protocol::Heartbeat = serde_json::from_value(json).unwrap();
        Beat::of(&hb).unwrap()
    }

    /// A batch of the real fleet written to a real SQLite file and read back; a gateway heard
    /// of by presence alone keeps the group stored earlier.
    #[tokio::test]
    async fn batches_reach_the_store_and_presence_alone_keeps_the_stored_group() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = store::open(&url).await.unwrap();
        let region = Region::new("default").unwrap();
        let clock: Clock = Arc::new(|| 1_000_000);
        let bus = crate::events::Bus::default();
        let mut events = bus.subscribe();
        let metrics = Metrics::new();
        let mut sink = StoreSink {
            store: store.clone(),
            region: region.clone(),
            clock: clock.clone(),
            bus,
            metrics: metrics.clone(),
            host_samples: true,
        };
        let fleet: SharedFleet =
            Arc::new(Mutex::new(Fleet::new("default", FleetConfig::default())));
        let id = InstanceId::new("gw-1").unwrap();
        driver::lock(&fleet).on_heartbeat(&id, heartbeat("gw-1", 1, 999_000), 999_500);
        driver::flush(&fleet, &mut sink, 1_000_000).await;

        let row = store.get_instance(&region, &id).await.unwrap().unwrap();
        assert_eq!(row.group_id.as_str(), "GID_a");
        assert_eq!(row.presence, Presence::Online);
        assert_eq!(row.reason.as_deref(), Some("heartbeat"));
        assert_eq!(row.agent_version.as_deref(), Some("1.2.3"));
        assert_eq!(row.storage, Some(StorageSummary { count: 2, drift: 1 }));
        let hb = row.heartbeat.unwrap().to_value().unwrap();
        assert_eq!(hb["seq"], 1);
        assert_eq!(hb["storage"]["nfs"]["drift"], 1);
        assert_eq!(hb["system"]["mem_used"], 50);
        // Published once written, with the group the row was written with.
        let e = events.try_recv().unwrap();
        assert!(
            matches!(&e.event, Event::Presence { to, group_id: Some(g), from: None, .. } if to == "online" && g == "GID_a"),
            "{e:?}"
        );
        let text = metrics.encode().unwrap();
        let samples = crate::metrics::parse_text(&text).unwrap();
        assert_eq!(
            samples["csg_store_write_duration_seconds_count{outcome=\"ok\"}"], 1.0,
            "{text}"
        );
        // Its host figures among the gateway's samples, for the chart.
        let want = vec![HostSample::of(999_000, 1.0, 50, 100)];
        assert_eq!(
            store.host_samples(&region, &id, 1_000_000).await.unwrap(),
            want
        );
        // `[fleet] host_samples = false`: the next heartbeat's write carries none.
        sink.host_samples = false;
        driver::lock(&fleet).on_heartbeat(&id, heartbeat("gw-1", 2, 1_001_000), 999_700);
        driver::flush(&fleet, &mut sink, 999_800).await;
        let row = store.get_instance(&region, &id).await.unwrap().unwrap();
        assert_eq!(row.heartbeat.unwrap().to_value().unwrap()["seq"], 2);
        assert_eq!(
            store.host_samples(&region, &id, 1_000_000).await.unwrap(),
            want
        );
        sink.host_samples = true;

        // A new process: the fleet knows nothing; a Will arrives.
        let fleet: SharedFleet =
            Arc::new(Mutex::new(Fleet::new("default", FleetConfig::default())));
        let will: csg_protocol::Presence = serde_json::from_value(serde_json::json!({
            "v": 1, "type": "presence", "instance_id": "gw-1", "state": "offline",
            "ts_ms": 1_000_100, "agent_version": "1.2.3", "reason": "connection_lost"
        }))
        .unwrap();
        driver::lock(&fleet).on_presence(&id, &will, 1_000_200);
        sink.clock = Arc::new(|| 1_000_300);
        driver::flush(&fleet, &mut sink, 1_000_300).await;
        let row = store.get_instance(&region, &id).await.unwrap().unwrap();
        assert_eq!(row.group_id.as_str(), "GID_a");
        assert_eq!(row.presence, Presence::Offline);
        // The stored group reaches the event of a gateway heard of by presence alone.
        let e = events.try_recv().unwrap();
        assert!(
            matches!(&e.event, Event::Presence { to, group_id: Some(g), .. } if to == "offline" && g == "GID_a"),
            "{e:?}"
        );

        // Never stored and no group: not written (yet), and the batch does not fail.
        let other = InstanceId::new("gw-2").unwrap();
        driver::lock(&fleet).on_presence(&other, &will, 1_000_400);
        driver::flush(&fleet, &mut sink, 1_000_500).await;
        assert!(store.get_instance(&region, &other).await.unwrap().is_none());
        let events = store
            .list_presence_events(&region, &id, PageLimit::new(10).unwrap(), None)
            .await
            .unwrap();
        assert!(events.items.len() >= 2, "{events:?}");
        store.close().await;
    }

    fn sink_on(store: Arc<dyn Store>, now: u64) -> StoreSink {
        StoreSink {
            store,
            region: Region::new("default").unwrap(),
            clock: Arc::new(move || now),
            bus: crate::events::Bus::default(),
            metrics: Metrics::new(),
            host_samples: true,
        }
    }

    fn new_fleet() -> SharedFleet {
        Arc::new(Mutex::new(Fleet::new("default", FleetConfig::default())))
    }

    /// A console that starts again knows its fleet from the store: a gateway that kept
    /// heartbeating stays online, one that fell silent while the console was down turns stale
    /// at the first tick (the only signal on a broker without Will or retained presence).
    #[tokio::test]
    async fn a_restarted_console_restores_the_fleet_and_turns_the_silent_stale() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = store::open(&url).await.unwrap();
        let region = Region::new("default").unwrap();
        let (quiet, busy) = (
            InstanceId::new("gw-quiet").unwrap(),
            InstanceId::new("gw-busy").unwrap(),
        );
        // First process: both heartbeat (interval 1 s) and are written.
        let fleet = new_fleet();
        let mut sink = sink_on(store.clone(), 1_000_000);
        {
            let mut f = driver::lock(&fleet);
            f.on_heartbeat(&quiet, heartbeat("gw-quiet", 1, 999_000), 999_500);
            f.on_heartbeat(&busy, heartbeat("gw-busy", 1, 999_000), 999_500);
        }
        driver::flush(&fleet, &mut sink, 1_000_000).await;

        // Second process, 10 s later; gw-busy's next heartbeat arrives first thing.
        let fleet = new_fleet();
        assert_eq!(
            restore_fleet(store.as_ref(), &region, &fleet)
                .await
                .unwrap(),
            2
        );
        {
            let f = driver::lock(&fleet);
            let q = f.get(&quiet).unwrap();
            assert_eq!(q.presence.state, Liveness::Online);
            assert_eq!(q.group_id.as_deref(), Some("GID_a"));
            assert_eq!(q.storage.drift, 1);
            assert_eq!(f.counts().values().sum::<usize>(), 2);
        }
        // Restoring is neither a change nor an event.
        assert!(driver::lock(&fleet).take_dirty().is_empty());
        assert!(driver::lock(&fleet).take_events().is_empty());
        {
            let mut f = driver::lock(&fleet);
            // An older heartbeat than the stored one does not count; a newer one does.
            assert_eq!(
                f.on_heartbeat(&busy, heartbeat("gw-busy", 1, 999_000), 1_009_900),
                crate::fleet::Applied::Stale
            );
            f.on_heartbeat(&busy, heartbeat("gw-busy", 2, 1_009_000), 1_009_900);
        }
        let mut sink = sink_on(store.clone(), 1_010_000);
        driver::flush(&fleet, &mut sink, 1_010_000).await;
        let q = store.get_instance(&region, &quiet).await.unwrap().unwrap();
        assert_eq!(q.presence, Presence::Stale);
        assert_eq!(q.reason.as_deref(), Some("no_heartbeat"));
        let b = store.get_instance(&region, &busy).await.unwrap().unwrap();
        assert_eq!(b.presence, Presence::Online);
        assert_eq!(b.heartbeat.unwrap().to_value().unwrap()["seq"], 2);
        store.close().await;
    }

    /// Two replicas split a gateway's heartbeats; the one that got none lately asks the store
    /// before turning it stale, and keeps it online.
    #[tokio::test]
    async fn a_replica_keeps_online_a_gateway_whose_heartbeats_went_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = store::open(&url).await.unwrap();
        let region = Region::new("default").unwrap();
        let id = InstanceId::new("gw-1").unwrap();
        let (a, b) = (new_fleet(), new_fleet());
        // Both replicas saw heartbeat 1; only replica B gets the later ones.
        for f in [&a, &b] {
            driver::lock(f).on_heartbeat(&id, heartbeat("gw-1", 1, 1_000_000), 1_000_000);
        }
        for (seq, t) in [(2, 1_002_000), (3, 1_004_000), (4, 1_006_000)] {
            driver::lock(&b).on_heartbeat(&id, heartbeat("gw-1", seq, t), t);
            driver::flush(&b, &mut sink_on(store.clone(), t), t).await;
        }
        // At 1 006 500 gw-1 is 6.5 s silent at replica A (3 intervals of 1 s): due, but the
        // store says replica B heard it 0.5 s ago.
        assert_eq!(driver::lock(&a).due_stale(1_006_500), vec![id.clone()]);
        let mut sink_a = sink_on(store.clone(), 1_006_500);
        driver::flush(&a, &mut sink_a, 1_006_500).await;
        {
            let f = driver::lock(&a);
            let inst = f.get(&id).unwrap();
            assert_eq!(inst.presence.state, Liveness::Online);
            assert_eq!(inst.last_seen_ms, 1_006_000);
            assert_eq!(inst.heartbeat.as_ref().unwrap().seq, 4);
        }
        let row = store.get_instance(&region, &id).await.unwrap().unwrap();
        assert_eq!(row.presence, Presence::Online);
        // Silent everywhere: stale after all.
        driver::flush(&a, &mut sink_on(store.clone(), 1_010_000), 1_010_000).await;
        assert_eq!(
            driver::lock(&a).get(&id).unwrap().presence.state,
            Liveness::Stale
        );
        store.close().await;
    }
}
