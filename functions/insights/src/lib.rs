//! `GET /insights`: the signed-in user's progress (totals, the last 30 local days,
//! achievements) and how it compares with other users' (rules: `user_insights` in
//! migrations/, one statement).

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::{auth, insights, Platform};
use serde_json::Value;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "insights",
    routes: &[Route { method: "GET", path: "/", handler: show }],
    body_limit: DEFAULT_BODY_LIMIT,
};

fn show(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let document = insights::for_user(platform, &user.user_id)?;
    // One user's figures: no shared cache may keep them.
    Ok(ApiResponse::json(200, &Value::Object(document)).with_header("cache-control", "private, no-store"))
}

libero_shared::spin_component!(ENDPOINT);
