//! The request envelope decoder: any payload, under the default cap and under a cap just below
//! its size. Checks every envelope rule on what is accepted, that refusals keep only valid
//! addresses, and that an accepted request re-encodes to the same envelope.
#![no_main]

use csg_fuzz::{id_rule, method_rule};
use csg_protocol::envelope::{DecodeErrorKind, NOREPLY};
use csg_protocol::{decode_request, ReplyTo, DEFAULT_MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], max: usize) {
    match decode_request(data, max) {
        Ok(req) => {
            assert!(data.len() <= max);
            assert!(id_rule(req.id.as_str(), 64));
            assert!(method_rule(req.method.as_str()));
            if let ReplyTo::Topic(t) = &req.reply_to {
                assert_ne!(t, NOREPLY);
            }
            let again = decode_request(&req.to_json(), usize::MAX).expect("re-encoded request");
            assert_eq!(again.id, req.id);
            assert_eq!(again.method, req.method);
            assert_eq!(again.reply_to, req.reply_to);
            assert_eq!(again.deadline_ms, req.deadline_ms);
            assert_eq!(again.params.len(), req.params.len());
        }
        Err(e) => {
            assert_eq!(e.kind == DecodeErrorKind::Oversize, data.len() > max);
            if let Some(id) = &e.id {
                assert!(id_rule(id.as_str(), 64));
            }
            if e.kind == DecodeErrorKind::Malformed {
                assert!(e.id.is_none() && e.reply_to.is_none());
            }
            // Input is quoted only as a short excerpt (at most 80 characters of an id or a
            // method, each up to 10 bytes once escaped): a message stays small whatever came.
            assert!(e.message.len() <= 1200, "{}", e.message.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, DEFAULT_MAX_PAYLOAD);
    check(data, data.len().saturating_sub(1));
});
