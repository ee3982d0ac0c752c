//! `POST /ai-hypnosis`: a short line of in-session guidance and the suggested next phase,
//! from the AI or, when it is unavailable, from a static per-phase set
//! (`libero_shared::guidance`).

use libero_shared::guidance::{self, HypnosisRequest};
use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route, DEFAULT_BODY_LIMIT};
use libero_shared::openai::{self, OpenAi};
use libero_shared::session_script::Phase;
use libero_shared::validate::{self, EgoState};
use libero_shared::{auth, quota, settings, Platform};
use serde::Deserialize;
use serde_json::json;

pub const ENDPOINT: Endpoint = Endpoint {
    name: "ai-hypnosis",
    routes: &[Route { method: "POST", path: "/", handler: hypnosis }],
    body_limit: DEFAULT_BODY_LIMIT,
};

const MAX_INPUT_CHARS: usize = 500;
/// "Short history": the last few lines are all the model needs for continuity.
const MAX_HISTORY: usize = 10;
const MAX_HISTORY_LINE_CHARS: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HypnosisBody {
    #[serde(alias = "egoState")]
    ego_state: String,
    #[serde(alias = "currentPhase", alias = "current_phase")]
    phase: String,
    #[serde(default, alias = "userInput")]
    user_input: Option<String>,
    #[serde(default)]
    history: Vec<String>,
}

impl TryFrom<HypnosisBody> for HypnosisRequest {
    type Error = ApiError;

    fn try_from(body: HypnosisBody) -> Result<Self, ApiError> {
        let phase = Phase::parse(&body.phase).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "Field `phase` must be one of induction, deepening, suggestion, integration, emergence.",
            )
        })?;
        if body.history.len() > MAX_HISTORY {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("Field `history` may hold at most {MAX_HISTORY} lines."),
            ));
        }
        let history = body
            .history
            .iter()
            .enumerate()
            .map(|(i, line)| validate::text(&format!("history[{i}]"), line, 1, MAX_HISTORY_LINE_CHARS))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HypnosisRequest {
            ego_state: EgoState::parse(&body.ego_state)?,
            phase,
            user_input: body
                .user_input
                .filter(|s| !s.trim().is_empty())
                .map(|s| validate::text("user_input", &s, 1, MAX_INPUT_CHARS))
                .transpose()?,
            history,
        })
    }
}

fn hypnosis(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let input = HypnosisRequest::try_from(request.json::<HypnosisBody>()?)?;
    let client = OpenAi::from_platform(platform)?;
    // Only calls that reach the AI count against the quota; static lines are free.
    if client.is_some() {
        quota::take(platform, &user, ENDPOINT.name)?;
    }
    let model = openai::model(platform, &settings::OPENAI_CHAT_MODEL);
    let step = guidance::guide(platform, client.as_ref(), &model, &input);
    let mut answer = json!({
        "guidance": step.text,
        "phase": input.phase,
        "next_phase": step.next_phase,
    });
    match step.source {
        Ok(model) => {
            answer["source"] = json!("openai");
            answer["model"] = json!(model);
        }
        Err(reason) => {
            answer["source"] = json!("fallback");
            answer["reason"] = json!(reason);
        }
    }
    Ok(ApiResponse::json(200, &answer))
}

libero_shared::spin_component!(ENDPOINT);
