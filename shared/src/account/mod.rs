//! A user's account as a whole: the export of everything the server holds about them, and
//! the account's deletion. The `account` endpoint (the signed-in user) and
//! `libero account` (the operator) both call [`export`] and [`delete`].
//!
//! What is exported, deleted and kept is decided by the SQL functions in
//! `migrations/20250107600000_account.sql`; this module adds the one step SQL cannot do:
//! billing stops in Stripe before anything is deleted here.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::db::{self, SqlParam, UserDocument};
use crate::stripe::client::{StripeClient, StripeError};
use crate::stripe::is_object_id;
use crate::{ApiError, Platform};

/// What the body of a deletion must say, word for word: deleting cannot be undone, so a
/// stray or replayed request without it deletes nothing.
pub const CONFIRMATION: &str = "delete my account";

/// The statuses after which a subscription bills no more; any other is cancelled.
const ENDED_STATUSES: [&str; 2] = ["canceled", "incomplete_expired"];

/// Subscriptions per page of Stripe's list (its maximum).
const PAGE: usize = 100;

/// The body of `DELETE /account`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub confirm: String,
}

impl DeleteRequest {
    /// Refuses a body that does not carry [`CONFIRMATION`].
    pub fn check(&self) -> Result<(), ApiError> {
        if self.confirm == CONFIRMATION {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                "confirmation_required",
                format!("Deleting an account cannot be undone: send {{\"confirm\": \"{CONFIRMATION}\"}}."),
            ))
        }
    }
}

/// The export document of `user_id` (format 1; the schema is in `openapi.yaml`).
pub fn export(platform: &dyn Platform, user_id: &str) -> Result<Map<String, Value>, ApiError> {
    let result =
        db::query_json(platform, "select public.account_export($1::uuid)", &[SqlParam::Uuid(user_id.to_string())])
            .map_err(|e| db::report(platform, "account_export", e))?;
    match serde_json::from_value(result).map_err(|_| ApiError::internal("The account could not be read."))? {
        UserDocument::Ok(document) => Ok(document),
        UserDocument::UnknownUser => Err(ApiError::user_not_found()),
    }
}

/// What a deletion did in Stripe (for the operator's log; the client's answer is the same
/// whatever was left to do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StripeCleanup {
    pub subscriptions_cancelled: Vec<String>,
    pub customers_deleted: Vec<String>,
}

/// Deletes `user_id`'s account: first, in Stripe, each of the user's customers has its
/// live subscriptions cancelled at once and is then deleted (which removes its saved
/// payment methods); then one statement deletes the personal data, keeps the financial
/// records detached and deletes the auth user. Stripe trouble is a 502 before anything
/// is deleted here; a retry finds what is already done (a cancelled subscription is not
/// listed as live, a deleted customer is `resource_missing`) and finishes. Answers the
/// same for a user already deleted.
pub fn delete(platform: &dyn Platform, user_id: &str) -> Result<StripeCleanup, ApiError> {
    let user = SqlParam::Uuid(user_id.to_string());
    let customers =
        db::query_json(platform, "select public.account_stripe_customers($1::uuid)", std::slice::from_ref(&user))
            .map_err(|e| db::report(platform, "account_stripe_customers", e))?;
    let customers: Vec<String> = customers["customers"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();

    let mut cleanup = StripeCleanup::default();
    if !customers.is_empty() {
        let stripe = StripeClient::from_platform(platform)?;
        for customer in &customers {
            // An id that could change the API path is not one our rows should hold; it is
            // skipped rather than sent.
            if !is_object_id(customer) {
                platform
                    .log(&format!("account delete: skipped a malformed Stripe customer id ({} bytes)", customer.len()));
                continue;
            }
            cleanup.subscriptions_cancelled.extend(cancel_live_subscriptions(&stripe, customer)?);
            match stripe.delete(&format!("customers/{customer}")) {
                Ok(_) => cleanup.customers_deleted.push(customer.clone()),
                Err(error) if error.is_missing() => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    let result = db::query_json(platform, "select public.account_delete($1::uuid)", &[user])
        .map_err(|e| db::report(platform, "account_delete", e))?;
    if result["deleted"] != json!(true) {
        return Err(ApiError::internal("The account could not be deleted."));
    }
    platform.log(&format!(
        "account deleted: {} subscription(s) cancelled, {} Stripe customer(s) deleted",
        cleanup.subscriptions_cancelled.len(),
        cleanup.customers_deleted.len()
    ));
    Ok(cleanup)
}

/// Cancels, at once, every subscription of `customer` that can still bill (Stripe's list,
/// not our rows: a subscription whose webhook never arrived bills too). Returns the ids
/// cancelled.
fn cancel_live_subscriptions(stripe: &StripeClient, customer: &str) -> Result<Vec<String>, ApiError> {
    let mut cancelled = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("subscriptions?customer={customer}&status=all&limit={PAGE}");
        if let Some(id) = &after {
            path.push_str(&format!("&starting_after={id}"));
        }
        let page = match stripe.get(&path) {
            Ok(page) => page,
            // A customer already deleted has nothing left to bill.
            Err(error) if error.is_missing() => return Ok(cancelled),
            Err(error) => return Err(error.into()),
        };
        let data = page["data"].as_array().cloned().unwrap_or_default();
        for subscription in &data {
            let Some(id) = subscription["id"].as_str().filter(|id| is_object_id(id)) else { continue };
            let status = subscription["status"].as_str().unwrap_or("");
            if ENDED_STATUSES.contains(&status) {
                continue;
            }
            match stripe.delete(&format!("subscriptions/{id}")) {
                Ok(_) => cancelled.push(id.to_string()),
                Err(error) if error.is_missing() => {}
                // Stripe refuses to cancel what is already cancelled (a concurrent
                // deletion got there first): what counts is that it no longer bills.
                Err(StripeError::Api { .. }) if has_ended(stripe, id)? => {}
                Err(error) => return Err(error.into()),
            }
        }
        let last = data.last().and_then(|s| s["id"].as_str()).filter(|id| is_object_id(id)).map(str::to_string);
        match (page["has_more"].as_bool(), last) {
            (Some(true), Some(last)) => after = Some(last),
            _ => return Ok(cancelled),
        }
    }
}

/// Whether Stripe says subscription `id` bills no more (or no longer exists).
fn has_ended(stripe: &StripeClient, id: &str) -> Result<bool, ApiError> {
    match stripe.get(&format!("subscriptions/{id}")) {
        Ok(subscription) => Ok(ENDED_STATUSES.contains(&subscription["status"].as_str().unwrap_or(""))),
        Err(error) if error.is_missing() => Ok(true),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::fakes::FakePlatform;

    const USER: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";

    fn platform(db: &[&str]) -> FakePlatform {
        let platform =
            FakePlatform::with_vars(&[("stripe_secret_key", "sk_test_123"), ("stripe_api_base", "http://stripe.test")]);
        for answer in db {
            platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(answer.as_bytes().to_vec())]]));
        }
        platform
    }

    #[test]
    fn account_delete_cancels_then_deletes_the_customer_then_the_rows() {
        let platform = platform(&[r#"{"customers":["cus_1"]}"#, r#"{"deleted":true}"#]);
        platform.push_upstream(
            200,
            &[],
            br#"{"object":"list","has_more":false,"data":[{"id":"sub_live","status":"active"},{"id":"sub_old","status":"canceled"}]}"#,
        );
        platform.push_upstream(200, &[], br#"{"id":"sub_live","status":"canceled"}"#);
        platform.push_upstream(200, &[], br#"{"id":"cus_1","deleted":true}"#);
        let cleanup = delete(&platform, USER).unwrap();
        assert_eq!(cleanup.subscriptions_cancelled, ["sub_live"]);
        assert_eq!(cleanup.customers_deleted, ["cus_1"]);
        let sent: Vec<(String, String)> =
            platform.sent.borrow().iter().map(|r| (r.method.to_string(), r.url.clone())).collect();
        assert_eq!(
            sent,
            [
                ("GET".into(), "http://stripe.test/v1/subscriptions?customer=cus_1&status=all&limit=100".into()),
                ("DELETE".into(), "http://stripe.test/v1/subscriptions/sub_live".into()),
                ("DELETE".into(), "http://stripe.test/v1/customers/cus_1".into()),
            ]
        );
        assert!(platform.queries.borrow().last().unwrap().0.contains("account_delete"));
    }

    #[test]
    fn account_delete_stops_before_the_database_when_stripe_fails() {
        let platform = platform(&[r#"{"customers":["cus_1"]}"#]);
        for _ in 0..2 {
            platform.push_upstream(500, &[], br#"{"error":{"type":"api_error","message":"down"}}"#);
        }
        let error = delete(&platform, USER).unwrap_err();
        assert_eq!((error.status, error.code), (502, "stripe_error"));
        assert!(platform.queries.borrow().iter().all(|(sql, _)| !sql.contains("account_delete")));
    }

    #[test]
    fn account_delete_without_a_customer_does_not_need_stripe() {
        let platform = FakePlatform::with_vars(&[]);
        for answer in [r#"{"customers":[]}"#, r#"{"deleted":true}"#] {
            platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(answer.as_bytes().to_vec())]]));
        }
        assert_eq!(delete(&platform, USER).unwrap(), StripeCleanup::default());
        assert!(platform.sent.borrow().is_empty());
    }

    #[test]
    fn account_delete_needs_the_exact_confirmation() {
        assert!(DeleteRequest { confirm: CONFIRMATION.into() }.check().is_ok());
        for wrong in ["", "yes", "DELETE MY ACCOUNT", "delete my account "] {
            assert_eq!(DeleteRequest { confirm: wrong.into() }.check().unwrap_err().code, "confirmation_required");
        }
    }
}
