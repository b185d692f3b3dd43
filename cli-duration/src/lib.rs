//! Durations on the command line: `500ms`, `5s`, `1m`, `1h30m` (humantime's syntax) or a bare,
//! possibly fractional number of seconds such as `2` or `0.5`.
//!
//! Its own crate so that the server's binary and the load generator depend on it and accept
//! exactly the same text, while the server's library depends on neither.

use std::time::Duration;

/// Parses a bare number as seconds, anything else with [`humantime::parse_duration`]; rejects
/// negative, infinite and NaN values with a message that shows the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad =
        || format!("'{text}' is not a duration (e.g. 500ms, 5s, 1m, 1h30m, or 0.5 for seconds)");
    if let Ok(secs) = s.parse::<f64>() {
        // try_from_secs_f64 rejects negative, NaN, infinite and too large values alike.
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    humantime::parse_duration(s).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("5s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("2"), Ok(ms(2_000)));
        assert_eq!(parse_duration("0.5"), Ok(ms(500)));
        assert_eq!(parse_duration(" 0.25 "), Ok(ms(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn negative_nan_infinite_and_garbage_are_errors() {
        for bad in [
            "-1",
            "-0.5",
            "-1s",
            "NaN",
            "inf",
            "",
            "5 parsecs",
            "1e400",
            "s",
            "xyz",
            "-5s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("500ms"), "{bad}: {err}");
        }
    }
}
