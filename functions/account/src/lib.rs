//! `account`: the signed-in user's account as a whole (guests included).
//!
//! * `GET /account/export`: everything the server holds about the user, one JSON
//!   document (`account_export`, one statement).
//! * `DELETE /account` with `{"confirm": "delete my account"}`: billing stopped in Stripe
//!   first, then the personal data and the auth user deleted and the financial records
//!   kept, detached, in one statement. Idempotent.
//!
//! The rules are in `libero_shared::account` and `migrations/20250107600000_account.sql`.

use libero_shared::account::{self, DeleteRequest};
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route};
use libero_shared::{auth, Platform};
use serde_json::{json, Value};

pub const ENDPOINT: Endpoint = Endpoint {
    name: "account",
    routes: &[
        Route { method: "GET", path: "/export", handler: export },
        Route { method: "DELETE", path: "/", handler: delete },
    ],
    body_limit: 1024,
};

fn export(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let document = account::export(platform, &user.user_id)?;
    // One person's data: no shared cache may keep it.
    Ok(ApiResponse::json(200, &Value::Object(document)).with_header("cache-control", "private, no-store"))
}

fn delete(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    request.json::<DeleteRequest>()?.check()?;
    account::delete(platform, &user.user_id)?;
    Ok(ApiResponse::json(200, &json!({"deleted": true})))
}

libero_shared::spin_component!(ENDPOINT);
