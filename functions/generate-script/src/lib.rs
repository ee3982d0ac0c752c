//! `POST /generate-script`: an AI session script in a fixed, validated shape, or a local
//! one when the AI is not configured or fails (rules: `libero_shared::session_script`).

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::openai::{self, OpenAi};
use libero_shared::session_script::{self, ScriptRequest, Source, MAX_DURATION_MINUTES, MIN_DURATION_MINUTES};
use libero_shared::validate::{self, EgoState};
use libero_shared::{auth, quota, settings, Platform};
use serde::Deserialize;
use serde_json::json;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "generate-script",
    routes: &[Route { method: "POST", path: "/", handler: generate }],
    body_limit: DEFAULT_BODY_LIMIT,
};

const MAX_INTENT_CHARS: usize = 500;
const MAX_STYLE_CHARS: usize = 100;

/// The body (camelCase names are the app's older spellings).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    #[serde(alias = "egoState")]
    ego_state: String,
    intent: String,
    #[serde(alias = "duration", alias = "durationMinutes")]
    #[serde(deserialize_with = "validate::integer")]
    duration_minutes: i64,
    style: Option<String>,
    #[serde(alias = "protocolId", alias = "customProtocolId")]
    protocol_id: Option<String>,
}

fn generate(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let body: ScriptBody = request.json()?;
    let duration = validate::in_range(
        "duration_minutes",
        body.duration_minutes,
        MIN_DURATION_MINUTES as i64,
        MAX_DURATION_MINUTES as i64,
    )? as u32;
    let protocol_id = body.protocol_id.map(|p| validate::uuid("protocol_id", &p)).transpose()?;
    let mut script_request = ScriptRequest {
        ego_state: EgoState::parse(&body.ego_state)?,
        intent: validate::text("intent", &body.intent, 1, MAX_INTENT_CHARS)?,
        duration_minutes: duration,
        style: body.style.map(|s| validate::text("style", &s, 1, MAX_STYLE_CHARS)).transpose()?,
        protocol: None,
    };
    if let Some(protocol_id) = protocol_id {
        script_request.protocol = Some(session_script::protocol_prompt(platform, &user.user_id, &protocol_id)?);
    }

    let client = OpenAi::from_platform(platform)?;
    // Only calls that reach the AI count against the quotas; the local script is free.
    let grant = client.as_ref().map(|_| quota::take_ai_text(platform, &user, ENDPOINT.name)).transpose()?;
    let model = openai::model(platform, &settings::OPENAI_SCRIPT_MODEL);
    let (script, source, used) = session_script::generate(platform, client.as_ref(), &model, &script_request);
    if let Some(grant) = &grant {
        quota::settle(platform, &user, grant, used);
    }
    let answer = match source {
        Source::OpenAi { model } => json!({ "script": script, "source": "openai", "model": model }),
        Source::Fallback { reason } => json!({ "script": script, "source": "fallback", "reason": reason }),
    };
    Ok(ApiResponse::json(200, &answer))
}

libero_shared::spin_component!(ENDPOINT);
