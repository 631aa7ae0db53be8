//! Human durations: `500ms`, `30s`, `2m`, `1h`, `1.5s`, and `0`.
//!
//! Config files and flags take the same forms, so one parser serves both.

use std::fmt;
use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; `0` alone means zero.
/// Fails with a message naming the expected form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: missing unit (use ms, s, m or h, e.g. 30s)"))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a duration (e.g. 500ms, 30s, 2m)"))?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("{text:?}: too large"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way `parse_duration` reads it back.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_with_a_reason() {
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("30x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999h").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["500ms", "30s", "2m", "1h", "0", "1500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(Human(d).to_string(), text);
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::proptests::{config, explains, mutated};
    use proptest::prelude::*;

    fn durations() -> impl Strategy<Value = String> {
        mutated(&["500ms", "30s", "2m", "1h", "1.5s", "0"], "[0-9.mshx+e -]")
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics_and_explains_on_one_line(text in durations()) {
            if let Err(err) = parse_duration(&text) {
                explains(&text, &err)?;
            }
        }
    }
}
