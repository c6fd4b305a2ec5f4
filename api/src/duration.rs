//! Human durations: `30s`, `5m`, `1h30m`, `500ms`, `2d`, `1.5h`.
//!
//! A [`Duration`] keeps the text the user wrote (that is what it serializes to).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a text is not a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a sequence of numbers with units.
    #[error("{0:?} is not a duration (expected numbers with units ns, us, ms, s, m, h or d, e.g. 30s, 5m, 1h30m)")]
    Invalid(String),
    /// Longer than `u64::MAX` seconds.
    #[error("{0:?} is too long for a duration")]
    TooLarge(String),
}

/// A non-negative length of time written with units, e.g. `30s` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

impl Duration {
    /// Parses a duration: one or more `<number><unit>` parts, the number possibly
    /// with a fraction; a bare `0` is also accepted.
    pub fn parse(s: &str) -> Result<Duration, DurationError> {
        let text = s.trim();
        let invalid = || DurationError::Invalid(s.to_owned());
        let too_large = || DurationError::TooLarge(s.to_owned());
        if text == "0" {
            return Ok(Duration {
                text: text.to_owned(),
                value: std::time::Duration::ZERO,
            });
        }
        if text.is_empty() {
            return Err(invalid());
        }
        let mut rest = text;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let (number, after) = rest.split_at(num_end);
            let unit_end = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_end);
            let per_unit = unit_nanos(unit).ok_or_else(invalid)?;
            let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
            if !int_part
                .chars()
                .chain(frac_part.chars())
                .all(|c| c.is_ascii_digit())
            {
                return Err(invalid());
            }
            let whole: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| too_large())?
            };
            let mut nanos = whole.checked_mul(per_unit).ok_or_else(too_large)?;
            // Fraction digits beyond nanosecond precision are dropped.
            let mut scale = per_unit;
            for c in frac_part.chars() {
                scale /= 10;
                let digit = u128::from(c.to_digit(10).ok_or_else(invalid)?);
                nanos = nanos.checked_add(digit * scale).ok_or_else(too_large)?;
            }
            total = total.checked_add(nanos).ok_or_else(too_large)?;
            rest = after;
        }
        let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_large())?;
        let sub = u32::try_from(total % NANOS_PER_SEC).map_err(|_| too_large())?;
        Ok(Duration {
            text: text.to_owned(),
            value: std::time::Duration::new(secs, sub),
        })
    }

    /// The duration as a standard library duration.
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    /// A duration written in canonical form, e.g. `1h30m`, `1s500ms`, `0s`.
    pub fn from_std(d: std::time::Duration) -> Duration {
        let mut text = String::new();
        let secs = d.as_secs();
        let parts = [
            (secs / 86_400, "d"),
            (secs % 86_400 / 3_600, "h"),
            (secs % 3_600 / 60, "m"),
            (secs % 60, "s"),
            (u64::from(d.subsec_millis()), "ms"),
            (u64::from(d.subsec_micros() % 1000), "us"),
            (u64::from(d.subsec_nanos() % 1000), "ns"),
        ];
        for (n, unit) in parts {
            if n > 0 {
                text.push_str(&format!("{n}{unit}"));
            }
        }
        if text.is_empty() {
            text.push_str("0s");
        }
        Duration { text, value: d }
    }

    /// The text this duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Default for Duration {
    fn default() -> Self {
        Duration::from_std(std::time::Duration::ZERO)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.value
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parse_table() {
        let table: &[(&str, Std)] = &[
            ("30s", Std::from_secs(30)),
            ("5m", Std::from_secs(300)),
            ("24h", Std::from_secs(86_400)),
            ("1h30m", Std::from_secs(5_400)),
            ("500ms", Std::from_millis(500)),
            ("2d", Std::from_secs(172_800)),
            ("1.5h", Std::from_secs(5_400)),
            ("0.5s", Std::from_millis(500)),
            ("10us", Std::from_micros(10)),
            ("7ns", Std::from_nanos(7)),
            ("1m0.25s", Std::from_millis(60_250)),
            ("0", Std::ZERO),
            ("0s", Std::ZERO),
        ];
        for (text, want) in table {
            let d = Duration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_std(), *want, "{text}");
            assert_eq!(d.to_string(), *text);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for text in ["", "30", "5x", "-5s", "s", "1h 30m", "1..5s", "h5"] {
            assert!(
                matches!(Duration::parse(text), Err(DurationError::Invalid(_))),
                "{text:?} should be invalid"
            );
        }
        assert!(matches!(
            Duration::parse("999999999999999999999999d"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn canonical_text_parses_back() {
        for d in [
            Std::ZERO,
            Std::from_secs(5_400),
            Std::from_millis(1_500),
            Std::from_nanos(86_400_000_000_123),
        ] {
            let c = Duration::from_std(d);
            assert_eq!(Duration::parse(c.as_str()).expect("parse").as_std(), d);
        }
        assert_eq!(Duration::from_std(Std::from_secs(5_400)).as_str(), "1h30m");
    }

    #[test]
    fn serde_round_trip() {
        let d: Duration = serde_json::from_str(r#""1h30m""#).expect("json");
        assert_eq!(serde_json::to_string(&d).expect("ser"), r#""1h30m""#);
        let bytes = postcard::to_stdvec(&d).expect("encode");
        assert_eq!(postcard::from_bytes::<Duration>(&bytes).expect("decode"), d);
    }
}
