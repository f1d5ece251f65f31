//! Durations as written in specs: Go/Kubernetes style strings such as `90s`, `5m`,
//! `1h30m`, `250ms`.
//!
//! Kept as the user's string on the wire, so the controller never rewrites the spec,
//! and parsed on use.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Pattern the CRD schema enforces; [`Duration::parse`] accepts exactly the same strings
/// (of at most [`MAX_DURATION_LEN`] characters).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Longest duration string the schema accepts; bounds the cost of CEL rules that read one.
pub const MAX_DURATION_LEN: usize = 64;

/// A duration such as `30s`, `5m` or `1h30m` (units `ms`, `s`, `m`, `h`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": MAX_DURATION_LEN,
        })
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"30s\", \"5m\", \"1h30m\")")]
pub struct DurationError {
    /// The string that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Duration {
    /// Builds a duration from a string without checking it; use [`Duration::parse`] to check.
    pub fn new(s: impl Into<String>) -> Self {
        Duration(s.into())
    }

    /// Parses the string into a [`std::time::Duration`].
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        parse(&self.0)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

/// Parses `1h30m`, `90s`, `1.5s`, `250ms`.
pub fn parse(input: &str) -> Result<std::time::Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    if input.len() > MAX_DURATION_LEN {
        return Err(err("too long"));
    }
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number"));
        }
        let number: f64 = input[start..i]
            .parse()
            .map_err(|_| err("malformed number"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let seconds = match &input[unit_start..i] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total += number * seconds;
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(err("too large"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Formats a duration the way people read it: `4m12s`, `950ms`, `2h0m5s`.
pub fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("30s").unwrap(), D::from_secs(30));
        assert_eq!(parse("5m").unwrap(), D::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), D::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), D::from_millis(250));
        assert_eq!(parse("1.5s").unwrap(), D::from_millis(1500));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        let re_like = |s: &str| parse(s).is_ok();
        for bad in ["", "5", "m", "5x", "-5s", "5 s", "1d"] {
            assert!(!re_like(bad), "{bad:?} should be refused");
        }
        assert!(parse("5").unwrap_err().to_string().contains("missing unit"));
        assert!(parse(&"1s".repeat(MAX_DURATION_LEN / 2)).is_ok());
        assert!(parse(&"1s".repeat(MAX_DURATION_LEN / 2 + 1)).is_err());
    }

    #[test]
    fn human_formats() {
        assert_eq!(human(D::from_millis(950)), "950ms");
        assert_eq!(human(D::from_millis(12_340)), "12.3s");
        assert_eq!(human(D::from_secs(252)), "4m12s");
    }
}
