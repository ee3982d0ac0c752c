//! ES256 access tokens end to end: a project on Supabase's asymmetric signing keys sets
//! `supabase_jwks` to its JWKS document, and the components verify tokens with the `p256`
//! code compiled into each `.wasm` (`shared/src/auth/`). Keys are made here, under the
//! bundled host and real Spin (`LIBERO_RUNTIME=spin`) alike:
//!
//! - a token signed by the key its `kid` names is accepted, and acts as its `sub`;
//! - a `kid` the JWKS does not hold, or a token signed by another key than its `kid`'s, is
//!   a 401 (`unknown_key`, `invalid_signature`), and writes nothing;
//! - a key rotation: while the JWKS holds the old and the new key, tokens of both are
//!   accepted (and a token without `kid` is refused: with several keys none is guessed);
//!   once the old key is gone, its tokens are refused and the new key's still work.

use libero_tests::testing::TestApp;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use uuid::Uuid;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// A fresh P-256 key (a random scalar; the rare out-of-range draw is drawn again).
fn new_key() -> SigningKey {
    use rand::Rng;
    loop {
        let bytes: [u8; 32] = rand::rng().random();
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// The public half as a JWK, shaped like the entries of Supabase's
/// `/auth/v1/.well-known/jwks.json`.
fn jwk(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    let xy = &point.as_bytes()[1..];
    json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&xy[..32]), "y": URL_SAFE_NO_PAD.encode(&xy[32..]),
            "key_ops": ["verify"], "ext": true })
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A user's access token, as Supabase Auth issues it with an asymmetric key.
fn es256(key: &SigningKey, kid: Option<&str>, user: Uuid) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut header = json!({ "alg": "ES256", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
        "email": format!("{user}@test.local"), "iat": now, "exp": now + 3600,
        "iss": "http://127.0.0.1:54321/auth/v1",
    });
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    // JWS carries the raw r || s (RFC 7518 §3.4).
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Completes a new session with `token`: the status, the error code (if any), and the
/// user the session was recorded for (if one was).
async fn complete(app: &TestApp, token: &str) -> (u16, Option<String>, Option<Uuid>) {
    let session = Uuid::new_v4();
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(token)
        .json(&json!({ "session_id": session.to_string(), "ego_state": "guardian", "duration_seconds": 300 }))
        .send()
        .await
        .expect("session-complete request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let recorded_for = app
        .db_client()
        .await
        .query_opt("SELECT user_id FROM public.sessions WHERE client_session_id = $1", &[&session])
        .await
        .unwrap()
        .map(|row| row.get(0));
    (status, body["error"]["code"].as_str().map(str::to_string), recorded_for)
}

async fn app_with_jwks(document: String) -> TestApp {
    TestApp::spawn_with(|vars| {
        vars.insert("supabase_jwks".into(), document);
    })
    .await
}

#[tokio::test]
async fn es256_token_accepted_only_with_the_key_its_kid_names() {
    let (key, stranger) = (new_key(), new_key());
    let app = app_with_jwks(jwks(&[jwk(&key, "key-1")])).await;
    let user = app.create_user().await;

    assert_eq!(complete(&app, &es256(&key, Some("key-1"), user)).await, (200, None, Some(user)), "a valid ES256 token");
    // Supabase always sends a kid; with a single key, a token without one can only mean it.
    assert_eq!(complete(&app, &es256(&key, None, user)).await, (200, None, Some(user)), "no kid, one key");
    assert_eq!(
        complete(&app, &es256(&key, Some("key-9"), user)).await,
        (401, Some("unknown_key".into()), None),
        "a kid the JWKS does not hold"
    );
    assert_eq!(
        complete(&app, &es256(&stranger, Some("key-1"), user)).await,
        (401, Some("invalid_signature".into()), None),
        "signed by another key than its kid's"
    );
    // The project's HS256 secret (set too) still verifies the legacy tokens.
    assert_eq!(complete(&app, &app.token_for(user)).await, (200, None, Some(user)), "an HS256 token beside the JWKS");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn es256_key_rotation_both_keys_then_only_the_new_one() {
    let (old, new) = (new_key(), new_key());

    // During the rotation Supabase publishes both keys: tokens signed by either work.
    let during = app_with_jwks(jwks(&[jwk(&old, "key-old"), jwk(&new, "key-new")])).await;
    let user = during.create_user().await;
    assert_eq!(
        complete(&during, &es256(&old, Some("key-old"), user)).await,
        (200, None, Some(user)),
        "old key, both published"
    );
    assert_eq!(
        complete(&during, &es256(&new, Some("key-new"), user)).await,
        (200, None, Some(user)),
        "new key, both published"
    );
    assert_eq!(
        complete(&during, &es256(&new, None, user)).await,
        (401, Some("unknown_key".into()), None),
        "no kid among two keys: none is guessed"
    );
    assert_eq!(
        complete(&during, &es256(&old, Some("key-new"), user)).await,
        (401, Some("invalid_signature".into()), None),
        "old key's signature under the new key's kid"
    );
    during.assert_ledger_consistent().await;
    drop(during);

    // After it, only the new key: the old key's tokens are refused, even still unexpired.
    let after = app_with_jwks(jwks(&[jwk(&new, "key-new")])).await;
    let user = after.create_user().await;
    assert_eq!(
        complete(&after, &es256(&old, Some("key-old"), user)).await,
        (401, Some("unknown_key".into()), None),
        "the revoked key"
    );
    assert_eq!(complete(&after, &es256(&new, Some("key-new"), user)).await, (200, None, Some(user)), "the new key");
}

/// With only a JWKS configured (no HS256 secret), an HS256 token is refused: the public
/// key can never serve as an HMAC secret.
#[tokio::test]
async fn jwks_only_refuses_hs256_tokens() {
    let key = new_key();
    let public = jwk(&key, "key-1");
    let app = TestApp::spawn_with(|vars| {
        vars.insert("supabase_jwks".into(), jwks(std::slice::from_ref(&public)));
        vars.insert("supabase_jwt_secret".into(), String::new());
    })
    .await;
    let user = app.create_user().await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": user.to_string(), "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 3600 });
    // Signed with the JWK's own text, the classic algorithm-confusion attempt.
    let confused = libero_tests::testing::sign_hs256(&public.to_string(), &claims);
    assert_eq!(complete(&app, &confused).await, (401, Some("unsupported_algorithm".into()), None));
    assert_eq!(complete(&app, &es256(&key, Some("key-1"), user)).await, (200, None, Some(user)));
}
