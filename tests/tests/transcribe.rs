//! transcribe end to end (issue 15): the real component through the runtime under test
//! (the bundled host, or real Spin with `LIBERO_RUNTIME=spin`), a fresh database per
//! test, fake OpenAI and ElevenLabs on loopback (`wiremock`). The fakes' received
//! requests are read back and split by an independent multipart reader below, so each
//! test checks what the upstream got: boundary, fields, and the recording byte for byte.
//!
//! Retry settings are shrunk (2 attempts, ~10 ms waits) so the failure paths stay fast.

use std::collections::HashMap;

use crate::speech_support::{Fakes, ELEVEN_KEY, OPENAI_KEY, UPSTREAM_SECRET};
use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ROUTE: &str = "/functions/v1/transcribe";

/// The transcript and the prompt are the user's: never in the log.
const TRANSCRIPT: &str = "I felt calm after the session, TRANSCRIPT-PRIVATE-77";
const PROMPT: &str = "Libero, ego state, PROMPT-PRIVATE-88";
/// Chrome's FormData boundary shape.
const BROWSER_BOUNDARY: &str = "----WebKitFormBoundary7MA4YWxkTrZu0gW";

/// The app with the providers pointed at `fakes`, generous timeouts (a transcription
/// takes a while), and `extra` variables.
async fn spawn(fakes: Fakes, extra: &[(&str, &str)]) -> TestApp {
    crate::speech_support::spawn(fakes, 10_000, 20_000, extra).await
}

// ---------------------------------------------------------------------------------------
// Recordings and forms, as browsers make them
// ---------------------------------------------------------------------------------------

/// An EBML element with an 8-byte size (or unknown size, as MediaRecorder writes its
/// Segment and Clusters).
fn ebml(id: &[u8], data: Option<&[u8]>) -> Vec<u8> {
    let mut out = id.to_vec();
    match data {
        Some(data) => {
            out.extend_from_slice(&(0x0100_0000_0000_0000u64 | data.len() as u64).to_be_bytes());
            out.extend_from_slice(data);
        }
        None => out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
    }
    out
}

/// A WebM/Opus recording shaped like Chrome's MediaRecorder output: no `Duration`, a
/// Segment and Clusters of unknown size, `blocks` Opus frames of `frame_bytes` each,
/// 20 ms apart. The frames are pseudo-random, with CRLF and dashes in them, so a
/// corrupted byte or a cut at a false boundary shows.
fn browser_webm(blocks: usize, frame_bytes: usize) -> Vec<u8> {
    let mut out = ebml(
        &[0x1A, 0x45, 0xDF, 0xA3],
        Some(&[[0x42, 0x82, 0x84].as_slice(), b"webm", &[0x42, 0x87, 0x81, 0x04, 0x42, 0x85, 0x81, 0x02]].concat()),
    );
    out.extend(ebml(&[0x18, 0x53, 0x80, 0x67], None));
    let info = [
        ebml(&[0x2A, 0xD7, 0xB1], Some(&[0x0F, 0x42, 0x40])),
        ebml(&[0x4D, 0x80], Some(b"Chrome")),
        ebml(&[0x57, 0x41], Some(b"Chrome")),
    ]
    .concat();
    out.extend(ebml(&[0x15, 0x49, 0xA9, 0x66], Some(&info)));
    let track = [
        ebml(&[0xD7], Some(&[1])),
        ebml(&[0x83], Some(&[2])),
        ebml(&[0x86], Some(b"A_OPUS")),
        ebml(&[0x63, 0xA2], Some(b"OpusHead\x01\x01\x38\x01\x80\xBB\x00\x00\x00\x00\x00")),
    ]
    .concat();
    out.extend(ebml(&[0x16, 0x54, 0xAE, 0x6B], Some(&ebml(&[0xAE], Some(&track)))));
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for block in 0..blocks {
        let ms = block as u64 * 20;
        if block % 1000 == 0 {
            out.extend(ebml(&[0x1F, 0x43, 0xB6, 0x75], None));
            out.extend(ebml(&[0xE7], Some(&ms.to_be_bytes())));
        }
        let mut frame = vec![0x81];
        frame.extend_from_slice(&((ms % 20_000) as i16).to_be_bytes());
        frame.push(0x80);
        for i in 0..frame_bytes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            frame.push(if i == 0 {
                0x08 // the Opus TOC: one 20 ms frame
            } else if i % 97 == 0 {
                b'\r'
            } else if i % 97 == 1 {
                b'\n'
            } else if i % 97 < 8 {
                b'-'
            } else {
                seed as u8
            });
        }
        out.extend(ebml(&[0xA3], Some(&frame)));
    }
    out
}

/// One part of a multipart/form-data body: name, filename, content type, content.
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body of these parts.
fn form(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content_type, content) in parts {
        body.extend_from_slice(
            format!("--{BROWSER_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
        );
        if let Some(filename) = filename {
            body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BROWSER_BOUNDARY}--\r\n").as_bytes());
    body
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BROWSER_BOUNDARY}")
}

// ---------------------------------------------------------------------------------------
// Calling the app, and reading what the fakes received
// ---------------------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

async fn send(app: &TestApp, token: Option<String>, content_type: Option<&str>, query: &str, body: Vec<u8>) -> Answer {
    let mut request = app.client.post(format!("{}{query}", app.url(ROUTE))).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
}

async fn post_form(app: &TestApp, user: Uuid, parts: &[Part<'_>]) -> Answer {
    send(app, Some(app.token_for(user)), Some(&form_type()), "", form(parts)).await
}

fn transcript(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "text": text }))
}

fn upstream_error(status: u16) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_string(format!("{{\"detail\":\"{UPSTREAM_SECRET} {OPENAI_KEY}\"}}"))
}

/// One received form part.
#[derive(Debug)]
struct Received {
    filename: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        i += haystack[i..].iter().position(|b| *b == needle[0])?;
        if haystack.get(i..i + needle.len()) == Some(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Splits what an upstream received, independently of the component's own parser:
/// the boundary from `content-type`, the body framed by it exactly, each part's
/// headers and bytes. Also checks `content-length`.
fn received_form(request: &Request) -> HashMap<String, Received> {
    let content_type = request.headers.get("content-type").and_then(|v| v.to_str().ok()).expect("content-type");
    let boundary = content_type.strip_prefix("multipart/form-data; boundary=").expect("a multipart content type");
    let length =
        request.headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    assert_eq!(length, Some(request.body.len()), "content-length");
    let body = &request.body;
    assert!(body.starts_with(format!("--{boundary}\r\n").as_bytes()), "starts with the boundary");
    assert!(body.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()), "ends with the closing boundary");
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = HashMap::new();
    let mut at = boundary.len() + 4;
    loop {
        let headers_end = find(body, b"\r\n\r\n", at).expect("part headers");
        let headers = String::from_utf8(body[at..headers_end].to_vec()).expect("utf-8 headers");
        let content_end = find(body, delimiter.as_bytes(), headers_end + 4).expect("a delimiter after the part");
        let mut name = None;
        let mut received =
            Received { filename: None, content_type: None, body: body[headers_end + 4..content_end].to_vec() };
        for line in headers.split("\r\n") {
            let (key, value) = line.split_once(": ").expect("header line");
            match key.to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for param in value.split("; ").skip(1) {
                        let (k, v) = param.split_once('=').expect("param");
                        let v = v.trim_matches('"').to_string();
                        match k {
                            "name" => name = Some(v),
                            "filename" => received.filename = Some(v),
                            _ => panic!("unexpected parameter {k}"),
                        }
                    }
                }
                "content-type" => received.content_type = Some(value.to_string()),
                other => panic!("unexpected part header {other}"),
            }
        }
        let name = name.expect("a part name");
        assert!(parts.insert(name.clone(), received).is_none(), "field {name} sent twice");
        at = content_end + delimiter.len();
        if body[at..].starts_with(b"--") {
            return parts;
        }
        at += 2;
    }
}

fn text_of(parts: &HashMap<String, Received>, name: &str) -> Option<String> {
    parts.get(name).map(|p| String::from_utf8(p.body.clone()).expect("utf-8 field"))
}

/// Neither keys, upstream error bodies, the transcript nor the prompt reach the log;
/// keys and error bodies reach no client.
fn assert_nothing_leaked(app: &TestApp, answers: &[&Answer]) {
    for answer in answers {
        for secret in [OPENAI_KEY, ELEVEN_KEY, UPSTREAM_SECRET] {
            assert!(!answer.text.contains(secret), "response leaks {secret}: {}", answer.text);
        }
    }
    for line in app.logs() {
        for secret in [OPENAI_KEY, ELEVEN_KEY, UPSTREAM_SECRET, "TRANSCRIPT-PRIVATE", "PROMPT-PRIVATE"] {
            assert!(!line.contains(secret), "log leaks {secret}: {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------------------

/// The "done when": a browser-recorded webm blob sent as supabase-js sends
/// `FormData` comes back as text from the fake upstream.
#[tokio::test]
async fn a_browser_form_comes_back_as_text_from_openai() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .and(header("authorization", format!("Bearer {OPENAI_KEY}").as_str()))
        .respond_with(transcript(TRANSCRIPT))
        .expect(1)
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let webm = browser_webm(150, 200); // 3 s

    let answer = post_form(
        &app,
        user,
        &[
            ("file", Some("blob"), Some("audio/webm;codecs=opus"), &webm),
            ("language", None, None, b"en"),
            ("prompt", None, None, PROMPT.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body,
        json!({"text": TRANSCRIPT, "language": "en", "duration_seconds": 3.0, "provider": "openai"})
    );
    assert!(answer.headers.get("x-request-id").is_some());
    assert_eq!(answer.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));

    let received = openai.received_requests().await.expect("recorded");
    let parts = received_form(&received[0]);
    assert_eq!(text_of(&parts, "model").as_deref(), Some("gpt-4o-mini-transcribe"));
    assert_eq!(text_of(&parts, "response_format").as_deref(), Some("json"));
    assert_eq!(text_of(&parts, "language").as_deref(), Some("en"));
    assert_eq!(text_of(&parts, "prompt").as_deref(), Some(PROMPT));
    let file = &parts["file"];
    assert_eq!((file.filename.as_deref(), file.content_type.as_deref()), (Some("audio.webm"), Some("audio/webm")));
    assert!(file.body == webm, "the recording arrives byte for byte");
    assert_eq!(parts.len(), 5);
    assert_nothing_leaked(&app, &[&answer]);
    openai.verify().await;
}

/// supabase-js sends a `Blob` body as `application/octet-stream`; options go in the
/// query. The model is the operator's setting.
#[tokio::test]
async fn a_raw_blob_with_query_options() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(transcript("Hola"))
        .expect(1)
        .mount(&openai)
        .await;
    let app =
        spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("openai_transcribe_model", "whisper-1")])
            .await;
    let user = app.create_user().await;
    let webm = browser_webm(50, 100);

    let answer = send(
        &app,
        Some(app.token_for(user)),
        Some("application/octet-stream"),
        "?language=ES&prompt=caf%C3%A9+con+leche",
        webm.clone(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!((&answer.body["text"], &answer.body["language"]), (&json!("Hola"), &json!("es")));

    let parts = received_form(&openai.received_requests().await.expect("recorded")[0]);
    assert_eq!(text_of(&parts, "model").as_deref(), Some("whisper-1"));
    assert_eq!(text_of(&parts, "language").as_deref(), Some("es"));
    assert_eq!(text_of(&parts, "prompt").as_deref(), Some("café con leche"));
    assert!(parts["file"].body == webm);
}

#[tokio::test]
async fn openai_down_then_elevenlabs_answers() {
    let openai = MockServer::start().await;
    Mock::given(method("POST")).respond_with(upstream_error(503)).expect(2).mount(&openai).await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/speech-to-text"))
        .and(header("xi-api-key", ELEVEN_KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "language_code": "de", "language_probability": 0.98, "text": TRANSCRIPT,
            "words": [{"text": "I", "start": 0.1, "end": 0.3, "type": "word"}]
        })))
        .expect(1)
        .mount(&eleven)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    let webm = browser_webm(100, 300);

    let answer = post_form(
        &app,
        user,
        &[("file", Some("blob"), Some("audio/webm"), &webm), ("prompt", None, None, PROMPT.as_bytes())],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body,
        json!({"text": TRANSCRIPT, "language": "de", "duration_seconds": 2.0, "provider": "elevenlabs"})
    );

    let parts = received_form(&eleven.received_requests().await.expect("recorded")[0]);
    assert_eq!(text_of(&parts, "model_id").as_deref(), Some("scribe_v1"));
    assert_eq!(text_of(&parts, "tag_audio_events").as_deref(), Some("false"));
    assert!(!parts.contains_key("prompt") && !parts.contains_key("language_code"));
    assert!(parts["file"].body == webm);
    assert_nothing_leaked(&app, &[&answer]);
    openai.verify().await;
    eleven.verify().await;
}

#[tokio::test]
async fn both_down_is_503_with_browser_fallback_and_a_refusal_goes_nowhere_else() {
    let openai = MockServer::start().await;
    Mock::given(method("POST")).respond_with(upstream_error(500)).expect(2).mount(&openai).await;
    let eleven = MockServer::start().await;
    Mock::given(method("POST")).respond_with(upstream_error(429)).expect(2).mount(&eleven).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: Some(eleven.uri()) }, &[]).await;
    let user = app.create_user().await;
    let webm = browser_webm(10, 100);

    let down = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert_eq!(down.body["error"]["code"], "transcription_unavailable");
    assert_eq!((&down.body["fallback"], &down.body["reason"]), (&json!("browser"), &json!("upstream_unavailable")));
    openai.verify().await;
    eleven.verify().await;

    // OpenAI refuses the recording itself: a 502, and ElevenLabs is not paid to try.
    openai.reset().await;
    eleven.reset().await;
    Mock::given(method("POST")).respond_with(upstream_error(400)).expect(1).mount(&openai).await;
    Mock::given(method("POST")).respond_with(transcript("never")).expect(0).mount(&eleven).await;
    let refused = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
    assert_eq!(refused.status, 502, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "transcription_rejected");
    assert_eq!(refused.body["fallback"], "browser");

    // A 200 that is no transcript counts as the provider failing.
    openai.reset().await;
    eleven.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>gateway</html>"))
        .expect(1)
        .mount(&openai)
        .await;
    Mock::given(method("POST")).respond_with(transcript(TRANSCRIPT)).expect(1).mount(&eleven).await;
    let stood_in = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
    assert_eq!((stood_in.status, &stood_in.body["provider"]), (200, &json!("elevenlabs")), "{}", stood_in.text);
    assert_nothing_leaked(&app, &[&down, &refused, &stood_in]);
    openai.verify().await;
    eleven.verify().await;
}

#[tokio::test]
async fn no_provider_configured_is_503_without_using_the_quota() {
    let app = spawn(Fakes { openai: None, elevenlabs: None }, &[("ai_quota_free_per_hour", "0")]).await;
    let user = app.create_user().await;
    let answer = post_form(&app, user, &[("file", Some("blob"), None, &browser_webm(5, 50))]).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!((&answer.body["fallback"], &answer.body["reason"]), (&json!("browser"), &json!("not_configured")));
}

#[tokio::test]
async fn the_hourly_quota_is_refused_before_any_upstream_call() {
    let openai = MockServer::start().await;
    // Two calls for the first user, one for the second: never the refused third.
    Mock::given(method("POST")).respond_with(transcript(TRANSCRIPT)).expect(3).mount(&openai).await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("ai_quota_free_per_hour", "2")]).await;
    let user = app.create_user().await;
    let webm = browser_webm(5, 50);
    for _ in 0..2 {
        let ok = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
    }
    let over = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
    assert_eq!(over.status, 429, "{}", over.text);
    assert_eq!((&over.body["error"]["code"], &over.body["fallback"]), (&json!("rate_limited"), &json!("browser")));
    assert!(over.headers.get("retry-after").is_some());

    // Another user has a quota of their own.
    let other = app.create_user().await;
    assert_eq!(post_form(&app, other, &[("file", Some("blob"), None, &webm)]).await.status, 200);
    openai.verify().await;
}

/// Each hostile input gets its documented answer, and none reaches an upstream or uses
/// the quota: with a quota of one, a good request afterwards still goes through.
#[tokio::test]
async fn hostile_inputs_are_refused_before_anything_is_spent() {
    let openai = MockServer::start().await;
    let app = spawn(
        Fakes { openai: Some(openai.uri()), elevenlabs: None },
        &[("ai_quota_free_per_hour", "1"), ("transcribe_max_duration_seconds", "2")],
    )
    .await;
    let user = app.create_user().await;
    let token = || Some(app.token_for(user));
    let webm = browser_webm(50, 100); // 1 s
    let long = browser_webm(200, 10); // 4 s
    let ft = form_type();
    let now = chrono::Utc::now().timestamp();
    let guest = app.token_with_claims(json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
        "is_anonymous": true, "iat": now, "exp": now + 3600,
    }));
    let mut too_big = webm.clone();
    too_big.resize(25_000_001, 0);

    // Name, token, content type, query, body, expected status and code.
    type Case<'a> = (&'a str, Option<String>, Option<&'a str>, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no token", None, Some(&ft), "", form(&[("file", None, None, &webm)]), 401, ""),
        (
            "anonymous sign-in",
            Some(guest),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm)]),
            403,
            "anonymous_not_allowed",
        ),
        ("no content type", token(), None, "", webm.clone(), 415, "unsupported_media_type"),
        ("json", token(), Some("application/json"), "", b"{\"file\":\"x\"}".to_vec(), 415, "unsupported_media_type"),
        ("text", token(), Some("text/plain"), "", webm.clone(), 415, "unsupported_media_type"),
        (
            "image part",
            token(),
            Some(&ft),
            "",
            form(&[("file", Some("a.png"), Some("image/png"), &webm)]),
            415,
            "unsupported_media_type",
        ),
        ("empty raw body", token(), Some("audio/webm"), "", Vec::new(), 400, "empty_audio"),
        (
            "empty file",
            token(),
            Some(&ft),
            "",
            form(&[("file", Some("blob"), Some("audio/webm"), b"")]),
            400,
            "empty_audio",
        ),
        ("html as audio", token(), Some("audio/webm"), "", b"<!doctype html><p>hi</p>".to_vec(), 400, "not_audio"),
        (
            "pdf in the form",
            token(),
            Some(&ft),
            "",
            form(&[("file", Some("blob"), Some("audio/ogg"), b"%PDF-1.7 ...")]),
            400,
            "not_audio",
        ),
        ("form without file", token(), Some(&ft), "", form(&[("language", None, None, b"en")]), 400, "missing_file"),
        ("empty form", token(), Some(&ft), "", form(&[]), 400, "missing_file"),
        (
            "no boundary",
            token(),
            Some("multipart/form-data"),
            "",
            form(&[("file", None, None, &webm)]),
            400,
            "invalid_multipart",
        ),
        (
            "cut-off form",
            token(),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm)])[..webm.len() / 2].to_vec(),
            400,
            "invalid_multipart",
        ),
        (
            "two files",
            token(),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm), ("file", None, None, &webm)]),
            400,
            "invalid_field",
        ),
        (
            "unknown field",
            token(),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm), ("model", None, None, b"gpt-4o")]),
            400,
            "invalid_field",
        ),
        (
            "bad language",
            token(),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm), ("language", None, None, b"english")]),
            400,
            "invalid_field",
        ),
        ("bad query language", token(), Some("audio/webm"), "?language=zz", webm.clone(), 400, "invalid_field"),
        (
            "long prompt",
            token(),
            Some(&ft),
            "",
            form(&[("file", None, None, &webm), ("prompt", None, None, "p".repeat(1001).as_bytes())]),
            400,
            "invalid_field",
        ),
        ("over 25 MB", token(), Some("audio/webm"), "", too_big, 413, "payload_too_large"),
        ("too long", token(), Some(&ft), "", form(&[("file", None, None, &long)]), 413, "audio_too_long"),
    ];
    let mut answers = Vec::new();
    for (what, token, content_type, query, body, status, code) in cases {
        let answer = send(&app, token, content_type, query, body).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.text);
        if !code.is_empty() {
            assert_eq!(answer.body["error"]["code"], code, "{what}: {}", answer.text);
        }
        assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", answer.text);
        answers.push(answer);
    }
    let get = app.client.get(app.url(ROUTE)).bearer_auth(app.token_for(user)).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert!(get.headers().get("allow").is_some());
    assert!(openai.received_requests().await.expect("recorded").is_empty(), "nothing reached OpenAI");

    // The quota (one call) is untouched by all of the above.
    Mock::given(method("POST")).respond_with(transcript("ok")).expect(1).mount(&openai).await;
    let ok = post_form(&app, user, &[("file", Some("blob"), None, &webm)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_nothing_leaked(&app, &answers.iter().collect::<Vec<_>>());
    openai.verify().await;
}

/// A multi-megabyte recording (about 20 MB) goes through the runtime and reaches the
/// upstream intact, as a form and as a raw body.
#[tokio::test]
async fn a_multi_megabyte_recording_arrives_intact() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(transcript(TRANSCRIPT))
        .expect(2)
        .mount(&openai)
        .await;
    let app = spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[]).await;
    let user = app.create_user().await;
    let webm = browser_webm(4_000, 5_000); // 80 s, ~20 MB
    assert!(webm.len() > 20_000_000, "{}", webm.len());

    let as_form = post_form(&app, user, &[("file", Some("blob"), Some("audio/webm;codecs=opus"), &webm)]).await;
    assert_eq!(as_form.status, 200, "{}", as_form.text);
    assert_eq!(as_form.body["duration_seconds"], 80.0);
    let raw = send(&app, Some(app.token_for(user)), Some("audio/webm"), "", webm.clone()).await;
    assert_eq!(raw.status, 200, "{}", raw.text);

    for request in openai.received_requests().await.expect("recorded") {
        let parts = received_form(&request);
        assert!(parts["file"].body == webm, "the recording arrives byte for byte");
    }
    openai.verify().await;
}

// ---------------------------------------------------------------------------------------
// Lengths measured from the audio, and metered in seconds
// ---------------------------------------------------------------------------------------

/// 16 kHz 16-bit mono PCM (32,000 bytes a second) of `secs` seconds, whose header then
/// claims `byte_rate` and `data_size`.
fn wav(secs: usize, byte_rate: u32, data_size: u32) -> Vec<u8> {
    let data = vec![0u8; secs * 32_000];
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&[1, 0, 1, 0]);
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&byte_rate.to_le_bytes());
    out.extend_from_slice(&[2, 0, 16, 0]);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_size.to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// `frames` MPEG-1 layer III frames (128 kbit/s, 44.1 kHz, 26 ms each), the first
/// carrying a Xing tag that claims `xing_frames`.
fn mp3(frames: usize, xing_frames: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..frames {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        out.extend(std::iter::repeat_n(0x55, 413));
    }
    out[36..40].copy_from_slice(b"Xing");
    out[40..44].copy_from_slice(&1u32.to_be_bytes());
    out[44..48].copy_from_slice(&xing_frames.to_be_bytes());
    out
}

/// Headers that lie about the length: each is refused before the quota and any upstream
/// call, or measured at its true length (and then refused as too long).
#[tokio::test]
async fn lying_headers_are_refused_or_measured_at_their_true_length() {
    let openai = MockServer::start().await;
    let app = spawn(
        Fakes { openai: Some(openai.uri()), elevenlabs: None },
        &[("transcribe_max_duration_seconds", "60"), ("ai_quota_free_per_hour", "1")],
    )
    .await;
    let user = app.create_user().await;
    let token = || Some(app.token_for(user));

    let mut webm_junk = browser_webm(50, 100);
    webm_junk.extend_from_slice(&[0u8; 4096]);
    let mut webm_vorbis = browser_webm(50, 100);
    let at = webm_vorbis.windows(6).position(|w| w == b"A_OPUS").unwrap();
    webm_vorbis[at..at + 6].copy_from_slice(b"A_VORB");
    // A WebM whose 3,500 blocks of 20 ms (70 s) all carry timestamp 0, with a Duration of 1 s.
    let mut webm_stamped_zero =
        ebml(&[0x1A, 0x45, 0xDF, 0xA3], Some(&[[0x42, 0x82, 0x84].as_slice(), b"webm"].concat()));
    webm_stamped_zero.extend(ebml(&[0x18, 0x53, 0x80, 0x67], None));
    webm_stamped_zero
        .extend(ebml(&[0x15, 0x49, 0xA9, 0x66], Some(&ebml(&[0x44, 0x89], Some(&1000.0f64.to_be_bytes())))));
    webm_stamped_zero
        .extend(ebml(&[0x16, 0x54, 0xAE, 0x6B], Some(&ebml(&[0xAE], Some(&ebml(&[0x86], Some(b"A_OPUS")))))));
    webm_stamped_zero.extend(ebml(&[0x1F, 0x43, 0xB6, 0x75], None));
    for _ in 0..3_500 {
        webm_stamped_zero.extend(ebml(&[0xA3], Some(&[0x81, 0, 0, 0x80, 0x08, 1, 2, 3])));
    }
    let mut mp3_junk = mp3(10, 10);
    mp3_junk.extend(std::iter::repeat_n(0x33, 2_000_000));

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        // 50 minutes of PCM whose byte rate claims 4 GB a second.
        ("wav byte rate 0xFFFFFFFF", wav(3000 / 100, u32::MAX, 30 * 32_000), 422, "audio_length_unknown"),
        // 90 s of PCM whose data size claims 1 s: the data counts.
        ("wav data size too short", wav(90, 32_000, 32_000), 413, "audio_too_long"),
        // 3,000 frames (78 s) whose Xing tag claims 10 (0.26 s).
        ("mp3 xing claims 10 frames", mp3(3000, 10), 413, "audio_too_long"),
        ("mp3 frames then 2 MB of junk", mp3_junk, 422, "audio_length_unknown"),
        ("webm with junk after the blocks", webm_junk, 422, "audio_length_unknown"),
        ("webm not opus", webm_vorbis, 422, "audio_length_unknown"),
        ("webm duration 1 s, blocks stamped 0, 70 s of frames", webm_stamped_zero, 413, "audio_too_long"),
    ];
    for (what, body, status, code) in cases {
        let answer = send(&app, token(), Some("application/octet-stream"), "", body).await;
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {}",
            answer.text
        );
    }
    assert!(openai.received_requests().await.expect("recorded").is_empty(), "nothing reached OpenAI");
    let db = app.db_client().await;
    let counted: i64 = db.query_one("select count(*) from public.ai_usage", &[]).await.unwrap().get(0);
    let metered: i64 = db.query_one("select count(*) from public.ai_meter_usage", &[]).await.unwrap().get(0);
    assert_eq!((counted, metered), (0, 0), "no quota taken for a refusal");

    // The one allowed call still goes through: an honest 2 s WAV.
    Mock::given(method("POST")).respond_with(transcript("ok")).expect(1).mount(&openai).await;
    let ok = send(&app, token(), Some("audio/wav"), "", wav(2, 32_000, 2 * 32_000)).await;
    assert_eq!((ok.status, &ok.body["duration_seconds"]), (200, &json!(2.0)), "{}", ok.text);
    openai.verify().await;
}

/// Free transcription is metered in seconds of audio per hour: the measure is taken
/// first, settled to what OpenAI reports, and a call that does not fit is refused with
/// the limit's name and Retry-After.
#[tokio::test]
async fn seconds_of_audio_are_metered_and_settled_by_the_reported_duration() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"text": "ok", "usage": {"type": "duration", "seconds": 7.2}})),
        )
        .expect(2)
        .mount(&openai)
        .await;
    let app =
        spawn(Fakes { openai: Some(openai.uri()), elevenlabs: None }, &[("transcribe_free_seconds_per_hour", "20")])
            .await;
    let user = app.create_user().await;
    let webm = browser_webm(150, 50); // 3 s measured; OpenAI reports 7.2 s
    let db = app.db_client().await;
    let used = || async {
        db.query_one(
            "select coalesce(sum(used), 0)::bigint from public.ai_meter_usage where meter = 'transcribe_seconds'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };

    for expected in [8, 16] {
        let answer = send(&app, Some(app.token_for(user)), Some("audio/webm"), "", webm.clone()).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(used().await, expected, "billed by the reported 7.2 s, rounded up: {:?}", app.logs());
    }
    // 16 of 20 used: 3 more seconds fit, but a 5 s recording does not.
    let five = browser_webm(250, 50);
    let refused = send(&app, Some(app.token_for(user)), Some("audio/webm"), "", five).await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{}",
        refused.text
    );
    assert_eq!(refused.body["limit_name"], "transcribe_seconds");
    assert_eq!(
        (&refused.body["limit"], &refused.body["used"], &refused.body["fallback"]),
        (&json!(20), &json!(16), &json!("browser"))
    );
    let retry: u64 =
        refused.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(used().await, 16, "a refused call takes nothing");
    openai.verify().await;
}
