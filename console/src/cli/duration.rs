//! Durations on the command line: `250us`, `500ms`, `2s`, `1.5s`, `1m`, `1m30s`, `2h`.

use std::time::Duration;

const UNITS: &[(&str, u128)] = &[
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration made of one or more `NUMBER UNIT` parts. A bare number is refused:
/// `--timeout 5` could mean seconds or milliseconds, and guessing wrong is costly.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = |why: &str| format!("invalid duration {text:?}: {why} (examples: 500ms, 2s, 1m30s)");
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match UNITS.iter().find(|(u, _)| *u == unit) {
            Some((_, scale)) => *scale,
            None if unit.is_empty() => return Err(bad("a unit is missing")),
            None => {
                return Err(bad(&format!(
                    "unknown unit {unit:?}; use us, ms, s, m or h"
                )))
            }
        };
        nanos = nanos
            .checked_add(scaled(num, scale).ok_or_else(|| bad("the number is invalid"))?)
            .ok_or_else(|| bad("it is too long"))?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad("it is too long"))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// `num` (digits with at most one '.') times `scale` nanoseconds, in exact integer arithmetic.
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    if !frac.is_empty() {
        // Digits beyond nanosecond precision cannot matter; cutting them also bounds 10^len.
        let frac = &frac[..frac.len().min(18)];
        let digits: u128 = frac.parse().ok()?;
        total = total.checked_add(digits.checked_mul(scale)? / 10u128.pow(frac.len() as u32))?;
    }
    Some(total)
}

/// For clap: a duration greater than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {text:?}: it must be greater than zero"
        ));
    }
    Ok(d)
}

/// Short human form for messages: `500ms`, `2s`, `1m30s`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths are enough for messages; 2000.4 ms reads better as `2s` than as `2.0s`.
        let tenths = (ms + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn accepts_units_and_compounds() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0.001s"), Ok(ms(1)));
        assert_eq!(parse_duration(" 2s "), Ok(ms(2000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_ambiguous_or_broken_input() {
        for bad in [
            "", "5", "s", "2 s", "2sec", "1.2.3s", ".s", "-1s", "1d", "ms5", "2s5",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad:?}: {err}");
        }
        assert!(parse_duration("5").unwrap_err().contains("unit is missing"));
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn positive_refuses_zero() {
        assert!(positive_duration("0ms").is_err());
        assert_eq!(positive_duration("1ms"), Ok(ms(1)));
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(format_duration(ms(500)), "500ms");
        assert_eq!(format_duration(ms(2000)), "2s");
        assert_eq!(format_duration(ms(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_micros(2_000_400)), "2s");
        assert_eq!(format_duration(ms(2049)), "2s");
        assert_eq!(format_duration(ms(2050)), "2.1s");
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(ms(120_000)), "2m");
        assert_eq!(format_duration(ms(3_720_000)), "1h02m");
    }
}
