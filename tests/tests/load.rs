//! Load with invariants: many users and one hot user, concurrently completing
//! sessions (a quarter of them sent twice at the same moment: a client retry racing its
//! first try), buying token packages through the webhook (every event delivered twice at
//! the same moment, a third of them once more later), spending on the premium voice
//! (some upstream calls fail and are refunded) and getting charges refunded in part.
//! Afterwards: every user's `tokens == sum(ledger)`, no balance below zero, every session,
//! reward and purchase applied exactly once (counted against what was sent; a session
//! earns only if it overlaps none of the user's rewarded ones), each duplicate
//! answered as a replay of its twin, each partial refund taking back exactly its share of
//! the purchase, each 402 given only when the balance the user had then was short, and
//! the counts printed.
//!
//! Size: `LIBERO_LOAD_USERS` users (default 80) plus one hot user; a few hundred requests,
//! 24 operations at a time (a pair sent at once counts as one), a few seconds on 2 cores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::stripe_support::{
    amount_of, checkout_session, event, fake_stripe, now, random_id, refunded_charge, signature, PRICES, SECRET_KEY,
    WEBHOOK_SECRET,
};
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ELEVEN_KEY: &str = "xi-load-test-key-000111";

#[derive(Clone)]
enum Op {
    /// A session completion, sent `copies` times at the same moment (2: a client retry
    /// racing the first try).
    Session { user: Uuid, body: Value, copies: usize },
    /// A signed webhook delivery, sent `copies` times at the same moment.
    Webhook { event: Value, copies: usize },
    /// A premium voice request; `fail` makes the fake upstream refuse (refund expected).
    Spend { user: Uuid, fail: bool },
}

/// A 402 as answered, and when: the balance it names must be one the user had then.
struct Refusal {
    user: Uuid,
    balance: i64,
    cost: i64,
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
}

/// What one premium request for [`SPEND_TEXT`] costs: `elevenlabs_tts` is 1 token per 500
/// characters or part of them (`token_prices`).
const SPEND_COST: i64 = 1;
const SPEND_TEXT: &str = "a calm and steady voice";

#[derive(Default)]
struct Tally {
    session_200: AtomicUsize,
    session_unrewarded: AtomicUsize,
    session_replayed: AtomicUsize,
    session_other: AtomicUsize,
    webhook_applied: AtomicUsize,
    webhook_duplicate: AtomicUsize,
    webhook_other: AtomicUsize,
    spend_ok: AtomicUsize,
    spend_refunded: AtomicUsize,
    spend_402: AtomicUsize,
    spend_other: AtomicUsize,
    /// Pairs whose copies were not in flight together, or whose two answers disagreed
    /// (a replay must answer what the first did).
    pair_mismatch: Mutex<Vec<String>>,
    refusals: Mutex<Vec<Refusal>>,
    unexpected: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_concurrent_traffic_keeps_every_invariant() {
    let users_n: usize = std::env::var("LIBERO_LOAD_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(80);
    let eleven = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/text-to-speech/fail/stream$"))
        .respond_with(ResponseTemplate::new(422).set_body_string("{\"detail\":\"refused\"}"))
        .mount(&eleven)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/text-to-speech/[A-Za-z0-9]+/stream$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/mpeg")
                .set_body_bytes(b"ID3 load audio".to_vec()),
        )
        .mount(&eleven)
        .await;
    // Stripe answers each purchase's line items (the webhook checks what was paid).
    let stripe = fake_stripe().await;
    let app = TestApp::spawn_with(|vars| {
        vars.insert("stripe_api_base".into(), stripe.uri());
        // The premium voices the spends use, and room for the hot user's 30 spends.
        vars.insert("elevenlabs_voice_ids".into(), "Voice01,fail".into());
        vars.insert("ai_quota_free_per_hour".into(), "1000".into());
        vars.insert("stripe_secret_key".into(), SECRET_KEY.into());
        vars.insert("stripe_webhook_secrets".into(), WEBHOOK_SECRET.into());
        for (name, price) in PRICES {
            vars.insert(name.into(), price.into());
        }
        vars.insert("elevenlabs_base_url".into(), eleven.uri());
        vars.insert("elevenlabs_api_key".into(), ELEVEN_KEY.into());
        vars.insert("elevenlabs_max_attempts".into(), "1".into());
    })
    .await;

    let hot = app.create_user().await;
    let mut users = vec![hot];
    for _ in 0..users_n {
        users.push(app.create_user().await);
    }

    // What is sent, and what each user should end with.
    let mut ops: Vec<Op> = Vec::new();
    let mut expected_sessions: HashMap<Uuid, i64> = HashMap::new();
    let mut expected_purchases: HashMap<Uuid, i64> = HashMap::new();
    let mut expected_refund_events = 0i64;
    // (user, checkout session, charge, amount paid, amount refunded): each refund's share.
    let mut refunds_sent: Vec<(Uuid, String, String, i64, i64)> = Vec::new();
    let mut unique_events = 0i64;
    let mut session_duplicates = 0usize;
    let mut webhook_deliveries = 0usize;
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    let mut rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for (i, &user) in users.iter().enumerate() {
        let is_hot = i == 0;
        let sessions = if is_hot { 60 } else { 3 };
        for _ in 0..sessions {
            let ego_state = ["guardian", "healer", "sage", "explorer", "child"][(rand() % 5) as usize];
            let duration = (rand() % 3600) as i64;
            let body = json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": ego_state, "duration_seconds": duration });
            let copies = if rand() % 4 == 0 { 2 } else { 1 };
            session_duplicates += copies - 1;
            ops.push(Op::Session { user, body, copies });
            *expected_sessions.entry(user).or_default() += 1;
        }
        // Purchases: the hot user buys 4 times, every other user once, every third none.
        let purchases = if is_hot {
            4
        } else if i % 3 == 0 {
            0
        } else {
            1
        };
        for p in 0..purchases {
            let product = ["tokens-small", "tokens-medium", "tokens-large"][(rand() % 3) as usize];
            let mut session = checkout_session(user, product, "payment", "paid");
            session["customer"] = json!(format!("cus_load{}", user.simple()));
            let payment_intent = session["payment_intent"].as_str().unwrap().to_string();
            let checkout_id = session["id"].as_str().unwrap().to_string();
            let paid = event("checkout.session.completed", session);
            // Twice at once; a third of them redelivered once more, later or earlier.
            ops.push(Op::Webhook { event: paid.clone(), copies: 2 });
            webhook_deliveries += 2;
            if rand() % 3 == 0 {
                ops.push(Op::Webhook { event: paid, copies: 1 });
                webhook_deliveries += 1;
            }
            unique_events += 1;
            *expected_purchases.entry(user).or_default() += 1;
            // Some purchases are refunded in part (the hot user's first, every fifth user's).
            if (is_hot && p == 0) || (!is_hot && i % 5 == 0) {
                let (charge, amount) = (random_id("ch_3Q"), amount_of(product));
                let refunded = amount / 2;
                let refund = event("charge.refunded", refunded_charge(&charge, &payment_intent, amount, refunded));
                // Delivered after its purchase (queued late); twice at once.
                ops.push(Op::Webhook { event: refund, copies: 2 });
                webhook_deliveries += 2;
                refunds_sent.push((user, checkout_id, charge, amount, refunded));
                unique_events += 1;
                expected_refund_events += 1;
            }
        }
        // Spends: the hot user 30 (a quarter failing upstream), others 2.
        let spends = if is_hot { 30 } else { 2 };
        for _ in 0..spends {
            ops.push(Op::Spend { user, fail: rand() % 4 == 0 });
        }
    }
    // Shuffle; purchases all go in the first wave, refunds in the second (Stripe sends a
    // refund only for a charge that was paid), mixed with a third of the other traffic.
    let (refund_ops, mut early): (Vec<Op>, Vec<Op>) =
        ops.into_iter().partition(|op| matches!(op, Op::Webhook { event, .. } if event["type"] == "charge.refunded"));
    for i in (1..early.len()).rev() {
        early.swap(i, (rand() % (i as u64 + 1)) as usize);
    }
    let mut tail: Vec<Op> = Vec::new();
    let mut keep = Vec::new();
    for op in early {
        if !matches!(op, Op::Webhook { .. }) && rand() % 3 == 0 {
            tail.push(op);
        } else {
            keep.push(op);
        }
    }
    let early = keep;
    tail.extend(refund_ops);
    for i in (1..tail.len()).rev() {
        tail.swap(i, (rand() % (i as u64 + 1)) as usize);
    }
    let copies = |op: &Op| match op {
        Op::Session { copies, .. } | Op::Webhook { copies, .. } => *copies,
        Op::Spend { .. } => 1,
    };
    let total_requests: usize = early.iter().chain(&tail).map(copies).sum();

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    for batch in [early, tail] {
        stream::iter(batch)
            .for_each_concurrent(24, |op| {
                let tally = tally.clone();
                let app = &app;
                async move { run(app, op, &tally).await }
            })
            .await;
    }
    let elapsed = started.elapsed();

    let client = app.db_client().await;
    let t = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    let unexpected = tally.unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers:\n  {}", unexpected.join("\n  "));

    // Invariants.
    app.assert_ledger_consistent().await;
    let negative: i64 =
        client.query_one("SELECT count(*) FROM public.user_profiles WHERE tokens < 0", &[]).await.unwrap().get(0);
    assert_eq!(negative, 0);
    let mut session_mismatch = Vec::new();
    let mut purchase_mismatch = Vec::new();
    for &user in &users {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM public.sessions WHERE user_id = $1),
                        (SELECT count(*) FROM public.token_ledger WHERE user_id = $1 AND reason = 'session_complete'),
                        (SELECT count(*) FROM public.token_ledger WHERE user_id = $1 AND reason = 'purchase'),
                        (SELECT count(*) FROM public.stripe_orders WHERE user_id = $1)",
                &[&user],
            )
            .await
            .unwrap();
        let (sessions, rewards, purchases, orders): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let want_sessions = expected_sessions.get(&user).copied().unwrap_or(0);
        let want_purchases = expected_purchases.get(&user).copied().unwrap_or(0);
        // Sessions sent at once all end now: at least one of each user's earns, the rest
        // overlap it; the ledger holds one reward for each that earned.
        let rewarded: i64 = client
            .query_one("SELECT count(*) FROM public.sessions WHERE user_id = $1 AND rewarded", &[&user])
            .await
            .unwrap()
            .get(0);
        if sessions != want_sessions || rewards != rewarded || (want_sessions > 0 && rewarded == 0) {
            session_mismatch.push(format!(
                "{user}: {sessions} sessions ({rewarded} rewarded), {rewards} rewards, want {want_sessions} sessions"
            ));
        }
        if purchases != want_purchases || orders != want_purchases {
            purchase_mismatch
                .push(format!("{user}: {purchases} purchase rows, {orders} orders, want {want_purchases}"));
        }
    }
    assert!(session_mismatch.is_empty(), "sessions lost or doubled: {session_mismatch:?}");
    libero_tests::sql::assert_rewarded_sessions_do_not_overlap(&client).await;
    assert!(purchase_mismatch.is_empty(), "purchases lost or doubled: {purchase_mismatch:?}");
    let events: i64 = client.query_one("SELECT count(*) FROM public.stripe_events", &[]).await.unwrap().get(0);
    assert_eq!(events, unique_events, "every event recorded exactly once");
    assert_eq!(t(&tally.webhook_applied) as i64, unique_events, "every event applied exactly once");
    assert_eq!(t(&tally.session_replayed), session_duplicates, "each duplicate answered as a replay of its twin");
    let pair_mismatch = tally.pair_mismatch.lock().unwrap().clone();
    assert!(
        pair_mismatch.is_empty(),
        "duplicate pairs not concurrent, or answered differently:\n  {}",
        pair_mismatch.join("\n  ")
    );
    assert_eq!(t(&tally.webhook_applied) + t(&tally.webhook_duplicate), webhook_deliveries, "every delivery answered");

    // Each partial refund takes back exactly its share of what the purchase credited,
    // rounded down: balances here always cover it, so there is no shortfall.
    let refunds: i64 =
        client.query_one("SELECT count(*) FROM public.token_ledger WHERE reason = 'refund'", &[]).await.unwrap().get(0);
    assert_eq!(refunds, expected_refund_events, "one refund row per refund event");
    let mut refund_mismatch = Vec::new();
    for (user, checkout_id, charge, amount, refunded) in &refunds_sent {
        let row = client
            .query_one(
                "SELECT (SELECT delta FROM public.token_ledger WHERE user_id = $1 AND reason = 'purchase' AND reference = $2),
                        (SELECT delta FROM public.token_ledger WHERE user_id = $1 AND reason = 'refund' AND reference = $3),
                        (SELECT refund_shortfall FROM public.stripe_orders WHERE user_id = $1 AND checkout_session_id = $2)",
                &[user, checkout_id, &format!("refund:{charge}:{refunded}")],
            )
            .await
            .unwrap();
        let (credited, taken, shortfall): (Option<i32>, Option<i32>, Option<i32>) =
            (row.get(0), row.get(1), row.get(2));
        let credited = credited.unwrap_or(0) as i64;
        let want = credited * refunded / amount;
        if taken.map(|d| -d as i64) != Some(want) || shortfall != Some(0) {
            refund_mismatch.push(format!(
                "{user} {charge}: {refunded} of {amount} refunded, {credited} credited: took {taken:?}, want {want} (shortfall {shortfall:?})"
            ));
        }
    }
    assert!(refund_mismatch.is_empty(), "refunds not exactly their share:\n  {}", refund_mismatch.join("\n  "));

    // A 402 only when the user was short: the balance it names is below the price, and is
    // one the user's ledger shows while the request was in flight (the balance before
    // it, or one of a change made meanwhile; 0 before the first change).
    let refusals = std::mem::take(&mut *tally.refusals.lock().unwrap());
    let mut unfair = Vec::new();
    for r in &refusals {
        let slack = chrono::Duration::seconds(1);
        let rows = client
            .query(
                "SELECT balance_after, created_at FROM public.token_ledger WHERE user_id = $1 AND created_at <= $2 ORDER BY id",
                &[&r.user, &(r.answered + slack)],
            )
            .await
            .unwrap();
        let mut possible: Vec<i64> = Vec::new();
        let mut before_start = 0i64;
        for row in &rows {
            let (balance, at): (i32, DateTime<Utc>) = (row.get(0), row.get(1));
            if at < r.sent - slack {
                before_start = balance as i64;
            } else {
                possible.push(balance as i64);
            }
        }
        possible.push(before_start);
        if r.cost != SPEND_COST || r.balance >= r.cost || !possible.contains(&r.balance) {
            unfair.push(format!(
                "{}: 402 with balance {} and cost {}; balances then: {possible:?}",
                r.user, r.balance, r.cost
            ));
        }
    }
    assert!(unfair.is_empty(), "402 without a short balance:\n  {}", unfair.join("\n  "));
    let spend_rows: i64 =
        client.query_one("SELECT count(*) FROM public.token_ledger WHERE reason = 'spend'", &[]).await.unwrap().get(0);
    let spend_refunds: i64 = client
        .query_one("SELECT count(*) FROM public.token_ledger WHERE reason = 'spend_refund'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(spend_rows as usize, t(&tally.spend_ok) + t(&tally.spend_refunded), "one debit per paid call");
    assert_eq!(spend_refunds as usize, t(&tally.spend_refunded), "one refund per failed call");
    let ledger_rows: i64 = client.query_one("SELECT count(*) FROM public.token_ledger", &[]).await.unwrap().get(0);
    let hot_tokens = app.tokens_of(hot).await;

    println!(
        "load: {} users (1 hot), {total_requests} requests in {elapsed:?} (24 operations at a time)\n  \
         sessions: {} recorded ({} earned nothing: overlapping), {} duplicates sent at once answered as replays, {} other\n  \
         webhook: {} events applied once, {} duplicate deliveries ignored, {} other ({} refund events)\n  \
         premium spends: {} paid, {} refunded after an upstream refusal, {} refused for lack of tokens\n  \
         ledger: {ledger_rows} rows, {spend_rows} spends, {spend_refunds} spend refunds, {refunds} purchase refunds; \
         hot user ends with {hot_tokens} tokens\n  invariants: tokens == sum(ledger) for all, none negative, none lost or doubled: OK",
        users.len(),
        t(&tally.session_200),
        t(&tally.session_unrewarded),
        t(&tally.session_replayed),
        t(&tally.session_other),
        t(&tally.webhook_applied),
        t(&tally.webhook_duplicate),
        t(&tally.webhook_other),
        expected_refund_events,
        t(&tally.spend_ok),
        t(&tally.spend_refunded),
        t(&tally.spend_402),
    );
}

async fn run(app: &TestApp, op: Op, tally: &Tally) {
    match op {
        Op::Session { user, body, copies } => {
            let send = || async {
                let started = Instant::now();
                let response = app
                    .client
                    .post(app.url("/functions/v1/session-complete"))
                    .bearer_auth(app.token_for(user))
                    .json(&body)
                    .send()
                    .await
                    .expect("session request");
                let status = response.status().as_u16();
                let answer = response.json::<Value>().await.unwrap_or(Value::Null);
                (status, answer, started, Instant::now())
            };
            // The copies leave together: neither waits for the other's answer.
            let sent = join_all((0..copies).map(|_| send())).await;
            if copies > 1 {
                let last_start = sent.iter().map(|s| s.2).max().unwrap();
                let first_end = sent.iter().map(|s| s.3).min().unwrap();
                if last_start >= first_end {
                    tally.pair_mismatch.lock().unwrap().push(format!("a pair was sent one after the other: {body}"));
                }
            }
            let answers: Vec<(u16, Value)> = sent.into_iter().map(|(status, answer, ..)| (status, answer)).collect();
            for (status, answer) in &answers {
                if *status == 200 && answer["replayed"] == false && answer["rewarded"] == false {
                    tally.session_unrewarded.fetch_add(1, Ordering::SeqCst);
                }
                match (*status, answer["replayed"].as_bool()) {
                    (200, Some(false)) => tally.session_200.fetch_add(1, Ordering::SeqCst),
                    (200, Some(true)) => tally.session_replayed.fetch_add(1, Ordering::SeqCst),
                    _ => {
                        tally.unexpected.lock().unwrap().push(format!("session: {status} {answer}"));
                        tally.session_other.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            // A replay answers what the first completion did.
            if let [(_, a), (_, b)] = answers.as_slice() {
                let what = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().map(|o| o.remove("replayed"));
                    v
                };
                if what(a) != what(b) {
                    tally.pair_mismatch.lock().unwrap().push(format!("{a} vs {b}"));
                }
            }
        }
        Op::Webhook { event, copies } => {
            let body = serde_json::to_vec(&event).unwrap();
            let send = || async {
                let response = app
                    .client
                    .post(app.url("/functions/v1/stripe-webhook"))
                    .header("content-type", "application/json")
                    .header("stripe-signature", signature(&body, WEBHOOK_SECRET, now()))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("webhook request");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            };
            for (status, answer) in join_all((0..copies).map(|_| send())).await {
                match (status, answer["outcome"].as_str()) {
                    (200, Some("applied")) => tally.webhook_applied.fetch_add(1, Ordering::SeqCst),
                    (200, Some("duplicate")) => tally.webhook_duplicate.fetch_add(1, Ordering::SeqCst),
                    _ => {
                        tally.unexpected.lock().unwrap().push(format!("webhook {}: {status} {answer}", event["type"]));
                        tally.webhook_other.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }
        Op::Spend { user, fail } => {
            let voice = if fail { "fail" } else { "Voice01" };
            let sent = Utc::now();
            let response = app
                .client
                .post(app.url("/functions/v1/elevenlabs-tts-proxy"))
                .bearer_auth(app.token_for(user))
                .json(&json!({ "text": SPEND_TEXT, "voice_id": voice }))
                .send()
                .await
                .expect("premium request");
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let answered = Utc::now();
            match (status, fail) {
                (200, false) => tally.spend_ok.fetch_add(1, Ordering::SeqCst),
                (502, true) => tally.spend_refunded.fetch_add(1, Ordering::SeqCst),
                (402, _) => {
                    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let number = |k: &str| answer[k].as_i64().unwrap_or(-1);
                    let refusal = Refusal { user, balance: number("balance"), cost: number("cost"), sent, answered };
                    tally.refusals.lock().unwrap().push(refusal);
                    tally.spend_402.fetch_add(1, Ordering::SeqCst)
                }
                _ => {
                    tally
                        .unexpected
                        .lock()
                        .unwrap()
                        .push(format!("premium: {status} {}", String::from_utf8_lossy(&bytes)));
                    tally.spend_other.fetch_add(1, Ordering::SeqCst)
                }
            };
        }
    }
}
