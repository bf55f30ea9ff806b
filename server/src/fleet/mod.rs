//! The fleet: every gateway's live state, built from heartbeats and presence.
//!
//! - [`state`]: the pure state machine (`Fleet`): ordering by the agent's own `seq`/`ts_ms`,
//!   online / stale / offline, what changed since the last batch, presence events;
//! - [`ingest`]: the seam status messages come through (`StatusSource`), and their parsing;
//! - [`mqtt`]: the MQTT source, fed by the one console session's tap (a shared subscription for
//!   heartbeats, a plain one for presence);
//! - [`driver`]: the task that feeds a `Fleet` from a source and hands batches to a sink.

pub mod driver;
pub mod ingest;
pub mod mqtt;
pub mod state;

#[cfg(test)]
mod tests;

pub use driver::{Batch, Clock, DriverConfig, FleetSink, MemorySink, Seen, SharedFleet, SinkError};
pub use ingest::{BadStatus, IngestStats, StatusBody, StatusMessage, StatusSource};
pub use mqtt::{IngestError, MqttStatusSource, ShareGroup, StatusTap};
pub use state::{
    Applied, Beat, Fleet, FleetConfig, Instance, LastBeat, Liveness, PresenceEvent, PresenceView,
    Reason, Restored, StorageTotals,
};
