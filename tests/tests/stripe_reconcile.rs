#![recursion_limit = "256"]
//! stripe-reconcile end to end: a stateful fake of Stripe's event log (`GET /v1/events`
//! with `created[...]`, `starting_after`, `ending_before`, `types[]` and `has_more`), the
//! webhook delivering some of its events, and the reconciler healing the rest into a real
//! database. Runs under the bundled host and under real Spin (`LIBERO_RUNTIME=spin`).

mod stripe_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use serde_json::{json, Value};
use stripe_support::*;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const RECONCILE: &str = "/functions/v1/stripe-reconcile";

/// Stripe's event log: events in the order they happened; lists newest first.
#[derive(Clone, Default)]
struct EventLog {
    events: Arc<Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    lists: Arc<AtomicUsize>,
}

impl EventLog {
    fn push(&self, event: Value) {
        self.events.lock().unwrap().push(event);
    }
}

impl Respond for EventLog {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return ResponseTemplate::new(500).set_body_json(json!({"error": {"type": "api_error",
                "message": "An unknown error occurred"}}));
        }
        let mut types = Vec::new();
        let (mut gte, mut lte, mut lt) = (i64::MIN, i64::MAX, i64::MAX);
        let (mut limit, mut after, mut before) = (10usize, None, None);
        for (k, v) in request.url.query_pairs() {
            match k.as_ref() {
                "types[]" => types.push(v.to_string()),
                "created[gte]" => gte = v.parse().unwrap(),
                "created[lte]" => lte = v.parse().unwrap(),
                "created[lt]" => lt = v.parse().unwrap(),
                "limit" => limit = v.parse().unwrap(),
                "starting_after" => after = Some(v.to_string()),
                "ending_before" => before = Some(v.to_string()),
                other => panic!("unexpected list parameter {other}"),
            }
        }
        assert!(limit <= 100 && types.len() <= 20, "Stripe's limits");
        // Newest first, filtered.
        let listed: Vec<Value> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|e| types.is_empty() || types.iter().any(|t| t == e["type"].as_str().unwrap()))
            .filter(|e| {
                let c = e["created"].as_i64().unwrap();
                c >= gte && c <= lte && c < lt
            })
            .cloned()
            .collect();
        let position = |id: &str| listed.iter().position(|e| e["id"] == id);
        let (data, has_more) = match (after, before) {
            (Some(id), None) => {
                let Some(at) = position(&id) else { return missing(&id) };
                let rest = &listed[at + 1..];
                (rest.iter().take(limit).cloned().collect::<Vec<_>>(), rest.len() > limit)
            }
            (None, Some(id)) => {
                // The page just before (newer than) the cursor, still newest first.
                let Some(at) = position(&id) else { return missing(&id) };
                let newer = &listed[..at];
                let from = newer.len().saturating_sub(limit);
                (newer[from..].to_vec(), from > 0)
            }
            (None, None) => (listed.iter().take(limit).cloned().collect(), listed.len() > limit),
            (Some(_), Some(_)) => panic!("starting_after and ending_before together"),
        };
        ResponseTemplate::new(200).set_body_json(json!({"object": "list", "url": "/v1/events",
            "has_more": has_more, "data": data}))
    }
}

fn missing(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
        "code": "resource_missing", "message": format!("No such event: '{id}'")}}))
}

async fn with_log(app: &StripeApp) -> EventLog {
    let log = EventLog::default();
    Mock::given(method("GET")).and(path("/v1/events")).respond_with(log.clone()).mount(&app.stripe).await;
    log
}

/// A paid token order's `checkout.session.completed`, `age` seconds old.
fn paid_order(user: Uuid, age: i64) -> Value {
    let mut e = event("checkout.session.completed", checkout_session(user, "tokens-small", "payment", "paid"));
    e["created"] = json!(now() - age);
    e
}

fn service_token(app: &StripeApp) -> String {
    let now = now();
    app.token_with_claims(
        json!({"iss": "supabase", "ref": "test", "role": "service_role", "iat": now, "exp": now + 600}),
    )
}

async fn reconcile_at(app: &StripeApp, base: &str, body: Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{base}{RECONCILE}"))
        .bearer_auth(service_token(app))
        .json(&body)
        .send()
        .await
        .expect("reconcile request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn reconcile(app: &StripeApp, body: Value) -> (u16, Value) {
    reconcile_at(app, &app.url(""), body).await
}

async fn cursor(app: &StripeApp) -> Option<String> {
    app.db_client()
        .await
        .query_opt("SELECT anchor_event_id FROM public.stripe_reconcile_state", &[])
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

fn counts(answer: &Value) -> (u64, u64, u64, u64, bool) {
    let n = |k: &str| answer[k].as_u64().unwrap_or(u64::MAX);
    (n("seen"), n("applied"), n("duplicate"), n("ignored"), answer["more"].as_bool().unwrap())
}

const CREDIT: i32 = 110; // tokens-small: 100 + 10 bonus

#[tokio::test]
async fn missed_events_are_applied_and_delivered_ones_are_duplicates() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let (delivered_to, missed_by) = (app.create_user().await, app.create_user().await);
    let delivered = paid_order(delivered_to, 120);
    let missed = paid_order(missed_by, 60);
    log.push(delivered.clone());
    log.push(missed.clone());
    // An event type the webhook does not handle is not even listed.
    log.push(event("payment_intent.created", json!({"id": "pi_1", "object": "payment_intent"})));
    assert_eq!(deliver(&app, &delivered).await.0, 200);

    // Only the project's server jobs may run it, and a refused call touches nothing.
    let url = app.url(RECONCILE);
    let user_token = app.token_for(delivered_to);
    for (token, status, code) in
        [(None, 401, "missing_token"), (Some(user_token.as_str()), 403, "service_role_required")]
    {
        let mut request = app.client.post(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let (status, answer) = reconcile(&app, json!({"max_events": 0})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_body")), "{answer}");
    assert_eq!(log.lists.load(Ordering::SeqCst), 0, "nothing asked of Stripe");

    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(counts(&answer), (2, 1, 1, 0, false), "{answer}");
    assert_eq!(answer["cursor"]["event_id"], missed["id"], "{answer}");
    assert_eq!(app.tokens_of(delivered_to).await, CREDIT);
    assert_eq!(app.tokens_of(missed_by).await, CREDIT);
    app.assert_ledger_consistent().await;

    // Again: the overlap window looks at both again, and both are duplicates now.
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (2, 0, 2, 0, false)), "{answer}");
    // The webhook delivering the healed event late changes nothing either.
    let (_, late) = deliver(&app, &missed).await;
    assert_eq!(late["outcome"], "duplicate", "{late}");
    assert_eq!(app.tokens_of(missed_by).await, CREDIT);
    app.assert_ledger_consistent().await;
}

/// How the credential is sent: `Authorization: Bearer`, `apikey`, or both.
async fn reconcile_with(app: &StripeApp, bearer: Option<&str>, apikey: Option<&str>) -> (u16, Option<String>) {
    let mut request = app.client.post(app.url(RECONCILE)).json(&json!({"max_events": 1}));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(key) = apikey {
        request = request.header("apikey", key);
    }
    let response = request.send().await.expect("reconcile request");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    (status, answer["error"]["code"].as_str().map(str::to_string))
}

/// Supabase's new server keys: a secret key in `supabase_secret_keys` runs the reconciler
/// from either header (supabase-js sends a new-format key only as `apikey` when it has no
/// session), a key rotated out of the list and the publishable key do not, and the legacy
/// `service_role` JWT keeps working beside them.
#[tokio::test]
async fn secret_keys_run_the_reconciler_and_the_publishable_key_does_not() {
    const CURRENT: &str = "sb_secret_current0123456789abcdefghijklmnop";
    const NEXT: &str = "sb_secret_next0123456789abcdefghijklmnopqrs";
    const ROTATED_OUT: &str = "sb_secret_old0123456789abcdefghijklmnopqrst";
    const PUBLISHABLE: &str = "sb_publishable_0123456789abcdefghijklmnopq";
    let app = spawn_with(|vars| {
        vars.insert("supabase_secret_keys".into(), format!("{CURRENT}, {NEXT}"));
    })
    .await;
    let log = with_log(&app).await;
    let user = app.create_user().await;
    let user_token = app.token_for(user);
    let legacy = service_token(&app);

    let ok = (200, None);
    let refused = |status: u16, code: &str| (status, Some(code.to_string()));
    for (what, bearer, apikey, expected) in [
        ("secret key as Bearer", Some(CURRENT), None, ok.clone()),
        ("secret key as apikey", None, Some(CURRENT), ok.clone()),
        ("the second key of the list", None, Some(NEXT), ok.clone()),
        ("publishable apikey beside a secret Bearer", Some(CURRENT), Some(PUBLISHABLE), ok.clone()),
        ("legacy service_role JWT", Some(legacy.as_str()), None, ok.clone()),
        ("legacy service_role JWT as apikey", None, Some(legacy.as_str()), ok.clone()),
        ("a rotated-out secret key", Some(ROTATED_OUT), None, refused(401, "invalid_api_key")),
        ("a rotated-out secret key as apikey", None, Some(ROTATED_OUT), refused(401, "invalid_api_key")),
        ("a secret key's prefix", None, Some("sb_secret_current"), refused(401, "invalid_api_key")),
        ("publishable key as apikey", None, Some(PUBLISHABLE), refused(403, "secret_key_required")),
        ("publishable key as Bearer", Some(PUBLISHABLE), None, refused(403, "secret_key_required")),
        ("a user's session", Some(user_token.as_str()), Some(PUBLISHABLE), refused(403, "service_role_required")),
        ("nothing", None, None, refused(401, "missing_token")),
    ] {
        let lists_before = log.lists.load(Ordering::SeqCst);
        assert_eq!(reconcile_with(&app, bearer, apikey).await, expected, "{what}");
        // An accepted run lists Stripe's events; a refused one asks nothing of it.
        let listed = log.lists.load(Ordering::SeqCst) > lists_before;
        assert_eq!(listed, expected.0 == 200, "{what}: Stripe asked");
    }

    // Without any secret key configured, a secret key is refused like a wrong one.
    let without = spawn().await;
    let (status, answer) = {
        let response = without.client.post(without.url(RECONCILE)).header("apikey", CURRENT).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{answer}");

    // A secret key is not a user: a user endpoint says so, and creates no session.
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(CURRENT)
        .header("apikey", CURRENT)
        .json(&json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 300 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "wrong_role", "{answer}");
    assert_eq!(count(&app.app, "SELECT count(*) FROM public.sessions").await, 0);
}

#[tokio::test]
async fn the_cursor_pages_forward_across_has_more_and_survives_restarts() {
    let app = spawn().await;
    let log = with_log(&app).await;
    // More than one page (the reconciler asks for 40 at a time), all missed.
    let users: Vec<Uuid> = join_all((0..45).map(|_| app.create_user())).await;
    for (i, user) in users.iter().enumerate() {
        log.push(paid_order(*user, 3600 - i as i64));
    }
    let last = log.events.lock().unwrap().last().unwrap()["id"].clone();

    // A bounded run stops with `more`, and the cursor is stored past what it handled.
    let (status, answer) = reconcile(&app, json!({"max_events": 10})).await;
    assert_eq!((status, counts(&answer)), (200, (10, 10, 0, 0, true)), "{answer}");
    let stored = cursor(&app).await.expect("a cursor");
    assert_eq!(answer["cursor"]["event_id"], stored.as_str());

    // A new instance of the app (a restart, or another replica) carries on from there.
    let restarted = start_instance(&app.variables).await;
    let (status, answer) = reconcile_at(&app, &restarted.url(""), json!({"max_events": 1000})).await;
    assert_eq!(status, 200, "{answer}");
    let (seen, applied, duplicate, ignored, more) = counts(&answer);
    assert_eq!((applied, ignored, more), (35, 0, false), "{answer}");
    assert!(seen - duplicate == 35, "only the overlap comes again: {answer}");
    assert_eq!(answer["cursor"]["event_id"], last, "{answer}");
    for user in &users {
        assert_eq!(app.tokens_of(*user).await, CREDIT);
    }
    app.assert_ledger_consistent().await;

    // New events after the cursor: only they are applied.
    let late_user = app.create_user().await;
    log.push(paid_order(late_user, 0));
    let (_, answer) = reconcile(&app, json!({})).await;
    assert_eq!(answer["applied"], 1, "{answer}");
    assert_eq!(app.tokens_of(late_user).await, CREDIT);
}

#[tokio::test]
async fn stripe_failures_answer_502_and_leave_the_cursor() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let first = app.create_user().await;
    log.push(paid_order(first, 300));
    let (status, _) = reconcile(&app, json!({})).await;
    assert_eq!(status, 200);
    let before = cursor(&app).await.expect("a cursor");

    let second = app.create_user().await;
    log.push(paid_order(second, 10));
    log.failing.store(true, Ordering::SeqCst);
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("stripe_error")), "{answer}");
    assert_eq!(cursor(&app).await.as_deref(), Some(before.as_str()), "the cursor stays");
    assert_eq!(app.tokens_of(second).await, 0);

    log.failing.store(false, Ordering::SeqCst);
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(1)), "{answer}");
    assert_eq!(app.tokens_of(second).await, CREDIT);
    assert_ne!(cursor(&app).await, Some(before));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn concurrent_reconcilers_and_live_deliveries_apply_each_event_once() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let users: Vec<Uuid> = join_all((0..8).map(|_| app.create_user())).await;
    let events: Vec<Value> = users.iter().enumerate().map(|(i, u)| paid_order(*u, 600 - i as i64)).collect();
    for e in &events {
        log.push(e.clone());
    }
    // Two reconcilers and the webhook delivering every event (twice), all at once.
    let runs = join_all((0..2).map(|_| reconcile(&app, json!({}))));
    let deliveries = join_all(events.iter().chain(events.iter()).map(|e| deliver(&app, e)));
    let (runs, deliveries) = tokio::join!(runs, deliveries);
    let mut applied = 0;
    for (status, answer) in &runs {
        assert_eq!(*status, 200, "{answer}");
        applied += answer["applied"].as_u64().unwrap();
    }
    let delivered_applied = deliveries
        .iter()
        .inspect(|(status, answer)| assert_eq!(*status, 200, "{answer}"))
        .filter(|(_, answer)| answer["outcome"] == "applied")
        .count() as u64;
    assert_eq!(applied + delivered_applied, 8, "each event applied once in all: {runs:?}");
    for user in &users {
        assert_eq!(app.tokens_of(*user).await, CREDIT);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 8);
    assert_eq!(count(&app, "SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase'").await, 8);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn stale_subscription_reads_are_refreshed_from_stripe() {
    let app = spawn().await;
    with_log(&app).await;
    let user = app.create_user().await;
    // A customer whose subscription events were all lost: no subscription stored.
    app.db_client()
        .await
        .execute("INSERT INTO public.stripe_customers (user_id, customer_id) VALUES ($1, 'cus_Rlost')", &[&user])
        .await
        .unwrap();
    let mut active = subscription("sub_1Qlost", user, "active", false);
    active["customer"] = json!("cus_Rlost");
    let listed = Arc::new(AtomicUsize::new(0));
    let counter = listed.clone();
    Mock::given(method("GET"))
        .and(path("/v1/subscriptions"))
        .respond_with(move |request: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert!(request.url.query().unwrap().contains("customer=cus_Rlost"));
            ResponseTemplate::new(200)
                .set_body_json(json!({"object": "list", "has_more": false, "data": [active.clone()]}))
        })
        .mount(&app.stripe)
        .await;

    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["subscriptions"], json!({"customers_checked": 1, "written": 1}), "{answer}");
    let plan: String = app
        .db_client()
        .await
        .query_one("SELECT plan FROM public.user_profiles WHERE id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "mystic");
    // Fresh now: the next run does not ask again.
    let (_, answer) = reconcile(&app, json!({})).await;
    assert_eq!(answer["subscriptions"]["customers_checked"], 0, "{answer}");
    assert_eq!(listed.load(Ordering::SeqCst), 1);
}
