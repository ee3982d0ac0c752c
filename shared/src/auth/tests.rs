use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use proptest::prelude::*;
use serde_json::{json, Value};
use sha2::Sha256;

use super::*;
use crate::fakes::FakePlatform;

const NOW: i64 = 1_700_000_000; // FakePlatform's clock, in seconds
const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const USER: &str = "6f1c2d3e-4b5a-4789-9abc-def012345678";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> Value {
    json!({
        "sub": USER, "aud": "authenticated", "role": "authenticated", "email": "ana@example.com",
        "iat": NOW - 60, "exp": NOW + 3600, "is_anonymous": false,
    })
}

fn with(mut value: Value, key: &str, replacement: Value) -> Value {
    value[key] = replacement;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().map(|m| m.remove(key));
    value
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

fn hs256_with(header: Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(&header, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

fn hs256(claims: &Value) -> String {
    hs256_with(json!({"alg": "HS256", "typ": "JWT"}), claims, SECRET.as_bytes())
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn es256_with(header: Value, claims: &Value, key: &SigningKey) -> String {
    let input = signing_input(&header, claims);
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

fn es256(claims: &Value, kid: &str, key: &SigningKey) -> String {
    es256_with(json!({"alg": "ES256", "typ": "JWT", "kid": kid}), claims, key)
}

fn jwk(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    let xy = &point.as_bytes()[1..];
    json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
           "x": b64(&xy[..32]), "y": b64(&xy[32..]), "key_ops": ["verify"], "ext": true})
}

fn jwks(keys: &[Value]) -> Jwks {
    Jwks::parse(&json!({ "keys": keys }).to_string()).unwrap()
}

fn secret_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        jwks: None,
        remote_jwks: None,
        audience: "authenticated".into(),
        leeway_secs: 30,
    }
}

fn jwks_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: None,
        jwks: Some(jwks(&[jwk(&key(1), "k1"), jwk(&key(2), "k2")])),
        remote_jwks: None,
        audience: "authenticated".into(),
        leeway_secs: 30,
    }
}

fn both_config() -> AuthConfig {
    AuthConfig { hs256_secret: Some(SECRET.into()), ..jwks_config() }
}

fn verify(token: &str, config: &AuthConfig) -> Result<AuthenticatedUser, AuthError> {
    verify_access_token(token, config, NOW)
}

// --- signatures and algorithms --------------------------------------------------------

#[test]
fn valid_hs256_token_names_the_user() {
    let user = verify(&hs256(&claims()), &secret_config()).unwrap();
    assert_eq!(
        user,
        AuthenticatedUser {
            user_id: USER.into(),
            email: Some("ana@example.com".into()),
            role: "authenticated".into(),
            is_anonymous: false,
        }
    );
}

#[test]
fn anonymous_sign_ins_are_marked_and_kept_from_paid_calls() {
    let anonymous = verify(&hs256(&with(claims(), "is_anonymous", json!(true))), &secret_config()).unwrap();
    assert!(anonymous.is_anonymous);
    // Only the boolean `true` marks a guest; a missing claim is a regular account.
    assert!(!verify(&hs256(&without(claims(), "is_anonymous")), &secret_config()).unwrap().is_anonymous);
    assert!(!verify(&hs256(&with(claims(), "is_anonymous", json!("true"))), &secret_config()).unwrap().is_anonymous);

    let closed = crate::fakes::FakePlatform::with_vars(&[]);
    let error = require_paid_access(&closed, &anonymous).unwrap_err();
    assert_eq!((error.status, error.code), (403, "anonymous_not_allowed"));
    let regular = AuthenticatedUser { is_anonymous: false, ..anonymous.clone() };
    assert!(require_paid_access(&closed, &regular).is_ok());
    let open = crate::fakes::FakePlatform::with_vars(&[(crate::settings::ANONYMOUS_PAID_ACCESS.name, "true")]);
    assert!(require_paid_access(&open, &anonymous).is_ok());
    let typo = crate::fakes::FakePlatform::with_vars(&[(crate::settings::ANONYMOUS_PAID_ACCESS.name, "yes")]);
    assert_eq!(require_paid_access(&typo, &anonymous).unwrap_err().code, "config_invalid");
}

#[test]
fn valid_es256_token_picks_the_key_by_kid() {
    let config = jwks_config();
    assert_eq!(verify(&es256(&claims(), "k1", &key(1)), &config).unwrap().user_id, USER);
    assert_eq!(verify(&es256(&claims(), "k2", &key(2)), &config).unwrap().user_id, USER);
    // Both kinds of token when both are configured (a project mid-migration).
    assert!(verify(&es256(&claims(), "k2", &key(2)), &both_config()).is_ok());
    assert!(verify(&hs256(&claims()), &both_config()).is_ok());
}

#[test]
fn es256_token_without_kid_uses_the_only_key_and_nothing_else() {
    let token = es256_with(json!({"alg": "ES256"}), &claims(), &key(1));
    let single = AuthConfig { jwks: Some(jwks(&[jwk(&key(1), "k1")])), ..jwks_config() };
    assert!(verify(&token, &single).is_ok());
    assert_eq!(verify(&token, &jwks_config()), Err(AuthError::UnknownKey));
}

#[test]
fn es256_with_unknown_kid_or_the_wrong_key_is_refused() {
    assert_eq!(verify(&es256(&claims(), "k9", &key(1)), &jwks_config()), Err(AuthError::UnknownKey));
    // Signed by key 3, claiming to be key 1.
    assert_eq!(verify(&es256(&claims(), "k1", &key(3)), &jwks_config()), Err(AuthError::InvalidSignature));
    let numeric_kid = es256_with(json!({"alg": "ES256", "kid": 1}), &claims(), &key(1));
    assert_eq!(verify(&numeric_kid, &jwks_config()), Err(AuthError::MalformedToken));
}

#[test]
fn es256_signature_in_der_is_refused() {
    let input = signing_input(&json!({"alg": "ES256", "kid": "k1"}), &claims());
    let signature: Signature = key(1).sign(input.as_bytes());
    let der = signature.to_der();
    let token = format!("{input}.{}", b64(der.as_bytes()));
    assert_eq!(verify(&token, &jwks_config()), Err(AuthError::InvalidSignature));
}

#[test]
fn tampered_payload_is_refused() {
    let forged = b64(with(claims(), "sub", json!("00000000-0000-4000-8000-000000000000")).to_string().as_bytes());
    for (token, config) in [(hs256(&claims()), secret_config()), (es256(&claims(), "k1", &key(1)), jwks_config())] {
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(verify(&tampered, &config), Err(AuthError::InvalidSignature));
    }
}

#[test]
fn tampered_signature_is_refused() {
    for (token, config) in [(hs256(&claims()), secret_config()), (es256(&claims(), "k1", &key(1)), jwks_config())] {
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[5] ^= 0x01;
        assert_eq!(verify(&format!("{input}.{}", b64(&bytes)), &config), Err(AuthError::InvalidSignature));
        bytes.pop();
        assert_eq!(verify(&format!("{input}.{}", b64(&bytes)), &config), Err(AuthError::InvalidSignature));
        assert_eq!(verify(&format!("{input}."), &config), Err(AuthError::InvalidSignature));
    }
}

#[test]
fn wrong_secret_is_refused() {
    let token = hs256_with(json!({"alg": "HS256"}), &claims(), b"another-projects-secret-of-32-chars!!");
    assert_eq!(verify(&token, &secret_config()), Err(AuthError::InvalidSignature));
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let unsigned = format!("{}.", signing_input(&json!({"alg": "none", "typ": "JWT"}), &claims()));
    let config = both_config();
    assert_eq!(verify(&unsigned, &config), Err(AuthError::UnsupportedAlgorithm));
    for alg in [
        json!("none"),
        json!("None"),
        json!("hs256"),
        json!("HS512"),
        json!("HS384"),
        json!("RS384"),
        json!("PS256"),
        json!("ES384"),
        json!("EdDSA"),
        json!(""),
        json!(null),
        json!(["HS256"]),
    ] {
        // Even with a valid HMAC over the input: the algorithm alone decides.
        let token = hs256_with(json!({ "alg": alg }), &claims(), SECRET.as_bytes());
        assert_eq!(verify(&token, &config), Err(AuthError::UnsupportedAlgorithm), "alg {alg}");
    }
    let no_alg = hs256_with(json!({"typ": "JWT"}), &claims(), SECRET.as_bytes());
    assert_eq!(verify(&no_alg, &config), Err(AuthError::UnsupportedAlgorithm));
}

#[test]
fn hs256_token_is_refused_without_a_secret_even_if_hmaced_with_the_public_key() {
    // Algorithm confusion: an attacker HMACs with the (public) ES256 key material.
    let point = key(1).verifying_key().to_sec1_point(false);
    let public_jwks = json!({ "keys": [jwk(&key(1), "k1")] }).to_string();
    for public in [point.as_bytes(), public_jwks.as_bytes()] {
        let token = hs256_with(json!({"alg": "HS256", "kid": "k1"}), &claims(), public);
        assert_eq!(verify(&token, &jwks_config()), Err(AuthError::UnsupportedAlgorithm));
        assert_eq!(verify(&token, &both_config()), Err(AuthError::InvalidSignature));
    }
    assert_eq!(verify(&hs256(&claims()), &jwks_config()), Err(AuthError::UnsupportedAlgorithm));
    assert_eq!(verify(&es256(&claims(), "k1", &key(1)), &secret_config()), Err(AuthError::UnsupportedAlgorithm));
}

#[test]
fn critical_header_extensions_are_refused() {
    let token = hs256_with(json!({"alg": "HS256", "crit": ["b64"], "b64": false}), &claims(), SECRET.as_bytes());
    assert_eq!(verify(&token, &secret_config()), Err(AuthError::MalformedToken));
}

// --- claims ---------------------------------------------------------------------------

#[test]
fn expiry_is_checked_with_leeway() {
    let config = secret_config();
    let at = |exp: Value| verify(&hs256(&with(claims(), "exp", exp)), &config);
    assert_eq!(at(json!(NOW - 3600)), Err(AuthError::TokenExpired));
    assert_eq!(at(json!(NOW - 31)), Err(AuthError::TokenExpired));
    assert!(at(json!(NOW - 30)).is_ok(), "within the 30 s leeway");
    assert!(at(json!(NOW)).is_ok());
    assert!(at(json!((NOW - 10) as f64 + 0.5)).is_ok(), "fractional NumericDate");
    assert!(at(json!(u64::MAX)).is_ok(), "far future saturates, no overflow");
    assert_eq!(at(json!(i64::MIN)), Err(AuthError::TokenExpired));
    assert_eq!(at(json!(-1e300)), Err(AuthError::TokenExpired));
    assert_eq!(at(json!((NOW + 3600).to_string())), Err(AuthError::MalformedToken), "number as string");
    assert_eq!(at(json!(null)), Err(AuthError::MalformedToken));
    assert_eq!(verify(&hs256(&without(claims(), "exp")), &config), Err(AuthError::MalformedToken));
}

#[test]
fn not_before_is_checked_with_leeway() {
    let config = secret_config();
    let at = |nbf: Value| verify(&hs256(&with(claims(), "nbf", nbf)), &config);
    assert_eq!(at(json!(NOW + 31)), Err(AuthError::TokenNotYetValid));
    assert!(at(json!(NOW + 30)).is_ok());
    assert!(at(json!(NOW - 100)).is_ok());
    assert_eq!(at(json!("soon")), Err(AuthError::MalformedToken));
}

#[test]
fn audience_must_match_as_string_or_array_member() {
    let config = secret_config();
    let at = |aud: Value| verify(&hs256(&with(claims(), "aud", aud)), &config);
    assert_eq!(at(json!("anon")), Err(AuthError::WrongAudience));
    assert_eq!(at(json!("Authenticated")), Err(AuthError::WrongAudience));
    assert!(at(json!(["other", "authenticated"])).is_ok());
    assert_eq!(at(json!(["other"])), Err(AuthError::WrongAudience));
    assert_eq!(at(json!([])), Err(AuthError::WrongAudience));
    assert_eq!(at(json!({"aud": "authenticated"})), Err(AuthError::WrongAudience));
    assert_eq!(verify(&hs256(&without(claims(), "aud")), &config), Err(AuthError::WrongAudience));
    let custom = AuthConfig { audience: "libero".into(), ..secret_config() };
    assert!(verify(&hs256(&with(claims(), "aud", json!("libero"))), &custom).is_ok());
}

#[test]
fn only_signed_in_users_are_accepted() {
    let config = secret_config();
    let at = |role: Value| verify(&hs256(&with(claims(), "role", role)), &config);
    assert_eq!(at(json!("anon")), Err(AuthError::WrongRole));
    assert_eq!(at(json!("service_role")), Err(AuthError::WrongRole));
    assert_eq!(at(json!("supabase_admin")), Err(AuthError::WrongRole));
    assert_eq!(at(json!(["authenticated"])), Err(AuthError::WrongRole));
    assert_eq!(verify(&hs256(&without(claims(), "role")), &config), Err(AuthError::WrongRole));
}

#[test]
fn subject_must_be_a_uuid_and_is_canonicalised() {
    let config = secret_config();
    let at = |sub: Value| verify(&hs256(&with(claims(), "sub", sub)), &config);
    for bad in [
        json!("not-a-uuid"),
        json!(""),
        json!("6f1c2d3e4b5a47899abcdef012345678"),
        json!("6f1c2d3e-4b5a-4789-9abc-def01234567g"),
        json!("{6f1c2d3e-4b5a-4789-9abc-def0123456}"),
        json!(" 6f1c2d3e-4b5a-4789-9abc-def01234567"),
        json!(42),
        json!(null),
    ] {
        assert_eq!(at(bad.clone()), Err(AuthError::InvalidSubject), "sub {bad}");
    }
    assert_eq!(verify(&hs256(&without(claims(), "sub")), &config), Err(AuthError::InvalidSubject));
    assert_eq!(at(json!(USER.to_uppercase())).unwrap().user_id, USER);
}

#[test]
fn email_is_optional() {
    let config = secret_config();
    assert_eq!(verify(&hs256(&with(claims(), "email", json!(""))), &config).unwrap().email, None);
    assert_eq!(verify(&hs256(&without(claims(), "email")), &config).unwrap().email, None);
    assert_eq!(verify(&hs256(&with(claims(), "email", json!(7))), &config).unwrap().email, None);
}

// --- malformed input ------------------------------------------------------------------

#[test]
fn garbage_empty_and_huge_tokens_are_refused() {
    let config = both_config();
    let valid = hs256(&claims());
    let huge = format!("{valid}{}", "A".repeat(MAX_TOKEN_LEN));
    let padded = {
        let (input, signature) = valid.rsplit_once('.').unwrap();
        format!("{input}.{signature}=")
    };
    assert_eq!(verify("", &config), Err(AuthError::MissingToken));
    for garbage in [
        "garbage",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b.c.d",
        "!!!.###.$$$",
        "eyJ.eyJ.",
        "\u{0}\u{ff}",
        "e30.e30.e30",
        "W10.W10.",
        "bnVsbA.bnVsbA.",
        "MQ.MQ.",
        &huge,
        &padded,
        &format!("{valid}.extra"),
        &valid.replacen('.', "", 1),
    ] {
        assert_eq!(verify(garbage, &config).map(|_| ()).map_err(|_| ()), Err(()), "token {garbage:.40}");
    }
    assert_eq!(verify(&huge, &config), Err(AuthError::MalformedToken));
    // Header and claims must be JSON objects, even when properly signed.
    let array_header = format!("{}.{}", b64(b"[\"HS256\"]"), b64(claims().to_string().as_bytes()));
    assert_eq!(verify(&format!("{array_header}.AAAA"), &config), Err(AuthError::MalformedToken));
    for payload in [json!([1, 2]), json!("text"), json!(null), json!(1)] {
        let token = hs256_with(json!({"alg": "HS256"}), &payload, SECRET.as_bytes());
        assert_eq!(verify(&token, &config), Err(AuthError::MalformedToken));
    }
}

// --- the request and the platform -----------------------------------------------------

fn request(authorization: Option<&str>) -> ApiRequest {
    ApiRequest {
        method: "POST".into(),
        path: "/".into(),
        headers: authorization.map(|v| ("authorization".to_string(), v.to_string())).into_iter().collect(),
        ..ApiRequest::default()
    }
}

fn secret_platform() -> FakePlatform {
    FakePlatform::with_vars(&[("supabase_jwt_secret", SECRET)])
}

#[test]
fn authenticate_reads_the_bearer_header() {
    let token = hs256(&claims());
    for header in [format!("Bearer {token}"), format!("bearer {token}"), format!("BEARER  {token} ")] {
        assert_eq!(authenticate(&request(Some(&header)), &secret_platform()).unwrap().user_id, USER);
    }
    let code = |header: Option<&str>| authenticate(&request(header), &secret_platform()).unwrap_err().code;
    assert_eq!(code(None), "missing_token");
    assert_eq!(code(Some("")), "missing_token");
    assert_eq!(code(Some("Bearer")), "missing_token");
    assert_eq!(code(Some("Bearer   ")), "missing_token");
    assert_eq!(code(Some(&token)), "malformed_token", "no Bearer prefix");
    assert_eq!(code(Some(&format!("Basic {token}"))), "malformed_token");
    assert_eq!(code(Some(&format!("Bearer{token}"))), "malformed_token");
    assert_eq!(code(Some("Bearer a b")), "malformed_token");
}

#[test]
fn a_verified_token_reads_only_the_settings_its_algorithm_needs() {
    let reads = |platform: &FakePlatform, token: &str| {
        platform.variable_reads.borrow_mut().clear();
        assert_eq!(authenticate(&request(Some(&format!("Bearer {token}"))), platform).unwrap().user_id, USER);
        platform.variable_reads.take()
    };
    let document = json!({"keys": [jwk(&key(1), "k1")]}).to_string();
    let platform = FakePlatform::with_vars(&[("supabase_jwt_secret", SECRET), ("supabase_jwks", &document)]);
    assert_eq!(reads(&platform, &hs256(&claims())), ["jwt_audience", "supabase_jwt_secret"]);
    assert_eq!(reads(&platform, &es256(&claims(), "k1", &key(1))), ["jwt_audience", "supabase_jwks"]);

    // A kid the pinned keys lack: the fetched JWKS's settings too (no URL here, so a 401).
    platform.variable_reads.borrow_mut().clear();
    let unknown = es256(&claims(), "k2", &key(2));
    let error = authenticate(&request(Some(&format!("Bearer {unknown}"))), &platform).unwrap_err();
    assert_eq!(error.code, "unknown_key");
    assert!(platform.variable_reads.borrow().contains(&"supabase_jwks_url".to_string()));
}

#[test]
fn any_refusal_checks_the_whole_configuration_first() {
    let token = hs256(&claims());
    let bearer = format!("Bearer {token}");
    for (vars, code) in [
        (vec![], "config_missing"),
        (vec![("supabase_jwks", r#"{"keys":[]}"#)], "config_missing"),
        (vec![("supabase_jwks", "not json")], "config_invalid"),
    ] {
        for header in [None, Some(bearer.as_str()), Some("Bearer not-a-token")] {
            let error = authenticate(&request(header), &FakePlatform::with_vars(&vars)).unwrap_err();
            assert_eq!((error.status, error.code), (500, code), "{vars:?} {header:?}");
        }
    }
    // A broken pinned JWKS does not stand in the way of the HS256 secret.
    let platform = FakePlatform::with_vars(&[("supabase_jwt_secret", SECRET), ("supabase_jwks", "not json")]);
    assert_eq!(authenticate(&request(Some(&bearer)), &platform).unwrap().user_id, USER);
    let error = authenticate(&request(Some("Bearer not-a-token")), &platform).unwrap_err();
    assert_eq!((error.status, error.code), (500, "config_invalid"));
}

#[test]
fn authenticate_uses_the_platform_clock() {
    let mut platform = secret_platform();
    let token = hs256(&with(claims(), "exp", json!(NOW + 10)));
    assert!(authenticate(&request(Some(&format!("Bearer {token}"))), &platform).is_ok());
    platform.now_unix_ms = (NOW + 41) * 1000;
    let error = authenticate(&request(Some(&format!("Bearer {token}"))), &platform).unwrap_err();
    assert_eq!(error.code, "token_expired");
}

#[test]
fn auth_errors_are_401_with_a_bearer_challenge() {
    let missing = ApiError::from(AuthError::MissingToken);
    assert_eq!((missing.status, missing.code), (401, "missing_token"));
    assert_eq!(
        missing.headers,
        vec![("www-authenticate".to_string(), r#"Bearer error="invalid_request""#.to_string())]
    );
    let all = [
        AuthError::MalformedToken,
        AuthError::UnsupportedAlgorithm,
        AuthError::InvalidSignature,
        AuthError::UnknownKey,
        AuthError::TokenExpired,
        AuthError::TokenNotYetValid,
        AuthError::WrongAudience,
        AuthError::WrongRole,
        AuthError::InvalidSubject,
    ];
    let mut codes = vec![missing.code];
    for error in all {
        let api = ApiError::from(error);
        assert_eq!(api.status, 401);
        assert_eq!(api.headers[0].1, r#"Bearer error="invalid_token""#);
        codes.push(api.code);
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 10, "every error has its own code");
}

#[test]
fn config_comes_from_spin_variables() {
    let error = AuthConfig::from_platform(&FakePlatform::with_vars(&[])).unwrap_err();
    assert_eq!((error.status, error.code), (500, "config_missing"));
    assert!(error.message.contains("supabase_jwt_secret"));

    let empty_jwks = FakePlatform::with_vars(&[("supabase_jwks", r#"{"keys":[]}"#)]);
    assert_eq!(AuthConfig::from_platform(&empty_jwks).unwrap_err().code, "config_missing");

    for broken in [
        "not json",
        "[]",
        r#"{"keys":{}}"#,
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
        // A 16-bit "RSA key": far below the 2048 bits accepted.
        r#"{"keys":[{"kty":"RSA","kid":"rsa","n":"AQAB","e":"AQAB","alg":"RS256"}]}"#,
        r#"{"keys":[{"kty":"RSA","kid":"rsa","e":"AQAB"}]}"#,
    ] {
        let platform = FakePlatform::with_vars(&[("supabase_jwks", broken)]);
        let error = AuthConfig::from_platform(&platform).unwrap_err();
        assert_eq!((error.status, error.code), (500, "config_invalid"), "jwks {broken}");
    }

    let document = json!({ "keys": [
        {"kty": "RSA", "kid": "rsa-enc", "n": "AQAB", "e": "AQAB", "use": "enc"},
        {"kty": "RSA", "kid": "rsa-ps", "n": "AQAB", "e": "AQAB", "alg": "PS256"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "oct", "kid": "legacy", "k": "c2VjcmV0"},
        jwk(&key(1), "k1"),
    ]});
    let platform = FakePlatform::with_vars(&[("supabase_jwks", &document.to_string()), ("jwt_audience", "libero")]);
    let config = AuthConfig::from_platform(&platform).unwrap();
    assert!(config.hs256_secret.is_none());
    assert_eq!(config.jwks.as_ref().map(Jwks::len), Some(1), "only the ES256 signing key is kept");
    assert_eq!((config.audience.as_str(), config.leeway_secs), ("libero", 30));

    let config = AuthConfig::from_platform(&secret_platform()).unwrap();
    assert_eq!(config.hs256_secret.as_deref(), Some(SECRET.as_bytes()));
    assert_eq!(config.audience, "authenticated");
    assert!(!format!("{config:?}").contains(SECRET), "Debug never shows the secret");
}

#[test]
fn jwks_refuses_points_off_the_curve() {
    let mut bad = jwk(&key(1), "k1");
    bad["y"] = json!(b64(&[1u8; 32]));
    assert!(Jwks::parse(&json!({ "keys": [bad] }).to_string()).is_err());
}

// --- properties -----------------------------------------------------------------------

/// Replaces, inserts or deletes one character of `token` at `index`.
fn mutate(token: &str, index: usize, op: u8, c: char) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let index = index % (chars.len() + 1);
    match op % 3 {
        0 if index < chars.len() => chars[index] = c,
        1 => chars.insert(index, c),
        _ if index < chars.len() => {
            chars.remove(index);
        }
        _ => chars.push(c),
    }
    chars.into_iter().collect()
}

fn token_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ]
}

proptest! {
    #[test]
    fn arbitrary_strings_never_verify(token in any::<String>()) {
        prop_assert!(verify(&token, &both_config()).is_err());
    }

    #[test]
    fn arbitrary_dotted_base64_never_verifies(token in "[A-Za-z0-9_=-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}") {
        prop_assert!(verify(&token, &both_config()).is_err());
    }

    #[test]
    fn mutated_hs256_tokens_never_verify(index in any::<usize>(), op in any::<u8>(), c in token_char()) {
        let token = hs256(&claims());
        let mutated = mutate(&token, index, op, c);
        prop_assume!(mutated != token);
        prop_assert!(verify(&mutated, &both_config()).is_err());
    }
}

proptest! {
    // ES256 verification is slow in unoptimised test builds; fewer cases suffice.
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn mutated_es256_tokens_never_verify(index in any::<usize>(), op in any::<u8>(), c in token_char()) {
        let token = es256(&claims(), "k1", &key(1));
        let mutated = mutate(&token, index, op, c);
        prop_assume!(mutated != token);
        prop_assert!(verify(&mutated, &both_config()).is_err());
    }
}
