//! Shared by the voice and transcribe test binaries: the app with OpenAI and ElevenLabs
//! pointed at fakes (wiremock on loopback), with keys the leak checks look for.
#![allow(dead_code)] // each test binary uses its own subset

use libero_tests::testing::{upstream_retries, TestApp};

pub const OPENAI_KEY: &str = "sk-test-SECRET-openai-0123";
pub const ELEVEN_KEY: &str = "xi-test-SECRET-eleven-4567";
/// Put in upstream error bodies: never to reach a client or the log.
pub const UPSTREAM_SECRET: &str = "UPSTREAM-ERROR-BODY-sk-live-leaked";

/// The fake providers' base URLs; a provider left out has no key (it is off).
pub struct Fakes {
    pub openai: Option<String>,
    pub elevenlabs: Option<String>,
}

/// The app with the providers pointed at `fakes`, two attempts per upstream call with
/// each attempt and the whole call bounded by `timeout_ms` and `deadline_ms`, then
/// `extra` variables (which override all of the above).
pub async fn spawn(fakes: Fakes, timeout_ms: u64, deadline_ms: u64, extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    TestApp::spawn_with(move |vars| {
        if let Some(url) = fakes.openai {
            vars.insert("openai_base_url".into(), url);
            vars.insert("openai_api_key".into(), OPENAI_KEY.into());
        }
        if let Some(url) = fakes.elevenlabs {
            vars.insert("elevenlabs_base_url".into(), url);
            vars.insert("elevenlabs_api_key".into(), ELEVEN_KEY.into());
        }
        upstream_retries(vars, 1000, timeout_ms, deadline_ms);
        vars.extend(extra);
    })
    .await
}
