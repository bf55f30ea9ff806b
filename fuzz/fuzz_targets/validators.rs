//! The shared validators: `check_path` and `check_text` accept exactly their reference rules;
//! a `Cidr` that parses has no host bits set, is made of address characters only, and prints
//! back to text that parses to the same value.
#![no_main]

use std::net::IpAddr;

use csg_fuzz::{path_rule, text_rule};
use csg_protocol::validate::{check_path, check_text, Cidr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(check_path("path", s).is_ok(), path_rule(s), "{s:?}");
    let max = data.first().map_or(0, |&b| b as usize);
    assert_eq!(check_text("text", s, max).is_ok(), text_rule(s, max));
    if let Ok(c) = Cidr::parse(s) {
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b".:/".contains(&b)));
        assert_eq!(Cidr::parse(&c.to_string()).unwrap(), c);
        let clear = match c.addr {
            IpAddr::V4(a) => c.prefix == 32 || u32::from(a) & (u32::MAX >> c.prefix) == 0,
            IpAddr::V6(a) => c.prefix == 128 || u128::from(a) & (u128::MAX >> c.prefix) == 0,
        };
        assert!(clear);
    }
});
