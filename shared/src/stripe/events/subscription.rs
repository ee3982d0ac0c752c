//! A subscription as Stripe's API returns it: what the mirror stores.

use serde_json::Value;

use super::event::{id_field, user_of};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stripe::events::fixtures::USER;

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
}
