//! The Libero functions library: everything the endpoint crates share.
//!
//! Endpoint crates stay thin: they parse the request into domain types once, call into
//! this library, and map the result to a response. Every rule (a reward, a price, a retry
//! policy) lives in exactly one module here or in one SQL function in `migrations/`.
//!
//! The library is written against the [`Platform`] trait (variables, database, outbound
//! HTTP, clock), so the same request logic runs inside a Spin component (`spin` module,
//! wasm only) and natively (unit tests and the native side of the benchmark).

pub mod account;
pub mod auth;
pub mod db;
pub mod economy;
pub mod elevenlabs;
pub mod guidance;
pub mod http;
pub mod insights;
pub mod openai;
pub mod platform;
pub mod push;
pub mod quota;
pub mod session_script;
pub mod settings;
pub mod stripe;
pub mod stripe_signature;
pub mod transcribe;
pub mod tts;
pub mod upstream;
pub mod validate;

#[cfg(target_arch = "wasm32")]
pub mod spin;

#[cfg(any(test, feature = "fakes"))]
pub mod fakes;

pub use http::DEFAULT_BODY_LIMIT;
pub use http::{ApiError, ApiRequest, ApiResponse, Endpoint};
pub use platform::Platform;

/// Declares the Spin component for an endpoint crate: `spin_component!(ENDPOINT);`.
/// Expands to nothing natively, so the crate's logic can be called in-process.
#[macro_export]
macro_rules! spin_component {
    ($endpoint:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[::spin_sdk::http_component]
        async fn handle(request: ::spin_sdk::http::IncomingRequest, out: ::spin_sdk::http::ResponseOutparam) {
            $crate::spin::serve(request, out, &$endpoint)
        }
    };
}
