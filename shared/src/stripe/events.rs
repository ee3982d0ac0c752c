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

use serde_json::{json, Value};

use super::catalog::{self, ProductKind};
use super::client::StripeClient;
use super::is_object_id;
use crate::db::{self, SqlParam};
use crate::stripe_signature::{self, DEFAULT_TOLERANCE_SECS};
use crate::{validate, ApiError, Platform};

/// A verified event, as much of it as we use.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// Seconds since the epoch (Stripe's clock).
    pub created: i64,
    /// `data.object`: the object the event is about, as of the event.
    pub object: Value,
}

/// Checks `Stripe-Signature` over the raw body, before anything parses it.
pub fn verify(platform: &dyn Platform, signature_header: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
    let secrets = crate::settings::STRIPE_WEBHOOK_SECRETS.list(platform);
    let now = platform.now_unix_ms().div_euclid(1000);
    stripe_signature::verify(body, signature_header.unwrap_or(""), &secrets, now, DEFAULT_TOLERANCE_SECS)?;
    Ok(())
}

impl Event {
    pub fn parse(body: &[u8]) -> Result<Event, ApiError> {
        let invalid = || ApiError::bad_request("invalid_event", "The body is not a Stripe event.");
        let value: Value = serde_json::from_slice(body).map_err(|_| invalid())?;
        let id = value["id"].as_str().filter(|id| id.starts_with("evt_") && is_object_id(id)).ok_or_else(invalid)?;
        let event_type = value["type"]
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= 100 && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(invalid)?;
        let created = value["created"].as_i64().filter(|c| *c >= 0).ok_or_else(invalid)?;
        let object = value["data"]["object"].clone();
        if !object.is_object() {
            return Err(invalid());
        }
        Ok(Event { id: id.to_string(), event_type: event_type.to_string(), created, object })
    }
}

/// A token package's Checkout Session reaching a payment state.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutPayment {
    pub session_id: String,
    pub user_id: String,
    pub product: &'static str,
    pub tokens: i32,
    pub customer: Option<String>,
    pub payment_intent: Option<String>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    pub payment_status: String,
    /// `completed` (paid), `pending` (a delayed payment method), `failed`, or `review`
    /// (money moved, or should have, but not as the catalog says: credit nothing).
    pub status: &'static str,
    /// Why the order is held for review.
    pub review_reason: Option<&'static str>,
    /// The price of the session's one line item, once its amount checked out
    /// ([`check_line_items`]); the SQL function compares it with the product's price.
    pub paid_price_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChargeRefund {
    pub charge_id: String,
    pub payment_intent: String,
    pub amount_captured: i64,
    /// Cumulative: everything refunded on the charge so far.
    pub amount_refunded: i64,
    pub fully_refunded: bool,
}

/// A chargeback (or inquiry) on a charge, as of the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispute {
    pub dispute_id: String,
    pub charge_id: Option<String>,
    pub payment_intent: String,
    pub amount: Option<i64>,
    pub status: String,
    /// `charge.dispute.closed`: `status` is final (`won`, `lost`, `warning_closed`).
    pub closed: bool,
}

/// What an event means for us.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    CheckoutPayment(CheckoutPayment),
    /// Re-read this subscription and store Stripe's current state.
    SyncSubscription {
        subscription_id: String,
    },
    ChargeRefund(ChargeRefund),
    Dispute(Dispute),
    /// The customer was deleted in Stripe: the user's next checkout makes a new one.
    CustomerDeleted {
        customer: String,
    },
    /// Re-read this price (with its product) and store it in the catalog if it is one of
    /// the catalog's.
    SyncCatalogPrice {
        price_id: String,
    },
    /// Re-read this product and store whether it is active on its catalog prices.
    SyncCatalogProduct {
        product_id: String,
    },
    /// Recorded with this outcome, nothing else.
    Nothing(&'static str),
}

/// A field holding an object id, or the expanded object carrying it.
fn id_field(value: &Value) -> Option<String> {
    let id = value.as_str().or_else(|| value["id"].as_str())?;
    is_object_id(id).then(|| id.to_string())
}

/// The user our checkout attached (metadata first, then client_reference_id).
pub(crate) fn user_of(object: &Value) -> Option<String> {
    [&object["metadata"]["user_id"], &object["client_reference_id"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|u| validate::is_uuid(u))
        .map(str::to_ascii_lowercase)
}

pub fn effect_of(event: &Event) -> Effect {
    let object = &event.object;
    match event.event_type.as_str() {
        "checkout.session.completed"
        | "checkout.session.async_payment_succeeded"
        | "checkout.session.async_payment_failed" => checkout_effect(event),
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => match id_field(&object["id"]) {
            Some(subscription_id) => Effect::SyncSubscription { subscription_id },
            None => Effect::Nothing("malformed"),
        },
        "invoice.paid" | "invoice.payment_failed" => {
            // 2025-03-31.basil moved the subscription under `parent`; older versions had
            // it at the top level (an endpoint created with an older version sends that).
            let subscription = id_field(&object["parent"]["subscription_details"]["subscription"])
                .or_else(|| id_field(&object["subscription"]));
            match subscription {
                Some(subscription_id) => Effect::SyncSubscription { subscription_id },
                None => Effect::Nothing("not_a_subscription_invoice"),
            }
        }
        "charge.refunded" => {
            let (Some(charge_id), Some(payment_intent)) =
                (id_field(&object["id"]), id_field(&object["payment_intent"]))
            else {
                return Effect::Nothing("no_payment_intent");
            };
            Effect::ChargeRefund(ChargeRefund {
                charge_id,
                payment_intent,
                amount_captured: object["amount_captured"].as_i64().unwrap_or(0),
                amount_refunded: object["amount_refunded"].as_i64().unwrap_or(0),
                fully_refunded: object["refunded"].as_bool().unwrap_or(false),
            })
        }
        "charge.dispute.created" | "charge.dispute.closed" => {
            let (Some(dispute_id), Some(payment_intent)) =
                (id_field(&object["id"]), id_field(&object["payment_intent"]))
            else {
                return Effect::Nothing("no_payment_intent");
            };
            let status = object["status"]
                .as_str()
                .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let Some(status) = status else { return Effect::Nothing("malformed") };
            Effect::Dispute(Dispute {
                dispute_id,
                charge_id: id_field(&object["charge"]),
                payment_intent,
                amount: object["amount"].as_i64(),
                status: status.to_string(),
                closed: event.event_type == "charge.dispute.closed",
            })
        }
        "customer.deleted" => match id_field(&object["id"]) {
            Some(customer) => Effect::CustomerDeleted { customer },
            None => Effect::Nothing("malformed"),
        },
        "price.created" | "price.updated" | "price.deleted" => match id_field(&object["id"]) {
            Some(price_id) => Effect::SyncCatalogPrice { price_id },
            None => Effect::Nothing("malformed"),
        },
        "product.updated" | "product.deleted" => match id_field(&object["id"]) {
            Some(product_id) => Effect::SyncCatalogProduct { product_id },
            None => Effect::Nothing("malformed"),
        },
        _ => Effect::Nothing("unhandled_type"),
    }
}

fn checkout_effect(event: &Event) -> Effect {
    let session = &event.object;
    let Some(session_id) = id_field(&session["id"]) else { return Effect::Nothing("malformed") };
    match session["mode"].as_str() {
        Some("subscription") => {
            return match id_field(&session["subscription"]) {
                Some(subscription_id) => Effect::SyncSubscription { subscription_id },
                None => Effect::Nothing("no_subscription"),
            }
        }
        Some("payment") => {}
        _ => return Effect::Nothing("unhandled_mode"),
    }
    // Sessions our checkout made name the user and a token product; others (a Payment
    // Link, the dashboard) are not orders of ours.
    let product = session["metadata"]["product"].as_str().and_then(catalog::find);
    let (Some(user_id), Some(product)) = (user_of(session), product) else { return Effect::Nothing("not_our_order") };
    if product.kind != ProductKind::Tokens {
        return Effect::Nothing("not_our_order");
    }
    let payment_status = session["payment_status"].as_str().unwrap_or("unpaid").to_string();
    let (status, review_reason) = match event.event_type.as_str() {
        "checkout.session.async_payment_failed" => ("failed", None),
        // Nothing was paid for these tokens (a 100 % coupon, a zero price): not ours to give.
        _ if payment_status == "no_payment_required" => ("review", Some("no_payment_required")),
        "checkout.session.async_payment_succeeded" => ("completed", None),
        _ if payment_status == "paid" => ("completed", None),
        _ => ("pending", None),
    };
    Effect::CheckoutPayment(CheckoutPayment {
        session_id,
        user_id,
        product: product.key,
        tokens: product.credited_tokens(),
        customer: id_field(&session["customer"]),
        payment_intent: id_field(&session["payment_intent"]),
        amount_total: session["amount_total"].as_i64(),
        currency: session["currency"].as_str().map(|c| c.chars().take(3).collect()),
        payment_status,
        status,
        review_reason,
        paid_price_id: None,
    })
}

/// Whether a session paid what its line item's price asks: exactly one line item,
/// quantity 1, and the amount paid (`amount_total`, or in the price's own currency when
/// Stripe's Adaptive Pricing converted it) equal to that price's `unit_amount` in its
/// currency. `Ok` is the line item's price id: whether that is the price the product is
/// sold at (its `stripe_price_*` override, else the stored catalog price) is checked by
/// `stripe_apply_checkout_payment`, in the statement that credits. `Err` names the first
/// check that failed, as the order's review reason.
pub fn check_line_items(session: &Value, line_items: &Value) -> Result<String, &'static str> {
    let items = line_items["data"].as_array().ok_or("line_items_unreadable")?;
    if items.len() != 1 || line_items["has_more"].as_bool() == Some(true) {
        return Err("line_items_count");
    }
    let item = &items[0];
    let price_id = id_field(&item["price"]).ok_or("price_mismatch")?;
    if item["quantity"].as_i64() != Some(1) {
        return Err("quantity_mismatch");
    }
    let unit_amount = item["price"]["unit_amount"].as_i64().ok_or("price_amount_unknown")?;
    let price_currency =
        item["price"]["currency"].as_str().map(str::to_ascii_lowercase).ok_or("price_amount_unknown")?;
    let conversion = &session["currency_conversion"];
    let (paid, currency) = if conversion.is_object() {
        (conversion["amount_total"].as_i64(), conversion["source_currency"].as_str())
    } else {
        (session["amount_total"].as_i64(), session["currency"].as_str())
    };
    if currency.map(str::to_ascii_lowercase).as_deref() != Some(price_currency.as_str()) {
        return Err("currency_mismatch");
    }
    if paid != Some(unit_amount) {
        return Err("amount_mismatch");
    }
    Ok(price_id)
}

/// A `completed` payment is checked against what was paid ([`check_line_items`]) before it
/// may credit; one that fails a check is held for review. Stripe trouble is a 502 (Stripe
/// delivers the event again). No statement: the price check joins the one that applies.
fn verify_payment(platform: &dyn Platform, event: &Event, payment: &mut CheckoutPayment) -> Result<(), ApiError> {
    if payment.status != "completed" {
        return Ok(());
    }
    let stripe = StripeClient::from_platform(platform)?;
    let verdict = match stripe.get(&format!("checkout/sessions/{}/line_items?limit=10", payment.session_id)) {
        Ok(line_items) => check_line_items(&event.object, &line_items),
        // Not a session of this account (another mode or account's metadata): review.
        Err(error) if error.is_missing() => Err("session_not_found"),
        Err(error) => return Err(error.into()),
    };
    match verdict {
        Ok(price_id) => payment.paid_price_id = Some(price_id),
        Err(reason) => {
            payment.status = "review";
            payment.review_reason = Some(reason);
        }
    }
    Ok(())
}

/// A subscription as Stripe's API returns it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub customer: String,
    pub status: String,
    pub user_hint: Option<String>,
    pub price_id: Option<String>,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
}

const SUBSCRIPTION_STATUSES: [&str; 8] =
    ["incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"];

impl Subscription {
    pub fn parse(value: &Value) -> Option<Subscription> {
        let item = &value["items"]["data"][0];
        // Basil keeps the period on the items; older versions on the subscription.
        let period = |key: &str| item[key].as_i64().or_else(|| value[key].as_i64());
        let status = value["status"].as_str().filter(|s| SUBSCRIPTION_STATUSES.contains(s))?;
        Some(Subscription {
            id: id_field(&value["id"])?,
            customer: id_field(&value["customer"])?,
            status: status.to_string(),
            user_hint: user_of(value),
            price_id: id_field(&item["price"]),
            current_period_start: period("current_period_start"),
            current_period_end: period("current_period_end"),
            cancel_at_period_end: value["cancel_at_period_end"].as_bool().unwrap_or(false),
        })
    }
}

/// Applies a verified event exactly once and returns the SQL function's outcome document
/// (`{"outcome": "applied" | "duplicate" | ...}`). Database trouble is a 5xx, Stripe
/// trouble a 502: Stripe then delivers the event again, and nothing was recorded.
pub fn apply(platform: &dyn Platform, event: &Event) -> Result<Value, ApiError> {
    let head =
        [SqlParam::Text(event.id.clone()), SqlParam::Text(event.event_type.clone()), SqlParam::Int64(event.created)];
    let text = |v: &Option<String>| v.clone().map(SqlParam::Text).unwrap_or(SqlParam::Null);
    let int = |v: Option<i64>| v.map(SqlParam::Int64).unwrap_or(SqlParam::Null);

    let (function, sql, params): (&str, &str, Vec<SqlParam>) = match effect_of(event) {
        Effect::Nothing(outcome) => (
            "stripe_record_event",
            "select public.stripe_record_event($1::text, $2::text, $3::int8, $4::text)",
            vec![SqlParam::Text(outcome.to_string())],
        ),
        Effect::CheckoutPayment(mut p) => {
            verify_payment(platform, event, &mut p)?;
            let price_override = catalog::find(p.product).and_then(|product| product.price_override.value(platform));
            (
                "stripe_apply_checkout_payment",
                "select public.stripe_apply_checkout_payment($1::text, $2::text, $3::int8, $4::text, $5::uuid, \
                 $6::text, $7::int4, $8::text, $9::text, $10::int8, $11::text, $12::text, $13::text, $14::text, \
                 $15::text, $16::text)",
                vec![
                    SqlParam::Text(p.session_id),
                    SqlParam::Uuid(p.user_id),
                    SqlParam::Text(p.product.to_string()),
                    SqlParam::Int32(p.tokens),
                    text(&p.customer),
                    text(&p.payment_intent),
                    int(p.amount_total),
                    text(&p.currency),
                    SqlParam::Text(p.payment_status),
                    SqlParam::Text(p.status.to_string()),
                    p.review_reason.map(|r| SqlParam::Text(r.to_string())).unwrap_or(SqlParam::Null),
                    text(&p.paid_price_id),
                    text(&price_override),
                ],
            )
        }
        Effect::Dispute(d) => (
            "stripe_apply_dispute",
            "select public.stripe_apply_dispute($1::text, $2::text, $3::int8, $4::text, $5::text, $6::text, \
             $7::int8, $8::text, $9::bool)",
            vec![
                SqlParam::Text(d.dispute_id),
                text(&d.charge_id),
                SqlParam::Text(d.payment_intent),
                int(d.amount),
                SqlParam::Text(d.status),
                SqlParam::Bool(d.closed),
            ],
        ),
        Effect::ChargeRefund(r) => (
            "stripe_apply_charge_refund",
            "select public.stripe_apply_charge_refund($1::text, $2::text, $3::int8, $4::text, $5::text, \
             $6::int8, $7::int8, $8::bool)",
            vec![
                SqlParam::Text(r.charge_id),
                SqlParam::Text(r.payment_intent),
                SqlParam::Int64(r.amount_captured),
                SqlParam::Int64(r.amount_refunded),
                SqlParam::Bool(r.fully_refunded),
            ],
        ),
        Effect::CustomerDeleted { customer } => (
            "stripe_apply_customer_deleted",
            "select public.stripe_apply_customer_deleted($1::text, $2::text, $3::int8, $4::text)",
            vec![SqlParam::Text(customer)],
        ),
        Effect::SyncCatalogPrice { price_id } => {
            let read_at_ms = platform.now_unix_ms();
            let stripe = StripeClient::from_platform(platform)?;
            let row = match stripe.get(&format!("prices/{price_id}?expand%5B%5D=product")) {
                Ok(price) => catalog::price_row(&price, None, read_at_ms, read_at_ms),
                // Deleted in Stripe: the stored row (if any) stops being sold.
                Err(error) if error.is_missing() => Some(catalog::deleted_price_row(&price_id, read_at_ms)),
                Err(error) => return Err(error.into()),
            };
            match row {
                None => (
                    "stripe_record_event",
                    "select public.stripe_record_event($1::text, $2::text, $3::int8, $4::text)",
                    vec![SqlParam::Text("price_unreadable".to_string())],
                ),
                Some(row) => (
                    "stripe_apply_catalog_price",
                    "select public.stripe_apply_catalog_price($1::text, $2::text, $3::int8, $4::jsonb)",
                    vec![SqlParam::Jsonb(row.to_string().into_bytes())],
                ),
            }
        }
        Effect::SyncCatalogProduct { product_id } => {
            let read_at_ms = platform.now_unix_ms();
            let stripe = StripeClient::from_platform(platform)?;
            let active = match stripe.get(&format!("products/{product_id}")) {
                Ok(product) => {
                    product["active"].as_bool().unwrap_or(false) && product["deleted"].as_bool() != Some(true)
                }
                Err(error) if error.is_missing() => false,
                Err(error) => return Err(error.into()),
            };
            (
                "stripe_apply_catalog_product",
                "select public.stripe_apply_catalog_product($1::text, $2::text, $3::int8, $4::text, $5::bool, $6::int8)",
                vec![SqlParam::Text(product_id), SqlParam::Bool(active), SqlParam::Int64(read_at_ms)],
            )
        }
        Effect::SyncSubscription { subscription_id } => {
            // The time the read starts: whatever it returns is at least this fresh.
            let read_at_ms = platform.now_unix_ms();
            let stripe = StripeClient::from_platform(platform)?;
            let subscription = match stripe.get(&format!("subscriptions/{subscription_id}")) {
                Ok(value) => Subscription::parse(&value),
                // Gone from Stripe (test data deleted): nothing left to mirror.
                Err(error) if error.is_missing() => None,
                Err(error) => return Err(error.into()),
            };
            match subscription {
                None => (
                    "stripe_record_event",
                    "select public.stripe_record_event($1::text, $2::text, $3::int8, $4::text)",
                    vec![SqlParam::Text("subscription_unreadable".to_string())],
                ),
                Some(s) => (
                    "stripe_apply_subscription",
                    "select public.stripe_apply_subscription($1::text, $2::text, $3::int8, $4::text, $5::text, \
                     $6::uuid, $7::text, $8::text, $9::int8, $10::int8, $11::bool, $12::int8)",
                    vec![
                        SqlParam::Text(s.id),
                        SqlParam::Text(s.customer),
                        s.user_hint.map(SqlParam::Uuid).unwrap_or(SqlParam::Null),
                        SqlParam::Text(s.status),
                        text(&s.price_id),
                        int(s.current_period_start),
                        int(s.current_period_end),
                        SqlParam::Bool(s.cancel_at_period_end),
                        SqlParam::Int64(read_at_ms),
                    ],
                ),
            }
        }
    };
    let params: Vec<SqlParam> = head.into_iter().chain(params).collect();
    let outcome = db::query_json(platform, sql, &params).map_err(|e| db::report(platform, function, e))?;
    platform.log(&format!(
        "stripe event {} {}: {}",
        event.id,
        event.event_type,
        outcome["outcome"].as_str().unwrap_or("?")
    ));
    if let Some(reason) = outcome["review_reason"].as_str() {
        platform.log(&format!("stripe checkout of event {} held for review: {reason}", event.id));
    }
    Ok(json!({ "received": true, "event_id": event.id, "outcome": outcome["outcome"] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";

    fn event(event_type: &str, object: Value) -> Event {
        Event { id: "evt_1".into(), event_type: event_type.into(), created: 1_700_000_000, object }
    }

    fn session(mode: &str, payment_status: &str, product: &str) -> Value {
        json!({
            "id": "cs_test_1", "object": "checkout.session", "mode": mode,
            "payment_status": payment_status, "status": "complete",
            "client_reference_id": USER, "customer": "cus_1", "payment_intent": "pi_1",
            "subscription": if mode == "subscription" { json!("sub_1") } else { Value::Null },
            "amount_total": 499, "currency": "usd",
            "metadata": {"user_id": USER, "product": product}
        })
    }

    #[test]
    fn stripe_event_parse_requires_id_type_created_object() {
        let ok = br#"{"id":"evt_1A","object":"event","type":"x.y","created":1,"data":{"object":{"id":"o"}}}"#;
        assert_eq!(Event::parse(ok).unwrap().event_type, "x.y");
        for bad in [
            &br#"{"id":"evt_1","type":"x","created":1}"#[..],
            br#"{"id":"ev_1","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_../x","type":"x","created":1,"data":{"object":{}}}"#,
            br#"not json"#,
        ] {
            assert_eq!(Event::parse(bad).unwrap_err().code, "invalid_event");
        }
    }

    #[test]
    fn stripe_checkout_events_map_to_order_states() {
        let paid = effect_of(&event("checkout.session.completed", session("payment", "paid", "tokens-large")));
        let Effect::CheckoutPayment(p) = paid else { panic!("{paid:?}") };
        assert_eq!((p.status, p.tokens, p.user_id.as_str()), ("completed", 650, USER));
        let unpaid = effect_of(&event("checkout.session.completed", session("payment", "unpaid", "tokens-small")));
        assert!(matches!(unpaid, Effect::CheckoutPayment(CheckoutPayment { status: "pending", .. })));
        let failed =
            effect_of(&event("checkout.session.async_payment_failed", session("payment", "unpaid", "tokens-small")));
        assert!(matches!(failed, Effect::CheckoutPayment(CheckoutPayment { status: "failed", .. })));
        let later =
            effect_of(&event("checkout.session.async_payment_succeeded", session("payment", "paid", "tokens-small")));
        assert!(matches!(later, Effect::CheckoutPayment(CheckoutPayment { status: "completed", tokens: 110, .. })));
        assert_eq!(
            effect_of(&event("checkout.session.completed", session("subscription", "paid", "mystic-subscription"))),
            Effect::SyncSubscription { subscription_id: "sub_1".into() }
        );
        let foreign = effect_of(&event("checkout.session.completed", session("payment", "paid", "tokens-free")));
        assert_eq!(foreign, Effect::Nothing("not_our_order"));
    }

    #[test]
    fn stripe_invoice_and_subscription_events_sync_the_subscription() {
        let basil = json!({"id": "in_1", "parent": {"type": "subscription_details",
            "subscription_details": {"subscription": "sub_9"}}});
        assert_eq!(
            effect_of(&event("invoice.paid", basil)),
            Effect::SyncSubscription { subscription_id: "sub_9".into() }
        );
        let legacy = json!({"id": "in_1", "subscription": "sub_8"});
        assert_eq!(
            effect_of(&event("invoice.payment_failed", legacy)),
            Effect::SyncSubscription { subscription_id: "sub_8".into() }
        );
        let one_off = json!({"id": "in_1", "parent": null});
        assert_eq!(effect_of(&event("invoice.paid", one_off)), Effect::Nothing("not_a_subscription_invoice"));
        let sub = json!({"id": "sub_7", "object": "subscription"});
        assert_eq!(
            effect_of(&event("customer.subscription.deleted", sub)),
            Effect::SyncSubscription { subscription_id: "sub_7".into() }
        );
        assert_eq!(effect_of(&event("customer.created", json!({"id": "cus_1"}))), Effect::Nothing("unhandled_type"));
        assert_eq!(
            effect_of(&event("customer.deleted", json!({"id": "cus_1", "object": "customer"}))),
            Effect::CustomerDeleted { customer: "cus_1".into() }
        );
        assert_eq!(
            effect_of(&event("price.updated", json!({"id": "price_1", "object": "price"}))),
            Effect::SyncCatalogPrice { price_id: "price_1".into() }
        );
        assert_eq!(
            effect_of(&event("product.updated", json!({"id": "prod_1", "object": "product"}))),
            Effect::SyncCatalogProduct { product_id: "prod_1".into() }
        );
        assert_eq!(effect_of(&event("price.deleted", json!({"id": "price/../x"}))), Effect::Nothing("malformed"));
        let injected = json!({"id": "sub_7/../../v1/customers"});
        assert_eq!(effect_of(&event("customer.subscription.updated", injected)), Effect::Nothing("malformed"));
    }

    #[test]
    fn stripe_subscription_parses_basil_and_legacy_periods() {
        let basil = json!({"id": "sub_1", "customer": "cus_1", "status": "active", "cancel_at_period_end": true,
            "metadata": {"user_id": USER},
            "items": {"data": [{"price": {"id": "price_m"}, "current_period_start": 10, "current_period_end": 20}]}});
        let s = Subscription::parse(&basil).unwrap();
        assert_eq!((s.current_period_start, s.current_period_end, s.cancel_at_period_end), (Some(10), Some(20), true));
        assert_eq!((s.price_id.as_deref(), s.user_hint.as_deref()), (Some("price_m"), Some(USER)));
        let legacy = json!({"id": "sub_1", "customer": {"id": "cus_1"}, "status": "past_due",
            "current_period_start": 1, "current_period_end": 2, "items": {"data": []}});
        assert_eq!(Subscription::parse(&legacy).unwrap().current_period_end, Some(2));
        assert!(Subscription::parse(&json!({"id": "sub_1", "customer": "cus_1", "status": "weird"})).is_none());
    }

    #[test]
    fn stripe_no_payment_required_is_held_for_review() {
        let free =
            effect_of(&event("checkout.session.completed", session("payment", "no_payment_required", "tokens-large")));
        let Effect::CheckoutPayment(p) = free else { panic!("{free:?}") };
        assert_eq!((p.status, p.review_reason), ("review", Some("no_payment_required")));
    }

    #[test]
    fn stripe_paid_amount_must_be_what_the_line_items_price_asks() {
        // Whether that price is the product's is the SQL function's check (e2e:
        // stripe_webhook.rs, only_a_payment_of_the_catalog_price_is_credited).
        let paid = session("payment", "paid", "tokens-small");
        let items = |price: &str, amount: i64, currency: &str, quantity: i64| {
            json!({"object": "list", "has_more": false, "data": [{"id": "li_1", "quantity": quantity,
                "price": {"id": price, "unit_amount": amount, "currency": currency}}]})
        };
        assert_eq!(check_line_items(&paid, &items("price_small", 499, "usd", 1)), Ok("price_small".to_string()));
        assert_eq!(check_line_items(&paid, &items("price_small", 999, "usd", 1)), Err("amount_mismatch"));
        assert_eq!(check_line_items(&paid, &items("price_small", 499, "eur", 1)), Err("currency_mismatch"));
        assert_eq!(check_line_items(&paid, &items("price_small", 499, "usd", 2)), Err("quantity_mismatch"));
        let mut discounted = paid.clone();
        discounted["amount_total"] = json!(99);
        assert_eq!(check_line_items(&discounted, &items("price_small", 499, "usd", 1)), Err("amount_mismatch"));
        let two =
            json!({"data": [items("price_small", 499, "usd", 1)["data"][0], items("price_x", 1, "usd", 1)["data"][0]]});
        assert_eq!(check_line_items(&paid, &two), Err("line_items_count"));
        // Adaptive Pricing: paid in the buyer's currency, compared in the price's.
        let mut converted = paid.clone();
        converted["currency"] = json!("eur");
        converted["amount_total"] = json!(460);
        converted["currency_conversion"] = json!({"amount_total": 499, "source_currency": "usd", "fx_rate": "0.92"});
        assert_eq!(check_line_items(&converted, &items("price_small", 499, "usd", 1)), Ok("price_small".to_string()));
    }

    #[test]
    fn stripe_dispute_events_name_the_payment() {
        let dispute = json!({"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_1",
            "amount": 499, "status": "needs_response"});
        let created = effect_of(&event("charge.dispute.created", dispute.clone()));
        let Effect::Dispute(d) = created else { panic!("{created:?}") };
        assert_eq!((d.dispute_id.as_str(), d.payment_intent.as_str(), d.closed), ("dp_1", "pi_1", false));
        let mut won = dispute.clone();
        won["status"] = json!("won");
        assert!(matches!(
            effect_of(&event("charge.dispute.closed", won)),
            Effect::Dispute(Dispute { closed: true, .. })
        ));
        let mut legacy = dispute;
        legacy["payment_intent"] = Value::Null;
        assert_eq!(effect_of(&event("charge.dispute.created", legacy)), Effect::Nothing("no_payment_intent"));
    }

    #[test]
    fn stripe_refund_event_is_cumulative() {
        let charge = json!({"id": "ch_1", "object": "charge", "payment_intent": "pi_1",
            "amount": 999, "amount_captured": 999, "amount_refunded": 500, "refunded": false});
        assert_eq!(
            effect_of(&event("charge.refunded", charge)),
            Effect::ChargeRefund(ChargeRefund {
                charge_id: "ch_1".into(),
                payment_intent: "pi_1".into(),
                amount_captured: 999,
                amount_refunded: 500,
                fully_refunded: false
            })
        );
    }
}
