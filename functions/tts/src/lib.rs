//! `POST /tts`: speech for the signed-in user: the shared cache, then OpenAI, then
//! ElevenLabs, then a 503 `{"error":…, "fallback":"browser"}` (the chain and the cache
//! live in `libero_shared::tts`). Audio is streamed through with `x-tts-provider`.

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::tts::{self, AudioFormat, Speech};
use libero_shared::{auth, validate, Platform};
use serde::Deserialize;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "tts",
    routes: &[Route { method: "POST", path: "/", handler: speak }],
    body_limit: DEFAULT_BODY_LIMIT,
};

/// Longest `instructions` accepted: a few sentences of direction, not a second text.
const MAX_INSTRUCTIONS_CHARS: usize = 1000;

/// The body as the app sends it (`input` and `response_format` are OpenAI's names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeechBody {
    #[serde(alias = "input")]
    text: String,
    voice: Option<String>,
    model: Option<String>,
    speed: Option<f64>,
    #[serde(alias = "response_format")]
    format: Option<String>,
    instructions: Option<String>,
}

impl TryFrom<SpeechBody> for Speech {
    type Error = ApiError;

    fn try_from(body: SpeechBody) -> Result<Self, ApiError> {
        let voice = body.voice.as_deref().unwrap_or(tts::DEFAULT_VOICE);
        Ok(Speech {
            text: validate::text("text", &body.text, 1, tts::MAX_TEXT_CHARS)?,
            voice: validate::slug("voice", voice, 32)?.to_ascii_lowercase(),
            model: body.model.map(|m| validate::slug("model", &m, 64)).transpose()?,
            speed_hundredths: Speech::speed_hundredths("speed", body.speed.unwrap_or(1.0))?,
            format: AudioFormat::parse(body.format.as_deref().unwrap_or("mp3"))?,
            instructions: body
                .instructions
                .map(|i| validate::text("instructions", &i, 1, MAX_INSTRUCTIONS_CHARS))
                .transpose()?,
        })
    }
}

fn speak(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let speech = Speech::try_from(request.json::<SpeechBody>()?)?;
    tts::speak(platform, &user, &speech)
}

libero_shared::spin_component!(ENDPOINT);
