//! tts and elevenlabs-tts-proxy end to end (issue 6): the real components through the
//! host, a fresh database per test, fake OpenAI and ElevenLabs on loopback (`wiremock`).
//!
//! Retry settings are shrunk through the `openai_*` / `elevenlabs_*` variables (2
//! attempts, ~10 ms waits) so the failure paths stay fast.

use std::time::Duration;

use crate::speech_support::{Fakes, ELEVEN_KEY, OPENAI_KEY, UPSTREAM_SECRET};
use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;
use wiremock::matchers::{body_partial_json, header, method, path, path_regex};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

const TTS: &str = "/functions/v1/tts";
const PREMIUM: &str = "/functions/v1/elevenlabs-tts-proxy";

const DEFAULT_VOICE: &str = "DefaultVoice01";
/// Put in user texts: user content must never reach the log.
const USER_SECRET: &str = "my-private-affirmation-42";

const MP3: &[u8] = b"ID3\x04\x00fake-mp3-audio-bytes";

/// The app with both providers pointed at `fakes` (keys set only for those given), the
/// default and the premium voices on offer, fast retries, and `extra` variables.
async fn spawn(fakes: Fakes, extra: &[(&str, &str)]) -> TestApp {
    // The premium voices on offer besides the default.
    let voices =
        [("elevenlabs_default_voice_id", DEFAULT_VOICE), ("elevenlabs_voice_ids", "Voice_42,down,refused,json")];
    crate::speech_support::spawn(fakes, 3_000, 6_000, &[&voices[..], extra].concat()).await
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

/// The request as `user`, its answer still streaming (for the tests that read it as it comes).
async fn send(app: &TestApp, route: &str, user: Uuid, body: &Value) -> reqwest::Response {
    app.client.post(app.url(route)).bearer_auth(app.token_for(user)).json(body).send().await.expect("request")
}

async fn post(app: &TestApp, route: &str, user: Uuid, body: &Value) -> Answer {
    let response = send(app, route, user, body).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body").to_vec();
    Answer { status, headers, bytes }
}

fn audio(bytes: &[u8], content_type: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).insert_header("content-type", content_type).set_body_bytes(bytes.to_vec())
}

fn upstream_error(status: u16) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_string(format!("{{\"detail\":\"{UPSTREAM_SECRET} {OPENAI_KEY}\"}}"))
}

/// Neither the keys, upstream error bodies nor user text reach the client or the log.
fn assert_nothing_leaked(app: &TestApp, answers: &[&Answer]) {
    for answer in answers {
        let text = String::from_utf8_lossy(&answer.bytes);
        for secret in [OPENAI_KEY, ELEVEN_KEY, UPSTREAM_SECRET] {
            assert!(!text.contains(secret), "response leaks {secret}: {text}");
        }
    }
    for line in app.logs() {
        for secret in [OPENAI_KEY, ELEVEN_KEY, UPSTREAM_SECRET, USER_SECRET] {
            assert!(!line.contains(secret), "log leaks {secret}: {line}");
        }
    }
}

async fn cache_rows(app: &TestApp) -> (i64, i64) {
    let row = app
        .db_client()
        .await
        .query_one("SELECT count(*), coalesce(sum(byte_size), 0)::int8 FROM public.tts_cache", &[])
        .await
        .expect("reading tts_cache");
    (row.get(0), row.get(1))
}

// ---------------------------------------------------------------------------------------
// tts: the chain
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tts_openai_answers_then_identical_request_is_served_from_the_cache() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .and(header("authorization", format!("Bearer {OPENAI_KEY}").as_str()))
        .and(body_partial_json(json!({
            "model": "gpt-4o-mini-tts", "voice": "nova", "input": format!("Breathe in. {USER_SECRET}"),
            "speed": 1.25, "response_format": "mp3"
        })))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;

    let first =
        post(&app, TTS, user, &json!({"text": format!("Breathe in. {USER_SECRET}"), "voice": "nova", "speed": 1.25}))
            .await;
    assert_eq!(first.status, 200, "{:?}", first.json());
    assert_eq!(first.header("content-type"), Some("audio/mpeg"));
    assert_eq!(first.header("x-tts-provider"), Some("openai"));
    assert_eq!(first.header("x-tts-cache"), Some("miss"));
    assert_eq!(first.bytes, MP3);
    assert_eq!(cache_rows(&app).await, (1, MP3.len() as i64));

    // Same request after normalisation (whitespace, voice case, speed rounding, the
    // default model named explicitly, the format's other name): no upstream call.
    let again = post(
        &app,
        TTS,
        user,
        &json!({"input": format!("  Breathe   in.\n{USER_SECRET} "), "voice": "NOVA", "speed": 1.2501,
                "model": "gpt-4o-mini-tts", "response_format": "mp3"}),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-tts-provider"), Some("openai"));
    assert_eq!(again.header("x-tts-cache"), Some("hit"));
    assert_eq!(again.header("content-type"), Some("audio/mpeg"));
    assert_eq!(again.bytes, MP3);
    assert_nothing_leaked(&app, &[&first, &again]);
    app.assert_ledger_consistent().await;
    openai.verify().await;
}

#[tokio::test]
async fn tts_openai_down_falls_back_to_elevenlabs_in_the_default_voice() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(upstream_error(503))
        .expect(2)
        .mount(&openai)
        .await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/text-to-speech/{DEFAULT_VOICE}/stream")))
        .and(header("xi-api-key", ELEVEN_KEY))
        .and(body_partial_json(json!({"text": "Relax your shoulders."})))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;

    let answer = post(&app, TTS, user, &json!({"text": "Relax your shoulders.", "voice": "alloy"})).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.header("x-tts-provider"), Some("elevenlabs"));
    assert_eq!(answer.header("content-type"), Some("audio/mpeg"));
    assert_eq!(answer.bytes, MP3);
    // A stand-in voice is not cached: once OpenAI is back, the requested voice answers.
    assert_eq!(cache_rows(&app).await.0, 0);
    assert_nothing_leaked(&app, &[&answer]);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn tts_both_down_is_503_with_browser_fallback() {
    let openai = MockServer::start().await;
    Mock::given(method("POST")).respond_with(upstream_error(500)).mount(&openai).await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST")).respond_with(upstream_error(401)).expect(1).mount(&eleven).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;

    let answer = post(&app, TTS, user, &json!({"text": format!("Hello {USER_SECRET}")})).await;
    assert_eq!(answer.status, 503);
    let body = answer.json();
    assert_eq!(body["fallback"], "browser");
    assert_eq!(body["reason"], "upstream_unavailable");
    assert_eq!(body["error"]["code"], "tts_unavailable");
    assert_nothing_leaked(&app, &[&answer]);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn tts_without_keys_is_503_with_browser_fallback() {
    let app = spawn(Fakes { openai: None, elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let answer = post(&app, TTS, user, &json!({"text": "Hello"})).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["fallback"], "browser");
    assert_eq!(answer.json()["reason"], "not_configured");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn tts_content_type_per_format() {
    let openai = MockServer::start().await;
    let formats = [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm"),
    ];
    for (format, _) in formats {
        Mock::given(method("POST"))
            .and(path("/v1/audio/speech"))
            .and(body_partial_json(json!({"response_format": format})))
            // The upstream's own content type is not trusted; ours follows the format.
            .respond_with(audio(format.as_bytes(), "application/octet-stream"))
            .expect(1)
            .mount(&openai)
            .await;
    }
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    for (format, content_type) in formats {
        let answer = post(&app, TTS, user, &json!({"text": "One two three.", "format": format})).await;
        assert_eq!(answer.status, 200, "{format}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{format}");
        assert_eq!(answer.bytes, format.as_bytes());
        // Served again from the cache with the same type.
        let hit = post(&app, TTS, user, &json!({"text": "One two three.", "format": format})).await;
        assert_eq!((hit.header("x-tts-cache"), hit.header("content-type")), (Some("hit"), Some(content_type)));
    }
    openai.verify().await;
}

#[tokio::test]
async fn tts_cache_keeps_to_its_size_bound_and_expires() {
    let openai = MockServer::start().await;
    // 10 bytes per answer; the cache holds at most 25 bytes, so 2 entries.
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(b"0123456789", "audio/mpeg"))
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("tts_cache_max_bytes", "25")]).await;
    let user = app.create_user().await;
    for text in ["one", "two", "three"] {
        assert_eq!(post(&app, TTS, user, &json!({"text": text})).await.status, 200);
    }
    assert_eq!(cache_rows(&app).await, (2, 20));
    // "one" was least recently used and is gone; "three" is a hit.
    assert_eq!(post(&app, TTS, user, &json!({"text": "three"})).await.header("x-tts-cache"), Some("hit"));
    assert_eq!(post(&app, TTS, user, &json!({"text": "one"})).await.header("x-tts-cache"), Some("miss"));

    // Expiry counts from synthesis: an entry older than the TTL is not served.
    app.db_client()
        .await
        .execute("UPDATE public.tts_cache SET created_at = now() - interval '8 days'", &[])
        .await
        .expect("ageing the cache");
    assert_eq!(post(&app, TTS, user, &json!({"text": "three"})).await.header("x-tts-cache"), Some("miss"));
    // That put dropped the expired entries.
    assert_eq!(cache_rows(&app).await, (1, 10));
}

#[tokio::test]
async fn tts_bad_input_is_rejected_before_any_upstream_call() {
    let openai = MockServer::start().await;
    // Exactly OpenAI's limit of 4096 characters is accepted.
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"input": "a".repeat(4096)})))
        .respond_with(audio(MP3, "audio/mpeg"))
        .with_priority(1)
        .expect(1)
        .mount(&openai)
        .await;
    Mock::given(method("POST")).respond_with(audio(MP3, "audio/mpeg")).expect(0).mount(&openai).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let bad = [
        json!({"text": ""}),
        json!({"text": "   "}),
        json!({"text": "a".repeat(4097)}),
        json!({"text": "hi", "speed": 0.2}),
        json!({"text": "hi", "speed": 4.5}),
        json!({"text": "hi", "speed": "fast"}),
        json!({"text": "hi", "format": "ogg"}),
        json!({"text": "hi", "voice": "../../admin"}),
        json!({"text": "hi", "model": "gpt/../x"}),
        json!({"text": "hi", "unknown": true}),
        json!({"voice": "alloy"}),
    ];
    for body in bad {
        let answer = post(&app, TTS, user, &body).await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.json());
        assert!(answer.json()["error"]["code"].is_string());
    }
    assert_eq!(post(&app, TTS, user, &json!({"text": "a".repeat(4096)})).await.status, 200);
    let unauthenticated = app.client.post(app.url(TTS)).json(&json!({"text": "hi"})).send().await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    openai.verify().await;
}

// ---------------------------------------------------------------------------------------
// elevenlabs-tts-proxy: premium
// ---------------------------------------------------------------------------------------

async fn ledger_reasons(app: &TestApp, user: Uuid) -> Vec<(String, i32)> {
    app.db_client()
        .await
        .query("SELECT reason, delta FROM public.token_ledger WHERE user_id = $1 ORDER BY id", &[&user])
        .await
        .expect("reading the ledger")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn premium_mock(voice: &str) -> MockBuilder {
    Mock::given(method("POST"))
        .and(path(format!("/v1/text-to-speech/{voice}/stream")))
        .and(header("xi-api-key", ELEVEN_KEY))
}

#[tokio::test]
async fn premium_is_paid_per_started_block_of_characters_at_the_models_price() {
    let eleven = MockServer::start().await;
    premium_mock("Voice_42")
        .and(body_partial_json(json!({"model_id": "eleven_multilingual_v2", "voice_settings": {"stability": 0.4}})))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&eleven)
        .await;
    premium_mock("Voice_42")
        .and(body_partial_json(json!({"model_id": "eleven_turbo_v2_5"})))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 10).await;

    // 501 characters: two started blocks of 500 at 1 token each (token_prices).
    let text = "a".repeat(501);
    let answer = post(
        &app,
        PREMIUM,
        user,
        &json!({"text": text, "voice_id": "Voice_42", "model_id": "eleven_multilingual_v2", "voice_settings": {"stability": 0.4}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.bytes, MP3);
    assert_eq!(answer.header("content-type"), Some("audio/mpeg"));
    assert_eq!(answer.header("x-tts-provider"), Some("elevenlabs"));
    assert_eq!(answer.header("x-tokens-charged"), Some("2"));
    assert_eq!(answer.header("x-tokens-balance"), Some("8"));
    assert_eq!(app.tokens_of(user).await, 8);

    // A Turbo model costs ElevenLabs half as much per character, and so the user: 1000
    // characters are one started block of 1000 (elevenlabs_tts_fast).
    let turbo = post(
        &app,
        PREMIUM,
        user,
        &json!({"text": "b".repeat(1000), "voice_id": "Voice_42", "model_id": "eleven_turbo_v2_5"}),
    )
    .await;
    assert_eq!(turbo.status, 200, "{:?}", turbo.json());
    assert_eq!(turbo.header("x-tokens-charged"), Some("1"));
    assert_eq!(app.tokens_of(user).await, 7);
    assert_eq!(
        ledger_reasons(&app, user).await,
        vec![("purchase".into(), 10), ("spend".into(), -2), ("spend".into(), -1)]
    );
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn premium_is_free_on_plan_mystic() {
    let eleven = MockServer::start().await;
    premium_mock(DEFAULT_VOICE).respond_with(audio(b"pcm-samples", "audio/pcm")).expect(1).mount(&eleven).await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.db_client()
        .await
        .execute("UPDATE public.user_profiles SET plan = 'mystic' WHERE id = $1", &[&user])
        .await
        .expect("making the user mystic");

    let answer = post(&app, PREMIUM, user, &json!({"text": "b".repeat(2000), "outputFormat": "pcm_24000"})).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.header("content-type"), Some("audio/pcm"));
    assert_eq!(answer.header("x-tokens-charged"), Some("0"));
    assert_eq!(app.tokens_of(user).await, 0);
    assert!(ledger_reasons(&app, user).await.is_empty());
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn premium_is_refunded_when_the_upstream_fails() {
    let eleven = MockServer::start().await;
    premium_mock("down").respond_with(upstream_error(503)).expect(2).mount(&eleven).await;
    premium_mock("refused").respond_with(upstream_error(401)).expect(1).mount(&eleven).await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 5).await;

    let down = post(&app, PREMIUM, user, &json!({"text": format!("x {USER_SECRET}"), "voice_id": "down"})).await;
    assert_eq!(down.status, 503, "{:?}", down.json());
    assert_eq!(down.json()["error"]["code"], "elevenlabs_unavailable");
    assert!(down.header("retry-after").is_some());
    assert_eq!(app.tokens_of(user).await, 5);
    app.assert_ledger_consistent().await;

    let refused = post(&app, PREMIUM, user, &json!({"text": "y", "voice_id": "refused"})).await;
    assert_eq!(refused.status, 502, "{:?}", refused.json());
    assert_eq!(refused.json()["error"]["code"], "elevenlabs_rejected");
    assert_eq!(app.tokens_of(user).await, 5);

    let reasons: Vec<String> = ledger_reasons(&app, user).await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["purchase", "spend", "spend_refund", "spend", "spend_refund"]);
    assert_nothing_leaked(&app, &[&down, &refused]);
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn an_answer_that_is_not_audio_is_neither_played_nor_paid_for() {
    let eleven = MockServer::start().await;
    let page = ResponseTemplate::new(200)
        .insert_header("content-type", "application/json")
        .set_body_string(r#"{"status":"ok"}"#);
    premium_mock("json").respond_with(page.clone()).expect(1).mount(&eleven).await;
    let openai = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/audio/speech")).respond_with(page).expect(1).mount(&openai).await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/text-to-speech/"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 5).await;

    let premium = post(&app, PREMIUM, user, &json!({"text": "hello", "voice_id": "json"})).await;
    assert_eq!(premium.status, 503, "{:?}", premium.json());
    assert_eq!(app.tokens_of(user).await, 5, "refunded");

    // tts treats it like OpenAI being down and takes the next link of the chain.
    let speech = post(&app, TTS, user, &json!({"text": "hello"})).await;
    assert_eq!(speech.status, 200);
    assert_eq!(speech.header("x-tts-provider"), Some("elevenlabs"));
    assert_eq!(speech.bytes, MP3);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn premium_402_with_the_balance_when_short() {
    let eleven = MockServer::start().await;
    Mock::given(method("POST")).respond_with(audio(MP3, "audio/mpeg")).expect(0).mount(&eleven).await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 1).await;

    let answer = post(&app, PREMIUM, user, &json!({"text": "c".repeat(600)})).await;
    assert_eq!(answer.status, 402, "{:?}", answer.json());
    let body = answer.json();
    assert_eq!(body["error"]["code"], "insufficient_tokens");
    assert_eq!((body["balance"].as_i64(), body["cost"].as_i64()), (Some(1), Some(2)));
    assert_eq!(app.tokens_of(user).await, 1);
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn premium_bad_input_is_rejected_and_costs_nothing() {
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(".*"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(0)
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 50).await;
    let bad = [
        json!({"text": ""}),
        json!({"text": "d".repeat(5001)}),
        json!({"text": "hi", "voice_id": "../../v1/user"}),
        json!({"text": "hi", "voice_id": "a/b"}),
        json!({"text": "hi", "voice_id": "a%2Fb"}),
        json!({"text": "hi", "voice_id": "a?b=c"}),
        json!({"text": "hi", "voice_id": ""}),
        json!({"text": "hi", "output_format": "mp3_44100_128&x=1"}),
        json!({"text": "hi", "model_id": "m/../n"}),
        json!({"text": "hi", "voice_settings": {"stability": 2}}),
        json!({"text": "hi", "voice_settings": {"speed": 3}}),
        json!({"text": "hi", "voice_settings": {"unknown": 1}}),
        // Not on offer: another voice of the operator's account, an unknown model.
        json!({"text": "hi", "voice_id": "MyPrivateClone01"}),
        json!({"text": "hi", "model_id": "eleven_monolingual_v9"}),
    ];
    for body in bad {
        let answer = post(&app, PREMIUM, user, &body).await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.json());
    }
    assert_eq!(app.tokens_of(user).await, 50);
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn premium_without_a_key_is_503_and_costs_nothing() {
    let app = spawn(Fakes { openai: None, elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 5).await;
    let answer = post(&app, PREMIUM, user, &json!({"text": "hi"})).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"]["code"], "elevenlabs_not_configured");
    assert_eq!(app.tokens_of(user).await, 5);
    app.assert_ledger_consistent().await;
}

// ---------------------------------------------------------------------------------------
// Streaming through (a hand-written upstream: wiremock sends a body all at once)
// ---------------------------------------------------------------------------------------

/// How the fake upstream ends its chunked audio after the first chunk.
enum End {
    /// Close the connection mid-body (no terminating chunk).
    Break,
    /// Send `rest` and end cleanly once signalled.
    After(oneshot::Receiver<()>, &'static [u8]),
}

/// An upstream on loopback that answers one request with chunked audio: `first`, then
/// `end`. Returns its base URL.
async fn chunked_upstream(first: &'static [u8], end: End) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let mut buffer = Vec::new();
        let mut piece = [0u8; 8192];
        let body_start = loop {
            let n = socket.read(&mut piece).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buffer.extend_from_slice(&piece[..n]);
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..body_start]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < body_start + length {
            let n = socket.read(&mut piece).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buffer.extend_from_slice(&piece[..n]);
        }
        let chunk =
            |bytes: &[u8]| [format!("{:x}\r\n", bytes.len()).into_bytes(), bytes.to_vec(), b"\r\n".to_vec()].concat();
        let mut out =
            b"HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                .to_vec();
        out.extend(chunk(first));
        let _ = socket.write_all(&out).await;
        let _ = socket.flush().await;
        match end {
            End::Break => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            End::After(signal, rest) => {
                let _ = signal.await;
                let mut tail = chunk(rest);
                tail.extend_from_slice(b"0\r\n\r\n");
                let _ = socket.write_all(&tail).await;
                let _ = socket.flush().await;
            }
        }
        let _ = socket.shutdown().await;
    });
    base
}

#[tokio::test]
async fn tts_miss_streams_audio_through_and_fills_the_cache_at_the_end() {
    let (release, released) = oneshot::channel();
    let base = chunked_upstream(b"first-half|", End::After(released, b"second-half")).await;
    let app = spawn(Fakes { openai: Some(base), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;

    let mut response = send(&app, TTS, user, &json!({"text": "Stream me."})).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-tts-provider"], "openai");
    // The first chunk arrives while the upstream is still holding back the rest.
    let first =
        tokio::time::timeout(Duration::from_secs(5), response.chunk()).await.expect("first chunk in time").unwrap();
    assert_eq!(first.as_deref(), Some(&b"first-half|"[..]));
    assert_eq!(cache_rows(&app).await.0, 0, "nothing cached before the upstream ends");

    release.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(piece) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&piece);
    }
    assert_eq!(rest, b"second-half");
    assert_eq!(cache_rows(&app).await, (1, 22));
    let hit = post(&app, TTS, user, &json!({"text": "Stream me."})).await;
    assert_eq!((hit.header("x-tts-cache"), hit.bytes.as_slice()), (Some("hit"), &b"first-half|second-half"[..]));
}

#[tokio::test]
async fn tts_broken_stream_is_cut_short_and_not_cached() {
    let base = chunked_upstream(b"partial", End::Break).await;
    let app = spawn(Fakes { openai: Some(base), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let response = send(&app, TTS, user, &json!({"text": "Break me."})).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.is_err(), "a cut-off body must not look complete");
    assert_eq!(cache_rows(&app).await.0, 0);
}

#[tokio::test]
async fn premium_stream_broken_off_is_refunded() {
    let base = chunked_upstream(b"partial", End::Break).await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(base) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 5).await;
    let response = send(&app, PREMIUM, user, &json!({"text": "Break me."})).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-tokens-charged"], "1");
    assert!(response.bytes().await.is_err());
    // The refund is written before the guest drops the body; allow the host a moment.
    for _ in 0..50 {
        if app.tokens_of(user).await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.tokens_of(user).await, 5);
    let reasons: Vec<String> = ledger_reasons(&app, user).await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["purchase", "spend", "spend_refund"]);
    app.assert_ledger_consistent().await;
}

// ---------------------------------------------------------------------------------------
// tts: the hourly AI quota
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tts_misses_count_against_the_ai_quota_and_hits_do_not() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("ai_quota_free_per_hour", "1")]).await;
    let user = app.create_user().await;

    let first = post(&app, TTS, user, &json!({"text": "Breathe in slowly."})).await;
    assert_eq!(first.status, 200);

    // Another text needs the upstream again: over the quota, the client speaks locally.
    let limited = post(&app, TTS, user, &json!({"text": "And out again."})).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.json()["fallback"], "browser");
    assert_eq!(limited.json()["error"]["code"], "rate_limited");

    // The cached text is still served: a hit costs nothing upstream.
    let hit = post(&app, TTS, user, &json!({"text": "Breathe in slowly."})).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-tts-cache"), Some("hit"));
    assert_eq!(hit.bytes, MP3);
    assert_nothing_leaked(&app, &[&first, &limited, &hit]);
}

// ---------------------------------------------------------------------------------------
// Cost controls (issue 21): what a user can make the operator spend
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tts_passes_on_only_an_outage_never_a_refused_request() {
    let openai = MockServer::start().await;
    // OpenAI refuses this voice with this model (a client error, not an outage).
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .and(body_partial_json(json!({"voice": "ballad", "model": "tts-1"})))
        .respond_with(upstream_error(400))
        .expect(1)
        .mount(&openai)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(0)
        .mount(&openai)
        .await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST")).respond_with(audio(MP3, "audio/mpeg")).expect(0).mount(&eleven).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;

    let refused = post(&app, TTS, user, &json!({"text": "Hello", "voice": "ballad", "model": "tts-1"})).await;
    assert_eq!(refused.status, 502, "{:?}", refused.json());
    assert_eq!(refused.json()["error"]["code"], "tts_rejected");
    assert_eq!(refused.json()["fallback"], "browser");
    assert_eq!(refused.json()["reason"], "upstream_rejected");

    // Made-up voices and models never reach any upstream.
    for body in [
        json!({"text": "Hello", "voice": "rachel"}),
        json!({"text": "Hello", "voice": "21m00Tcm4TlvDq8ikWAM"}),
        json!({"text": "Hello", "model": "eleven_multilingual_v2"}),
        json!({"text": "Hello", "model": "gpt-4o-audio-preview"}),
    ] {
        let answer = post(&app, TTS, user, &body).await;
        assert_eq!((answer.status, answer.json()["error"]["code"].as_str()), (400, Some("invalid_field")), "{body}");
    }
    assert_nothing_leaked(&app, &[&refused]);
    openai.verify().await;
    eleven.verify().await;
}

#[tokio::test]
async fn premium_counts_against_the_hourly_quota_and_mystic_has_a_monthly_budget() {
    let eleven = MockServer::start().await;
    premium_mock(DEFAULT_VOICE).respond_with(audio(MP3, "audio/mpeg")).mount(&eleven).await;
    premium_mock("down").respond_with(upstream_error(503)).mount(&eleven).await;
    let app = spawn(
        Fakes { openai: None, elevenlabs: Some(eleven.uri()) },
        &[
            ("ai_quota_free_per_hour", "2"),
            ("ai_quota_mystic_per_hour", "5"),
            ("elevenlabs_mystic_chars_per_month", "1000"),
        ],
    )
    .await;

    // Free plan: two calls an hour, paid; the third is refused and costs nothing.
    let payer = app.create_user().await;
    app.grant_tokens(payer, 10).await;
    for _ in 0..2 {
        assert_eq!(post(&app, PREMIUM, payer, &json!({"text": "hi"})).await.status, 200);
    }
    let limited = post(&app, PREMIUM, payer, &json!({"text": "hi"})).await;
    assert_eq!(
        (limited.status, limited.json()["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{:?}",
        limited.json()
    );
    assert!(limited.header("retry-after").is_some());
    assert_eq!(app.tokens_of(payer).await, 8);
    // A refused charge does not use up the quota: a user without tokens keeps theirs.
    let broke = app.create_user().await;
    for _ in 0..3 {
        assert_eq!(post(&app, PREMIUM, broke, &json!({"text": "hi"})).await.status, 402);
    }
    app.grant_tokens(broke, 1).await;
    assert_eq!(post(&app, PREMIUM, broke, &json!({"text": "hi"})).await.status, 200);

    // Mystic: no tokens, but 1000 characters a month.
    let mystic = app.create_user().await;
    app.db_client()
        .await
        .execute("UPDATE public.user_profiles SET plan = 'mystic' WHERE id = $1", &[&mystic])
        .await
        .unwrap();
    assert_eq!(post(&app, PREMIUM, mystic, &json!({"text": "m".repeat(800)})).await.status, 200);
    // A failed call gives its characters back.
    let failed = post(&app, PREMIUM, mystic, &json!({"text": "f".repeat(150), "voice_id": "down"})).await;
    assert_eq!(failed.status, 503);
    let over = post(&app, PREMIUM, mystic, &json!({"text": "m".repeat(201)})).await;
    assert_eq!(
        (over.status, over.json()["error"]["code"].as_str()),
        (429, Some("premium_budget_exhausted")),
        "{:?}",
        over.json()
    );
    assert_eq!((over.json()["budget"].as_i64(), over.json()["used"].as_i64()), (Some(1000), Some(800)));
    assert!(over.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    let rest = post(&app, PREMIUM, mystic, &json!({"text": "m".repeat(200)})).await;
    assert_eq!((rest.status, rest.header("x-tokens-charged")), (200, Some("0")));
    let used: i32 = app
        .db_client()
        .await
        .query_one("SELECT chars FROM public.premium_tts_usage WHERE user_id = $1", &[&mystic])
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 1000);
    assert!(ledger_reasons(&app, mystic).await.is_empty(), "mystic pays no tokens");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn premium_offers_only_the_operators_voices_and_models() {
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(".*"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(0)
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: None, elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    app.grant_tokens(user, 50).await;
    let mystic = app.create_user().await;
    app.db_client()
        .await
        .execute("UPDATE public.user_profiles SET plan = 'mystic' WHERE id = $1", &[&mystic])
        .await
        .unwrap();
    for who in [user, mystic] {
        for body in [
            json!({"text": "hi", "voice_id": "PrivateCloneOfTheCEO"}),
            json!({"text": "hi", "model_id": "eleven_expensive_v9"}),
        ] {
            let answer = post(&app, PREMIUM, who, &body).await;
            assert_eq!(
                (answer.status, answer.json()["error"]["code"].as_str()),
                (400, Some("invalid_field")),
                "{body}"
            );
        }
    }
    assert_eq!(app.tokens_of(user).await, 50);
    let counted: i64 =
        app.db_client().await.query_one("SELECT count(*) FROM public.ai_usage", &[]).await.unwrap().get(0);
    assert_eq!(counted, 0, "a refused request uses no quota");
    app.assert_ledger_consistent().await;
    eleven.verify().await;
}

#[tokio::test]
async fn tts_cache_one_user_cannot_flush_entries_others_use() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(&[7u8; 100], "audio/mpeg"))
        .mount(&openai)
        .await;
    // Room for 10 answers of 100 bytes.
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("tts_cache_max_bytes", "1000")]).await;
    let (alice, bob, mallory) = (app.create_user().await, app.create_user().await, app.create_user().await);

    let popular = json!({"text": "Welcome back. Breathe in."});
    assert_eq!(post(&app, TTS, alice, &popular).await.header("x-tts-cache"), Some("miss"));
    assert_eq!(post(&app, TTS, bob, &popular).await.header("x-tts-cache"), Some("hit"));
    // Mallory asks for 25 one-off texts: more than the whole cache.
    for i in 0..25 {
        let answer = post(&app, TTS, mallory, &json!({"text": format!("junk {i}")})).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(post(&app, TTS, bob, &popular).await.header("x-tts-cache"), Some("hit"), "the popular entry survived");
    let (_, bytes) = cache_rows(&app).await;
    assert!(bytes <= 1000, "the bound holds: {bytes}");
}

#[tokio::test]
async fn tts_cache_does_not_keep_long_answers() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"input": "long"})))
        .respond_with(audio(&vec![1u8; 2 * 1024 * 1024], "audio/mpeg"))
        .mount(&openai)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"input": "short"})))
        .respond_with(audio(&vec![2u8; 512 * 1024], "audio/mpeg"))
        .mount(&openai)
        .await;
    // The default bound (100 MiB) and entry cap.
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let long = post(&app, TTS, user, &json!({"text": "long"})).await;
    assert_eq!((long.status, long.bytes.len()), (200, 2 * 1024 * 1024), "streamed whole");
    assert_eq!(post(&app, TTS, user, &json!({"text": "short"})).await.status, 200);
    assert_eq!(cache_rows(&app).await, (1, 512 * 1024), "only the short answer is cached");
}

#[tokio::test]
async fn tts_cache_puts_lock_only_their_bucket() {
    let app = spawn(Fakes { openai: None, elevenlabs: None }, &[]).await;
    let put = |bucket: i32| {
        format!("SELECT public.tts_cache_store('v1:k{bucket}', 'openai', 'audio/mpeg', '\\x0102'::bytea, {bucket}, 4, 1000, 3600)")
    };
    // A put into bucket 0 that has not committed yet...
    let holder = app.db_client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.batch_execute(&put(0)).await.unwrap();
    // ...does not hold up a put into another bucket (the old global lock did).
    let other = app.db_client().await;
    other.batch_execute("SET statement_timeout = '2s'").await.unwrap();
    other.batch_execute(&put(1)).await.expect("a put into bucket 1 while bucket 0 is busy");
    // It does hold up a put into the same bucket, which keeps each bucket's bound exact.
    let waits = other.batch_execute(&format!("{};", put(0).replace("v1:k0", "v1:k0b"))).await;
    assert!(waits.is_err(), "a second put into bucket 0 must wait for the first");
    holder.batch_execute("COMMIT").await.unwrap();
    let bytes: Vec<(i16, i64)> = other
        .query("SELECT bucket, bytes FROM public.tts_cache_buckets ORDER BY bucket", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(bytes, [(0, 2), (1, 2)]);
}

/// An access token for an anonymous sign-in (Supabase's `is_anonymous: true`).
fn guest_token(app: &TestApp, user: Uuid) -> String {
    let now = chrono::Utc::now().timestamp();
    app.token_with_claims(json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated", "email": "",
        "is_anonymous": true, "iat": now, "exp": now + 3600,
    }))
}

#[tokio::test]
async fn anonymous_sign_ins_make_no_paid_upstream_calls() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&openai)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(0)
        .mount(&openai)
        .await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST")).respond_with(audio(MP3, "audio/mpeg")).expect(0).mount(&eleven).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let member = app.create_user().await;
    let guest = app.create_user().await;
    app.grant_tokens(guest, 50).await;
    let token = guest_token(&app, guest);

    // A cached line costs nothing upstream: a guest may hear it.
    assert_eq!(post(&app, TTS, member, &json!({"text": "Welcome."})).await.status, 200);
    let send = |route: &'static str, body: Value| {
        let request = app.client.post(app.url(route)).bearer_auth(&token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, _) = send(TTS, json!({"text": "Welcome."})).await;
    assert_eq!(status, 200, "a cache hit");

    for (route, body) in [
        (TTS, json!({"text": "Something new."})),
        (PREMIUM, json!({"text": "Something new."})),
        ("/functions/v1/chatgpt-chat", json!({"messages": [{"role": "user", "content": "hi"}]})),
        ("/functions/v1/generate-script", json!({"ego_state": "guardian", "intent": "sleep", "duration_minutes": 2})),
        ("/functions/v1/ai-hypnosis", json!({"ego_state": "healer", "phase": "deepening"})),
    ] {
        let (status, answer) = send(route, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some("anonymous_not_allowed")),
            "{route}: {answer}"
        );
        if route == TTS {
            assert_eq!(answer["fallback"], "browser", "the guest speaks locally");
        }
    }
    assert_eq!(app.tokens_of(guest).await, 50);
    let counted: i64 = app
        .db_client()
        .await
        .query_one("SELECT count(*) FROM public.ai_usage WHERE user_id = $1", &[&guest])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 0);
    openai.verify().await;
    eleven.verify().await;
}

#[tokio::test]
async fn anonymous_paid_access_can_be_allowed() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(1)
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("anonymous_paid_access", "true")]).await;
    let guest = app.create_user().await;
    let response = app
        .client
        .post(app.url(TTS))
        .bearer_auth(guest_token(&app, guest))
        .json(&json!({"text": "Hi."}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    openai.verify().await;
}

/// The free path reaches the premium provider only within the operator's monthly budget:
/// OpenAI out of money (429 `insufficient_quota`) sends speech to ElevenLabs until the
/// budget's characters are spent, then every user gets the browser fallback.
#[tokio::test]
async fn tts_reaches_elevenlabs_only_within_the_monthly_budget() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(json!({"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}})),
        )
        .mount(&openai)
        .await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/text-to-speech/{DEFAULT_VOICE}/stream")))
        .respond_with(audio(MP3, "audio/mpeg"))
        .expect(2)
        .mount(&eleven)
        .await;
    let app = spawn(
        Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) },
        &[("elevenlabs_free_fallback_chars_per_month", "45")],
    )
    .await;
    let (user, other) = (app.create_user().await, app.create_user().await);
    // 20 characters each: two fit in 45, the third does not, whoever asks.
    for (who, text) in [(user, "Breathe in slowly 1."), (other, "Breathe in slowly 2.")] {
        let answer = post(&app, TTS, who, &json!({"text": text})).await;
        assert_eq!((answer.status, answer.header("x-tts-provider")), (200, Some("elevenlabs")), "{:?}", answer.json());
    }
    let refused = post(&app, TTS, user, &json!({"text": "Breathe in slowly 3."})).await;
    assert_eq!(refused.status, 503, "{:?}", refused.json());
    assert_eq!(
        (&refused.json()["fallback"], &refused.json()["reason"]),
        (&json!("browser"), &json!("fallback_budget_exhausted"))
    );
    let used: i64 = app
        .db_client()
        .await
        .query_one("select used from public.operator_budget_usage where budget = 'tts_elevenlabs_fallback_chars'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 40);
    eleven.verify().await;
}

/// A cache miss's characters, weighted by the model, count against the user's hourly
/// allowance: tts-1-hd counts double; a text that does not fit is refused with the
/// limit's name and Retry-After, before any upstream call.
#[tokio::test]
async fn tts_characters_are_metered_by_model() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(audio(MP3, "audio/mpeg"))
        .mount(&openai)
        .await;
    let app =
        spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("tts_free_chars_per_hour", "100")]).await;
    let user = app.create_user().await;
    let text = "a".repeat(30);
    let ok = post(&app, TTS, user, &json!({"text": text, "model": "tts-1"})).await;
    assert_eq!(ok.status, 200);
    let hd = post(&app, TTS, user, &json!({"text": format!("{text}b"), "model": "tts-1-hd"})).await;
    assert_eq!(hd.status, 200);
    let used: i64 = app
        .db_client()
        .await
        .query_one("select used from public.ai_meter_usage where user_id = $1 and meter = 'tts_chars'", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 30 + 2 * 31);
    // 92 of 100: 9 more characters of tts-1-hd (18) do not fit.
    let refused = post(&app, TTS, user, &json!({"text": "c".repeat(9), "model": "tts-1-hd"})).await;
    let body = refused.json();
    assert_eq!((refused.status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{body}");
    assert_eq!(
        (&body["limit_name"], &body["requested"], &body["fallback"]),
        (&json!("tts_chars"), &json!(18), &json!("browser"))
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(openai.received_requests().await.unwrap().len(), 2);
}
