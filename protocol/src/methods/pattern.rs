//! Method-name patterns: what a signing key may call (the agent's `[security]` keys, section 12
//! of the protocol). A pattern names methods by their wire names, so it lives with them.

/// An allowed-method pattern: `[a-z0-9_.]` with `*` matching any run of characters (dots
/// included). `sys.*` matches `sys.ping`; `*.get` matches `nfs.export.get`; `*` matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPattern(String);

impl MethodPattern {
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!("{s:?}: a pattern is 1 to 64 characters"));
        }
        if !s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'*')
        }) {
            return Err(format!(
                "{s:?}: only a-z 0-9 _ . and the wildcard * are allowed"
            ));
        }
        if s.contains("..") || s.starts_with('.') || s.ends_with('.') {
            return Err(format!("{s:?}: an empty dot-segment"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Glob match: `*` matches any (possibly empty) run of characters. `sys.capabilities`
    /// (protocol 1.1) is allowed wherever `sys.info` is: a key configured for 1.0 that may ask
    /// what the agent is may also ask what it supports, without its config being rewritten.
    pub fn matches(&self, method: &str) -> bool {
        glob(self.0.as_bytes(), method.as_bytes())
            || (method == super::sys::CAPABILITIES
                && glob(self.0.as_bytes(), super::sys::INFO.as_bytes()))
    }
}

/// Iterative glob with backtracking to the last `*`: linear in practice, never exponential.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_info() {
        for (p, yes) in [
            ("sys.info", true),
            ("sys.*", true),
            ("*", true),
            ("*.info", true),
            ("sys.ping", false),
            ("*.get", false),
            ("nfs.*", false),
        ] {
            let p = MethodPattern::new(p).unwrap();
            assert_eq!(p.matches("sys.capabilities"), yes, "{}", p.as_str());
            assert_eq!(p.matches("sys.info"), yes, "{}", p.as_str());
        }
    }
}
