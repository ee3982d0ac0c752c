//! `POST /session-complete`: records a finished session and grants its rewards, exactly
//! once per client session id, if it could have happened (rules: `complete_session` in
//! migrations/).

use libero_shared::economy::{self, SessionCompletion};
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::validate::{self, EgoState, SessionId};
use libero_shared::{auth, Platform};
use serde::Deserialize;
use serde_json::Value;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "session-complete",
    routes: &[Route { method: "POST", path: "/", handler: complete }],
    body_limit: DEFAULT_BODY_LIMIT,
};

/// Longest session we accept: anything longer is a client bug, not a session.
const MAX_DURATION_SECONDS: i64 = 4 * 60 * 60;

/// The body as the app sends it (`duration` and `egoState` are the app's older names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    #[serde(alias = "client_session_id")]
    session_id: String,
    #[serde(alias = "egoState")]
    ego_state: String,
    action: Option<String>,
    #[serde(alias = "duration")]
    #[serde(deserialize_with = "validate::integer")]
    duration_seconds: i64,
    protocol_id: Option<String>,
    /// RFC 3339; for a completion sent after the session ended (e.g. offline). The
    /// database checks it against its own clock.
    started_at: Option<String>,
}

impl TryFrom<CompletionBody> for SessionCompletion {
    type Error = ApiError;

    fn try_from(body: CompletionBody) -> Result<Self, ApiError> {
        Ok(SessionCompletion {
            client_session_id: SessionId::parse(&body.session_id)?,
            ego_state: EgoState::parse(&body.ego_state)?,
            action: body.action.map(|a| validate::text("action", &a, 1, 64)).transpose()?,
            duration_seconds: validate::in_range("duration_seconds", body.duration_seconds, 0, MAX_DURATION_SECONDS)?
                as i32,
            protocol_id: body.protocol_id.map(|p| validate::uuid("protocol_id", &p)).transpose()?,
            started_at_ms: body.started_at.map(|t| validate::timestamp_millis("started_at", &t)).transpose()?,
        })
    }
}

fn complete(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let completion = SessionCompletion::try_from(request.json::<CompletionBody>()?)?;
    // A replay answers exactly like the first time (with `"replayed": true`), so a client
    // that retries after a lost response sees the grant it already received. A session
    // that earned nothing is a 200 too (`"rewarded": false` and the `reason`): it was
    // recorded, and the app can show it honestly.
    let document = economy::complete_session(platform, &user.user_id, &completion)?;
    Ok(ApiResponse::json(200, &Value::Object(document)))
}

libero_shared::spin_component!(ENDPOINT);
