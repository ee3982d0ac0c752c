//! Speech: the `tts` chain and the premium ElevenLabs voice.
//!
//! `tts`: the shared cache ([`cache`]), then OpenAI (`/v1/audio/speech`, the requested
//! voice), then ElevenLabs when its key is set (the operator's default voice), then a 503
//! `{"error": ..., "fallback": "browser"}` telling the client to speak locally. Only
//! answers in the requested voice (OpenAI's) are cached: an ElevenLabs stand-in would
//! otherwise keep being served in the wrong voice after OpenAI recovers.
//!
//! ElevenLabs stands in only while OpenAI is unavailable (timeouts, 5xx, 429 after the
//! retries, a 200 that is not audio). A request OpenAI refused (4xx) is answered with a
//! 502 and the browser fallback: passing it on would sell anyone the premium voice for
//! free with a made-up voice or model. `voice` and `model` are checked against
//! allowlists (`openai_tts_voices`, `openai_tts_models`) before anything is sent.
//!
//! Premium (`elevenlabs-tts-proxy`): an offered voice only ([`elevenlabs::check_voice`]),
//! charged through [`premium`] before the call (quota, model price, mystic budget),
//! refunded when ElevenLabs fails, audio streamed through by [`relay`].

pub mod cache;
pub mod premium;
pub mod relay;

use crate::auth::{self, AuthenticatedUser};
use crate::elevenlabs::{self, ElevenLabs, Synthesis};
use crate::openai::speech::SpeechRequest;
use crate::openai::OpenAi;
use crate::settings::{self, Setting};
use crate::upstream::UpstreamError;
use crate::{ApiError, ApiResponse, Platform};

use cache::{CacheSettings, KeyParts};
use premium::{Charge, ModelSource};
use relay::CacheFill;

/// OpenAI's limit on `input`, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
pub const DEFAULT_VOICE: &str = "alloy";

/// OpenAI's `response_format`s and the content type each is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Mp3,
    Opus,
    Aac,
    Flac,
    Wav,
    Pcm,
}

impl AudioFormat {
    pub const ALL: [AudioFormat; 6] =
        [AudioFormat::Mp3, AudioFormat::Opus, AudioFormat::Aac, AudioFormat::Flac, AudioFormat::Wav, AudioFormat::Pcm];

    pub fn name(self) -> &'static str {
        match self {
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Opus => "opus",
            AudioFormat::Aac => "aac",
            AudioFormat::Flac => "flac",
            AudioFormat::Wav => "wav",
            AudioFormat::Pcm => "pcm",
        }
    }

    pub fn parse(value: &str) -> Result<AudioFormat, ApiError> {
        let lower = value.to_ascii_lowercase();
        AudioFormat::ALL.into_iter().find(|f| f.name() == lower).ok_or_else(|| {
            ApiError::bad_request("invalid_field", "Field `format` must be one of mp3, opus, aac, flac, wav, pcm.")
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Mp3 => "audio/mpeg",
            // OpenAI's opus is Opus in an Ogg container: `audio/ogg` (RFC 7845) is that
            // file's type and what browsers play; `audio/opus` names the RTP payload.
            AudioFormat::Opus => "audio/ogg",
            AudioFormat::Aac => "audio/aac",
            AudioFormat::Flac => "audio/flac",
            AudioFormat::Wav => "audio/wav",
            // Raw 24 kHz 16-bit signed little-endian mono samples, no header.
            AudioFormat::Pcm => "audio/pcm",
        }
    }

    /// The ElevenLabs output the fallback asks for: the same raw 24 kHz PCM for pcm;
    /// mp3 otherwise (ElevenLabs has no aac, flac or wav). The content type tells the
    /// client which it got.
    fn elevenlabs_output(self) -> &'static str {
        match self {
            AudioFormat::Pcm => "pcm_24000",
            _ => elevenlabs::DEFAULT_OUTPUT_FORMAT,
        }
    }
}

/// A validated `tts` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    /// Trimmed, 1 to [`MAX_TEXT_CHARS`] characters.
    pub text: String,
    pub voice: String,
    /// `None`: `openai_tts_model`.
    pub model: Option<String>,
    /// In hundredths, 25 to 400 (0.25x to 4x).
    pub speed_hundredths: i64,
    pub format: AudioFormat,
    pub instructions: Option<String>,
}

impl Speech {
    /// Speed as a number, rounded to hundredths so equal requests share a cache entry.
    pub fn speed_hundredths(field: &str, speed: f64) -> Result<i64, ApiError> {
        if !speed.is_finite() || !(0.25..=4.0).contains(&speed) {
            return Err(ApiError::bad_request("invalid_field", format!("Field `{field}` must be between 0.25 and 4.")));
        }
        Ok((speed * 100.0).round() as i64)
    }
}

/// A list setting, or its default when it lists nothing.
fn allowlist(platform: &dyn Platform, setting: &Setting) -> Vec<String> {
    let listed = setting.list(platform);
    if listed.is_empty() {
        setting.default.unwrap_or_default().split(',').map(str::to_string).collect()
    } else {
        listed
    }
}

/// The OpenAI model for `speech`, after checking its voice and model against the
/// allowlists: a 400 naming the allowed values, before any upstream call.
pub fn checked_model(platform: &dyn Platform, speech: &Speech) -> Result<String, ApiError> {
    let voices = allowlist(platform, &settings::OPENAI_TTS_VOICES);
    if !voices.iter().any(|v| v.eq_ignore_ascii_case(&speech.voice)) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("Field `voice` must be one of {}.", voices.join(", ")),
        ));
    }
    let default_model = settings::OPENAI_TTS_MODEL.value(platform).unwrap_or_default();
    match &speech.model {
        None => Ok(default_model),
        Some(model) => {
            let models = allowlist(platform, &settings::OPENAI_TTS_MODELS);
            if *model == default_model || models.contains(model) {
                Ok(model.clone())
            } else {
                Err(ApiError::bad_request(
                    "invalid_field",
                    format!("Field `model` must be one of {}.", models.join(", ")),
                ))
            }
        }
    }
}

/// Why the client should speak locally.
fn browser_fallback(reason: &'static str) -> ApiError {
    ApiError::service_unavailable(
        "tts_unavailable",
        "Server speech is not available right now; use the browser's speech synthesis.",
    )
    .with_field("fallback", "browser")
    .with_field("reason", reason)
}

/// OpenAI refused the request itself: no other provider is asked (see the module docs).
fn rejected(status: u16) -> ApiError {
    ApiError::bad_gateway(
        "tts_rejected",
        format!("The speech service refused this request (status {status}); use the browser's speech synthesis."),
    )
    .with_field("fallback", "browser")
    .with_field("reason", "upstream_rejected")
}

/// The `tts` chain: cache, OpenAI, ElevenLabs (only while OpenAI is unavailable), then the
/// browser fallback.
pub fn speak(platform: &dyn Platform, user: &AuthenticatedUser, speech: &Speech) -> Result<ApiResponse, ApiError> {
    let model = checked_model(platform, speech)?;
    let openai = OpenAi::from_platform(platform)?;
    let elevenlabs = ElevenLabs::from_platform(platform)?;
    if openai.is_none() && elevenlabs.is_none() {
        return Err(browser_fallback("not_configured"));
    }
    let settings = CacheSettings::from_platform(platform)?;
    let key = cache::key(&KeyParts {
        text: &speech.text,
        voice: &speech.voice,
        model: &model,
        speed_hundredths: speech.speed_hundredths,
        format: speech.format.name(),
        instructions: speech.instructions.as_deref(),
    });

    // A cache the database cannot serve is skipped (and not filled) rather than failing.
    let mut cache_usable = settings.enabled();
    if cache_usable {
        match cache::get(platform, &key, &settings) {
            Ok(Some(hit)) => {
                return Ok(ApiResponse::bytes(200, &hit.content_type, hit.audio)
                    .with_header("x-tts-provider", &hit.provider)
                    .with_header("x-tts-cache", "hit"));
            }
            Ok(None) => {}
            Err(error) => {
                let _ = crate::db::report(platform, "tts_cache_get", error);
                cache_usable = false;
            }
        }
    }

    // A miss costs upstream money: its characters, weighted by the model's price, count
    // against the user's hourly allowance, and the call against the hourly AI quota (a
    // hit is free). Over either, or with them unreadable (database down: 503), the client
    // speaks locally, as when no provider answers.
    // Anonymous sign-ins are refused here too (403), and told to speak locally.
    let with_fallback = |e: ApiError| {
        if e.status == 429 || e.status == 503 || e.status == 403 {
            e.with_field("fallback", "browser")
        } else {
            e
        }
    };
    let chars = speech.text.chars().count() as i64;
    let weighted = chars.saturating_mul(model_weight(platform, &model)?);
    let metered = crate::quota::take_amount(platform, user, &CHARS, weighted).map_err(with_fallback)?;
    if let Err(e) = crate::quota::take(platform, user, "tts") {
        crate::quota::settle(platform, user, &metered, 0);
        return Err(with_fallback(e));
    }
    let answer = providers(platform, speech, model, openai.as_ref(), elevenlabs.as_ref(), key, settings, cache_usable);
    if answer.is_err() {
        crate::quota::settle(platform, user, &metered, 0);
    }
    answer
}

/// The hourly allowance of speech, in characters weighted by the model's price.
pub const CHARS: crate::quota::Meter = crate::quota::Meter {
    name: "tts_chars",
    unit: "weighted characters of speech",
    free: settings::TTS_FREE_CHARS_PER_HOUR,
    mystic: settings::TTS_MYSTIC_CHARS_PER_HOUR,
};

/// The weight of `model`; a model the list does not name counts as the dearest listed.
pub fn model_weight(platform: &dyn Platform, model: &str) -> Result<i64, ApiError> {
    let invalid = || settings::OPENAI_TTS_MODEL_WEIGHTS.invalid();
    let mut weights = Vec::new();
    for entry in allowlist(platform, &settings::OPENAI_TTS_MODEL_WEIGHTS) {
        let (name, weight) = entry.split_once(':').ok_or_else(invalid)?;
        let weight: i64 = weight.trim().parse().ok().filter(|w| (1..=1000).contains(w)).ok_or_else(invalid)?;
        weights.push((name.trim().to_string(), weight));
    }
    let dearest = weights.iter().map(|(_, w)| *w).max().ok_or_else(invalid)?;
    Ok(weights.iter().find(|(name, _)| name == model).map_or(dearest, |(_, w)| *w))
}

/// The ElevenLabs stand-in's monthly budget, in characters, across all users
/// (`elevenlabs_free_fallback_chars_per_month`).
const FALLBACK_BUDGET: &str = "tts_elevenlabs_fallback_chars";

/// Counts `chars` against the stand-in's budget: the month it counted in, or `None` when
/// the budget is spent or cannot be read (then the premium voice is not used for free).
fn fallback_budget_take(platform: &dyn Platform, chars: i64) -> Result<Option<String>, ApiError> {
    let limit = settings::ELEVENLABS_FREE_FALLBACK_CHARS_PER_MONTH.parse::<i64>(platform)?;
    let answer = crate::db::query_json(
        platform,
        "select public.operator_budget_take($1, $2, $3)",
        &[
            crate::db::SqlParam::Text(FALLBACK_BUDGET.to_string()),
            crate::db::SqlParam::Int64(chars),
            crate::db::SqlParam::Int64(limit.max(0)),
        ],
    );
    match answer {
        Ok(answer) if answer.get("allowed").and_then(serde_json::Value::as_bool) == Some(true) => {
            Ok(answer.get("period_start").and_then(serde_json::Value::as_str).map(str::to_string))
        }
        Ok(_) => Ok(None),
        Err(error) => {
            let _ = crate::db::report(platform, "operator_budget_take", error);
            Ok(None)
        }
    }
}

fn fallback_budget_give_back(platform: &dyn Platform, period: &str, chars: i64) {
    let given = crate::db::query_json(
        platform,
        "select public.operator_budget_give_back($1, $2::text::date, $3)",
        &[
            crate::db::SqlParam::Text(FALLBACK_BUDGET.to_string()),
            crate::db::SqlParam::Text(period.to_string()),
            crate::db::SqlParam::Int64(chars),
        ],
    );
    if let Err(error) = given {
        let _ = crate::db::report(platform, "operator_budget_give_back", error);
    }
}

/// OpenAI, then ElevenLabs (only while OpenAI is unavailable, and only within the
/// operator's monthly budget for it), then the browser fallback.
#[allow(clippy::too_many_arguments)]
fn providers(
    platform: &dyn Platform,
    speech: &Speech,
    model: String,
    openai: Option<&OpenAi>,
    elevenlabs: Option<&ElevenLabs>,
    key: String,
    settings: CacheSettings,
    cache_usable: bool,
) -> Result<ApiResponse, ApiError> {
    if let Some(openai) = openai {
        let request = SpeechRequest {
            model,
            voice: speech.voice.clone(),
            input: speech.text.clone(),
            speed: speech.speed_hundredths as f64 / 100.0,
            response_format: speech.format.name(),
            instructions: speech.instructions.clone(),
        };
        match openai.audio_speech(&openai.retrier(platform), &request) {
            Ok(upstream) => {
                let fill = cache_usable.then(|| CacheFill::new(key, settings));
                let response = relay::respond(platform, upstream, "openai", speech.format.content_type(), fill, None)?;
                return Ok(response.with_header("x-tts-cache", "miss"));
            }
            Err(error @ UpstreamError::Rejected { status }) => {
                platform.log(&format!("tts: openai {}", error.summary()));
                return Err(rejected(status));
            }
            Err(error) => platform.log(&format!("tts: openai {}", error.summary())),
        }
    }

    if let Some(elevenlabs) = elevenlabs {
        let chars = speech.text.chars().count() as i64;
        let Some(period) = fallback_budget_take(platform, chars)? else {
            platform.log("tts: elevenlabs stand-in skipped: the monthly budget is spent");
            return Err(browser_fallback("fallback_budget_exhausted"));
        };
        let (voice_id, model_id) = elevenlabs::defaults(platform)?;
        let output_format = speech.format.elevenlabs_output();
        let (_, content_type) = elevenlabs::output_format(output_format)?;
        let synthesis =
            Synthesis { voice_id, text: speech.text.clone(), model_id, voice_settings: None, output_format };
        match elevenlabs.synthesize(&elevenlabs.retrier(platform), &synthesis) {
            Ok(upstream) => {
                let response = relay::respond(platform, upstream, "elevenlabs", content_type, None, None)?;
                return Ok(response.with_header("x-tts-cache", "miss"));
            }
            Err(error) => {
                platform.log(&format!("tts: elevenlabs {}", error.summary()));
                fallback_budget_give_back(platform, &period, chars);
            }
        }
    }
    Err(browser_fallback("upstream_unavailable"))
}

/// A validated premium request.
#[derive(Debug, Clone, PartialEq)]
pub struct PremiumSpeech {
    pub text: String,
    pub voice_id: String,
    pub model_id: Option<String>,
    pub voice_settings: Option<elevenlabs::VoiceSettings>,
    pub output_format: &'static str,
}

/// The premium voice: an offered voice and model, counted and paid for (tokens, or the
/// mystic budget), then ElevenLabs; the charge is given back if it fails.
pub fn speak_premium(
    platform: &dyn Platform,
    user: &AuthenticatedUser,
    speech: &PremiumSpeech,
) -> Result<ApiResponse, ApiError> {
    let Some(client) = ElevenLabs::from_platform(platform)? else {
        // Checked before charging: nobody pays for a voice that is not there.
        return Err(ApiError::service_unavailable(
            "elevenlabs_not_configured",
            "The premium voice is not available on this server; use the standard voice.",
        )
        .with_field("fallback", "browser"));
    };
    auth::require_paid_access(platform, user)?;
    elevenlabs::check_voice(platform, &speech.voice_id)?;
    let (_, content_type) = elevenlabs::output_format(speech.output_format)?;
    let (model_id, source) = match &speech.model_id {
        Some(model) => (model.clone(), ModelSource::Client),
        None => (elevenlabs::defaults(platform)?.1, ModelSource::Default),
    };
    let charge = premium::charge(platform, &user.user_id, speech.text.chars().count(), &model_id, source)?;
    let synthesis = Synthesis {
        voice_id: speech.voice_id.clone(),
        text: speech.text.clone(),
        model_id,
        voice_settings: speech.voice_settings.clone(),
        output_format: speech.output_format,
    };
    let refund = charge.refund().clone();
    match client.synthesize(&client.retrier(platform), &synthesis) {
        Ok(upstream) => {
            let response = relay::respond(platform, upstream, "elevenlabs", content_type, None, Some(refund))?;
            Ok(match charge {
                Charge::Free { .. } => response.with_header("x-tokens-charged", "0"),
                Charge::Paid { cost, balance, .. } => response
                    .with_header("x-tokens-charged", &cost.to_string())
                    .with_header("x-tokens-balance", &balance.to_string()),
            })
        }
        Err(error) => {
            platform.log(&format!("elevenlabs-tts-proxy: elevenlabs {}", error.summary()));
            premium::refund(platform, &refund);
            Err(premium_upstream_error(&error))
        }
    }
}

fn premium_upstream_error(error: &UpstreamError) -> ApiError {
    match error {
        // The key, voice id or settings were refused; the body (which may echo the key)
        // is not passed on, only the status.
        UpstreamError::Rejected { status } => ApiError::bad_gateway(
            "elevenlabs_rejected",
            format!(
                "The premium voice service refused the request (status {status}); check voice_id and the settings. \
                 No tokens were charged."
            ),
        ),
        UpstreamError::Unavailable { retry_after_secs, .. } => ApiError::service_unavailable(
            "elevenlabs_unavailable",
            "The premium voice service is unavailable; no tokens were charged. Try again shortly.",
        )
        .with_header("retry-after", retry_after_secs.unwrap_or(5).max(1).to_string())
        .with_field("fallback", "browser"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::fakes::FakePlatform;

    const USER_ID: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";

    fn user() -> AuthenticatedUser {
        AuthenticatedUser { user_id: USER_ID.into(), email: None, role: "authenticated".into(), is_anonymous: false }
    }
    const QUOTA_GRANTED: &str = r#"{"allowed":true,"limit":30,"remaining":29,"reset_after":600}"#;

    const METER_GRANTED: &str = r#"{"allowed":true,"limit":20000,"used":11,"remaining":19989,"reset_after":600,"window_start":"2026-01-01T10:00:00+00:00"}"#;

    fn answer(platform: &FakePlatform, json: &str) {
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(json.as_bytes().to_vec())]]));
    }

    /// The characters and the call both granted.
    fn quota_granted(platform: &FakePlatform) {
        answer(platform, METER_GRANTED);
        answer(platform, QUOTA_GRANTED);
    }

    fn speech() -> Speech {
        Speech {
            text: "Breathe in.".into(),
            voice: "alloy".into(),
            model: None,
            speed_hundredths: 100,
            format: AudioFormat::Opus,
            instructions: None,
        }
    }

    #[test]
    fn tts_formats_and_speeds() {
        assert_eq!(AudioFormat::parse("OPUS").unwrap().content_type(), "audio/ogg");
        assert!(AudioFormat::parse("ogg").is_err());
        assert_eq!(Speech::speed_hundredths("speed", 1.234).unwrap(), 123);
        for bad in [0.2, 4.01, f64::NAN, f64::INFINITY] {
            assert!(Speech::speed_hundredths("speed", bad).is_err());
        }
    }

    #[test]
    fn tts_no_keys_means_browser_fallback() {
        let platform = FakePlatform::with_vars(&[]);
        let error = speak(&platform, &user(), &speech()).err().expect("fallback");
        assert_eq!((error.status, error.extra["fallback"].as_str()), (503, Some("browser")));
        assert!(platform.sent.borrow().is_empty() && platform.queries.borrow().is_empty());
    }

    #[test]
    fn tts_openai_then_elevenlabs_in_the_default_voice() {
        let platform = FakePlatform::with_vars(&[
            ("openai_api_key", "sk-x"),
            ("openai_max_attempts", "1"),
            ("elevenlabs_api_key", "xi-x"),
            ("elevenlabs_default_voice_id", "voiceA"),
        ]);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Null; 3]])); // cache miss
        quota_granted(&platform);
        answer(&platform, r#"{"allowed":true,"used":11,"limit":100000,"period_start":"2026-01-01","reset_after":9}"#);
        platform.push_upstream(500, &[], b"sk-x leaked?");
        platform.push_upstream(200, &[], b"mp3 audio");
        let response = speak(&platform, &user(), &speech()).unwrap();
        assert_eq!(response.header("x-tts-provider"), Some("elevenlabs"));
        assert_eq!(response.header("content-type"), Some("audio/mpeg"));
        assert_eq!(response.body_bytes(), Some(&b"mp3 audio"[..]));
        assert!(platform.sent.borrow()[1].url.contains("/text-to-speech/voiceA/"));
        // The cache lookup, the characters, the quota and the stand-in's budget (11
        // characters of the default 100,000), no store: an ElevenLabs stand-in is not cached.
        let queries = platform.queries.borrow();
        assert_eq!(queries.len(), 4);
        assert!(queries[3].0.contains("operator_budget_take"));
        assert_eq!(
            (&queries[3].1[1], &queries[3].1[2]),
            (&crate::db::SqlParam::Int64(11), &crate::db::SqlParam::Int64(100_000))
        );
        assert!(platform.logs.borrow().iter().all(|l| !l.contains("sk-x")));
    }

    #[test]
    fn tts_past_the_stand_ins_budget_is_the_browser_fallback() {
        let platform = FakePlatform::with_vars(&[
            ("openai_api_key", "sk-x"),
            ("openai_max_attempts", "1"),
            ("elevenlabs_api_key", "xi-x"),
            ("elevenlabs_free_fallback_chars_per_month", "5"),
        ]);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Null; 3]])); // cache miss
        quota_granted(&platform);
        answer(&platform, r#"{"allowed":false,"used":0,"limit":5,"period_start":"2026-01-01","reset_after":9}"#);
        platform.push_upstream(429, &[], br#"{"error":{"code":"insufficient_quota"}}"#);
        let error = speak(&platform, &user(), &speech()).err().expect("fallback");
        assert_eq!((error.status, &error.extra["reason"]), (503, &serde_json::json!("fallback_budget_exhausted")));
        assert_eq!(platform.sent.borrow().len(), 1, "ElevenLabs is not asked");
        // The user's characters are given back: nothing was spoken.
        assert!(platform.queries.borrow()[4].0.contains("ai_meter_settle"));
    }

    #[test]
    fn tts_characters_are_weighted_by_model_and_refused_with_the_limit() {
        let platform = FakePlatform::with_vars(&[("openai_api_key", "sk-x")]);
        assert_eq!(model_weight(&platform, "tts-1-hd").unwrap(), 2);
        assert_eq!(model_weight(&platform, "tts-1").unwrap(), 1);
        assert_eq!(model_weight(&platform, "some-new-model").unwrap(), 2, "unknown: the dearest");
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Null; 3]])); // cache miss
        answer(&platform, r#"{"allowed":false,"limit":20000,"used":19990,"remaining":10,"reset_after":120}"#);
        let hd = Speech { model: Some("tts-1-hd".into()), ..speech() };
        let error = speak(&platform, &user(), &hd).err().expect("refused");
        assert_eq!((error.status, error.code), (429, "quota_exceeded"));
        assert_eq!(
            (&error.extra["limit_name"], &error.extra["fallback"]),
            (&serde_json::json!("tts_chars"), &serde_json::json!("browser"))
        );
        assert!(error.headers.contains(&("retry-after".into(), "120".into())));
        assert_eq!(platform.queries.borrow()[1].1[2], crate::db::SqlParam::Int64(22), "11 characters x 2");
        assert!(platform.sent.borrow().is_empty());
        let bad = FakePlatform::with_vars(&[("openai_tts_model_weights", "tts-1")]);
        assert_eq!(model_weight(&bad, "tts-1").unwrap_err().code, "config_invalid");
    }

    #[test]
    fn tts_a_request_openai_refused_goes_to_nobody_else() {
        let platform = FakePlatform::with_vars(&[
            ("openai_api_key", "sk-x"),
            ("elevenlabs_api_key", "xi-x"),
            ("openai_tts_voices", "alloy,madeup"),
        ]);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Null; 3]])); // cache miss
        quota_granted(&platform);
        platform.push_upstream(400, &[], b"{\"error\":\"unknown voice\"}");
        let speech = Speech { voice: "madeup".into(), ..speech() };
        let error = speak(&platform, &user(), &speech).err().expect("refused");
        assert_eq!(
            (error.status, error.code, error.extra["fallback"].as_str()),
            (502, "tts_rejected", Some("browser"))
        );
        assert_eq!(platform.sent.borrow().len(), 1, "ElevenLabs is not asked");
    }

    #[test]
    fn tts_voice_and_model_come_from_allowlists() {
        let platform = FakePlatform::with_vars(&[("openai_api_key", "sk-x"), ("openai_tts_model", "my-tts")]);
        let ok = |voice: &str, model: Option<&str>| {
            let speech = Speech { voice: voice.into(), model: model.map(str::to_string), ..speech() };
            checked_model(&platform, &speech).map_err(|e| e.status)
        };
        assert_eq!(ok("nova", None), Ok("my-tts".to_string()));
        assert_eq!(ok("nova", Some("my-tts")), Ok("my-tts".to_string()));
        assert_eq!(ok("nova", Some("tts-1-hd")), Ok("tts-1-hd".to_string()));
        assert_eq!(ok("rachel", None), Err(400));
        assert_eq!(ok("nova", Some("gpt-5-audio")), Err(400));
        let error = speak(&platform, &user(), &Speech { voice: "rachel".into(), ..speech() }).err().unwrap();
        assert_eq!(error.status, 400);
        assert!(platform.sent.borrow().is_empty() && platform.queries.borrow().is_empty());
    }

    #[test]
    fn tts_openai_answer_fills_the_cache() {
        let platform = FakePlatform::with_vars(&[("openai_api_key", "sk-x")]);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Null; 3]])); // cache miss
        quota_granted(&platform);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(br#"{"stored":true}"#.to_vec())]]));
        platform.push_upstream(200, &[], b"OggS...");
        let response = speak(&platform, &user(), &speech()).unwrap();
        assert_eq!(response.header("content-type"), Some("audio/ogg"));
        let queries = platform.queries.borrow();
        assert!(queries[1].0.contains("ai_meter_take") && queries[2].0.contains("ai_quota_take"));
        assert!(queries[3].0.contains("tts_cache_store"));
        assert_eq!(queries[3].1[3], crate::db::SqlParam::Bytes(b"OggS...".to_vec()));
    }

    #[test]
    fn tts_premium_refunds_when_the_upstream_fails() {
        let platform = FakePlatform::with_vars(&[
            ("elevenlabs_api_key", "xi-x"),
            ("elevenlabs_max_attempts", "1"),
            ("elevenlabs_voice_ids", "abc"),
        ]);
        let json = |s: &str| Ok(vec![vec![SqlValue::Json(s.as_bytes().to_vec())]]);
        platform.db_answers.borrow_mut().push_back(json(r#"{"ok":true,"charged":true,"cost":1,"balance":4}"#));
        platform.db_answers.borrow_mut().push_back(json(r#"{"ok":true,"refunded":1,"balance":5}"#));
        platform.push_upstream(503, &[], b"");
        let premium = PremiumSpeech {
            text: "hi".into(),
            voice_id: "abc".into(),
            model_id: None,
            voice_settings: None,
            output_format: elevenlabs::DEFAULT_OUTPUT_FORMAT,
        };
        let error = speak_premium(&platform, &user(), &premium).err().expect("error");
        assert_eq!(error.code, "elevenlabs_unavailable");
        let queries = platform.queries.borrow();
        assert!(queries[0].0.contains("premium_tts_charge") && queries[1].0.contains("refund_spend"));
        assert_eq!(queries[0].1[1], crate::db::SqlParam::Int32(2));
    }
}
