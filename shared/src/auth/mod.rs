//! Supabase access tokens and server keys (docs/deploy.md, "Supabase keys").
//!
//! Every user-facing endpoint calls [`authenticate`]: it reads `Authorization: Bearer
//! <token>`, verifies the JWS signature (HS256 with the project's legacy JWT secret, or
//! ES256 or RS256 with a key from the project's JWKS), then the claims Supabase puts in a
//! user's access token (`exp`, `nbf`, `aud`, `role`, `sub`). Only then is the payload
//! trusted. Service-only endpoints call [`authenticate_service`] instead (`service.rs`).
//!
//! The token is attacker-controlled input: nothing here panics on it, nothing about it is
//! echoed back or logged, and the algorithm is chosen by the server's configuration, not
//! by the token: an HS256 token is only ever checked against the HS256 secret, so a public
//! key can never be abused as an HMAC key, and a JWKS key verifies only the one algorithm
//! its type names (an RS256 token naming an EC key's `kid` is refused, and so on).

mod jwks;
mod remote;
mod service;

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

pub use jwks::{Jwks, PublicKey};
pub use remote::RemoteJwks;
pub use service::{authenticate_service, PUBLISHABLE_KEY_PREFIX, SECRET_KEY_PREFIX};

use crate::{settings, ApiError, ApiRequest, Platform};

/// Supabase access tokens are ~1 KiB; anything far larger is not one, and is refused
/// before any decoding work is spent on it.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf` between Supabase Auth and this server.
pub const DEFAULT_LEEWAY_SECS: i64 = 30;

/// The only role these endpoints serve: a signed-in user. `anon` (the public API key) and
/// `service_role` (a server key that bypasses row-level security) are refused.
const USER_ROLE: &str = "authenticated";

/// The caller, as proven by a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// `sub`: the user's id in `auth.users`, as a canonical lowercase uuid.
    pub user_id: String,
    pub email: Option<String>,
    pub role: String,
    /// Supabase's `is_anonymous` claim: an anonymous sign-in, which anyone can repeat
    /// without limit (see [`require_paid_access`]).
    pub is_anonymous: bool,
}

/// How tokens are verified: from the Spin variables `supabase_jwt_secret`, `supabase_jwks`,
/// `supabase_jwks_url` (with `jwks_max_age_seconds`, `jwks_min_refresh_seconds`) and
/// `jwt_audience`.
#[derive(Clone)]
pub struct AuthConfig {
    /// The legacy JWT secret; Supabase uses the string's bytes as the HMAC key.
    pub hs256_secret: Option<Vec<u8>>,
    /// The project's signing keys, for projects on asymmetric (ES256, RS256) keys: those of
    /// `supabase_jwks`, and once [`AuthConfig::load_signing_keys`] ran, the fetched ones.
    pub jwks: Option<Jwks>,
    /// Where the project publishes its JWKS, when keys are fetched rather than pinned.
    pub remote_jwks: Option<RemoteJwks>,
    pub audience: String,
    pub leeway_secs: i64,
}

// Written by hand so the secret can never reach a log through `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "<redacted>"))
            .field("jwks", &self.jwks)
            .field("remote_jwks", &self.remote_jwks)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl AuthConfig {
    /// The whole configuration, checked: 500 `config_missing` when no way to verify a
    /// token is configured, `config_invalid` when `supabase_jwks` is not a JWKS.
    pub fn from_platform(platform: &dyn Platform) -> Result<AuthConfig, ApiError> {
        let config = AuthConfig {
            hs256_secret: hs256_secret(platform),
            jwks: pinned_jwks(platform)?,
            remote_jwks: RemoteJwks::from_platform(platform)?,
            audience: audience(platform),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        };
        if config.hs256_secret.is_none() && config.jwks.is_none() && config.remote_jwks.is_none() {
            return Err(ApiError::config_missing(settings::SUPABASE_JWT_SECRET.name));
        }
        Ok(config)
    }

    /// Only what `token` can be verified with: the HS256 secret for an HS256 token; for an
    /// ES256 or RS256 one the pinned JWKS, and the fetched one's settings only when the
    /// pinned keys lack its `kid`. Each setting read is a host call that costs CPU on every
    /// request under Spin (docs/benchmark-notes.md), so a request reads no more than it
    /// uses. Not checked for completeness: [`authenticate`] does that on any refusal.
    fn for_token(platform: &dyn Platform, token: &str) -> Result<AuthConfig, ApiError> {
        let hint = token_key_hint(token);
        let (alg, kid) = hint.as_ref().map(|(alg, kid)| (alg.as_str(), kid.as_deref())).unwrap_or(("", None));
        let mut config = AuthConfig {
            hs256_secret: None,
            jwks: None,
            remote_jwks: None,
            audience: audience(platform),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        };
        match alg {
            "HS256" => config.hs256_secret = hs256_secret(platform),
            "ES256" | "RS256" => {
                config.jwks = pinned_jwks(platform)?;
                let pinned = kid.is_some_and(|kid| config.jwks.as_ref().is_some_and(|jwks| jwks.has_kid(kid)));
                if !pinned {
                    config.remote_jwks = RemoteJwks::from_platform(platform)?;
                }
            }
            _ => {}
        }
        Ok(config)
    }

    /// Adds the fetched JWKS (see `remote.rs`) to the keys, when `token` is an asymmetric
    /// one whose `kid` the pinned `supabase_jwks` does not hold. HS256 and malformed
    /// tokens cost no statement: verification refuses or accepts them without a JWKS.
    pub fn load_signing_keys(&mut self, platform: &dyn Platform, token: &str) -> Result<(), ApiError> {
        let Some(remote) = &self.remote_jwks else {
            return Ok(());
        };
        let Some((alg, kid)) = token_key_hint(token) else {
            return Ok(());
        };
        if !matches!(alg.as_str(), "ES256" | "RS256") {
            return Ok(());
        }
        let pinned = self.jwks.as_ref();
        if kid.as_deref().is_some_and(|kid| pinned.is_some_and(|jwks| jwks.has_kid(kid))) {
            return Ok(());
        }
        match remote.load(platform, kid.as_deref())? {
            Some(fetched) => {
                self.jwks = Some(match self.jwks.take() {
                    Some(pinned) => pinned.merged(&fetched),
                    None => fetched,
                });
            }
            // Only before the first fetch ever succeeded (or while another instance makes
            // it): not the token's fault, so not a 401 that would sign the user out.
            None if self.jwks.is_none() => {
                return Err(ApiError::service_unavailable(
                    "signing_keys_unavailable",
                    "The server could not load the project's signing keys yet; retry in a few seconds.",
                )
                .with_header("retry-after", "5"));
            }
            None => {}
        }
        Ok(())
    }
}

fn hs256_secret(platform: &dyn Platform) -> Option<Vec<u8>> {
    settings::SUPABASE_JWT_SECRET.value(platform).map(String::into_bytes)
}

/// `supabase_jwks`, when it holds keys: `{"keys":[]}` (what a project without asymmetric
/// keys publishes) verifies nothing.
fn pinned_jwks(platform: &dyn Platform) -> Result<Option<Jwks>, ApiError> {
    let Some(document) = settings::SUPABASE_JWKS.value(platform) else {
        return Ok(None);
    };
    let jwks = Jwks::parse(&document).map_err(|reason| {
        ApiError::new(
            500,
            "config_invalid",
            format!("The server setting `supabase_jwks` is not a usable JWKS document: {reason}."),
        )
    })?;
    Ok(Some(jwks).filter(|jwks| !jwks.is_empty()))
}

fn audience(platform: &dyn Platform) -> String {
    settings::JWT_AUDIENCE.value(platform).unwrap_or_else(|| USER_ROLE.to_string())
}

/// The `alg` and `kid` of a token's header, when it has a decodable one; nothing is
/// trusted from it beyond choosing which keys to load.
fn token_key_hint(token: &str) -> Option<(String, Option<String>)> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let header = decode_json_object(token.split('.').next()?).ok()?;
    let alg = header.get("alg")?.as_str()?.to_string();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_string);
    Some((alg, kid))
}

/// Why a token was refused. Every variant is a 401 with its own code; the messages say
/// what to do and never repeat anything from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    MissingToken,
    MalformedToken,
    UnsupportedAlgorithm,
    InvalidSignature,
    UnknownKey,
    TokenExpired,
    TokenNotYetValid,
    WrongAudience,
    WrongRole,
    InvalidSubject,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedToken => "malformed_token",
            AuthError::UnsupportedAlgorithm => "unsupported_algorithm",
            AuthError::InvalidSignature => "invalid_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongRole => "wrong_role",
            AuthError::InvalidSubject => "invalid_subject",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::MissingToken => "Sign in and send the access token as `Authorization: Bearer <token>`.",
            AuthError::MalformedToken => {
                "The access token is not a well-formed JWT; send the session's access_token as \
                 `Authorization: Bearer <token>`."
            }
            AuthError::UnsupportedAlgorithm => {
                "The access token is signed with an algorithm this server does not accept."
            }
            AuthError::InvalidSignature => "The access token's signature is not valid; sign in again.",
            AuthError::UnknownKey => "The access token is signed with a key this server does not know; sign in again.",
            AuthError::TokenExpired => "The access token has expired; refresh the session and retry.",
            AuthError::TokenNotYetValid => "The access token is not valid yet; check the device clock.",
            AuthError::WrongAudience => "The access token was not issued for this API.",
            AuthError::WrongRole => "This endpoint needs a signed-in user's access token, not an API key.",
            AuthError::InvalidSubject => "The access token does not name a user.",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for AuthError {}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        // RFC 6750 §3: tell the client whether the request lacked a token or the token failed.
        let challenge = match error {
            AuthError::MissingToken => r#"Bearer error="invalid_request""#,
            _ => r#"Bearer error="invalid_token""#,
        };
        ApiError::unauthorized(error.code(), error.message()).with_header("www-authenticate", challenge)
    }
}

/// The signed-in user behind a request, or the 401 to answer with (500 when the server's
/// auth settings are missing or invalid).
pub fn authenticate(request: &ApiRequest, platform: &dyn Platform) -> Result<AuthenticatedUser, ApiError> {
    // A refusal is given only once the whole configuration checks out, so a server that
    // cannot verify anything answers 500 (its operator's problem), never a 401 that would
    // sign the user out.
    authenticate_user(request, platform).or_else(|refusal| {
        AuthConfig::from_platform(platform)?;
        Err(refusal)
    })
}

fn authenticate_user(request: &ApiRequest, platform: &dyn Platform) -> Result<AuthenticatedUser, ApiError> {
    let token = bearer_token(request.header("authorization"))?;
    // Supabase's new API keys are not JWTs and never name a user: a client without a
    // session that sends one as a Bearer token is told so, not that the JWT is malformed.
    if token.starts_with(SECRET_KEY_PREFIX) || token.starts_with(PUBLISHABLE_KEY_PREFIX) {
        return Err(AuthError::WrongRole.into());
    }
    let mut config = AuthConfig::for_token(platform, token)?;
    config.load_signing_keys(platform, token)?;
    let now_unix = platform.now_unix_ms().div_euclid(1000);
    Ok(verify_access_token(token, &config, now_unix)?)
}

/// The gate in front of everything that costs the operator money: a paid upstream call
/// (OpenAI, ElevenLabs) or a purchase. Anonymous sign-ins are free and unlimited, so
/// each would bring a fresh set of quotas; unless `anonymous_paid_access` is `true` they
/// get 403 `anonymous_not_allowed` (free things, such as a tts cache hit or a local
/// fallback, stay open to them).
pub fn require_paid_access(platform: &dyn Platform, user: &AuthenticatedUser) -> Result<(), ApiError> {
    if !user.is_anonymous || settings::ANONYMOUS_PAID_ACCESS.parse::<bool>(platform)? {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "anonymous_not_allowed",
        "Guest accounts cannot use this feature; sign up or sign in with an account to use it.",
    ))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.map(str::trim).unwrap_or("");
    if header.is_empty() {
        return Err(AuthError::MissingToken);
    }
    let (scheme, token) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedToken);
    }
    match token.trim() {
        "" => Err(AuthError::MissingToken),
        token => Ok(token),
    }
}

/// Verifies a Supabase access token and returns the user it names.
pub fn verify_access_token(token: &str, config: &AuthConfig, now_unix: i64) -> Result<AuthenticatedUser, AuthError> {
    let claims = signed_claims(token, config)?;
    check_claims(&claims, config, now_unix)
}

/// The role of Supabase's legacy server-to-server key (the `service_role` key, or a token
/// minted with that role): operators' jobs such as the Stripe reconciler.
pub const SERVICE_ROLE: &str = "service_role";

/// The claims of a token whose signature verifies and whose `exp` (required) and `nbf`
/// have not passed; nothing else is checked here.
pub(crate) fn verified_claims(
    token: &str,
    config: &AuthConfig,
    now_unix: i64,
) -> Result<Map<String, Value>, AuthError> {
    let claims = signed_claims(token, config)?;
    check_times(&claims, config, now_unix)?;
    Ok(claims)
}

/// The payload of a token whose signature verifies.
fn signed_claims(token: &str, config: &AuthConfig) -> Result<Map<String, Value>, AuthError> {
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::MalformedToken);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::MalformedToken);
    };
    let header = decode_json_object(header_b64)?;
    // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
    if header.contains_key("crit") {
        return Err(AuthError::MalformedToken);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| AuthError::MalformedToken)?;
    // The signature covers the two encoded segments exactly as sent.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {
            let secret = config.hs256_secret.as_deref().ok_or(AuthError::UnsupportedAlgorithm)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::InvalidSignature)?;
            mac.update(signing_input.as_bytes());
            // `verify_slice` compares in constant time (and rejects a wrong length).
            mac.verify_slice(&signature).map_err(|_| AuthError::InvalidSignature)?;
        }
        Some(alg @ ("ES256" | "RS256")) => {
            let jwks = config.jwks.as_ref().ok_or(AuthError::UnsupportedAlgorithm)?;
            let kid = match header.get("kid") {
                None => None,
                Some(Value::String(kid)) => Some(kid.as_str()),
                Some(_) => return Err(AuthError::MalformedToken),
            };
            let key = jwks.find(kid).ok_or(AuthError::UnknownKey)?;
            // The key's type decides the algorithm; a token claiming another is refused
            // before any verification work.
            if key.algorithm() != alg {
                return Err(AuthError::UnsupportedAlgorithm);
            }
            if !key.verify(signing_input.as_bytes(), &signature) {
                return Err(AuthError::InvalidSignature);
            }
        }
        // `none`, HS384/512, RS384/512, PS*, EdDSA, a missing or non-string alg: never accepted.
        _ => return Err(AuthError::UnsupportedAlgorithm),
    }

    decode_json_object(payload_b64)
}

fn check_times(claims: &Map<String, Value>, config: &AuthConfig, now_unix: i64) -> Result<(), AuthError> {
    // A token without `exp` would be valid forever; Supabase always sets it.
    let exp = numeric_date(claims.get("exp"))?.ok_or(AuthError::MalformedToken)?;
    if now_unix > exp.saturating_add(config.leeway_secs) {
        return Err(AuthError::TokenExpired);
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"))? {
        if now_unix.saturating_add(config.leeway_secs) < nbf {
            return Err(AuthError::TokenNotYetValid);
        }
    }
    Ok(())
}

fn check_claims(
    claims: &Map<String, Value>,
    config: &AuthConfig,
    now_unix: i64,
) -> Result<AuthenticatedUser, AuthError> {
    check_times(claims, config, now_unix)?;
    let audience_matches = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == config.audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(config.audience.as_str())),
        _ => false,
    };
    if !audience_matches {
        return Err(AuthError::WrongAudience);
    }
    let role = claims.get("role").and_then(Value::as_str);
    if role != Some(USER_ROLE) {
        return Err(AuthError::WrongRole);
    }
    let user_id =
        claims.get("sub").and_then(Value::as_str).and_then(canonical_uuid).ok_or(AuthError::InvalidSubject)?;
    // Supabase sends `"email": ""` for users without one (phone, anonymous sign-in).
    let email = claims.get("email").and_then(Value::as_str).filter(|e| !e.is_empty()).map(str::to_string);
    let is_anonymous = claims.get("is_anonymous").and_then(Value::as_bool) == Some(true);
    Ok(AuthenticatedUser { user_id, email, role: USER_ROLE.to_string(), is_anonymous })
}

/// A base64url (unpadded) segment holding a JSON object.
fn decode_json_object(segment: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::MalformedToken)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::MalformedToken),
    }
}

/// An optional NumericDate claim (RFC 7519 §2: seconds, possibly fractional). A present
/// claim of any other type (a string, say) makes the token malformed.
fn numeric_date(value: Option<&Value>) -> Result<Option<i64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            // `as` saturates for out-of-range floats; JSON numbers are never NaN.
            (None, Some(f)) => Ok(Some(f.floor() as i64)),
            (None, None) => Err(AuthError::MalformedToken),
        },
        Some(_) => Err(AuthError::MalformedToken),
    }
}

/// `sub` as a canonical lowercase uuid (8-4-4-4-12 hex digits), or `None`.
fn canonical_uuid(sub: &str) -> Option<String> {
    let bytes = sub.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let well_formed = bytes.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    well_formed.then(|| sub.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
