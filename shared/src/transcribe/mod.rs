//! Voice messages to text: the `transcribe` endpoint.
//!
//! Input ([`Upload::from_request`]): `multipart/form-data` with a `file` (what
//! `FormData` with a `MediaRecorder` blob sends) and optional `language` and `prompt`,
//! or a raw body with an audio content type (or `application/octet-stream`, what
//! supabase-js sends for a `Blob`), with `language` and `prompt` in the query string.
//! The bytes decide the format ([`sniff`]), never the header alone; at most
//! [`MAX_AUDIO_BYTES`]; at most `transcribe_max_duration_seconds` as measured from the
//! audio itself ([`sniff::duration_secs`]), and refused (422) when that length cannot be
//! established. The measured seconds are metered per user and hour ([`SECONDS`]), then
//! settled to what OpenAI reports it billed.
//!
//! The chain ([`transcribe`]): OpenAI `/v1/audio/transcriptions`
//! (`openai_transcribe_model`), then ElevenLabs `/v1/speech-to-text`
//! (`elevenlabs_stt_model`), then a 503 with `"fallback": "browser"`. Like `tts`, the next
//! provider is asked only while the previous one is unavailable (timeouts, 5xx, 429 after
//! the retries, a 2xx we cannot read); a request a provider refused (other 4xx) is a 502
//! and goes nowhere else, so a refused recording is not paid for twice.
//!
//! Nothing is stored, and neither the audio nor the transcript is logged: log lines carry
//! the provider, statuses and error kinds only.

pub mod multipart;
pub mod sniff;

use serde_json::{json, Value};

use crate::auth::AuthenticatedUser;
use crate::elevenlabs::ElevenLabs;
use crate::http::outbound::OutboundResponse;
use crate::openai::OpenAi;
use crate::settings::{self, Setting};
use crate::upstream::UpstreamError;
use crate::{validate, ApiError, ApiRequest, ApiResponse, Platform};

pub use sniff::AudioFormat;

/// The largest recording accepted: 25 MB, OpenAI's limit. OpenAI counts its whole
/// request (26,214,400 bytes); the decimal 25 MB leaves room for the form around the
/// audio.
pub const MAX_AUDIO_BYTES: usize = 25_000_000;
/// The endpoint's body limit: the recording plus a form's boundaries, headers and the
/// text fields.
pub const MAX_BODY_BYTES: usize = MAX_AUDIO_BYTES + 64 * 1024;
/// Vocabulary hints are a sentence or a list of names, not a document.
pub const MAX_PROMPT_CHARS: usize = 1000;
/// A transcript of 25 minutes is tens of KiB; ElevenLabs adds per-word timings.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// ISO 639-1, the codes both upstreams take.
const ISO_639_1: &str = "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu \
cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie \
ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml \
mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si \
sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo \
za zh zu";

/// A validated upload: the audio borrowed from the request body.
#[derive(Clone, PartialEq)]
pub struct Upload<'a> {
    pub audio: &'a [u8],
    pub format: AudioFormat,
    /// ISO 639-1, lower case.
    pub language: Option<String>,
    pub prompt: Option<String>,
}

// By hand: the audio and the prompt are the user's, and never belong in a log.
impl std::fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("bytes", &self.audio.len())
            .field("format", &self.format)
            .field("language", &self.language)
            .field("prompt_chars", &self.prompt.as_ref().map(|p| p.chars().count()))
            .finish()
    }
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::new(415, "unsupported_media_type", message)
}

fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Content types a recording may be declared as: any `audio/*`, the video containers
/// browsers use for audio-only recordings, or no particular type. The bytes decide.
fn is_audio_type(essence: &str) -> bool {
    essence.starts_with("audio/")
        || matches!(essence, "video/webm" | "video/ogg" | "video/mp4" | "application/octet-stream")
}

const ACCEPTED: &str = "Send the recording as multipart/form-data with a `file` field, or as the raw body \
with an audio content type (webm, ogg, mp4/m4a, mp3 or wav).";

impl<'a> Upload<'a> {
    /// Reads and checks the request: 415 for a content type that cannot be a
    /// recording, 400 for a broken form, a missing, empty or non-audio file or a bad
    /// field, 413 above [`MAX_AUDIO_BYTES`]. Needs no platform, so it can be fuzzed alone.
    pub fn from_request(request: &'a ApiRequest) -> Result<Upload<'a>, ApiError> {
        let content_type = request.header("content-type").unwrap_or("");
        let kind = essence(content_type);
        let (audio, language, prompt) = if kind == "multipart/form-data" {
            from_form(content_type, &request.body)?
        } else if is_audio_type(&kind) {
            let language = query_value(&request.query, "language")?;
            let prompt = query_value(&request.query, "prompt")?;
            (&request.body[..], language, prompt)
        } else if kind.is_empty() {
            return Err(unsupported(format!("The request has no Content-Type. {ACCEPTED}")));
        } else {
            return Err(unsupported(format!("The request's Content-Type is {kind}. {ACCEPTED}")));
        };
        if audio.is_empty() {
            return Err(ApiError::bad_request("empty_audio", "The recording is empty."));
        }
        if audio.len() > MAX_AUDIO_BYTES {
            return Err(ApiError::new(
                413,
                "payload_too_large",
                format!("The recording is larger than {MAX_AUDIO_BYTES} bytes (25 MB)."),
            ));
        }
        let format = sniff::sniff(audio).ok_or_else(|| {
            ApiError::bad_request(
                "not_audio",
                "The file is not a recording in a supported format (webm, ogg with Opus or Vorbis, mp4/m4a, mp3, wav).",
            )
        })?;
        // An empty field is what a form sends for "not chosen".
        let language = language.filter(|l| !l.trim().is_empty()).map(|l| self::language(&l)).transpose()?;
        let prompt = prompt
            .filter(|p| !p.trim().is_empty())
            .map(|p| validate::text("prompt", &p, 1, MAX_PROMPT_CHARS))
            .transpose()?;
        Ok(Upload { audio, format, language, prompt })
    }
}

type Fields<'a> = (&'a [u8], Option<String>, Option<String>);

fn from_form<'a>(content_type: &str, body: &'a [u8]) -> Result<Fields<'a>, ApiError> {
    let invalid = |e: multipart::MultipartError| {
        ApiError::bad_request("invalid_multipart", format!("The multipart/form-data body cannot be read: {e}."))
    };
    let boundary = multipart::boundary(content_type).map_err(invalid)?;
    let parts = multipart::parse(body, &boundary).map_err(invalid)?;
    let mut file = None;
    let mut language = None;
    let mut prompt = None;
    for part in parts {
        let slot = match part.name.as_str() {
            "file" => {
                let declared = part.content_type.as_deref().map(essence).unwrap_or_default();
                if !declared.is_empty() && !is_audio_type(&declared) {
                    return Err(unsupported(format!("The `file` part is {declared}, not audio. {ACCEPTED}")));
                }
                if file.replace(part.body).is_some() {
                    return Err(ApiError::bad_request("invalid_field", "Send one `file`, not several."));
                }
                continue;
            }
            "language" => &mut language,
            "prompt" => &mut prompt,
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("Unknown form field `{shown}`; the fields are file, language and prompt."),
                ));
            }
        };
        let value = String::from_utf8(part.body.to_vec()).map_err(|_| {
            ApiError::bad_request("invalid_field", format!("Field `{}` must be UTF-8 text.", part.name))
        })?;
        if slot.replace(value).is_some() {
            return Err(ApiError::bad_request("invalid_field", format!("Field `{}` is given twice.", part.name)));
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::bad_request("missing_file", "The form has no `file` field; put the recording in `file`.")
    })?;
    Ok((file, language, prompt))
}

/// An ISO 639-1 code (`en`, `DE`), lower-cased.
pub fn language(value: &str) -> Result<String, ApiError> {
    let code = value.trim().to_ascii_lowercase();
    if code.len() == 2 && ISO_639_1.split(' ').any(|c| c == code) {
        Ok(code)
    } else {
        Err(ApiError::bad_request("invalid_field", "Field `language` must be an ISO 639-1 code such as en, de or es."))
    }
}

/// A query parameter, percent-decoded (`+` is a space); given twice is a 400.
fn query_value(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        let decoded = percent_decode(value).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                format!("Query parameter `{name}` is not valid percent-encoded UTF-8."),
            )
        })?;
        if found.replace(decoded).is_some() {
            return Err(ApiError::bad_request("invalid_field", format!("Query parameter `{name}` is given twice.")));
        }
    }
    Ok(found)
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The settings of the chain, read once per request.
struct Settings {
    max_duration_secs: u32,
    openai_model: String,
    elevenlabs_model: String,
}

impl Settings {
    fn from_platform(platform: &dyn Platform) -> Result<Settings, ApiError> {
        let model = |setting: &Setting| {
            let value = setting.value(platform).unwrap_or_default();
            validate::slug(setting.name, &value, 64).map_err(|_| setting.invalid())
        };
        Ok(Settings {
            max_duration_secs: settings::TRANSCRIBE_MAX_DURATION_SECONDS.parse(platform)?,
            openai_model: model(&settings::OPENAI_TRANSCRIBE_MODEL)?,
            elevenlabs_model: model(&settings::ELEVENLABS_STT_MODEL)?,
        })
    }
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub language: Option<String>,
    pub duration_secs: Option<f64>,
    pub provider: &'static str,
}

impl Transcript {
    pub fn to_json(&self) -> Value {
        json!({
            "text": self.text,
            "language": self.language,
            "duration_seconds": self.duration_secs.map(|d| (d * 100.0).round() / 100.0),
            "provider": self.provider,
        })
    }
}

/// Why the client should use the browser's own recognition.
fn browser_fallback(reason: &'static str) -> ApiError {
    ApiError::service_unavailable(
        "transcription_unavailable",
        "Server transcription is not available right now; use the browser's speech recognition.",
    )
    .with_field("fallback", "browser")
    .with_field("reason", reason)
}

/// A provider refused the request itself: no other provider is asked.
fn rejected(provider: &str, status: u16) -> ApiError {
    ApiError::bad_gateway(
        "transcription_rejected",
        format!(
            "The transcription service ({provider}) refused this recording (status {status}); \
             check that it plays and is not too long, or use the browser's speech recognition."
        ),
    )
    .with_field("fallback", "browser")
    .with_field("reason", "upstream_rejected")
}

/// How one provider's attempt ended.
enum Outcome {
    /// The transcript, and the seconds the provider reports it transcribed.
    Done(Transcript, Option<f64>),
    /// Refused (4xx other than 429): answered at once, nobody else is asked.
    Rejected(u16),
    /// Unavailable, or an answer we cannot use: the next provider may try.
    Failed(String),
}

/// The chain: checks that need no upstream (duration, configuration), the quota, then
/// OpenAI, ElevenLabs, and the browser fallback.
pub fn transcribe(platform: &dyn Platform, user: &AuthenticatedUser, upload: &Upload) -> Result<ApiResponse, ApiError> {
    let settings = Settings::from_platform(platform)?;
    let secs = sniff::duration_secs(upload.format, upload.audio).ok_or_else(|| {
        ApiError::new(
            422,
            "audio_length_unknown",
            "The recording's length cannot be established from the file (a header that disagrees with \
             the audio, bytes that are not audio, or a codec whose frames the server does not count). \
             Record it again in the app, or send WAV (PCM), MP3, WebM or Ogg with Opus, or MP4 with AAC.",
        )
    })?;
    if secs > f64::from(settings.max_duration_secs) {
        return Err(ApiError::new(
            413,
            "audio_too_long",
            format!(
                "The recording plays for {:.0} seconds; at most {} seconds can be transcribed.",
                secs.ceil(),
                settings.max_duration_secs
            ),
        )
        .with_field("max_duration_seconds", settings.max_duration_secs));
    }
    let measured = Some(secs);
    let openai = OpenAi::from_platform(platform)?;
    let elevenlabs = ElevenLabs::from_platform(platform)?;
    if openai.is_none() && elevenlabs.is_none() {
        return Err(browser_fallback("not_configured"));
    }

    // Every transcription costs upstream money by the second: the measured seconds count
    // against the user's hourly allowance, and the call against the hourly call quota,
    // before anything is sent. Over either, an anonymous sign-in, or the quota unreadable
    // (database down): the client can still use the browser's recognition.
    let with_fallback = |e: ApiError| {
        if matches!(e.status, 403 | 429 | 503) {
            e.with_field("fallback", "browser")
        } else {
            e
        }
    };
    let seconds = crate::quota::take_amount(platform, user, &SECONDS, secs.ceil() as i64).map_err(with_fallback)?;
    if let Err(e) = crate::quota::take(platform, user, "transcribe") {
        crate::quota::settle(platform, user, &seconds, 0);
        return Err(with_fallback(e));
    }
    let answer = chain(platform, upload, &settings, openai.as_ref(), elevenlabs.as_ref(), measured);
    // Billed by what the upstream reports it transcribed where it says, else by the
    // measure; nothing when no transcript came back.
    let billed = match &answer {
        Ok((_, reported)) => reported.unwrap_or(secs).ceil() as i64,
        Err(_) => 0,
    };
    crate::quota::settle(platform, user, &seconds, billed);
    answer.map(|(transcript, _)| ApiResponse::json(200, &transcript.to_json()))
}

/// The hourly allowance of audio seconds.
pub const SECONDS: crate::quota::Meter = crate::quota::Meter {
    name: "transcribe_seconds",
    unit: "seconds of audio",
    free: settings::TRANSCRIBE_FREE_SECONDS_PER_HOUR,
    mystic: settings::TRANSCRIBE_MYSTIC_SECONDS_PER_HOUR,
};

/// The providers in turn: the transcript and the seconds the provider reports.
fn chain(
    platform: &dyn Platform,
    upload: &Upload,
    settings: &Settings,
    openai: Option<&OpenAi>,
    elevenlabs: Option<&ElevenLabs>,
    measured: Option<f64>,
) -> Result<(Transcript, Option<f64>), ApiError> {
    let language = upload.language.as_deref();
    if let Some(client) = openai {
        let outcome = form(platform, upload, |form| {
            form.text("model", &settings.openai_model).text("response_format", "json");
            if let Some(language) = language {
                form.text("language", language);
            }
            if let Some(prompt) = &upload.prompt {
                form.text("prompt", prompt);
            }
        })
        .map(|(content_type, body)| client.audio_transcription(&client.retrier(platform), &content_type, body));
        match outcome.map(|sent| read(sent, "openai", upload, measured, openai_answer)) {
            Some(Outcome::Done(transcript, reported)) => return Ok((transcript, reported)),
            Some(Outcome::Rejected(status)) => {
                platform.log(&format!("transcribe: openai rejected status={status}"));
                return Err(rejected("openai", status));
            }
            Some(Outcome::Failed(why)) => platform.log(&format!("transcribe: openai {why}")),
            None => platform.log("transcribe: openai skipped: no boundary fits the recording"),
        }
    }

    if let Some(client) = elevenlabs {
        let outcome = form(platform, upload, |form| {
            // Audio-event tags ("(laughs)") are noise in a chat message.
            form.text("model_id", &settings.elevenlabs_model).text("tag_audio_events", "false");
            if let Some(language) = language {
                form.text("language_code", language);
            }
        })
        .map(|(content_type, body)| client.speech_to_text(&client.retrier(platform), &content_type, body));
        match outcome.map(|sent| read(sent, "elevenlabs", upload, measured, elevenlabs_answer)) {
            // The last word's end is no billed length: the measure stands.
            Some(Outcome::Done(transcript, _)) => return Ok((transcript, None)),
            Some(Outcome::Rejected(status)) => {
                platform.log(&format!("transcribe: elevenlabs rejected status={status}"));
                return Err(rejected("elevenlabs", status));
            }
            Some(Outcome::Failed(why)) => platform.log(&format!("transcribe: elevenlabs {why}")),
            None => platform.log("transcribe: elevenlabs skipped: no boundary fits the recording"),
        }
    }
    Err(browser_fallback("upstream_unavailable"))
}

/// The multipart body for one provider: `fields` first, then the file. `None` when no
/// random boundary fits (only for a file made to contain them).
fn form(
    platform: &dyn Platform,
    upload: &Upload,
    fields: impl Fn(&mut multipart::FormBuilder),
) -> Option<(String, Vec<u8>)> {
    for _ in 0..3 {
        let mut form = multipart::FormBuilder::new(&platform.random_bytes(16), upload.audio.len());
        let texts_fit = upload.prompt.as_deref().is_none_or(|p| form.fits(p.as_bytes()));
        if !texts_fit || !form.fits(upload.audio) {
            continue;
        }
        fields(&mut form);
        form.file("file", upload.format.filename(), upload.format.content_type(), upload.audio);
        return Some(form.finish());
    }
    None
}

/// What a provider's answer says: (text, language it reports, seconds it reports).
type Parsed = (String, Option<String>, Option<f64>);

fn read(
    sent: Result<OutboundResponse, UpstreamError>,
    provider: &'static str,
    upload: &Upload,
    measured: Option<f64>,
    parse: fn(&Value) -> Option<Parsed>,
) -> Outcome {
    let response = match sent {
        Ok(response) => response,
        Err(UpstreamError::Rejected { status }) => return Outcome::Rejected(status),
        Err(error) => return Outcome::Failed(error.summary()),
    };
    let Ok(bytes) = response.read_all(MAX_ANSWER_BYTES) else {
        return Outcome::Failed("invalid response: body unreadable".into());
    };
    let Some((text, reported_language, reported_secs)) =
        serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(parse)
    else {
        return Outcome::Failed("invalid response: no transcript".into());
    };
    // The language asked for, else the provider's when it is an ISO 639-1 code (OpenAI
    // reports none; ElevenLabs may report ISO 639-3, which is left out).
    let language = upload.language.clone().or_else(|| reported_language.and_then(|l| self::language(&l).ok()));
    let reported_secs = reported_secs.filter(|s| s.is_finite() && *s >= 0.0);
    let duration_secs = measured.or(reported_secs);
    Outcome::Done(Transcript { text: text.trim().to_string(), language, duration_secs, provider }, reported_secs)
}

/// `{"text": …}`; whisper-style answers add `language` and `duration`, newer ones
/// `usage: {"type": "duration", "seconds": …}`.
fn openai_answer(value: &Value) -> Option<Parsed> {
    let text = value.get("text")?.as_str()?.to_string();
    let language = value.get("language").and_then(Value::as_str).map(str::to_string);
    let secs = value.get("duration").and_then(Value::as_f64).or_else(|| {
        let usage = value.get("usage")?;
        (usage.get("type")?.as_str()? == "duration").then(|| usage.get("seconds")?.as_f64()).flatten()
    });
    Some((text, language, secs))
}

/// `{"text", "language_code", "words": [{"end": …}]}`: the last word's end stands for
/// the length when the container did not say.
fn elevenlabs_answer(value: &Value) -> Option<Parsed> {
    let text = value.get("text")?.as_str()?.to_string();
    let language = value.get("language_code").and_then(Value::as_str).map(str::to_string);
    let secs = value
        .get("words")
        .and_then(Value::as_array)
        .and_then(|words| words.iter().filter_map(|w| w.get("end")?.as_f64()).reduce(f64::max));
    Some((text, language, secs))
}

#[cfg(test)]
mod tests;
