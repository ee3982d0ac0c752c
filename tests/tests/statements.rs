//! One statement per request on the paths that change money or progress (design.md, "One
//! statement per atomic change"): a session completion, a verified webhook delivery and
//! a premium spend each send exactly one SQL statement (a function call), so a failure or
//! trap can never leave half a change on a pooled connection, and each is one round trip.
//! The bundled host counts every `spin:postgres` `query`/`execute` its components make
//! (`RunningApp::db_statements`); real Spin has no such counter, so under
//! `LIBERO_RUNTIME=spin` these tests fail, or with `LIBERO_ALLOW_SKIPS=1` (never in CI)
//! say so and skip (`host_only`): they are not in `scripts/test.sh`'s real-Spin list.

use crate::stripe_support::{checkout_session, deliver, event};
use libero_tests::testing::{host_only, Runtime, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Statements the components have sent so far.
fn statements(app: &TestApp) -> u64 {
    match &app.app {
        Runtime::Host(host) => host.db_statements(),
        Runtime::Spin(_) => unreachable!("host_only() skips these tests under Spin"),
    }
}

/// Runs `request` and returns how many statements it sent.
async fn counted<T>(app: &TestApp, request: impl std::future::Future<Output = T>) -> (u64, T) {
    let before = statements(app);
    let out = request.await;
    (statements(app) - before, out)
}

async fn complete(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("session-complete request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn session_complete_is_one_statement_rewarded_unrewarded_or_replayed() {
    if host_only("counts statements in the host's spin:postgres binding") {
        return;
    }
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let token = app.token_for(user);
    let first = json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 600 });
    let (n, (status, answer)) = counted(&app, complete(&app, &token, &first)).await;
    assert_eq!((status, answer["rewarded"].as_bool()), (200, Some(true)), "{answer}");
    assert_eq!(n, 1, "a rewarded completion: {n} statements");

    // Ends now too, so it overlaps the first: recorded, not rewarded.
    let overlapping = json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "sage", "duration_seconds": 300 });
    let (n, (status, answer)) = counted(&app, complete(&app, &token, &overlapping)).await;
    assert_eq!((status, answer["rewarded"].as_bool()), (200, Some(false)), "{answer}");
    assert_eq!(n, 1, "an unrewarded completion: {n} statements");

    let (n, (status, answer)) = counted(&app, complete(&app, &token, &first)).await;
    assert_eq!((status, answer["replayed"].as_bool()), (200, Some(true)), "{answer}");
    assert_eq!(n, 1, "a replay: {n} statements");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn verified_webhook_delivery_is_one_statement_applied_or_duplicate() {
    if host_only("counts statements in the host's spin:postgres binding") {
        return;
    }
    let app = crate::stripe_support::spawn().await;
    let user = app.create_user().await;
    let paid = event("checkout.session.completed", checkout_session(user, "tokens-small", "payment", "paid"));
    // The webhook reads the session's line items from (fake) Stripe over HTTP first: no
    // statement; then applies the event in one.
    let (n, (status, answer)) = counted(&app, deliver(&app, &paid)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(n, 1, "an applied purchase: {n} statements");
    let (n, (status, answer)) = counted(&app, deliver(&app, &paid)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("duplicate")), "{answer}");
    assert_eq!(n, 1, "a duplicate delivery: {n} statements");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn premium_spend_is_one_statement() {
    if host_only("counts statements in the host's spin:postgres binding") {
        return;
    }
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/text-to-speech/[A-Za-z0-9]+/stream$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/mpeg")
                .set_body_bytes(b"ID3 statements".to_vec()),
        )
        .mount(&eleven)
        .await;
    let app = TestApp::spawn_with(|vars| {
        vars.insert("elevenlabs_base_url".into(), eleven.uri());
        vars.insert("elevenlabs_api_key".into(), "xi-statements-key-0001".into());
    })
    .await;
    let user = app.create_user().await;
    app.grant_tokens(user, 5).await;
    let request = async {
        let response = app
            .client
            .post(app.url("/functions/v1/elevenlabs-tts-proxy"))
            .bearer_auth(app.token_for(user))
            .json(&json!({ "text": "one statement, please" }))
            .send()
            .await
            .expect("premium request");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("the audio"))
    };
    let (n, (status, audio)) = counted(&app, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&audio));
    assert_eq!(n, 1, "a paid premium call (quota, price, balance and debit together): {n} statements");
    assert_eq!(app.tokens_of(user).await, 4);
    app.assert_ledger_consistent().await;
}
