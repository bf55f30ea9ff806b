//! The values the store reads and writes, each built checked.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use csg_protocol::identity::{GroupId, InstanceId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::json::JsonText;

/// A cloud region's name (`cn-hangzhou`, `eu-central-1`): 1 to 64 of `a-z 0-9 -`, starting with
/// a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Region(String);

impl Region {
    pub fn new(value: impl Into<String>) -> Result<Self, StoreError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 64
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Region(value))
        } else {
            Err(StoreError::Invalid(format!(
                "region {value:?}: 1 to 64 of a-z 0-9 -, not starting with -"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a gateway is reachable, as the console last concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    /// No heartbeat for the configured number of intervals.
    Stale,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Stale => "stale",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "online" => Ok(Presence::Online),
            "stale" => Ok(Presence::Stale),
            "offline" => Ok(Presence::Offline),
            other => Err(StoreError::Invalid(format!("presence {other:?}"))),
        }
    }
}

/// One gateway's stored state. The fleet gives only rows that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub region: Region,
    pub instance_id: InstanceId,
    pub group_id: GroupId,
    pub presence: Presence,
    /// When the presence last changed.
    pub since_ms: i64,
    pub reason: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub agent_version: Option<String>,
    /// The last heartbeat, as the fleet made its text when it arrived; written and read as
    /// it is.
    pub heartbeat: Option<JsonText>,
    pub storage: Option<StorageSummary>,
    /// When the console produced this row; an older row never overwrites a newer one (two
    /// replicas may write the same gateway out of order).
    pub updated_ms: i64,
}

impl InstanceRow {
    /// Resources whose state differs from the desired one: the storage summary's `drift`
    /// (0 when there is none).
    pub fn drift(&self) -> i64 {
        self.storage
            .map_or(0, |s| i64::try_from(s.drift).unwrap_or(i64::MAX))
    }
}

/// Resources a gateway manages, summed over its storage families; stored as
/// `{"count":N,"drift":M}` (a member missing reads as 0, as the API always showed it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSummary {
    pub count: u64,
    pub drift: u64,
}

/// How many rows one page holds: 1 to [`PageLimit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    pub const MAX: u32 = 1000;

    pub fn new(n: u32) -> Result<Self, StoreError> {
        if (1..=Self::MAX).contains(&n) {
            Ok(PageLimit(n))
        } else {
            Err(StoreError::Invalid(format!(
                "limit {n}: 1 to {}",
                Self::MAX
            )))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// One page of a list, and where the next one starts (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A column the instance list can be ordered by. Each has an index whose columns are the
/// key, then (region, instance id), so a page of any order is found by keyset, as fast at page
/// 1000 as at page 1. `last_seen_ms` has none on purpose: it changes with every heartbeat, and
/// an index on it would be rewritten thousands of times a second; `since` (when the presence
/// last changed) orders those gone quiet longest first instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Region, then instance id: the primary key.
    #[default]
    Id,
    Group,
    /// online, stale, offline (ascending); descending puts the offline first.
    Presence,
    /// When the presence last changed.
    Since,
    /// The agent's version as text; none reported sorts as the empty text.
    Version,
    Drift,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::Id,
        SortKey::Group,
        SortKey::Presence,
        SortKey::Since,
        SortKey::Version,
        SortKey::Drift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::Group => "group",
            SortKey::Presence => "presence",
            SortKey::Since => "since",
            SortKey::Version => "version",
            SortKey::Drift => "drift",
        }
    }

    /// The sort value of a row, as the store's expression for this key computes it (the
    /// cursor carries it; `None` for `Id`, whose key is the row's region and id alone).
    pub(crate) fn value_of(self, row: &InstanceRow) -> Option<SortValue> {
        Some(match self {
            SortKey::Id => return None,
            SortKey::Group => SortValue::Text(row.group_id.as_str().to_owned()),
            SortKey::Presence => SortValue::Int(match row.presence {
                Presence::Online => 0,
                Presence::Stale => 1,
                Presence::Offline => 2,
            }),
            SortKey::Since => SortValue::Int(row.since_ms),
            SortKey::Version => SortValue::Text(row.agent_version.clone().unwrap_or_default()),
            SortKey::Drift => SortValue::Int(row.drift()),
        })
    }
}

/// A sort key's value in a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum SortValue {
    Int(i64),
    Text(String),
}

/// The order of an instance list: a key, ascending or descending; written `since` or
/// `-since` (the API's and the pages' `sort=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InstanceOrder {
    pub key: SortKey,
    pub descending: bool,
}

impl InstanceOrder {
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let key = SortKey::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "sort: {:?} is not one of {} (a leading - for descending)",
                    text.chars().take(64).collect::<String>(),
                    SortKey::ALL.map(SortKey::as_str).join(", ")
                ))
            })?;
        Ok(Self { key, descending })
    }

    /// How `parse` reads it back.
    pub fn as_param(self) -> String {
        if self.descending {
            format!("-{}", self.key.as_str())
        } else {
            self.key.as_str().to_owned()
        }
    }
}

impl std::fmt::Display for InstanceOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_param())
    }
}

/// Which instances a list returns; every field narrows it, empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceFilter {
    pub region: Option<Region>,
    pub presence: Option<Presence>,
    /// Any of these groups (a token limited to groups lists only those).
    pub groups: Vec<GroupId>,
    pub version: Option<String>,
    /// With drift (`Some(true)`: at least one resource differs from its desired state) or
    /// without (`Some(false)`).
    pub drift: Option<bool>,
    /// Exactly these instance ids (at most [`InstanceFilter::MAX_IDS`]).
    pub ids: Vec<InstanceId>,
    /// A case-sensitive substring of the instance id (a prefix is one too).
    pub q: Option<String>,
}

impl InstanceFilter {
    pub const MAX_IDS: usize = 1000;
    pub const MAX_GROUPS: usize = 100;
    pub const MAX_TEXT: usize = 128;

    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.ids.len() > Self::MAX_IDS {
            return Err(StoreError::Invalid(format!(
                "{} ids: at most {}",
                self.ids.len(),
                Self::MAX_IDS
            )));
        }
        if self.groups.len() > Self::MAX_GROUPS {
            return Err(StoreError::Invalid(format!(
                "{} groups: at most {}",
                self.groups.len(),
                Self::MAX_GROUPS
            )));
        }
        for (what, text) in [("q", &self.q), ("version", &self.version)] {
            if let Some(t) = text {
                if t.is_empty() || t.len() > Self::MAX_TEXT || t.chars().any(char::is_control) {
                    return Err(StoreError::Invalid(format!(
                        "{what}: 1 to {} printable bytes",
                        Self::MAX_TEXT
                    )));
                }
            }
        }
        Ok(())
    }

    /// Names the filter, order of its lists aside, so a cursor made under one filter is refused
    /// under another (it would skip or repeat rows silently).
    pub(crate) fn fingerprint(&self) -> String {
        let mut canon = self.clone();
        canon.groups.sort();
        canon.groups.dedup();
        canon.ids.sort();
        canon.ids.dedup();
        fingerprint_of(&canon)
    }
}

pub(crate) fn fingerprint_of(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    URL_SAFE_NO_PAD.encode(&digest[..9])
}

#[derive(Serialize, Deserialize)]
struct CursorBody<K> {
    f: String,
    k: K,
}

/// Encodes the key of a page's last row and the filter it was listed under.
pub(crate) fn encode_cursor<K: Serialize>(fingerprint: &str, key: K) -> String {
    let body = CursorBody {
        f: fingerprint.to_owned(),
        k: key,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap_or_default())
}

/// The key a cursor resumes after; refused when it was made under another filter.
pub(crate) fn decode_cursor<K: for<'de> Deserialize<'de>>(
    cursor: &str,
    fingerprint: &str,
) -> Result<K, StoreError> {
    let bad = || StoreError::Invalid("cursor: not one this store made".to_owned());
    if cursor.len() > 1024 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let body: CursorBody<K> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if body.f != fingerprint {
        return Err(StoreError::Invalid(
            "cursor: made for another filter; start again without it".to_owned(),
        ));
    }
    Ok(body.k)
}

/// A presence transition of one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    pub region: Region,
    pub instance_id: InstanceId,
    pub state: Presence,
    pub reason: Option<String>,
    pub at_ms: i64,
}
