//! Asymmetric access tokens end to end: a project on Supabase's signing keys (ES256 or
//! RS256) pins its JWKS document in `supabase_jwks`, or has it fetched from
//! `supabase_jwks_url` (cached in Postgres, shared by every instance), and the components
//! verify tokens with the `p256` and `rsa` code compiled into each `.wasm`
//! (`shared/src/auth/`). Keys are made here, under the bundled host and real Spin
//! (`LIBERO_RUNTIME=spin`) alike:
//!
//! - a token signed by the key its `kid` names is accepted, and acts as its `sub`; ES256
//!   and RS256 keys side by side in one JWKS;
//! - a `kid` the JWKS does not hold, or a token signed by another key than its `kid`'s, is
//!   a 401 (`unknown_key`, `invalid_signature`), and writes nothing;
//! - a key rotation: while the JWKS holds the old and the new key, tokens of both are
//!   accepted (and a token without `kid` is refused: with several keys none is guessed);
//!   once the old key is gone, its tokens are refused and the new key's still work;
//! - fetched keys: a rotation is picked up without a restart, a revoked key is refused
//!   after the next refresh, and a flood of unknown `kid`s (or a JWKS endpoint that is
//!   down) costs one fetch per `jwks_min_refresh_seconds`;
//! - algorithm confusion: public key material as an HMAC secret, `alg: none`, and an `alg`
//!   that disagrees with the key's type are all refused.

use std::time::Duration;

use libero_tests::testing::TestApp;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts as _;
use rsa::Generate as _;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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

/// The header and claims of a user's access token, base64url-encoded and joined: what
/// the signature covers.
fn signing_input(alg: &str, kid: Option<&str>, user: Uuid) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut header = json!({ "alg": alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
        "email": format!("{user}@test.local"), "iat": now, "exp": now + 3600,
        "iss": "http://127.0.0.1:54321/auth/v1",
    });
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// A user's access token, as Supabase Auth issues it with an asymmetric key.
fn es256(key: &SigningKey, kid: Option<&str>, user: Uuid) -> String {
    let input = signing_input("ES256", kid, user);
    // JWS carries the raw r || s (RFC 7518 §3.4).
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

type RsaKey = rsa::pkcs1v15::SigningKey<Sha256>;

/// A fresh 2048-bit RSA key, the size Supabase issues.
fn new_rsa_key() -> RsaKey {
    RsaKey::generate()
}

/// The public half as a JWK, shaped like an RSA entry of Supabase's JWKS.
fn rsa_jwk(key: &RsaKey, kid: &str) -> Value {
    let public = key.as_ref().as_public_key();
    json!({ "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_be_bytes_trimmed_vartime()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_be_bytes_trimmed_vartime()),
            "key_ops": ["verify"], "ext": true })
}

/// A user's access token signed with an RSA key (RSASSA-PKCS1-v1_5, SHA-256), with this
/// header `alg` (RS256, or a lie about it).
fn rsa_token(key: &RsaKey, alg: &str, kid: Option<&str>, user: Uuid) -> String {
    let input = signing_input(alg, kid, user);
    let signature: rsa::pkcs1v15::Signature = rsa::signature::Signer::sign(key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(rsa::signature::SignatureEncoding::to_vec(&signature)))
}

fn rs256(key: &RsaKey, kid: Option<&str>, user: Uuid) -> String {
    rsa_token(key, "RS256", kid, user)
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

/// One JWKS holding an EC and an RSA key, as a project has while it moves between them:
/// each key verifies its own algorithm's tokens.
#[tokio::test]
async fn rs256_and_es256_tokens_from_one_jwks() {
    let (ec, rsa, stranger) = (new_key(), new_rsa_key(), new_rsa_key());
    let app = app_with_jwks(jwks(&[jwk(&ec, "ec-1"), rsa_jwk(&rsa, "rsa-1")])).await;
    let user = app.create_user().await;

    assert_eq!(complete(&app, &rs256(&rsa, Some("rsa-1"), user)).await, (200, None, Some(user)), "RS256");
    assert_eq!(complete(&app, &es256(&ec, Some("ec-1"), user)).await, (200, None, Some(user)), "ES256");
    assert_eq!(
        complete(&app, &rs256(&stranger, Some("rsa-1"), user)).await,
        (401, Some("invalid_signature".into()), None),
        "signed by another RSA key than its kid's"
    );
    assert_eq!(
        complete(&app, &rs256(&rsa, Some("rsa-9"), user)).await,
        (401, Some("unknown_key".into()), None),
        "an RSA kid the JWKS does not hold"
    );
    // A signature cut short, or one byte changed, is not a signature.
    let token = rs256(&rsa, Some("rsa-1"), user);
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[100] ^= 1;
    for (what, forged) in [
        ("a flipped bit", format!("{input}.{}", URL_SAFE_NO_PAD.encode(&bytes))),
        ("a short signature", format!("{input}.{}", URL_SAFE_NO_PAD.encode(&bytes[..255]))),
    ] {
        assert_eq!(complete(&app, &forged).await, (401, Some("invalid_signature".into()), None), "{what}");
    }
    app.assert_ledger_consistent().await;
}

/// The algorithm comes from the key, never from the token.
#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let (ec, rsa) = (new_key(), new_rsa_key());
    let (ec_public, rsa_public) = (jwk(&ec, "ec-1"), rsa_jwk(&rsa, "rsa-1"));
    // No HS256 secret: only the JWKS.
    let app = TestApp::spawn_with(|vars| {
        vars.insert("supabase_jwks".into(), jwks(&[ec_public.clone(), rsa_public.clone()]));
        vars.insert("supabase_jwt_secret".into(), String::new());
    })
    .await;
    let user = app.create_user().await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
                         "iat": now, "exp": now + 3600 });
    let unsupported = (401, Some("unsupported_algorithm".to_string()), None);

    // The RSA public key's material as an HMAC secret: the JWK's text, and its modulus.
    let n = rsa_public["n"].as_str().unwrap().to_string();
    for secret in
        [rsa_public.to_string(), n.clone(), String::from_utf8_lossy(&URL_SAFE_NO_PAD.decode(&n).unwrap()).into()]
    {
        let confused = libero_tests::testing::sign_hs256(&secret, &claims);
        assert_eq!(complete(&app, &confused).await, unsupported, "HS256 signed with the RSA public key");
        // The same, naming the RSA key's kid.
        let with_kid = with_header(&confused, json!({ "alg": "HS256", "typ": "JWT", "kid": "rsa-1" }));
        assert_eq!(complete(&app, &with_kid).await, unsupported, "HS256 naming the RSA kid");
    }
    // `alg: none`, with and without a signature, with the RSA kid.
    let valid = rs256(&rsa, Some("rsa-1"), user);
    let unsigned = with_header(&valid, json!({ "alg": "none", "typ": "JWT", "kid": "rsa-1" }));
    let stripped = format!("{}.", unsigned.rsplit_once('.').unwrap().0);
    for (what, token) in [("alg none, signed", &unsigned), ("alg none, unsigned", &stripped)] {
        assert_eq!(complete(&app, token).await, unsupported, "{what}");
    }
    // An alg that disagrees with the key its kid names.
    assert_eq!(
        complete(&app, &rsa_token(&rsa, "ES256", Some("rsa-1"), user)).await,
        unsupported,
        "ES256 on an RSA key"
    );
    assert_eq!(complete(&app, &rsa_token(&rsa, "PS256", Some("rsa-1"), user)).await, unsupported, "PS256");
    assert_eq!(complete(&app, &rsa_token(&rsa, "RS384", Some("rsa-1"), user)).await, unsupported, "RS384");
    let es_as_rs = with_header(&es256(&ec, Some("ec-1"), user), json!({ "alg": "RS256", "typ": "JWT", "kid": "ec-1" }));
    assert_eq!(complete(&app, &es_as_rs).await, unsupported, "RS256 on an EC key");
    // And the honest tokens still work.
    assert_eq!(complete(&app, &valid).await, (200, None, Some(user)), "RS256");
    assert_eq!(complete(&app, &es256(&ec, Some("ec-1"), user)).await, (200, None, Some(user)), "ES256");
    app.assert_ledger_consistent().await;
}

/// `token` with its header replaced (the signature kept as it was).
fn with_header(token: &str, header: Value) -> String {
    let mut parts = token.splitn(2, '.');
    let (_, rest) = (parts.next().unwrap(), parts.next().unwrap());
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

const JWKS_PATH: &str = "/auth/v1/.well-known/jwks.json";

/// A fake Supabase Auth serving `document` as its JWKS (replacing what it served before).
async fn publish(auth: &MockServer, document: &str) {
    auth.reset().await;
    Mock::given(method("GET"))
        .and(path(JWKS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(document.to_string(), "application/json"))
        .mount(auth)
        .await;
}

async fn fetches(auth: &MockServer) -> usize {
    auth.received_requests().await.unwrap_or_default().iter().filter(|r| r.url.path() == JWKS_PATH).count()
}

/// The app fetching its keys from `auth`, with no pinned JWKS.
async fn app_fetching_from(auth: &MockServer, max_age_seconds: u32, min_refresh_seconds: u32) -> TestApp {
    let uri = auth.uri();
    TestApp::spawn_with(|vars| {
        vars.insert("supabase_jwks_url".into(), format!("{uri}{JWKS_PATH}"));
        vars.insert("supabase_jwks_host".into(), uri);
        vars.insert("jwks_max_age_seconds".into(), max_age_seconds.to_string());
        vars.insert("jwks_min_refresh_seconds".into(), min_refresh_seconds.to_string());
    })
    .await
}

/// Supabase's rotation, with the app running throughout: a standby key is published, made
/// current (tokens name its kid), and the old key revoked. No restart.
#[tokio::test]
async fn fetched_jwks_rotation_is_picked_up_without_a_restart() {
    let (old, new) = (new_rsa_key(), new_key());
    let auth = MockServer::start().await;
    publish(&auth, &jwks(&[rsa_jwk(&old, "key-old")])).await;
    let app = app_fetching_from(&auth, 2, 1).await;
    let user = app.create_user().await;

    assert_eq!(complete(&app, &rs256(&old, Some("key-old"), user)).await, (200, None, Some(user)), "the first key");
    assert_eq!(complete(&app, &rs256(&old, Some("key-old"), user)).await, (200, None, Some(user)), "cached");
    assert_eq!(fetches(&auth).await, 1, "one fetch, then the cache");

    // The new key appears; a token naming it makes the app look again (once the interval passed).
    publish(&auth, &jwks(&[rsa_jwk(&old, "key-old"), jwk(&new, "key-new")])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(complete(&app, &es256(&new, Some("key-new"), user)).await, (200, None, Some(user)), "the new kid");
    assert_eq!(
        complete(&app, &rs256(&old, Some("key-old"), user)).await,
        (200, None, Some(user)),
        "old, still published"
    );
    assert_eq!(fetches(&auth).await, 1, "one fetch for the new kid");

    // The old key is revoked: once the cached document is older than the max age, the
    // refresh drops it, and its (unexpired) tokens are refused.
    publish(&auth, &jwks(&[jwk(&new, "key-new")])).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(complete(&app, &rs256(&old, Some("key-old"), user)).await, (401, Some("unknown_key".into()), None));
    assert_eq!(complete(&app, &es256(&new, Some("key-new"), user)).await, (200, None, Some(user)), "the new key");
    assert_eq!(fetches(&auth).await, 1, "one refresh after the max age");
    app.assert_ledger_consistent().await;
}

/// Tokens naming kids nobody published, many at once: each is a 401, and the JWKS is
/// fetched at most once per `jwks_min_refresh_seconds` across all of them.
#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
    let key = new_rsa_key();
    let auth = MockServer::start().await;
    publish(&auth, &jwks(&[rsa_jwk(&key, "key-1")])).await;
    let app = app_fetching_from(&auth, 600, 30).await;
    let user = app.create_user().await;
    assert_eq!(complete(&app, &rs256(&key, Some("key-1"), user)).await, (200, None, Some(user)));

    let flood: Vec<_> = (0..40)
        .map(|i| {
            let token = rs256(&key, Some(&format!("forged-{i}")), user);
            let app = &app;
            async move { complete(app, &token).await }
        })
        .collect();
    for answer in futures_util::future::join_all(flood).await {
        assert_eq!(answer, (401, Some("unknown_key".into()), None));
    }
    assert_eq!(fetches(&auth).await, 1, "the first fetch only: the flood came within the interval");
    assert_eq!(complete(&app, &rs256(&key, Some("key-1"), user)).await, (200, None, Some(user)), "still served");
}

/// The JWKS endpoint down before any document was fetched: 503 (retry), not a 401 that
/// would sign users out, and one fetch per interval however many requests come.
#[tokio::test]
async fn jwks_endpoint_down_at_first_fetch_is_a_bounded_503() {
    let key = new_key();
    let auth = MockServer::start().await;
    Mock::given(method("GET")).and(path(JWKS_PATH)).respond_with(ResponseTemplate::new(500)).mount(&auth).await;
    let app = app_fetching_from(&auth, 600, 3).await;
    let user = app.create_user().await;
    for _ in 0..5 {
        assert_eq!(
            complete(&app, &es256(&key, Some("key-1"), user)).await,
            (503, Some("signing_keys_unavailable".into()), None)
        );
    }
    assert_eq!(fetches(&auth).await, 1, "bounded while down");
    // Back up: after the interval the next token fetches and verifies.
    publish(&auth, &jwks(&[jwk(&key, "key-1")])).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(complete(&app, &es256(&key, Some("key-1"), user)).await, (200, None, Some(user)));
    // HS256 tokens never needed the JWKS.
    assert_eq!(complete(&app, &app.token_for(user)).await, (200, None, Some(user)), "HS256");
}

/// What an asymmetric token costs per request, end to end: `POST session-complete` with
/// an empty body, which authenticates and then answers 400 without touching the database,
/// timed with no token (the baseline: a fresh instance, routing, the 401), an HS256 token,
/// an ES256 and an RS256 token from the pinned JWKS, and an RS256 token from the fetched
/// (cached) JWKS, which adds the `jwks_cache_lookup` statement. The kinds take turns, so
/// load on the machine hits them alike. Prints medians; run by hand
/// (`-- --ignored --nocapture`), it asserts nothing of speed.
#[tokio::test]
#[ignore]
async fn cost_per_request_by_algorithm() {
    let (ec, rsa) = (new_key(), new_rsa_key());
    let document = jwks(&[jwk(&ec, "ec-1"), rsa_jwk(&rsa, "rsa-1")]);
    let auth = MockServer::start().await;
    publish(&auth, &document).await;
    let uri = auth.uri();
    let app = TestApp::spawn_with(|vars| {
        vars.insert("supabase_jwks".into(), document.clone());
        vars.insert("supabase_jwks_url".into(), format!("{uri}{JWKS_PATH}"));
        vars.insert("supabase_jwks_host".into(), uri.clone());
    })
    .await;
    let user = Uuid::new_v4();
    // `rsa-2` is not pinned, so its tokens go to the fetched document (the same key).
    publish(&auth, &jwks(&[rsa_jwk(&rsa, "rsa-2")])).await;
    let kinds = [
        ("no token (401)", None, 401),
        ("HS256, legacy secret", Some(app.token_for(user)), 400),
        ("ES256, pinned JWKS", Some(es256(&ec, Some("ec-1"), user)), 400),
        ("RS256, pinned JWKS", Some(rs256(&rsa, Some("rsa-1"), user)), 400),
        ("RS256, fetched JWKS (cached)", Some(rs256(&rsa, Some("rsa-2"), user)), 400),
    ];
    const ROUNDS: usize = 300;
    let mut times = vec![Vec::with_capacity(ROUNDS); kinds.len()];
    for round in 0..ROUNDS + 20 {
        for (i, (what, token, status)) in kinds.iter().enumerate() {
            let mut request = app.client.post(app.url("/functions/v1/session-complete")).json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let started = std::time::Instant::now();
            let response = request.send().await.expect("session-complete");
            assert_eq!(response.status().as_u16(), *status, "{what}");
            response.bytes().await.unwrap();
            if round >= 20 {
                times[i].push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    for ((what, _, _), mut times) in kinds.iter().zip(times) {
        times.sort_by(f64::total_cmp);
        eprintln!("{what}: median {:.3} ms, p90 {:.3} ms", times[ROUNDS / 2], times[ROUNDS * 9 / 10]);
    }
    assert_eq!(fetches(&auth).await, 1, "one fetch for all the rsa-2 tokens");
}
