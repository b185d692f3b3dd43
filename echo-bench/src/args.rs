//! Value parsers shared by the subcommands' flags, and clap's usage errors as one line. Zero and
//! nonsense values are rejected here, so a typo is a usage error (exit status 2) rather than a run
//! of something else.

use std::time::Duration;

use clap::builder::RangedU64ValueParser;

use cli_duration::parse_duration;

/// A whole number from `min` to `max`; anything else is a usage error.
pub fn count(min: u64, max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(min..=max)
}

/// A duration that is not zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A finite rate above zero.
pub fn positive_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: give messages per second above zero, e.g. 10000"
        )),
    }
}

/// Clap's error as one line: its first line, the possible values and tips after it, no usage.
pub fn one_line(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information")
        {
            continue;
        }
        let line = line.trim_start_matches("error: ");
        if !out.is_empty() {
            out.push_str(if line.starts_with('[') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_finite_and_positive() {
        assert_eq!(positive_rate("10000"), Ok(10_000.0));
        assert_eq!(positive_rate("0.5"), Ok(0.5));
        for bad in ["0", "-5", "NaN", "inf", "fast"] {
            assert!(positive_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_durations_are_refused_where_something_must_be_measured() {
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(positive_duration("0").is_err());
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn clap_errors_fold_into_one_line() {
        let rendered = "error: invalid value 'x' for '--setup <SETUP>'\n  [possible values: a, b]\n\n  tip: a similar value exists: 'a'\n\nUsage: echo-bench compare [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "invalid value 'x' for '--setup <SETUP>' [possible values: a, b]; tip: a similar value exists: 'a'"
        );
    }
}
