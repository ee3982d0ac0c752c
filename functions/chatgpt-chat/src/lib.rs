//! `POST /chatgpt-chat`: a chat with Libero's guide. The system prompt is the server's
//! (`libero_shared::guidance`); `"stream": true` relays the model's deltas as server-sent
//! events as they arrive (`libero_shared::openai::SseRelay`).

use libero_shared::guidance;
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::openai::{self, ChatMessage, ChatRequest, OpenAi, SseRelay};
use libero_shared::validate::{self, EgoState};
use libero_shared::{auth, quota, settings, Platform};
use serde::Deserialize;
use serde_json::json;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "chatgpt-chat",
    routes: &[Route { method: "POST", path: "/", handler: chat }],
    body_limit: DEFAULT_BODY_LIMIT,
};

/// Bounds on the conversation a client may send: enough context for a chat, and a
/// ceiling on what one request can cost.
const MAX_MESSAGES: usize = 30;
const MAX_MESSAGE_CHARS: usize = 4_000;
const MAX_TOTAL_CHARS: usize = 16_000;
/// Bounds the answer (the prompt asks for under 150 words).
const MAX_REPLY_TOKENS: u32 = 600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    messages: Vec<MessageBody>,
    #[serde(default, alias = "egoState")]
    ego_state: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// Other members of a message (an id, a timestamp the app keeps) are ignored: they are
/// the client's bookkeeping and never reach the model.
#[derive(Deserialize)]
struct MessageBody {
    role: String,
    content: String,
}

/// The conversation, checked: `user`/`assistant` turns only, bounded, ending with the user.
fn conversation(messages: Vec<MessageBody>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("Field `messages` must hold 1 to {MAX_MESSAGES} messages."),
        ));
    }
    let mut total = 0;
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.into_iter().enumerate() {
        let field = format!("messages[{i}].content");
        let content = validate::text(&field, &message.content, 1, MAX_MESSAGE_CHARS)?;
        total += content.chars().count();
        out.push(match message.role.as_str() {
            "user" => ChatMessage::user(content),
            "assistant" => ChatMessage::assistant(content),
            "system" | "developer" => {
                return Err(ApiError::bad_request(
                    "system_message_not_allowed",
                    "The system prompt is set by the server; send only user and assistant messages.",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("Field `messages[{i}].role` must be `user` or `assistant`."),
                ))
            }
        });
    }
    if total > MAX_TOTAL_CHARS {
        return Err(ApiError::bad_request(
            "conversation_too_long",
            format!("The messages together exceed {MAX_TOTAL_CHARS} characters; send fewer or shorter ones."),
        ));
    }
    if out.last().map(|m| m.role) != Some(openai::Role::User) {
        return Err(ApiError::bad_request("invalid_field", "The last message must be the user's."));
    }
    Ok(out)
}

fn chat(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let body: ChatBody = request.json()?;
    let ego_state = body.ego_state.as_deref().map(EgoState::parse).transpose()?;
    let mut messages = conversation(body.messages)?;

    let Some(client) = OpenAi::from_platform(platform)? else {
        // Not configured: a kind fixed reply, marked as such, rather than an error.
        let reply = guidance::chat_fallback_reply(ego_state.as_deref());
        if body.stream {
            return Ok(event_stream(SseRelay::canned(reply, "fallback".into())));
        }
        return Ok(ApiResponse::json(200, &json!({ "reply": reply, "usage": null, "source": "fallback" })));
    };
    let grant = quota::take_ai_text(platform, &user, ENDPOINT.name)?;

    messages.insert(0, ChatMessage::system(guidance::chat_system_prompt(ego_state.as_deref())));
    // A stream's usage arrives after its answer has begun: it is metered at its bound.
    let bound =
        i64::from(MAX_REPLY_TOKENS) + messages.iter().map(|m| m.content.chars().count() as i64).sum::<i64>() / 4 + 1;
    let model = openai::model(platform, &settings::OPENAI_CHAT_MODEL);
    let chat = ChatRequest {
        model: model.clone(),
        messages,
        max_tokens: MAX_REPLY_TOKENS,
        temperature: 0.7,
        json_schema: None,
    };
    let retrier = client.retrier(platform);
    if body.stream {
        let stream = client.chat_stream(&retrier, &chat).map_err(|e| {
            quota::settle(platform, &user, &grant, 0);
            openai::unavailable(platform, ENDPOINT.name, &e)
        })?;
        quota::settle(platform, &user, &grant, bound);
        return Ok(event_stream(SseRelay::new(stream, model)));
    }
    let completion = client.chat(&retrier, &chat).map_err(|e| {
        quota::settle(platform, &user, &grant, 0);
        openai::unavailable(platform, ENDPOINT.name, &e)
    })?;
    quota::settle(platform, &user, &grant, quota::usage_tokens(&completion.usage).unwrap_or(bound));
    let model = if completion.model.is_empty() { model } else { completion.model };
    Ok(ApiResponse::json(
        200,
        &json!({ "reply": completion.content, "usage": completion.usage, "model": model, "source": "openai" }),
    ))
}

fn event_stream(relay: SseRelay) -> ApiResponse {
    ApiResponse::stream(200, "text/event-stream", Box::new(relay))
        .with_header("cache-control", "no-cache")
        // Proxies such as nginx would otherwise buffer the stream to the end.
        .with_header("x-accel-buffering", "no")
}

libero_shared::spin_component!(ENDPOINT);
