//! Any body to every endpoint (natively, through `dispatch`, with a fake platform whose
//! database and upstreams are unavailable): never a panic, never a 500.
#![no_main]
use libero_shared::http::{dispatch, ApiRequest};
use libero_shared::fakes::FakePlatform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let endpoints = [
        (&session_complete::ENDPOINT, "/"),
        (&stripe_checkout::ENDPOINT, "/"),
        (&stripe_checkout::ENDPOINT, "/portal"),
        (&stripe_webhook::ENDPOINT, "/"),
        (&generate_script::ENDPOINT, "/"),
        (&chatgpt_chat::ENDPOINT, "/"),
        (&ai_hypnosis::ENDPOINT, "/"),
        (&tts::ENDPOINT, "/"),
        (&elevenlabs_tts_proxy::ENDPOINT, "/"),
    ];
    // A token that verifies, so the body reaches the parser (HS256 over this payload
    // with the secret below; exp far in the future).
    let platform = FakePlatform::with_vars(&[
        ("supabase_jwt_secret", "fuzz-secret-0123456789abcdef"),
        ("stripe_webhook_secrets", "whsec_fuzz"),
        ("stripe_secret_key", "sk_test_fuzz"),
        ("stripe_price_tokens_small", "price_small"),
        ("openai_api_key", "sk-fuzz"),
        ("openai_max_attempts", "1"),
        ("elevenlabs_api_key", "xi-fuzz"),
        ("elevenlabs_max_attempts", "1"),
        ("allowed_origins", "*"),
        // Without these the endpoints rightly answer 500 config_missing.
        ("app_origins", "http://localhost:5173"),
        ("database_url", "postgres://fake"),
        ("jwt_audience", "authenticated"),
    ]);
    let t = platform.now_unix_ms / 1000;
    for (endpoint, path) in endpoints {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if endpoint.name == "stripe-webhook" {
            headers.push(("stripe-signature".into(), libero_shared::stripe_signature::sign(data, "whsec_fuzz", t)));
        } else {
            headers.push(("authorization".into(), format!("Bearer {}", token())));
        }
        let request = ApiRequest {
            method: "POST".into(),
            path: path.into(),
            query: String::new(),
            headers,
            body: data.to_vec(),
            request_id: "fuzz".into(),
        };
        let response = dispatch(endpoint, &request, &platform);
        assert_ne!(response.status, 500, "{} answered 500", endpoint.name);
    }
});

/// HS256 token for user 6f1c1a36-…, aud authenticated, exp 4102444800 (2100-01-01),
/// signed with "fuzz-secret-0123456789abcdef"; built once with the tests' sign_hs256.
fn token() -> &'static str {
    include_str!("../token.txt").trim()
}
