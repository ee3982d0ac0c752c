//! A user's custom protocol as input to a generated script.

use crate::db::{SqlParam, SqlValue};
use crate::{db, ApiError, Platform};

/// Each protocol field given to the model is cut to this many characters: enough to
/// carry the user's intent, and it bounds the prompt's cost.
const MAX_FIELD_CHARS: usize = 2_000;

/// The text of protocol `protocol_id` for the prompt. 404 when there is no such
/// protocol, 403 when it is another user's.
pub fn protocol_prompt(platform: &dyn Platform, user_id: &str, protocol_id: &str) -> Result<String, ApiError> {
    // An unknown id is a row of nulls: see `db::query_row` for why a statement never
    // finds nothing.
    let row = db::query_row(
        platform,
        "select p.user_id = $2::uuid, p.name, p.description, p.induction, p.deepener
           from (values (1)) as one (n)
           left join public.custom_protocols as p on p.id = $1::uuid",
        &[SqlParam::Uuid(protocol_id.to_string()), SqlParam::Uuid(user_id.to_string())],
    )
    .map_err(|e| db::report(platform, "custom_protocols", e))?;
    match row.first() {
        Some(SqlValue::Bool(true)) => {}
        Some(SqlValue::Bool(false)) => {
            return Err(ApiError::forbidden("protocol_forbidden", "That custom protocol belongs to another user."))
        }
        _ => return Err(ApiError::not_found("protocol_not_found", "No custom protocol has that protocol_id.")),
    }
    let mut prompt = String::new();
    for (label, value) in ["Name", "Description", "Induction", "Deepener"].iter().zip(row.iter().skip(1)) {
        if let SqlValue::Text(text) = value {
            let text: String = text.trim().chars().take(MAX_FIELD_CHARS).collect();
            if !text.is_empty() {
                prompt.push_str(&format!("{label}: {text}\n"));
            }
        }
    }
    Ok(prompt)
}
