//! `POST /transcribe`: a voice message to text for the signed-in user: OpenAI, then
//! ElevenLabs, then a 503 `{"error":…, "fallback":"browser"}`. The upload's checks and
//! the chain live in `libero_shared::transcribe`.

use libero_shared::http::{ApiError, ApiRequest, ApiResponse, Endpoint, Route};
use libero_shared::transcribe::{self, Upload};
use libero_shared::{auth, Platform};

pub const ENDPOINT: Endpoint = Endpoint {
    name: "transcribe",
    routes: &[Route { method: "POST", path: "/", handler: transcribe_upload }],
    // A 25 MB recording and the form around it; anything larger is refused unread (413).
    body_limit: transcribe::MAX_BODY_BYTES,
};

fn transcribe_upload(request: &ApiRequest, platform: &dyn Platform) -> Result<ApiResponse, ApiError> {
    let user = auth::authenticate(request, platform)?;
    let upload = Upload::from_request(request)?;
    transcribe::transcribe(platform, &user, &upload)
}

libero_shared::spin_component!(ENDPOINT);
