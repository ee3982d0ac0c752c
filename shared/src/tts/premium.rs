//! Paying for the premium ElevenLabs voice. The rules live in SQL
//! (`premium_tts_charge`, migrations/20250106100000_premium_voice_limits.sql): the model
//! must be a row of `premium_tts_models`, whose `token_prices` feature sets the price per
//! started block of characters; every call counts against the hourly AI quota; plan
//! `mystic` pays no tokens but has a character budget per month. This module calls it
//! before the upstream call, and gives back the tokens or the characters when the
//! upstream fails.

use serde_json::Value;

use crate::db::{self, SqlParam};
use crate::quota;
use crate::{settings, ApiError, Platform};

/// What the charge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Plan `mystic`: nothing debited; `chars` counted against the month's budget.
    Free { refund: Refund },
    /// Debited `cost` tokens under `reference`; `balance` is what is left.
    Paid { cost: i64, balance: i64, refund: Refund },
}

impl Charge {
    pub fn refund(&self) -> &Refund {
        match self {
            Charge::Free { refund } | Charge::Paid { refund, .. } => refund,
        }
    }
}

/// What to give back if the upstream fails: the tokens of a spend, or a free call's
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub user_id: String,
    pub reference: String,
    pub tokens: bool,
}

/// Whether the model was the client's choice (a refusal is their 400) or the operator's
/// default (a refusal is a configuration error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    Client,
    Default,
}

/// Counts and pays for `chars` characters of premium speech with `model` for `user_id`:
/// 400 for a model that is not offered, 429 over the hourly quota or the mystic budget,
/// 402 `insufficient_tokens` (with `balance` and `cost`) when the user cannot pay, 402
/// `account_in_debt` (with `debt`) while a refund or lost dispute leaves tokens owed.
pub fn charge(
    platform: &dyn Platform,
    user_id: &str,
    chars: usize,
    model: &str,
    source: ModelSource,
) -> Result<Charge, ApiError> {
    // A fresh reference per request: each call is its own purchase.
    let random: String = platform.random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    let reference = format!("elevenlabs-tts:{random}");
    let units =
        i32::try_from(chars).map_err(|_| ApiError::bad_request("invalid_field", "Field `text` is too long."))?;
    let calls = settings::CallQuota::from_platform(platform)?;
    let budget = settings::ELEVENLABS_MYSTIC_CHARS_PER_MONTH.parse::<i32>(platform)?.max(0);
    let answer = db::query_json(
        platform,
        "select public.premium_tts_charge($1::uuid, $2, $3, $4, $5, $6, $7)",
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Int32(units),
            SqlParam::Text(reference.clone()),
            SqlParam::Text(model.to_string()),
            SqlParam::Int32(calls.free_per_hour),
            SqlParam::Int32(calls.mystic_per_hour),
            SqlParam::Int32(budget),
        ],
    )
    .map_err(|e| db::report(platform, "premium_tts_charge", e))?;
    interpret(&answer, user_id, reference, source)
}

fn interpret(answer: &Value, user_id: &str, reference: String, source: ModelSource) -> Result<Charge, ApiError> {
    let number = |key: &str| answer.get(key).and_then(Value::as_i64).unwrap_or(0);
    let refund = |tokens: bool| Refund { user_id: user_id.to_string(), reference: reference.clone(), tokens };
    match (answer.get("ok").and_then(Value::as_bool), answer.get("reason").and_then(Value::as_str)) {
        (Some(true), _) if answer.get("charged").and_then(Value::as_bool) == Some(false) => {
            Ok(Charge::Free { refund: refund(false) })
        }
        (Some(true), _) => Ok(Charge::Paid { cost: number("cost"), balance: number("balance"), refund: refund(true) }),
        (Some(false), Some("unknown_model")) => Err(match source {
            ModelSource::Client => {
                ApiError::bad_request("invalid_field", "Field `model_id` is not one of the premium voice's models.")
            }
            ModelSource::Default => {
                ApiError::new(500, "config_invalid", "The server setting `elevenlabs_model_id` has an invalid value.")
            }
        }),
        (Some(false), Some("rate_limited")) => Err(quota::refusal(&answer["quota"])),
        (Some(false), Some("budget_exhausted")) => {
            let reset = number("reset_after").max(1) as u64;
            let mut error = ApiError::too_many_requests(
                reset,
                format!(
                    "Mystic includes {} characters of premium voice a month; {} are used and this text needs {}. \
                     The budget renews in {} days; until then, use the standard voice.",
                    number("budget"),
                    number("used"),
                    number("chars"),
                    reset.div_ceil(86_400)
                ),
            )
            .with_field("budget", number("budget"))
            .with_field("used", number("used"));
            error.code = "premium_budget_exhausted";
            Err(error)
        }
        (Some(false), Some("insufficient_tokens")) => Err(ApiError::new(
            402,
            "insufficient_tokens",
            format!(
                "This premium voice costs {} tokens for this text and you have {}; buy tokens or choose Mystic.",
                number("cost"),
                number("balance")
            ),
        )
        .with_field("balance", number("balance"))
        .with_field("cost", number("cost"))),
        (Some(false), Some("account_in_debt")) => Err(ApiError::new(
            402,
            "account_in_debt",
            format!(
                "A refunded or disputed purchase left {} tokens owed; paid features are closed until the next \
                 tokens you earn or buy have paid it.",
                number("debt")
            ),
        )
        .with_field("debt", number("debt"))
        .with_field("balance", number("balance"))),
        (Some(false), Some("unknown_user")) => Err(ApiError::user_not_found()),
        _ => Err(ApiError::internal("The premium voice could not be paid for.")),
    }
}

/// Gives a charge back. Failures are logged: the client's error answer does not change,
/// and the spend stays findable by its reference (ledger, or `premium_tts_free_calls`).
pub fn refund(platform: &dyn Platform, refund: &Refund) {
    let (function, sql) = if refund.tokens {
        ("refund_spend", "select public.refund_spend($1::uuid, $2)")
    } else {
        ("premium_tts_refund_chars", "select public.premium_tts_refund_chars($1::uuid, $2)")
    };
    let result = db::query_json(
        platform,
        sql,
        &[SqlParam::Uuid(refund.user_id.clone()), SqlParam::Text(refund.reference.clone())],
    );
    match result {
        Ok(answer) if answer.get("ok").and_then(Value::as_bool) == Some(true) => {}
        Ok(_) => platform.log(&format!("premium tts: refund of {} found nothing to refund", refund.reference)),
        Err(error) => {
            let _ = db::report(platform, function, error);
            platform.log(&format!("premium tts: refund of {} failed; refund it by hand", refund.reference));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(answer: Value) -> Result<Charge, ApiError> {
        interpret(&answer, "u", "r".into(), ModelSource::Client)
    }

    #[test]
    fn tts_premium_outcomes() {
        let free =
            serde_json::json!({"ok": true, "charged": false, "plan": "mystic", "chars": 10, "used": 10, "budget": 100});
        let tokens = |tokens| Refund { user_id: "u".into(), reference: "r".into(), tokens };
        assert_eq!(check(free).unwrap(), Charge::Free { refund: tokens(false) });
        let paid = serde_json::json!({"ok": true, "replayed": false, "charged": true, "cost": 2, "balance": 8});
        assert_eq!(check(paid).unwrap(), Charge::Paid { cost: 2, balance: 8, refund: tokens(true) });
        let short = serde_json::json!({"ok": false, "reason": "insufficient_tokens", "cost": 3, "balance": 1});
        let error = check(short).unwrap_err();
        assert_eq!((error.status, error.extra["balance"].as_i64()), (402, Some(1)));
        let debt = serde_json::json!({"ok": false, "reason": "account_in_debt", "cost": 3, "balance": 0, "debt": 90});
        let error = check(debt).unwrap_err();
        assert_eq!((error.status, error.code, error.extra["debt"].as_i64()), (402, "account_in_debt", Some(90)));
        assert_eq!(check(serde_json::json!({})).unwrap_err().status, 500);
    }

    #[test]
    fn tts_premium_limits() {
        let model = serde_json::json!({"ok": false, "reason": "unknown_model"});
        assert_eq!(check(model.clone()).unwrap_err().status, 400);
        assert_eq!(interpret(&model, "u", "r".into(), ModelSource::Default).unwrap_err().code, "config_invalid");
        let quota = serde_json::json!({"ok": false, "reason": "rate_limited",
            "quota": {"allowed": false, "limit": 30, "used": 30, "remaining": 0, "reset_after": 60}});
        let error = check(quota).unwrap_err();
        assert_eq!((error.status, error.code), (429, "rate_limited"));
        let budget = serde_json::json!({"ok": false, "reason": "budget_exhausted", "budget": 1000, "used": 900,
            "chars": 200, "reset_after": 86_400 * 3});
        let error = check(budget).unwrap_err();
        assert_eq!((error.status, error.code), (429, "premium_budget_exhausted"));
        assert!(error.headers.contains(&("retry-after".into(), (86_400 * 3).to_string())));
    }
}
