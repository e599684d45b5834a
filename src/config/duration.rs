//! Durations as operators write them in definitions: `500ms`, `5s`, `2min`, `1h30m`.
//! Parsed here (pure) so the error can say exactly which part was not understood.

use std::time::Duration;

/// Parses `"5s"`, `"250ms"`, `"1m30s"`, `"2min"`, `"1h"`. A bare number is refused: an operator
/// who writes `30` may mean seconds or milliseconds, and guessing wrong is worse than asking.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"5s\" or \"500ms\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration; write e.g. \"5s\", \"500ms\", \"2min\", \"1h30m\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        let one = match unit {
            "ms" => Duration::from_millis(1),
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "" => {
                return Err(format!(
                    "{s:?} has no unit; write e.g. \"{n}s\" or \"{n}ms\""
                ))
            }
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use ms, s, min or h)"
                ))
            }
        };
        let part = one
            .checked_mul(u32::try_from(n).map_err(|_| format!("{s:?}: number too large"))?)
            .ok_or_else(|| format!("{s:?}: too long"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{s:?}: too long"))?;
        rest = rest[unit_len..].trim_start();
    }
    if total > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than 24h, the longest duration shim accepts (drain, timeouts, intervals)"
        ));
    }
    Ok(total)
}

/// The longest duration accepted anywhere (a drain, a stop or health timeout, an interval, a
/// backoff cap, `--lock-timeout`): longer is a typo, and would keep a deploy or a stop
/// waiting for days.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Formats a duration the way systemd and operators read it (`1min 30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [("h", 3600), ("min", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_ambiguous_or_unknown() {
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999h").is_err());
    }

    #[test]
    fn durations_are_bounded_by_a_day() {
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("23h59min60s"), Ok(MAX_DURATION));
        let e = parse_duration("99999999h").unwrap_err();
        assert!(e.contains("longer than 24h"), "{e}");
        assert!(parse_duration("24h1s")
            .unwrap_err()
            .contains("longer than 24h"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["250ms", "5s", "1min 30s", "2h"] {
            let d = parse_duration(&s.replace(' ', "")).unwrap();
            assert_eq!(format_duration(d), s);
        }
    }
}

/// Parses a size: `"512M"`, `"2G"`, `"64K"`, `"1T"` (powers of 1024, as systemd's
/// `MemoryMax=`), or a plain number of bytes. None if it is not one, or overflows.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod bytes_tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_in_powers_of_1024_and_nonsense_does_not() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        for bad in [
            "",
            "M",
            "1.5G",
            "-1M",
            "12 M",
            "10X",
            "99999999999999999999T",
            "1e9",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }
}
