use serde::de::DeserializeOwned;

use super::ApiError;

/// An incoming request, read once by the platform adapter.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: String,
    /// The path below the endpoint's base route (`/` for the base itself).
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub request_id: String,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of a query parameter (first occurrence), percent-decoding not needed for
    /// the simple tokens endpoints use.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The `index`th segment of the path below the endpoint's base (`/session/cs_1`: 0 is
    /// `session`, 1 is `cs_1`), as sent (not percent-decoded).
    pub fn path_segment(&self, index: usize) -> Option<&str> {
        self.path.trim_matches('/').split('/').nth(index).filter(|s| !s.is_empty())
    }

    /// Decodes a JSON body into `T`, naming the offending field on failure.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if let Some(content_type) = self.header("content-type") {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::new(
                    415,
                    "unsupported_media_type",
                    format!("Send the body as application/json, not {essence}."),
                ));
            }
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("empty_body", "The request body must be a JSON object."));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&self.body);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = if path.is_empty() || path == "." {
                format!("The request body is not valid: {inner}.")
            } else {
                format!("Field `{path}` is not valid: {inner}.")
            };
            ApiError::bad_request("invalid_body", message)
        })?;
        deserializer.end().map_err(|_| {
            ApiError::bad_request("invalid_body", "The request body has trailing characters after the JSON value.")
        })?;
        Ok(value)
    }

    /// A request id from the caller when it is safe to echo, otherwise a new one.
    pub fn choose_request_id(incoming: Option<&str>, random: &[u8]) -> String {
        match incoming {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                id.to_string()
            }
            _ => random.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}
