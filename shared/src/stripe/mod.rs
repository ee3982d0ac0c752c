//! Payments with Stripe: the product catalog, the API client, the checkout flow and the
//! webhook events. See docs/stripe.md for the operator's view.
//!
//! * [`catalog`]: the ONE place products live (key, tokens, bonus, price label, kind,
//!   and the Spin variable holding the price id).
//! * [`client`]: form-encoded API calls with a pinned `Stripe-Version`, `Idempotency-Key`,
//!   bounded timeouts and errors mapped to 502 without secrets.
//! * [`checkout`]: customers, Checkout Sessions and Billing Portal sessions.
//! * [`reconcile`]: heals lost deliveries from Stripe's event log, through [`events`].
//! * [`status`]: the customer's own Checkout Session for the page Stripe returns them to,
//!   applied through [`events`] when it is paid and not applied yet.
//! * [`events`]: webhook events parsed into what they mean, applied exactly once by the
//!   SQL functions in `migrations/20250102000000_stripe_functions.sql`.
//! * [`signature`]: `Stripe-Signature` verification (re-exported from
//!   [`crate::stripe_signature`]).

pub mod catalog;
pub mod checkout;
pub mod client;
pub mod events;
pub mod reconcile;
pub mod status;

pub use crate::stripe_signature as signature;

/// Whether `id` looks like a Stripe object id (`cus_...`, `sub_...`, `cs_test_...`): ASCII
/// letters, digits and `_`. Checked before an id from an event or the database is put in
/// an API path, so nothing can change the path.
pub fn is_object_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
