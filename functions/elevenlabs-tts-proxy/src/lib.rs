//! `POST /elevenlabs-tts-proxy`: the premium ElevenLabs voice, in the voices and models
//! the operator offers. Counted against the hourly AI quota; on plan `mystic` free up to a
//! character budget per month, otherwise paid in tokens per started block of characters
//! at the model's price; charged before the call and given back when ElevenLabs fails
//! (the rules: `libero_shared::tts`).

use libero_shared::elevenlabs::{self, VoiceSettings};
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::tts::{self, PremiumSpeech};
use libero_shared::{auth, validate, Platform};
use serde::Deserialize;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "elevenlabs-tts-proxy",
    routes: &[Route { method: "POST", path: "/", handler: speak }],
    body_limit: DEFAULT_BODY_LIMIT,
};

/// Longest text accepted: within every ElevenLabs model's per-request limit, and a
/// bound on what one request can cost.
const MAX_TEXT_CHARS: usize = 5000;

/// The body as the app sends it (camelCase names accepted as aliases).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PremiumBody {
    text: String,
    #[serde(alias = "voiceId")]
    voice_id: Option<String>,
    #[serde(alias = "modelId")]
    model_id: Option<String>,
    #[serde(alias = "voiceSettings")]
    voice_settings: Option<VoiceSettings>,
    #[serde(alias = "outputFormat")]
    output_format: Option<String>,
}

fn parse(body: PremiumBody, platform: &dyn Platform) -> Result<PremiumSpeech, ApiError> {
    let text = validate::text("text", &body.text, 1, MAX_TEXT_CHARS)?;
    let voice_id = match body.voice_id {
        // It becomes a URL path segment: only [A-Za-z0-9_-].
        Some(voice) => elevenlabs::voice_id("voice_id", &voice)?,
        None => elevenlabs::defaults(platform)?.0,
    };
    let output_format =
        elevenlabs::output_format(body.output_format.as_deref().unwrap_or(elevenlabs::DEFAULT_OUTPUT_FORMAT))?.0;
    Ok(PremiumSpeech {
        text,
        voice_id,
        model_id: body.model_id.map(|m| elevenlabs::model_id(&m)).transpose()?,
        voice_settings: body.voice_settings.map(VoiceSettings::validated).transpose()?,
        output_format,
    })
}

fn speak(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let speech = parse(request.json::<PremiumBody>()?, platform)?;
    tts::speak_premium(platform, &user, &speech)
}

libero_shared::spin_component!(ENDPOINT);
