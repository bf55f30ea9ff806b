//! Sign and verify: the first 32 bytes are a key seed, the next three pick a change, the rest
//! is the payload. The signed token verifies and gives back the payload; the token with the
//! one change (a byte replaced, inserted or removed) is refused.
#![no_main]

use csg_protocol::jws::{self, ed25519_dalek::SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 35 {
        return;
    }
    let (seed, rest) = data.split_at(32);
    let (change, payload) = rest.split_at(3);
    let key = SigningKey::from_bytes(seed.try_into().unwrap());
    let vk = key.verifying_key();
    let token = jws::sign(payload, "k1", Some("GID_csg@@@gw-1"), &key);
    let max = payload.len().max(1);
    let v = jws::verify(token.as_bytes(), max, |k| (k == "k1").then_some(&vk)).unwrap();
    assert_eq!(v.payload, payload);
    assert_eq!(v.header.kid, "k1");
    assert_eq!(v.header.aud.as_deref(), Some("GID_csg@@@gw-1"));

    let mut t = token.into_bytes();
    let i = usize::from(change[0]) * 256 + usize::from(change[1]);
    let i = i % t.len();
    let b = change[2];
    match b % 3 {
        0 if t[i] != b => t[i] = b,
        0 => return,
        1 => t.insert(i, b),
        _ => {
            t.remove(i);
        }
    }
    assert!(jws::verify(&t, max, |_| Some(&vk)).is_err());
});
