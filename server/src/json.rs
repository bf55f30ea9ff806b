//! JSON documents kept as text. A heartbeat is turned into text once, when it arrives; the
//! fleet keeps that text, the store writes it as it is, and the API embeds it in responses
//! without building a tree of it again.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// One JSON document as compact text, checked when made: serialized from a value, or read
/// and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// The compact text of `value`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(JsonText(Arc::from(serde_json::to_string(value)?)))
    }

    /// Checks that `text` is one JSON document (a scan; no tree is built).
    pub fn parse(text: impl Into<Arc<str>>) -> Result<Self, serde_json::Error> {
        let text: Arc<str> = text.into();
        serde_json::from_str::<&RawValue>(&text)?;
        Ok(JsonText(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document as a tree (for tests and the rare reader that needs one).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Embedded as it is, not as a string.
impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Checked when made, so this holds; a failure is reported, never a panic.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_checked_and_embedded_as_it_is() {
        let t = JsonText::of(&serde_json::json!({"a": [1, 2]})).unwrap();
        assert_eq!(t.as_str(), r#"{"a":[1,2]}"#);
        assert_eq!(
            serde_json::to_string(&serde_json::json!({"x": t})).unwrap(),
            r#"{"x":{"a":[1,2]}}"#
        );
        assert!(JsonText::parse(" {\"b\": null} ").is_ok());
        for bad in ["", "{", "{} {}", "nope", "{\"a\":}"] {
            assert!(JsonText::parse(bad).is_err(), "{bad}");
        }
    }
}
