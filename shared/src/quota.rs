//! Per-user hourly quotas on AI calls. The rule lives in one SQL function,
//! `ai_quota_take` (migrations/20250103000000_ai_quota.sql), which checks and counts in
//! one statement, so the limit holds across any number of instances. This module reads
//! the limits from variables and turns a refusal into a 429 with `Retry-After`.
//!
//! Free use is also metered by what it costs: [`take_amount`] takes a measured amount
//! (seconds of audio) before the call, and [`settle`] corrects it afterwards to what the
//! upstream reports.
//!
//! Every paid upstream call passes here first, so this is also where anonymous sign-ins
//! are stopped ([`crate::auth::require_paid_access`]): a quota per throwaway account
//! would be no bound at all.

use serde_json::Value;

use crate::auth::{self, AuthenticatedUser};
use crate::db::{self, SqlParam};
use crate::settings::{self, CallQuota, Setting};
use crate::{ApiError, Platform};

/// Counts one AI call of `endpoint` for `user`, or refuses it: 403 for an anonymous
/// sign-in (unless allowed), 429 when the user's quota for this hour is used up.
pub fn take(platform: &dyn Platform, user: &AuthenticatedUser, endpoint: &str) -> Result<(), ApiError> {
    auth::require_paid_access(platform, user)?;
    let user_id = user.user_id.as_str();
    let limits = CallQuota::from_platform(platform)?;
    let answer = db::query_json(
        platform,
        "select public.ai_quota_take($1::uuid, $2, $3, $4)",
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Text(endpoint.to_string()),
            SqlParam::Int32(limits.free_per_hour),
            SqlParam::Int32(limits.mystic_per_hour),
        ],
    )
    .map_err(|e| db::report(platform, "ai_quota_take", e))?;
    interpret(&answer)
}

fn interpret(answer: &Value) -> Result<(), ApiError> {
    if answer.get("reason").and_then(Value::as_str) == Some("unknown_user") {
        return Err(ApiError::user_not_found());
    }
    match answer.get("allowed").and_then(Value::as_bool) {
        Some(true) => Ok(()),
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

/// A metered amount taken for one call: what to settle afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterGrant {
    pub meter: String,
    pub amount: i64,
    pub limit: i64,
    pub remaining: i64,
    pub window_start: String,
}

/// The limits of one meter: its name, what it counts, and the settings of the free and
/// `mystic` plans' hourly limits.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    pub name: &'static str,
    /// What the amount is, for the refusal's message ("seconds of audio").
    pub unit: &'static str,
    pub free: Setting,
    pub mystic: Setting,
}

/// Takes `amount` of `meter` for `user` this hour, or refuses: 403 for an anonymous
/// sign-in, 429 `quota_exceeded` naming the limit, with `Retry-After`, when the amount
/// does not fit what is left. Rules in `ai_meter_take` (migrations/20250107100000_ai_metering.sql).
pub fn take_amount(
    platform: &dyn Platform,
    user: &AuthenticatedUser,
    meter: &Meter,
    amount: i64,
) -> Result<MeterGrant, ApiError> {
    auth::require_paid_access(platform, user)?;
    let free = meter.free.parse::<i64>(platform)?.max(0);
    let mystic = meter.mystic.parse::<i64>(platform)?.max(0);
    let answer = db::query_json(
        platform,
        "select public.ai_meter_take($1::uuid, $2, $3, $4, $5)",
        &[
            SqlParam::Uuid(user.user_id.clone()),
            SqlParam::Text(meter.name.to_string()),
            SqlParam::Int64(amount.max(0)),
            SqlParam::Int64(free),
            SqlParam::Int64(mystic),
        ],
    )
    .map_err(|e| db::report(platform, "ai_meter_take", e))?;
    let number = |key: &str| answer.get(key).and_then(Value::as_i64).unwrap_or(0);
    if answer.get("reason").and_then(Value::as_str) == Some("unknown_user") {
        return Err(ApiError::user_not_found());
    }
    match answer.get("allowed").and_then(Value::as_bool) {
        Some(true) => Ok(MeterGrant {
            meter: meter.name.to_string(),
            amount: amount.max(0),
            limit: number("limit"),
            remaining: number("remaining"),
            window_start: answer.get("window_start").and_then(Value::as_str).unwrap_or_default().to_string(),
        }),
        Some(false) => {
            let reset = number("reset_after").max(1) as u64;
            Err(ApiError::new(
                429,
                "quota_exceeded",
                format!(
                    "This call needs {amount} {unit}; {remaining} of this hour's {limit} are left. \
                     The limit resets in {minutes} minutes.",
                    unit = meter.unit,
                    remaining = number("remaining"),
                    limit = number("limit"),
                    minutes = reset.div_ceil(60),
                ),
            )
            .with_header("retry-after", reset.to_string())
            .with_field("retry_after", reset)
            .with_field("limit_name", meter.name)
            .with_field("limit", number("limit"))
            .with_field("used", number("used"))
            .with_field("requested", amount))
        }
        None => Err(ApiError::internal("The AI quota could not be checked.")),
    }
}

/// Settles a taken amount to `actual` (what the upstream reports it billed, or 0 when
/// nothing was done). Best effort: the call already happened, so a failure is logged.
pub fn settle(platform: &dyn Platform, user: &AuthenticatedUser, grant: &MeterGrant, actual: i64) {
    let delta = actual.max(0) - grant.amount;
    if delta == 0 {
        return;
    }
    let settled = db::query_json(
        platform,
        "select public.ai_meter_settle($1::uuid, $2, $3::text::timestamptz, $4)",
        &[
            SqlParam::Uuid(user.user_id.clone()),
            SqlParam::Text(grant.meter.clone()),
            SqlParam::Text(grant.window_start.clone()),
            SqlParam::Int64(delta),
        ],
    );
    if let Err(e) = settled {
        let _ = db::report(platform, "ai_meter_settle", e);
    }
}

/// The hourly allowance of AI text, in the tokens the upstream reports (`usage`).
pub const AI_TOKENS: Meter = Meter {
    name: "ai_tokens",
    unit: "AI tokens",
    free: settings::AI_TOKENS_FREE_PER_HOUR,
    mystic: settings::AI_TOKENS_MYSTIC_PER_HOUR,
};

/// Opens an AI text call (`chatgpt-chat`, `generate-script`): one token of the hourly
/// allowance is held (refused once it is used up, whatever the call would cost), and the
/// call counted against the hourly call quota. The caller settles the grant to the
/// `usage` the upstream reports ([`usage_tokens`]).
pub fn take_ai_text(platform: &dyn Platform, user: &AuthenticatedUser, endpoint: &str) -> Result<MeterGrant, ApiError> {
    let grant = take_amount(platform, user, &AI_TOKENS, 1)?;
    if let Err(e) = take(platform, user, endpoint) {
        settle(platform, user, &grant, 0);
        return Err(e);
    }
    Ok(grant)
}

/// The tokens a completion's `usage` reports: `total_tokens`, else prompt plus completion.
pub fn usage_tokens(usage: &Value) -> Option<i64> {
    let field = |k: &str| usage.get(k).and_then(Value::as_i64);
    field("total_tokens").or_else(|| Some(field("prompt_tokens")? + field("completion_tokens")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::fakes::FakePlatform;

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
        take(&platform, &user("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34"), "chatgpt-chat").unwrap();
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
        assert_eq!(platform.queries.borrow()[0].1[2], SqlParam::Int32(30));
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
