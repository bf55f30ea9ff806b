//! Signed commands: who sent a request, and whether that sender may run it.
//!
//! [`Policy::open`] turns an MQTT payload into the request bytes to decode and the sender's
//! identity: a plain JSON request is `unsigned`; a JWS (see `csg_protocol::jws`) is verified
//! against the trusted keys and must be addressed to this gateway. [`Policy::authorize`] then
//! applies the rules that need the decoded request: signing required, the key's allowed
//! method patterns, and the signed-request deadline window.
//!
//! Choices (documented in `docs/protocol.md`, "Signed commands"):
//! * a signed request is always verified, even when signing is not required: a bad signature
//!   or an unknown key is refused, never treated as unsigned;
//! * a signed request must carry `deadline_ms`, at most `max_command_validity` (+ the clock
//!   skew allowance) ahead of the agent's clock, and name this gateway in `aud`;
//! * an unsigned request, where allowed, may call every method.

use std::collections::BTreeMap;
use std::time::Duration;

use csg_protocol::jws::{self, JwsError};
use csg_protocol::Request;

use crate::config::security::{SecuritySettings, TrustedKey};

/// The key id written for unsigned requests in logs and the audit line.
pub const UNSIGNED: &str = "unsigned";

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    Unsigned,
    /// Signed with the trusted key of this id (signature verified).
    Key(String),
}

impl Sender {
    pub fn key_id(&self) -> &str {
        match self {
            Sender::Unsigned => UNSIGNED,
            Sender::Key(k) => k,
        }
    }
}

/// What [`Policy::open`] made of a payload.
#[derive(Debug)]
pub enum Opened {
    /// A plain (JSON) payload: decode it as it is.
    Plain,
    /// A verified JWS: decode `payload`.
    Signed { kid: String, payload: Vec<u8> },
    /// A JWS that is not acceptable. `payload` is the unverified payload when it could be
    /// decoded, only to find where to say so.
    Refused {
        reason: String,
        payload: Option<Vec<u8>>,
    },
}

/// The signed-command rules of one configuration.
#[derive(Debug, Default)]
pub struct Policy {
    require_signed: bool,
    keys: BTreeMap<String, TrustedKey>,
    max_validity_ms: u64,
    skew_ms: u64,
    /// This gateway's client ID: a signed request's `aud`.
    audience: String,
}

impl Policy {
    pub fn new(s: &SecuritySettings, audience: &str) -> Self {
        Self {
            require_signed: s.require_signed_commands,
            keys: s.trusted_keys.clone(),
            max_validity_ms: s.max_command_validity.as_millis() as u64,
            skew_ms: s.clock_skew.as_millis() as u64,
            audience: audience.to_string(),
        }
    }

    /// No signing required, no key trusted: everything unsigned goes, anything signed is refused.
    pub fn open_door() -> Self {
        Self {
            max_validity_ms: 300_000,
            skew_ms: 30_000,
            ..Self::default()
        }
    }

    pub fn requires_signatures(&self) -> bool {
        self.require_signed
    }

    /// Tells a plain request from a JWS and verifies the JWS.
    pub fn open(&self, payload: &[u8], max_payload: usize) -> Opened {
        if !jws::looks_like_jws(payload) {
            return Opened::Plain;
        }
        let c = match jws::split(payload, max_payload) {
            Ok(c) => c,
            Err(e) => {
                return Opened::Refused {
                    reason: e.to_string(),
                    payload: jws::unverified_payload(payload, max_payload),
                }
            }
        };
        let refused = |e: JwsError, c: jws::Compact<'_>| Opened::Refused {
            reason: e.to_string(),
            payload: Some(c.payload),
        };
        let header = match c.header() {
            Ok(h) => h,
            Err(e) => return refused(e, c),
        };
        let Some(key) = self.keys.get(&header.kid) else {
            return refused(
                JwsError::KeyId(format!("{} is not a trusted key", header.kid)),
                c,
            );
        };
        if let Err(e) = c.verify(&header.kid, &key.public_key) {
            return refused(e, c);
        }
        match header.aud.as_deref() {
            Some(a) if a == self.audience => {}
            Some(_) => {
                let reason = format!("signed for another gateway (aud is not {})", self.audience);
                return Opened::Refused {
                    reason,
                    payload: Some(c.payload),
                };
            }
            None => {
                return Opened::Refused {
                    reason: format!(
                        "signed request without \"aud\"; it must name this gateway ({})",
                        self.audience
                    ),
                    payload: Some(c.payload),
                }
            }
        }
        Opened::Signed {
            kid: header.kid,
            payload: c.payload,
        }
    }

    /// The rules that need the decoded request. `Err` is the reason for `UNAUTHORIZED`.
    pub fn authorize(&self, sender: &Sender, req: &Request, now_ms: u64) -> Result<(), String> {
        let kid = match sender {
            Sender::Unsigned if self.require_signed => {
                return Err("this gateway accepts signed commands only".into())
            }
            Sender::Unsigned => return Ok(()),
            Sender::Key(kid) => kid,
        };
        let Some(key) = self.keys.get(kid) else {
            return Err(format!("{kid} is not a trusted key"));
        };
        if !key.allow.iter().any(|p| p.matches(req.method.as_str())) {
            return Err(format!("key {kid} is not allowed to call {}", req.method));
        }
        let Some(deadline) = req.deadline_ms else {
            return Err("a signed request must carry deadline_ms".into());
        };
        let latest = now_ms
            .saturating_add(self.max_validity_ms)
            .saturating_add(self.skew_ms);
        if deadline > latest {
            return Err(format!(
                "deadline_ms is {} s ahead of the gateway's clock; a signed request may be valid for at most {} s (+{} s skew)",
                (deadline - now_ms) / 1000,
                Duration::from_millis(self.max_validity_ms).as_secs(),
                Duration::from_millis(self.skew_ms).as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::jws::ed25519_dalek::SigningKey;
    use csg_protocol::methods::MethodPattern;
    use csg_protocol::{MethodName, RequestId};

    fn pat(s: &str) -> MethodPattern {
        MethodPattern::new(s).unwrap()
    }

    #[test]
    fn patterns() {
        for (p, m, want) in [
            ("*", "nfs.export.create", true),
            ("sys.*", "sys.ping", true),
            ("sys.*", "sys.reconcile", true),
            ("sys.*", "system.ping", false),
            ("sys.*", "nfs.sys.get", false),
            ("*.get", "nfs.export.get", true),
            ("*.get", "sys.get", true),
            ("*.get", "nfs.export.getter", false),
            ("*.list", "smb.user.list", true),
            ("*.list", "smb.user.delete", false),
            ("nfs.export.*", "nfs.export.delete", true),
            ("nfs.export.*", "nfs.exports", false),
            ("sys.ping", "sys.ping", true),
            ("sys.ping", "sys.pings", false),
            ("*.export.*", "nfs.export.update", true),
            ("*.export.*", "smb.share.update", false),
            ("s*s.*", "sys.info", true),
        ] {
            assert_eq!(pat(p).matches(m), want, "{p} vs {m}");
        }
        for bad in [
            "",
            "Sys.*",
            "a..b",
            ".a",
            "a.",
            "sys ping",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(MethodPattern::new(bad).is_err(), "{bad:?}");
        }
        // Pathological patterns stay fast.
        let p = pat(&"*a".repeat(30));
        assert!(!p.matches(&"a".repeat(29)));
    }

    fn policy(require: bool) -> (Policy, SigningKey, SigningKey) {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let ro = SigningKey::from_bytes(&[2; 32]);
        let mut keys = BTreeMap::new();
        keys.insert(
            "admin".to_string(),
            TrustedKey {
                public_key: admin.verifying_key(),
                allow: vec![pat("*")],
                file: "/k/admin.pub".into(),
            },
        );
        keys.insert(
            "ro".to_string(),
            TrustedKey {
                public_key: ro.verifying_key(),
                allow: vec![pat("sys.*"), pat("*.get"), pat("*.list")],
                file: "/k/ro.pub".into(),
            },
        );
        let s = SecuritySettings {
            require_signed_commands: require,
            trusted_keys: keys,
            ..SecuritySettings::default()
        };
        (Policy::new(&s, "G@@@gw"), admin, ro)
    }

    fn req(method: &str, deadline: Option<u64>) -> Request {
        let mut r = Request::new(
            RequestId::new("r1").unwrap(),
            MethodName::new(method).unwrap(),
            Default::default(),
        );
        r.deadline_ms = deadline;
        r
    }

    #[test]
    fn open_and_authorize() {
        let (p, admin, ro) = policy(true);
        let now = 1_000_000_000;
        let body = req("sys.ping", Some(now + 1000)).to_json();
        assert!(matches!(p.open(&body, 65536), Opened::Plain));
        let signed = jws::sign(&body, "admin", Some("G@@@gw"), &admin);
        let Opened::Signed { kid, payload } = p.open(signed.as_bytes(), 65536) else {
            panic!("valid signature refused")
        };
        assert_eq!((kid.as_str(), payload), ("admin", body.clone()));
        // Wrong key under a trusted id, unknown id, wrong or missing audience.
        for bad in [
            jws::sign(&body, "admin", Some("G@@@gw"), &ro),
            jws::sign(&body, "nobody", Some("G@@@gw"), &admin),
            jws::sign(&body, "admin", Some("G@@@other"), &admin),
            jws::sign(&body, "admin", None, &admin),
        ] {
            let Opened::Refused { payload, .. } = p.open(bad.as_bytes(), 65536) else {
                panic!("accepted {bad}")
            };
            assert_eq!(payload.as_deref(), Some(&body[..]));
        }

        let admin_s = Sender::Key("admin".into());
        let ro_s = Sender::Key("ro".into());
        assert!(p
            .authorize(&Sender::Unsigned, &req("sys.ping", None), now)
            .is_err());
        assert!(p
            .authorize(&admin_s, &req("sys.reconcile", Some(now + 300_000)), now)
            .is_ok());
        assert!(p
            .authorize(&admin_s, &req("sys.reconcile", Some(now + 330_000)), now)
            .is_ok());
        assert!(p
            .authorize(&admin_s, &req("sys.reconcile", Some(now + 330_001)), now)
            .is_err());
        assert!(p
            .authorize(&admin_s, &req("sys.reconcile", None), now)
            .is_err());
        // A deadline in the past is for the EXPIRED rule, not this one.
        assert!(p
            .authorize(&admin_s, &req("sys.ping", Some(now - 1)), now)
            .is_ok());
        assert!(p
            .authorize(&ro_s, &req("nfs.export.list", Some(now + 1)), now)
            .is_ok());
        assert!(p
            .authorize(&ro_s, &req("sys.reconcile", Some(now + 1)), now)
            .is_ok());
        let e = p
            .authorize(&ro_s, &req("nfs.export.create", Some(now + 1)), now)
            .unwrap_err();
        assert!(e.contains("not allowed"), "{e}");

        // Without any trusted key, a signed request is refused, never taken as unsigned.
        let signed = jws::sign(&body, "admin", Some("G@@@gw"), &admin);
        assert!(matches!(
            Policy::open_door().open(signed.as_bytes(), 65536),
            Opened::Refused { .. }
        ));
        // A JWS-shaped payload that does not parse still yields its payload for the reply.
        let broken = format!("{}.", &signed[..signed.rfind('.').unwrap()]);
        let Opened::Refused { payload, .. } = p.open(broken.as_bytes(), 65536) else {
            panic!("accepted {broken}")
        };
        assert_eq!(payload.as_deref(), Some(&body[..]));

        let (open, ..) = policy(false);
        assert!(open
            .authorize(&Sender::Unsigned, &req("nfs.export.create", None), now)
            .is_ok());
        assert!(open
            .authorize(&ro_s, &req("nfs.export.create", Some(now + 1)), now)
            .is_err());
    }
}
