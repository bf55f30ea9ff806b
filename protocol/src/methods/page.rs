//! Paging of every `*.list` method: `limit` and an opaque `cursor` in the params,
//! `next_cursor` in the result.
//!
//! A list is sorted by its key (the export, share, user or target name, unique in its family);
//! a cursor is the last key of the page it ended, so a page stays correct while entries are
//! added or removed between calls. The cursor names the method it was made for: a cursor
//! made for another list, or one the agent never made, is refused (`INVALID_PARAMS`) rather
//! than read as the start of the list.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::MethodError;

/// Largest `limit` a list takes.
pub const MAX_LIMIT: u32 = 1000;
/// Longest cursor accepted (base64url characters): a key is at most 223 bytes (an IQN), so a
/// real one is well under this.
pub const MAX_CURSOR: usize = 512;
/// The version tag inside a cursor, so a later format can tell an old one.
const TAG: &str = "c1";

/// The params of a `*.list` as they go on the wire; both optional (`{}` is the whole list,
/// exactly as protocol 1.0 answered it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Most entries in the reply, 1 to 1000. Absent: every entry after `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, as received. Absent: from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(r"^[A-Za-z0-9_-]+$"))]
    pub cursor: Option<String>,
}

/// A checked page request: what a family's list is cut by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// `None`: no limit (the whole rest of the list).
    pub limit: Option<u32>,
    /// Entries with a key greater than this one come next.
    pub after: Option<String>,
    /// The method the cursor was made for (and a next cursor is made for).
    method: &'static str,
}

/// The opaque text of a cursor: base64url (no padding) of `c1`, the method and the last key.
pub fn encode_cursor(method: &str, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TAG}\n{method}\n{last_key}"))
}

fn decode_cursor(method: &str, cursor: &str) -> Option<String> {
    if cursor.is_empty() || cursor.len() > MAX_CURSOR {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let (tag, m, key) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = tag == TAG
        && m == method
        && !key.is_empty()
        && !key.chars().any(char::is_control)
        // Only the canonical spelling: two texts for one cursor would be one too many.
        && encode_cursor(method, key) == cursor;
    ok.then(|| key.to_string())
}

impl Page {
    /// The whole list (what a request without paging params asks for).
    pub fn all(method: &'static str) -> Self {
        Self {
            limit: None,
            after: None,
            method,
        }
    }

    /// The page `method`'s params ask for.
    pub fn parse(
        method: &'static str,
        params: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, MethodError> {
        let p: ListParams = super::named(method, params)?;
        Self::from_params(method, &p)
    }

    pub fn from_params(method: &'static str, p: &ListParams) -> Result<Self, MethodError> {
        if let Some(l) = p.limit {
            if !(1..=MAX_LIMIT).contains(&l) {
                return Err(MethodError::InvalidParams(format!(
                    "{method}: limit {l} is out of range; it must be from 1 to {MAX_LIMIT}"
                )));
            }
        }
        let after = match &p.cursor {
            None => None,
            Some(c) => Some(decode_cursor(method, c).ok_or_else(|| {
                MethodError::InvalidParams(format!(
                    "{method}: cursor is not one this agent made for {method}; pass next_cursor \
                     from the previous page unchanged, or no cursor to start over"
                ))
            })?),
        };
        Ok(Self {
            limit: p.limit,
            after,
            method,
        })
    }

    /// The params as a console sends them.
    pub fn to_params(&self) -> ListParams {
        ListParams {
            limit: self.limit,
            cursor: self.after.as_deref().map(|k| encode_cursor(self.method, k)),
        }
    }

    /// Whether this asks for more than the whole list (a limit or a cursor).
    pub fn is_paged(&self) -> bool {
        self.limit.is_some() || self.after.is_some()
    }

    /// Cuts `items` to this page: sorted by `key`, those after the cursor, at most `limit`.
    /// Returns the page and the cursor of the next one (`None` on the last page).
    pub fn apply<T>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Option<String>) {
        items.sort_by(|a, b| key(a).cmp(key(b)));
        if let Some(after) = &self.after {
            items.retain(|i| key(i) > after.as_str());
        }
        let Some(limit) = self.limit.map(|l| l as usize) else {
            return (items, None);
        };
        if items.len() <= limit {
            return (items, None);
        }
        items.truncate(limit);
        let next = items.last().map(|i| encode_cursor(self.method, key(i)));
        (items, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const M: &str = "nfs.export.list";

    fn page(v: serde_json::Value) -> Result<Page, MethodError> {
        match v {
            serde_json::Value::Object(m) => Page::parse(M, m),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn pages_join_to_the_whole_sorted_list() {
        let all: Vec<String> = ["e3", "e1", "e5", "e2", "e4"].map(String::from).to_vec();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let mut p = json!({"limit": 2});
            if let Some(c) = &cursor {
                p["cursor"] = json!(c);
            }
            let pg = page(p).unwrap();
            let (items, next) = pg.apply(all.clone(), String::as_str);
            assert!(items.len() <= 2);
            seen.extend(items);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["e1", "e2", "e3", "e4", "e5"]);
    }

    #[test]
    fn no_params_is_the_whole_list_without_a_cursor() {
        let pg = page(json!({})).unwrap();
        assert!(!pg.is_paged());
        let (items, next) = pg.apply(vec!["b".to_string(), "a".into()], String::as_str);
        assert_eq!(items, ["a", "b"]);
        assert_eq!(next, None);
        // A limit the list fits in ends on the first page.
        let (_, next) = page(json!({"limit": 2}))
            .unwrap()
            .apply(vec!["a".to_string(), "b".into()], String::as_str);
        assert_eq!(next, None);
    }

    #[test]
    fn made_up_and_foreign_cursors_are_refused() {
        let foreign = encode_cursor("smb.share.list", "a");
        let padded = format!("{}=", encode_cursor(M, "a"));
        for bad in [
            json!({"cursor": "abc"}),
            json!({"cursor": ""}),
            json!({"cursor": "!!!!"}),
            json!({"cursor": foreign}),
            json!({"cursor": padded}),
            json!({"cursor": URL_SAFE_NO_PAD.encode("c1\nnfs.export.list\n")}),
            json!({"cursor": "x".repeat(600)}),
            json!({"limit": 0}),
            json!({"limit": 1001}),
            json!({"limit": -1}),
            json!({"limit": "5"}),
            json!({"page": 1}),
        ] {
            let e = page(bad.clone()).unwrap_err();
            assert!(matches!(e, MethodError::InvalidParams(_)), "{bad}: {e}");
        }
        let e = page(json!({"cursor": "abc"})).unwrap_err().to_string();
        assert!(e.contains("next_cursor"), "{e}");
    }

    proptest::proptest! {
        /// Whatever the names and the limit, the pages joined are the whole sorted list, each
        /// page within the limit, and the paging ends.
        #[test]
        fn pages_always_join_to_the_whole_list(
            names in proptest::collection::btree_set("[a-z0-9][a-z0-9_-]{0,8}", 0..40),
            limit in 1u32..12,
        ) {
            let all: Vec<String> = names.into_iter().collect();
            let mut shuffled = all.clone();
            shuffled.reverse();
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..=all.len() + 1 {
                let p = ListParams { limit: Some(limit), cursor: after.take() };
                let pg = Page::from_params(M, &p).unwrap();
                let (items, next) = pg.apply(shuffled.clone(), String::as_str);
                proptest::prop_assert!(items.len() <= limit as usize);
                seen.extend(items);
                match next {
                    Some(c) => after = Some(c),
                    None => break,
                }
            }
            proptest::prop_assert_eq!(seen, all);
        }

        /// Any text as a cursor is refused, or is a cursor this code makes (never a panic, never
        /// a second spelling of one cursor).
        #[test]
        fn any_cursor_is_refused_or_canonical(c in "\\PC{0,80}|[A-Za-z0-9_-]{0,700}") {
            let p = ListParams { limit: None, cursor: Some(c.clone()) };
            if let Ok(pg) = Page::from_params(M, &p) {
                let key = pg.after.clone().unwrap();
                proptest::prop_assert_eq!(encode_cursor(M, &key), c);
            }
        }
    }

    #[test]
    fn a_cursor_round_trips_through_params() {
        let c = encode_cursor(M, "vol-7");
        let pg = page(json!({"limit": 5, "cursor": c})).unwrap();
        assert_eq!(pg.after.as_deref(), Some("vol-7"));
        assert_eq!(
            serde_json::to_value(pg.to_params()).unwrap(),
            json!({"limit": 5, "cursor": c})
        );
    }
}
