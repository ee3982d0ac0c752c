//! Talking to upstream APIs (OpenAI, ElevenLabs) the same way everywhere: which failures
//! are worth another attempt, how long to wait, and when to stop ([`retry`]).

pub mod retry;

pub use retry::{Retrier, RetryPolicy, UpstreamError};
