//! `stripe-reconcile`: heals lost webhook deliveries from Stripe's event log, for the
//! project's server jobs only (a `service_role` token). Each call is one bounded run of
//! `libero_shared::stripe::reconcile` (the rules live there) and answers what it did;
//! a scheduler calls again while `more` is true.
//!
//! Answers: 200 with the run's report; 400 for a bad body and 401/403 for a missing or
//! non-service token (nothing runs); 502 when Stripe is in trouble and 503 when the
//! database is (the cursor stays where it was).

use libero_shared::auth;
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route};
use libero_shared::stripe::reconcile::{self, Limits};
use libero_shared::Platform;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "stripe-reconcile",
    routes: &[Route { method: "POST", path: "/", handler: run }],
    body_limit: 1024,
};

fn run(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    auth::authenticate_service(request, platform)?;
    let limits = Limits::from_body(&request.body)?;
    let report = reconcile::run(platform, limits)?;
    Ok(ApiResponse::json(200, &report.to_json()))
}

libero_shared::spin_component!(ENDPOINT);
