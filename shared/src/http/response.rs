use serde::Serialize;

use super::ApiError;

pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub enum Body {
    Bytes(Vec<u8>),
    /// Written to the client piece by piece as it is produced (SSE, audio).
    Stream(Box<dyn ChunkStream>),
}

/// A response body produced piece by piece. `None` ends it; an `Err` ends it early
/// (the client sees a truncated body, which is all HTTP allows once headers are sent).
pub trait ChunkStream {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>>;
}

impl ApiResponse {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        // Serializing our own response types cannot fail (string keys, no maps with
        // non-string keys); fall back to an error envelope rather than trap if it ever does.
        match serde_json::to_vec(value) {
            Ok(body) => Self::bytes(status, "application/json", body),
            Err(_) => ApiResponse::from(ApiError::internal("The response could not be encoded.")),
        }
    }

    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self { status, headers: vec![("content-type".to_string(), content_type.to_string())], body: Body::Bytes(body) }
    }

    pub fn stream(status: u16, content_type: &str, body: Box<dyn ChunkStream>) -> Self {
        Self { status, headers: vec![("content-type".to_string(), content_type.to_string())], body: Body::Stream(body) }
    }

    pub fn empty(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Body::Bytes(Vec::new()) }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Sets a header, replacing any earlier value of the same name.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.set_header(name, value);
        self
    }

    /// The body when it is in memory (tests, the native benchmark).
    pub fn body_bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Bytes(bytes) => Some(bytes),
            Body::Stream(_) => None,
        }
    }
}

impl From<ApiError> for ApiResponse {
    fn from(error: ApiError) -> Self {
        let mut response = ApiResponse::json(error.status, &error.body());
        for (name, value) in &error.headers {
            response.set_header(name, value);
        }
        response
    }
}
