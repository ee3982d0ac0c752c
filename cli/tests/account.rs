//! `libero account export|delete <user-id>` against a fake Stripe that records its calls
//! and a scratch database on the test cluster: the export is the endpoint's document, and
//! the deletion makes the endpoint's Stripe calls in the endpoint's order, then deletes
//! the rows (keeping the order, detached); a Stripe failure deletes nothing and a second
//! run finishes.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

mod common;
use common::ScratchDb;
use wiremock::matchers::path_regex;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_libero");
const KEY: &str = "sk_test_fake-account-key-never-printed";
const USER: &str = "6c1f9d2b-8e3a-4f4c-8d5b-2a3f4e5d6c7b";

#[derive(Clone, Default)]
struct Stripe {
    calls: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

impl Respond for Stripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let call = format!("{} {}", request.method, request.url.path());
        self.calls.lock().unwrap().push(call.clone());
        if self.down.load(Ordering::SeqCst) {
            return ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"type": "api_error", "message": "down"}}));
        }
        match call.as_str() {
            "GET /v1/subscriptions" => ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "has_more": false, "data": [{"id": "sub_cli", "object": "subscription", "status": "active"}]})),
            "DELETE /v1/subscriptions/sub_cli" => {
                ResponseTemplate::new(200).set_body_json(json!({"id": "sub_cli", "status": "canceled"}))
            }
            "DELETE /v1/customers/cus_cli" => {
                ResponseTemplate::new(200).set_body_json(json!({"id": "cus_cli", "deleted": true}))
            }
            _ => ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
                "code": "resource_missing", "message": "No such object"}})),
        }
    }
}

async fn libero(args: &[&str], stripe: &MockServer, url: &str) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("STRIPE_SECRET_KEY", KEY)
        .env("STRIPE_API_BASE", stripe.uri())
        .env("DATABASE_URL", url)
        .env_remove("SPIN_VARIABLE_STRIPE_SECRET_KEY")
        .env_remove("SPIN_VARIABLE_DATABASE_URL");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let (out, err) =
        (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string());
    assert!(!out.contains(KEY) && !err.contains(KEY), "the key is never printed");
    (output.status.success(), out, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn account_export_and_delete_from_the_command_line() {
    let db = ScratchDb::migrated("account_cli").await;
    let client = libero_cli::pg::connect(&db.url).await.unwrap();
    client
        .batch_execute(&format!(
            "insert into auth.users (id, email) values ('{USER}', 'cli@test.local');
             insert into public.custom_protocols (user_id, name) values ('{USER}', 'morning');
             insert into public.stripe_customers (user_id, customer_id) values ('{USER}', 'cus_cli');
             insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, user_id, product,
                                               tokens, status)
               values ('cs_cli', 'pi_cli', 'cus_cli', '{USER}', 'tokens-small', 10, 'completed');"
        ))
        .await
        .unwrap();
    let stripe_server = MockServer::start().await;
    let stripe = Stripe::default();
    Mock::given(path_regex("^/v1/")).respond_with(stripe.clone()).mount(&stripe_server).await;

    let (ok, out, err) = libero(&["account", "export", USER], &stripe_server, &db.url).await;
    assert!(ok, "{err}");
    let document: Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(document["user_id"], USER);
    assert_eq!(document["tables"]["custom_protocols"][0]["name"], "morning");
    assert!(stripe.calls.lock().unwrap().is_empty(), "an export does not call Stripe");

    // Stripe down: nothing deleted.
    stripe.down.store(true, Ordering::SeqCst);
    let (ok, _, err) = libero(&["account", "delete", USER], &stripe_server, &db.url).await;
    assert!(!ok);
    assert!(err.contains("502") && err.contains("nothing was deleted"), "{err}");
    let users: i64 = client.query_one("select count(*) from auth.users", &[]).await.unwrap().get(0);
    assert_eq!(users, 1);

    stripe.down.store(false, Ordering::SeqCst);
    stripe.calls.lock().unwrap().clear();
    let (ok, out, err) = libero(&["account", "delete", USER], &stripe_server, &db.url).await;
    assert!(ok, "{err}");
    assert!(out.contains("1 subscription(s) cancelled") && out.contains("1 Stripe customer(s) deleted"), "{out}");
    assert_eq!(
        *stripe.calls.lock().unwrap(),
        ["GET /v1/subscriptions", "DELETE /v1/subscriptions/sub_cli", "DELETE /v1/customers/cus_cli"]
    );
    let row = client
        .query_one(
            "select (select count(*) from auth.users), (select count(*) from public.custom_protocols),
                    (select count(*) from public.stripe_orders where user_id is null)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (0, 0, 1));

    // Again: nothing left to do, and it says so without failing.
    let (ok, out, err) = libero(&["account", "delete", USER], &stripe_server, &db.url).await;
    assert!(ok, "{err}");
    assert!(out.contains("0 subscription(s) cancelled"), "{out}");
    let (ok, _, err) = libero(&["account", "export", USER], &stripe_server, &db.url).await;
    assert!(!ok);
    assert!(err.contains("user_not_found"), "{err}");
    let (ok, _, err) = libero(&["account", "delete", "not-a-uuid"], &stripe_server, &db.url).await;
    assert!(!ok && err.contains("UUID"), "{err}");
}
