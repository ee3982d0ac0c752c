//! Talking to upstream APIs (OpenAI, ElevenLabs) the same way everywhere: which failures
//! are worth another attempt, how long to wait, and when to stop ([`retry`]).

pub mod retry;

pub use retry::{Retrier, RetryPolicy, UpstreamError};

use crate::http::outbound::OutboundResponse;

/// Passes a successful speech answer on only when it is audio. A 200 carrying JSON or
/// text (a gateway's error page, an API change) must not reach the client as sound, nor
/// be paid for: it counts as the upstream being unavailable, so the caller falls back
/// or refunds.
pub fn audio_only(response: OutboundResponse) -> Result<OutboundResponse, UpstreamError> {
    let content_type = response.header("content-type").unwrap_or("").trim().to_ascii_lowercase();
    let is_audio = content_type.is_empty()
        || content_type.starts_with("audio/")
        || content_type.starts_with("application/octet-stream");
    if is_audio {
        Ok(response)
    } else {
        let essence = content_type.split(';').next().unwrap_or("").to_string();
        Err(UpstreamError::Unavailable {
            attempts: 1,
            last: format!("answered {essence} instead of audio"),
            retry_after_secs: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::outbound::BytesReader;

    fn answer(content_type: Option<&str>) -> OutboundResponse {
        let headers = content_type.map(|ct| vec![("content-type".to_string(), ct.to_string())]).unwrap_or_default();
        OutboundResponse { status: 200, headers, body: Box::new(BytesReader(Some(b"x".to_vec()))) }
    }

    #[test]
    fn only_audio_passes() {
        for ok in [Some("audio/mpeg"), Some("Audio/Ogg"), Some("application/octet-stream"), None] {
            assert!(audio_only(answer(ok)).is_ok(), "{ok:?}");
        }
        for bad in ["application/json", "text/html; charset=utf-8"] {
            assert!(matches!(audio_only(answer(Some(bad))), Err(UpstreamError::Unavailable { .. })), "{bad}");
        }
    }
}
