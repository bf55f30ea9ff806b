//! `sys.capabilities` end to end: the real agent over Mosquitto, asked through the real csgctl
//! (`csgctl call <instance> sys.capabilities`), agreeing with `sys.info` and with what the
//! agent then does with a request.

use std::collections::BTreeSet;

use csg_e2e::exportfs_stub::ExportfsStub as Stub;
use csg_e2e::{csgctl, Bed, StorageDirs as World};
use serde_json::{json, Value};

fn capabilities(bed: &Bed) -> Value {
    let out = bed
        .csgctl()
        .run(&["call", bed.instance(), "sys.capabilities"]);
    out.assert_code(0);
    csgctl::json_stdout(&out)
}

#[test]
fn capabilities_describe_the_agent_as_configured() {
    let w = World::with_root("srv");
    let stub = Stub::new(w.base());
    let bed = Bed::start_with("gw-caps", |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    let caps = capabilities(&bed);
    let info = bed.call_ok("sys.info", json!({}));

    assert_eq!(caps["protocol"]["current"], json!("1.1"), "{caps}");
    assert_eq!(caps["protocol"]["versions"], json!(["1.0", "1.1"]));
    assert_eq!(caps["protocol"]["envelope_v"], json!(1));
    assert_eq!(caps["mqtt"]["protocol"], json!(csg_e2e::mqtt_protocol()));

    let limits = &caps["limits"];
    assert_eq!(limits["max_payload_bytes"], info["max_payload"], "{limits}");
    assert_eq!(limits["max_reply_bytes"], json!(61440), "{limits}");
    assert_eq!(limits["id_memory_ttl_s"], json!(600), "{limits}");
    assert_eq!(limits["max_in_flight"], json!(64), "{limits}");
    assert_eq!(limits["max_list_limit"], json!(1000), "{limits}");

    assert_eq!(caps["signing"]["required"], json!(false));
    assert_eq!(caps["signing"]["algorithms"], json!(["EdDSA"]));
    assert_eq!(caps["signing"]["audience"], info["client_id"]);
    assert_eq!(
        caps["storage"]["roots"],
        json!([w.root().display().to_string()])
    );

    // Exactly the configured families, with their backends as sys.info reports them.
    let families: BTreeSet<&String> = caps["families"].as_object().unwrap().keys().collect();
    let backends: BTreeSet<&String> = info["storage_backends"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(families, backends, "{caps}");
    assert_eq!(
        caps["families"]["nfs"]["backend"],
        info["storage_backends"]["nfs"]
    );
    assert_eq!(
        caps["families"]["nfs"]["options"]["allow_hostnames"],
        json!(false)
    );

    // Every method sys.info lists, and only those, each with a kind and two schemas.
    let methods: BTreeSet<String> = caps["methods"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let listed: BTreeSet<String> = serde_json::from_value(info["methods"].clone()).unwrap();
    assert_eq!(methods, listed);
    assert!(methods.contains("sys.capabilities"));
    for (m, d) in caps["methods"].as_object().unwrap() {
        let kind = d["kind"].as_str().unwrap();
        assert!(kind == "read" || kind == "mutation", "{m}: {kind}");
        for part in ["params", "result"] {
            assert_eq!(
                d[part]["$schema"],
                json!("https://json-schema.org/draft/2020-12/schema"),
                "{m} {part}"
            );
        }
    }
    assert_eq!(
        caps["methods"]["nfs.export.create"]["kind"],
        json!("mutation")
    );
    assert_eq!(caps["methods"]["nfs.export.list"]["kind"], json!("read"));

    // The schema says what the agent enforces: the export name rule, the list limit.
    let create = &caps["methods"]["nfs.export.create"]["params"];
    let required: BTreeSet<&str> = create["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["clients", "name", "path"].into_iter().collect());
    assert_eq!(create["additionalProperties"], json!(false));
    assert_eq!(create["properties"]["clients"]["maxItems"], json!(64));
    let pattern = create["properties"]["name"]["pattern"].as_str().unwrap();
    assert_eq!(pattern, "^[a-z0-9][a-z0-9_-]{0,31}$");
    bed.call_err(
        "nfs.export.create",
        json!({"name": "Not-Valid", "path": w.path("x"), "clients": [{"match": "10.0.0.0/8"}]}),
        "INVALID_PARAMS",
    );
    let list = &caps["methods"]["nfs.export.list"]["params"]["properties"]["limit"];
    assert_eq!(list["maximum"], json!(1000), "{list}");
    bed.call_err("nfs.export.list", json!({"limit": 1001}), "INVALID_PARAMS");

    // The whole reply fits the reply cap it reports.
    let size = serde_json::to_vec(&caps).unwrap().len();
    assert!(size < 61440, "{size} bytes");
}

#[test]
fn capabilities_take_no_params_and_are_a_read() {
    let bed = Bed::start("gw-caps-bare");
    let caps = bed.call_ok("sys.capabilities", json!({}));
    assert_eq!(caps["families"], json!({}), "no storage configured: {caps}");
    assert!(caps["storage"]["roots"].is_array(), "{caps}");
    let methods: BTreeSet<&String> = caps["methods"].as_object().unwrap().keys().collect();
    assert!(methods.iter().all(|m| m.starts_with("sys.")), "{methods:?}");
    bed.call_err("sys.capabilities", json!({"x": 1}), "INVALID_PARAMS");
    // A read: repeating its id runs it again rather than replaying (nothing to remember).
    let a = bed.call_raw("caps-1", "sys.capabilities", json!({}));
    let b = bed.call_raw("caps-1", "sys.capabilities", json!({}));
    assert_eq!(a["result"], b["result"]);
}

#[test]
fn a_reload_shows_in_capabilities_without_a_reconnect() {
    // A trusted key added by a reload (applied without a restart, like a key rotation) is in
    // the next sys.capabilities, and so is a family option.
    use csg_protocol::jws::{self, ed25519_dalek::SigningKey};
    use nix::sys::signal::Signal;
    let w = World::with_root("srv");
    let stub = Stub::new(w.base());
    let mut bed = Bed::start_with("gw-caps-reload", |c| {
        c.storage = Some(w.section());
        c.nfs = Some(stub.nfs_section());
    });
    let before = bed.call_ok("sys.capabilities", json!({}));
    assert_eq!(before["signing"]["key_ids"], json!([]), "{before}");
    assert_eq!(
        before["families"]["nfs"]["options"]["allow_hostnames"],
        json!(false)
    );

    let key = w.base().join("ops.pub");
    let sk = SigningKey::from_bytes(&[7; 32]);
    std::fs::write(&key, jws::public_key_pem(&sk.verifying_key()).unwrap()).unwrap();
    // Each change by a reload of its own: only the keys, then only the family option.
    let reload = |bed: &mut Bed, adjust: &dyn Fn(&mut csg_e2e::AgentConfig)| {
        let done = bed.agent.log().matches("configuration reloaded").count();
        let mut cfg = bed.agent.config.clone();
        adjust(&mut cfg);
        std::fs::write(bed.agent.config_path(), cfg.to_toml()).unwrap();
        bed.agent.config = cfg;
        bed.agent.signal(Signal::SIGHUP);
        assert!(
            csg_e2e::wait_until(csg_e2e::TIMEOUT, || bed
                .agent
                .log()
                .matches("configuration reloaded")
                .count()
                > done),
            "{}",
            bed.agent.log()
        );
    };
    reload(&mut bed, &|c| {
        c.security =
            Some(csg_e2e::SecuritySection::default().trust("ops-2026", &key, &["sys.info"]));
    });
    let after = bed.call_ok("sys.capabilities", json!({}));
    assert_eq!(after["signing"]["key_ids"], json!(["ops-2026"]), "{after}");
    assert_eq!(after["signing"]["required"], json!(false), "{after}");

    reload(&mut bed, &|c| {
        c.nfs = Some(csg_e2e::NfsSection {
            allow_hostnames: Some(true),
            ..stub.nfs_section()
        });
    });
    let after = bed.call_ok("sys.capabilities", json!({}));
    assert_eq!(
        after["families"]["nfs"]["options"]["allow_hostnames"],
        json!(true),
        "{after}"
    );
    assert_eq!(after["signing"]["key_ids"], json!(["ops-2026"]), "{after}");
    assert_eq!(bed.broker.connects_of(&bed.client_id()), 1);
}
