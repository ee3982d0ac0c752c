//! The checkout money checks: a payment credits only what its line item's price asks.

use serde_json::Value;

use super::event::{id_field, CheckoutPayment, Event};
use crate::stripe::client::StripeClient;
use crate::{ApiError, Platform};

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
pub(super) fn verify_payment(
    platform: &dyn Platform,
    event: &Event,
    payment: &mut CheckoutPayment,
) -> Result<(), ApiError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stripe::events::fixtures::session;

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
}
