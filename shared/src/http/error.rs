//! The error envelope every endpoint answers with:
//! `{"error":{"code":"snake_case_code","message":"what happened and what to do"}}`.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra response headers (`Allow`, `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// Extra top-level members beside `error` (e.g. `"fallback": "browser"`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), headers: Vec::new(), extra: Map::new() }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn with_field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    pub fn method_not_allowed(allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        Self::new(405, "method_not_allowed", format!("This endpoint accepts {allow}.")).with_header("allow", allow)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, "payload_too_large", format!("The request body exceeds {limit} bytes."))
    }

    pub fn too_many_requests(retry_after_secs: u64, message: impl Into<String>) -> Self {
        Self::new(429, "rate_limited", message)
            .with_header("retry-after", retry_after_secs.to_string())
            .with_field("retry_after", retry_after_secs)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// A required Spin variable has no value. Names the variable, never a value.
    pub fn config_missing(variable: &str) -> Self {
        Self::new(
            500,
            "config_missing",
            format!(
                "The server is missing the setting `{variable}`; set the Spin variable \
                 (or SPIN_VARIABLE_{}) and restart.",
                variable.to_ascii_uppercase()
            ),
        )
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(502, code, message)
    }

    pub fn service_unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    /// A valid token whose user has no account in this project (never had, or it was
    /// deleted).
    pub fn user_not_found() -> Self {
        Self::not_found("user_not_found", "The signed-in user has no account in this project.")
    }

    pub fn body(&self) -> Value {
        let mut body = self.extra.clone();
        body.insert("error".to_string(), json!({ "code": self.code, "message": self.message }));
        Value::Object(body)
    }
}
