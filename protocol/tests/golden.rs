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

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use csg_protocol::methods::{Method, MethodResult, ALL};
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
