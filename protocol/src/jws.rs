//! Signed requests: JWS compact serialization (RFC 7515) with EdDSA over Ed25519 (RFC 8037).
//!
//! A signed request is `BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature)`,
//! base64url without padding, where the payload is the request JSON of protocol v1 and the
//! header is `{"alg":"EdDSA","kid":KEY_ID,"aud":CLIENT_ID}`. The signature is Ed25519 over the
//! ASCII bytes of `header_segment "." payload_segment`, exactly as they travel.
//!
//! Everything here is pure: no I/O, no clock. The checks are strict on purpose: one algorithm
//! only (`alg` must be exactly `"EdDSA"`), canonical base64url only, a header with known
//! parameters only (`crit` and anything else unknown are refused), bounded sizes throughout.
//! `docs/protocol.md` ("Signed commands") is the same contract in prose.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

pub use ed25519_dalek;

/// The one accepted `alg`.
pub const ALG: &str = "EdDSA";

/// Longest key id, in characters (`[A-Za-z0-9_.:-]`).
pub const MAX_KEY_ID_LEN: usize = 64;

/// Longest header segment (base64url characters). A valid header is well under 300.
pub const MAX_HEADER_SEGMENT: usize = 1024;

/// Length of a base64url Ed25519 signature segment (64 bytes).
pub const SIGNATURE_SEGMENT_LEN: usize = 86;

/// Longest `typ` accepted (it is informational only).
const MAX_TYP_LEN: usize = 32;

/// Longest `aud` (a client ID is at most 64 characters; leave room for a clear error).
const MAX_AUD_LEN: usize = 128;

/// Why a signed request was refused. Messages never echo the input beyond validated values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwsError {
    #[error("signed request is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a JWS compact serialization: {0}")]
    Format(&'static str),
    #[error("JWS {segment} is not canonical base64url without padding")]
    Base64 { segment: &'static str },
    #[error("JWS header is not valid: {0}")]
    Header(String),
    #[error("JWS alg must be \"EdDSA\"; got {0}")]
    Algorithm(String),
    #[error("JWS header has \"crit\"; no extension is supported")]
    Critical,
    #[error("key id is not valid: {0}")]
    KeyId(String),
    #[error("signature does not verify with key {kid}")]
    BadSignature { kid: String },
}

/// Checks a key id: 1–64 characters of `[A-Za-z0-9_.:-]`.
pub fn check_key_id(kid: &str) -> Result<(), JwsError> {
    if kid.is_empty() {
        return Err(JwsError::KeyId("empty".into()));
    }
    if kid.len() > MAX_KEY_ID_LEN {
        return Err(JwsError::KeyId(format!(
            "{} characters; the limit is {MAX_KEY_ID_LEN}",
            kid.len()
        )));
    }
    if !kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(JwsError::KeyId(
            "only A-Z a-z 0-9 _ . : - are allowed".into(),
        ));
    }
    Ok(())
}

/// The protected header of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which trusted key signed it.
    pub kid: String,
    /// The client ID (`{group_id}@@@{instance_id}`) of the one gateway the request is for.
    pub aud: Option<String>,
}

/// The header as it may appear on the wire: exactly these parameters, each at most once.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeader {
    alg: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<serde_json::Value>,
}

/// Whether a payload has the shape of a JWS compact serialization (base64url characters and
/// exactly two dots), as opposed to a plain JSON request. Cheap; decides nothing else.
pub fn looks_like_jws(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().filter(|&&b| b == b'.').count() == 2
        && bytes.iter().all(|&b| is_b64url(b) || b == b'.')
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn decode_segment(seg: &[u8], segment: &'static str) -> Result<Vec<u8>, JwsError> {
    if !seg.iter().all(|&b| is_b64url(b)) {
        return Err(JwsError::Base64 { segment });
    }
    URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| JwsError::Base64 { segment })
}

/// The decoded second segment of something shaped like a JWS, when it can be decoded within
/// the cap: never trusted, only read to find where a refusal may be sent.
pub fn unverified_payload(jws: &[u8], max_payload: usize) -> Option<Vec<u8>> {
    let mut parts = jws.split(|&b| b == b'.');
    let (_header, p) = (parts.next()?, parts.next()?);
    if p.len() > max_payload.div_ceil(3) * 4 {
        return None;
    }
    decode_segment(p, "payload").ok()
}

/// A JWS split into its parts, the payload decoded, nothing verified yet.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    signing_input: &'a [u8],
    header_json: Vec<u8>,
    /// The decoded payload: a request JSON object if the sender followed the protocol. Not
    /// authenticated until [`Compact::verify`] succeeds.
    pub payload: Vec<u8>,
    signature: Vec<u8>,
}

/// Splits `jws` into its three segments and decodes them. `max_payload` bounds the decoded
/// payload; the whole input is bounded by what that payload can encode to.
pub fn split(jws: &[u8], max_payload: usize) -> Result<Compact<'_>, JwsError> {
    let limit = MAX_HEADER_SEGMENT + max_payload.div_ceil(3) * 4 + SIGNATURE_SEGMENT_LEN + 2;
    if jws.len() > limit {
        return Err(JwsError::TooLarge {
            size: jws.len(),
            limit,
        });
    }
    let mut parts = jws.splitn(4, |&b| b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Format("expected three dot-separated segments"));
    };
    if h.is_empty() || s.is_empty() {
        return Err(JwsError::Format("empty header or signature segment"));
    }
    if h.len() > MAX_HEADER_SEGMENT {
        return Err(JwsError::Format("header segment is too long"));
    }
    if s.len() != SIGNATURE_SEGMENT_LEN {
        return Err(JwsError::Format(
            "signature segment must be 86 characters (64 bytes)",
        ));
    }
    let header_json = decode_segment(h, "header")?;
    let payload = decode_segment(p, "payload")?;
    if payload.len() > max_payload {
        return Err(JwsError::TooLarge {
            size: payload.len(),
            limit: max_payload,
        });
    }
    let signature = decode_segment(s, "signature")?;
    Ok(Compact {
        signing_input: &jws[..h.len() + 1 + p.len()],
        header_json,
        payload,
        signature,
    })
}

impl Compact<'_> {
    /// Parses and checks the protected header: a JSON object with `alg` exactly `"EdDSA"`, a
    /// valid `kid`, optional `aud` and `typ` (strings), and nothing else (`crit` refused).
    pub fn header(&self) -> Result<Header, JwsError> {
        let v: serde_json::Value = serde_json::from_slice(&self.header_json)
            .map_err(|_| JwsError::Header("not JSON".into()))?;
        let Some(obj) = v.as_object() else {
            return Err(JwsError::Header("not a JSON object".into()));
        };
        if obj.contains_key("crit") {
            return Err(JwsError::Critical);
        }
        // Typed pass: refuses duplicated and unknown parameters.
        let w: WireHeader = serde_json::from_slice(&self.header_json).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with("duplicate field") {
                JwsError::Header("a parameter is given twice".into())
            } else if msg.starts_with("unknown field") {
                JwsError::Header(
                    "unsupported parameter (only alg, kid, aud and typ are accepted)".into(),
                )
            } else {
                JwsError::Header("malformed".into())
            }
        })?;
        match &w.alg {
            serde_json::Value::String(a) if a == ALG => {}
            serde_json::Value::String(a) => {
                let shown: String = a.chars().take(16).collect();
                return Err(JwsError::Algorithm(format!("{shown:?}")));
            }
            _ => return Err(JwsError::Algorithm("a non-string".into())),
        }
        let kid = match &w.kid {
            Some(serde_json::Value::String(k)) => {
                check_key_id(k)?;
                k.clone()
            }
            Some(_) => return Err(JwsError::KeyId("kid must be a string".into())),
            None => return Err(JwsError::KeyId("kid is missing".into())),
        };
        let aud = match &w.aud {
            None => None,
            Some(serde_json::Value::String(a)) if a.len() <= MAX_AUD_LEN => Some(a.clone()),
            Some(_) => {
                return Err(JwsError::Header(format!(
                    "aud must be a string of at most {MAX_AUD_LEN} bytes"
                )))
            }
        };
        match &w.typ {
            None => {}
            Some(serde_json::Value::String(t)) if t.len() <= MAX_TYP_LEN => {}
            Some(_) => {
                return Err(JwsError::Header(format!(
                    "typ must be a string of at most {MAX_TYP_LEN} bytes"
                )))
            }
        }
        Ok(Header { kid, aud })
    }

    /// Checks the Ed25519 signature over `header_segment.payload_segment` (strict verification:
    /// non-canonical and small-order encodings are refused).
    pub fn verify(&self, kid: &str, key: &VerifyingKey) -> Result<(), JwsError> {
        let bad = || JwsError::BadSignature { kid: kid.into() };
        let sig = Signature::from_slice(&self.signature).map_err(|_| bad())?;
        key.verify_strict(self.signing_input, &sig)
            .map_err(|_| bad())
    }
}

/// A verified request: who signed it and the authenticated payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Splits, checks the header, looks the key up by `kid` and verifies the signature.
/// `key_for` returns `None` for a key id that is not trusted.
pub fn verify<'k>(
    jws: &[u8],
    max_payload: usize,
    key_for: impl FnOnce(&str) -> Option<&'k VerifyingKey>,
) -> Result<Verified, JwsError> {
    let c = split(jws, max_payload)?;
    let header = c.header()?;
    let key = key_for(&header.kid)
        .ok_or_else(|| JwsError::KeyId(format!("{} is not a trusted key", header.kid)))?;
    c.verify(&header.kid, key)?;
    Ok(Verified {
        header,
        payload: c.payload,
    })
}

/// Signs `payload` (a request JSON) for the gateway `aud`, giving the compact serialization.
pub fn sign(payload: &[u8], kid: &str, aud: Option<&str>, key: &SigningKey) -> String {
    let header = WireHeader {
        alg: ALG.into(),
        kid: Some(kid.into()),
        aud: aud.map(Into::into),
        typ: None,
    };
    let header = serde_json::to_vec(&header).expect("a header always serializes");
    let mut out = URL_SAFE_NO_PAD.encode(header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let sig = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut out);
    out
}

/// Why a key file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct KeyFileError(String);

/// Longest key file read, in bytes: a PEM key is about 120.
pub const MAX_KEY_FILE: usize = 4096;

fn check_size(text: &str) -> Result<(), KeyFileError> {
    if text.len() > MAX_KEY_FILE {
        return Err(KeyFileError(format!(
            "{} bytes; a key file is at most {MAX_KEY_FILE}",
            text.len()
        )));
    }
    Ok(())
}

/// The PEM block labelled `label` in `text` (from its BEGIN line to its END line), if any.
fn pem_block<'a>(text: &'a str, label: &str) -> Result<Option<&'a str>, KeyFileError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        return Ok(None);
    };
    let Some(stop) = text[start..].find(&end) else {
        return Err(KeyFileError(format!("PEM block has no {end} line")));
    };
    Ok(Some(&text[start..start + stop + end.len()]))
}

/// 32 raw key bytes from one line of base64 (standard or url-safe, padding optional), wiped
/// from memory when dropped.
fn raw_key_line(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let line = Zeroizing::new(
        text.trim()
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_"),
    );
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(line.as_bytes()).map_err(|_| {
        KeyFileError("neither a PEM block nor one line of base64 (32 raw key bytes)".into())
    })?);
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        KeyFileError(format!(
            "one line of base64 must hold 32 key bytes, got {}",
            bytes.len()
        ))
    })?;
    Ok(Zeroizing::new(raw))
}

/// Reads an Ed25519 public key: PEM `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo, what
/// `openssl pkey -pubout` writes), or one line of base64 (standard or url-safe, padding
/// optional) holding the 32 raw key bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyFileError> {
    check_size(text)?;
    let key = match pem_block(text, "PUBLIC KEY")? {
        Some(block) => VerifyingKey::from_public_key_pem(block).map_err(|_| {
            KeyFileError("PEM PUBLIC KEY is not an Ed25519 key (OID 1.3.101.112)".into())
        })?,
        None if text.contains("-----BEGIN") => {
            return Err(KeyFileError(
                "PEM block is not a PUBLIC KEY (a private key where a public key belongs?)".into(),
            ))
        }
        None => VerifyingKey::from_bytes(&*raw_key_line(text)?)
            .map_err(|_| KeyFileError("not a valid Ed25519 public key".into()))?,
    };
    if key.is_weak() {
        return Err(KeyFileError(
            "a weak (small-order) Ed25519 public key".into(),
        ));
    }
    Ok(key)
}

/// Reads an Ed25519 private key: PEM `-----BEGIN PRIVATE KEY-----` (PKCS#8, what
/// `openssl genpkey -algorithm ed25519` writes), or one line of base64 holding the 32-byte seed.
/// PKCS#8 and PEM are decoded by the RustCrypto `pkcs8` crate through ed25519-dalek, which
/// wipes the decoded key material; the signing key wipes itself when dropped.
pub fn parse_private_key(text: &str) -> Result<SigningKey, KeyFileError> {
    check_size(text)?;
    match pem_block(text, "PRIVATE KEY")? {
        Some(block) => SigningKey::from_pkcs8_pem(block)
            .map_err(|_| KeyFileError("PEM PRIVATE KEY is not an Ed25519 PKCS#8 key".into())),
        None if text.contains("-----BEGIN") => {
            Err(KeyFileError("PEM block is not a PRIVATE KEY".into()))
        }
        None => Ok(SigningKey::from_bytes(&*raw_key_line(text)?)),
    }
}

/// The PEM SubjectPublicKeyInfo form of a public key (readable by openssl and most libraries).
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, KeyFileError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyFileError(format!("cannot encode the public key: {e}")))
}

/// The PEM PKCS#8 form of a private key, wiped from memory when dropped. Version 1 (the seed
/// alone, as `openssl genpkey -algorithm ed25519` writes it), not v2 with the public key
/// appended: what every reader of Ed25519 keys takes.
pub fn private_key_pem(key: &SigningKey) -> Result<Zeroizing<String>, KeyFileError> {
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    v1.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyFileError(format!("cannot encode the private key: {e}")))
}

/// A key id derived from a public key: `ed25519-` and the first 12 bytes of the key in
/// base64url (16 characters). Only a suggestion: any valid key id works.
pub fn suggested_key_id(key: &VerifyingKey) -> String {
    format!("ed25519-{}", URL_SAFE_NO_PAD.encode(&key.as_bytes()[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const MAX: usize = 64 * 1024;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn payload() -> Vec<u8> {
        br#"{"v":1,"id":"s-1","method":"sys.ping","reply_to":"csg-up/c","deadline_ms":1}"#.to_vec()
    }

    fn b64(s: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A JWS with a hand-made header, signed correctly with `k`.
    fn with_header(header: &str, k: &SigningKey) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(&payload()));
        let sig = k.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn check(jws: &str, k: &SigningKey) -> Result<Verified, JwsError> {
        let vk = k.verifying_key();
        verify(jws.as_bytes(), MAX, |kid| (kid == "k1").then_some(&vk))
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let jws = sign(&payload(), "k1", Some("G@@@gw"), &k);
        assert!(looks_like_jws(jws.as_bytes()));
        assert!(!looks_like_jws(&payload()));
        let v = check(&jws, &k).unwrap();
        assert_eq!(v.payload, payload());
        assert_eq!(v.header.kid, "k1");
        assert_eq!(v.header.aud.as_deref(), Some("G@@@gw"));
        // The header is exactly what the docs show.
        let h = jws.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(h).unwrap(),
            br#"{"alg":"EdDSA","kid":"k1","aud":"G@@@gw"}"#
        );
        assert!(!jws.contains('='));
    }

    #[test]
    fn rfc8037_test_vector() {
        // RFC 8037, appendix A.4: the same key and input must give the same signature.
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let k = SigningKey::from_bytes(&d.try_into().unwrap());
        assert_eq!(
            b64(k.verifying_key().as_bytes()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        assert_eq!(
            b64(&k.sign(input.as_bytes()).to_bytes()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn tampering_is_refused() {
        let k = key(1);
        let jws = sign(&payload(), "k1", None, &k);
        let parts: Vec<&str> = jws.split('.').collect();
        // Payload changed (another method), signature kept.
        let other = b64(
            br#"{"v":1,"id":"s-1","method":"sys.reconcile","reply_to":"csg-up/c","deadline_ms":1}"#,
        );
        let t = format!("{}.{other}.{}", parts[0], parts[2]);
        assert!(matches!(check(&t, &k), Err(JwsError::BadSignature { .. })));
        // Header changed (same key id, an added typ), signature kept.
        let h = b64(br#"{"alg":"EdDSA","kid":"k1","typ":"JOSE"}"#);
        let t = format!("{h}.{}.{}", parts[1], parts[2]);
        assert!(matches!(check(&t, &k), Err(JwsError::BadSignature { .. })));
        // Every single character of the signature flipped in turn.
        for i in 0..parts[2].len() {
            let mut s = parts[2].as_bytes().to_vec();
            s[i] = if s[i] == b'A' { b'B' } else { b'A' };
            let t = format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                String::from_utf8(s).unwrap()
            );
            assert!(check(&t, &k).is_err(), "flipped signature char {i}");
        }
        // Signed by another key under the trusted id.
        let t = sign(&payload(), "k1", None, &key(2));
        assert!(matches!(check(&t, &k), Err(JwsError::BadSignature { .. })));
        // Unknown key id.
        let t = sign(&payload(), "k9", None, &k);
        assert!(matches!(check(&t, &k), Err(JwsError::KeyId(_))));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let k = key(1);
        for h in [
            r#"{"alg":"none","kid":"k1"}"#,
            r#"{"alg":"HS256","kid":"k1"}"#,
            r#"{"alg":"ES256","kid":"k1"}"#,
            r#"{"alg":"eddsa","kid":"k1"}"#,
            r#"{"alg":"EdDSA ","kid":"k1"}"#,
            r#"{"alg":"Ed25519","kid":"k1"}"#,
            r#"{"alg":null,"kid":"k1"}"#,
            r#"{"alg":["EdDSA"],"kid":"k1"}"#,
        ] {
            assert!(
                matches!(check(&with_header(h, &k), &k), Err(JwsError::Algorithm(_))),
                "{h}"
            );
        }
        // alg none with an empty signature: not even the right shape.
        let t = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"k1"}"#),
            b64(&payload())
        );
        assert!(check(&t, &k).is_err());
        // HS256 keyed with the public key bytes (the classic confusion) is refused by alg.
        let t = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","kid":"k1"}"#),
            b64(&payload()),
            "A".repeat(43)
        );
        assert!(check(&t, &k).is_err());
    }

    #[test]
    fn strict_headers() {
        let k = key(1);
        for (h, what) in [
            (r#"{"alg":"EdDSA","kid":"k1","crit":["exp"]}"#, "crit"),
            (r#"{"alg":"EdDSA","kid":"k1","b64":false}"#, "unknown"),
            (r#"{"alg":"EdDSA","kid":"k1","jwk":{}}"#, "unknown"),
            (r#"{"alg":"EdDSA","kid":"k1","kid":"k1"}"#, "duplicate"),
            (r#"{"alg":"EdDSA","alg":"EdDSA","kid":"k1"}"#, "duplicate"),
            (r#"{"alg":"EdDSA"}"#, "no kid"),
            (r#"{"alg":"EdDSA","kid":""}"#, "empty kid"),
            (r#"{"alg":"EdDSA","kid":"a b"}"#, "kid charset"),
            (r#"{"alg":"EdDSA","kid":7}"#, "kid type"),
            (r#"{"alg":"EdDSA","kid":"k1","aud":5}"#, "aud type"),
            (r#"["EdDSA"]"#, "not an object"),
            ("not json", "not json"),
        ] {
            assert!(check(&with_header(h, &k), &k).is_err(), "{what}");
        }
        let long = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, "k".repeat(65));
        assert!(matches!(
            check(&with_header(&long, &k), &k),
            Err(JwsError::KeyId(_))
        ));
        // typ is allowed and ignored.
        let ok = with_header(r#"{"alg":"EdDSA","kid":"k1","typ":"JOSE"}"#, &k);
        assert!(check(&ok, &k).is_ok());
    }

    #[test]
    fn bad_shapes_and_base64() {
        let k = key(1);
        let jws = sign(&payload(), "k1", None, &k);
        let parts: Vec<&str> = jws.split('.').collect();
        let bad = [
            String::new(),
            "..".into(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{jws}.x"),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}+.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..85]),
            format!(" {jws}"),
            // A base64url string with non-zero trailing bits is not canonical.
            format!("{}.{}.{}", parts[0], "eyJ", parts[2]),
            format!("{}.{}.{}", parts[0], "e", parts[2]),
        ];
        for b in &bad {
            assert!(check(b, &k).is_err(), "{b:?}");
        }
        assert!(check(&String::from_utf8_lossy(b"\xff.\xfe.\xfd"), &k).is_err());
    }

    #[test]
    fn huge_input_is_refused_before_decoding() {
        let k = key(1);
        let big = vec![b'A'; 10 * 1024 * 1024];
        assert!(matches!(
            verify(&big, MAX, |_| None),
            Err(JwsError::TooLarge { .. })
        ));
        // A payload just over the cap, correctly signed, is still refused.
        let p = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX));
        let jws = sign(p.as_bytes(), "k1", None, &k);
        assert!(matches!(check(&jws, &k), Err(JwsError::TooLarge { .. })));
        // A huge header segment.
        let h = format!(
            r#"{{"alg":"EdDSA","kid":"k1","typ":"{}"}}"#,
            "t".repeat(2000)
        );
        assert!(check(&with_header(&h, &k), &k).is_err());
        // Payload at the cap passes.
        let p = vec![b'x'; MAX];
        assert!(check(&sign(&p, "k1", None, &k), &k).is_ok());
    }

    #[test]
    fn key_files() {
        let k = key(7);
        let vk = k.verifying_key();
        let pub_pem = public_key_pem(&vk).unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(parse_public_key(&pub_pem).unwrap(), vk);
        let priv_pem = private_key_pem(&k).unwrap();
        assert!(priv_pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
        assert_eq!(
            parse_private_key(&priv_pem).unwrap().to_bytes(),
            k.to_bytes()
        );
        // Raw base64 lines, standard and url-safe, padded or not.
        let raw = STANDARD.encode(vk.as_bytes());
        assert_eq!(parse_public_key(&format!("{raw}\n")).unwrap(), vk);
        assert_eq!(
            parse_public_key(&URL_SAFE_NO_PAD.encode(vk.as_bytes())).unwrap(),
            vk
        );
        // An openssl-made key (openssl genpkey -algorithm ed25519; openssl pkey -pubout).
        let openssl_priv = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILGIPx8D7GZF7xiZRkanD2gxwkRiDqP5h9Po3LNe5YtR\n-----END PRIVATE KEY-----\n";
        let openssl_pub = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEv+LN0HarIWX/xU9C3DnI5WDClNRuyDmDK5cj4S07XM=\n-----END PUBLIC KEY-----\n";
        let sk = parse_private_key(openssl_priv).unwrap();
        assert_eq!(parse_public_key(openssl_pub).unwrap(), sk.verifying_key());
        // Wrong things.
        assert!(parse_public_key(&priv_pem).is_err());
        assert!(parse_private_key(&pub_pem).is_err());
        assert!(parse_public_key("").is_err());
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key(&"A".repeat(5000)).is_err());
        assert!(parse_public_key("-----BEGIN PUBLIC KEY-----\nMCow\n").is_err());
        // An RSA/EC SPKI is not Ed25519.
        let ec = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
        assert!(parse_public_key(ec).is_err());
        // A small-order point is refused.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(parse_public_key(&STANDARD.encode(weak)).is_err());
        let id = suggested_key_id(&vk);
        assert!(check_key_id(&id).is_ok() && id.len() == 24, "{id}");
    }
}

#[cfg(test)]
mod docs_example {
    use super::*;

    /// The worked example of docs/protocol.md, section 12 (also what `openssl pkeyutl -sign
    /// -rawin` gives for the same key and input): the docs and the code cannot drift apart.
    #[test]
    fn docs_protocol_example() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let payload = br#"{"v":1,"id":"c1-0001","method":"sys.ping","params":{},"reply_to":"csg-up/console-1","deadline_ms":1764133200000}"#;
        assert_eq!(
            private_key_pem(&k).unwrap().as_str(),
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(
            public_key_pem(&k.verifying_key()).unwrap(),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAiojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=\n-----END PUBLIC KEY-----\n"
        );
        let docs = include_str!("../../docs/protocol.md");
        let jws = sign(payload, "ops-2026", Some("GID_csg@@@gw-001"), &k);
        assert!(docs.contains(&jws), "docs/protocol.md must show {jws}");
        let vk = k.verifying_key();
        assert!(verify(jws.as_bytes(), 65536, |_| Some(&vk)).is_ok());
    }
}
