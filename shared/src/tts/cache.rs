//! The speech cache shared by every instance (table `tts_cache`; the SQL, with its bound
//! and expiry, is `tts_cache_get` / `tts_cache_put` in migrations/20250104000000_tts_cache.sql).
//!
//! - Key: `v1:` + SHA-256 (hex) of the normalised request: the text with surrounding
//!   whitespace trimmed and every run of whitespace made one space (case and punctuation
//!   kept: they change how it is spoken), the voice (lowercase), the resolved model (so an
//!   omitted model and the default share entries), the speed in hundredths, the format and
//!   the normalised instructions. Fields are length-prefixed, so no two different
//!   requests can run together into one key. No user id: entries are shared by all users.
//! - Bound: `tts_cache_max_bytes` (default 100 MiB) of audio in total; least recently
//!   used entries go first. One entry holds at most [`MAX_ENTRY_BYTES`] (and never more
//!   than the bound); larger answers are streamed but not cached.
//! - Expiry: `tts_cache_ttl_seconds` (default 7 days) after synthesis, hits do not extend it.
//! - Either setting at 0 turns the cache off.
//!
//! The cache is an optimisation: when the database fails, the request goes upstream and
//! the failure is logged.

use sha2::{Digest, Sha256};

use crate::db::{self, SqlParam, SqlValue};
use crate::{config, ApiError, Platform};

pub const DEFAULT_MAX_BYTES: i64 = 100 * 1024 * 1024;
pub const DEFAULT_TTL_SECONDS: i32 = 7 * 24 * 60 * 60;
/// About 5 minutes of 24 kHz 16-bit PCM: the longest speech OpenAI's 4096-character
/// input yields in the largest format; anything bigger is not worth a row.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: i64,
    pub ttl_seconds: i32,
}

impl CacheSettings {
    pub fn from_platform(platform: &dyn Platform) -> Result<CacheSettings, ApiError> {
        Ok(CacheSettings {
            max_bytes: config::parsed(platform, "tts_cache_max_bytes", DEFAULT_MAX_BYTES)?.max(0),
            ttl_seconds: config::parsed(platform, "tts_cache_ttl_seconds", DEFAULT_TTL_SECONDS)?.max(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.ttl_seconds > 0
    }

    /// The most one entry may hold.
    pub fn entry_limit(&self) -> usize {
        usize::try_from(self.max_bytes).unwrap_or(usize::MAX).min(MAX_ENTRY_BYTES)
    }
}

/// Trims and collapses whitespace runs into one space.
pub fn normalise_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The fields that make two requests the same speech.
pub struct KeyParts<'a> {
    pub text: &'a str,
    pub voice: &'a str,
    pub model: &'a str,
    pub speed_hundredths: i64,
    pub format: &'a str,
    pub instructions: Option<&'a str>,
}

pub fn key(parts: &KeyParts) -> String {
    let mut hasher = Sha256::new();
    let speed = parts.speed_hundredths.to_string();
    let instructions = parts.instructions.map(normalise_text).unwrap_or_default();
    let voice = parts.voice.to_ascii_lowercase();
    for field in [normalise_text(parts.text).as_str(), &voice, parts.model, &speed, parts.format, &instructions] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1:{hex}")
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub provider: String,
    pub content_type: String,
    pub audio: Vec<u8>,
}

/// The entry for `key` if present and not expired (and marks it used).
pub fn get(platform: &dyn Platform, key: &str, settings: &CacheSettings) -> Result<Option<Hit>, db::DbError> {
    // A miss is a row of nulls: see `db::query_row` for why a statement never finds nothing.
    let row = db::query_row(
        platform,
        "select hit.provider, hit.content_type, hit.audio
           from (values (1)) as one (n)
           left join lateral public.tts_cache_get($1, $2) as hit on true",
        &[SqlParam::Text(key.to_string()), SqlParam::Int32(settings.ttl_seconds)],
    )?;
    let mut values = row.into_iter();
    match (values.next(), values.next(), values.next()) {
        (Some(SqlValue::Null), Some(SqlValue::Null), Some(SqlValue::Null)) => Ok(None),
        (Some(SqlValue::Text(provider)), Some(SqlValue::Text(content_type)), Some(SqlValue::Bytes(audio))) => {
            Ok(Some(Hit { provider, content_type, audio }))
        }
        _ => Err(db::DbError::Conversion("unexpected tts_cache_get row".into())),
    }
}

/// Stores an answer, evicting to stay within the bound.
pub fn put(
    platform: &dyn Platform,
    key: &str,
    provider: &str,
    content_type: &str,
    audio: Vec<u8>,
    settings: &CacheSettings,
) -> Result<(), db::DbError> {
    db::query_json(
        platform,
        "select public.tts_cache_put($1, $2, $3, $4, $5, $6)",
        &[
            SqlParam::Text(key.to_string()),
            SqlParam::Text(provider.to_string()),
            SqlParam::Text(content_type.to_string()),
            SqlParam::Bytes(audio),
            SqlParam::Int64(settings.max_bytes),
            SqlParam::Int32(settings.ttl_seconds),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> KeyParts<'_> {
        KeyParts { text, voice: "alloy", model: "gpt-4o-mini-tts", speed_hundredths: 100, format: "mp3", instructions: None }
    }

    #[test]
    fn tts_key_normalises_whitespace_only() {
        assert_eq!(key(&parts("Breathe  in.\n")), key(&parts(" Breathe in.")));
        assert_ne!(key(&parts("Breathe in.")), key(&parts("breathe in.")));
        assert_eq!(key(&KeyParts { voice: "ALLOY", ..parts("a") }), key(&parts("a")));
        assert_ne!(key(&KeyParts { speed_hundredths: 125, ..parts("a") }), key(&parts("a")));
        assert_ne!(key(&KeyParts { format: "wav", ..parts("a") }), key(&parts("a")));
        assert_ne!(key(&KeyParts { instructions: Some("calm"), ..parts("a") }), key(&parts("a")));
        assert!(key(&parts("a")).starts_with("v1:") && key(&parts("a")).len() == 67);
    }

    #[test]
    fn tts_key_fields_cannot_run_together() {
        let a = KeyParts { voice: "ab", model: "c", ..parts("x") };
        let b = KeyParts { voice: "a", model: "bc", ..parts("x") };
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn tts_cache_settings() {
        let platform = crate::testing::FakePlatform::with_vars(&[("tts_cache_max_bytes", "1000")]);
        let settings = CacheSettings::from_platform(&platform).unwrap();
        assert_eq!((settings.max_bytes, settings.ttl_seconds, settings.entry_limit()), (1000, DEFAULT_TTL_SECONDS, 1000));
        let off = crate::testing::FakePlatform::with_vars(&[("tts_cache_ttl_seconds", "0")]);
        assert!(!CacheSettings::from_platform(&off).unwrap().enabled());
    }
}
