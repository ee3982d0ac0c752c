//! `stripe-checkout`: the catalog (`GET /products`), a Checkout Session for a product
//! (`POST /`), the state of the user's own session for the page Stripe returns them to
//! (`GET /session/{id}`), and the Billing Portal (`POST /portal`). The rules live in
//! `libero_shared::stripe`; this crate parses requests and maps results.

use libero_shared::db;
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::stripe::catalog::{self, Prices};
use libero_shared::stripe::checkout::{self, CheckoutRequest};
use libero_shared::stripe::status;
use libero_shared::{auth, validate, Platform};
use serde::Deserialize;
use serde_json::{json, Value};

pub const ENDPOINT: Endpoint = Endpoint {
    name: "stripe-checkout",
    routes: &[
        Route { method: "POST", path: "/", handler: create_checkout },
        Route { method: "GET", path: "/products", handler: list_products },
        Route { method: "GET", path: "/session/{id}", handler: session_status },
        Route { method: "POST", path: "/portal", handler: create_portal },
    ],
    body_limit: DEFAULT_BODY_LIMIT,
};

/// `{"product": "tokens-small", ...}`, or the Supabase Stripe template's
/// `{"price_id": "price_...", "mode": "payment", ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    product: Option<String>,
    price_id: Option<String>,
    mode: Option<String>,
    success_url: Option<String>,
    cancel_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PortalBody {
    return_url: Option<String>,
}

/// The caller's `Idempotency-Key`, else this request's id: our retries to Stripe reuse it,
/// and so does a client that retries with the same key. A key that is not a plain token
/// is a 400, not ignored: the client would believe its retries were safe.
fn request_key(request: &ApiRequest) -> Result<String, ApiError> {
    match request.header("idempotency-key") {
        Some(key) => validate::slug("Idempotency-Key", key, 64).map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                "Header `Idempotency-Key` must be 1 to 64 letters, digits, '_' or '-'.",
            )
        }),
        None => Ok(request.request_id.clone()),
    }
}

/// The catalog with the prices sold now (one statement). Without the database the list
/// still answers, from the catalog and the price variables alone: nothing can be bought
/// then anyway, and the app can still show its shop.
fn list_products(_request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let prices = Prices::load(platform).unwrap_or_else(|error| {
        let _ = db::report(platform, "stripe_catalog", error);
        Prices::from_stored(platform, &Value::Null)
    });
    let products: Vec<Value> = catalog::PRODUCTS.iter().map(|p| prices.listing(p)).collect();
    Ok(ApiResponse::json(200, &json!({ "products": products })))
}

fn create_checkout(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let body: CheckoutBody = request.json()?;
    let checkout_request = CheckoutRequest::new(
        platform,
        body.product.as_deref(),
        body.price_id.as_deref(),
        body.mode.as_deref(),
        body.success_url.as_deref(),
        body.cancel_url.as_deref(),
    )?;
    let session = checkout::start_checkout(platform, &user, &checkout_request, &request_key(request)?)?;
    Ok(ApiResponse::json(200, &json!({ "session_id": session.session_id, "url": session.url })))
}

/// The route matched `/session/{id}`, so segment 1 is there; an id that cannot be a
/// session is the shared code's 404.
fn session_status(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let session_id = request.path_segment(1).unwrap_or("");
    let answer = status::session_status(platform, &user, session_id)?;
    Ok(ApiResponse::json(200, &answer).with_header("cache-control", "no-store"))
}

fn create_portal(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    // The body is optional: `{}` or nothing at all uses the app's first origin.
    let body: PortalBody =
        if request.body.iter().all(u8::is_ascii_whitespace) { PortalBody::default() } else { request.json()? };
    let url = checkout::open_portal(platform, &user, body.return_url.as_deref(), &request_key(request)?)?;
    Ok(ApiResponse::json(200, &json!({ "url": url })))
}

libero_shared::spin_component!(ENDPOINT);
