//! CORS for browser callers (supabase-js). Origins come from the `allowed_origins`
//! variable: `*` (the default) or a comma-separated list of exact origins.

use super::{ApiError, ApiRequest, ApiResponse};
use crate::Platform;

const ALLOWED_HEADERS: &str = "authorization, x-client-info, apikey, content-type, x-request-id";
const EXPOSED_HEADERS: &str =
    "x-request-id, x-tts-provider, x-tts-cache, x-tokens-charged, x-tokens-balance, retry-after";

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
}

impl Cors {
    pub fn from_platform(platform: &dyn Platform) -> Self {
        Self::parse(&crate::settings::ALLOWED_ORIGINS.value(platform).unwrap_or_default())
    }

    pub fn parse(setting: &str) -> Self {
        let origins: Vec<String> =
            setting.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect();
        Self { any_origin: origins.iter().any(|o| o == "*"), origins }
    }

    /// The value for `Access-Control-Allow-Origin`, if the origin may read the answer.
    fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        if self.any_origin {
            return Some("*".to_string());
        }
        let origin = origin?;
        self.origins.iter().any(|o| o == origin).then(|| origin.to_string())
    }

    pub fn preflight(&self, request: &ApiRequest, methods: &[&str]) -> ApiResponse {
        if request.header("origin").is_some() && self.allow_origin(request.header("origin")).is_none() {
            return ApiError::forbidden("origin_not_allowed", "This origin may not call the API.").into();
        }
        ApiResponse::empty(204)
            .with_header("access-control-allow-methods", &methods.join(", "))
            .with_header("access-control-allow-headers", ALLOWED_HEADERS)
            .with_header("access-control-max-age", "86400")
    }

    /// Adds the CORS headers to any response (errors included, so browsers can read them).
    pub fn decorate(&self, request: &ApiRequest, response: &mut ApiResponse) {
        if let Some(origin) = self.allow_origin(request.header("origin")) {
            if origin != "*" {
                response.set_header("vary", "Origin");
            }
            response.set_header("access-control-allow-origin", &origin);
            response.set_header("access-control-expose-headers", EXPOSED_HEADERS);
        }
    }
}
