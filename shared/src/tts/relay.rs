//! Sends upstream audio on to the client, and does what must follow its last byte:
//! fill the cache (tts) or refund a paid call the upstream broke off (premium).
//!
//! Streaming choice: on a cache miss the audio is streamed through as it arrives and, at
//! the same time, copied into a buffer bounded by the cache's per-entry limit; when the
//! upstream ends cleanly the buffer is stored (one statement), just before the response
//! is finished. A copy that outgrows the limit is dropped (that answer is streamed but not
//! cached); a stream that breaks off is never cached. The work after the last chunk needs
//! the database, which the handler's borrowed platform cannot provide once the handler
//! has returned, so the stream owns a [`Platform::detached`] one; on a platform without
//! one (unit tests) the audio is read whole (bounded) and answered as bytes.

use crate::http::outbound::{ChunkReader, OutboundResponse};
use crate::http::{ApiResponse, ChunkStream};
use crate::{ApiError, Platform};

use super::cache::{self, CacheSettings};
use super::premium::{self, Refund};

/// The most audio held in memory when it cannot be streamed.
const MAX_BUFFERED_AUDIO: usize = 32 * 1024 * 1024;

/// Where a complete answer is stored.
pub struct CacheFill {
    pub key: String,
    pub settings: CacheSettings,
    buffer: Vec<u8>,
}

impl CacheFill {
    pub fn new(key: String, settings: CacheSettings) -> Self {
        CacheFill { key, settings, buffer: Vec::new() }
    }
}

struct AudioRelay {
    body: Box<dyn ChunkReader>,
    provider: &'static str,
    content_type: &'static str,
    fill: Option<CacheFill>,
    refund: Option<Refund>,
    finished: bool,
}

impl AudioRelay {
    /// The next piece for the client, doing the closing work when the upstream ends.
    fn step(&mut self, platform: &dyn Platform) -> Option<Result<Vec<u8>, String>> {
        if self.finished {
            return None;
        }
        match self.body.next_chunk() {
            Ok(Some(chunk)) => {
                if let Some(fill) = &mut self.fill {
                    if fill.buffer.len() + chunk.len() > fill.settings.entry_limit() {
                        self.fill = None;
                    } else {
                        fill.buffer.extend_from_slice(&chunk);
                    }
                }
                Some(Ok(chunk))
            }
            Ok(None) => {
                self.finished = true;
                if let Some(fill) = self.fill.take() {
                    if let Err(error) =
                        cache::put(platform, &fill.key, self.provider, self.content_type, fill.buffer, &fill.settings)
                    {
                        // The client has its audio; a cache that could not be filled only
                        // costs a later upstream call.
                        let _ = crate::db::report(platform, "tts_cache_store", error);
                    }
                }
                None
            }
            Err(error) => {
                self.finished = true;
                self.fill = None;
                platform.log(&format!("tts: {} audio stream broke off: {}", self.provider, kind(&error)));
                if let Some(refund) = self.refund.take() {
                    premium::refund(platform, &refund);
                }
                Some(Err("upstream audio stream broke off".into()))
            }
        }
    }
}

fn kind(error: &crate::http::outbound::OutboundError) -> &'static str {
    use crate::http::outbound::OutboundError::*;
    match error {
        Timeout => "timeout",
        Connection(_) => "connection",
        Body(_) => "body",
        BodyTooLarge => "body_too_large",
    }
}

struct DetachedRelay {
    relay: AudioRelay,
    platform: Box<dyn Platform>,
}

impl ChunkStream for DetachedRelay {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        self.relay.step(&*self.platform)
    }
}

/// The 200 answer carrying an upstream's audio: streamed when the platform allows,
/// otherwise read whole. `x-tts-provider` names who spoke.
pub fn respond(
    platform: &dyn Platform,
    upstream: OutboundResponse,
    provider: &'static str,
    content_type: &'static str,
    fill: Option<CacheFill>,
    refund: Option<Refund>,
) -> Result<ApiResponse, ApiError> {
    let mut relay = AudioRelay { body: upstream.body, provider, content_type, fill, refund, finished: false };
    if let Some(owned) = platform.detached() {
        let stream = DetachedRelay { relay, platform: owned };
        return Ok(ApiResponse::stream(200, content_type, Box::new(stream)).with_header("x-tts-provider", provider));
    }
    let mut audio = Vec::new();
    while let Some(piece) = relay.step(platform) {
        match piece {
            Ok(chunk) if audio.len() + chunk.len() <= MAX_BUFFERED_AUDIO => audio.extend_from_slice(&chunk),
            Ok(_) | Err(_) => {
                if let Some(refund) = relay.refund.take() {
                    premium::refund(platform, &refund);
                }
                return Err(ApiError::bad_gateway(
                    "tts_interrupted",
                    "The speech service broke off its answer; please try again.",
                ));
            }
        }
    }
    Ok(ApiResponse::bytes(200, content_type, audio).with_header("x-tts-provider", provider))
}
