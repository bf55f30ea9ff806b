//! The console side of csg-agent: send commands to storage gateways and watch their status
//! over an MQTT broker.
//!
//! A [`Console`] holds one MQTT connection (plain TCP or TLS, MQTT 3.1.1, clean session) with the
//! client ID `{group_id}@@@{console_id}`. Through it:
//!
//! * [`Console::call`] sends one request and waits for the reply, re-sending the same request id
//!   on silence and on retryable errors; agents answer a mutation's repeats from their id
//!   memory, so it runs at most once however often it is sent (a read may run again);
//! * [`Console::call_many`] fans one request out to many instances concurrently;
//! * [`Console::call_method`] and [`Console::call_many_method`] do the same for a typed
//!   [`Method`](csg_protocol::methods::Method), whose reply result decodes with
//!   [`MethodResult::decode`](csg_protocol::methods::MethodResult::decode);
//! * [`Console::watch`] streams heartbeats and presence.
//!
//! For gateways that require signed commands, set [`CallOptions::signer`] (a [`Signer`] made
//! from an Ed25519 private key): every request of the call, fan-out included, is then sent as
//! a JWS signed with that key.
//!
//! The connection is restored in the background after a drop, with its subscriptions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use csg_console::{CallOptions, Console, ConsoleOptions};
//! use csg_protocol::{BrokerUrl, GroupId, InstanceId, MethodName, ReplyBody};
//!
//! let opts = ConsoleOptions::new(
//!     BrokerUrl::parse("mqtt://127.0.0.1:1883")?,
//!     GroupId::new("GID_csg")?,
//!     InstanceId::new("my-console")?,
//! );
//! let console = Console::connect(opts).await?;
//! let reply = console
//!     .call(
//!         &InstanceId::new("gw-001")?,
//!         &MethodName::new("sys.ping")?,
//!         serde_json::Map::new(),
//!         &CallOptions::default(),
//!     )
//!     .await?;
//! match reply.body {
//!     ReplyBody::Ok(result) => println!("{result}"),
//!     ReplyBody::Err(e) => eprintln!("{e}"),
//! }
//! console.disconnect().await;
//! # Ok(())
//! # }
//! ```

// The command-line modules name this library by its crate name, as a separate program would.
extern crate self as csg_console;

pub mod call;
mod cli;
pub mod client;
pub mod fanout;
pub mod ids;
pub mod sign;
pub mod watch;

pub use call::{CallError, CallOptions};
pub use client::{Console, ConsoleError, ConsoleOptions, Tap};
pub use csg_transport::Protocol;
pub use fanout::{FanoutOptions, InstanceOutcome};
pub use ids::{derive_instance_id, IdGenerator};
pub use sign::Signer;
pub use watch::{StatusEvent, Watch, WatchError, WatchEvent, WatchFilter};

/// The `csgctl` program: its entry point and its command-line definition.
pub mod csgctl {
    pub use crate::cli::{command, main};
}
