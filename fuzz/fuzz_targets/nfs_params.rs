//! `nfs.*` params: the input as a JSON object through `ExportParams` and `validate`, with and
//! without host names allowed, and through `NameParams`. Whatever is accepted holds only
//! safe characters in every field that reaches an exports line or a Ganesha block, and its
//! stored form validates back to the same spec.
#![no_main]

use csg_fuzz::{json_object, only, path_rule};
use csg_protocol::methods::nfs::{ClientMatch, ExportName, ExportParams, NameParams, MAX_CLIENTS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(m) = json_object(data) else {
        return;
    };
    if let Ok(p) = serde_json::from_value::<NameParams>(Value::Object(m.clone())) {
        if let Ok(n) = ExportName::parse(&p.name) {
            assert!(only(n.as_str(), b"_-") && n.as_str().len() <= 32);
        }
    }
    let Ok(p) = serde_json::from_value::<ExportParams>(Value::Object(m)) else {
        return;
    };
    for allow in [false, true] {
        let Ok(s) = p.validate(allow) else {
            continue;
        };
        let n = s.name().as_str();
        assert!(only(n, b"_-") && !n.starts_with(['_', '-']) && n.len() <= 32);
        assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
        assert!(path_rule(s.path()) && path_rule(s.pseudo()));
        assert!(!s.clients().is_empty() && s.clients().len() <= MAX_CLIENTS);
        for c in s.clients() {
            assert!(only(&c.matches.to_string(), b".:/*?@_-"));
            assert!(allow || matches!(c.matches, ClientMatch::Net(_)));
        }
        assert!(matches!(s.protocols(), [3] | [4] | [3, 4]));
        let v = serde_json::to_value(s.to_params()).unwrap();
        let again = serde_json::from_value::<ExportParams>(v)
            .unwrap()
            .validate(allow)
            .unwrap();
        assert_eq!(again, s);
    }
});
