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

/// Whether `bytes` are JSON in which some object has a key twice (keys compared after
/// unescaping, so `"id"` and `"\u0069d"` are the same key). `None` when they are not JSON at
/// all. Written on serde's visitor API, independently of the decoder's own check.
pub fn has_duplicate_key(bytes: &[u8]) -> Option<bool> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    thread_local! {
        static FOUND: Cell<bool> = const { Cell::new(false) };
    }

    struct Any;
    impl<'de> Deserialize<'de> for Any {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(AnyVisitor)
        }
    }
    struct AnyVisitor;
    impl<'de> Visitor<'de> for AnyVisitor {
        type Value = Any;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_str<E>(self, _: &str) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_unit<E>(self) -> Result<Any, E> {
            Ok(Any)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
            while a.next_element::<Any>()?.is_some() {}
            Ok(Any)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                if !keys.insert(k) {
                    FOUND.with(|f| f.set(true));
                }
                a.next_value::<Any>()?;
            }
            Ok(Any)
        }
    }

    FOUND.with(|f| f.set(false));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let ok = Any::deserialize(&mut de).and_then(|_| de.end()).is_ok();
    ok.then(|| FOUND.with(Cell::get))
}
