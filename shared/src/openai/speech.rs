//! OpenAI text to speech (`POST /v1/audio/speech`). The answer is audio bytes,
//! returned with the body unread so the caller can stream it on.
//!
//! Same client, key, base URL and retry policy as chat ([`super::OpenAi`]): retries only
//! happen before the first byte of audio; the error body of a refusal is drained and
//! dropped by the [`Retrier`], never returned.

use serde_json::{json, Value};

use super::OpenAi;
use crate::http::outbound::{OutboundRequest, OutboundResponse};
use crate::upstream::{Retrier, UpstreamError};

/// One speech request, already validated by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    pub model: String,
    pub voice: String,
    pub input: String,
    /// 0.25 to 4.0.
    pub speed: f64,
    /// OpenAI's `response_format`: mp3, opus, aac, flac, wav or pcm.
    pub response_format: &'static str,
    /// How to speak (tone, pace); only the gpt-4o-mini-tts family uses it.
    pub instructions: Option<String>,
}

impl SpeechRequest {
    fn body(&self) -> Value {
        let mut body = json!({
            "model": self.model,
            "voice": self.voice,
            "input": self.input,
            "speed": self.speed,
            "response_format": self.response_format,
        });
        if let Some(instructions) = &self.instructions {
            body["instructions"] = json!(instructions);
        }
        body
    }
}

impl OpenAi {
    /// `<base>/v1/audio/speech` (a base ending in `/v1` is accepted too, as for chat).
    pub fn speech_url(&self) -> String {
        self.v1_url("audio/speech")
    }

    /// Asks for speech; a 2xx answer comes back with its audio body unread.
    pub fn audio_speech(&self, retrier: &Retrier, speech: &SpeechRequest) -> Result<OutboundResponse, UpstreamError> {
        let request = OutboundRequest::new("POST", self.speech_url())
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("accept", "audio/*")
            .json_body(&speech.body());
        retrier.send(&request).and_then(crate::upstream::audio_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    #[test]
    fn posts_the_speech_request_with_the_key() {
        let platform = FakePlatform::with_vars(&[
            ("openai_api_key", "sk-test-key"),
            ("openai_base_url", "http://openai.test/v1/"),
        ]);
        platform.push_upstream(200, &[("content-type", "audio/mpeg")], b"ID3audio");
        let client = OpenAi::from_platform(&platform).unwrap().unwrap();
        let speech = SpeechRequest {
            model: "gpt-4o-mini-tts".into(),
            voice: "alloy".into(),
            input: "Breathe in.".into(),
            speed: 1.0,
            response_format: "mp3",
            instructions: Some("calm".into()),
        };
        let response = client.audio_speech(&client.retrier(&platform), &speech).unwrap();
        assert_eq!(response.read_all(1024).unwrap(), b"ID3audio");
        let sent = platform.sent.borrow();
        assert_eq!(sent[0].url, "http://openai.test/v1/audio/speech");
        assert!(sent[0].headers.contains(&("authorization".into(), "Bearer sk-test-key".into())));
        let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
        assert_eq!(body["voice"], "alloy");
        assert_eq!(body["response_format"], "mp3");
        assert_eq!(body["instructions"], "calm");
    }
}
