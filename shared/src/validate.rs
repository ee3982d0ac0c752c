//! Checks that turn raw request fields into values the domain can trust. Each failure
//! is a 400 naming the field.

use serde::Deserialize as _;

use crate::ApiError;

fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::bad_request("invalid_field", format!("Field `{field}` {what}."))
}

/// A UUID in its canonical lowercase hyphenated form.
pub fn uuid(field: &str, value: &str) -> Result<String, ApiError> {
    if is_uuid(value) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(invalid(field, "must be a UUID like 3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34"))
    }
}

pub fn is_uuid(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// An identifier-like token (ego state, voice, phase): 1..=max of `[A-Za-z0-9_-]`.
pub fn slug(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value.to_string())
    } else {
        Err(invalid(field, &format!("must be 1 to {max} letters, digits, '_' or '-'")))
    }
}

/// An ego state (`guardian`, `sage`, ...) as a request names it: a slug of at most
/// [`EgoState::MAX_LEN`] characters (the `sessions.ego_state` check in SQL says the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgoState(String);

impl EgoState {
    pub const MAX_LEN: usize = 64;

    /// The `ego_state` field of a request, or the 400 naming it.
    pub fn parse(value: &str) -> Result<EgoState, ApiError> {
        slug("ego_state", value, Self::MAX_LEN).map(EgoState)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for EgoState {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EgoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id the app gives a session it reports: a UUID, kept in its lowercase form so a
/// retry with the id in capitals is the same session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// The `session_id` field of a request, or the 400 naming it.
    pub fn parse(value: &str) -> Result<SessionId, ApiError> {
        uuid("session_id", value).map(SessionId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text: no control characters other than tab, newline and carriage return; at
/// most `max` characters as sent and at least `min` once trimmed; answered trimmed.
/// openapi.yaml states exactly this (a `pattern` and `maxLength`), so the limits apply to
/// the value as sent rather than to what is left after trimming.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, ApiError> {
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(invalid(field, "must not contain control characters"));
    }
    let trimmed = value.trim();
    if trimmed.chars().count() < min || value.chars().count() > max {
        return Err(invalid(field, &format!("must be {min} to {max} characters long")));
    }
    Ok(trimmed.to_string())
}

/// A JSON integer for serde's `deserialize_with`: also `438.0` or `4.38e2`, which JSON
/// Schema (and so openapi.yaml's `type: integer`) counts as integers; `438.5` is refused.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Number::deserialize(deserializer)? {
        n if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
        n => match n.as_f64() {
            // Within ±2^53 every integral f64 is exact, and far beyond any field's range.
            Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(f as i64),
            _ => Err(D::Error::custom(format!("invalid type: number `{n}`, expected an integer"))),
        },
    }
}

pub fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    if value < min || value > max {
        Err(invalid(field, &format!("must be between {min} and {max}")))
    } else {
        Ok(value)
    }
}

/// An RFC 3339 timestamp (`2025-01-06T08:30:00Z`, `2025-01-06T09:30:00.250+01:00`) as
/// milliseconds since the Unix epoch, years 1970 to 9999. Parsed here, strictly, so the
/// database never sees a date it would refuse (a 500) and equal instants compare equal
/// however they were written.
pub fn timestamp_millis(field: &str, value: &str) -> Result<i64, ApiError> {
    parse_rfc3339_millis(value).ok_or_else(|| invalid(field, "must be an RFC 3339 timestamp like 2025-01-06T08:30:00Z"))
}

fn parse_rfc3339_millis(value: &str) -> Option<i64> {
    let b = value.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i).is_some_and(|x| x.eq_ignore_ascii_case(&c));
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if at(i, b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
        // Milliseconds: the first three digits of the fraction, padded.
        millis = (0..3).fold(0, |n, k| n * 10 + if start + k < i { i64::from(b[start + k] - b'0') } else { 0 });
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && at(i + 3, b':') => {
            let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's
    // days_from_civil).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert_eq!(uuid("id", "3F2A9C4E-1B7D-4C2E-9A6F-0E8D5B1C2A34").unwrap(), "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34");
        for bad in [
            "",
            "3f2a9c4e1b7d4c2e9a6f0e8d5b1c2a34",
            "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a3g",
            "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a345",
        ] {
            assert!(uuid("id", bad).is_err(), "{bad}");
        }
        assert!(uuid("protocol_id", "x").unwrap_err().message.contains("protocol_id"));
    }

    #[test]
    fn slugs_and_text() {
        assert!(slug("ego_state", "guardian", 64).is_ok());
        assert!(slug("ego_state", "", 64).is_err());
        assert!(slug("ego_state", "a b", 64).is_err());
        assert!(slug("voice_id", "../../v1/admin", 64).is_err());
        assert_eq!(text("intent", "  calm  ", 1, 10).unwrap(), "calm");
        assert!(text("intent", "   ", 1, 10).is_err());
        assert!(text("intent", "ééééééééééé", 1, 10).is_err());
        assert!(text("intent", "a\u{0}b", 1, 10).is_err());
        // Limits and control characters apply to the value as sent, as openapi.yaml says.
        assert!(text("intent", "\u{b}calm", 1, 10).is_err());
        assert!(text("intent", "calm      x", 1, 10).is_err());
        assert!(text("intent", " calm     ", 1, 10).is_ok());
        assert_eq!(text("intent", "\r\n\tcalm\n", 1, 10).unwrap(), "calm");
        assert!(in_range("duration", 5, 1, 60).is_ok());
        assert!(in_range("duration", 61, 1, 60).is_err());
    }

    #[test]
    fn ego_states_and_session_ids_carry_their_rule() {
        assert_eq!(EgoState::parse("inner-child_2").unwrap().as_str(), "inner-child_2");
        for bad in ["", "a b", "../x", &"a".repeat(EgoState::MAX_LEN + 1)] {
            assert_eq!(
                EgoState::parse(bad).unwrap_err().message,
                "Field `ego_state` must be 1 to 64 letters, digits, '_' or '-'."
            );
        }
        assert!(EgoState::parse(&"a".repeat(EgoState::MAX_LEN)).is_ok());
        let id = SessionId::parse("3F2A9C4E-1B7D-4C2E-9A6F-0E8D5B1C2A34").unwrap();
        assert_eq!(id.as_str(), "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34");
        assert!(SessionId::parse("not-a-uuid").unwrap_err().message.contains("`session_id`"));
    }

    #[test]
    fn integers_as_json_schema_counts_them() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "integer")]
            n: i64,
        }
        let n = |json: &str| serde_json::from_str::<Body>(json).map(|b| b.n);
        assert_eq!(n(r#"{"n": 438}"#).unwrap(), 438);
        assert_eq!(n(r#"{"n": 438.0}"#).unwrap(), 438);
        assert_eq!(n(r#"{"n": 4.38e2}"#).unwrap(), 438);
        assert_eq!(n(r#"{"n": -0.0}"#).unwrap(), 0);
        for bad in [
            r#"{"n": 438.5}"#,
            r#"{"n": "438"}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": null}"#,
            r#"{"n": 18446744073709551615}"#,
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let ms = |v: &str| timestamp_millis("started_at", v);
        assert_eq!(ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(ms("2025-01-06T08:30:00Z").unwrap(), 1_736_152_200_000);
        assert_eq!(ms("2025-01-06T09:30:00.25+01:00").unwrap(), 1_736_152_200_250);
        assert_eq!(ms("2025-01-06t08:30:00.123456789z").unwrap(), 1_736_152_200_123);
        assert_eq!(ms("2025-01-06T02:00:00-06:30").unwrap(), 1_736_152_200_000);
        assert_eq!(ms("2024-02-29T00:00:00Z").unwrap(), 1_709_164_800_000);
        assert_eq!(ms("2000-03-01T00:00:00Z").unwrap(), 951_868_800_000);
        for bad in [
            "",
            "2025-01-06",
            "2025-01-06T08:30:00",
            "2025-01-06 08:30:00Z",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2025-01-32T00:00:00Z",
            "2025-01-06T24:00:00Z",
            "2025-01-06T08:60:00Z",
            "2025-01-06T08:30:60Z",
            "2025-01-06T08:30:00.Z",
            "2025-01-06T08:30:00.1234567890Z",
            "2025-01-06T08:30:00+0100",
            "2025-01-06T08:30:00+24:00",
            "2025-01-06T08:30:00Zjunk",
            "1969-12-31T23:59:59Z",
            "+2025-01-06T08:30:00Z",
            "2025-01-06T08:30:00\u{e9}",
            "\u{ff12}025-01-06T08:30:00Z",
            "now",
        ] {
            assert!(ms(bad).is_err(), "{bad:?}");
        }
        assert!(ms("x").unwrap_err().message.contains("started_at"));
    }
}
