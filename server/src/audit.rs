//! The audit log: every change made through the console and every refused request, stored
//! (`GET /v1/audit`) and written as one JSON line to the log under the target
//! `csg_consoled::audit`, for an operator to ship elsewhere.

use serde_json::{Map, Value};
use tracing::{error, info};

use crate::store::{AuditEvent, Store};

/// The tracing target of the audit lines.
pub const TARGET: &str = "csg_consoled::audit";

/// Keys whose values are secrets wherever they appear in params: SMB passwords
/// (`smb.user.set`) and CHAP secrets (`iscsi.target.*` `chap.secret`, `chap.mutual_secret`),
/// the values the protocol marks as never logged or echoed (protocol.md, "Secrets").
const SECRET_KEYS: &[&str] = &["password", "secret", "mutual_secret"];

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// `params` with every secret value replaced by `<redacted>`, at any depth.
pub fn redact(params: &Value) -> Value {
    match params {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if SECRET_KEYS.contains(&k.as_str()) && !v.is_null() {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Records one event: one JSON line in the log, then a row in the store. The line is written
/// first and whatever the store says, so an event is never lost to a store outage unnoticed;
/// a failed store write is logged as an error and returned.
pub async fn record(store: &dyn Store, event: &AuditEvent) -> Result<(), crate::store::StoreError> {
    let line = serde_json::to_string(event).unwrap_or_default();
    info!(target: TARGET, event = %line, "audit");
    let stored = store.record_audit(event).await;
    if let Err(e) = &stored {
        error!(target: TARGET, error = %e, event = %line, "audit event not stored");
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_nothing_else() {
        let p = json!({"username": "alice", "password": "Secret123456",
                       "chap": {"username": "u", "secret": "abcdefabcdef12", "mutual_secret": "x"},
                       "luns": [{"path": "/srv/a", "secret": "s"}], "name": "vol1"});
        let r = redact(&p);
        assert_eq!(r["password"], REDACTED);
        assert_eq!(r["chap"]["secret"], REDACTED);
        assert_eq!(r["chap"]["mutual_secret"], REDACTED);
        assert_eq!(r["luns"][0]["secret"], REDACTED);
        assert_eq!(r["username"], "alice");
        assert_eq!(r["chap"]["username"], "u");
        assert_eq!(r["name"], "vol1");
        let text = r.to_string();
        for s in ["Secret123456", "abcdefabcdef12"] {
            assert!(!text.contains(s), "{text}");
        }
    }
}
