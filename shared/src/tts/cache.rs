//! The speech cache shared by every instance (table `tts_cache`; the SQL is `tts_cache_get`
//! in migrations/20250104000000_tts_cache.sql and `tts_cache_store`, with the bound and
//! eviction, in migrations/20250106100100_tts_cache_buckets.sql).
//!
//! - Key: `v1:` + SHA-256 (hex) of the normalised request: the text with surrounding
//!   whitespace trimmed and every run of whitespace made one space (case and punctuation
//!   kept: they change how it is spoken), the voice (lowercase), the resolved model (so an
//!   omitted model and the default share entries), the speed in hundredths, the format and
//!   the normalised instructions. Fields are length-prefixed, so no two different
//!   requests can run together into one key. No user id: entries are shared by all users.
//! - Bound: `tts_cache_max_bytes` (default 100 MiB) of audio in total, split evenly over
//!   up to [`MAX_BUCKETS`] buckets by key; a put locks and evicts only within its bucket.
//!   Eviction order: expired, then entries never hit since stored (oldest first), then
//!   least recently used; so one user's stream of one-off texts evicts itself before the
//!   entries others use. One entry holds at most `tts_cache_max_entry_bytes` (default
//!   [`DEFAULT_MAX_ENTRY_BYTES`], about a minute of mp3) and never more than a bucket's
//!   share; larger answers are streamed but not cached.
//! - Expiry: `tts_cache_ttl_seconds` (default 7 days) after synthesis, hits do not extend it.
//! - Either setting at 0 turns the cache off.
//!
//! The cache is an optimisation: when the database fails, the request goes upstream and
//! the failure is logged.

use sha2::{Digest, Sha256};

use crate::db::{self, SqlParam, SqlValue};
use crate::{settings, ApiError, Platform};

/// Buckets, each its own lock and share of the bound.
pub const MAX_BUCKETS: i64 = 16;
/// A bucket holds at least this many full-size entries (fewer buckets when the bound is
/// small), so a bucket's share is never taken by one or two entries.
const MIN_ENTRIES_PER_BUCKET: i64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: i64,
    pub ttl_seconds: i32,
    /// `tts_cache_max_entry_bytes`, before the bucket's share caps it.
    pub max_entry_bytes: i64,
}

impl CacheSettings {
    pub fn from_platform(platform: &dyn Platform) -> Result<CacheSettings, ApiError> {
        Ok(CacheSettings {
            max_bytes: settings::TTS_CACHE_MAX_BYTES.parse::<i64>(platform)?.max(0),
            ttl_seconds: settings::TTS_CACHE_TTL_SECONDS.parse::<i32>(platform)?.max(0),
            max_entry_bytes: settings::TTS_CACHE_MAX_ENTRY_BYTES.parse::<i64>(platform)?.max(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.ttl_seconds > 0 && self.max_entry_bytes > 0
    }

    /// How many buckets the bound is split into: 1 to [`MAX_BUCKETS`].
    pub fn buckets(&self) -> i64 {
        let entry = self.max_entry_bytes.min(self.max_bytes).max(1);
        (self.max_bytes / (entry.saturating_mul(MIN_ENTRIES_PER_BUCKET))).clamp(1, MAX_BUCKETS)
    }

    /// The bytes one bucket may hold.
    pub fn bucket_bytes(&self) -> i64 {
        self.max_bytes / self.buckets()
    }

    /// The most one entry may hold.
    pub fn entry_limit(&self) -> usize {
        usize::try_from(self.max_entry_bytes.min(self.bucket_bytes()).max(0)).unwrap_or(usize::MAX)
    }

    /// The bucket of a key from [`key`]: its hash's first 32 bits, modulo the count.
    pub fn bucket_of(&self, key: &str) -> i32 {
        let hash = key.strip_prefix("v1:").and_then(|hex| hex.get(..8)).and_then(|h| u32::from_str_radix(h, 16).ok());
        (i64::from(hash.unwrap_or(0)) % self.buckets()) as i32
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

/// Stores an answer in its bucket, evicting within the bucket to stay within its share.
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
        "select public.tts_cache_store($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            SqlParam::Text(key.to_string()),
            SqlParam::Text(provider.to_string()),
            SqlParam::Text(content_type.to_string()),
            SqlParam::Bytes(audio),
            SqlParam::Int32(settings.bucket_of(key)),
            SqlParam::Int32(settings.buckets() as i32),
            SqlParam::Int64(settings.bucket_bytes()),
            SqlParam::Int32(settings.ttl_seconds),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> KeyParts<'_> {
        KeyParts {
            text,
            voice: "alloy",
            model: "gpt-4o-mini-tts",
            speed_hundredths: 100,
            format: "mp3",
            instructions: None,
        }
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
        let platform = crate::fakes::FakePlatform::with_vars(&[("tts_cache_max_bytes", "1000")]);
        let settings = CacheSettings::from_platform(&platform).unwrap();
        assert_eq!((settings.max_bytes, settings.ttl_seconds, settings.entry_limit()), (1000, 7 * 24 * 60 * 60, 1000));
        assert_eq!((settings.buckets(), settings.bucket_of(&key(&parts("a")))), (1, 0));
        let off = crate::fakes::FakePlatform::with_vars(&[("tts_cache_ttl_seconds", "0")]);
        assert!(!CacheSettings::from_platform(&off).unwrap().enabled());
    }

    #[test]
    fn tts_cache_default_bound_is_split_and_entries_are_small() {
        let settings = CacheSettings::from_platform(&crate::fakes::FakePlatform::with_vars(&[])).unwrap();
        assert_eq!(settings.buckets(), 12);
        assert_eq!(settings.entry_limit(), 1024 * 1024);
        assert!(settings.bucket_bytes() * settings.buckets() <= 100 * 1024 * 1024);
        assert!(settings.bucket_bytes() >= 8 * settings.entry_limit() as i64);
        let mut seen = std::collections::HashSet::new();
        for text in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"] {
            let bucket = settings.bucket_of(&key(&parts(text)));
            assert!((0..12).contains(&bucket));
            seen.insert(bucket);
        }
        assert!(seen.len() > 4, "keys spread over the buckets: {seen:?}");
        let huge = CacheSettings { max_bytes: i64::MAX, ..settings };
        assert_eq!(huge.buckets(), MAX_BUCKETS);
    }
}
