//! Identities and topics: the input (UTF-8) as every id type, a client ID, a reply topic, a
//! status topic, and (split on newlines) as three parent topics. What is accepted must match
//! the reference charset and length rules; topics built must fit the limit; a status topic
//! that parses must be exactly the topic its value builds.
#![no_main]

use csg_fuzz::{id_rule, method_rule};
use csg_protocol::{
    AgentTopics, ClientId, GroupId, InstanceId, MethodName, RequestId, StatusTopic, TopicMode,
    TopicParents,
};
use libfuzzer_sys::fuzz_target;

fn parent_rule(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(GroupId::new(s).is_ok(), id_rule(s, 60));
    assert_eq!(InstanceId::new(s).is_ok(), id_rule(s, 60));
    assert_eq!(RequestId::new(s).is_ok(), id_rule(s, 64));
    assert_eq!(MethodName::new(s).is_ok(), method_rule(s));
    if let Err(e) = RequestId::new(s) {
        // The value is cut to 80 characters in the message (each at most 10 bytes escaped).
        assert!(e.to_string().len() < 1100);
    }
    let want = s
        .split_once("@@@")
        .is_some_and(|(g, i)| id_rule(g, 60) && id_rule(i, 60) && s.len() <= 64);
    match ClientId::parse(s) {
        Ok(c) => {
            assert!(want);
            assert_eq!(c.as_str(), s);
        }
        Err(_) => assert!(!want),
    }

    let parents = TopicParents::default();
    match StatusTopic::parse(&parents, s) {
        Some(StatusTopic::Heartbeat(i)) => assert_eq!(parents.heartbeat_topic(&i), s),
        Some(StatusTopic::Presence(i)) => assert_eq!(parents.presence_topic(&i), s),
        None => {}
    }
    let client = ClientId::parse("GID_csg@@@gw-1").unwrap();
    let topics = AgentTopics::new(&parents, TopicMode::Standard, &client, 64).unwrap();
    let ok = topics.check_reply_to(s).is_ok();
    let rest = s.strip_prefix("csg-up/");
    let want = rest.is_some_and(|r| {
        s.chars().count() <= 64
            && !r.is_empty()
            && !r.contains(['+', '#', '\0'])
            && r.split('/').all(|l| !l.is_empty())
    });
    assert_eq!(ok, want, "{s:?}");

    // Three parents, one per line; whatever is built fits or is reported.
    let mut lines = s.splitn(4, '\n');
    let (Some(down), Some(up), Some(status)) = (lines.next(), lines.next(), lines.next()) else {
        return;
    };
    let p = TopicParents {
        down: down.into(),
        up: up.into(),
        status: status.into(),
    };
    let valid = parent_rule(down)
        && parent_rule(up)
        && parent_rule(status)
        && down != up
        && down != status
        && up != status;
    assert_eq!(p.validate().is_empty(), valid);
    for mode in [
        TopicMode::Standard,
        TopicMode::P2p { subscribe: false },
        TopicMode::P2p { subscribe: true },
    ] {
        let max_len = 16 + data.len() % 100;
        if let Ok(t) = AgentTopics::new(&p, mode, &client, max_len) {
            for topic in [&t.commands, &t.heartbeat, &t.presence] {
                assert!(topic.chars().count() <= max_len);
                assert!(!topic.contains(['+', '#', '\0']));
            }
        }
    }
});
