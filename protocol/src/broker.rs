//! Broker URLs: `mqtt://host[:port]` (plain TCP, default port 1883) and `mqtts://host[:port]`
//! (TLS, default port 8883). IPv6 literals go in brackets: `mqtt://[::1]:1883`.
//!
//! A client may be given several URLs (the nodes of a broker cluster, a primary and a
//! standby): a [`BrokerList`], tried in turn.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("broker URL {url:?} is invalid: {reason}")]
pub struct BrokerUrlError {
    pub url: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let err = |reason: &str| BrokerUrlError {
            url: url.chars().take(200).collect(),
            reason: reason.into(),
        };
        let (scheme, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (Scheme::Mqtt, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (Scheme::Mqtts, r)
        } else {
            return Err(err("it must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err(
                "only host and port are allowed (no path, query or credentials)",
            ));
        }
        let default_port = match scheme {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' in IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err("expected ':' after ']'"))?,
                ),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(err("the host has characters a host name cannot have"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(err("the port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{s}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{s}://{}:{}", self.host, self.port)
        }
    }
}

/// At most this many broker URLs in one list.
pub const MAX_BROKERS: usize = 16;

/// One or more broker URLs, all with the same scheme, tried in turn by a session.
///
/// Mixing `mqtt://` and `mqtts://` is refused: a client that cannot reach a TLS broker would
/// fall back to plain TCP, with its credentials in clear, and anyone able to block the TLS
/// port could make it do so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerList(Vec<BrokerUrl>);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BrokerListError {
    #[error("no broker URL given")]
    Empty,
    #[error("{0} broker URLs given; the limit is {MAX_BROKERS}")]
    TooMany(usize),
    #[error("{0} and {1} mix mqtt:// and mqtts://: a client that cannot reach the TLS broker would fall back to plain TCP (credentials in clear); use one scheme for all")]
    MixedSchemes(String, String),
    #[error(transparent)]
    Url(#[from] BrokerUrlError),
}

impl BrokerList {
    pub fn new(urls: Vec<BrokerUrl>) -> Result<Self, BrokerListError> {
        let first = urls.first().ok_or(BrokerListError::Empty)?;
        if urls.len() > MAX_BROKERS {
            return Err(BrokerListError::TooMany(urls.len()));
        }
        if let Some(other) = urls.iter().find(|u| u.scheme != first.scheme) {
            return Err(BrokerListError::MixedSchemes(
                first.to_string(),
                other.to_string(),
            ));
        }
        Ok(Self(urls))
    }

    /// Parses each URL of `urls` (as a config file lists them).
    pub fn parse_each<S: AsRef<str>>(urls: &[S]) -> Result<Self, BrokerListError> {
        let parsed = urls
            .iter()
            .map(|u| BrokerUrl::parse(u.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(parsed)
    }

    /// Parses a comma-separated list, e.g. `mqtt://a:1883,mqtt://b:1883` (one URL is a list
    /// of one).
    pub fn parse(text: &str) -> Result<Self, BrokerListError> {
        let parts: Vec<&str> = text.split(',').filter(|p| !p.trim().is_empty()).collect();
        Self::parse_each(&parts)
    }

    pub fn urls(&self) -> &[BrokerUrl] {
        &self.0
    }

    /// The scheme every URL of the list shares.
    pub fn scheme(&self) -> Scheme {
        self.0.first().map_or(Scheme::Mqtt, |u| u.scheme)
    }
}

impl From<BrokerUrl> for BrokerList {
    fn from(url: BrokerUrl) -> Self {
        Self(vec![url])
    }
}

impl std::str::FromStr for BrokerList {
    type Err = BrokerListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The URLs separated by commas: what [`BrokerList::parse`] reads back.
impl fmt::Display for BrokerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{u}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "127.0.0.1", 1884)
        );
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1884");
        assert_eq!(BrokerUrl::parse("mqtt://broker").unwrap().port, 1883);
        assert_eq!(BrokerUrl::parse("mqtts://broker").unwrap().port, 8883);
        let v6 = BrokerUrl::parse("mqtt://[::1]:9").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert_eq!(v6.to_string(), "mqtt://[::1]:9");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://u:p@h",
            "mqtt://h/path",
            "mqtt://[::1",
            "mqtt://h h",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn lists_parse_print_and_refuse_mixed_schemes() {
        let l = BrokerList::parse("mqtt://a:1, mqtt://[::1]:2,").unwrap();
        assert_eq!(l.urls().len(), 2);
        assert_eq!(l.to_string(), "mqtt://a:1,mqtt://[::1]:2");
        assert_eq!(BrokerList::parse(&l.to_string()).unwrap(), l);
        assert_eq!(l.scheme(), Scheme::Mqtt);
        let one: BrokerList = BrokerUrl::parse("mqtts://x").unwrap().into();
        assert_eq!(one.scheme(), Scheme::Mqtts);
        assert_eq!(BrokerList::parse(""), Err(BrokerListError::Empty));
        assert!(matches!(
            BrokerList::parse("mqtt://a,mqtts://b"),
            Err(BrokerListError::MixedSchemes(..))
        ));
        assert!(matches!(
            BrokerList::parse("mqtt://a,http://b"),
            Err(BrokerListError::Url(_))
        ));
        let many = vec!["mqtt://a"; MAX_BROKERS + 1];
        assert_eq!(
            BrokerList::parse_each(&many),
            Err(BrokerListError::TooMany(MAX_BROKERS + 1))
        );
    }
}
