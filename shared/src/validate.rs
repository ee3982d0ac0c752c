//! Checks that turn raw request fields into values the domain can trust. Each failure
//! is a 400 naming the field.

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

/// Free text: trimmed, between `min` and `max` characters, no control characters other
/// than newlines and tabs.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars < min || chars > max {
        return Err(invalid(field, &format!("must be {min} to {max} characters long")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert_eq!(uuid("id", "3F2A9C4E-1B7D-4C2E-9A6F-0E8D5B1C2A34").unwrap(), "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34");
        for bad in ["", "3f2a9c4e1b7d4c2e9a6f0e8d5b1c2a34", "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a3g", "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a345"] {
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
        assert!(in_range("duration", 5, 1, 60).is_ok());
        assert!(in_range("duration", 61, 1, 60).is_err());
    }
}
