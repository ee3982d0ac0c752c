//! A streamed chat answer as the endpoint sends it on: server-sent events carrying only
//! what the client needs, never the upstream's raw events.
//!
//! ```text
//! data: {"delta":"Hel"}
//!
//! data: {"delta":"lo"}
//!
//! data: {"done":true,"model":"gpt-4o-mini","usage":{...}}
//!
//! data: [DONE]
//!
//! ```
//! A stream the upstream breaks off ends with
//! `data: {"error":{"code":"ai_interrupted","message":...},"retryable":true}` and then
//! `data: [DONE]`, so the client always sees a clean end and knows whether it is whole.

use serde_json::{json, Value};

use super::{ChatStream, StreamEvent};
use crate::http::ChunkStream;

pub struct SseRelay {
    upstream: Option<ChatStream>,
    /// A whole answer known up front (the fallback reply), sent as one delta.
    canned: Option<String>,
    model: String,
    usage: Value,
    finished: bool,
}

impl SseRelay {
    /// Relays `upstream` as it arrives.
    pub fn new(upstream: ChatStream, model: String) -> Self {
        SseRelay { upstream: Some(upstream), canned: None, model, usage: Value::Null, finished: false }
    }

    /// Sends `reply` as a complete one-delta stream (`model` names where it came from).
    pub fn canned(reply: String, model: String) -> Self {
        SseRelay { upstream: None, canned: Some(reply), model, usage: Value::Null, finished: false }
    }
}

/// The closing events: the summary, then `[DONE]` (the marker OpenAI-style clients wait for).
fn done(model: &str, usage: &Value) -> Vec<u8> {
    let mut out = event(&json!({ "done": true, "model": model, "usage": usage }));
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn event(value: &Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

impl ChunkStream for SseRelay {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        if self.finished {
            return None;
        }
        if let Some(reply) = self.canned.take() {
            self.finished = true;
            let mut out = event(&json!({ "delta": reply }));
            out.extend(done(&self.model, &self.usage));
            return Some(Ok(out));
        }
        let upstream = self.upstream.as_mut()?;
        // Each upstream read is forwarded as soon as it completes at least one event, so
        // the client sees every delta when the model produces it.
        loop {
            match upstream.next_events() {
                Ok(Some(events)) => {
                    let mut out = Vec::new();
                    for item in events {
                        match item {
                            StreamEvent::Delta(text) => out.extend(event(&json!({ "delta": text }))),
                            StreamEvent::Usage(usage) => self.usage = usage,
                            StreamEvent::Done => {
                                self.finished = true;
                                out.extend(done(&self.model, &self.usage));
                                break;
                            }
                        }
                    }
                    if !out.is_empty() {
                        return Some(Ok(out));
                    }
                }
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(_) => {
                    self.finished = true;
                    let mut out = event(&json!({
                        "error": {
                            "code": "ai_interrupted",
                            "message": "The answer was cut off; please try again."
                        },
                        "retryable": true
                    }));
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    return Some(Ok(out));
                }
            }
        }
    }
}
