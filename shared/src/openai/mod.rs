//! The OpenAI Chat Completions client every AI endpoint uses (any OpenAI-compatible
//! gateway works: the address is the `openai_base_url` variable).
//!
//! Calls go through [`crate::upstream::Retrier`], so retries, backoff and the deadline
//! follow the one policy in `upstream::retry` (variables `openai_*`). Nothing here logs
//! message content, and upstream error bodies are dropped unread, never returned.

mod relay;
pub mod speech;
mod sse;
pub mod transcription;

use serde::Serialize;
use serde_json::{json, Value};

use crate::http::outbound::{ChunkReader, OutboundRequest};
use crate::settings::{self, Setting};
use crate::upstream::{Retrier, RetryPolicy, UpstreamError};
use crate::{ApiError, Platform};

pub use relay::SseRelay;
pub use sse::SseParser;

/// A chat answer is text of a few KiB; more than this is not an answer we can use.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A configured client: the key is set.
#[derive(Clone)]
pub struct OpenAi {
    api_key: String,
    base_url: String,
    policy: RetryPolicy,
}

// Written by hand so the key can never reach a log through `{:?}`.
impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi").field("base_url", &self.base_url).field("policy", &self.policy).finish()
    }
}

impl OpenAi {
    /// The client, or `None` when `openai_api_key` is empty (callers then use their
    /// local fallback). An invalid retry setting is a configuration error.
    pub fn from_platform(platform: &dyn Platform) -> Result<Option<OpenAi>, ApiError> {
        let Some(api_key) = settings::OPENAI_API_KEY.value(platform) else { return Ok(None) };
        let base_url = settings::OPENAI_BASE_URL.value(platform).unwrap_or_default();
        let policy = RetryPolicy::from_platform(platform, &settings::OPENAI_RETRY)?;
        Ok(Some(OpenAi { api_key, base_url, policy }))
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// A retrier whose deadline starts now: make one per request and share it between
    /// that request's calls.
    pub fn retrier<'a>(&self, platform: &'a dyn Platform) -> Retrier<'a> {
        Retrier::new(platform, self.policy)
    }

    /// `<base>/v1/<path>`. The base is documented without `/v1`; one that already ends
    /// in `/v1` (the form OpenAI's own SDKs use) is accepted as well.
    pub(crate) fn v1_url(&self, path: &str) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/{path}")
    }

    /// `<base>/v1/chat/completions`.
    pub fn chat_url(&self) -> String {
        self.v1_url("chat/completions")
    }

    fn request(&self, body: &Value) -> OutboundRequest {
        OutboundRequest::new("POST", self.chat_url())
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("accept", "application/json, text/event-stream")
            .json_body(body)
    }

    /// One chat completion, whole.
    pub fn chat(&self, retrier: &Retrier, chat: &ChatRequest) -> Result<ChatCompletion, OpenAiError> {
        let response = retrier.send(&self.request(&chat.body(false)))?;
        let bytes =
            response.read_all(MAX_RESPONSE_BYTES).map_err(|_| OpenAiError::InvalidResponse("body unreadable"))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|_| OpenAiError::InvalidResponse("body is not JSON"))?;
        ChatCompletion::from_response(&value)
    }

    /// One chat completion, streamed: the deltas as the model produces them. Retries
    /// happen only before the answer starts; a stream cut off later is reported by
    /// [`ChatStream::next_events`].
    pub fn chat_stream(&self, retrier: &Retrier, chat: &ChatRequest) -> Result<ChatStream, OpenAiError> {
        let response = retrier.send(&self.request(&chat.body(true)))?;
        Ok(ChatStream { body: response.body, parser: SseParser::default(), ended: false })
    }
}

/// The model name from a variable (`openai_chat_model`, `openai_script_model`).
pub fn model(platform: &dyn Platform, setting: &Setting) -> String {
    setting.value(platform).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::System, content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::User, content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::Assistant, content: content.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Bounds the cost of one answer.
    pub max_tokens: u32,
    pub temperature: f32,
    /// Structured Outputs: a JSON schema the answer must follow.
    pub json_schema: Option<(&'static str, Value)>,
}

impl ChatRequest {
    fn body(&self, stream: bool) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        });
        if let Some((name, schema)) = &self.json_schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": { "name": name, "strict": true, "schema": schema },
            });
        }
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    pub content: String,
    /// The model that answered, as the upstream names it.
    pub model: String,
    /// `{"prompt_tokens", "completion_tokens", "total_tokens"}` when reported.
    pub usage: Value,
    pub finish_reason: Option<String>,
}

impl ChatCompletion {
    fn from_response(value: &Value) -> Result<ChatCompletion, OpenAiError> {
        let choice = value.pointer("/choices/0").ok_or(OpenAiError::InvalidResponse("no choices"))?;
        if choice.pointer("/message/refusal").and_then(Value::as_str).is_some_and(|r| !r.is_empty()) {
            return Err(OpenAiError::Refused);
        }
        let content = choice
            .pointer("/message/content")
            .and_then(Value::as_str)
            .ok_or(OpenAiError::InvalidResponse("no message content"))?;
        Ok(ChatCompletion {
            content: content.to_string(),
            model: value.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
            usage: usage_of(value),
            finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
        })
    }
}

/// Only the three counters, whatever else a gateway adds.
fn usage_of(value: &Value) -> Value {
    match value.get("usage") {
        Some(Value::Object(usage)) => {
            let pick = |k: &str| usage.get(k).and_then(Value::as_u64).map(Value::from).unwrap_or(Value::Null);
            json!({
                "prompt_tokens": pick("prompt_tokens"),
                "completion_tokens": pick("completion_tokens"),
                "total_tokens": pick("total_tokens"),
            })
        }
        _ => Value::Null,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenAiError {
    /// Retries did not help, or the request was refused (see [`UpstreamError`]).
    Upstream(UpstreamError),
    /// A 2xx answer we cannot use (not JSON, no content, cut-off stream).
    InvalidResponse(&'static str),
    /// The model declined to answer (Structured Outputs `refusal`).
    Refused,
}

impl From<UpstreamError> for OpenAiError {
    fn from(error: UpstreamError) -> Self {
        OpenAiError::Upstream(error)
    }
}

impl OpenAiError {
    /// For the operator's log: kinds and status codes only.
    pub fn summary(&self) -> String {
        match self {
            OpenAiError::Upstream(error) => error.summary(),
            OpenAiError::InvalidResponse(what) => format!("invalid response: {what}"),
            OpenAiError::Refused => "refused".into(),
        }
    }

    /// The seconds a client should wait before trying again, when the upstream said.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            OpenAiError::Upstream(UpstreamError::Unavailable { retry_after_secs, .. }) => *retry_after_secs,
            _ => None,
        }
    }
}

/// What a streamed completion yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the answer's text.
    Delta(String),
    /// The token counts, sent once near the end.
    Usage(Value),
    /// The answer is complete.
    Done,
}

pub struct ChatStream {
    body: Box<dyn ChunkReader>,
    parser: SseParser,
    ended: bool,
}

impl ChatStream {
    /// Reads the next piece of the upstream body and returns the events it completed
    /// (possibly none); `Ok(None)` once the stream is over. A stream that breaks off
    /// before `[DONE]` is an error, so a cut-off answer is never passed off as whole.
    pub fn next_events(&mut self) -> Result<Option<Vec<StreamEvent>>, OpenAiError> {
        if self.ended {
            return Ok(None);
        }
        let chunk = match self.body.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                self.ended = true;
                return Err(OpenAiError::InvalidResponse("stream ended early"));
            }
            Err(_) => {
                self.ended = true;
                return Err(OpenAiError::InvalidResponse("stream interrupted"));
            }
        };
        let mut events = Vec::new();
        for data in self.parser.push(&chunk).map_err(OpenAiError::InvalidResponse)? {
            if data.trim() == "[DONE]" {
                self.ended = true;
                events.push(StreamEvent::Done);
                break;
            }
            let Ok(value) = serde_json::from_str::<Value>(&data) else {
                return Err(OpenAiError::InvalidResponse("stream event is not JSON"));
            };
            if value.get("error").is_some() {
                return Err(OpenAiError::InvalidResponse("stream reported an error"));
            }
            if let Some(text) = value.pointer("/choices/0/delta/content").and_then(Value::as_str) {
                if !text.is_empty() {
                    events.push(StreamEvent::Delta(text.to_string()));
                }
            }
            if value.get("usage").is_some_and(Value::is_object) {
                events.push(StreamEvent::Usage(usage_of(&value)));
            }
        }
        Ok(Some(events))
    }
}

#[cfg(test)]
mod tests;

/// The answer when the AI could not help and the endpoint has no fallback (chat):
/// 503 with a friendly message, `"retryable": true` and a `Retry-After` when the upstream
/// gave one (else a short default). The cause goes to the log, never to the client.
pub fn unavailable(platform: &dyn Platform, endpoint: &str, error: &OpenAiError) -> ApiError {
    platform.log(&format!("{endpoint}: openai {}", error.summary()));
    let retry_after = error.retry_after_secs().unwrap_or(5).max(1);
    ApiError::service_unavailable(
        "ai_unavailable",
        "The AI guide is not available right now; please try again in a moment.",
    )
    .with_header("retry-after", retry_after.to_string())
    .with_field("retryable", true)
}
