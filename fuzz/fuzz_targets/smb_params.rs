//! `smb.*` params: the input as a JSON object through `ShareSpec::from_params` and through the
//! `ShareRef`, `UserSet` and `UserRef` parsers. Whatever is accepted holds only safe
//! characters in every field that reaches Samba's registry or a command line, and a share
//! spec serializes and parses back to itself.
#![no_main]

use csg_fuzz::{json_object, only, path_rule, text_rule};
use csg_protocol::methods::smb::{
    parse_params, ShareRef, ShareSpec, UserRef, UserSet, MAX_COMMENT, MAX_LIST,
    RESERVED_SHARE_NAMES,
};
use libfuzzer_sys::fuzz_target;

fn account(s: &str) -> bool {
    only(s, b"_-") && s.len() <= 32 && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

fuzz_target!(|data: &[u8]| {
    let Some(m) = json_object(data) else {
        return;
    };
    if let Ok(r) = parse_params::<ShareRef>(m.clone()) {
        assert!(only(r.name.as_str(), b"._-"));
    }
    if let Ok(u) = parse_params::<UserRef>(m.clone()) {
        assert!(account(u.username.as_str()));
    }
    if let Ok(u) = parse_params::<UserSet>(m.clone()) {
        assert!(account(u.username.as_str()));
        assert!(!u.password.expose().chars().any(char::is_control));
        assert!(!format!("{u:?}").contains(u.password.expose()));
    }
    let Ok(s) = ShareSpec::from_params(m) else {
        return;
    };
    let n = s.name.as_str();
    assert!(only(n, b"._-") && n.len() <= 80 && !n.starts_with(['.', '_', '-']));
    assert!(!RESERVED_SHARE_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(n)));
    assert!(path_rule(s.path.as_str()));
    let c = s.comment.as_str();
    assert!(text_rule(c, MAX_COMMENT) && c.trim() == c);
    for l in [&s.valid_users, &s.write_list, &s.admin_users] {
        assert!(l.len() <= MAX_LIST);
        for p in l {
            let t = p.to_string();
            assert!(account(t.strip_prefix('@').unwrap_or(&t)));
        }
    }
    for l in [&s.hosts_allow, &s.hosts_deny] {
        assert!(l.len() <= MAX_LIST);
        for h in l {
            assert!(only(&h.to_string(), b".:/"));
        }
    }
    if let Some(u) = &s.force_user {
        assert!(account(u.as_str()));
    }
    if let Some(g) = &s.force_group {
        assert!(account(g.as_str()));
    }
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        ShareSpec::from_params(v.as_object().unwrap().clone()),
        Ok(s)
    );
});
