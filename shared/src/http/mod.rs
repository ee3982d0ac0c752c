//! HTTP conventions every endpoint follows (docs/architecture.md, "Conventions of every
//! endpoint"): the error envelope, method checks, body limits, JSON decoding, CORS and
//! request ids.

mod cors;
mod error;
pub mod outbound;
mod request;
mod response;

pub use cors::Cors;
pub use error::ApiError;
pub use request::ApiRequest;
pub use response::{ApiResponse, Body, ChunkStream};

use crate::Platform;

/// Request bodies above this are refused with 413 before they are read in full.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

pub type Handler = fn(&ApiRequest, &dyn Platform) -> Result<ApiResponse, ApiError>;

/// One endpoint: its name (for messages and logs), its routes and its body limit.
pub struct Endpoint {
    pub name: &'static str,
    pub routes: &'static [Route],
    pub body_limit: usize,
}

/// A path below the endpoint's base (`/` for the base itself) and the method it takes. A
/// segment written `{name}` matches any one non-empty segment (the handler reads it with
/// [`ApiRequest::path_segment`]).
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: Handler,
}

impl Endpoint {
    /// Every method any route of the endpoint answers, for the CORS preflight.
    fn all_methods(&self) -> Vec<&'static str> {
        let mut methods: Vec<&'static str> = Vec::new();
        for route in self.routes {
            if !methods.contains(&route.method) {
                methods.push(route.method);
            }
        }
        methods.push("OPTIONS");
        methods
    }
}

/// Answers one request: preflight, routing and method check, the handler, then the
/// headers every response carries (request id, CORS). Errors become the JSON envelope;
/// nothing here panics on any input.
pub fn dispatch(endpoint: &Endpoint, request: &ApiRequest, platform: &dyn Platform) -> ApiResponse {
    let cors = Cors::from_platform(platform);
    let mut response = if request.method == "OPTIONS" {
        cors.preflight(request, &endpoint.all_methods())
    } else {
        match route(endpoint, request) {
            Ok(handler) => handler(request, platform).unwrap_or_else(ApiResponse::from),
            Err(error) => ApiResponse::from(error),
        }
    };
    cors.decorate(request, &mut response);
    response.set_header("x-request-id", &request.request_id);
    response
}

fn route(endpoint: &Endpoint, request: &ApiRequest) -> Result<Handler, ApiError> {
    let path = request.path.trim_end_matches('/');
    let on_path: Vec<&Route> =
        endpoint.routes.iter().filter(|r| path_matches(r.path.trim_end_matches('/'), path)).collect();
    if on_path.is_empty() {
        return Err(ApiError::not_found(
            "route_not_found",
            format!("{} has no route {}.", endpoint.name, request.path),
        ));
    }
    match on_path.iter().find(|r| r.method == request.method) {
        Some(route) => Ok(route.handler),
        None => {
            let mut allowed: Vec<&str> = on_path.iter().map(|r| r.method).collect();
            allowed.push("OPTIONS");
            Err(ApiError::method_not_allowed(&allowed))
        }
    }
}

/// Whether `path` is `pattern`, segment by segment, a `{name}` segment matching any
/// non-empty one.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut pattern, mut path) = (pattern.split('/'), path.split('/'));
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') && !s.is_empty() => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests;
