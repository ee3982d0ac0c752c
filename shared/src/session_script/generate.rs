//! Asking the model for a script, checking it, and falling back to the local template.

use super::{fallback_script, json_schema, max_tokens, parse_and_validate, system_prompt, user_prompt, Script};
use crate::openai::{ChatMessage, ChatRequest, OpenAi, OpenAiError};
use crate::validate::EgoState;
use crate::Platform;

/// One model answer that fails the checks earns one more try; a second failure suggests
/// the request itself steers the model wrong, and the fallback is the better answer.
const MAX_ANSWERS: usize = 2;

/// A validated script request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRequest {
    pub ego_state: EgoState,
    pub intent: String,
    pub duration_minutes: u32,
    pub style: Option<String>,
    /// The caller's custom protocol, as prompt text ([`super::protocol_prompt`]).
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    OpenAi {
        model: String,
    },
    /// Why the local script was used: `not_configured`, `upstream_unavailable` or
    /// `invalid_output`.
    Fallback {
        reason: &'static str,
    },
}

/// A script from the model when it is configured and answers validly, else the fallback.
/// Never fails: the app always gets a usable script. With it, the tokens every answer
/// cost (its `usage`; the request's bound, `max_tokens` and the prompt, when an answer
/// does not say), to meter the call by.
pub fn generate(
    platform: &dyn Platform,
    client: Option<&OpenAi>,
    model: &str,
    request: &ScriptRequest,
) -> (Script, Source, i64) {
    let mut used: i64 = 0;
    let fallback = |reason, used| {
        (fallback_script(&request.ego_state, request.duration_minutes), Source::Fallback { reason }, used)
    };
    let Some(client) = client else { return fallback("not_configured", 0) };
    let chat = ChatRequest {
        model: model.to_string(),
        messages: vec![
            ChatMessage::system(system_prompt(request.duration_minutes)),
            ChatMessage::user(user_prompt(
                &request.ego_state,
                &request.intent,
                request.style.as_deref(),
                request.protocol.as_deref(),
            )),
        ],
        max_tokens: max_tokens(request.duration_minutes),
        temperature: 0.8,
        json_schema: Some(("session_script", json_schema())),
    };
    let bound = i64::from(chat.max_tokens)
        + chat.messages.iter().map(|m| m.content.chars().count() as i64).sum::<i64>() / 4
        + 1;
    // One deadline for both answers.
    let retrier = client.retrier(platform);
    for answer in 1..=MAX_ANSWERS {
        match client.chat(&retrier, &chat) {
            Ok(completion) => {
                used += crate::quota::usage_tokens(&completion.usage).unwrap_or(bound);
                match parse_and_validate(&completion.content, &request.ego_state, request.duration_minutes) {
                    Ok(script) => {
                        let model = if completion.model.is_empty() { model.to_string() } else { completion.model };
                        return (script, Source::OpenAi { model }, used);
                    }
                    Err(rule) => platform.log(&format!("generate-script: answer {answer} invalid: {rule}")),
                }
            }
            Err(error @ (OpenAiError::InvalidResponse(_) | OpenAiError::Refused)) => {
                platform.log(&format!("generate-script: answer {answer} {}", error.summary()));
            }
            Err(error @ OpenAiError::Upstream(_)) => {
                // The retrier has already spent the attempts and the deadline.
                platform.log(&format!("generate-script: openai {}", error.summary()));
                return fallback("upstream_unavailable", used);
            }
        }
    }
    fallback("invalid_output", used)
}
