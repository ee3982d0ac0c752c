//! The project's JWKS fetched from `supabase_jwks_url`, so a signing-key rotation in
//! Supabase (a standby key published, made current, the old one revoked) reaches every
//! component without a restart.
//!
//! Spin makes a fresh instance per request, so nothing survives in memory between
//! requests: the last good document lives in Postgres (`public.jwks_cache`, SQL in
//! migrations/20250107400000_jwks_cache.sql), one row per URL, shared by every instance.
//! Each verification of an asymmetric token costs one statement, `jwks_cache_lookup`,
//! which returns the cached document and, in the same atomic step, whether this request
//! is the one to fetch a new document. It is, only when the cached one is missing, older
//! than `jwks_max_age_seconds`, or lacks the token's `kid`, and no fetch was started in
//! the last `jwks_min_refresh_seconds` (by any instance). So a flood of tokens with
//! unknown `kid`s, or a JWKS endpoint that is down, costs at most one fetch per interval;
//! a failed fetch keeps the last good document in service.

use std::time::Duration;

use serde_json::Value;

use super::Jwks;
use crate::db::{self, SqlParam};
use crate::http::outbound::OutboundRequest;
use crate::{settings, ApiError, Platform};

/// A JWKS of a few keys is a few KiB; anything far larger is not one.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// The fetch happens inside a user's request: it must not hold it for long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RemoteJwks {
    pub url: String,
    pub max_age_seconds: i32,
    pub min_refresh_seconds: i32,
}

impl RemoteJwks {
    pub fn from_platform(platform: &dyn Platform) -> Result<Option<RemoteJwks>, ApiError> {
        let Some(url) = settings::SUPABASE_JWKS_URL.value(platform) else {
            return Ok(None);
        };
        Ok(Some(RemoteJwks {
            url: url.trim().to_string(),
            max_age_seconds: settings::JWKS_MAX_AGE_SECONDS.parse::<i32>(platform)?.max(0),
            min_refresh_seconds: settings::JWKS_MIN_REFRESH_SECONDS.parse::<i32>(platform)?.max(1),
        }))
    }

    /// The project's current keys as far as this request can know them: the cached
    /// document, or a fresher one when this request won the right to fetch it. `None`
    /// when no document was ever fetched and none could be now.
    pub fn load(&self, platform: &dyn Platform, kid: Option<&str>) -> Result<Option<Jwks>, ApiError> {
        let answer = db::query_json(
            platform,
            "select public.jwks_cache_lookup($1, $2, $3, $4)",
            &[
                SqlParam::Text(self.url.clone()),
                kid.map_or(SqlParam::Null, |kid| SqlParam::Text(kid.to_string())),
                SqlParam::Int32(self.max_age_seconds),
                SqlParam::Int32(self.min_refresh_seconds),
            ],
        )
        .map_err(|error| db::report(platform, "jwks_cache_lookup", error))?;
        let cached = answer.get("document").filter(|d| !d.is_null()).and_then(|d| Jwks::from_value(d).ok());
        if answer.get("fetch").and_then(Value::as_bool) != Some(true) {
            return Ok(cached);
        }
        match self.fetch(platform) {
            Ok((jwks, document)) => {
                let stored = db::query_json(
                    platform,
                    "select public.jwks_cache_store($1, $2)",
                    &[SqlParam::Text(self.url.clone()), SqlParam::Jsonb(document.to_string().into_bytes())],
                );
                if let Err(error) = stored {
                    // The keys are good for this request; the next one fetches again.
                    db::report(platform, "jwks_cache_store", error);
                }
                Ok(Some(jwks))
            }
            Err(reason) => {
                platform
                    .log(&format!("jwks: fetching supabase_jwks_url failed ({reason}); the cached keys stay in use"));
                Ok(cached)
            }
        }
    }

    fn fetch(&self, platform: &dyn Platform) -> Result<(Jwks, Value), String> {
        let request =
            OutboundRequest::new("GET", self.url.clone()).header("accept", "application/json").timeout(FETCH_TIMEOUT);
        let response = platform.send(request).map_err(|error| format!("{error:?}"))?;
        if response.status != 200 {
            return Err(format!("HTTP {}", response.status));
        }
        let body = response.read_all(MAX_DOCUMENT_BYTES).map_err(|error| format!("{error:?}"))?;
        let document: Value = serde_json::from_slice(&body).map_err(|_| "not valid JSON".to_string())?;
        let jwks = Jwks::from_value(&document)?;
        Ok((jwks, document))
    }
}
