//! Webhook events: verified, parsed into what they mean for us, and applied exactly once
//! (each by one SQL function that also records the event id: see
//! `migrations/20250102000000_stripe_functions.sql` and
//! `migrations/20250106100200_stripe_paid_amounts_and_disputes.sql`).
//!
//! What was paid decides the credit, not the session's metadata alone: a payment is only
//! credited when the session's line items are the catalog's price for the product
//! (re-read from Stripe, [`check_line_items`], and compared with the product's price in
//! `stripe_apply_checkout_payment`) and the amount paid matches that price. Anything
//! else (a Payment Link or Dashboard session carrying our metadata, a promotion code, a
//! `no_payment_required` session) becomes an order in status `review` that credits
//! nothing. Disputes take the tokens back like a refund and give them back if won.
//!
//! Out-of-order delivery. Token orders carry the whole Checkout Session in every event,
//! and an order only moves forward (pending → completed | failed → refunded), so any
//! order of arrival ends in the same state. Subscriptions change back and forth
//! (active → past_due → active → canceled), so for every subscription event we re-read
//! the subscription from Stripe and store what Stripe says now, stamped with the time
//! our read started; a stored read is only replaced by one that started later. Event
//! `created` times are not used for ordering: they are whole seconds, and one checkout
//! emits several subscription events in the same second.
//!
//! The catalog. `price.*` and `product.updated`/`.deleted` keep `stripe_catalog_prices`
//! current the same way: the price (with its product) or product is re-read and stored
//! with the time the read started (`migrations/20250106300000_stripe_catalog.sql`). A
//! price archived in the Dashboard stops being sold; a new price with the catalog's
//! lookup key takes its place.
//!
//! The parts: [`event`] parses an event into its [`Effect`]; [`payment`] checks what a
//! checkout paid; [`subscription`] reads a subscription as Stripe returns it; [`apply`]
//! carries an effect out in one SQL call.

mod apply;
mod event;
mod payment;
mod subscription;

pub use apply::apply;
pub(crate) use event::user_of;
pub use event::{effect_of, verify, ChargeRefund, CheckoutPayment, Dispute, Effect, Event};
pub use payment::check_line_items;
pub use subscription::Subscription;

#[cfg(test)]
mod fixtures {
    use serde_json::{json, Value};

    use super::Event;

    pub(super) const USER: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";

    pub(super) fn event(event_type: &str, object: Value) -> Event {
        Event { id: "evt_1".into(), event_type: event_type.into(), created: 1_700_000_000, object }
    }

    pub(super) fn session(mode: &str, payment_status: &str, product: &str) -> Value {
        json!({
            "id": "cs_test_1", "object": "checkout.session", "mode": mode,
            "payment_status": payment_status, "status": "complete",
            "client_reference_id": USER, "customer": "cus_1", "payment_intent": "pi_1",
            "subscription": if mode == "subscription" { json!("sub_1") } else { Value::Null },
            "amount_total": 499, "currency": "usd",
            "metadata": {"user_id": USER, "product": product}
        })
    }
}
