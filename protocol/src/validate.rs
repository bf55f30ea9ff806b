//! Pure validators shared by several method families: paths, network addresses, free text.
//! No I/O: whether a path exists or lies under an export root is the agent's check.
//!
//! Strict allow-lists rather than escaping: a value that passes can go into any backend's
//! config grammar or argument vector as is.

use std::net::IpAddr;

use thiserror::Error;

/// Longest path accepted (nfs-utils keeps paths in a 1024-byte buffer).
pub const MAX_PATH_BYTES: usize = 1023;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("{what} {value:?} is invalid: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// A short excerpt of a message that may quote input (serde's own errors do): at most `max`
/// bytes, cut on a character boundary, with the number of bytes left out.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

/// Longest excerpt of a parser's error kept in a params error.
pub const ERROR_EXCERPT: usize = 400;

pub fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> ValueError {
    ValueError::Invalid {
        what,
        value: value.chars().take(120).collect(),
        reason: reason.into(),
    }
}

/// An absolute, normalised path of `[A-Za-z0-9._/-]`: no `.`/`..` components, no empty
/// component, no component starting with `-`, at most 1023 bytes, not `/` itself.
pub fn check_path(what: &'static str, p: &str) -> Result<(), ValueError> {
    if p.len() > MAX_PATH_BYTES {
        return Err(invalid(
            what,
            p,
            format!("{} bytes; the limit is {MAX_PATH_BYTES}", p.len()),
        ));
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| invalid(what, p, "it must be absolute"))?;
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(invalid(
            what,
            p,
            format!("the character {c:?} is not allowed; use [A-Za-z0-9._/-]"),
        ));
    }
    if rest.is_empty() {
        return Err(invalid(what, p, "the root directory itself cannot be used"));
    }
    for comp in rest.split('/') {
        match comp {
            "" => return Err(invalid(what, p, "empty component (// or a trailing /)")),
            "." | ".." => return Err(invalid(what, p, "'.' and '..' components are not allowed")),
            c if c.starts_with('-') => {
                return Err(invalid(what, p, "a component may not start with '-'"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An IP address or CIDR network: `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`. Host bits set
/// in a CIDR are refused, so a rule never means something other than it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "address or CIDR";
        if s.len() > 43 {
            return Err(invalid(WHAT, s, "too long"));
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| invalid(WHAT, s, "not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u8 = p
                    .parse()
                    .map_err(|_| invalid(WHAT, s, "bad prefix length"))?;
                if n > max {
                    return Err(invalid(WHAT, s, format!("prefix length above {max}")));
                }
                n
            }
            Some(_) => return Err(invalid(WHAT, s, "bad prefix length")),
        };
        let host_bits_clear = match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                prefix == 32 || bits & (u32::MAX >> prefix) == 0
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                prefix == 128 || bits & (u128::MAX >> prefix) == 0
            }
        };
        if !host_bits_clear {
            return Err(invalid(
                WHAT,
                s,
                "host bits are set after the prefix (did you mean the network address?)",
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Which networks a client rule may name without the operator's explicit opt-in: a rule
/// reaching everyone (`0.0.0.0/0`, `::/0`, any prefix shorter than the minimum) is refused
/// unless `allow_world` is set. `section` is the agent's config section the settings live in
/// (`nfs`, `smb`), so a refusal names the setting to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldPolicy {
    pub section: &'static str,
    pub allow_world: bool,
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
}

/// `::ffff:0:0/96`: IPv4 clients as an IPv6 socket sees them.
const V4_MAPPED: u128 = 0xffff_0000_0000;

impl WorldPolicy {
    /// The defaults: no world rules; nothing wider than a /8 (IPv4) or a /32 (IPv6).
    pub const fn strict(section: &'static str) -> Self {
        Self {
            section,
            allow_world: false,
            min_prefix_v4: 8,
            min_prefix_v6: 32,
        }
    }

    /// Why `c` counts as "the world" under this policy, or `None` when it may be used.
    pub fn refuses_net(&self, c: &Cidr) -> Option<String> {
        if self.allow_world {
            return None;
        }
        let s = self.section;
        let refuse = |what: String| {
            Some(format!(
                "{c} reaches {what}; a rule that wide needs {s}.allow_world = true in the \
                 agent's config"
            ))
        };
        let short = |prefix: u8, key: &str, min: u8| {
            let whom = if prefix == 0 {
                "everyone".to_string()
            } else {
                format!("a very large range (prefix /{prefix})")
            };
            refuse(format!("{whom}, shorter than {s}.{key} = {min}"))
        };
        match c.addr {
            IpAddr::V4(_) if c.prefix < self.min_prefix_v4 => {
                short(c.prefix, "min_prefix_v4", self.min_prefix_v4)
            }
            IpAddr::V4(_) => None,
            IpAddr::V6(_) if c.prefix < self.min_prefix_v6 => {
                short(c.prefix, "min_prefix_v6", self.min_prefix_v6)
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = |p: u8| {
                    if p == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(p))
                    }
                };
                // A network holding the IPv4-mapped block holds every IPv4 client; one inside
                // it is an IPv4 network written the IPv6 way, held to the IPv4 minimum.
                if c.prefix <= 96 && V4_MAPPED & mask(c.prefix) == bits {
                    return refuse(
                        "every IPv4 client (it holds the IPv4-mapped block ::ffff:0:0/96)".into(),
                    );
                }
                match c.prefix.checked_sub(96) {
                    Some(p) if bits & mask(96) == V4_MAPPED && p < self.min_prefix_v4 => {
                        short(p, "min_prefix_v4", self.min_prefix_v4)
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Free text (comments): printable, no control characters, no `%` (Samba substitutes
/// `%u`, `%m`, … in many parameters), no `"` or `\` (config quoting), at most `max` characters.
pub fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), ValueError> {
    if s.chars().count() > max {
        return Err(invalid(what, s, format!("longer than {max} characters")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || matches!(c, '%' | '"' | '\\'))
    {
        return Err(invalid(
            what,
            s,
            format!(
                "the character {c:?} is not allowed (control characters, %, \" and \\ are refused)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for good in ["/srv/csg/vol1", "/a", "/srv/csg/a.b_c-d"] {
            check_path("path", good).unwrap();
        }
        for bad in [
            "",
            "/",
            "relative/x",
            "/srv/../etc",
            "/srv/./x",
            "/srv//x",
            "/srv/x/",
            "/srv/-rf",
            "/srv/a b",
            "/srv/a\nb",
            "/srv/%u",
            "/srv/é",
            "/srv/a\"b",
        ] {
            assert!(check_path("path", bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/{}", "a".repeat(1023));
        assert!(check_path("path", &long).is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert_eq!(
            Cidr::parse("192.0.2.7/32").unwrap().to_string(),
            "192.0.2.7"
        );
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix, 0);
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/8(rw,no_root_squash)",
            "10.0.0.0/8 *",
            "host.example",
            "*",
            "@netgroup",
            "10.0.0.0/+8",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn text() {
        check_text("comment", "Finance share, 2026", 256).unwrap();
        for bad in ["a\nb", "100%", "a\"b", "a\\b", "\u{7}"] {
            assert!(check_text("comment", bad, 256).is_err(), "{bad:?} accepted");
        }
        assert!(check_text("comment", &"x".repeat(257), 256).is_err());
    }
}
