//! The `account` endpoint end to end: the export (every table that holds a user's rows,
//! and only theirs) and the deletion (Stripe billing stopped first against a fake Stripe
//! that records its calls, personal rows gone, financial records kept detached, retries,
//! races, and Stripe's late events for the deleted customer). Runs under the bundled host
//! and under real Spin (`LIBERO_RUNTIME=spin`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::stripe_support::*;
use futures_util::future::join_all;
use libero_tests::sql::{as_role, assert_denied};
use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::path_regex;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const EXPORT: &str = "/functions/v1/account/export";
const ACCOUNT: &str = "/functions/v1/account";
const CONFIRM: &str = "delete my account";

/// Stripe's subscriptions and customers, as far as a deletion touches them; every call
/// is recorded as "METHOD /path".
/// A subscription at the fake Stripe: (customer, status, user).
type FakeSubscription = (String, String, Uuid);

#[derive(Clone, Default)]
struct FakeStripe {
    calls: Arc<Mutex<Vec<String>>>,
    /// id → its subscription
    subscriptions: Arc<Mutex<HashMap<String, FakeSubscription>>>,
    deleted_customers: Arc<Mutex<HashSet<String>>>,
    /// Every call answers 500.
    down: Arc<AtomicBool>,
    /// Only deleting a customer answers 500.
    customer_delete_fails: Arc<AtomicBool>,
}

fn missing(what: &str) -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
        "code": "resource_missing", "message": format!("No such {what}")}}))
}

fn server_error() -> ResponseTemplate {
    ResponseTemplate::new(500).set_body_json(json!({"error": {"type": "api_error", "message": "An unknown error"}}))
}

impl FakeStripe {
    fn add_subscription(&self, id: &str, customer: &str, status: &str, user: Uuid) {
        self.subscriptions.lock().unwrap().insert(id.into(), (customer.into(), status.into(), user));
    }

    fn subscription_json(&self, id: &str) -> Option<Value> {
        let (customer, status, user) = self.subscriptions.lock().unwrap().get(id).cloned()?;
        let mut object = subscription(id, user, &status, false);
        object["customer"] = json!(customer);
        Some(object)
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn status_of(&self, id: &str) -> String {
        self.subscriptions.lock().unwrap()[id].1.clone()
    }

    async fn mount(&self, app: &StripeApp) {
        Mock::given(path_regex("^/v1/(subscriptions|customers)")).respond_with(self.clone()).mount(&app.stripe).await;
    }
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let method = request.method.to_string();
        let path = request.url.path().to_string();
        self.calls.lock().unwrap().push(format!("{method} {path}"));
        if self.down.load(Ordering::SeqCst) {
            return server_error();
        }
        if let Some(id) = path.strip_prefix("/v1/customers/") {
            if method != "DELETE" {
                return missing("route");
            }
            if self.customer_delete_fails.load(Ordering::SeqCst) {
                return server_error();
            }
            if !self.deleted_customers.lock().unwrap().insert(id.to_string()) {
                return missing("customer");
            }
            return ResponseTemplate::new(200).set_body_json(json!({"id": id, "object": "customer", "deleted": true}));
        }
        if path == "/v1/subscriptions" && method == "GET" {
            let query: HashMap<String, String> = request.url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
            assert_eq!(query.get("status").map(String::as_str), Some("all"), "every status is listed");
            let customer = query.get("customer").expect("listed by customer").clone();
            let ids: Vec<String> = if self.deleted_customers.lock().unwrap().contains(&customer) {
                Vec::new()
            } else {
                let subscriptions = self.subscriptions.lock().unwrap();
                let mut ids: Vec<String> =
                    subscriptions.iter().filter(|(_, s)| s.0 == customer).map(|(id, _)| id.clone()).collect();
                ids.sort();
                ids
            };
            let data: Vec<Value> = ids.iter().filter_map(|id| self.subscription_json(id)).collect();
            return ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": data,
                "has_more": false, "url": "/v1/subscriptions"}));
        }
        if let Some(id) = path.strip_prefix("/v1/subscriptions/") {
            match method.as_str() {
                "GET" => {}
                "DELETE" => {
                    let mut subscriptions = self.subscriptions.lock().unwrap();
                    let Some(subscription) = subscriptions.get_mut(id) else { return missing("subscription") };
                    if subscription.1 == "canceled" {
                        // As Stripe does: a cancelled subscription cannot be cancelled again.
                        return ResponseTemplate::new(400).set_body_json(json!({"error": {
                            "type": "invalid_request_error", "message": "This subscription is already canceled."}}));
                    }
                    subscription.1 = "canceled".into();
                }
                _ => return missing("route"),
            }
            return match self.subscription_json(id) {
                Some(object) => ResponseTemplate::new(200).set_body_json(object),
                None => missing("subscription"),
            };
        }
        missing("route")
    }
}

/// The app with the fake Stripe mounted.
async fn app() -> (StripeApp, FakeStripe) {
    let app = spawn().await;
    let stripe = FakeStripe::default();
    stripe.mount(&app).await;
    (app, stripe)
}

async fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn export(app: &TestApp, user: Uuid) -> (u16, Value) {
    request(app, reqwest::Method::GET, EXPORT, Some(&app.token_for(user)), None).await
}

async fn delete(app: &TestApp, user: Uuid) -> (u16, Value) {
    request(app, reqwest::Method::DELETE, ACCOUNT, Some(&app.token_for(user)), Some(json!({"confirm": CONFIRM}))).await
}

async fn complete_session(app: &TestApp, user: Uuid) -> (u16, Value) {
    let body = json!({"session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 600});
    request(app, reqwest::Method::POST, "/functions/v1/session-complete", Some(&app.token_for(user)), Some(body)).await
}

/// Every base table with a `user_id` column, as `schema.table` (`public.` left off, as
/// the export names them).
async fn user_tables(app: &TestApp) -> Vec<String> {
    app.db_client()
        .await
        .query(
            "select case when c.table_schema = 'public' then c.table_name::text
                         else c.table_schema || '.' || c.table_name end
               from information_schema.columns c
               join information_schema.tables t using (table_schema, table_name)
              where c.column_name = 'user_id' and t.table_type = 'BASE TABLE'
                and c.table_schema not in ('pg_catalog', 'information_schema')
              order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rows naming `user` in every table that can: the user_id tables, the auth user and the
/// profile.
async fn rows_naming(app: &TestApp, user: Uuid) -> HashMap<String, i64> {
    let client = app.db_client().await;
    let mut counts = HashMap::new();
    for table in user_tables(app).await {
        let sql = format!("select count(*) from {table} where user_id = $1");
        counts.insert(table, client.query_one(&sql, &[&user]).await.unwrap().get(0));
    }
    for (name, sql) in [
        ("auth.users", "select count(*) from auth.users where id = $1"),
        ("user_profiles", "select count(*) from public.user_profiles where id = $1"),
    ] {
        counts.insert(name.to_string(), client.query_one(sql, &[&user]).await.unwrap().get(0));
    }
    counts
}

/// What a user with a history has: a session (with its rewards), a protocol, a purchase
/// (order, ledger row, a dispute on it), a Stripe customer and a live subscription
/// (also at the fake Stripe, with an old cancelled one), AI and premium-voice usage.
struct Seeded {
    customer: String,
    payment_intent: String,
    subscription: String,
}

async fn seed(app: &StripeApp, stripe: &FakeStripe, user: Uuid) -> Seeded {
    let (status, body) = complete_session(app, user).await;
    assert_eq!(status, 200, "{body}");
    app.grant_tokens(user, 25).await;
    let customer = random_id("cus");
    let payment_intent = random_id("pi_3Q");
    let subscription = random_id("sub_1Q");
    let old_subscription = random_id("sub_1Q");
    app.db_client()
        .await
        .batch_execute(&format!(
            "insert into public.custom_protocols (user_id, name) values ('{user}', 'evening');
             insert into public.stripe_customers (user_id, customer_id) values ('{user}', '{customer}');
             insert into public.stripe_subscriptions (subscription_id, customer_id, user_id, status, stripe_updated_at)
               values ('{subscription}', '{customer}', '{user}', 'active', now());
             insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, user_id, product,
                                               tokens, amount_total, currency, payment_status, status)
               values ('{}', '{payment_intent}', '{customer}', '{user}', 'tokens-small', 25, 499, 'usd', 'paid', 'completed');
             insert into public.stripe_disputes (dispute_id, payment_intent_id, status, closed)
               values ('{}', '{payment_intent}', 'won', true);
             insert into public.ai_usage (user_id, endpoint, window_start, count)
               values ('{user}', 'chatgpt-chat', date_trunc('hour', now()), 3);
             insert into public.premium_tts_usage (user_id, period_start, chars)
               values ('{user}', date_trunc('month', now()), 120);
             insert into public.premium_tts_free_calls (user_id, reference, period_start, chars)
               values ('{user}', 'tts-ref-1', date_trunc('month', now()), 120);
             insert into public.ai_meter_usage (user_id, meter, window_start, used)
               values ('{user}', 'tts_chars', date_trunc('hour', now()), 400);
             insert into public.token_debts (user_id, amount) values ('{user}', 0);
             insert into public.stripe_checkout_sessions (session_id, user_id, product, mode)
               values ('{}', '{user}', 'tokens-small', 'payment');
             insert into public.push_subscriptions (user_id, endpoint, p256dh, auth)
               values ('{user}', 'https://fcm.googleapis.com/fcm/send/{user}', repeat('B', 87), repeat('a', 22));",
            random_id("cs_test_a1"),
            random_id("dp_1Q"),
            random_id("cs_test_b2"),
        ))
        .await
        .expect("seeding");
    stripe.add_subscription(&subscription, &customer, "active", user);
    stripe.add_subscription(&old_subscription, &customer, "canceled", user);
    Seeded { customer, payment_intent, subscription }
}

#[tokio::test]
async fn the_export_holds_every_table_with_the_users_rows_and_no_one_elses() {
    let (app, stripe) = app().await;
    let (user, other) = (app.create_user().await, app.create_user().await);
    let mine = seed(&app, &stripe, user).await;
    let theirs = seed(&app, &stripe, other).await;

    let (status, body) = export(&app, user).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["format"], 1);
    assert_eq!(body["user_id"], user.to_string());
    assert!(body["exported_at"].is_string());
    let tables = body["tables"].as_object().expect("tables");

    // Every table that holds a user's rows is in the export, with this user's rows.
    let mut expected = user_tables(&app).await;
    assert!(expected.len() >= 10, "{expected:?}");
    expected.extend(["auth.users".to_string(), "user_profiles".to_string()]);
    for table in &expected {
        let rows = tables.get(table).and_then(Value::as_array).unwrap_or_else(|| panic!("the export has no {table}"));
        assert!(!rows.is_empty(), "{table}: the user's rows are missing");
        for row in rows {
            let owner = row.get("user_id").or_else(|| row.get("id")).unwrap();
            assert_eq!(owner, &json!(user.to_string()), "{table}: {row}");
        }
    }
    assert_eq!(tables["stripe_disputes"].as_array().unwrap().len(), 1);
    assert_eq!(tables["stripe_orders"][0]["payment_intent_id"], mine.payment_intent);
    assert_eq!(tables["stripe_subscriptions"][0]["subscription_id"], mine.subscription);

    // Nothing of the other user's.
    let text = body.to_string();
    for theirs in [other.to_string(), theirs.customer, theirs.payment_intent, theirs.subscription] {
        assert!(!text.contains(&theirs), "the export shows another user's {theirs}");
    }

    // Only the server calls the export: not a signed-in client, not another user's id.
    let mut client = app.db_client().await;
    for role in ["authenticated", "anon"] {
        let sql = format!("select public.account_export('{other}')");
        assert_denied(as_role(&mut client, role, Some(user), &sql).await, role);
    }
    let (status, body) = request(&app, reqwest::Method::GET, EXPORT, None, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_token")), "{body}");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn deleting_cancels_the_subscription_then_deletes_the_customer_then_the_rows() {
    let (app, stripe) = app().await;
    let (user, other) = (app.create_user().await, app.create_user().await);
    let seeded = seed(&app, &stripe, user).await;
    seed(&app, &stripe, other).await;
    let others_rows = rows_naming(&app, other).await;

    // Without the confirmation, nothing happens.
    for body in [json!({}), json!({"confirm": "yes"}), json!({"confirm": true})] {
        let (status, answer) =
            request(&app, reqwest::Method::DELETE, ACCOUNT, Some(&app.token_for(user)), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let code = answer["error"]["code"].as_str().unwrap();
        assert!(code == "confirmation_required" || code == "invalid_body", "{body}: {answer}");
    }
    assert!(stripe.calls().is_empty());
    assert!(rows_naming(&app, user).await.values().all(|n| *n > 0));

    let (status, body) = delete(&app, user).await;
    assert_eq!((status, &body), (200, &json!({"deleted": true})));
    assert_eq!(
        stripe.calls(),
        [
            "GET /v1/subscriptions".to_string(),
            format!("DELETE /v1/subscriptions/{}", seeded.subscription),
            format!("DELETE /v1/customers/{}", seeded.customer),
        ]
    );
    assert_eq!(stripe.status_of(&seeded.subscription), "canceled");

    // Nothing names the user any more; the financial records are kept, detached.
    let left = rows_naming(&app, user).await;
    assert!(left.values().all(|n| *n == 0), "{left:?}");
    let db = app.db_client().await;
    let kept = |sql: &'static str| {
        let db = &db;
        let customer = seeded.customer.clone();
        async move { db.query_one(sql, &[&customer]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(kept("select count(*) from stripe_orders where customer_id = $1 and user_id is null").await, 1);
    assert_eq!(kept("select count(*) from stripe_subscriptions where customer_id = $1 and user_id is null").await, 1);
    let detached_ledger: Vec<(String, i32)> = db
        .query("select reason::text, delta from token_ledger where user_id is null", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(detached_ledger, [("purchase".to_string(), 25)], "only the money rows are kept");
    assert_eq!(rows_naming(&app, other).await, others_rows, "the other user is untouched");

    // Again: the same answer, and nothing more in Stripe.
    let (status, body) = delete(&app, user).await;
    assert_eq!((status, &body), (200, &json!({"deleted": true})));
    assert_eq!(stripe.calls().len(), 3);

    // The token no longer reaches an account, and nothing recreates one.
    let (status, body) = export(&app, user).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("user_not_found")), "{body}");
    let (status, body) = complete_session(&app, user).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("user_not_found")), "{body}");
    assert!(rows_naming(&app, user).await.values().all(|n| *n == 0));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn stripe_down_deletes_nothing_and_a_retry_finishes_whatever_step_failed() {
    let (app, stripe) = app().await;
    let user = app.create_user().await;
    let seeded = seed(&app, &stripe, user).await;
    let before = rows_naming(&app, user).await;

    // Stripe unreachable: a 502, nothing cancelled, nothing deleted.
    stripe.down.store(true, Ordering::SeqCst);
    let (status, body) = delete(&app, user).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("stripe_error")), "{body}");
    assert_eq!(rows_naming(&app, user).await, before);
    assert_eq!(stripe.status_of(&seeded.subscription), "active");
    stripe.down.store(false, Ordering::SeqCst);

    // Stopped between the cancellation and the customer's deletion: still nothing deleted.
    stripe.customer_delete_fails.store(true, Ordering::SeqCst);
    let (status, body) = delete(&app, user).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("stripe_error")), "{body}");
    assert_eq!(stripe.status_of(&seeded.subscription), "canceled");
    assert_eq!(rows_naming(&app, user).await, before);
    stripe.customer_delete_fails.store(false, Ordering::SeqCst);

    // The retry finishes: the customer deleted, then the rows.
    let (status, body) = delete(&app, user).await;
    assert_eq!((status, &body), (200, &json!({"deleted": true})));
    assert!(stripe.deleted_customers.lock().unwrap().contains(&seeded.customer));
    assert!(rows_naming(&app, user).await.values().all(|n| *n == 0));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn concurrent_deletes_of_one_account_all_answer_the_same() {
    let (app, stripe) = app().await;
    let user = app.create_user().await;
    let seeded = seed(&app, &stripe, user).await;
    let answers = join_all((0..8).map(|_| delete(&app, user))).await;
    for (status, body) in &answers {
        assert_eq!((*status, body), (200, &json!({"deleted": true})));
    }
    assert_eq!(stripe.status_of(&seeded.subscription), "canceled");
    assert!(stripe.deleted_customers.lock().unwrap().contains(&seeded.customer));
    assert!(rows_naming(&app, user).await.values().all(|n| *n == 0));
    assert_eq!(count(&app, "select count(*) from stripe_orders where user_id is null").await, 1);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_session_completion_racing_the_deletion_never_brings_the_user_back() {
    let (app, _stripe) = app().await;
    let bystander = app.create_user().await;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let user = app.create_user().await;
        let (status, _) = complete_session(&app, user).await;
        assert_eq!(status, 200);
        let ((completed, body), (deleted, _)) = tokio::join!(complete_session(&app, user), delete(&app, user));
        assert_eq!(deleted, 200);
        // Before the deletion (recorded, then deleted with the rest) or after it (no user).
        match completed {
            200 => {}
            404 => assert_eq!(body["error"]["code"], "user_not_found", "{body}"),
            other => panic!("session-complete answered {other}: {body}"),
        }
        outcomes.push(completed);
        assert!(rows_naming(&app, user).await.values().all(|n| *n == 0), "{outcomes:?}");
    }
    let (status, _) = complete_session(&app, bystander).await;
    assert_eq!(status, 200);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn late_stripe_events_for_a_deleted_customer_are_recorded_and_recreate_nothing() {
    let (app, stripe) = app().await;
    let user = app.create_user().await;
    let seeded = seed(&app, &stripe, user).await;
    let (status, _) = delete(&app, user).await;
    assert_eq!(status, 200);

    let mut subscription_deleted = subscription(&seeded.subscription, user, "canceled", false);
    subscription_deleted["customer"] = json!(seeded.customer);
    let mut invoice = invoice(&seeded.subscription, "paid");
    invoice["customer"] = json!(seeded.customer);
    let mut purchase = checkout_session(user, "tokens-small", "payment", "paid");
    purchase["customer"] = json!(seeded.customer);
    let charge = random_id("ch_3Q");
    let events = [
        event("charge.refunded", refunded_charge(&charge, &seeded.payment_intent, 499, 499)),
        event(
            "charge.dispute.created",
            dispute(&random_id("dp_1Q"), &charge, &seeded.payment_intent, 499, "needs_response"),
        ),
        event("invoice.paid", invoice),
        event("customer.subscription.deleted", subscription_deleted),
        event("customer.deleted", json!({"id": seeded.customer, "object": "customer", "deleted": true})),
        event("checkout.session.completed", purchase),
    ];
    for event in &events {
        let (status, body) = deliver(&app, event).await;
        assert_eq!(status, 200, "{}: {body}", event["type"]);
    }
    let ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let recorded: i64 = app
        .db_client()
        .await
        .query_one("select count(*) from stripe_events where event_id = any($1) and outcome is not null", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, events.len() as i64, "every late event is recorded");
    assert!(rows_naming(&app, user).await.values().all(|n| *n == 0));
    assert_eq!(count(&app, "select count(*) from stripe_customers").await, 0);
    assert_eq!(
        count(&app, "select count(*) from stripe_orders where user_id is null and tokens_reversed = 0").await,
        1
    );
    assert_eq!(count(&app, "select count(*) from token_ledger where user_id is not null").await, 0);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_guest_exports_and_deletes_without_stripe() {
    // No Stripe settings at all: a user without a customer does not need them.
    let app = TestApp::spawn().await;
    let guest = app.create_user().await;
    let now = chrono::Utc::now().timestamp();
    let token = app.token_with_claims(json!({"sub": guest.to_string(), "aud": "authenticated",
        "role": "authenticated", "is_anonymous": true, "iat": now, "exp": now + 3600}));
    let (status, body) = complete_session(&app, guest).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(&app, reqwest::Method::GET, EXPORT, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tables"]["sessions"].as_array().unwrap().len(), 1);
    let (status, body) =
        request(&app, reqwest::Method::DELETE, "/account", Some(&token), Some(json!({"confirm": CONFIRM}))).await;
    assert_eq!((status, &body), (200, &json!({"deleted": true})));
    assert!(rows_naming(&app, guest).await.values().all(|n| *n == 0));
    // Only GET on the export, only DELETE on the account.
    let (status, _) = request(&app, reqwest::Method::POST, EXPORT, Some(&token), None).await;
    assert_eq!(status, 405);
    let (status, _) = request(&app, reqwest::Method::GET, ACCOUNT, Some(&token), None).await;
    assert_eq!(status, 405);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_malformed_or_unauthorised_deletion_deletes_nothing() {
    let (app, stripe) = app().await;
    let user = app.create_user().await;
    seed(&app, &stripe, user).await;
    let before = rows_naming(&app, user).await;
    let token = app.token_for(user);
    let now = chrono::Utc::now().timestamp();
    let expired = app.token_with_claims(json!({"sub": user.to_string(), "aud": "authenticated",
        "role": "authenticated", "iat": now - 7200, "exp": now - 3600}));
    let good = json!({"confirm": CONFIRM}).to_string();
    // (what, token, content type, body, status, code)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no token", None, "application/json", good.clone(), 401, "missing_token"),
        ("expired token", Some(&expired), "application/json", good.clone(), 401, "token_expired"),
        ("not JSON", Some(&token), "application/json", "confirm=delete".into(), 400, "invalid_body"),
        ("empty", Some(&token), "application/json", String::new(), 400, "empty_body"),
        ("a form", Some(&token), "application/x-www-form-urlencoded", good.clone(), 415, "unsupported_media_type"),
        (
            "an unknown field",
            Some(&token),
            "application/json",
            json!({"confirm": CONFIRM, "user_id": Uuid::new_v4().to_string()}).to_string(),
            400,
            "invalid_body",
        ),
        (
            "too large",
            Some(&token),
            "application/json",
            json!({"confirm": CONFIRM, "pad": "x".repeat(4096)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (name, token, content_type, body, status, code) in cases {
        let mut request = app.client.delete(app.url(ACCOUNT)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect(name);
        let got = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{name}: {answer}");
    }
    assert!(stripe.calls().is_empty(), "nothing reached Stripe");
    assert_eq!(rows_naming(&app, user).await, before, "nothing was deleted");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_heavy_users_export_comes_in_one_piece() {
    // 5,000 sessions: a year and more at the daily cap, about 3 MB of JSON.
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    app.db_client()
        .await
        .batch_execute(&format!(
            "insert into public.sessions (user_id, client_session_id, ego_state, duration, experience_gained,
                                          tokens_awarded, request_fingerprint, result, completed_at, local_date)
             select '{user}', gen_random_uuid(), 'guardian', 600, 30, 2, md5(g::text),
                    jsonb_build_object('success', true, 'experience_gained', 30, 'tokens_awarded', 2),
                    now() - make_interval(mins => g * 30), current_date
               from generate_series(1, 5000) g"
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = app.client.get(app.url(EXPORT)).bearer_auth(app.token_for(user)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap();
    let elapsed = started.elapsed();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["tables"]["sessions"].as_array().unwrap().len(), 5000);
    eprintln!("export of 5,000 sessions: {} KiB in {elapsed:?}", bytes.len() / 1024);
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}
