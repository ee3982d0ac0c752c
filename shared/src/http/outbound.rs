//! Outbound HTTP as plain data, so upstream clients are written once and run on any
//! [`crate::Platform`].

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bounds connect, time to first byte, and each gap between body chunks.
    pub timeout: Duration,
}

impl OutboundRequest {
    pub fn new(method: &'static str, url: impl Into<String>) -> Self {
        Self { method, url: url.into(), headers: Vec::new(), body: Vec::new(), timeout: Duration::from_secs(30) }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn json_body(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    pub fn form_body(mut self, body: String) -> Self {
        self.body = body.into_bytes();
        self.header("content-type", "application/x-www-form-urlencoded")
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A response whose body is read chunk by chunk, so it can be streamed on.
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn ChunkReader>,
}

impl OutboundResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub fn read_all(mut self, limit: usize) -> Result<Vec<u8>, OutboundError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.body.next_chunk()? {
            out.extend_from_slice(&chunk);
            if out.len() > limit {
                return Err(OutboundError::BodyTooLarge);
            }
        }
        Ok(out)
    }
}

pub trait ChunkReader {
    /// The next piece of the body; `Ok(None)` at its end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, OutboundError>;
}

/// A body already in memory (fakes, native platform).
pub struct BytesReader(pub Option<Vec<u8>>);

impl ChunkReader for BytesReader {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, OutboundError> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// Connect, first byte or a gap between chunks took longer than the timeout.
    Timeout,
    /// Refused, reset, DNS failure, or the host is not in `allowed_outbound_hosts`.
    Connection(String),
    /// The body ended early or was malformed.
    Body(String),
    BodyTooLarge,
}

impl OutboundError {
    /// Whether trying again could help: timeouts and connection errors are retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, OutboundError::Timeout | OutboundError::Connection(_) | OutboundError::Body(_))
    }
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Timeout => write!(f, "timed out"),
            OutboundError::Connection(detail) => write!(f, "connection failed: {detail}"),
            OutboundError::Body(detail) => write!(f, "response body failed: {detail}"),
            OutboundError::BodyTooLarge => write!(f, "response body too large"),
        }
    }
}
