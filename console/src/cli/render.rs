//! Tables for people, from the typed results of the storage methods.
//!
//! A listing (`exports`, `shares`, `users`, `targets`) becomes rows with one column per plain
//! field of its items, identifying columns (`name`, `username`, `iqn`) first and the rest in
//! name order; nested specs (`desired`, `actual`) are left to `--json`, and `drift` shows what
//! differs. The result's other fields follow as `field: value` lines. Any other result is a
//! FIELD/VALUE table. Lists are joined by commas, objects shown as compact JSON, `null` and
//! empty lists in rows as `-`.

use csg_protocol::methods::{iscsi, nfs, smb, MethodResult};
use serde::Serialize;

use super::table::Table;

/// One field of a result as a table shows it.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    /// A string, number or bool, as text.
    Text(String),
    /// A list of plain values.
    List(Vec<String>),
    /// An absent object (`null`).
    Null,
    /// An object, as compact JSON: it gets no column of its own.
    Object(String),
}

impl Cell {
    fn text(v: impl ToString) -> Self {
        Cell::Text(v.to_string())
    }

    fn list<T: ToString>(v: &[T]) -> Self {
        Cell::List(v.iter().map(ToString::to_string).collect())
    }

    fn object<T: Serialize>(v: &T) -> Self {
        // Through `Value`, whose objects keep their keys sorted, as `--json` prints them.
        Cell::Object(match serde_json::to_value(v) {
            Ok(j) => j.to_string(),
            Err(e) => format!("<{e}>"),
        })
    }

    fn optional<T: Serialize>(v: Option<&T>) -> Self {
        v.map_or(Cell::Null, Cell::object)
    }

    fn is_plain(&self) -> bool {
        !matches!(self, Cell::Object(_))
    }

    fn is_empty_list(&self) -> bool {
        matches!(self, Cell::List(l) if l.is_empty())
    }

    fn show(&self) -> String {
        match self {
            Cell::Text(s) | Cell::Object(s) => s.clone(),
            Cell::List(l) => l.join(","),
            Cell::Null => "-".into(),
        }
    }
}

type Fields = Vec<(&'static str, Cell)>;

fn export(e: &nfs::ExportStatus) -> Fields {
    vec![
        ("name", Cell::text(&e.name)),
        ("desired", Cell::object(&e.desired)),
        ("actual", Cell::optional(e.actual.as_ref())),
        ("drift", Cell::list(&e.drift)),
    ]
}

fn share(s: &smb::ShareInfo) -> Fields {
    vec![
        ("name", Cell::text(&s.name)),
        ("managed", Cell::text(s.managed)),
        ("desired", Cell::optional(s.desired.as_ref())),
        ("actual", Cell::optional(s.actual.as_ref())),
        ("drift", Cell::list(&s.drift)),
    ]
}

fn user(u: &smb::UserInfo) -> Fields {
    vec![
        ("username", Cell::text(&u.username)),
        ("managed", Cell::text(u.managed)),
        ("in_passdb", Cell::text(u.in_passdb)),
        ("unix_user_created", Cell::text(u.unix_user_created)),
        ("drift", Cell::list(&u.drift)),
    ]
}

fn target(t: &iscsi::TargetView) -> Fields {
    vec![
        ("name", Cell::text(&t.name)),
        ("desired", Cell::object(&t.desired)),
        ("actual", Cell::optional(t.actual.as_ref())),
        ("drift", Cell::list(&t.drift)),
    ]
}

/// The table for a storage method's result; `None` for results that are not a storage
/// method's (they are shown as JSON).
pub fn render(result: &MethodResult) -> Option<String> {
    use MethodResult as R;
    Some(match result {
        R::NfsList(l) => listing(
            l.exports.iter().map(export).collect(),
            paged(
                vec![("backend", Cell::text(&l.backend))],
                l.next_cursor.as_ref(),
            ),
        ),
        R::SmbShareList(l) => listing(
            l.shares.iter().map(share).collect(),
            paged(Vec::new(), l.next_cursor.as_ref()),
        ),
        R::SmbUserList(l) => listing(
            l.users.iter().map(user).collect(),
            paged(Vec::new(), l.next_cursor.as_ref()),
        ),
        R::IscsiList(l) => listing(
            l.targets.iter().map(target).collect(),
            paged(
                vec![("unexpected", Cell::list(&l.unexpected))],
                l.next_cursor.as_ref(),
            ),
        ),
        R::NfsMutate(m) => fields(vec![
            ("changed", Cell::text(m.changed)),
            ("export", Cell::object(&m.export)),
        ]),
        R::NfsDelete(d) => fields(vec![
            ("name", Cell::text(&d.name)),
            ("existed", Cell::text(d.existed)),
        ]),
        R::NfsGet(e) => fields(export(e)),
        R::SmbShare(s) => fields(vec![
            ("changed", Cell::text(s.changed)),
            ("share", Cell::object(&s.share)),
        ]),
        R::SmbDelete(d) => fields(vec![("existed", Cell::text(d.existed))]),
        R::SmbShareGet(s) => fields(share(s)),
        R::SmbUserSet(u) => fields(vec![
            ("username", Cell::text(&u.username)),
            ("created", Cell::text(u.created)),
            ("unix_user_created", Cell::text(u.unix_user_created)),
        ]),
        R::IscsiApply(a) => fields(vec![
            ("name", Cell::text(&a.name)),
            ("iqn", Cell::text(&a.iqn)),
            ("changed", Cell::text(a.changed)),
            ("created_files", Cell::list(&a.created_files)),
        ]),
        R::IscsiDelete(d) => fields(vec![
            ("existed", Cell::text(d.existed)),
            ("deleted_files", Cell::list(&d.deleted_files)),
        ]),
        R::IscsiGet(t) => fields(target(t)),
        R::Ping(_) | R::Info(_) | R::Capabilities(_) | R::Status(_) | R::Reconcile(_) => {
            return None
        }
    })
}

/// A list's other fields, with the cursor of the next page when there is one (csgctl's own
/// list commands fetch every page, so it shows only on a page asked for by hand).
fn paged(mut rest: Fields, next: Option<&String>) -> Fields {
    if let Some(c) = next {
        rest.push(("next_cursor", Cell::text(c)));
    }
    rest
}

/// One result object: FIELD/VALUE rows in field-name order.
fn fields(mut f: Fields) -> String {
    if f.is_empty() {
        return "(none)\n".into();
    }
    f.sort_by_key(|(k, _)| *k);
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in f {
        t.push(vec![k.to_string(), v.show()]);
    }
    t.render()
}

/// A list of items as rows, then the result's other fields as `field: value` lines.
fn listing(rows: Vec<Fields>, mut rest: Fields) -> String {
    rest.sort_by_key(|(k, _)| *k);
    if rows.is_empty() {
        let mut out = "(none)\n".to_string();
        for (k, v) in rest.iter().filter(|(_, v)| !v.is_empty_list()) {
            out.push_str(&format!("{k}: {}\n", v.show()));
        }
        return out;
    }
    // A column for every field that is plain in at least one row.
    let mut keys: Vec<&'static str> = Vec::new();
    for (k, v) in rows.iter().flatten() {
        if v.is_plain() && !keys.contains(k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|k| (!matches!(*k, "name" | "username" | "iqn"), *k));
    let headers: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(&headers);
    for r in &rows {
        t.push(
            keys.iter()
                .map(|k| match r.iter().find(|(rk, _)| rk == k) {
                    Some((_, v)) if !v.is_empty_list() => v.show(),
                    _ => "-".to_string(),
                })
                .collect(),
        );
    }
    let mut out = t.render();
    for (k, v) in rest
        .iter()
        .filter(|(_, v)| !v.is_empty_list() && *v != Cell::Null)
    {
        out.push_str(&format!("{k}: {}\n", v.show()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The table csgctl printed before its results were typed, computed by walking the JSON:
    /// the typed tables must come out the same.
    fn by_walking_json(result: &Value, listing: bool) -> String {
        fn cell(v: &Value) -> String {
            match v {
                Value::Null => "-".into(),
                Value::String(s) => s.clone(),
                Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
                    a.iter().map(cell).collect::<Vec<_>>().join(",")
                }
                other => other.to_string(),
            }
        }
        let Value::Object(m) = result else {
            return format!("{result}\n");
        };
        let lists: Vec<&String> = m
            .iter()
            .filter(|(_, v)| {
                v.as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            })
            .map(|(k, _)| k)
            .collect();
        let empty_lists = m
            .values()
            .filter(|v| v.as_array().is_some_and(Vec::is_empty))
            .count();
        let (rows, rest): (Option<&Vec<Value>>, Vec<(&String, &Value)>) = if !listing {
            (None, m.iter().collect())
        } else {
            match lists.as_slice() {
                [one] => (
                    m.get(one.as_str()).and_then(Value::as_array),
                    m.iter().filter(|(k, _)| k != one).collect(),
                ),
                [] if empty_lists > 0 => {
                    let mut out = "(none)\n".to_string();
                    for (k, v) in m
                        .iter()
                        .filter(|(_, v)| !v.as_array().is_some_and(Vec::is_empty))
                    {
                        out.push_str(&format!("{k}: {}\n", cell(v)));
                    }
                    return out;
                }
                _ => (None, m.iter().collect()),
            }
        };
        let Some(rows) = rows else {
            if rest.is_empty() {
                return "(none)\n".into();
            }
            let mut t = Table::new(&["FIELD", "VALUE"]);
            for (k, v) in rest {
                t.push(vec![k.clone(), cell(v)]);
            }
            return t.render();
        };
        let plain = |v: &Value| {
            !v.is_object() && !v.as_array().is_some_and(|a| a.iter().any(Value::is_object))
        };
        let mut keys: Vec<String> = Vec::new();
        for r in rows.iter().filter_map(Value::as_object) {
            for (k, v) in r {
                if plain(v) && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys.sort_by_key(|k| {
            (
                !matches!(k.as_str(), "name" | "username" | "iqn"),
                k.clone(),
            )
        });
        let headers: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut t = Table::new(&headers);
        for r in rows {
            t.push(
                keys.iter()
                    .map(|k| match r.get(k.as_str()) {
                        Some(Value::Array(a)) if a.is_empty() => "-".to_string(),
                        Some(v) => cell(v),
                        None => "-".to_string(),
                    })
                    .collect(),
            );
        }
        let mut out = t.render();
        for (k, v) in rest {
            let empty = v.as_array().is_some_and(Vec::is_empty) || v.is_null();
            if !empty {
                out.push_str(&format!("{k}: {}\n", cell(v)));
            }
        }
        out
    }

    /// The result examples of the storage references (`<!-- example: METHOD result -->`).
    fn doc_results() -> Vec<(String, Value)> {
        let docs = [
            include_str!("../../../docs/methods/nfs.md"),
            include_str!("../../../docs/methods/smb.md"),
            include_str!("../../../docs/methods/iscsi.md"),
        ];
        let mut out = Vec::new();
        for text in docs {
            let lines: Vec<&str> = text.lines().collect();
            let mut methods = Vec::new();
            let mut i = 0;
            while i < lines.len() {
                let l = lines[i].trim();
                if let Some(m) = l
                    .strip_prefix("<!-- example:")
                    .and_then(|s| s.strip_suffix("result -->"))
                {
                    methods.push(m.trim().to_string());
                } else if l == "```json" && !methods.is_empty() {
                    let end = (i..lines.len())
                        .find(|&j| lines[j].trim() == "```")
                        .unwrap_or(lines.len());
                    let v: Value = serde_json::from_str(&lines[i + 1..end].join("\n")).unwrap();
                    out.extend(methods.drain(..).map(|m| (m, v.clone())));
                    i = end;
                } else if !l.starts_with("<!--") {
                    methods.clear();
                }
                i += 1;
            }
        }
        out
    }

    /// Each example, and the same with its lists emptied (the "(none)" and "-" cases).
    fn variants(v: &Value) -> Vec<Value> {
        let mut out = vec![v.clone()];
        if let Value::Object(m) = v {
            for k in m.keys() {
                if m[k].is_array() {
                    let mut e = m.clone();
                    e.insert(k.clone(), Value::Array(Vec::new()));
                    out.push(Value::Object(e));
                }
            }
            let mut all = m.clone();
            for (_, x) in all.iter_mut().filter(|(_, x)| x.is_array()) {
                *x = Value::Array(Vec::new());
            }
            out.push(Value::Object(all));
        }
        out
    }

    #[test]
    fn typed_tables_are_the_tables_of_before() {
        let examples = doc_results();
        assert!(examples.len() >= 16, "{} examples", examples.len());
        for (method, example) in examples {
            for v in variants(&example) {
                let typed = MethodResult::decode(&method, v.clone())
                    .unwrap_or_else(|e| panic!("{method}: {e}"));
                let shown = render(&typed).unwrap_or_else(|| panic!("{method}: no table"));
                assert_eq!(
                    shown,
                    by_walking_json(&v, method.ends_with(".list")),
                    "{method}: {v}"
                );
            }
        }
    }

    #[test]
    fn a_listing_and_an_object() {
        let list: Value = serde_json::json!({"targets": [
            {"name": "a", "desired": {"iqn": "iqn.2026-11.x:a", "luns": [], "initiators": [], "networks": []},
             "actual": null, "drift": ["the target is missing on the backend"]},
            {"name": "b", "desired": {"iqn": "iqn.2026-11.x:b", "luns": [], "initiators": [], "networks": []},
             "actual": {"iqn": "iqn.2026-11.x:b", "luns": [], "initiators": [], "networks": [],
                        "chap_usernames": [], "sessions": 0},
             "drift": []}],
            "unexpected": ["iqn.2026-11.x:old"]});
        let r = MethodResult::decode("iscsi.target.list", list).unwrap();
        // A target missing on the backend makes an ACTUAL column; the others show theirs there.
        let shown = render(&r).unwrap();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(lines[0].starts_with("NAME  ACTUAL  ") && lines[0].ends_with("  DRIFT"));
        assert!(
            lines[1].starts_with("a     -  ")
                && lines[1].ends_with("  the target is missing on the backend")
        );
        assert!(
            lines[2].starts_with("b     {\"chap_usernames\":[],")
                && lines[2].ends_with("\"sessions\":0}  -")
        );
        assert_eq!(lines[3], "unexpected: iqn.2026-11.x:old");
        let r = MethodResult::decode(
            "iscsi.target.delete",
            serde_json::json!({"existed": false, "deleted_files": []}),
        )
        .unwrap();
        assert_eq!(
            render(&r).unwrap(),
            "FIELD          VALUE\ndeleted_files\nexisted        false\n"
        );
        let r = MethodResult::decode(
            "nfs.export.list",
            serde_json::json!({"backend": "kernel", "exports": []}),
        )
        .unwrap();
        assert_eq!(render(&r).unwrap(), "(none)\nbackend: kernel\n");
    }
}
