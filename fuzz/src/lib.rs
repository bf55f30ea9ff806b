//! Reference rules shared by the fuzz targets, written from the documented contract (not from
//! the implementation), so that a target can check that what is accepted is exactly right.

use serde_json::{Map, Value};

/// `[A-Za-z0-9_.:-]{1,limit}`: group, instance and request ids.
pub fn id_rule(s: &str, limit: usize) -> bool {
    !s.is_empty()
        && s.len() <= limit
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// `[a-z0-9_.]{1,64}`: method names.
pub fn method_rule(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b))
}

/// An absolute, normalised path of `[A-Za-z0-9._/-]`, at most 1023 bytes, not `/`.
pub fn path_rule(p: &str) -> bool {
    if p.len() > 1023 || !p.starts_with('/') || p == "/" {
        return false;
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return false;
    }
    p[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('-'))
}

/// Free text: at most `max` characters, no control characters, `%`, `"` or `\`.
pub fn text_rule(s: &str, max: usize) -> bool {
    s.chars().count() <= max
        && !s
            .chars()
            .any(|c| c.is_control() || c == '%' || c == '"' || c == '\\')
}

/// Every byte is ASCII alphanumeric or one of `extra`.
pub fn only(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// The input as a JSON object, if it is one.
pub fn json_object(data: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(data).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}
