//! VAPID (RFC 8292): the application server's signature on each push, so a push service
//! knows who sends and can refuse anyone else who learns a subscription's URL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::json;

/// How long a signature is good for: RFC 8292 allows at most 24 hours.
pub const TOKEN_LIFETIME_SECS: i64 = 12 * 3600;

/// The operator's VAPID key pair, from `vapid_private_key` (the 32-byte P-256 scalar,
/// base64url, as `libero push keys` prints it).
pub struct VapidKey {
    signing: SigningKey,
    /// The uncompressed public key, base64url: what the app passes to
    /// `pushManager.subscribe({applicationServerKey})` and what `k=` carries.
    pub public_key: String,
}

impl VapidKey {
    pub fn from_private(encoded: &str) -> Option<VapidKey> {
        let bytes = URL_SAFE_NO_PAD.decode(encoded.trim().trim_end_matches('=')).ok().filter(|b| b.len() == 32)?;
        let secret = p256::SecretKey::from_slice(&bytes).ok()?;
        let public_key = URL_SAFE_NO_PAD.encode(super::encrypt::uncompressed(&secret.public_key()));
        Some(VapidKey { signing: SigningKey::from(&secret), public_key })
    }

    /// A key pair from 32 random bytes: the private key as `vapid_private_key` takes it,
    /// and the public key the app subscribes with. `None` for the rare bytes that are not
    /// a P-256 scalar (draw again).
    pub fn generate(random: [u8; 32]) -> Option<(String, String)> {
        let private = URL_SAFE_NO_PAD.encode(random);
        let key = VapidKey::from_private(&private)?;
        Some((private, key.public_key))
    }

    /// The `Authorization` header for a push to `origin` (the endpoint's scheme, host and
    /// port), signed now.
    pub fn authorization(&self, origin: &str, subject: &str, now_unix: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "ES256"}).to_string());
        let claims = URL_SAFE_NO_PAD
            .encode(json!({"aud": origin, "exp": now_unix + TOKEN_LIFETIME_SECS, "sub": subject}).to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        format!("vapid t={token}, k={}", self.public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn vapid_signature_verifies_with_the_advertised_key() {
        let key = VapidKey::from_private(&URL_SAFE_NO_PAD.encode([5u8; 32])).unwrap();
        let header = key.authorization("https://fcm.googleapis.com", "mailto:ops@example.com", 1_000);
        let (token, k) = header.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, key.public_key);
        let parts: Vec<&str> = token.split('.').collect();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"aud": "https://fcm.googleapis.com", "exp": 1_000 + 12 * 3600, "sub": "mailto:ops@example.com"})
        );
        let verifying = VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(k).unwrap()).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        assert!(verifying.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).is_ok());
    }

    #[test]
    fn vapid_key_refuses_what_is_not_a_p256_scalar() {
        assert!(VapidKey::from_private("not base64!").is_none());
        assert!(VapidKey::from_private(&URL_SAFE_NO_PAD.encode([0u8; 32])).is_none());
        assert!(VapidKey::from_private(&URL_SAFE_NO_PAD.encode([1u8; 31])).is_none());
    }
}
