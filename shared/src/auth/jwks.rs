//! The project's public signing keys, from a JWKS document (RFC 7517) such as
//! `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`: set as the Spin variable
//! `supabase_jwks`, fetched from `supabase_jwks_url` (see `remote.rs`), or both. Supabase
//! signs user tokens with an ES256 (EC P-256) or an RS256 (RSA) key; those are kept, each
//! with the one algorithm it verifies. Other keys (other curves, encryption keys, the
//! legacy HS256 key, which Supabase never publishes) are skipped rather than refused, so
//! the document can be pasted as is.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use rsa::BoxedUint;
use serde_json::Value;
use sha2::Sha256;

/// Supabase issues 2048-bit RSA keys; shorter ones are too weak to trust a user's identity to.
pub const MIN_RSA_BITS: usize = 2048;
/// Bounds the verification work a (configured or fetched) key can cost per request.
pub const MAX_RSA_BITS: usize = 4096;

#[derive(Clone)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Clone)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

/// A verification key and, by its type, the only algorithm it is used with: the token's
/// `alg` must agree with it, it never picks it.
#[derive(Clone)]
pub enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

impl PublicKey {
    /// The JWS `alg` this key verifies.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Es256(_) => "ES256",
            PublicKey::Rs256(_) => "RS256",
        }
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            // JWS carries ES256 signatures as raw r||s (RFC 7518 §3.4), not DER.
            PublicKey::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            // RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3); the length must be the modulus'.
            PublicKey::Rs256(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
        }
    }
}

// Public keys are not secret, but the kids are all an operator needs to see.
impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("<no kid>"))).finish()
    }
}

impl Jwks {
    /// Parses a JWKS document. An error says what is wrong with it (never key material).
    pub fn parse(document: &str) -> Result<Jwks, String> {
        let value: Value = serde_json::from_str(document).map_err(|_| "not valid JSON".to_string())?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Jwks, String> {
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "expected an object with a `keys` array".to_string())?;
        let mut keys = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            if let Some(key) = parse_key(entry).map_err(|reason| format!("key {index}: {reason}"))? {
                keys.push(key);
            }
        }
        Ok(Jwks { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys of `self`, then those of `other` whose `kid` `self` does not hold.
    pub fn merged(mut self, other: &Jwks) -> Jwks {
        for key in &other.keys {
            let known = key.kid.as_deref().is_some_and(|kid| self.has_kid(kid));
            if !known {
                self.keys.push(key.clone());
            }
        }
        self
    }

    /// The key a token's `kid` names; without a `kid`, the only key if there is just one
    /// (guessing among several would let a token pick its own key).
    pub fn find(&self, kid: Option<&str>) -> Option<&PublicKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key),
            None => match self.keys.as_slice() {
                [only] => Some(&only.key),
                _ => None,
            },
        }
    }
}

/// One JWK: `Ok(None)` for a key this server does not use, an error for an ES256 or RS256
/// signing key that is broken (better a clear configuration error than silent 401s).
fn parse_key(entry: &Value) -> Result<Option<Jwk>, String> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    if !entry.is_object() {
        return Err("not an object".into());
    }
    let for_signing = field("use").is_none_or(|usage| usage == "sig");
    let key = match (field("kty"), field("alg")) {
        _ if !for_signing => return Ok(None),
        (Some("EC"), None | Some("ES256")) if field("crv") == Some("P-256") => PublicKey::Es256(ec_key(&field)?),
        (Some("RSA"), None | Some("RS256")) => PublicKey::Rs256(rsa_key(&field)?),
        _ => return Ok(None),
    };
    let kid = match entry.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    Ok(Some(Jwk { kid, key }))
}

fn base64url_field<'a>(field: &impl Fn(&str) -> Option<&'a str>, name: &str) -> Result<Vec<u8>, String> {
    field(name)
        .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
        .ok_or_else(|| format!("`{name}` is missing or not base64url"))
}

fn ec_key<'a>(field: &impl Fn(&str) -> Option<&'a str>) -> Result<p256::ecdsa::VerifyingKey, String> {
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        let bytes = base64url_field(field, name)?;
        // RFC 7518 §6.2.1.2: exactly the field size, leading zeros kept.
        if bytes.len() != 32 {
            return Err(format!("`{name}` is not 32 bytes"));
        }
        Ok(bytes)
    };
    let mut sec1 = vec![0x04]; // uncompressed point: 04 || x || y
    sec1.extend(coordinate("x")?);
    sec1.extend(coordinate("y")?);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| "`x`/`y` is not a point on P-256".to_string())
}

fn rsa_key<'a>(field: &impl Fn(&str) -> Option<&'a str>) -> Result<rsa::pkcs1v15::VerifyingKey<Sha256>, String> {
    let n = base64url_field(field, "n")?;
    let e = base64url_field(field, "e")?;
    // RFC 7518 §6.3.1: unsigned big-endian; a stray leading zero does not make the key longer.
    let n = BoxedUint::from_be_slice_vartime(&n);
    let e = BoxedUint::from_be_slice_vartime(&e);
    let bits = n.bit_width_vartime() as usize;
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!("the RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"));
    }
    let key = rsa::PublicKey::new_with_size_limits(n, e, MIN_RSA_BITS..=MAX_RSA_BITS)
        .map_err(|_| "`n`/`e` is not a valid RSA public key".to_string())?;
    Ok(rsa::pkcs1v15::VerifyingKey::new(key))
}
