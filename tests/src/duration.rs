//! Durations as the scripts take them on their command lines: `90`, `90s`, `30m`, `24h`, `1d`,
//! or a sum such as `1h30m`.

/// Seconds in `text`; `None` unless it is one or more `<digits>[smhd]` parts (no unit:
/// seconds).
pub fn parse_secs(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = match rest.as_bytes().first() {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            _ => 0,
        };
        if unit != 0 {
            rest = &rest[1..];
        }
        total = total.checked_add(n.checked_mul(unit.max(1))?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn units_and_sums() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("24h", 86_400),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("1h02m03s", 3723),
            ("0", 0),
            ("08", 8),
            ("2m30", 150),
        ] {
            assert_eq!(parse_secs(text), Some(secs), "{text}");
        }
        for bad in ["", "m", "1x", "1.5h", "-1", "1h ", " 1", "h1"] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }
}
