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
    /// The last heartbeat's host figures, appended to the gateway's recent ones when written
    /// (read back by [`super::Store::host_samples`], not with the row).
    pub sample: Option<HostSample>,
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

/// One heartbeat's host figures, for a gateway's chart: the agent's time (whole seconds), CPU
/// and memory use in tenths of a percent. The store keeps a gateway's last
/// [`HostSample::KEPT`] in one text column, each in [`HostSample::LEN`] characters of base 36:
/// the time in 4 (seconds modulo 36⁴, about 19 days: the full time is the latest such second
/// near the reader's clock), CPU and memory in 2 each (`zz` for a memory size not reported).
/// Fixed widths, so the store appends one and cuts the oldest with string functions alone, and
/// a cut never falls inside one; few characters, as every heartbeat's write carries them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSample {
    /// A whole second, in milliseconds.
    pub ts_ms: u64,
    /// 0 to 1000.
    pub cpu_permille: u16,
    /// 0 to 1000; `None` when the heartbeat said no memory size.
    pub mem_permille: Option<u16>,
}

impl HostSample {
    /// Characters of one sample in the stored text.
    pub const LEN: usize = 8;
    /// Samples kept per gateway: the web chart's width.
    pub const KEPT: usize = 60;
    /// The stored time's period, in seconds (36⁴: 19.4 days).
    const PERIOD_S: u64 = 36 * 36 * 36 * 36;
    const NONE: u16 = 36 * 36 - 1;
    const DIGITS: &'static [u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// From a heartbeat's time and figures: CPU in percent, memory used and total in bytes.
    pub fn of(ts_ms: u64, cpu_pct: f32, mem_used: u64, mem_total: u64) -> Self {
        let permille = |f: f64| (f * 10.0).round().clamp(0.0, 1000.0) as u16;
        Self {
            ts_ms: ts_ms / 1000 * 1000,
            cpu_permille: if cpu_pct.is_finite() {
                permille(f64::from(cpu_pct))
            } else {
                0
            },
            mem_permille: (mem_total > 0)
                .then(|| permille(mem_used as f64 / mem_total as f64 * 100.0)),
        }
    }

    /// The stored form: [`HostSample::LEN`] characters.
    pub fn encode(&self) -> String {
        let mut out = [b'0'; Self::LEN];
        let put = |slot: &mut [u8], mut v: u64| {
            for d in slot.iter_mut().rev() {
                *d = Self::DIGITS[(v % 36) as usize];
                v /= 36;
            }
        };
        put(&mut out[..4], self.ts_ms / 1000 % Self::PERIOD_S);
        put(&mut out[4..6], u64::from(self.cpu_permille.min(1000)));
        put(
            &mut out[6..8],
            u64::from(self.mem_permille.map_or(Self::NONE, |m| m.min(1000))),
        );
        out.iter().map(|&b| char::from(b)).collect()
    }

    /// One stored sample; its time the latest second of its residue at or before `ref_s`.
    fn decode(s: &[u8], ref_s: u64) -> Option<Self> {
        let digit = |b: u8| Self::DIGITS.iter().position(|&d| d == b).map(|d| d as u64);
        let num = |bytes: &[u8]| {
            bytes
                .iter()
                .try_fold(0u64, |acc, &b| Some(acc * 36 + digit(b)?))
        };
        let cpu = u16::try_from(num(&s[4..6])?).ok()?;
        let mem = u16::try_from(num(&s[6..8])?).ok()?;
        if cpu > 1000 || (mem > 1000 && mem != Self::NONE) {
            return None;
        }
        let t = num(&s[..4])?;
        let back = (ref_s % Self::PERIOD_S + Self::PERIOD_S - t) % Self::PERIOD_S;
        Some(Self {
            ts_ms: ref_s.checked_sub(back)? * 1000,
            cpu_permille: cpu,
            mem_permille: (mem != Self::NONE).then_some(mem),
        })
    }

    /// A stored text's samples, oldest first, each once (two replicas may append the same
    /// heartbeat, or theirs out of order); what does not read as a sample is skipped. Times are
    /// placed at or before a day past `now_ms` (the agent's clock may run ahead of ours).
    pub fn parse_all(text: &str, now_ms: u64) -> Vec<HostSample> {
        let ref_s = now_ms / 1000 + 86_400;
        let mut out: Vec<HostSample> = text
            .as_bytes()
            .chunks_exact(Self::LEN)
            .filter_map(|c| Self::decode(c, ref_s))
            .collect();
        out.sort_by_key(|s| (s.ts_ms, s.cpu_permille, s.mem_permille));
        out.dedup();
        out
    }
}

#[cfg(test)]
mod host_sample_tests {
    use super::HostSample;

    const NOW: u64 = 1_764_979_260_000;

    #[test]
    fn samples_keep_their_figures_through_the_stored_text_in_time_order_once_each() {
        let a = HostSample::of(1_764_979_200_123, 12.34, 512, 1024);
        let b = HostSample::of(1_764_979_201_999, 100.0, 0, 0);
        // A gateway whose clock runs ahead of ours by an hour.
        let c = HostSample::of(NOW + 3_600_000, -3.0, 2048, 1024);
        // 18 days old: still placed right.
        let d = HostSample::of(NOW - 18 * 86_400_000, 1.0, 1, 2);
        assert_eq!(a.ts_ms, 1_764_979_200_000);
        assert_eq!(a.cpu_permille, 123);
        assert_eq!(a.mem_permille, Some(500));
        assert_eq!(b.mem_permille, None);
        assert_eq!((c.cpu_permille, c.mem_permille), (0, Some(1000)));
        for s in [a, b, c, d] {
            assert_eq!(s.encode().len(), HostSample::LEN);
        }
        let text: String = [b, a, b, c, d].iter().map(HostSample::encode).collect();
        assert_eq!(HostSample::parse_all(&text, NOW), vec![d, a, b, c]);
        // A sample that does not read (a digit out of range, a stray byte, a short tail) is
        // left out, the others kept.
        let bad = format!("{}zzzzzzzz{}ab", a.encode(), b.encode());
        assert_eq!(HostSample::parse_all(&bad, NOW), vec![a, b]);
        let mut stray = a.encode();
        stray.replace_range(0..1, "!");
        assert_eq!(HostSample::parse_all(&stray, NOW), vec![]);
        assert_eq!(HostSample::of(1, f32::NAN, 1, 1).cpu_permille, 0);
    }
}
