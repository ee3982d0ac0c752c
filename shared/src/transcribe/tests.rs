use super::sniff::samples;
use super::*;
use crate::db::SqlValue;
use crate::fakes::FakePlatform;

const USER_ID: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";
const QUOTA_GRANTED: &str = r#"{"allowed":true,"limit":30,"remaining":29,"reset_after":600}"#;

fn user() -> AuthenticatedUser {
    AuthenticatedUser { user_id: USER_ID.into(), email: None, role: "authenticated".into(), is_anonymous: false }
}

const METER_GRANTED: &str = r#"{"allowed":true,"limit":900,"used":3,"remaining":897,"reset_after":600,"window_start":"2026-01-01T10:00:00+00:00"}"#;

fn quota(platform: &FakePlatform, answer: &str) {
    platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(answer.as_bytes().to_vec())]]));
}

/// The seconds and the call both granted.
fn granted(platform: &FakePlatform) {
    quota(platform, METER_GRANTED);
    quota(platform, QUOTA_GRANTED);
}

fn request(content_type: Option<&str>, query: &str, body: Vec<u8>) -> ApiRequest {
    let headers = content_type.map(|ct| vec![("content-type".to_string(), ct.to_string())]).unwrap_or_default();
    ApiRequest { method: "POST".into(), path: "/".into(), query: query.into(), headers, body, request_id: "t".into() }
}

/// `(name, filename, content type, content)`.
type FormPart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A form as a browser builds it.
fn form(parts: &[FormPart]) -> ApiRequest {
    let mut body = Vec::new();
    for (name, filename, content_type, content) in parts {
        body.extend_from_slice(b"------WebKitFormBoundaryAbC123\r\n");
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(filename) = filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"------WebKitFormBoundaryAbC123--\r\n");
    request(Some("multipart/form-data; boundary=----WebKitFormBoundaryAbC123"), "", body)
}

fn error_of(request: &ApiRequest) -> (u16, &'static str) {
    let error = Upload::from_request(request).expect_err("refused");
    (error.status, error.code)
}

#[test]
fn reads_a_form_and_a_raw_body() {
    let webm = samples::webm(b"opus");
    let req = form(&[
        ("file", Some("blob"), Some("audio/webm;codecs=opus"), &webm),
        ("language", None, None, b"DE"),
        ("prompt", None, None, b"Libero, ego state"),
    ]);
    let upload = Upload::from_request(&req).unwrap();
    assert_eq!((upload.audio, upload.format), (&webm[..], AudioFormat::Webm));
    assert_eq!((upload.language.as_deref(), upload.prompt.as_deref()), (Some("de"), Some("Libero, ego state")));
    // Fields left empty count as not given.
    let req = form(&[("language", None, None, b""), ("file", Some("blob"), None, &webm), ("prompt", None, None, b" ")]);
    let upload = Upload::from_request(&req).unwrap();
    assert_eq!((upload.language, upload.prompt), (None, None));
    let req = form(&[
        ("file", Some("blob"), Some("audio/webm;codecs=opus"), &webm),
        ("language", None, None, b"DE"),
        ("prompt", None, None, b"Libero, ego state"),
    ]);
    let upload = Upload::from_request(&req).unwrap();
    assert_eq!((upload.audio, upload.format), (&webm[..], AudioFormat::Webm));
    assert_eq!((upload.language.as_deref(), upload.prompt.as_deref()), (Some("de"), Some("Libero, ego state")));

    // supabase-js sends a Blob as application/octet-stream; the bytes decide.
    let ogg = samples::ogg_opus(b"opus");
    let req = request(Some("application/octet-stream"), "language=en&prompt=caf%C3%A9+au+lait", ogg.clone());
    let upload = Upload::from_request(&req).unwrap();
    assert_eq!(upload.format, AudioFormat::Ogg);
    assert_eq!((upload.language.as_deref(), upload.prompt.as_deref()), (Some("en"), Some("café au lait")));

    // A label that disagrees with the bytes: the bytes win (Safari labels loosely).
    let req = request(Some("audio/wav"), "", samples::m4a(b"aac"));
    assert_eq!(Upload::from_request(&req).unwrap().format, AudioFormat::Mp4);
}

#[test]
fn hostile_uploads_get_their_own_answers() {
    let webm = samples::webm(b"opus");
    let cases: Vec<(ApiRequest, (u16, &str))> = vec![
        (request(None, "", webm.clone()), (415, "unsupported_media_type")),
        (request(Some("application/json"), "", b"{}".to_vec()), (415, "unsupported_media_type")),
        (request(Some("text/plain"), "", webm.clone()), (415, "unsupported_media_type")),
        (form(&[("file", Some("x.png"), Some("image/png"), &webm)]), (415, "unsupported_media_type")),
        (request(Some("audio/webm"), "", Vec::new()), (400, "empty_audio")),
        (form(&[("file", Some("blob"), Some("audio/webm"), b"")]), (400, "empty_audio")),
        (request(Some("audio/webm"), "", b"<html>not audio</html>".to_vec()), (400, "not_audio")),
        (form(&[("file", Some("blob"), None, b"\x89PNG\r\n\x1a\n")]), (400, "not_audio")),
        (form(&[("language", None, None, b"en")]), (400, "missing_file")),
        (form(&[]), (400, "missing_file")),
        (form(&[("file", None, None, &webm), ("file", None, None, &webm)]), (400, "invalid_field")),
        (form(&[("file", None, None, &webm), ("model", None, None, b"whisper-1")]), (400, "invalid_field")),
        (form(&[("file", None, None, &webm), ("language", None, None, b"english")]), (400, "invalid_field")),
        (form(&[("file", None, None, &webm), ("language", None, None, b"xx")]), (400, "invalid_field")),
        (form(&[("file", None, None, &webm), ("prompt", None, None, b"\xff\xfe")]), (400, "invalid_field")),
        (
            form(&[("file", None, None, &webm), ("prompt", None, None, "p".repeat(1001).as_bytes())]),
            (400, "invalid_field"),
        ),
        (form(&[("file", None, None, &webm), ("prompt", None, None, b"a\x07b")]), (400, "invalid_field")),
        (request(Some("audio/webm"), "language=en&language=de", webm.clone()), (400, "invalid_field")),
        (request(Some("audio/webm"), "prompt=%ZZ", webm.clone()), (400, "invalid_field")),
        (request(Some("multipart/form-data"), "", webm.clone()), (400, "invalid_multipart")),
        (request(Some("multipart/form-data; boundary=x"), "", webm.clone()), (400, "invalid_multipart")),
    ];
    for (req, expected) in cases {
        assert_eq!(
            error_of(&req),
            expected,
            "{:?} {}",
            req.headers,
            String::from_utf8_lossy(&req.body[..req.body.len().min(200)])
        );
    }
}

#[test]
fn size_limit_is_checked_on_the_recording() {
    let mut big = samples::wav(&[]);
    big.resize(MAX_AUDIO_BYTES + 1, 0);
    assert_eq!(error_of(&request(Some("audio/wav"), "", big.clone())), (413, "payload_too_large"));
    big.truncate(MAX_AUDIO_BYTES);
    assert!(Upload::from_request(&request(Some("audio/wav"), "", big)).is_ok());
}

fn configured(extra: &[(&str, &str)]) -> FakePlatform {
    let mut vars = vec![
        ("openai_api_key", "sk-x"),
        ("openai_max_attempts", "1"),
        ("elevenlabs_api_key", "xi-x"),
        ("elevenlabs_max_attempts", "1"),
    ];
    vars.extend_from_slice(extra);
    FakePlatform::with_vars(&vars)
}

fn upload_of(req: &ApiRequest) -> Upload<'_> {
    Upload::from_request(req).unwrap()
}

fn parts_sent(platform: &FakePlatform, index: usize) -> Vec<(String, Vec<u8>)> {
    let sent = platform.sent.borrow();
    let content_type = sent[index].headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone()).unwrap();
    let boundary = multipart::boundary(&content_type).unwrap();
    let body = sent[index].body.clone();
    multipart::parse(&body, &boundary).unwrap().into_iter().map(|p| (p.name, p.body.to_vec())).collect()
}

#[test]
fn openai_gets_the_recording_as_a_form() {
    let platform = configured(&[]);
    granted(&platform);
    platform.push_upstream(200, &[("content-type", "application/json")], br#"{"text":" Hello there. "}"#);
    let webm = samples::webm(&[&[0x42][..], &[9; 4999]].concat());
    let req = form(&[("file", Some("blob"), Some("audio/webm"), &webm), ("prompt", None, None, b"Libero")]);
    let response = transcribe(&platform, &user(), &upload_of(&req)).unwrap();
    let answer: Value = serde_json::from_slice(response.body_bytes().unwrap()).unwrap();
    assert_eq!(
        answer,
        json!({"text": "Hello there.", "language": null, "duration_seconds": 3.0, "provider": "openai"})
    );

    let sent = platform.sent.borrow()[0].clone();
    assert!(sent.url.ends_with("/v1/audio/transcriptions"));
    assert!(sent.headers.contains(&("authorization".into(), "Bearer sk-x".into())));
    assert!(sent.headers.contains(&("content-length".into(), sent.body.len().to_string())));
    let parts = parts_sent(&platform, 0);
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["model", "response_format", "prompt", "file"]);
    assert_eq!(parts[0].1, crate::settings::OPENAI_TRANSCRIBE_MODEL.default.unwrap().as_bytes());
    assert_eq!(parts[3].1, webm);
    let queries = platform.queries.borrow();
    assert!(queries[0].0.contains("ai_meter_take") && queries[1].0.contains("ai_quota_take"));
    // Three seconds measured, taken before the call; nothing reported, so nothing to settle.
    assert_eq!(queries[0].1[2], crate::db::SqlParam::Int64(3));
    assert_eq!(queries.len(), 2);
    assert!(platform.logs.borrow().is_empty(), "{:?}", platform.logs.borrow());
}

#[test]
fn elevenlabs_stands_in_only_while_openai_is_unavailable() {
    let platform = configured(&[("elevenlabs_stt_model", "scribe_v2")]);
    granted(&platform);
    platform.push_upstream(503, &[], b"sk-x in an error body");
    platform.push_upstream(200, &[], br#"{"text":"Hallo","language_code":"de","words":[{"end":1.5},{"end":2.25}]}"#);
    let mp3 = samples::mp3(4);
    let req = request(Some("audio/mpeg"), "language=de", mp3.clone());
    let response = transcribe(&platform, &user(), &upload_of(&req)).unwrap();
    let answer: Value = serde_json::from_slice(response.body_bytes().unwrap()).unwrap();
    assert_eq!(answer["provider"], "elevenlabs");
    assert_eq!(answer["language"], "de");
    let parts = parts_sent(&platform, 1);
    assert!(platform.sent.borrow()[1].url.ends_with("/v1/speech-to-text"));
    assert!(platform.sent.borrow()[1].headers.contains(&("xi-api-key".into(), "xi-x".into())));
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["model_id", "tag_audio_events", "language_code", "file"]);
    assert_eq!((parts[0].1.as_slice(), parts[3].1.as_slice()), (&b"scribe_v2"[..], &mp3[..]));
    assert!(platform.logs.borrow().iter().all(|l| !l.contains("sk-x") && !l.contains("Hallo")));

    // The last word's end is not what ElevenLabs billed: the measure stands (no settle).
    assert_eq!(platform.queries.borrow().len(), 2);
}

#[test]
fn openai_reported_seconds_settle_the_measure() {
    let platform = configured(&[]);
    granted(&platform);
    quota(&platform, r#"{"ok":true,"used":9}"#);
    platform.push_upstream(200, &[], br#"{"text":"x","usage":{"type":"duration","seconds":8.2}}"#);
    let req = request(Some("audio/webm"), "", samples::webm(b"x"));
    transcribe(&platform, &user(), &upload_of(&req)).unwrap();
    let queries = platform.queries.borrow();
    assert!(queries[2].0.contains("ai_meter_settle"));
    assert_eq!(queries[2].1[2], crate::db::SqlParam::Text("2026-01-01T10:00:00+00:00".into()));
    assert_eq!(queries[2].1[3], crate::db::SqlParam::Int64(9 - 3), "billed 9 s where 3 were taken");
}

#[test]
fn a_recording_whose_length_is_unknown_is_refused_before_anything() {
    let platform = configured(&[]);
    let mut wav = samples::wav(&[0; 100]);
    wav[28..32].copy_from_slice(&u32::MAX.to_le_bytes()); // a byte rate the format does not make
    let req = request(Some("audio/wav"), "", wav);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (422, "audio_length_unknown"));
    assert!(platform.queries.borrow().is_empty() && platform.sent.borrow().is_empty());
}

#[test]
fn a_refused_recording_goes_to_nobody_else() {
    let platform = configured(&[]);
    granted(&platform);
    platform.push_upstream(400, &[], br#"{"error":{"message":"Audio file might be corrupted"}}"#);
    let webm = samples::webm(b"x");
    let req = request(Some("audio/webm"), "", webm);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (502, "transcription_rejected"));
    assert_eq!(error.extra["fallback"], "browser");
    assert_eq!(platform.sent.borrow().len(), 1, "ElevenLabs is not asked");
}

#[test]
fn unusable_answers_and_outages_end_in_the_browser_fallback() {
    let platform = configured(&[]);
    granted(&platform);
    platform.push_upstream(200, &[("content-type", "text/html")], b"<html>gateway</html>");
    platform.push_upstream(429, &[], b"");
    let req = request(Some("audio/webm"), "", samples::webm(b"x"));
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (503, "transcription_unavailable"));
    assert_eq!((&error.extra["fallback"], &error.extra["reason"]), (&json!("browser"), &json!("upstream_unavailable")));
    assert_eq!(platform.sent.borrow().len(), 2);
}

#[test]
fn nothing_is_spent_on_what_is_refused_before_the_upstreams() {
    let webm = samples::webm(b"x");
    let req = request(Some("audio/webm"), "", webm);

    // No provider: no quota taken.
    let platform = FakePlatform::with_vars(&[]);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, &error.extra["reason"]), (503, &json!("not_configured")));
    assert!(platform.queries.borrow().is_empty());

    // Too long (3 s > 2 s): before the quota.
    let platform = configured(&[("transcribe_max_duration_seconds", "2")]);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (413, "audio_too_long"));
    assert!(platform.queries.borrow().is_empty() && platform.sent.borrow().is_empty());

    // Call quota used up: no upstream call, and the seconds given back.
    let platform = configured(&[]);
    quota(&platform, METER_GRANTED);
    quota(&platform, r#"{"allowed":false,"limit":30,"remaining":0,"reset_after":90}"#);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, &error.extra["fallback"]), (429, &json!("browser")));
    assert!(platform.sent.borrow().is_empty());
    assert!(platform.queries.borrow()[2].0.contains("ai_meter_settle"));
    assert_eq!(platform.queries.borrow()[2].1[3], crate::db::SqlParam::Int64(-3));

    // Seconds used up: a 429 naming the limit, with Retry-After, and no upstream call.
    let platform = configured(&[]);
    quota(&platform, r#"{"allowed":false,"limit":900,"used":899,"remaining":1,"reset_after":90}"#);
    let error = transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (429, "quota_exceeded"));
    assert_eq!(
        (&error.extra["limit_name"], &error.extra["fallback"]),
        (&json!("transcribe_seconds"), &json!("browser"))
    );
    assert!(error.headers.contains(&("retry-after".into(), "90".into())));
    assert!(platform.sent.borrow().is_empty());
    assert_eq!(platform.queries.borrow().len(), 1);

    // Anonymous sign-in: refused before the database and the upstreams.
    let platform = configured(&[]);
    let guest = AuthenticatedUser { is_anonymous: true, ..user() };
    let error = transcribe(&platform, &guest, &upload_of(&req)).err().expect("refused");
    assert_eq!((error.status, error.code), (403, "anonymous_not_allowed"));
    assert!(platform.queries.borrow().is_empty() && platform.sent.borrow().is_empty());

    // A bad model setting is the operator's 500, found before anything is spent.
    let platform = configured(&[("openai_transcribe_model", "a b")]);
    assert_eq!(transcribe(&platform, &user(), &upload_of(&req)).err().expect("refused").code, "config_invalid");
}

#[test]
fn the_debug_form_holds_no_audio_or_prompt() {
    let req = request(Some("audio/webm"), "prompt=secret-words", samples::webm(b"secret-audio"));
    let shown = format!("{:?}", upload_of(&req));
    assert!(!shown.contains("secret"), "{shown}");
}
