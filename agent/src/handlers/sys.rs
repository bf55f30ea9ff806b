//! `sys.ping`, `sys.info`, `sys.capabilities`, `sys.status`, `sys.reconcile`: the agent
//! itself.

use std::collections::BTreeMap;

use csg_protocol::jws;
use csg_protocol::methods::sys::{
    CapabilitiesResult, FamilyCaps, LimitsCaps, MqttCaps, PingResult, SigningCaps, StorageCaps,
};
use csg_protocol::methods::{iscsi, nfs, page, schema, MethodResult};
use csg_protocol::now_ms;
use serde_json::{json, Value};

use super::Handlers;
use crate::config::Config;
use crate::families::Storage;
use crate::reply_cache::MAX_WAITERS;

pub fn ping() -> MethodResult {
    MethodResult::Ping(PingResult {
        pong: true,
        ts_ms: now_ms(),
    })
}

pub fn info(h: &Handlers) -> MethodResult {
    // A poisoned lock still holds a whole InfoResult: it is only ever replaced whole.
    let info = h
        .info
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    MethodResult::Info(Box::new(info.clone()))
}

pub async fn status(h: &Handlers) -> MethodResult {
    MethodResult::Status(Box::new(h.status.snapshot().await))
}

/// Re-applies the whole desired state of every storage family; the result names, per family,
/// what it changed (or why it could not).
pub async fn reconcile(h: &Handlers) -> MethodResult {
    MethodResult::Reconcile(h.storage.read().await.reconcile().await)
}

pub fn capabilities(h: &Handlers) -> MethodResult {
    // As for `info`: only ever replaced whole.
    let c = h
        .capabilities
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    MethodResult::Capabilities(Box::new(c.result()))
}

/// `sys.capabilities` for one configuration, but for its JSON Schemas: those are most of the
/// reply (about 49 KB with every family, several hundred KB as `serde_json` values) and are
/// generated on each call, so an agent that is never asked keeps none of them in memory. A
/// console asks once per gateway, not per request.
pub struct Capabilities {
    /// Everything but `methods`.
    base: CapabilitiesResult,
    /// The methods served, whose schemas `result` generates.
    methods: Vec<String>,
}

impl Capabilities {
    /// Built at start and again on a reload, never per request.
    pub fn new(cfg: &Config, storage: &Storage) -> Self {
        Self {
            base: capabilities_base(cfg, storage),
            methods: super::methods(storage),
        }
    }

    /// The whole reply, schemas included.
    pub fn result(&self) -> CapabilitiesResult {
        let mut r = self.base.clone();
        r.methods = self
            .methods
            .iter()
            .filter_map(|m| schema::describe(m).map(|d| (m.clone(), d)))
            .collect();
        r
    }

    /// Serves `result` as given (its `methods` are not regenerated): for tests that build
    /// handlers without a configuration.
    #[cfg(test)]
    pub fn fixed(result: CapabilitiesResult) -> Self {
        let methods = result.methods.keys().cloned().collect();
        Self {
            base: result,
            methods,
        }
    }
}

/// What `sys.capabilities` reports for this configuration and these storage families.
#[cfg(test)]
pub fn capabilities_result(cfg: &Config, storage: &Storage) -> CapabilitiesResult {
    Capabilities::new(cfg, storage).result()
}

/// Everything `sys.capabilities` reports but the methods' schemas (`methods` is empty).
fn capabilities_base(cfg: &Config, storage: &Storage) -> CapabilitiesResult {
    let sec = &cfg.security;
    let families = storage
        .backends()
        .into_iter()
        .map(|(family, backend)| {
            let options: BTreeMap<String, Value> = match family.as_str() {
                "nfs" => BTreeMap::from([
                    ("allow_hostnames".into(), json!(cfg.nfs.allow_hostnames)),
                    ("allow_world".into(), json!(cfg.nfs.world.allow_world)),
                    ("max_clients".into(), json!(nfs::MAX_CLIENTS)),
                    ("min_prefix_v4".into(), json!(cfg.nfs.world.min_prefix_v4)),
                    ("min_prefix_v6".into(), json!(cfg.nfs.world.min_prefix_v6)),
                ]),
                "smb" => BTreeMap::from([
                    ("allow_world".into(), json!(cfg.smb.world.allow_world)),
                    ("create_unix_users".into(), json!(cfg.smb.create_unix_users)),
                    ("min_prefix_v4".into(), json!(cfg.smb.world.min_prefix_v4)),
                    ("min_prefix_v6".into(), json!(cfg.smb.world.min_prefix_v6)),
                ]),
                "iscsi" => BTreeMap::from([
                    ("allow_devices".into(), json!(cfg.storage.allow_devices)),
                    ("iqn_prefix".into(), json!(cfg.iscsi.iqn_prefix)),
                    ("max_luns".into(), json!(iscsi::MAX_LUNS)),
                ]),
                _ => BTreeMap::new(),
            };
            (family, FamilyCaps { backend, options })
        })
        .collect();
    let u = |n: usize| n as u64;
    CapabilitiesResult {
        protocol: schema::protocol(),
        mqtt: MqttCaps {
            protocol: cfg.mqtt.protocol.as_str().into(),
        },
        limits: LimitsCaps {
            max_payload_bytes: u(cfg.agent.max_payload_bytes),
            max_reply_bytes: u(cfg.agent.max_reply_bytes),
            id_memory_ttl_s: cfg.agent.reply_cache_ttl.as_secs(),
            max_in_flight: u(cfg.agent.max_in_flight),
            max_waiters_per_id: u(MAX_WAITERS),
            max_topic_len: u(cfg.topics.max_len()),
            max_list_limit: u64::from(page::MAX_LIMIT),
            max_deadline_ahead_s: (sec.max_command_validity + sec.clock_skew).as_secs(),
        },
        signing: SigningCaps {
            required: sec.require_signed_commands,
            algorithms: vec![jws::ALG.into()],
            audience: cfg.client_id.to_string(),
            key_ids: sec.trusted_keys.keys().cloned().collect(),
            max_validity_s: sec.max_command_validity.as_secs(),
            clock_skew_s: sec.clock_skew.as_secs(),
        },
        storage: StorageCaps {
            roots: cfg
                .storage
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
        },
        families,
        methods: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capabilities of the config below, as a console receives them. Regenerate with
    /// `UPDATE_GOLDEN=1 cargo test -p csg-agent --lib capabilities` after a deliberate change,
    /// and read the diff: every line of it is a change to the contract.
    const GOLDEN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/handlers/capabilities.golden.json"
    );

    fn config(state_dir: &std::path::Path, roots: &std::path::Path) -> Config {
        Config::from_toml(&format!(
            r#"
[identity]
group_id = "GID_csg"
instance_id = "gw-golden"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[agent]
max_reply_bytes = 61440
[storage]
roots = ["{roots}"]
state_dir = "{state}"
[nfs]
backend = "kernel"
exports_file = "/etc/exports.d/csg-agent.exports"
allow_hostnames = true
[iscsi]
backend = "tgt"
iqn_prefix = "iqn.2026-01.com.example.csg"
"#,
            roots = roots.display(),
            state = state_dir.display(),
        ))
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn capabilities_match_the_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let roots = std::path::Path::new("/srv");
        let cfg = config(dir.path(), roots);
        let storage = Storage::new(&cfg).unwrap();
        let caps = capabilities_result(&cfg, &storage);
        let mut got = serde_json::to_string_pretty(&caps).unwrap();
        got.push('\n');
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(GOLDEN, &got).unwrap();
        }
        let want = std::fs::read_to_string(GOLDEN).unwrap_or_default();
        assert!(
            got == want,
            "sys.capabilities differs from {GOLDEN}; if the change is meant, regenerate it with UPDATE_GOLDEN=1 and review the diff"
        );
        // What the golden file is there to show, in case it was regenerated without a look.
        assert_eq!(caps.protocol.current, "1.1");
        assert_eq!(caps.limits.max_reply_bytes, 61440);
        assert_eq!(caps.families["nfs"].options["allow_hostnames"], true);
        assert!(
            !caps.families.contains_key("smb"),
            "an unconfigured family is absent"
        );
        assert!(caps.methods.contains_key("nfs.export.list"));
        assert!(!caps.methods.keys().any(|m| m.starts_with("smb.")));
        assert_eq!(caps.methods["nfs.export.create"].kind, "mutation");
        assert_eq!(caps.methods["sys.capabilities"].kind, "read");
    }

    #[test]
    fn capabilities_fit_the_smallest_reply_cap_with_every_family() {
        // Every method's schemas in one reply: it must fit the smallest cap check-config
        // allows, or the one method meant to describe the agent could only be answered
        // REPLY_TOO_LARGE.
        let mut all = CapabilitiesResult {
            methods: schema::all()
                .into_iter()
                .map(|(m, d)| (m.to_string(), d))
                .collect(),
            ..capabilities_result(
                &config(
                    std::path::Path::new("/nonexistent"),
                    std::path::Path::new("/srv"),
                ),
                &Storage::none(),
            )
        };
        all.families.clear();
        let bytes = serde_json::to_vec(&all).unwrap().len();
        eprintln!("sys.capabilities with every family: {bytes} bytes");
        assert!(
            bytes + 200 < crate::config::MIN_REPLY_BYTES,
            "sys.capabilities with every family is {bytes} bytes"
        );
    }
}
