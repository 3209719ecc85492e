//! Durations as people write them in flags and environment variables, one
//! grammar for every binary: a number with a unit (`500ms`, `30s`, `2m`,
//! `1h 30m`), or a bare number meaning seconds (`300`), as the original
//! monitor's `--duration 300 --interval 2` had it. And durations as the
//! tools print them ([`short_ms`]), which the history checker's messages use
//! too.

use std::time::Duration;

/// Parses a duration: a unit, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("{s:?} is not a number of seconds: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write it like 500ms, 30s, 2m or 300 (seconds)")
    })
}

/// [`parse_duration`], refusing zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{:?} must be more than zero", s.trim()));
    }
    Ok(d)
}

/// Whole milliseconds, saturating: what the protocol and JSON carry.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// A short duration for people: `450ms`, `27.5s`, `2m05s`, `1h02m`.
pub fn short_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// [`short_ms`] of a `Duration`.
pub fn short(d: Duration) -> String {
    short_ms(millis(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration(" 300 "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn nonsense_is_refused_with_an_example() {
        for bad in ["soon", "", "-5s", "5 parsecs", "99999999999999999999999"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{bad}: {e}");
        }
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(
            parse_positive_duration("0s")
                .unwrap_err()
                .contains("more than zero")
        );
        assert_eq!(parse_positive_duration("2"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(short_ms(450), "450ms");
        assert_eq!(short_ms(27_500), "27.5s");
        assert_eq!(short_ms(125_000), "2m05s");
        assert_eq!(short_ms(3_720_000), "1h02m");
        assert_eq!(short(Duration::from_secs(120)), "2m00s");
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(1_500)), 1_500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
