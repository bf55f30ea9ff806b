//! Property tier for the JWS verifier of signed requests: it never panics, whatever it is fed;
//! a token it made verifies and gives back exactly what was signed; any change to a valid
//! token, of any byte, is refused; only the one header shape is accepted; and refusals are
//! cheap and never echo the input.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

use csg_protocol::jws::ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use csg_protocol::jws::{self, JwsError};

mod common;
use common::alloc_meter;

const MAX: usize = csg_protocol::DEFAULT_MAX_PAYLOAD;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

fn key_rule(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fn signing_key() -> impl Strategy<Value = SigningKey> {
    any::<[u8; 32]>().prop_map(|s| SigningKey::from_bytes(&s))
}

fn other_key() -> &'static SigningKey {
    static K: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    K.get_or_init(|| SigningKey::from_bytes(&[0x5a; 32]))
}

fn kid() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,64}"
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        Just(br#"{"v":1,"id":"s-1","method":"sys.ping","reply_to":"csg-up/c"}"#.to_vec()),
    ]
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A token over any header JSON, signed for real: only the header rules can refuse it.
fn signed_with_header(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

fn verify_with(token: &[u8], kid: &str, key: &VerifyingKey) -> Result<jws::Verified, JwsError> {
    jws::verify(token, MAX, |k| (k == kid).then_some(key))
}

/// The header rule, written from the contract: an object with exactly the parameters `alg`
/// (the string `EdDSA`), `kid` (a valid key id), optional `aud` (a string of at most 128
/// bytes) and optional `typ` (a string of at most 32 bytes); `null` counts as absent for the
/// optional ones.
fn header_rule(h: &Map<String, Value>) -> bool {
    let opt_str = |k: &str, max: usize| match h.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.len() <= max,
        Some(_) => false,
    };
    h.keys()
        .all(|k| ["alg", "kid", "aud", "typ"].contains(&k.as_str()))
        && h.get("alg") == Some(&json!("EdDSA"))
        && matches!(h.get("kid"), Some(Value::String(k)) if key_rule(k))
        && opt_str("aud", 128)
        && opt_str("typ", 32)
}

fn header_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(Value::Null),
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<bool>().prop_map(Value::from),
        8 => "[ -~]{0,40}".prop_map(Value::from),
        2 => select(&["EdDSA", "none", "HS256", "RS256", "eddsa", "EdDSA ", "ES256"][..]).prop_map(Value::from),
        2 => "[A-Za-z0-9_.:-]{1,70}".prop_map(Value::from),
        1 => Just(json!(["EdDSA"])),
        1 => Just(json!({"alg": "EdDSA"})),
    ]
}

fn header_map() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![6 => Just(Some(json!("EdDSA"))), 1 => Just(None), 2 => header_value().prop_map(Some)],
        prop_oneof![6 => kid().prop_map(|k| Some(json!(k))), 1 => Just(None), 2 => header_value().prop_map(Some)],
        prop_oneof![3 => Just(None), 3 => "[A-Za-z0-9_@.-]{1,130}".prop_map(|a| Some(json!(a))), 1 => header_value().prop_map(Some)],
        prop_oneof![4 => Just(None), 2 => "[A-Za-z/+.-]{0,34}".prop_map(|t| Some(json!(t))), 1 => header_value().prop_map(Some)],
        btree_map(
            prop_oneof![select(&["crit", "jwk", "jku", "x5u", "x5c", "b64", "zip", "enc", "cty"][..]).prop_map(String::from), "[a-z]{1,6}"],
            header_value(),
            0..2,
        ),
        any::<bool>(),
    )
        .prop_map(|(alg, kid, aud, typ, extra, with_extra)| {
            let mut m = Map::new();
            for (k, v) in [("alg", alg), ("kid", kid), ("aud", aud), ("typ", typ)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if with_extra {
                for (k, v) in extra {
                    m.entry(k).or_insert(v);
                }
            }
            m
        })
}

// Ed25519 verification costs ~10 ms in a debug build: the properties that verify a valid
// signature on every case run fewer cases; the fuzz target runs them at full speed.
proptest! {
    #![proptest_config(config(48))]

    /// Whatever it was signed with, a token made by `sign` verifies with the same key and
    /// gives back exactly the payload and header that were signed.
    #[test]
    fn sign_verify_round_trip(
        key in signing_key(),
        kid in kid(),
        aud in proptest::option::of("[A-Za-z0-9_.:-]{1,30}@@@[A-Za-z0-9_.:-]{1,30}"),
        payload in payload(),
    ) {
        let token = jws::sign(&payload, &kid, aud.as_deref(), &key);
        prop_assert!(jws::looks_like_jws(token.as_bytes()));
        let v = verify_with(token.as_bytes(), &kid, &key.verifying_key()).unwrap();
        prop_assert_eq!(&v.payload, &payload);
        prop_assert_eq!(&v.header.kid, &kid);
        prop_assert_eq!(v.header.aud, aud);
        prop_assert_eq!(jws::unverified_payload(token.as_bytes(), MAX), Some(payload.clone()));
        // Another key, or no trusted key for the kid, is refused.
        let other = other_key().verifying_key();
        if other != key.verifying_key() {
            let wrong = verify_with(token.as_bytes(), &kid, &other);
            prop_assert!(matches!(wrong, Err(JwsError::BadSignature { .. })), "{:?}", wrong);
        }
        prop_assert!(matches!(
            jws::verify(token.as_bytes(), MAX, |_| None),
            Err(JwsError::KeyId(_))
        ));
    }

}

proptest! {
    #![proptest_config(config(256))]

    /// Any single change to a valid token (a byte replaced, inserted or removed, the token cut
    /// or extended) is refused: base64 is canonical, so no two spellings decode alike, and the
    /// signature covers every byte of the header and payload segments.
    #[test]
    fn any_mutation_of_a_valid_token_is_refused(
        key in signing_key(),
        kid in kid(),
        payload in payload(),
        at in any::<Index>(),
        byte in any::<u8>(),
        how in 0u8..5,
    ) {
        let token = jws::sign(&payload, &kid, Some("GID_csg@@@gw-1"), &key).into_bytes();
        let i = at.index(token.len());
        let mut t = token.clone();
        match how {
            0 => {
                if t[i] == byte {
                    return Ok(());
                }
                t[i] = byte;
            }
            1 => t.insert(i, byte),
            2 => {
                t.remove(i);
            }
            3 => t.truncate(i),
            _ => t.push(byte),
        }
        let r = verify_with(&t, &kid, &key.verifying_key());
        prop_assert!(r.is_err(), "mutation {} at {} accepted", how, i);
    }

}

proptest! {
    #![proptest_config(config(160))]

    /// With a real signature, only a header that follows the rule is accepted: `alg` exactly
    /// `EdDSA` (never `none`), a valid `kid`, no `crit` and no other parameter.
    #[test]
    fn only_the_one_header_shape_is_accepted(key in signing_key(), h in header_map(), payload in payload()) {
        let header = serde_json::to_vec(&h).unwrap();
        let token = signed_with_header(&header, &payload, &key);
        let kid = h.get("kid").and_then(Value::as_str).unwrap_or("").to_string();
        let vk = key.verifying_key();
        let r = jws::verify(token.as_bytes(), MAX, |_| Some(&vk));
        prop_assert_eq!(r.is_ok(), header_rule(&h), "{:?} gave {:?}", h, r);
        match r {
            Ok(v) => {
                prop_assert_eq!(v.header.kid, kid);
                prop_assert_eq!(v.payload, payload);
            }
            Err(e) => prop_assert!(e.to_string().len() < 256, "{}", e),
        }
    }

}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary input never panics, and a refusal is short whatever the input held.
    #[test]
    fn verify_never_panics(
        input in prop_oneof![
            vec(any::<u8>(), 0..400),
            // Shaped like a token: base64url segments and dots.
            vec(prop_oneof![8 => "[A-Za-z0-9_-]{0,90}", 1 => Just(".".to_string()), 1 => "[=+/ \n.]"], 0..8)
                .prop_map(|p| p.concat().into_bytes()),
            // Three decodable segments with arbitrary content.
            (vec(any::<u8>(), 0..200), vec(any::<u8>(), 0..200), vec(any::<u8>(), 60..68))
                .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(&h), b64(&p), b64(&s)).into_bytes()),
        ],
        max in prop_oneof![Just(MAX), 0usize..300],
    ) {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = jws::looks_like_jws(&input);
        let _ = jws::unverified_payload(&input, max);
        if let Ok(c) = jws::split(&input, max) {
            prop_assert!(c.payload.len() <= max);
            let _ = c.header();
        }
        match jws::verify(&input, max, |_| Some(&key)) {
            Ok(v) => prop_assert!(false, "a random token verified: {:?}", v),
            Err(e) => prop_assert!(e.to_string().len() < 256, "{}", e),
        }
    }

    /// A refusal costs memory in proportion to what was sent, never more (the size check comes
    /// before any decoding).
    #[test]
    fn verify_memory_is_bounded(n in 0usize..400_000, fill in select(&[b'A', b'.', b'x'][..])) {
        let input = vec![fill; n];
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let (r, peak) = alloc_meter::peak(|| jws::verify(&input, MAX, |_| Some(&key)));
        prop_assert!(r.is_err());
        prop_assert!(peak <= 2 * n.min(MAX * 2) + 4096, "{} bytes for {}", peak, n);
    }

    #[test]
    fn key_files_round_trip_and_never_panic(seed in any::<[u8; 32]>(), junk in "[ -~\n]{0,200}", at in any::<Index>()) {
        let sk = SigningKey::from_bytes(&seed);
        let vk = sk.verifying_key();
        prop_assert_eq!(jws::parse_public_key(&jws::public_key_pem(&vk).unwrap()).unwrap(), vk);
        prop_assert_eq!(jws::parse_private_key(&jws::private_key_pem(&sk).unwrap()).unwrap().to_bytes(), seed);
        prop_assert_eq!(jws::parse_public_key(&b64(vk.as_bytes())).unwrap(), vk);
        let _ = jws::parse_public_key(&junk);
        let _ = jws::parse_private_key(&junk);
        // A PEM with junk spliced in never panics either.
        let pem = jws::public_key_pem(&vk).unwrap();
        let mut i = at.index(pem.len() + 1);
        while !pem.is_char_boundary(i) {
            i -= 1;
        }
        let spliced = format!("{}{junk}{}", &pem[..i], &pem[i..]);
        let _ = jws::parse_public_key(&spliced);
        let _ = jws::parse_private_key(&spliced);
        let _ = jws::check_key_id(&junk);
        prop_assert_eq!(jws::check_key_id(&junk).is_ok(), key_rule(&junk));
    }
}

/// The classic attacks, each with a real signature where one can be made.
#[test]
fn known_attacks_are_refused() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let vk = key.verifying_key();
    let p = br#"{"v":1,"id":"a","method":"sys.ping"}"#;
    for header in [
        json!({"alg": "none", "kid": "k"}),
        json!({"alg": "HS256", "kid": "k"}),
        json!({"alg": "EdDSA", "kid": "k", "crit": ["b64"]}),
        json!({"alg": "EdDSA", "kid": "k", "b64": false}),
        json!({"alg": "EdDSA", "kid": "k", "jwk": {"kty": "OKP"}}),
        json!({"alg": "EdDSA"}),
        json!({"alg": "EdDSA", "kid": "../k"}),
    ] {
        let t = signed_with_header(&serde_json::to_vec(&header).unwrap(), p, &key);
        assert!(
            jws::verify(t.as_bytes(), MAX, |_| Some(&vk)).is_err(),
            "{header}"
        );
    }
    // Unsigned (`alg: none` with an empty signature), and a duplicated parameter.
    let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","kid":"k"}"#), b64(p));
    assert!(jws::verify(unsigned.as_bytes(), MAX, |_| Some(&vk)).is_err());
    let dup = br#"{"alg":"EdDSA","kid":"k","kid":"other"}"#;
    let t = signed_with_header(dup, p, &key);
    assert!(jws::verify(t.as_bytes(), MAX, |_| Some(&vk)).is_err());
    // A signature of all zeroes, and the identity point as a public key.
    let t = jws::sign(p, "k", None, &key);
    let (input, _) = t.rsplit_once('.').unwrap();
    let zero = format!("{input}.{}", b64(&[0; 64]));
    assert!(jws::verify(zero.as_bytes(), MAX, |_| Some(&vk)).is_err());
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(jws::parse_public_key(&b64(&identity)).is_err());
}
