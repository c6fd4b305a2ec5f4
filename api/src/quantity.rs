//! Resource quantities in Kubernetes notation: `250m` cpu, `64Mi` memory, `2`, `1.5G`.
//!
//! A [`Quantity`] keeps the text the user wrote (that is what it serializes to) and
//! the exact value it denotes, computed once at parse time with integer arithmetic
//! so `0.1` cpu is exactly 100 millicores.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a text is not a quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number with a known suffix.
    #[error("{0:?} is not a quantity (expected a number with an optional suffix: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)")]
    Invalid(String),
    /// A negative number.
    #[error("{0:?} is not a quantity (must not be negative)")]
    Negative(String),
    /// More than 2^64 - 1 units.
    #[error("{0:?} is too large for a quantity (at most 16Ei - 1)")]
    TooLarge(String),
}

/// A non-negative amount of cpu or memory, e.g. `250m`, `2`, `64Mi`, `1G`, `1e3`.
///
/// Decimal suffixes: `m` (1/1000), `k`, `M`, `G`, `T`, `P`, `E`; binary suffixes:
/// `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`; or a decimal exponent (`1e3`, `5E-1`).
/// Equality compares the text, so `1000m` and `1` are different specs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    /// Value * 1000, rounded up; saturates at `u64::MAX`.
    millis: u64,
    /// Value rounded up to a whole unit.
    units: u64,
}

impl Quantity {
    /// Parses a quantity; see the type docs for the syntax.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let text = s.trim();
        let invalid = || QuantityError::Invalid(s.to_owned());
        if text.starts_with('-') {
            return Err(QuantityError::Negative(s.to_owned()));
        }
        let num_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        // Mantissa as an integer, scaled down by 10^frac_digits.
        let mut mantissa: u128 = 0;
        for c in int_part.chars().chain(frac_part.chars()) {
            let digit = u128::from(c.to_digit(10).ok_or_else(invalid)?);
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(digit))
                .ok_or_else(|| QuantityError::TooLarge(s.to_owned()))?;
        }
        let frac_digits = i64::try_from(frac_part.len()).map_err(|_| invalid())?;
        let (multiplier, exp10): (u128, i64) = match suffix {
            "" => (1, 0),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            _ => {
                let exp = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(invalid)?;
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                    return Err(invalid());
                }
                let e: i64 = exp
                    .parse()
                    .map_err(|_| QuantityError::TooLarge(s.to_owned()))?;
                if e.abs() > 1000 {
                    return Err(QuantityError::TooLarge(s.to_owned()));
                }
                (1, e)
            }
        };
        let too_large = || QuantityError::TooLarge(s.to_owned());
        let units = scale(mantissa, multiplier, exp10 - frac_digits).ok_or_else(too_large)?;
        let units = u64::try_from(units).map_err(|_| too_large())?;
        let millis = scale(mantissa, multiplier, exp10 - frac_digits + 3)
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(u64::MAX);
        Ok(Quantity {
            text: text.to_owned(),
            millis,
            units,
        })
    }

    /// A quantity of `millis` thousandths, written `250m`, or `2` when whole.
    pub fn from_millis(millis: u64) -> Quantity {
        let text = if millis.is_multiple_of(1000) {
            (millis / 1000).to_string()
        } else {
            format!("{millis}m")
        };
        Quantity {
            text,
            millis,
            units: millis.div_ceil(1000),
        }
    }

    /// A quantity of `bytes`, written with the largest binary suffix that divides
    /// it exactly (`4Gi`, `64Mi`), else as a plain number.
    pub fn from_bytes(bytes: u64) -> Quantity {
        const SUFFIXES: [(&str, u32); 6] = [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ];
        let text = SUFFIXES
            .iter()
            .find(|(_, shift)| bytes != 0 && bytes.is_multiple_of(1u64 << shift))
            .map(|(suffix, shift)| format!("{}{suffix}", bytes >> shift))
            .unwrap_or_else(|| bytes.to_string());
        Quantity {
            text,
            millis: bytes.saturating_mul(1000),
            units: bytes,
        }
    }

    /// The value times 1000, rounded up: cpu in millicores (`250m` → 250, `2` → 2000).
    /// Saturates at `u64::MAX`.
    pub fn as_millis(&self) -> u64 {
        self.millis
    }

    /// The value rounded up to a whole unit: memory in bytes (`64Mi` → 67108864).
    pub fn as_bytes(&self) -> u64 {
        self.units
    }

    /// True when the value is zero.
    pub fn is_zero(&self) -> bool {
        self.millis == 0
    }

    /// The text this quantity was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `mantissa * multiplier * 10^exp10`, rounded up; `None` on overflow.
fn scale(mantissa: u128, multiplier: u128, exp10: i64) -> Option<u128> {
    if mantissa == 0 {
        return Some(0);
    }
    let base = mantissa.checked_mul(multiplier)?;
    if exp10 >= 0 {
        let pow = 10u128.checked_pow(u32::try_from(exp10).ok()?)?;
        base.checked_mul(pow)
    } else {
        match u32::try_from(-exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
        {
            Some(div) => Some(base.div_ceil(div)),
            // The divisor exceeds any u128, so the value is a positive fraction below 1.
            None => Some(1),
        }
    }
}

impl Default for Quantity {
    fn default() -> Self {
        Quantity::from_millis(0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// YAML/JSON accept a string or a number (`cpu: 2`, `cpu: 0.5`); binary
    /// formats carry the text.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 250m, 2 or 64Mi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !v.is_finite() {
                    return Err(E::custom(QuantityError::Invalid(v.to_string())));
                }
                self.visit_str(&v.to_string())
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_str(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        // (text, millis, bytes)
        let table: &[(&str, u64, u64)] = &[
            ("250m", 250, 1),
            ("2", 2000, 2),
            ("0", 0, 0),
            ("1.5", 1500, 2),
            ("0.1", 100, 1),
            (".5", 500, 1),
            ("100k", 100_000_000, 100_000),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("64Mi", 64 * 1024 * 1024 * 1000, 64 * 1024 * 1024),
            ("4Gi", 4 * (1 << 30) * 1000, 4 * (1 << 30)),
            ("1.5Ki", 1_536_000, 1536),
            ("1e3", 1_000_000, 1000),
            ("5E-1", 500, 1),
            ("1E", u64::MAX, 1_000_000_000_000_000_000),
            ("15Ei", u64::MAX, 15 << 60),
            ("1m", 1, 1),
            ("0.0001", 1, 1),
        ];
        for (text, millis, bytes) in table {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(q.as_millis(), *millis, "millis of {text}");
            assert_eq!(q.as_bytes(), *bytes, "bytes of {text}");
            assert_eq!(q.to_string(), *text);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for text in [
            "", "64Xi", "abc", "1.2.3", "m", "1 Gi", "NaN", "1e", "1e+", "Mi", "0x10",
        ] {
            assert!(
                matches!(Quantity::parse(text), Err(QuantityError::Invalid(_))),
                "{text:?} should be invalid"
            );
        }
        assert!(matches!(
            Quantity::parse("-1"),
            Err(QuantityError::Negative(_))
        ));
        for text in ["16Ei", "99999999999999999999999999999999999999999", "1e40"] {
            assert!(
                matches!(Quantity::parse(text), Err(QuantityError::TooLarge(_))),
                "{text:?} should be too large"
            );
        }
        assert_eq!(
            Quantity::parse("64Xi").unwrap_err().to_string(),
            r#""64Xi" is not a quantity (expected a number with an optional suffix: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"#
        );
    }

    #[test]
    fn constructors_round_trip_through_text() {
        for m in [0, 1, 250, 1000, 1500, 64_000] {
            let q = Quantity::from_millis(m);
            assert_eq!(Quantity::parse(q.as_str()).expect("parse"), q);
        }
        for b in [0, 1, 1024, 3 << 20, 4 << 30, 12345] {
            let q = Quantity::from_bytes(b);
            assert_eq!(Quantity::parse(q.as_str()).expect("parse"), q);
        }
        assert_eq!(Quantity::from_bytes(4 << 30).as_str(), "4Gi");
        assert_eq!(Quantity::from_millis(250).as_str(), "250m");
    }

    #[test]
    fn serde_accepts_numbers_in_json_and_text_in_postcard() {
        let q: Quantity = serde_json::from_str("2").expect("int");
        assert_eq!(q.as_millis(), 2000);
        let q: Quantity = serde_json::from_str("0.5").expect("float");
        assert_eq!(q.as_millis(), 500);
        let q: Quantity = serde_json::from_str(r#""64Mi""#).expect("string");
        assert_eq!(serde_json::to_string(&q).expect("ser"), r#""64Mi""#);
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        let bytes = postcard::to_stdvec(&q).expect("encode");
        let back: Quantity = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, q);
    }
}
