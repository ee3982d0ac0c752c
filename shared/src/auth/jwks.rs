//! The project's public signing keys, from a JWKS document (RFC 7517) such as
//! `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`, set as the Spin variable
//! `supabase_jwks`. Only ES256 (EC P-256) keys are kept: that is what Supabase issues for
//! asymmetric signing; other keys (RSA, or the legacy HS256 key, which Supabase never
//! publishes) are skipped rather than refused, so the document can be pasted as is.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::VerifyingKey;
use serde_json::Value;

#[derive(Clone)]
pub struct Jwks {
    keys: Vec<EcKey>,
}

#[derive(Clone)]
struct EcKey {
    kid: Option<String>,
    key: VerifyingKey,
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

    /// The key a token's `kid` names; without a `kid`, the only key if there is just one
    /// (guessing among several would let a token pick its own key).
    pub(super) fn find(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key),
            None => match self.keys.as_slice() {
                [only] => Some(&only.key),
                _ => None,
            },
        }
    }
}

/// One JWK: `Ok(None)` for a key this server does not use, an error for an EC P-256
/// signing key that is broken (better a clear configuration error than silent 401s).
fn parse_key(entry: &Value) -> Result<Option<EcKey>, String> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    if !entry.is_object() {
        return Err("not an object".into());
    }
    let is_p256 = field("kty") == Some("EC") && field("crv") == Some("P-256");
    let for_es256 = field("alg").is_none_or(|alg| alg == "ES256");
    let for_signing = field("use").is_none_or(|usage| usage == "sig");
    if !(is_p256 && for_es256 && for_signing) {
        return Ok(None);
    }
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        let bytes = field(name)
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
            .ok_or_else(|| format!("`{name}` is missing or not base64url"))?;
        // RFC 7518 §6.2.1.2: exactly the field size, leading zeros kept.
        if bytes.len() != 32 {
            return Err(format!("`{name}` is not 32 bytes"));
        }
        Ok(bytes)
    };
    let mut sec1 = vec![0x04]; // uncompressed point: 04 || x || y
    sec1.extend(coordinate("x")?);
    sec1.extend(coordinate("y")?);
    let key = VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| "`x`/`y` is not a point on P-256".to_string())?;
    let kid = match entry.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    Ok(Some(EcKey { kid, key }))
}
