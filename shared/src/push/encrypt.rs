//! Message encryption for Web Push (RFC 8291, with the `aes128gcm` content coding of
//! RFC 8188): only the browser that subscribed can read a reminder, not the push service
//! that carries it.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes128Gcm;
use hkdf::Hkdf;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The record size announced in the header: larger than any reminder, so the message is
/// one record.
const RECORD_SIZE: u32 = 4096;

/// What went wrong with a subscription's keys.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// `p256dh` is not an uncompressed point on P-256.
    BadPublicKey,
    /// `auth` is not 16 bytes.
    BadAuthSecret,
}

/// Encrypts `plaintext` for the browser whose subscription keys are `ua_public` (65-byte
/// uncompressed P-256 point) and `auth_secret` (16 bytes). `ephemeral` and `salt` are
/// fresh random bytes for each message (32 and 16): the sender's key pair and the salt
/// must never repeat. Returns the body to POST: the RFC 8188 header, then the record.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
    ephemeral: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, KeyError> {
    let ua_key = PublicKey::from_sec1_bytes(ua_public).map_err(|_| KeyError::BadPublicKey)?;
    if ua_public.len() != 65 {
        return Err(KeyError::BadPublicKey);
    }
    if auth_secret.len() != 16 {
        return Err(KeyError::BadAuthSecret);
    }
    let as_public = uncompressed(&ephemeral.public_key());
    let shared = ephemeral.diffie_hellman(&ua_key);

    // RFC 8291 section 3.4: the input keying material from the ECDH secret and auth secret.
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(&as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth_secret), shared.raw_secret_bytes().as_slice())
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA256 length");

    // RFC 8188 section 2.2 and 2.3: the content encryption key and the nonce.
    let content = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    content.expand(b"Content-Encoding: aes128gcm\0", &mut cek).expect("16 bytes is a valid length");
    content.expand(b"Content-Encoding: nonce\0", &mut nonce).expect("12 bytes is a valid length");

    // One record, the last: the plaintext, then the delimiter 0x02 (no padding).
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let cipher = Aes128Gcm::new_from_slice(&cek).expect("a 16-byte key");
    let sealed =
        cipher.encrypt(&nonce.into(), record.as_slice()).expect("AES-GCM encryption of a small record does not fail");

    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// A public key as the 65-byte uncompressed SEC 1 point that Web Push exchanges.
pub fn uncompressed(key: &PublicKey) -> Vec<u8> {
    let bytes = key.to_sec1_bytes().to_vec();
    debug_assert_eq!(bytes.len(), 65, "P-256 points are sent uncompressed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 appendix A: the worked example, byte for byte.
    #[test]
    fn push_encryption_matches_the_rfc_example() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let as_private = b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let ua_public = b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let plaintext = b"When I grow up, I want to be a watermelon";
        let ephemeral = SecretKey::from_slice(&as_private).unwrap();
        let body = encrypt(plaintext, &ua_public, &auth, &ephemeral, &salt).unwrap();
        let expected = b64(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        );
        assert_eq!(body, expected);
    }

    #[test]
    fn push_encryption_refuses_bad_subscription_keys() {
        let ephemeral = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let ua = uncompressed(&SecretKey::from_slice(&[9u8; 32]).unwrap().public_key());
        assert_eq!(encrypt(b"x", &ua[..33], &[0; 16], &ephemeral, &[0; 16]), Err(KeyError::BadPublicKey));
        assert_eq!(encrypt(b"x", &[4u8; 65], &[0; 16], &ephemeral, &[0; 16]), Err(KeyError::BadPublicKey));
        assert_eq!(encrypt(b"x", &ua, &[0; 15], &ephemeral, &[0; 16]), Err(KeyError::BadAuthSecret));
    }
}
