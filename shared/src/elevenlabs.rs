//! The ElevenLabs text-to-speech client: the premium voice of
//! `elevenlabs-tts-proxy` and the second link of the `tts` chain.
//!
//! `POST <elevenlabs_base_url>/v1/text-to-speech/<voice_id>/stream?output_format=<f>` with
//! the key in `xi-api-key`. The voice id becomes a URL path segment, so only ids made of
//! `[A-Za-z0-9_-]` are accepted ([`voice_id`]); the output format comes from a fixed list.
//! Calls go through [`Retrier`] with the `elevenlabs_*` retry variables; error bodies are
//! drained and dropped, never returned or logged.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::outbound::{OutboundRequest, OutboundResponse};
use crate::upstream::{Retrier, RetryPolicy, UpstreamError};
use crate::{settings, validate, ApiError, Platform};

/// Voice ids are 20 characters today; the bound only has to keep the URL sane.
const MAX_VOICE_ID_LEN: usize = 64;

/// The output formats we pass on, and the content type each answers with. A fixed list,
/// since the value goes into the query string.
pub const OUTPUT_FORMATS: &[(&str, &str)] = &[
    ("mp3_22050_32", "audio/mpeg"),
    ("mp3_44100_32", "audio/mpeg"),
    ("mp3_44100_64", "audio/mpeg"),
    ("mp3_44100_96", "audio/mpeg"),
    ("mp3_44100_128", "audio/mpeg"),
    ("mp3_44100_192", "audio/mpeg"),
    // Raw 16-bit little-endian mono samples at the named rate.
    ("pcm_16000", "audio/pcm"),
    ("pcm_22050", "audio/pcm"),
    ("pcm_24000", "audio/pcm"),
    ("pcm_44100", "audio/pcm"),
    ("ulaw_8000", "audio/basic"),
];

pub const DEFAULT_OUTPUT_FORMAT: &str = "mp3_44100_128";

/// A configured client: the key is set.
#[derive(Clone)]
pub struct ElevenLabs {
    api_key: String,
    base_url: String,
    policy: RetryPolicy,
}

// Written by hand so the key can never reach a log through `{:?}`.
impl std::fmt::Debug for ElevenLabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabs").field("base_url", &self.base_url).field("policy", &self.policy).finish()
    }
}

/// One synthesis, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthesis {
    pub voice_id: String,
    pub text: String,
    pub model_id: String,
    pub voice_settings: Option<VoiceSettings>,
    /// One of [`OUTPUT_FORMATS`].
    pub output_format: &'static str,
}

/// ElevenLabs' voice settings, each bounded as its API documents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSettings {
    pub stability: Option<f64>,
    pub similarity_boost: Option<f64>,
    pub style: Option<f64>,
    pub use_speaker_boost: Option<bool>,
    pub speed: Option<f64>,
}

impl VoiceSettings {
    /// Checks every value's range (400 naming the field).
    pub fn validated(self) -> Result<VoiceSettings, ApiError> {
        for (name, value, min, max) in [
            ("voice_settings.stability", self.stability, 0.0, 1.0),
            ("voice_settings.similarity_boost", self.similarity_boost, 0.0, 1.0),
            ("voice_settings.style", self.style, 0.0, 1.0),
            ("voice_settings.speed", self.speed, 0.7, 1.2),
        ] {
            if let Some(value) = value {
                if !value.is_finite() {
                    return Err(ApiError::bad_request("invalid_field", format!("Field `{name}` must be a number.")));
                }
                validate::in_range(name, value, min, max)?;
            }
        }
        Ok(self)
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        };
        put("stability", self.stability.map(Value::from));
        put("similarity_boost", self.similarity_boost.map(Value::from));
        put("style", self.style.map(Value::from));
        put("use_speaker_boost", self.use_speaker_boost.map(Value::from));
        put("speed", self.speed.map(Value::from));
        Value::Object(out)
    }
}

/// A voice id safe to put in a URL path: 1 to 64 of `[A-Za-z0-9_-]` (no `/`, `.`, `%`).
pub fn voice_id(field: &str, value: &str) -> Result<String, ApiError> {
    validate::slug(field, value, MAX_VOICE_ID_LEN)
}

/// The content type of an output format from [`OUTPUT_FORMATS`], or a 400 listing them.
pub fn output_format(value: &str) -> Result<(&'static str, &'static str), ApiError> {
    OUTPUT_FORMATS.iter().find(|(name, _)| *name == value).copied().ok_or_else(|| {
        let names: Vec<&str> = OUTPUT_FORMATS.iter().map(|(n, _)| *n).collect();
        ApiError::bad_request("invalid_field", format!("Field `output_format` must be one of {}.", names.join(", ")))
    })
}

/// A model id as ElevenLabs names them (`eleven_multilingual_v2`).
pub fn model_id(value: &str) -> Result<String, ApiError> {
    validate::slug("model_id", value, 64)
}

impl ElevenLabs {
    /// The client, or `None` when `elevenlabs_api_key` is empty.
    pub fn from_platform(platform: &dyn Platform) -> Result<Option<ElevenLabs>, ApiError> {
        let Some(api_key) = settings::ELEVENLABS_API_KEY.value(platform) else { return Ok(None) };
        let base_url = settings::ELEVENLABS_BASE_URL.value(platform).unwrap_or_default();
        let policy = RetryPolicy::from_platform(platform, &settings::ELEVENLABS_RETRY)?;
        Ok(Some(ElevenLabs { api_key, base_url, policy }))
    }

    pub fn retrier<'a>(&self, platform: &'a dyn Platform) -> Retrier<'a> {
        Retrier::new(platform, self.policy)
    }

    fn url(&self, synthesis: &Synthesis) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/text-to-speech/{}/stream?output_format={}", synthesis.voice_id, synthesis.output_format)
    }

    /// Asks for speech; a 2xx answer comes back with its audio body unread.
    pub fn synthesize(&self, retrier: &Retrier, synthesis: &Synthesis) -> Result<OutboundResponse, UpstreamError> {
        let mut body = json!({ "text": synthesis.text, "model_id": synthesis.model_id });
        if let Some(settings) = &synthesis.voice_settings {
            body["voice_settings"] = settings.to_json();
        }
        let request = OutboundRequest::new("POST", self.url(synthesis))
            .header("xi-api-key", self.api_key.clone())
            .header("accept", "audio/*")
            .json_body(&body);
        retrier.send(&request).and_then(crate::upstream::audio_only)
    }

    /// Speech to text (`POST <base>/v1/speech-to-text`): a multipart body built
    /// by [`crate::transcribe`] (`content_type` carries its boundary); a 2xx answer comes
    /// back with its JSON body unread.
    pub fn speech_to_text(
        &self,
        retrier: &Retrier,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<OutboundResponse, UpstreamError> {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let mut request = OutboundRequest::new("POST", format!("{base}/v1/speech-to-text"))
            .header("xi-api-key", self.api_key.clone())
            .header("accept", "application/json")
            .header("content-type", content_type)
            .header("content-length", body.len().to_string());
        request.body = body;
        retrier.send(&request)
    }
}

/// The voice and model the `tts` fallback uses (`elevenlabs_default_voice_id`,
/// `elevenlabs_model_id`); an operator's value that is not a safe id is a config error.
pub fn defaults(platform: &dyn Platform) -> Result<(String, String), ApiError> {
    let (voice, model) = (settings::ELEVENLABS_DEFAULT_VOICE_ID, settings::ELEVENLABS_MODEL_ID);
    let voice = voice_id(voice.name, &voice.value(platform).unwrap_or_default()).map_err(|_| voice.invalid())?;
    let model = model_id(&model.value(platform).unwrap_or_default()).map_err(|_| model.invalid())?;
    Ok((voice, model))
}

/// The premium voices on offer: the default voice and those listed in
/// `elevenlabs_voice_ids`. Anything else in the operator's ElevenLabs account (private
/// clones included) is refused with a 400 before anything is charged or sent.
pub fn check_voice(platform: &dyn Platform, voice_id: &str) -> Result<(), ApiError> {
    let (default_voice, _) = defaults(platform)?;
    if voice_id == default_voice || settings::ELEVENLABS_VOICE_IDS.list(platform).iter().any(|v| v == voice_id) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_field", "Field `voice_id` is not one of this app's premium voices."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    #[test]
    fn voice_ids_cannot_escape_the_path() {
        assert!(voice_id("voice_id", "21m00Tcm4TlvDq8ikWAM").is_ok());
        for bad in ["", "../admin", "a/b", "a%2Fb", "a?b", "a b", "x".repeat(65).as_str()] {
            assert!(voice_id("voice_id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_offered_voices_pass() {
        let platform = FakePlatform::with_vars(&[("elevenlabs_voice_ids", "VoiceA, VoiceB")]);
        for ok in [settings::ELEVENLABS_DEFAULT_VOICE_ID.default.unwrap(), "VoiceA", "VoiceB"] {
            assert!(check_voice(&platform, ok).is_ok(), "{ok}");
        }
        for bad in ["voicea", "VoiceC", "MyPrivateClone01"] {
            assert_eq!(check_voice(&platform, bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn formats_and_settings() {
        assert_eq!(output_format("pcm_24000").unwrap().1, "audio/pcm");
        assert!(output_format("mp3_44100_128&x=1").is_err());
        let ok = VoiceSettings {
            stability: Some(0.5),
            similarity_boost: None,
            style: None,
            use_speaker_boost: Some(true),
            speed: Some(1.0),
        };
        assert!(ok.validated().is_ok());
        let bad = VoiceSettings {
            stability: Some(1.5),
            similarity_boost: None,
            style: None,
            use_speaker_boost: None,
            speed: None,
        };
        assert!(bad.validated().unwrap_err().message.contains("stability"));
    }

    #[test]
    fn sends_key_in_header_and_voice_in_path() {
        let platform =
            FakePlatform::with_vars(&[("elevenlabs_api_key", "xi-secret"), ("elevenlabs_base_url", "http://el.test")]);
        platform.push_upstream(200, &[], b"audio");
        let client = ElevenLabs::from_platform(&platform).unwrap().unwrap();
        let synthesis = Synthesis {
            voice_id: "abc".into(),
            text: "hello".into(),
            model_id: settings::ELEVENLABS_MODEL_ID.default.unwrap().into(),
            voice_settings: None,
            output_format: DEFAULT_OUTPUT_FORMAT,
        };
        client.synthesize(&client.retrier(&platform), &synthesis).unwrap();
        let sent = platform.sent.borrow();
        assert_eq!(sent[0].url, "http://el.test/v1/text-to-speech/abc/stream?output_format=mp3_44100_128");
        assert!(sent[0].headers.contains(&("xi-api-key".into(), "xi-secret".into())));
        assert!(!format!("{client:?}").contains("xi-secret"));
    }
}
