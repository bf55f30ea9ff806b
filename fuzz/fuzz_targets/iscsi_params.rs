//! `iscsi.target.*` params: the input as a JSON object through `TargetParams::validate`, and
//! through `GetParams` / `DeleteParams` with the target name rule. Whatever is accepted holds
//! only safe characters in every value that reaches a tgtadm or targetcli argument vector,
//! keeps within the list caps, never shows a CHAP secret in `Debug`, and the params it stands
//! for validate back to the same spec.
#![no_main]

use csg_fuzz::{json_object, only, path_rule};
use csg_protocol::methods::iscsi::{
    DeleteParams, GetParams, TargetName, TargetParams, TargetSpec, MAX_INITIATORS, MAX_IQN_BYTES,
    MAX_LUN, MAX_LUNS, MAX_NETWORKS, MAX_SIZE_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const PREFIX: &str = "iqn.2026-11.com.example.csg";

fn iqn_ok(s: &str) -> bool {
    s.len() <= MAX_IQN_BYTES
        && only(s, b".:-")
        && !s.bytes().any(|b| b.is_ascii_uppercase())
        && (s.starts_with("iqn.") || s.starts_with("eui.") || s.starts_with("naa."))
}

fn params_of(s: &TargetSpec) -> Value {
    let mut m = json!({
        "name": s.name.as_str(),
        "iqn": s.iqn.as_str(),
        "luns": s.luns.iter().map(|l| serde_json::to_value(l).unwrap()).collect::<Vec<_>>(),
        "initiators": s.initiators.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        "networks": s.networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    });
    if let Some(c) = &s.chap {
        let mut cj = json!({"username": c.username.as_str(), "secret": c.secret.expose()});
        if let Some((u, k)) = &c.mutual {
            cj["mutual_username"] = json!(u.as_str());
            cj["mutual_secret"] = json!(k.expose());
        }
        m["chap"] = cj;
    }
    m
}

fuzz_target!(|data: &[u8]| {
    let Some(m) = json_object(data) else {
        return;
    };
    if let Ok(p) = serde_json::from_value::<GetParams>(Value::Object(m.clone())) {
        let _ = TargetName::parse(&p.name);
    }
    if let Ok(p) = serde_json::from_value::<DeleteParams>(Value::Object(m.clone())) {
        if let Ok(n) = TargetName::parse(&p.name) {
            assert!(only(n.as_str(), b"-") && n.as_str().len() <= 63);
        }
    }
    let Ok(p) = serde_json::from_value::<TargetParams>(Value::Object(m)) else {
        return;
    };
    let Ok(s) = p.validate(PREFIX) else {
        return;
    };
    let n = s.name.as_str();
    assert!(only(n, b"-") && !n.starts_with('-') && !n.ends_with('-') && n.len() <= 63);
    assert!(iqn_ok(s.iqn.as_str()));
    assert!(s.luns.len() <= MAX_LUNS);
    for l in &s.luns {
        assert!((1..=MAX_LUN).contains(&l.lun) && path_rule(&l.path));
        if let Some(b) = l.size_bytes {
            assert!(b > 0 && b % 512 == 0 && b <= MAX_SIZE_BYTES);
        }
    }
    assert!(s.initiators.len() <= MAX_INITIATORS && s.networks.len() <= MAX_NETWORKS);
    assert!(s.initiators.iter().all(|i| iqn_ok(i.as_str())));
    assert!(s.networks.iter().all(|c| only(&c.to_string(), b".:/")));
    if let Some(c) = &s.chap {
        assert!(only(c.username.as_str(), b"._-"));
        assert!(only(c.secret.expose(), b""));
        assert!(!format!("{s:?}").contains(c.secret.expose()));
    }
    let again = serde_json::from_value::<TargetParams>(params_of(&s))
        .unwrap()
        .validate(PREFIX)
        .unwrap();
    assert_eq!(again, s);
});
