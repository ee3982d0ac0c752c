//! supabase-js, as the apps and server jobs use it, against the served app (bundled host
//! or real Spin): `functions.invoke` with Supabase's new API keys, with and without a
//! user session. The client is the real `@supabase/supabase-js` from npm
//! (`tests/supabase-js/`, installed by this test with `npm ci` on first use; needs Node 20+
//! and npm), driven by `tests/supabase-js/invoke.mjs`.
//!
//! - With a session (the publishable key as `apikey`, the user's token as Bearer), user
//!   endpoints serve the user; without one, they answer 401 whether the client sends the
//!   publishable key as Bearer too (the pinned release) or only as `apikey` (newer ones).
//! - A client made with a secret key runs the reconciler, both ways; the publishable key
//!   gets 403 `secret_key_required`, a user's session 403 `service_role_required`.
//! - A secret key is not a user: a user endpoint answers 401 `wrong_role`.

use std::path::PathBuf;
use std::process::Command;

use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PUBLISHABLE: &str = "sb_publishable_libero0123456789abcdefghijk";
const SECRET: &str = "sb_secret_libero0123456789abcdefghijklmnopq";

fn client_dir() -> PathBuf {
    libero_tests::repo_root().join("tests/supabase-js")
}

/// `npm ci` once per checkout (the lock file pins supabase-js and its dependencies).
fn install_supabase_js() {
    let dir = client_dir();
    if dir.join("node_modules/@supabase/supabase-js/package.json").is_file() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("npm (Node 20+ and npm are needed for the supabase-js test)");
    assert!(status.success(), "npm ci in tests/supabase-js failed: {status}");
}

#[tokio::test]
async fn supabase_js_functions_invoke_with_new_api_keys() {
    install_supabase_js();
    let stripe = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/events"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [], "has_more": false})),
        )
        .mount(&stripe)
        .await;
    let stripe_uri = stripe.uri();
    let app = TestApp::spawn_with(|vars| {
        vars.insert("stripe_api_base".into(), stripe_uri);
        vars.insert("stripe_secret_key".into(), "sk_test_supabase_js".into());
        vars.insert("supabase_secret_keys".into(), SECRET.into());
    })
    .await;
    let user = app.create_user().await;
    let token = app.token_for(user);

    let output = tokio::process::Command::new("node")
        .arg("invoke.mjs")
        .current_dir(client_dir())
        .env("LIBERO_URL", app.url(""))
        .env("PUBLISHABLE_KEY", PUBLISHABLE)
        .env("SECRET_KEY", SECRET)
        .env("ACCESS_TOKEN", &token)
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "invoke.mjs: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let answers: Vec<(String, Value, Value)> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|a| (a["call"].as_str().unwrap_or_default().to_string(), a["status"].clone(), a["code"].clone()))
        .collect();
    let expected = [
        ("signed_in_session_complete", json!(200), Value::Null),
        ("signed_in_insights", json!(200), Value::Null),
        ("anonymous_session_complete", json!(401), json!("wrong_role")),
        ("anonymous_apikey_only_insights", json!(401), json!("missing_token")),
        ("server_reconcile", json!(200), Value::Null),
        ("server_apikey_only_reconcile", json!(200), Value::Null),
        ("publishable_reconcile", json!(403), json!("secret_key_required")),
        ("publishable_apikey_only_reconcile", json!(403), json!("secret_key_required")),
        ("signed_in_reconcile", json!(403), json!("service_role_required")),
        ("server_session_complete", json!(401), json!("wrong_role")),
    ];
    let expected: Vec<(String, Value, Value)> =
        expected.into_iter().map(|(call, status, code)| (call.to_string(), status, code)).collect();
    assert_eq!(answers, expected, "{stdout}");

    // Exactly the signed-in completion was recorded, for the user.
    let sessions: i64 = app
        .db_client()
        .await
        .query_one("SELECT count(*) FROM public.sessions WHERE user_id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 1);
    app.assert_ledger_consistent().await;
}
