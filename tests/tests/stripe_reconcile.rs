//! stripe-reconcile end to end: a stateful fake of Stripe's event log (`GET /v1/events`
//! with `created[...]`, `starting_after`, `ending_before`, `types[]` and `has_more`), the
//! webhook delivering some of its events, and the reconciler healing the rest into a real
//! database. Runs under the bundled host and under real Spin (`LIBERO_RUNTIME=spin`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stripe_support::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

const RECONCILE: &str = "/functions/v1/stripe-reconcile";

async fn with_log(app: &StripeApp) -> EventLog {
    serve_event_log(&app.stripe).await
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

    // Again: nothing new, and nothing has settled yet (both are younger than the overlap
    // window), so nothing is applied and the run says so.
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (0, 0, 0, 0, false)), "{answer}");
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
    let last = log.last().unwrap()["id"].clone();

    // A bounded run stops with `more`, and the cursor is stored past what it handled.
    let (status, answer) = reconcile(&app, json!({"max_events": 10})).await;
    assert_eq!((status, counts(&answer)), (200, (10, 10, 0, 0, true)), "{answer}");
    let stored = cursor(&app).await.expect("a cursor");
    assert_eq!(answer["cursor"]["event_id"], stored.as_str());

    // A new instance of the app (a restart, or another replica) carries on from there,
    // with the same small budget: each run applies its ten and moves on.
    let restarted = start_instance(&app.variables).await;
    let mut runs = Vec::new();
    loop {
        let (status, answer) = reconcile_at(&app, &restarted.url(""), json!({"max_events": 10})).await;
        assert_eq!(status, 200, "{answer}");
        runs.push(counts(&answer));
        if !answer["more"].as_bool().unwrap() {
            assert_eq!(answer["cursor"]["event_id"], last, "{answer}");
            break;
        }
        assert!(runs.len() < 10, "{runs:?}");
    }
    assert_eq!(runs, [(10, 10, 0, 0, true), (10, 10, 0, 0, true), (10, 10, 0, 0, true), (5, 5, 0, 0, false)]);
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

/// An event of `kind` about some object, `age` seconds old.
fn other_event(kind: &str, age: i64) -> Value {
    let mut e = event(kind, json!({"id": random_id("obj_1Q"), "object": kind.split('.').next().unwrap()}));
    e["created"] = json!(now() - age);
    e
}

/// Records events as the webhook does when it handled them, in one statement (the
/// deliveries that did arrive).
async fn record_delivered(app: &StripeApp, events: &[Value]) {
    let ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let types: Vec<String> = events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    let created: Vec<i64> = events.iter().map(|e| e["created"].as_i64().unwrap()).collect();
    app.db_client()
        .await
        .execute(
            "INSERT INTO public.stripe_events (event_id, type, created, outcome)
             SELECT id, t, to_timestamp(c), 'applied' FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(id, t, c)",
            &[&ids, &types, &created],
        )
        .await
        .unwrap();
}

/// The stored positions: (head event, head created, settled event, settled created).
async fn positions(app: &StripeApp) -> (Option<String>, Option<i64>, Option<String>, Option<i64>) {
    app.db_client()
        .await
        .query_opt(
            "SELECT anchor_event_id, anchor_created, settled_event_id, settled_created FROM public.stripe_reconcile_state",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap_or_default()
}

const HANDLED_KINDS: [&str; 4] = ["price.updated", "customer.subscription.updated", "invoice.paid", "product.updated"];
const OTHER_KINDS: [&str; 4] = ["payment_intent.created", "charge.succeeded", "customer.updated", "balance.available"];

#[tokio::test]
async fn a_burst_of_handled_events_never_holds_back_a_later_purchase() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let early = app.create_user().await;
    log.push(paid_order(early, 3000));
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (1, 1, 0, 0, false)), "{answer}");

    // A burst of 260 price, subscription and invoice events within a few minutes, across
    // the settling line, all delivered; then a purchase whose delivery was lost.
    let burst: Vec<Value> = (0..260).map(|i| other_event(HANDLED_KINDS[i % 4], 720 - i as i64 / 2)).collect();
    log.extend(burst.clone());
    record_delivered(&app, &burst).await;
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (260, 0, 260, 0, false)), "{answer}");
    assert!(answer["requests"].as_u64().unwrap() <= 4, "three pages of 100 and a look below: {answer}");

    let lost_to = app.create_user().await;
    let lost = paid_order(lost_to, 30);
    log.push(lost.clone());
    // The smallest budget there is: the purchase is the next thing the run reads.
    // (Burst events that have settled since the last run are read once more, as
    // duplicates, free against the budget.)
    let (status, answer) = reconcile(&app, json!({"max_events": 1, "max_seconds": 1})).await;
    let (seen, applied, duplicate, ignored, more) = counts(&answer);
    assert_eq!((status, seen - duplicate, applied, ignored, more), (200, 1, 1, 0, false), "{answer}");
    assert_eq!(answer["cursor"]["event_id"], lost["id"], "{answer}");
    assert_eq!(app.tokens_of(lost_to).await, CREDIT);
    // And again: nothing left, in two requests (what is new, and what has settled).
    let (status, answer) = reconcile(&app, json!({"max_events": 1, "max_seconds": 1})).await;
    let (seen, applied, duplicate, _, more) = counts(&answer);
    assert_eq!((status, seen - duplicate, applied, more), (200, 0, 0, false), "{answer}");
    assert!(answer["requests"].as_u64().unwrap() <= 2, "{answer}");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_first_run_on_a_busy_account_keeps_its_progress() {
    let app = spawn().await;
    let log = with_log(&app).await;
    // 30 days of a busy account: 6,000 events, one in five of a type the webhook handles
    // (delivered), and 12 paid orders whose deliveries were lost, spread through the window.
    let span = RETENTION_SECS - 7200;
    let mut delivered = Vec::new();
    let mut all = Vec::new();
    for i in 0..6000i64 {
        let age = span - i * span / 6000;
        let e = if i % 5 == 0 {
            other_event(HANDLED_KINDS[(i / 5) as usize % 4], age)
        } else {
            other_event(OTHER_KINDS[i as usize % 4], age)
        };
        if i % 5 == 0 {
            delivered.push(e.clone());
        }
        all.push(e);
    }
    let users: Vec<Uuid> = join_all((0..12).map(|_| app.create_user())).await;
    for (k, user) in users.iter().enumerate() {
        all.push(paid_order(*user, span - 1 - k as i64 * span / 12));
    }
    log.extend(all);
    record_delivered(&app, &delivered).await;
    // Each page takes a while, and each run has a second: the first run cannot read the
    // window, and must keep what it read.
    log.set_delay(Duration::from_millis(150));
    let mut runs = 0;
    loop {
        let before = positions(&app).await;
        let (status, answer) = reconcile(&app, json!({"max_seconds": 1})).await;
        assert_eq!(status, 200, "{answer}");
        runs += 1;
        if !answer["more"].as_bool().unwrap() {
            break;
        }
        assert_ne!(positions(&app).await, before, "run {runs} made no progress: {answer}");
        assert!(runs < 30, "{answer}");
    }
    for user in &users {
        assert_eq!(app.tokens_of(*user).await, CREDIT);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase'").await, 12);
    app.assert_ledger_consistent().await;
    // 1,212 listed events are 13 pages of 100; the rest finds the oldest page and looks
    // below the head once per run.
    let requests = log.lists.load(Ordering::SeqCst);
    assert!(requests <= 13 + 4 + 2 * runs, "{requests} requests in {runs} runs");
}

#[tokio::test]
async fn any_budget_down_to_one_reaches_the_end() {
    for body in [json!({"max_events": 1}), json!({"max_seconds": 1}), json!({"max_events": 1, "max_seconds": 1})] {
        let app = spawn().await;
        let log = with_log(&app).await;
        log.set_delay(Duration::from_millis(300));
        let users: Vec<Uuid> = join_all((0..5).map(|_| app.create_user())).await;
        let known: Vec<Value> = (0..150).map(|i| other_event(HANDLED_KINDS[i % 4], 5000 - i as i64)).collect();
        log.extend(known.clone());
        record_delivered(&app, &known).await;
        for (k, user) in users.iter().enumerate() {
            log.push(paid_order(*user, 4000 - 700 * k as i64));
        }
        let mut runs = 0;
        loop {
            let (status, answer) = reconcile(&app, body.clone()).await;
            assert_eq!(status, 200, "{body}: {answer}");
            runs += 1;
            if body["max_events"] == 1 {
                assert!(answer["applied"].as_u64().unwrap() <= 1, "{body}: {answer}");
            }
            if !answer["more"].as_bool().unwrap() {
                break;
            }
            assert!(runs < 12, "{body}: {answer}");
        }
        for user in &users {
            assert_eq!(app.tokens_of(*user).await, CREDIT, "{body}");
        }
        app.assert_ledger_consistent().await;
    }
}

#[tokio::test]
async fn reconcilers_and_deliveries_racing_through_a_burst_apply_each_once() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let users: Vec<Uuid> = join_all((0..30).map(|_| app.create_user())).await;
    let orders: Vec<Value> = users.iter().enumerate().map(|(i, u)| paid_order(*u, 900 - 10 * i as i64)).collect();
    let noise: Vec<Value> = (0..200).map(|i| other_event(HANDLED_KINDS[i % 4], 900 - i as i64 * 2)).collect();
    log.extend(orders.iter().cloned().chain(noise.iter().cloned()));
    record_delivered(&app, &noise).await;
    // Three reconcilers with small budgets, each calling again while there is more, and
    // the webhook delivering every order at the same time.
    let reconciler = || async {
        let mut applied = 0;
        for _ in 0..40 {
            let (status, answer) = reconcile(&app, json!({"max_events": 3})).await;
            assert_eq!(status, 200, "{answer}");
            applied += answer["applied"].as_u64().unwrap();
            if !answer["more"].as_bool().unwrap() {
                return applied;
            }
        }
        panic!("no end");
    };
    let runs = join_all((0..3).map(|_| reconciler()));
    let deliveries = join_all(orders.iter().map(|e| deliver(&app, e)));
    let (runs, deliveries) = tokio::join!(runs, deliveries);
    let delivered = deliveries
        .iter()
        .inspect(|(status, answer)| assert_eq!(*status, 200, "{answer}"))
        .filter(|(_, answer)| answer["outcome"] == "applied")
        .count() as u64;
    assert_eq!(runs.iter().sum::<u64>() + delivered, 30, "{runs:?} + {delivered}");
    for user in &users {
        assert_eq!(app.tokens_of(*user).await, CREDIT);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase'").await, 30);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_rate_limit_ends_the_run_early_and_keeps_its_progress() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let (first, second) = (app.create_user().await, app.create_user().await);
    log.push(paid_order(first, 2000));
    let (status, _) = reconcile(&app, json!({})).await;
    assert_eq!(status, 200);
    let before = positions(&app).await;
    log.push(paid_order(second, 1000));
    // Stripe answers 429 to the request and to the client's one retry, half a second
    // later: the run stops there, without an error, and asks to be called again.
    log.rate_limit_next.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["rate_limited"].as_bool(), answer["more"].as_bool()), (Some(true), Some(true)), "{answer}");
    assert_eq!(answer["requests"], 1, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(500), "the retry waited");
    assert_eq!(log.rate_limited.load(Ordering::SeqCst), 2);
    assert_eq!(positions(&app).await, before);
    assert_eq!(app.tokens_of(second).await, 0);
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (1, 1, 0, 0, false)), "{answer}");
    assert_eq!(app.tokens_of(second).await, CREDIT);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_event_listed_late_is_applied_once_it_has_settled() {
    let app = spawn().await;
    let log = with_log(&app).await;
    let users: Vec<Uuid> = join_all((0..3).map(|_| app.create_user())).await;
    log.push(paid_order(users[0], 3000));
    // The head passes an event that has not settled yet.
    log.push(paid_order(users[1], 30));
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (2, 2, 0, 0, false)), "{answer}");
    // Stripe lists an older event only now, below the head: the head alone would never see
    // it; the settled position, still below it, does.
    let late = paid_order(users[2], 1500);
    log.push(late.clone());
    let (status, answer) = reconcile(&app, json!({})).await;
    assert_eq!((status, counts(&answer)), (200, (1, 1, 0, 0, false)), "{answer}");
    assert_eq!(app.tokens_of(users[2]).await, CREDIT);
    app.assert_ledger_consistent().await;
}
