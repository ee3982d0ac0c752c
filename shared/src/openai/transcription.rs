//! OpenAI speech to text (`POST /v1/audio/transcriptions`): the audio as
//! `multipart/form-data`, built by the caller ([`crate::transcribe`]), the answer JSON.
//!
//! Same client, key, base URL and retry policy as chat ([`super::OpenAi`]); the error
//! body of a refusal is dropped unread by the [`Retrier`], never returned or logged.

use super::OpenAi;
use crate::http::outbound::{OutboundRequest, OutboundResponse};
use crate::upstream::{Retrier, UpstreamError};

impl OpenAi {
    /// `<base>/v1/audio/transcriptions` (a base ending in `/v1` is accepted too).
    pub fn transcriptions_url(&self) -> String {
        self.v1_url("audio/transcriptions")
    }

    /// Sends a multipart body (`content_type` carries its boundary); a 2xx answer comes
    /// back with its body unread.
    pub fn audio_transcription(
        &self,
        retrier: &Retrier,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<OutboundResponse, UpstreamError> {
        let mut request = OutboundRequest::new("POST", self.transcriptions_url())
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("accept", "application/json")
            .header("content-type", content_type)
            // Known up front: sent as a plain body rather than chunked, as the SDKs do.
            .header("content-length", body.len().to_string());
        request.body = body;
        retrier.send(&request)
    }
}
