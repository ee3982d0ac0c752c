//! The customer's own Checkout Session, as the page Stripe returns them to needs it:
//! whether it was paid, whether that was credited, what it brought and the balance now.
//!
//! Stripe's fulfilment guide fulfils from both the webhook and the redirect, through one
//! idempotent function. Here that function is [`events::apply`]: a paid session read from
//! Stripe is applied as the `checkout.session.completed` event it amounts to, so it passes
//! the same line-item, amount and price checks and the same exactly-once SQL as the
//! webhook and reconcile. Its event id (`evt_checkout_return_<session>`) cannot be one of
//! Stripe's, so however many calls race each other and the webhook, the order is applied
//! by whichever comes first and credited once (the credit is keyed by the session).
//!
//! One statement counts the call against the user's hourly limit and reads what the
//! database shows; only a session of the caller's that the database does not show as
//! settled is read from Stripe.

use serde_json::{json, Value};

use super::client::StripeClient;
use super::events::{self, Event};
use super::is_object_id;
use crate::auth::AuthenticatedUser;
use crate::db::{self, SqlParam};
use crate::{settings, ApiError, Platform};

/// Longest session id accepted: the synthetic event id must stay within the 200
/// characters `stripe_begin_event` allows.
const MAX_SESSION_ID_LEN: usize = 180;

/// The event type a paid session is applied as.
const APPLIED_AS: &str = "checkout.session.completed";

fn not_found() -> ApiError {
    ApiError::not_found("checkout_session_not_found", "No checkout session of yours has this id.")
}

/// Whether `id` can be a Checkout Session id (`cs_test_...`, `cs_live_...`): anything else
/// is a 404 without a statement or a call to Stripe.
pub fn is_session_id(id: &str) -> bool {
    id.len() > "cs_".len() && id.starts_with("cs_") && id.len() <= MAX_SESSION_ID_LEN && is_object_id(id)
}

/// The event id a paid session is applied under from the status endpoint: one per
/// session, so repeated calls are duplicates of the first.
pub fn return_event_id(session_id: &str) -> String {
    format!("evt_checkout_return_{session_id}")
}

/// The state of the user's Checkout Session `session_id`, applying it first when Stripe
/// says it is paid and the database does not show it applied yet.
pub fn session_status(platform: &dyn Platform, user: &AuthenticatedUser, session_id: &str) -> Result<Value, ApiError> {
    if !is_session_id(session_id) {
        return Err(not_found());
    }
    let per_hour = settings::STRIPE_SESSION_STATUS_PER_HOUR.parse::<i32>(platform)?.max(0);
    let stored = db::query_json(
        platform,
        "select public.stripe_checkout_session_status($1::uuid, $2::text, $3::int4)",
        &[SqlParam::Uuid(user.user_id.clone()), SqlParam::Text(session_id.to_string()), SqlParam::Int32(per_hour)],
    )
    .map_err(|e| db::report(platform, "stripe_checkout_session_status", e))?;
    if stored["rate_limited"] == Value::Bool(true) {
        let reset = stored["reset_after"].as_i64().unwrap_or(60).max(1) as u64;
        return Err(ApiError::too_many_requests(
            reset,
            format!(
                "You have checked your payments {} times this hour; try again in {} minutes.",
                stored["limit"].as_i64().unwrap_or(0),
                reset.div_ceil(60)
            ),
        ));
    }
    if stored["found"] != Value::Bool(true) {
        return Err(not_found());
    }
    if stored["settled"] == Value::Bool(true) {
        return Ok(answer(session_id, &stored, None));
    }

    let stripe = StripeClient::from_platform(platform)?;
    let session = match stripe.get(&format!("checkout/sessions/{session_id}")) {
        Ok(session) => session,
        // Recorded for this user but unknown to this Stripe account (another key or mode).
        Err(error) if error.is_missing() => return Err(not_found()),
        Err(error) => return Err(error.into()),
    };
    // The record says it is the caller's; Stripe's copy must say so too.
    if session["id"].as_str() != Some(session_id)
        || !events::user_of(&session).is_some_and(|u| u.eq_ignore_ascii_case(&user.user_id))
    {
        platform.log(&format!("stripe session status: {session_id} does not name its recorded user"));
        return Err(not_found());
    }
    let state = match (session["status"].as_str(), session["payment_status"].as_str()) {
        (Some("expired"), _) => "expired",
        (Some("complete"), Some("paid" | "no_payment_required")) => "paid",
        // Completed with a delayed payment method (a bank debit): the money is on its way,
        // and `checkout.session.async_payment_succeeded` (or `_failed`) settles it.
        (Some("complete"), _) => "processing",
        _ => "open",
    };
    if state != "paid" {
        return Ok(answer(session_id, &stored, Some(state)));
    }

    let event = Event {
        id: return_event_id(session_id),
        event_type: APPLIED_AS.to_string(),
        created: platform.now_unix_ms().div_euclid(1000),
        object: session.clone(),
    };
    let outcome = events::apply(platform, &event)?;
    platform.log(&format!(
        "stripe session status: {session_id} applied on return: {}",
        outcome["outcome"].as_str().unwrap_or("?")
    ));
    let subscription = match session["subscription"].as_str().or_else(|| session["subscription"]["id"].as_str()) {
        Some(id) if id.starts_with("sub_") && is_object_id(id) => SqlParam::Text(id.to_string()),
        _ => SqlParam::Null,
    };
    let stored = db::query_json(
        platform,
        "select public.stripe_checkout_session_state($1::uuid, $2::text, $3::text)",
        &[SqlParam::Uuid(user.user_id.clone()), SqlParam::Text(session_id.to_string()), subscription],
    )
    .map_err(|e| db::report(platform, "stripe_checkout_session_state", e))?;
    Ok(answer(session_id, &stored, Some("paid")))
}

/// The endpoint's answer from what the database shows (`stored`) and, when the database
/// had no final word, what Stripe says (`live`).
fn answer(session_id: &str, stored: &Value, live: Option<&str>) -> Value {
    let status = stored["status"].as_str().or(live).unwrap_or("open");
    json!({
        "session_id": session_id,
        "status": status,
        "credited": stored["credited"].as_bool().unwrap_or(false),
        "held_for_review": stored["review"].as_bool().unwrap_or(false),
        "product": stored["product"],
        "mode": stored["mode"],
        "tokens_added": stored["tokens_added"].as_i64().unwrap_or(0),
        "plan": stored["plan"],
        "balance": stored["balance"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_session_ids_are_checked_before_anything_else() {
        assert!(is_session_id("cs_test_a1B2c3"));
        assert!(is_session_id("cs_live_a1B2c3"));
        for bad in ["", "cs_", "pi_123", "cs_test/../customers", "cs_test_a1%2F", &format!("cs_{}", "a".repeat(200))] {
            assert!(!is_session_id(bad), "{bad}");
        }
        let id = return_event_id(&format!("cs_{}", "a".repeat(MAX_SESSION_ID_LEN - 3)));
        assert!(id.starts_with("evt_") && id.len() - "evt_".len() <= 200, "{id}");
    }

    #[test]
    fn stripe_session_answer_prefers_the_database() {
        let stored = json!({"found": true, "settled": true, "status": "paid", "credited": true, "review": false,
            "product": "tokens-small", "mode": "payment", "tokens_added": 110, "plan": "free", "balance": 160});
        let a = answer("cs_test_1", &stored, Some("processing"));
        assert_eq!(
            (a["status"].as_str(), a["credited"].as_bool(), a["balance"].as_i64()),
            (Some("paid"), Some(true), Some(160))
        );
        let unsettled = json!({"found": true, "settled": false, "status": null, "credited": false,
            "product": "tokens-small", "mode": "payment", "tokens_added": 0, "plan": "free", "balance": 50});
        assert_eq!(answer("cs_test_1", &unsettled, Some("processing"))["status"], "processing");
        assert_eq!(answer("cs_test_1", &unsettled, Some("paid"))["credited"], false);
    }
}
