//! Every method's params and result held to the examples in `docs/`: a console written in
//! another language reads the same documents and must see exactly the JSON the Rust types
//! produce.
//!
//! A golden example is a fenced `json` block preceded by one or more marker lines
//! `<!-- example: METHOD params -->` or `<!-- example: METHOD result -->` (several markers may
//! share one block, e.g. `create` and `update`). For each one:
//!
//! * params: `Method::parse` accepts them, and `Method::params` writes them back as the same
//!   JSON (so a params example spells out every default);
//! * result: `MethodResult::decode` accepts it, and it serializes back to the same JSON.
//!
//! JSON is compared as `serde_json::Value`: the same objects, whatever the key order.
//!
//! Every example is also validated against the JSON Schema `sys.capabilities` reports for its
//! method (`methods::schema`), so the schemas and the documents cannot drift apart either.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use csg_protocol::methods::{schema, Method, MethodResult, ALL};
use serde_json::{Map, Value};

/// The documents that hold the contract (docs/protocol.md for `sys.*`).
const DOCS: &[&str] = &[
    "protocol.md",
    "methods/nfs.md",
    "methods/smb.md",
    "methods/iscsi.md",
];

const MARKER: &str = "<!-- example:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Params,
    Result,
}

#[derive(Debug)]
struct Example {
    /// `file:line` of the block, for messages.
    at: String,
    method: String,
    part: Part,
    json: Value,
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// `<!-- example: nfs.export.create params -->` into its method and part.
fn marker(line: &str, at: &str) -> (String, Part) {
    let inner = line
        .trim()
        .strip_prefix(MARKER)
        .and_then(|s| s.strip_suffix("-->"))
        .unwrap_or_else(|| panic!("{at}: a marker is one whole line: {line:?}"));
    let words: Vec<&str> = inner.split_whitespace().collect();
    match words.as_slice() {
        [m, "params"] => (m.to_string(), Part::Params),
        [m, "result"] => (m.to_string(), Part::Result),
        _ => panic!("{at}: expected `{MARKER} METHOD params|result -->`, got {line:?}"),
    }
}

fn parse_file(rel: &str) -> Vec<Example> {
    let path = docs_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut pending: Vec<(String, Part)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let at = format!("docs/{rel}:{}", i + 1);
        let line = lines[i];
        if line.trim_start().starts_with(MARKER) {
            pending.push(marker(line, &at));
            i += 1;
            continue;
        }
        if pending.is_empty() {
            i += 1;
            continue;
        }
        assert_eq!(
            line.trim(),
            "```json",
            "{at}: a marker must be followed by a ```json block"
        );
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("{at}: the ```json block is not closed"));
        let body = lines[start..end].join("\n");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{at}: the block is not JSON: {e}"));
        for (method, part) in pending.drain(..) {
            out.push(Example {
                at: at.clone(),
                method,
                part,
                json: json.clone(),
            });
        }
        i = end + 1;
    }
    assert!(
        pending.is_empty(),
        "docs/{rel}: a marker at the end has no block"
    );
    out
}

fn examples() -> Vec<Example> {
    DOCS.iter().flat_map(|f| parse_file(f)).collect()
}

fn object(e: &Example) -> Map<String, Value> {
    match &e.json {
        Value::Object(m) => m.clone(),
        other => panic!(
            "{}: {} {:?} is not an object: {other}",
            e.at, e.method, e.part
        ),
    }
}

/// Whether a method takes no params (its only params are `{}`).
fn takes_none(method: &str) -> bool {
    Method::parse(method, Map::new()).is_ok_and(|m| m.params().is_empty())
}

#[test]
fn every_method_has_a_params_and_a_result_example() {
    let all = examples();
    let have: BTreeSet<(&str, Part)> = all.iter().map(|e| (e.method.as_str(), e.part)).collect();
    let mut missing = Vec::new();
    for &m in ALL {
        if !have.contains(&(m, Part::Result)) {
            missing.push(format!("{m} result"));
        }
        // A method without params needs no example of them: `{}` is checked below.
        if !takes_none(m) && !have.contains(&(m, Part::Params)) {
            missing.push(format!("{m} params"));
        }
    }
    assert!(missing.is_empty(), "no golden example for: {missing:?}");
    for e in &all {
        assert!(
            ALL.contains(&e.method.as_str()),
            "{}: {} is not a method of the protocol",
            e.at,
            e.method
        );
    }
}

#[test]
fn params_examples_parse_and_write_back_the_same_json() {
    let mut n = 0;
    for e in examples().iter().filter(|e| e.part == Part::Params) {
        let m = Method::parse(&e.method, object(e))
            .unwrap_or_else(|err| panic!("{}: {} refused its example: {err}", e.at, e.method));
        assert_eq!(m.name(), e.method, "{}", e.at);
        assert_eq!(
            Value::Object(m.params()),
            e.json,
            "{}: {} params do not write back as documented",
            e.at,
            e.method
        );
        n += 1;
    }
    assert!(n > 0, "no params examples found");
}

#[test]
fn methods_without_params_send_an_empty_object() {
    for &name in ALL.iter().filter(|m| takes_none(m)) {
        let m = Method::parse(name, Map::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Value::Object(m.params()), serde_json::json!({}), "{name}");
    }
}

#[test]
fn result_examples_decode_and_write_back_the_same_json() {
    let mut n = 0;
    for e in examples().iter().filter(|e| e.part == Part::Result) {
        let r = MethodResult::decode(&e.method, e.json.clone()).unwrap_or_else(|err| {
            panic!(
                "{}: {} result example does not decode: {err}",
                e.at, e.method
            )
        });
        let back = r
            .to_value()
            .unwrap_or_else(|err| panic!("{}: {}: {err:?}", e.at, e.method));
        assert_eq!(
            back, e.json,
            "{}: {} result does not write back as documented",
            e.at, e.method
        );
        n += 1;
    }
    assert!(n > 0, "no result examples found");
}

#[test]
fn markers_are_well_formed() {
    // A marker that names no block or a wrong part fails in `parse_file`; this also catches a
    // marker a typo kept from being recognised at all.
    for rel in DOCS {
        let text = std::fs::read_to_string(docs_dir().join(rel)).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("<!--") && line.contains("example") {
                assert!(
                    line.trim().starts_with(MARKER),
                    "docs/{rel}:{}: malformed example marker {line:?}",
                    i + 1
                );
            }
        }
    }
}

fn validator(method: &str, part: Part) -> jsonschema::Validator {
    let d = schema::describe(method).unwrap_or_else(|| panic!("{method}: no schema"));
    let s = match part {
        Part::Params => d.params,
        Part::Result => d.result,
    };
    // 2020-12 explicitly: the `$schema` the generator writes must be the one it is read as.
    jsonschema::draft202012::new(&s)
        .unwrap_or_else(|e| panic!("{method} {part:?}: the schema does not compile: {e}\n{s}"))
}

#[test]
fn every_schema_compiles_as_2020_12() {
    for &m in ALL {
        for part in [Part::Params, Part::Result] {
            validator(m, part);
        }
    }
}

#[test]
fn every_example_is_valid_against_its_schema() {
    let mut n = 0;
    for e in examples() {
        let v = validator(&e.method, e.part);
        let errors: Vec<String> = v
            .iter_errors(&e.json)
            .map(|x| format!("{} at {}", x, x.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{}: {} {:?} example does not match its schema: {errors:#?}",
            e.at,
            e.method,
            e.part
        );
        n += 1;
    }
    // Methods without params are sent `{}`.
    for &m in ALL.iter().filter(|m| takes_none(m)) {
        assert!(
            validator(m, Part::Params).is_valid(&serde_json::json!({})),
            "{m}"
        );
    }
    assert!(n > 0);
}

#[test]
fn schemas_refuse_what_the_parser_refuses() {
    // A few values only the checked types refuse: the schema must say so too.
    // Refused by the agent after parsing (`ExportParams::validate`, `TargetName::parse`).
    for (m, params) in [
        ("nfs.export.get", serde_json::json!({"name": "Bad Name"})),
        (
            "nfs.export.create",
            serde_json::json!({"name": "v", "path": "/srv/../etc", "clients": [{"match": "10.0.0.0/8"}]}),
        ),
        (
            "nfs.export.create",
            serde_json::json!({"name": "v", "path": "/srv/v", "clients": []}),
        ),
        ("iscsi.target.create", serde_json::json!({"name": "T1"})),
        (
            "iscsi.target.create",
            serde_json::json!({"name": "t", "luns": [{"lun": 0, "path": "/srv/l"}]}),
        ),
    ] {
        assert!(
            !validator(m, Part::Params).is_valid(&params),
            "{m} {params}: the schema accepts it"
        );
    }
    let cases: &[(&str, Value)] = &[
        (
            "nfs.export.get",
            serde_json::json!({"name": "x", "extra": 1}),
        ),
        ("nfs.export.list", serde_json::json!({"limit": 0})),
        ("nfs.export.list", serde_json::json!({"limit": 1001})),
        ("smb.share.get", serde_json::json!({"name": "-x"})),
        (
            "smb.share.create",
            serde_json::json!({"name": "s", "path": "/srv/s", "create_mask": "999"}),
        ),
        (
            "smb.user.set",
            serde_json::json!({"username": "alice", "password": "short"}),
        ),
        ("iscsi.target.get", serde_json::json!({"name": "t-"})),
        ("sys.ping", serde_json::json!({"x": 1})),
    ];
    for (m, params) in cases {
        let obj = params.as_object().unwrap().clone();
        assert!(
            Method::parse(m, obj).is_err(),
            "{m} {params}: the parser accepts it"
        );
        assert!(
            !validator(m, Part::Params).is_valid(params),
            "{m} {params}: the schema accepts it"
        );
    }
}

/// The schema of one checked type, compiled.
fn type_validator<T: schemars::JsonSchema>() -> jsonschema::Validator {
    let s = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    jsonschema::draft202012::new(&s.to_value()).unwrap()
}

/// For each sample: the type's parser and its schema agree on whether it is valid.
fn agree<T: schemars::JsonSchema>(what: &str, parse: impl Fn(&str) -> bool, samples: &[&str]) {
    let v = type_validator::<T>();
    for s in samples {
        assert_eq!(
            v.is_valid(&Value::String(s.to_string())),
            parse(s),
            "{what} {s:?}: the schema and the parser disagree"
        );
    }
}

#[test]
fn checked_values_and_their_schemas_agree() {
    use csg_protocol::methods::{iscsi, smb};
    let long80 = "a".repeat(80);
    let long81 = "a".repeat(81);
    agree::<smb::ShareName>(
        "share name",
        |s| smb::ShareName::parse(s).is_ok(),
        &[
            "data", "A.b_c-1", &long80, "", "-x", ".x", "a b", "a/b", &long81, "é",
        ],
    );
    agree::<smb::Mask>(
        "mask",
        |s| smb::Mask::parse(s).is_ok(),
        &["644", "0755", "000", "999", "12345", "abc", "07555", "64"],
    );
    agree::<smb::Principal>(
        "principal",
        |s| smb::Principal::parse(s).is_ok(),
        &[
            "alice",
            "_svc",
            "@staff",
            "Alice",
            "@",
            "1abc",
            "a b",
            &"a".repeat(33),
        ],
    );
    agree::<smb::SharePath>(
        "path",
        |s| smb::SharePath::parse(s).is_ok(),
        &[
            "/srv/a",
            "/srv/a.b/c_d-e",
            "/",
            "/a/../b",
            "/a/./b",
            "rel",
            "/a//b",
            "/-x",
            "/a b",
        ],
    );
    agree::<smb::Password>(
        "password",
        |s| smb::Password::parse(s).is_ok(),
        &[
            "12345678",
            "correct horse",
            "short",
            "with\nnewline1",
            &"p".repeat(128),
        ],
    );
    agree::<smb::Comment>(
        "comment",
        |s| smb::Comment::parse(s).is_ok(),
        &[
            "Finance, 2026",
            "",
            " lead",
            "trail ",
            "a%b",
            "a\"b",
            "a\\b",
            "tab\there",
        ],
    );
    agree::<iscsi::TargetName>(
        "target name",
        |s| iscsi::TargetName::parse(s).is_ok(),
        &[
            "t1",
            "a-b",
            "0",
            "-a",
            "a-",
            "A",
            "a_b",
            "",
            &"a".repeat(64),
        ],
    );
    agree::<iscsi::Iqn>(
        "iqn",
        |s| iscsi::Iqn::parse("iqn", s).is_ok(),
        &[
            "iqn.2001-04.com.example:storage.disk1",
            "iqn.2001-04.com.example",
            "eui.02004567a425678d",
            "naa.52004567ba64678d52004567ba64678d",
            "IQN.2001-04.com.example",
            "iqn.2001-13.com.example",
            "eui.123",
            "naa.xyz",
            "iqn.2001-04.com.example:Disk",
        ],
    );
    agree::<iscsi::ChapUser>(
        "CHAP user",
        |s| iscsi::ChapUser::parse("user", s).is_ok(),
        &["user.1", "U_2", ".x", "-x", "a b", "", &"u".repeat(65)],
    );
}

#[test]
fn result_schemas_accept_error_codes_of_newer_agents() {
    // A console must accept codes it does not know: the schema may not refuse them either.
    let v = validator("sys.reconcile", Part::Result);
    let newer = serde_json::json!({"nfs": {"ok": false,
        "error": {"code": "SOMETHING_NEW", "message": "m", "retryable": false}}});
    assert!(v.is_valid(&newer));
    let bad = serde_json::json!({"nfs": {"ok": false,
        "error": {"code": "lower case", "message": "m", "retryable": false}}});
    assert!(!v.is_valid(&bad));
}
