//! Applying an effect: each effect is one call of a SQL function that also records the
//! event id, so an event is applied exactly once however often it arrives.

use serde_json::{json, Value};

use super::event::{effect_of, Effect, Event};
use super::payment::verify_payment;
use super::subscription::Subscription;
use crate::db::{self, SqlParam};
use crate::stripe::catalog;
use crate::stripe::client::StripeClient;
use crate::{ApiError, Platform};

/// One call of a `stripe_*` SQL function: the function and the arguments after the
/// event's own three (id, type, created), each with the type the SQL casts it to.
struct Call {
    function: &'static str,
    args: Vec<(SqlParam, &'static str)>,
}

impl Call {
    fn new(function: &'static str) -> Call {
        Call { function, args: Vec::new() }
    }

    /// The event recorded with `outcome`, nothing else applied.
    fn record(outcome: &str) -> Call {
        Call::new("stripe_record_event").text(outcome)
    }

    fn arg(mut self, param: SqlParam, cast: &'static str) -> Call {
        self.args.push((param, cast));
        self
    }

    fn text(self, value: impl Into<String>) -> Call {
        self.arg(SqlParam::Text(value.into()), "text")
    }

    fn text_or_null(self, value: Option<String>) -> Call {
        self.arg(value.map(SqlParam::Text).unwrap_or(SqlParam::Null), "text")
    }

    fn int8(self, value: i64) -> Call {
        self.arg(SqlParam::Int64(value), "int8")
    }

    fn int8_or_null(self, value: Option<i64>) -> Call {
        self.arg(value.map(SqlParam::Int64).unwrap_or(SqlParam::Null), "int8")
    }

    fn int4(self, value: i32) -> Call {
        self.arg(SqlParam::Int32(value), "int4")
    }

    fn uuid(self, value: String) -> Call {
        self.arg(SqlParam::Uuid(value), "uuid")
    }

    fn uuid_or_null(self, value: Option<String>) -> Call {
        self.arg(value.map(SqlParam::Uuid).unwrap_or(SqlParam::Null), "uuid")
    }

    fn bool(self, value: bool) -> Call {
        self.arg(SqlParam::Bool(value), "bool")
    }

    fn jsonb(self, value: &Value) -> Call {
        self.arg(SqlParam::Jsonb(value.to_string().into_bytes()), "jsonb")
    }

    /// The statement and its parameters, the event's first.
    fn statement(self, event: &Event) -> (String, Vec<SqlParam>) {
        let head = [
            (SqlParam::Text(event.id.clone()), "text"),
            (SqlParam::Text(event.event_type.clone()), "text"),
            (SqlParam::Int64(event.created), "int8"),
        ];
        let (params, casts): (Vec<SqlParam>, Vec<&str>) = head.into_iter().chain(self.args).unzip();
        let placeholders: Vec<String> =
            casts.iter().enumerate().map(|(i, cast)| format!("${}::{cast}", i + 1)).collect();
        (format!("select public.{}({})", self.function, placeholders.join(", ")), params)
    }
}

/// Applies a verified event exactly once and returns the SQL function's outcome document
/// (`{"outcome": "applied" | "duplicate" | ...}`). Database trouble is a 5xx, Stripe
/// trouble a 502: Stripe then delivers the event again, and nothing was recorded.
pub fn apply(platform: &dyn Platform, event: &Event) -> Result<Value, ApiError> {
    let call = call_for(platform, event)?;
    let function = call.function;
    let (sql, params) = call.statement(event);
    let outcome = db::query_json(platform, &sql, &params).map_err(|e| db::report(platform, function, e))?;
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

/// The call that applies the event's effect, after whatever it must read from Stripe.
fn call_for(platform: &dyn Platform, event: &Event) -> Result<Call, ApiError> {
    Ok(match effect_of(event) {
        Effect::Nothing(outcome) => Call::record(outcome),
        Effect::CheckoutPayment(mut p) => {
            verify_payment(platform, event, &mut p)?;
            let price_override = catalog::find(p.product).and_then(|product| product.price_override.value(platform));
            Call::new("stripe_apply_checkout_payment")
                .text(p.session_id)
                .uuid(p.user_id)
                .text(p.product)
                .int4(p.tokens)
                .text_or_null(p.customer)
                .text_or_null(p.payment_intent)
                .int8_or_null(p.amount_total)
                .text_or_null(p.currency)
                .text(p.payment_status)
                .text(p.status)
                .text_or_null(p.review_reason.map(str::to_string))
                .text_or_null(p.paid_price_id)
                .text_or_null(price_override)
        }
        Effect::Dispute(d) => Call::new("stripe_apply_dispute")
            .text(d.dispute_id)
            .text_or_null(d.charge_id)
            .text(d.payment_intent)
            .int8_or_null(d.amount)
            .text(d.status)
            .bool(d.closed),
        Effect::ChargeRefund(r) => Call::new("stripe_apply_charge_refund")
            .text(r.charge_id)
            .text(r.payment_intent)
            .int8(r.amount_captured)
            .int8(r.amount_refunded)
            .bool(r.fully_refunded),
        Effect::CustomerDeleted { customer } => Call::new("stripe_apply_customer_deleted").text(customer),
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
                None => Call::record("price_unreadable"),
                Some(row) => Call::new("stripe_apply_catalog_price").jsonb(&row),
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
            Call::new("stripe_apply_catalog_product").text(product_id).bool(active).int8(read_at_ms)
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
                None => Call::record("subscription_unreadable"),
                Some(s) => Call::new("stripe_apply_subscription")
                    .text(s.id)
                    .text(s.customer)
                    .uuid_or_null(s.user_hint)
                    .text(s.status)
                    .text_or_null(s.price_id)
                    .int8_or_null(s.current_period_start)
                    .int8_or_null(s.current_period_end)
                    .bool(s.cancel_at_period_end)
                    .int8(read_at_ms),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::events::fixtures::event;

    #[test]
    fn stripe_calls_number_their_parameters_after_the_event() {
        let (sql, params) = Call::new("stripe_apply_dispute")
            .text("dp_1")
            .text_or_null(None)
            .int8_or_null(Some(499))
            .bool(true)
            .statement(&event("charge.dispute.closed", json!({})));
        assert_eq!(
            sql,
            "select public.stripe_apply_dispute($1::text, $2::text, $3::int8, $4::text, $5::text, $6::int8, $7::bool)"
        );
        assert_eq!(params[0], SqlParam::Text("evt_1".into()));
        assert_eq!(params[2], SqlParam::Int64(1_700_000_000));
        assert_eq!(params[4], SqlParam::Null);
        assert_eq!(params.len(), 7);
    }
}
