//! Per-user hourly quotas on AI calls (issue 5). The rule lives in one SQL function,
//! `ai_quota_take` (migrations/20250103000000_ai_quota.sql), which checks and counts in
//! one statement, so the limit holds across any number of instances. This module reads
//! the limits from variables and turns a refusal into a 429 with `Retry-After`.
//!
//! Every paid upstream call passes here first, so this is also where anonymous sign-ins
//! are stopped ([`crate::auth::require_paid_access`]): a quota per throwaway account
//! would be no bound at all.

use serde_json::Value;

use crate::auth::{self, AuthenticatedUser};
use crate::db::{self, SqlParam};
use crate::{config, ApiError, Platform};

/// Calls per user, per endpoint, per clock hour (`ai_quota_free_per_hour`).
pub const DEFAULT_FREE_PER_HOUR: i32 = 30;
/// The same for plan `mystic` (`ai_quota_mystic_per_hour`).
pub const DEFAULT_MYSTIC_PER_HOUR: i32 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaGrant {
    pub limit: i64,
    pub remaining: i64,
    pub reset_after_secs: i64,
}

/// Counts one AI call of `endpoint` for `user`, or refuses it: 403 for an anonymous
/// sign-in (unless allowed), 429 when the user's quota for this hour is used up.
pub fn take(platform: &dyn Platform, user: &AuthenticatedUser, endpoint: &str) -> Result<QuotaGrant, ApiError> {
    auth::require_paid_access(platform, user)?;
    let user_id = user.user_id.as_str();
    let free = config::parsed(platform, "ai_quota_free_per_hour", DEFAULT_FREE_PER_HOUR)?.max(0);
    let mystic = config::parsed(platform, "ai_quota_mystic_per_hour", DEFAULT_MYSTIC_PER_HOUR)?.max(0);
    let answer = db::query_json(
        platform,
        "select public.ai_quota_take($1::uuid, $2, $3, $4)",
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Text(endpoint.to_string()),
            SqlParam::Int32(free),
            SqlParam::Int32(mystic),
        ],
    )
    .map_err(|e| db::report(platform, "ai_quota_take", e))?;
    interpret(&answer)
}

fn interpret(answer: &Value) -> Result<QuotaGrant, ApiError> {
    let number = |key: &str| answer.get(key).and_then(Value::as_i64).unwrap_or(0);
    if answer.get("reason").and_then(Value::as_str) == Some("unknown_user") {
        return Err(ApiError::not_found("user_not_found", "The signed-in user has no account in this project."));
    }
    match answer.get("allowed").and_then(Value::as_bool) {
        Some(true) => Ok(QuotaGrant {
            limit: number("limit"),
            remaining: number("remaining"),
            reset_after_secs: number("reset_after"),
        }),
        Some(false) => Err(refusal(answer)),
        None => Err(ApiError::internal("The AI quota could not be checked.")),
    }
}

/// The 429 for an `ai_quota_take` answer that refused the call.
pub fn refusal(answer: &Value) -> ApiError {
    let number = |key: &str| answer.get(key).and_then(Value::as_i64).unwrap_or(0);
    let reset = number("reset_after").max(1) as u64;
    ApiError::too_many_requests(
        reset,
        format!(
            "You have used this hour's {} AI requests for this feature; try again in {} minutes.",
            number("limit"),
            reset.div_ceil(60)
        ),
    )
    .with_field("limit", number("limit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::testing::FakePlatform;

    fn user(id: &str) -> AuthenticatedUser {
        AuthenticatedUser { user_id: id.into(), email: None, role: "authenticated".into(), is_anonymous: false }
    }

    fn answer(platform: &FakePlatform, json: &str) {
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(json.as_bytes().to_vec())]]));
    }

    #[test]
    fn passes_limits_from_variables() {
        let platform = FakePlatform::with_vars(&[("ai_quota_free_per_hour", "3"), ("ai_quota_mystic_per_hour", "9")]);
        answer(&platform, r#"{"allowed":true,"limit":3,"used":1,"remaining":2,"reset_after":100}"#);
        let grant = take(&platform, &user("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34"), "chatgpt-chat").unwrap();
        assert_eq!(grant, QuotaGrant { limit: 3, remaining: 2, reset_after_secs: 100 });
        let queries = platform.queries.borrow();
        assert_eq!(queries[0].1[2], SqlParam::Int32(3));
        assert_eq!(queries[0].1[3], SqlParam::Int32(9));
    }

    #[test]
    fn refusal_is_429_with_retry_after() {
        let platform = FakePlatform::with_vars(&[]);
        answer(&platform, r#"{"allowed":false,"limit":30,"used":30,"remaining":0,"reset_after":125}"#);
        let error = take(&platform, &user("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34"), "ai-hypnosis").unwrap_err();
        assert_eq!(error.status, 429);
        assert!(error.headers.contains(&("retry-after".into(), "125".into())));
        assert_eq!(platform.queries.borrow()[0].1[2], SqlParam::Int32(DEFAULT_FREE_PER_HOUR));
    }

    #[test]
    fn anonymous_users_are_refused_before_the_database() {
        let platform = FakePlatform::with_vars(&[]);
        let guest = AuthenticatedUser { is_anonymous: true, ..user("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34") };
        assert_eq!(take(&platform, &guest, "tts").unwrap_err().status, 403);
        assert!(platform.queries.borrow().is_empty());
    }

    #[test]
    fn unknown_user_and_bad_answers() {
        let platform = FakePlatform::with_vars(&[]);
        answer(&platform, r#"{"allowed":false,"reason":"unknown_user"}"#);
        assert_eq!(take(&platform, &user("u"), "x").unwrap_err().status, 404);
        answer(&platform, r#"{}"#);
        assert_eq!(take(&platform, &user("u"), "x").unwrap_err().status, 500);
    }
}
