//! Settings and secrets, read from Spin application variables (the README's "Variables").
//! A missing required setting is a 500 `config_missing` naming the variable.

use std::str::FromStr;

use crate::{ApiError, Platform};

pub fn required(platform: &dyn Platform, name: &str) -> Result<String, ApiError> {
    platform.variable(name).ok_or_else(|| ApiError::config_missing(name))
}

pub fn optional(platform: &dyn Platform, name: &str) -> Option<String> {
    platform.variable(name)
}

pub fn or_default(platform: &dyn Platform, name: &str, default: &str) -> String {
    platform.variable(name).unwrap_or_else(|| default.to_string())
}

/// A numeric or otherwise parsed setting; an unparsable value is a configuration error,
/// not something to guess around.
pub fn parsed<T: FromStr>(platform: &dyn Platform, name: &str, default: T) -> Result<T, ApiError> {
    match platform.variable(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| {
            ApiError::new(500, "config_invalid", format!("The server setting `{name}` has an invalid value."))
        }),
    }
}

/// A comma-separated list setting, trimmed, empties dropped.
pub fn list(platform: &dyn Platform, name: &str) -> Vec<String> {
    platform
        .variable(name)
        .map(|raw| raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}
