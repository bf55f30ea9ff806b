//! End-to-end harness: a real Mosquitto per test, the real `csg-agent` and `csgctl` binaries as
//! child processes, and a raw MQTT client that records everything it sees.
//!
//! Every test builds its own world (broker on a free loopback port, temp dirs, agent), so tests
//! run in parallel and a failing one leaves nothing behind: each process is killed and reaped
//! when its guard is dropped, and a guard dropped during a panic prints its process's log, so a
//! failure report always carries the broker's and the agent's side of the story.

pub mod agent;
pub mod bed;
pub mod bins;
pub mod broker;
pub mod certs;
pub mod config;
pub mod csgctl;
pub mod dirs;
pub mod duration;
pub mod exportfs_stub;
pub mod fsfault;
pub mod ganesha;
pub mod netns;
pub mod process;
pub mod recorder;
pub mod rpc;
pub mod smbd;
pub mod stubs;
pub mod targetcli_stub;
pub mod tgtd;

use std::time::{Duration, Instant};

pub use agent::Agent;
pub use bed::Bed;
pub use broker::Broker;
pub use config::{
    AgentConfig, AuthSection, IscsiSection, NfsSection, SecuritySection, SmbSection,
    StorageSection, TlsSection,
};
pub use csgctl::Csgctl;
pub use dirs::StorageDirs;
pub use process::CmdOutput;
pub use recorder::{Mark, Msg, Recorder};

/// How long to wait for anything that should happen "at once". Generous on purpose: CI is a
/// 2-core machine running several brokers, agents and test binaries in parallel.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long to keep watching after a barrier before concluding that something did *not*
/// happen. Absence cannot be awaited; the barrier does the ordering, this only covers the
/// agent's own task scheduling.
pub const QUIET: Duration = Duration::from_millis(500);

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MQTT version of this test run, from `CSG_TEST_MQTT`: `"3.1.1"` (the default) or `"5"`.
/// Every agent config, csgctl run and recorder of the harness speaks it, so the contract tests
/// run unchanged on both versions (scripts/test.sh runs them twice).
pub fn mqtt_protocol() -> &'static str {
    match std::env::var("CSG_TEST_MQTT").as_deref() {
        Err(_) | Ok("") | Ok("3.1.1") => "3.1.1",
        Ok("5") => "5",
        Ok(other) => panic!("CSG_TEST_MQTT={other:?}: use \"3.1.1\" or \"5\""),
    }
}

/// Whether this run speaks MQTT 5 (see [`mqtt_protocol`]).
pub fn mqtt5() -> bool {
    mqtt_protocol() == "5"
}

/// The workspace version: the agent and csgctl are built from the same workspace, so they must
/// report exactly this.
pub const WORKSPACE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A name unique within this test process, for client ids and request ids.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Milliseconds since the Unix epoch, as on the wire.
pub fn now_ms() -> u64 {
    csg_protocol::now_ms()
}
