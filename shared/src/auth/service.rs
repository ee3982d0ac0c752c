//! Service-only endpoints (the Stripe reconciler, and every future operator job): the
//! caller is the project's server, proven by one of:
//!
//! - a secret API key (`sb_secret_…`), one of those in the Spin variable
//!   `supabase_secret_keys` (comma separated, so a new key can be added before the old
//!   one is deleted in Supabase's dashboard), compared in constant time;
//! - the legacy `service_role` JWT, verified like any token (signature, `exp`), while the
//!   project still has its legacy keys.
//!
//! The credential is read from `Authorization: Bearer` and from `apikey`: supabase-js sends
//! a new-format key only as `apikey` when there is no user session. The publishable key
//! (`sb_publishable_…`) is public, shipped in every app: it is refused with 403, as is a
//! signed-in user's token.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{bearer_token, verified_claims, AuthConfig, AuthError, SERVICE_ROLE};
use crate::{settings, ApiError, ApiRequest, Platform};

/// Supabase's secret API keys start with this.
pub const SECRET_KEY_PREFIX: &str = "sb_secret_";
/// Supabase's publishable (public) API key starts with this.
pub const PUBLISHABLE_KEY_PREFIX: &str = "sb_publishable_";

/// Ok when the request carries a server credential (see the module docs); otherwise the
/// refusal of the first credential sent (`Authorization` before `apikey`), or 401
/// `missing_token` when there is none.
pub fn authenticate_service(request: &ApiRequest, platform: &dyn Platform) -> Result<(), ApiError> {
    let mut credentials: Vec<Result<&str, AuthError>> = Vec::new();
    if request.header("authorization").is_some_and(|h| !h.trim().is_empty()) {
        credentials.push(bearer_token(request.header("authorization")));
    }
    if let Some(apikey) = request.header("apikey").map(str::trim).filter(|k| !k.is_empty()) {
        credentials.push(Ok(apikey));
    }
    if credentials.is_empty() {
        let mut missing = ApiError::from(AuthError::MissingToken);
        missing.message = "This endpoint is for the project's server jobs: send a secret key (sb_secret_…) as \
                           `apikey` or `Authorization: Bearer <key>`."
            .to_string();
        return Err(missing);
    }
    let mut first_refusal = None;
    for credential in credentials {
        let refusal = match credential.map_err(ApiError::from).and_then(|c| check(c, platform)) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        first_refusal.get_or_insert(refusal);
    }
    Err(first_refusal.unwrap_or_else(|| AuthError::MissingToken.into()))
}

fn check(credential: &str, platform: &dyn Platform) -> Result<(), ApiError> {
    if credential.starts_with(PUBLISHABLE_KEY_PREFIX) {
        return Err(ApiError::forbidden(
            "secret_key_required",
            "This endpoint is for the project's server jobs: the publishable key is public; send a secret key \
             (sb_secret_…) as `apikey` or `Authorization: Bearer <key>`.",
        ));
    }
    if credential.starts_with(SECRET_KEY_PREFIX) {
        let keys = settings::SUPABASE_SECRET_KEYS.list(platform);
        if is_one_of(credential, &keys) {
            return Ok(());
        }
        return Err(ApiError::unauthorized(
            "invalid_api_key",
            "The secret key is not one this server accepts (it may have been rotated out); use a current secret \
             key of the project.",
        ));
    }
    // A JWT: the legacy service_role key (or a user's token, refused below).
    let mut config = AuthConfig::from_platform(platform)?;
    config.load_signing_keys(platform, credential)?;
    let now_unix = platform.now_unix_ms().div_euclid(1000);
    let claims = verified_claims(credential, &config, now_unix).map_err(ApiError::from)?;
    if claims.get("role").and_then(serde_json::Value::as_str) != Some(SERVICE_ROLE) {
        return Err(ApiError::forbidden(
            "service_role_required",
            "This endpoint is for the project's server jobs: send a secret key (sb_secret_…) or the legacy \
             service_role key as `apikey` or `Authorization: Bearer <key>`.",
        ));
    }
    Ok(())
}

/// Whether `candidate` equals one of `keys`, in time independent of where they differ:
/// both sides are hashed first, so neither a key's content nor its length shows in the
/// timing, and every key is compared (no early exit on a match).
fn is_one_of(candidate: &str, keys: &[String]) -> bool {
    let candidate = Sha256::digest(candidate.as_bytes());
    keys.iter()
        .fold(subtle::Choice::from(0), |found, key| found | Sha256::digest(key.as_bytes()).ct_eq(&candidate))
        .into()
}

#[cfg(test)]
mod tests {
    use super::is_one_of;

    #[test]
    fn secret_key_comparison() {
        let keys = vec!["sb_secret_new".to_string(), "sb_secret_old".to_string()];
        assert!(is_one_of("sb_secret_new", &keys));
        assert!(is_one_of("sb_secret_old", &keys));
        assert!(!is_one_of("sb_secret_ne", &keys));
        assert!(!is_one_of("sb_secret_neww", &keys));
        assert!(!is_one_of("sb_secret_gone", &keys));
        assert!(!is_one_of("sb_secret_new", &[]));
    }
}
