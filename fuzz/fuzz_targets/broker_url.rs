//! Broker URLs: whatever parses has a clean host and a port from 1 to 65535, carries no path,
//! query or credentials, and prints back to a URL that parses to the same value.
#![no_main]

use csg_protocol::BrokerUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match BrokerUrl::parse(s) {
        Ok(u) => {
            assert!(!u.host.is_empty() && u.port >= 1);
            assert!(u
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)));
            assert_eq!(BrokerUrl::parse(&u.to_string()).unwrap(), u);
            let rest = s.split_once("://").unwrap().1;
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            assert!(!rest.contains(['/', '?', '#', '@']));
        }
        // The URL is cut to 200 characters in the message (each at most 10 bytes escaped).
        Err(e) => assert!(e.to_string().len() < 2400),
    }
});
