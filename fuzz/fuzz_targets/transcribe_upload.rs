//! Any body as a transcribe upload: the multipart parser, the content-type dispatch, the
//! magic-byte sniffing and the duration readers never panic, and whatever is accepted
//! is a slice of the body in a supported format.
#![no_main]
use libero_shared::http::ApiRequest;
use libero_shared::transcribe::{multipart, sniff, Upload};
use libfuzzer_sys::fuzz_target;

/// The first byte picks how the body is declared; the rest is the body.
const CONTENT_TYPES: [&str; 6] = [
    "multipart/form-data; boundary=b",
    "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
    "audio/webm",
    "application/octet-stream",
    "audio/mpeg",
    "multipart/form-data",
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[*selector as usize % CONTENT_TYPES.len()];
    let request = ApiRequest {
        method: "POST".into(),
        path: "/".into(),
        query: "language=en&prompt=a%20b".into(),
        headers: vec![("content-type".into(), content_type.into())],
        body: body.to_vec(),
        request_id: "fuzz".into(),
    };
    if let Ok(upload) = Upload::from_request(&request) {
        assert!(!upload.audio.is_empty() && upload.audio.len() <= request.body.len());
        assert_eq!(sniff::sniff(upload.audio), Some(upload.format));
        if let Some(secs) = sniff::duration_secs(upload.format, upload.audio) {
            assert!(secs.is_finite() && secs >= 0.0);
        }
    }
    // The parser and every reader on the raw bytes too, whatever they hold.
    let _ = multipart::parse(body, "b");
    for format in [sniff::AudioFormat::Webm, sniff::AudioFormat::Ogg, sniff::AudioFormat::Mp4, sniff::AudioFormat::Mp3, sniff::AudioFormat::Wav] {
        let _ = sniff::duration_secs(format, body);
    }
});
