//! The token economy as the endpoints see it. The rules themselves (rewards, prices,
//! streaks) live in one place each: the SQL functions in `migrations/`, which apply them
//! atomically in one statement. This module names those calls and their outcomes.

use serde_json::{Map, Value};

use crate::db::{self, SqlParam};
use crate::{ApiError, Platform};

/// A finished session as the client reports it, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCompletion {
    pub client_session_id: String,
    pub ego_state: String,
    pub action: Option<String>,
    pub duration_seconds: i32,
    pub protocol_id: Option<String>,
}

impl SessionCompletion {
    /// Identifies the request's content, so a retry (same id, same content) can be told
    /// apart from a different request reusing the id.
    pub fn fingerprint(&self) -> String {
        format!(
            "v1|{}|{}|{}|{}",
            self.ego_state,
            self.action.as_deref().unwrap_or(""),
            self.duration_seconds,
            self.protocol_id.as_deref().unwrap_or("")
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompletionOutcome {
    /// Rewards granted now; the document describes them and the new totals.
    Created(Map<String, Value>),
    /// This id was completed before with the same content: the first answer, nothing new.
    Replayed(Map<String, Value>),
}

/// Records the session and grants its rewards, exactly once per client session id.
pub fn complete_session(
    platform: &dyn Platform,
    user_id: &str,
    completion: &SessionCompletion,
) -> Result<CompletionOutcome, ApiError> {
    let optional_uuid = |v: &Option<String>| v.clone().map(SqlParam::Uuid).unwrap_or(SqlParam::Null);
    let result = db::query_json(
        platform,
        "select public.complete_session($1, $2, $3, $4, $5, $6, $7)",
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Uuid(completion.client_session_id.clone()),
            SqlParam::Text(completion.ego_state.clone()),
            completion.action.clone().map(SqlParam::Text).unwrap_or(SqlParam::Null),
            SqlParam::Int32(completion.duration_seconds),
            optional_uuid(&completion.protocol_id),
            SqlParam::Text(completion.fingerprint()),
        ],
    )
    .map_err(|e| db::report(platform, "complete_session", e))?;

    let Value::Object(mut document) = result else {
        return Err(ApiError::internal("The session could not be recorded."));
    };
    let outcome = document.remove("outcome").and_then(|o| o.as_str().map(str::to_string));
    match outcome.as_deref() {
        Some("created") => Ok(CompletionOutcome::Created(document)),
        Some("replayed") => Ok(CompletionOutcome::Replayed(document)),
        Some("conflict") => Err(ApiError::conflict(
            "session_conflict",
            "This session id was already completed with different details; use a new session id.",
        )),
        Some("unknown_protocol") => {
            Err(ApiError::not_found("protocol_not_found", "No custom protocol has that protocol_id."))
        }
        Some("forbidden_protocol") => {
            Err(ApiError::forbidden("protocol_forbidden", "That custom protocol belongs to another user."))
        }
        Some("unknown_user") => Err(ApiError::not_found(
            "user_not_found",
            "The signed-in user has no account in this project.",
        )),
        _ => Err(ApiError::internal("The session could not be recorded.")),
    }
}
