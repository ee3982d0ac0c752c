//! `generate-script`: placeholder until its issue lands; answers 501 `not_implemented`.

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::Platform;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "generate-script",
    routes: &[Route { method: "POST", path: "/", handler: placeholder }],
    body_limit: DEFAULT_BODY_LIMIT,
};

fn placeholder(_request: &ApiRequest, _platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    Err(ApiError::not_implemented(ENDPOINT.name))
}

libero_shared::spin_component!(ENDPOINT);
