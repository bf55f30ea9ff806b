//! The fleet's batches written to the store: changed gateways as instance rows, presence
//! transitions as events. Once a batch is written its presence transitions are published on
//! the event bus (so a listener never hears of a change the API cannot show yet), and each
//! write is timed for the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use csg_protocol::identity::{GroupId, InstanceId};

use crate::events::{Bus, Event};
use crate::fleet::driver::{Batch, Clock, FleetSink, SinkError};
use crate::fleet::{Instance, Liveness, PresenceEvent};
use crate::metrics::Metrics;
use crate::store::{
    self, InstanceFilter, InstanceRow, PageLimit, Presence, Region, Store, StoreError,
};

/// A [`FleetSink`] backed by a [`Store`].
pub struct StoreSink {
    pub store: Arc<dyn Store>,
    pub region: Region,
    pub clock: Clock,
    pub bus: Bus,
    pub metrics: Metrics,
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
/// presence only since this process started).
pub fn row_of(i: &Instance, region: &Region, group: GroupId, now_ms: i64) -> InstanceRow {
    InstanceRow {
        region: region.clone(),
        instance_id: i.instance_id.clone(),
        group_id: group,
        presence: presence(i.presence.state),
        since_ms: ms(i.presence.since_ms),
        reason: reason_text(i.presence.reason),
        last_seen_ms: (i.last_seen_ms > 0).then(|| ms(i.last_seen_ms)),
        agent_version: i.agent_version.clone(),
        heartbeat: i
            .heartbeat
            .as_ref()
            .and_then(|h| serde_json::to_value(h.as_ref()).ok()),
        storage: serde_json::to_value(i.storage).ok(),
        updated_ms: now_ms,
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
    /// The stored groups of gateways the fleet has no group for, a page of ids per query.
    async fn stored_groups(
        &self,
        ids: Vec<InstanceId>,
    ) -> Result<HashMap<InstanceId, GroupId>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(InstanceFilter::MAX_IDS) {
            let filter = InstanceFilter {
                region: Some(self.region.clone()),
                ids: chunk.to_vec(),
                ..InstanceFilter::default()
            };
            let limit = PageLimit::new(PageLimit::MAX)?;
            let page = self.store.list_instances(&filter, limit, None).await?;
            found.extend(page.items.into_iter().map(|r| (r.instance_id, r.group_id)));
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
                Some(row_of(i, &self.region, group, now))
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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::fleet::driver::{self, SharedFleet};
    use crate::fleet::{Fleet, FleetConfig};

    fn heartbeat(id: &str, seq: u64, ts_ms: u64) -> Arc<csg_protocol::Heartbeat> {
        let json = serde_json::json!({
            "v": 1, "type": "heartbeat", "instance_id": id, "group_id": "GID_a",
            "seq": seq, "ts_ms": ts_ms, "agent_version": "1.2.3", "uptime_s": 10,
            "interval_s": 1,
            "system": {"cpu_pct": 1.0, "load1": 0.1, "mem_total": 100, "mem_used": 50},
            "disks": [], "services": {},
            "storage": {"nfs": {"count": 2, "drift": 1}}
        });
        Arc::new(serde_json::from_value(json).unwrap())
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
        assert_eq!(
            row.storage,
            Some(serde_json::json!({"count": 2, "drift": 1}))
        );
        assert_eq!(row.heartbeat.unwrap()["seq"], 1);
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
}
