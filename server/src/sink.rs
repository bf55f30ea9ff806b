//! The fleet's batches written to the store: changed gateways as instance rows, presence
//! transitions as events.

use std::sync::Arc;

use csg_protocol::identity::GroupId;

use crate::fleet::driver::{Batch, Clock, FleetSink, SinkError};
use crate::fleet::{Instance, Liveness, PresenceEvent};
use crate::store::{self, InstanceRow, Presence, Region, Store, StoreError};

/// A [`FleetSink`] backed by a [`Store`].
pub struct StoreSink {
    pub store: Arc<dyn Store>,
    pub region: Region,
    pub clock: Clock,
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
    async fn write_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        let now = ms((self.clock)());
        let mut rows = Vec::with_capacity(batch.instances.len());
        for i in &batch.instances {
            let group = match i.group_id.as_deref().map(GroupId::new) {
                Some(Ok(g)) => Some(g),
                _ => self
                    .store
                    .get_instance(&self.region, &i.instance_id)
                    .await?
                    .map(|r| r.group_id),
            };
            // A gateway known only from its presence and never stored has no group yet; it is
            // written with its first heartbeat (which marks it changed again).
            if let Some(g) = group {
                rows.push(row_of(i, &self.region, g, now));
            }
        }
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
        Ok(())
    }
}

impl FleetSink for StoreSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.write_batch(batch)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }
}
