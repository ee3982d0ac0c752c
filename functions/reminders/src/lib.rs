//! `reminders`: Web Push reminders. A signed-in user stores (`POST /subscription`) or
//! removes (`DELETE /subscription`) their browser's push subscription; the app reads the
//! VAPID public key from `GET /public-key`; the project's scheduler calls `POST /send`
//! (service role) to send the reminders that are due. The rules live in
//! `libero_shared::push`.

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::push::{self, Limits, Subscription, SubscriptionBody};
use libero_shared::{auth, settings, Platform};
use serde::Deserialize;
use serde_json::json;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "reminders",
    routes: &[
        Route { method: "GET", path: "/public-key", handler: public_key },
        Route { method: "POST", path: "/subscription", handler: subscribe },
        Route { method: "DELETE", path: "/subscription", handler: unsubscribe },
        Route { method: "POST", path: "/send", handler: send },
    ],
    body_limit: DEFAULT_BODY_LIMIT,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    endpoint: String,
}

fn public_key(_request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let key =
        settings::VAPID_PRIVATE_KEY.value(platform).and_then(|k| push::vapid::VapidKey::from_private(&k)).ok_or_else(
            || ApiError::service_unavailable("reminders_not_configured", "Reminders are not set up on this server."),
        )?;
    Ok(ApiResponse::json(200, &json!({ "public_key": key.public_key })))
}

fn subscribe(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let body: SubscriptionBody = request.json()?;
    let subscription = Subscription::parse(platform, body)?;
    let answer = push::subscribe(platform, &user.user_id, &subscription)?;
    let status = if answer["outcome"] == "created" { 201 } else { 200 };
    Ok(ApiResponse::json(status, &json!({ "subscribed": true, "devices": answer["devices"] })))
}

fn unsubscribe(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let body: UnsubscribeBody = request.json()?;
    // No push service's endpoint holds a control character (and Postgres refuses a NUL).
    let endpoint = body.endpoint;
    if endpoint.is_empty() || endpoint.chars().count() > 2048 || endpoint.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "Field `endpoint` must be 1 to 2048 characters long, without control characters.",
        ));
    }
    let removed = push::unsubscribe(platform, &user.user_id, &endpoint)?;
    Ok(ApiResponse::json(200, &json!({ "removed": removed })))
}

fn send(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    auth::authenticate_service(request, platform)?;
    let limits = Limits::from_body(&request.body)?;
    let report = push::send_due(platform, limits)?;
    Ok(ApiResponse::json(200, &report.to_json()))
}

libero_shared::spin_component!(ENDPOINT);
