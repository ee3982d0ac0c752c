//! Paying for the premium ElevenLabs voice (issue 6). The rule, free for plan `mystic`,
//! otherwise the `elevenlabs_tts` price per started block of characters, lives in SQL
//! (`premium_tts_charge` and `token_prices`); this module calls it before the upstream
//! call and `refund_spend` when the upstream fails.

use serde_json::Value;

use crate::db::{self, SqlParam};
use crate::{ApiError, Platform};

/// What the charge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Plan `mystic`: nothing debited.
    Free,
    /// Debited `cost` tokens under `reference`; `balance` is what is left.
    Paid { cost: i64, balance: i64, refund: Refund },
}

/// A debit to give back if the upstream fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub user_id: String,
    pub reference: String,
}

/// Debits `user_id` for `chars` characters of premium speech (nothing on plan mystic).
/// 402 `insufficient_tokens` with `balance` and `cost` when the user cannot pay.
pub fn charge(platform: &dyn Platform, user_id: &str, chars: usize) -> Result<Charge, ApiError> {
    // A fresh reference per request: each call is its own purchase.
    let random: String = platform.random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    let reference = format!("elevenlabs-tts:{random}");
    let units = i32::try_from(chars).map_err(|_| ApiError::bad_request("invalid_field", "Field `text` is too long."))?;
    let answer = db::query_json(
        platform,
        "select public.premium_tts_charge($1::uuid, $2, $3)",
        &[SqlParam::Uuid(user_id.to_string()), SqlParam::Int32(units), SqlParam::Text(reference.clone())],
    )
    .map_err(|e| db::report(platform, "premium_tts_charge", e))?;
    interpret(&answer, Refund { user_id: user_id.to_string(), reference })
}

fn interpret(answer: &Value, refund: Refund) -> Result<Charge, ApiError> {
    let number = |key: &str| answer.get(key).and_then(Value::as_i64).unwrap_or(0);
    match (answer.get("ok").and_then(Value::as_bool), answer.get("reason").and_then(Value::as_str)) {
        (Some(true), _) if answer.get("charged").and_then(Value::as_bool) == Some(false) => Ok(Charge::Free),
        (Some(true), _) => Ok(Charge::Paid { cost: number("cost"), balance: number("balance"), refund }),
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
        (Some(false), Some("unknown_user")) => {
            Err(ApiError::not_found("user_not_found", "The signed-in user has no account in this project."))
        }
        _ => Err(ApiError::internal("The premium voice could not be paid for.")),
    }
}

/// Gives a debit back. Failures are logged: the client's error answer does not change,
/// and the spend stays findable in the ledger by its reference.
pub fn refund(platform: &dyn Platform, refund: &Refund) {
    let result = db::query_json(
        platform,
        "select public.refund_spend($1::uuid, $2)",
        &[SqlParam::Uuid(refund.user_id.clone()), SqlParam::Text(refund.reference.clone())],
    );
    match result {
        Ok(answer) if answer.get("ok").and_then(Value::as_bool) == Some(true) => {}
        Ok(_) => platform.log(&format!("premium tts: refund of {} found no spend", refund.reference)),
        Err(error) => {
            let _ = db::report(platform, "refund_spend", error);
            platform.log(&format!("premium tts: refund of {} failed; refund it by hand", refund.reference));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund() -> Refund {
        Refund { user_id: "u".into(), reference: "r".into() }
    }

    #[test]
    fn tts_premium_outcomes() {
        let free = serde_json::json!({"ok": true, "charged": false, "plan": "mystic", "cost": 0});
        assert_eq!(interpret(&free, refund()).unwrap(), Charge::Free);
        let paid = serde_json::json!({"ok": true, "replayed": false, "charged": true, "cost": 2, "balance": 8});
        assert_eq!(interpret(&paid, refund()).unwrap(), Charge::Paid { cost: 2, balance: 8, refund: refund() });
        let short = serde_json::json!({"ok": false, "reason": "insufficient_tokens", "cost": 3, "balance": 1});
        let error = interpret(&short, refund()).unwrap_err();
        assert_eq!((error.status, error.extra["balance"].as_i64()), (402, Some(1)));
        assert_eq!(interpret(&serde_json::json!({}), refund()).unwrap_err().status, 500);
    }
}
