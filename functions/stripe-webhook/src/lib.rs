//! `stripe-webhook`: Stripe's deliveries. The signature is checked over the raw body
//! before anything parses it; each event is then applied exactly once by
//! `libero_shared::stripe::events` (the rules and the out-of-order strategy live there).
//!
//! Answers: 200 when applied, a duplicate, or an event we do not act on; 400 for a bad
//! signature (nothing written); 5xx when the database or Stripe's API is in trouble, so
//! Stripe delivers again.

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route};
use libero_shared::stripe::events::{self, Event};
use libero_shared::Platform;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "stripe-webhook",
    routes: &[Route { method: "POST", path: "/", handler: receive }],
    // Stripe's event payloads are well under this; a larger body is not from Stripe.
    body_limit: 256 * 1024,
};

fn receive(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    events::verify(platform, request.header("stripe-signature"), &request.body)?;
    let event = Event::parse(&request.body)?;
    let outcome = events::apply(platform, &event)?;
    Ok(ApiResponse::json(200, &outcome))
}

libero_shared::spin_component!(ENDPOINT);
