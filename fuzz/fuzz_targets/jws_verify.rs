//! The JWS verifier on arbitrary input: `looks_like_jws`, `unverified_payload`, `split`,
//! `Compact::header` and `verify` never panic; what verifies (the seeds are signed with the
//! target's key) is well-formed and fails with any other key; a split payload stays within the
//! cap; refusals are short. The key file parsers get the same input as text.
#![no_main]

use csg_protocol::jws::{self, ed25519_dalek::SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let max = csg_protocol::DEFAULT_MAX_PAYLOAD;
    let _ = jws::looks_like_jws(data);
    if let Some(p) = jws::unverified_payload(data, max) {
        assert!(p.len() <= max + 2);
    }
    if let Ok(c) = jws::split(data, max) {
        assert!(c.payload.len() <= max);
        if let Ok(h) = c.header() {
            assert!(jws::check_key_id(&h.kid).is_ok());
        }
    }
    match jws::verify(data, max, |_| Some(&key)) {
        // Only the seed tokens are signed with this key: what verifies is well-formed.
        Ok(v) => {
            assert!(v.payload.len() <= max);
            assert!(jws::check_key_id(&v.header.kid).is_ok());
            let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
            assert!(jws::verify(data, max, |_| Some(&other)).is_err());
        }
        Err(e) => assert!(e.to_string().len() < 256),
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = jws::parse_public_key(s);
        let _ = jws::parse_private_key(s);
    }
});
