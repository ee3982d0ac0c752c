//! Stripe webhook signatures, checked the way Stripe documents them
//! (<https://docs.stripe.com/webhooks#verify-manually>).
//!
//! `Stripe-Signature: t=1700000000,v1=5257a8...,v1=...,v0=...` carries the time Stripe
//! signed the event and one `v1` HMAC-SHA256 (hex) of `"{t}.{raw body}"` per active
//! endpoint secret. We accept the event if any `v1` matches any of our secrets (several
//! during a secret rotation) and `t` is within the tolerance of our clock, both ways, so a
//! captured delivery cannot be replayed later. Other schemes (`v0` is Stripe's test-mode
//! legacy scheme) are ignored, never trusted.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ApiError;

/// Stripe's own libraries default to five minutes.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Real headers are ~100 bytes per signature; a larger one is not from Stripe, and the
/// cap bounds the work an unauthenticated caller can ask for.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or an empty one.
    MissingHeader,
    /// Longer than [`MAX_HEADER_LEN`].
    HeaderTooLong,
    /// No `t=`, or more than one.
    MissingTimestamp,
    /// `t=` is not a plain decimal number of seconds.
    InvalidTimestamp,
    /// No `v1=` signature (perhaps only the legacy `v0`).
    MissingV1,
    /// A `v1=` value is not 64 hex digits.
    InvalidV1,
    /// Well formed, but no `v1` matches any configured secret.
    Mismatch,
    /// Signed correctly, but `t` is outside the tolerance (too old: a replay, or the clock).
    TooOld,
    TooNew,
    /// The server has no webhook secret configured.
    NoSecrets,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}

impl std::error::Error for SignatureError {}

impl From<SignatureError> for ApiError {
    fn from(error: SignatureError) -> Self {
        use SignatureError::*;
        let (code, message) = match error {
            NoSecrets => return ApiError::config_missing(crate::settings::STRIPE_WEBHOOK_SECRETS.name),
            MissingHeader => ("missing_signature", "The Stripe-Signature header is missing."),
            HeaderTooLong => ("malformed_signature", "The Stripe-Signature header is too long."),
            MissingTimestamp => {
                ("malformed_signature", "The Stripe-Signature header needs exactly one `t=` timestamp.")
            }
            InvalidTimestamp => {
                ("malformed_signature", "The Stripe-Signature timestamp `t=` is not a number of seconds.")
            }
            MissingV1 => ("malformed_signature", "The Stripe-Signature header has no `v1=` signature."),
            InvalidV1 => ("malformed_signature", "A Stripe-Signature `v1=` value is not 64 hex digits."),
            Mismatch => (
                "signature_mismatch",
                "No Stripe-Signature `v1` matches the webhook signing secret; check the endpoint's secret.",
            ),
            TooOld => (
                "signature_expired",
                "The Stripe-Signature timestamp is more than the tolerance in the past (a replay, or a wrong clock).",
            ),
            TooNew => ("signature_expired", "The Stripe-Signature timestamp is in the future; check the server clock."),
        };
        ApiError::bad_request(code, message)
    }
}

/// Verifies a delivery and returns its signing timestamp. `payload` must be the raw body
/// bytes exactly as received (not re-serialised JSON).
pub fn verify(
    payload: &[u8],
    header: &str,
    secrets: &[String],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    // Checked first, so a misconfigured server says so whatever a caller sends.
    let secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    let header = header.trim();
    if header.is_empty() {
        return Err(SignatureError::MissingHeader);
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::HeaderTooLong);
    }

    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<[u8; 32]> = Vec::new();
    for item in header.split(',') {
        let Some((scheme, value)) = item.split_once('=') else { continue };
        match (scheme.trim(), value.trim()) {
            ("t", _) if timestamp.is_some() => return Err(SignatureError::MissingTimestamp),
            ("t", value) => timestamp = Some(value),
            ("v1", value) => signatures.push(decode_hex32(value).ok_or(SignatureError::InvalidV1)?),
            _ => {} // v0 and future schemes
        }
    }
    let timestamp_text = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    // Digits only: `+5`, `-5` and ` 5` parse as integers but are not what Stripe sends.
    if timestamp_text.is_empty() || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::InvalidTimestamp);
    }
    let timestamp: i64 = timestamp_text.parse().map_err(|_| SignatureError::InvalidTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::MissingV1);
    }

    // Signature before freshness: "expired" is then only ever said of a genuine delivery.
    let matched = secrets.iter().any(|secret| {
        let expected = tag(payload, secret, timestamp_text);
        // Every candidate is compared, in constant time, so timing reveals nothing.
        signatures.iter().fold(0u8, |any, candidate| any | candidate.ct_eq(&expected).unwrap_u8()) == 1
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }

    let age = i128::from(now_unix) - i128::from(timestamp);
    if age > i128::from(tolerance_secs) {
        return Err(SignatureError::TooOld);
    }
    if -age > i128::from(tolerance_secs) {
        return Err(SignatureError::TooNew);
    }
    Ok(timestamp)
}

/// A `Stripe-Signature` header for `payload`, as Stripe would send it (tests, benchmark).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let tag = tag(payload, secret, &timestamp.to_string());
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// HMAC-SHA256 of `"{t}.{payload}"`, keyed with the whole secret string (`whsec_...`),
/// with `t` exactly as it appears in the header.
fn tag(payload: &[u8], secret: &str, timestamp: &str) -> [u8; 32] {
    // HMAC takes keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return [0; 32] };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check(body: &[u8], header: &str) -> Result<i64, SignatureError> {
        verify(body, header, &secrets(&[SECRET]), NOW, DEFAULT_TOLERANCE_SECS)
    }

    fn v1(header: &str) -> &str {
        header.split_once("v1=").map(|(_, v)| v).unwrap_or("")
    }

    #[test]
    fn valid_signature_returns_the_timestamp() {
        assert_eq!(check(BODY, &sign(BODY, SECRET, NOW)), Ok(NOW));
        assert_eq!(check(b"", &sign(b"", SECRET, NOW)), Ok(NOW));
    }

    #[test]
    fn matches_stripe_documented_construction() {
        // Independently computed: HMAC-SHA256("whsec_test_secret", "1700000000.{body}").
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{NOW}.").as_bytes());
        mac.update(BODY);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sign(BODY, SECRET, NOW), format!("t={NOW},v1={expected}"));
    }

    #[test]
    fn any_order_whitespace_uppercase_hex_and_extra_schemes_are_accepted() {
        let good = v1(&sign(BODY, SECRET, NOW)).to_string();
        let header = format!(" v0=abc , v1 = {} ,  t = {NOW} , scheme=x, junk ,", good.to_uppercase());
        assert_eq!(check(BODY, &header), Ok(NOW));
    }

    #[test]
    fn one_matching_v1_among_several_is_enough() {
        let good = v1(&sign(BODY, SECRET, NOW)).to_string();
        let wrong = v1(&sign(BODY, "whsec_other", NOW)).to_string();
        assert_eq!(check(BODY, &format!("t={NOW},v1={wrong},v1={good}")), Ok(NOW));
        assert_eq!(check(BODY, &format!("t={NOW},v1={good},v1={wrong}")), Ok(NOW));
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let header = sign(BODY, "whsec_new", NOW);
        let both = secrets(&["whsec_old", "whsec_new"]);
        assert_eq!(verify(BODY, &header, &both, NOW, 300), Ok(NOW));
        assert_eq!(verify(BODY, &header, &secrets(&["whsec_old"]), NOW, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn wrong_secret_or_tampered_body_is_a_mismatch() {
        assert_eq!(check(BODY, &sign(BODY, "whsec_other", NOW)), Err(SignatureError::Mismatch));
        let header = sign(BODY, SECRET, NOW);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 0x01;
        assert_eq!(check(&tampered, &header), Err(SignatureError::Mismatch));
        assert_eq!(check(&BODY[..BODY.len() - 1], &header), Err(SignatureError::Mismatch));
        // The timestamp is signed too: changing it breaks the signature.
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(check(BODY, &moved), Err(SignatureError::Mismatch));
        // As are leading zeros: `t` is signed exactly as sent.
        let padded = header.replace("t=", "t=0");
        assert_eq!(check(BODY, &padded), Err(SignatureError::Mismatch));
    }

    #[test]
    fn tolerance_edges() {
        let at = |signed_at: i64| check(BODY, &sign(BODY, SECRET, signed_at));
        assert_eq!(at(NOW - 300), Ok(NOW - 300));
        assert_eq!(at(NOW - 301), Err(SignatureError::TooOld));
        assert_eq!(at(NOW + 300), Ok(NOW + 300));
        assert_eq!(at(NOW + 301), Err(SignatureError::TooNew));
        assert_eq!(at(0), Err(SignatureError::TooOld));
        assert_eq!(at(i64::MAX), Err(SignatureError::TooNew));
        let header = sign(BODY, SECRET, NOW);
        assert_eq!(verify(BODY, &header, &secrets(&[SECRET]), i64::MIN, 300), Err(SignatureError::TooNew));
        assert_eq!(verify(BODY, &header, &secrets(&[SECRET]), i64::MAX, 300), Err(SignatureError::TooOld));
    }

    #[test]
    fn malformed_headers_have_distinct_errors() {
        let good = v1(&sign(BODY, SECRET, NOW)).to_string();
        let cases = [
            (String::new(), SignatureError::MissingHeader),
            ("  ".to_string(), SignatureError::MissingHeader),
            (format!("v1={good}"), SignatureError::MissingTimestamp),
            (format!("t={NOW},t={NOW},v1={good}"), SignatureError::MissingTimestamp),
            (format!("t=,v1={good}"), SignatureError::InvalidTimestamp),
            (format!("t=-{NOW},v1={good}"), SignatureError::InvalidTimestamp),
            (format!("t=+{NOW},v1={good}"), SignatureError::InvalidTimestamp),
            (format!("t=1.5,v1={good}"), SignatureError::InvalidTimestamp),
            (format!("t=99999999999999999999,v1={good}"), SignatureError::InvalidTimestamp),
            (format!("t={NOW}"), SignatureError::MissingV1),
            (format!("t={NOW},v0={good}"), SignatureError::MissingV1),
            (format!("t={NOW},V1={good}"), SignatureError::MissingV1),
            (format!("t={NOW},v1="), SignatureError::InvalidV1),
            (format!("t={NOW},v1={}", &good[..63]), SignatureError::InvalidV1),
            (format!("t={NOW},v1={good}00"), SignatureError::InvalidV1),
            (format!("t={NOW},v1={}zz", &good[..62]), SignatureError::InvalidV1),
            (format!("t={NOW},v1=é{}", &good[..62]), SignatureError::InvalidV1),
            ("garbage".to_string(), SignatureError::MissingTimestamp),
            (",,,===,,,".to_string(), SignatureError::MissingTimestamp),
            (format!("t={NOW},v1={good}{}", ",v0=00".repeat(2000)), SignatureError::HeaderTooLong),
        ];
        for (header, expected) in cases {
            assert_eq!(check(BODY, &header), Err(expected), "header {header:.80}");
        }
    }

    #[test]
    fn no_secrets_is_a_configuration_error() {
        let header = sign(BODY, SECRET, NOW);
        for none in [secrets(&[]), secrets(&[""])] {
            assert_eq!(verify(BODY, &header, &none, NOW, 300), Err(SignatureError::NoSecrets));
        }
        let error = ApiError::from(SignatureError::NoSecrets);
        assert_eq!((error.status, error.code), (500, "config_missing"));
        assert!(error.message.contains("stripe_webhook_secrets"));
    }

    #[test]
    fn errors_map_to_400_codes() {
        use SignatureError::*;
        let code = |e: SignatureError| {
            let api = ApiError::from(e);
            assert_eq!(api.status, 400);
            api.code
        };
        assert_eq!(code(MissingHeader), "missing_signature");
        for e in [HeaderTooLong, MissingTimestamp, InvalidTimestamp, MissingV1, InvalidV1] {
            assert_eq!(code(e), "malformed_signature");
        }
        assert_eq!(code(Mismatch), "signature_mismatch");
        assert_eq!(code(TooOld), "signature_expired");
        assert_eq!(code(TooNew), "signature_expired");
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_or_verify(header in any::<String>(), body in any::<Vec<u8>>()) {
            prop_assert!(check(&body, &header).is_err());
        }

        #[test]
        fn header_shaped_input_never_panics_or_verifies(
            header in "( ?(t|v1|v0|x) ?= ?[0-9a-fA-F+-]{0,70} ?,?){0,6}",
        ) {
            prop_assert!(check(BODY, &header).is_err());
        }

        #[test]
        fn any_other_body_is_refused(body in any::<Vec<u8>>()) {
            prop_assume!(body != BODY);
            prop_assert_eq!(check(&body, &sign(BODY, SECRET, NOW)), Err(SignatureError::Mismatch));
        }
    }
}
