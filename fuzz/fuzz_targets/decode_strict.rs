//! Strict decoding: a key given twice anywhere in a request, or a byte that is not UTF-8, is
//! never decoded as a request. The first input byte picks a position; the rest is the payload.
//!
//! - Raw input: when it is not UTF-8, or is JSON with a key twice in any object (checked by an
//!   independent reference, `has_duplicate_key`), the decoder refuses it.
//! - Every request the decoder accepts is then spoiled three ways, each of which must be
//!   refused: a non-UTF-8 byte inserted at the chosen position; `id` given a second time, plain
//!   or escaped (`"\u0069d"`); and a key given twice inside `params`.
#![no_main]

use csg_fuzz::has_duplicate_key;
use csg_protocol::envelope::DecodeErrorKind;
use csg_protocol::{decode_request, DEFAULT_MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

const MAX: usize = DEFAULT_MAX_PAYLOAD;

fn refused(payload: &[u8], why: &str) {
    if let Ok(req) = decode_request(payload, usize::MAX) {
        panic!(
            "{why}: decoded as request {:?} ({} bytes: {:?})",
            req.id.as_str(),
            payload.len(),
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        );
    }
}

/// `payload` with `piece` inserted right after the first `{`.
fn after_brace(payload: &[u8], piece: &[u8]) -> Option<Vec<u8>> {
    let at = payload.iter().position(|b| *b == b'{')? + 1;
    let mut v = payload.to_vec();
    v.splice(at..at, piece.iter().copied());
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pos, body)) = data.split_first() else {
        return;
    };
    let decoded = decode_request(body, MAX);
    if std::str::from_utf8(body).is_err() {
        match &decoded {
            Ok(_) => panic!("a payload that is not UTF-8 was decoded"),
            Err(e) if body.len() <= MAX => assert_eq!(e.kind, DecodeErrorKind::Malformed),
            Err(_) => {}
        }
    }
    if has_duplicate_key(body) == Some(true) {
        assert!(decoded.is_err(), "a payload with a key twice was decoded");
    }
    let Ok(req) = decoded else { return };

    // The request as the agent would re-encode it: plain JSON, one object.
    let canon = req.to_json();
    let at = usize::from(pos) * canon.len() / 255;
    for bad in [0xff_u8, 0xc3, 0x80] {
        let mut v = canon.clone();
        v.insert(at.min(v.len()), bad);
        refused(&v, "a non-UTF-8 byte inserted");
    }
    for dup in [
        &b"\"id\":\"dup-1\","[..],
        br#""\u0069d":"dup-2","#,
        br#""method":"sys.ping","#,
    ] {
        if let Some(v) = after_brace(&canon, dup) {
            refused(&v, "an envelope key given twice");
        }
        // The same on the raw input the fuzzer made, whatever its spacing or key order.
        if let Some(v) = after_brace(body, dup) {
            refused(&v, "an envelope key given twice (raw input)");
        }
    }
    let text = String::from_utf8_lossy(&canon).into_owned();
    if let Some(p) = text.find("\"params\":{") {
        let at = p + "\"params\":{".len();
        let close = if text[at..].starts_with('}') { "" } else { "," };
        let mut v = text.clone();
        v.insert_str(at, &format!("\"k\":1,\"\\u006b\":2{close}"));
        refused(v.as_bytes(), "a params key given twice");
    }
});
