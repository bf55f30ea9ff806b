//! Instance lists: `gw-1,gw-2` on the command line, or a file with one id per line.

use std::collections::HashSet;

use csg_protocol::InstanceId;

/// Parses a comma-separated list of instance ids.
pub fn parse_list(text: &str) -> Result<Vec<InstanceId>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("instance list {text:?} has an empty entry"));
        }
        out.push(InstanceId::new(part).map_err(|e| e.to_string())?);
    }
    Ok(dedupe(out))
}

/// Parses an instances file: one id per line; `#` starts a comment; blank lines are ignored.
/// `source` names the file in error messages.
pub fn parse_file(source: &str, text: &str) -> Result<Vec<InstanceId>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // '#' is not a valid id character, so a trailing comment cannot hide part of an id.
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if line.is_empty() {
            continue;
        }
        let id = InstanceId::new(line).map_err(|e| format!("{source}:{}: {e}", n + 1))?;
        out.push(id);
    }
    if out.is_empty() {
        return Err(format!("{source}: no instance ids in the file"));
    }
    Ok(dedupe(out))
}

/// Keeps the first occurrence of each id: one instance must not get two concurrent calls with
/// the same request id.
fn dedupe(ids: Vec<InstanceId>) -> Vec<InstanceId> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|i| seen.insert(i.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ids: &[InstanceId]) -> Vec<&str> {
        ids.iter().map(InstanceId::as_str).collect()
    }

    #[test]
    fn lists() {
        assert_eq!(names(&parse_list("gw-1").unwrap()), ["gw-1"]);
        assert_eq!(
            names(&parse_list("gw-1, gw-2,gw-1").unwrap()),
            ["gw-1", "gw-2"]
        );
        assert!(parse_list("gw-1,,gw-2").is_err());
        assert!(parse_list("gw/1").is_err());
    }

    #[test]
    fn files_skip_comments_and_blanks() {
        let text = "# fleet A\n\ngw-1\n  gw-2   # rack 3\n\t\ngw-1\r\ngw-3";
        assert_eq!(
            names(&parse_file("f", text).unwrap()),
            ["gw-1", "gw-2", "gw-3"]
        );
    }

    #[test]
    fn file_errors_name_the_line() {
        let err = parse_file("fleet.txt", "gw-1\ngw 2\n").unwrap_err();
        assert!(err.starts_with("fleet.txt:2: "), "{err}");
        let err = parse_file("empty.txt", "# nothing\n\n").unwrap_err();
        assert!(err.contains("no instance ids"), "{err}");
    }
}
