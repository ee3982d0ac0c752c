//! A verified event and what it means for us: its [`Effect`].

use serde_json::Value;

use crate::stripe::catalog::{self, ProductKind};
use crate::stripe::is_object_id;
use crate::stripe_signature::{self, DEFAULT_TOLERANCE_SECS};
use crate::{settings, validate, ApiError, Platform};

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
    let secrets = settings::STRIPE_WEBHOOK_SECRETS.list(platform);
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
pub(super) fn id_field(value: &Value) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::stripe::events::fixtures::{event, session, USER};

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
    fn stripe_no_payment_required_is_held_for_review() {
        let free =
            effect_of(&event("checkout.session.completed", session("payment", "no_payment_required", "tokens-large")));
        let Effect::CheckoutPayment(p) = free else { panic!("{free:?}") };
        assert_eq!((p.status, p.review_reason), ("review", Some("no_payment_required")));
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
