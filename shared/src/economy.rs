//! The token economy as the endpoints see it. The rules themselves (rewards, prices,
//! streaks) live in one place each: the SQL functions in `migrations/`, which apply them
//! atomically in one statement. This module names those calls and their outcomes.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::db::{self, SqlParam};
use crate::validate::{EgoState, SessionId};
use crate::{ApiError, Platform};

/// A finished session as the client reports it, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCompletion {
    pub client_session_id: SessionId,
    pub ego_state: EgoState,
    pub action: Option<String>,
    pub duration_seconds: i32,
    pub protocol_id: Option<String>,
    /// When the session started (ms since the epoch), if the app says so; otherwise it
    /// ended when the completion arrived.
    pub started_at_ms: Option<i64>,
}

impl SessionCompletion {
    /// Identifies the request's content, so a retry (same id, same content) can be told
    /// apart from a different request reusing the id.
    /// Without `started_at` it is the v1 form, so a completion recorded before
    /// `started_at` existed is still replayed, not taken for a conflict.
    pub fn fingerprint(&self) -> String {
        let mut fingerprint = format!(
            "v1|{}|{}|{}|{}",
            self.ego_state,
            self.action.as_deref().unwrap_or(""),
            self.duration_seconds,
            self.protocol_id.as_deref().unwrap_or("")
        );
        if let Some(started_at_ms) = self.started_at_ms {
            fingerprint.push_str(&format!("|started_at_ms={started_at_ms}"));
        }
        fingerprint
    }
}

/// `complete_session`'s answer, by its `outcome`.
#[derive(Debug, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum CompletionAnswer {
    /// Recorded now (`created`), or before with the same content (`replayed`, the first
    /// answer with `"replayed": true`). The document says whether it earned rewards
    /// (`rewarded`, and if not the `reason`), what they were, and the new totals.
    #[serde(rename = "created", alias = "replayed")]
    Recorded(Map<String, Value>),
    Conflict,
    UnknownProtocol,
    ForbiddenProtocol,
    InvalidStartedAt {
        problem: Option<String>,
        #[serde(default)]
        clock_tolerance_seconds: i64,
        #[serde(default)]
        late_window_seconds: i64,
    },
    UnknownUser,
}

/// The call `complete_session` makes (public for the benchmark's same-statement floor).
pub const COMPLETE_SESSION_SQL: &str =
    "select public.complete_session($1, $2, $3, $4, $5, $6, $7, to_timestamp($8::int8 / 1000.0))";

/// Records the session and grants its rewards, exactly once per client session id. Whether
/// a session earns anything (no overlap with the user's rewarded sessions, the daily caps)
/// is decided by `complete_session` in the same statement.
pub fn complete_session(
    platform: &dyn Platform,
    user_id: &str,
    completion: &SessionCompletion,
) -> Result<Map<String, Value>, ApiError> {
    let optional_uuid = |v: &Option<String>| v.clone().map(SqlParam::Uuid).unwrap_or(SqlParam::Null);
    let result = db::query_json(
        platform,
        COMPLETE_SESSION_SQL,
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Uuid(completion.client_session_id.as_str().to_string()),
            SqlParam::Text(completion.ego_state.to_string()),
            completion.action.clone().map(SqlParam::Text).unwrap_or(SqlParam::Null),
            SqlParam::Int32(completion.duration_seconds),
            optional_uuid(&completion.protocol_id),
            SqlParam::Text(completion.fingerprint()),
            completion.started_at_ms.map(SqlParam::Int64).unwrap_or(SqlParam::Null),
        ],
    )
    .map_err(|e| db::report(platform, "complete_session", e))?;

    let answer =
        serde_json::from_value(result).map_err(|_| ApiError::internal("The session could not be recorded."))?;
    match answer {
        CompletionAnswer::Recorded(document) => Ok(document),
        CompletionAnswer::Conflict => Err(ApiError::conflict(
            "session_conflict",
            "This session id was already completed with different details; use a new session id.",
        )),
        CompletionAnswer::UnknownProtocol => {
            Err(ApiError::not_found("protocol_not_found", "No custom protocol has that protocol_id."))
        }
        CompletionAnswer::ForbiddenProtocol => {
            Err(ApiError::forbidden("protocol_forbidden", "That custom protocol belongs to another user."))
        }
        CompletionAnswer::InvalidStartedAt { problem, clock_tolerance_seconds, late_window_seconds } => {
            let (code, message) = match problem.as_deref() {
                Some("in_future") => (
                    "session_in_future",
                    format!(
                        "Field `started_at` plus `duration_seconds` is more than {} minutes later than now: \
                         report a session once it has ended (check the device's clock).",
                        clock_tolerance_seconds / 60
                    ),
                ),
                Some("too_old") => (
                    "session_too_old",
                    format!(
                        "The session ended more than {} hours ago; such a session can no longer be reported.",
                        late_window_seconds / 3600
                    ),
                ),
                _ => (
                    "invalid_field",
                    "Field `started_at`: the session ended before the account was created.".to_string(),
                ),
            };
            Err(ApiError::bad_request(code, message))
        }
        CompletionAnswer::UnknownUser => Err(ApiError::user_not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::fakes::FakePlatform;

    fn completion(started_at_ms: Option<i64>) -> SessionCompletion {
        SessionCompletion {
            client_session_id: SessionId::parse("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34").unwrap(),
            ego_state: EgoState::parse("guardian").unwrap(),
            action: Some("calm".into()),
            duration_seconds: 600,
            protocol_id: None,
            started_at_ms,
        }
    }

    #[test]
    fn fingerprints_without_started_at_keep_their_first_form() {
        // Completions recorded before `started_at` existed must still replay.
        assert_eq!(completion(None).fingerprint(), "v1|guardian|calm|600|");
        assert_eq!(
            completion(Some(1_736_152_200_000)).fingerprint(),
            "v1|guardian|calm|600||started_at_ms=1736152200000"
        );
    }

    #[test]
    fn started_at_goes_to_the_database_and_its_refusals_are_400s() {
        for (problem, code, words) in [
            ("in_future", "session_in_future", "more than 5 minutes later than now"),
            ("too_old", "session_too_old", "more than 72 hours ago"),
            ("before_account", "invalid_field", "before the account"),
        ] {
            let platform = FakePlatform::with_vars(&[]);
            let answer = format!(
                r#"{{"outcome":"invalid_started_at","problem":"{problem}","clock_tolerance_seconds":300,"late_window_seconds":259200}}"#
            );
            platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(answer.into_bytes())]]));
            let error =
                complete_session(&platform, "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34", &completion(Some(42))).unwrap_err();
            assert_eq!((error.status, error.code), (400, code), "{problem}");
            assert!(error.message.contains(words), "{problem}: {}", error.message);
            assert_eq!(platform.queries.borrow()[0].1[7], SqlParam::Int64(42));
        }
    }
}
