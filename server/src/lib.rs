//! csg-consoled: the console service. It keeps the fleet's live state from the gateways'
//! heartbeats and presence, stores it (SQLite by default, PostgreSQL for several replicas), and
//! serves it over HTTP.
//!
//! Layers, top to bottom; arrows point down only:
//! - `fleet`: the live state of every gateway, from status messages (pure; no I/O), and the
//!   ingest seam that feeds it (an MQTT shared subscription, or a message queue's consumer);
//! - `store`: the one owner of SQL (a `Store` trait, with SQLite and PostgreSQL behind it);
//! - `sink`: the fleet's batches written to the store;
//! - `rpc`: calls to gateways behind one seam (`Caller`); `events`: live events fanned out;
//!   `eventlog`: the events stored in order, replayed and followed across replicas;
//! - `metrics`: what `/metrics` shows; `webhooks`: events POSTed to configured URLs;
//! - `calls`: the call path (stored before sent, one request id, finished in one place);
//!   `audit`: changes and refusals, stored and logged as JSON lines;
//! - `jobs`: one method over many gateways (a checked model, the engine's pure decisions, and
//!   a runner that leases jobs in the store and calls through `rpc`);
//! - `json`: JSON documents kept as text (a heartbeat is serialized once, when it arrives);
//! - `http`: the API, reading the store; `tls`: its HTTPS; `config`: the service's TOML;
//!   `cli`: its command line.
//! - `web`: the web console's pages, served beside the API (sessions in the store).

pub mod audit;
pub mod calls;
pub mod cli;
pub mod config;
pub mod eventlog;
pub mod events;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod json;
pub mod metrics;
pub mod rpc;
pub mod sink;
pub mod store;
pub mod tls;
pub mod web;
pub mod webhooks;

/// Now, in milliseconds since the Unix epoch: the store's time unit. A clock before 1970 reads
/// 0 and one past i64 saturates; neither is a reason to fail a request.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
