//! stripe-webhook end to end: signed deliveries through the host into a real database,
//! with a fake Stripe API on loopback for the subscription re-reads.

use std::sync::{Arc, Mutex};

use crate::stripe_support::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

const WEBHOOK: &str = "/functions/v1/stripe-webhook";

async fn order_row(app: &StripeApp, session_id: &str) -> (String, i32, i32, i32) {
    let row = app
        .db_client()
        .await
        .query_one(
            "SELECT status, tokens, tokens_reversed, refund_shortfall FROM public.stripe_orders
              WHERE checkout_session_id = $1",
            &[&session_id],
        )
        .await
        .expect("order row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn plan_of(app: &StripeApp, user: Uuid) -> String {
    app.db_client()
        .await
        .query_one("SELECT plan FROM public.user_profiles WHERE id = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn signatures_are_verified_before_anything_is_written() {
    let app = spawn_with(|vars| {
        // Rotation: the old secret and the new one are both accepted.
        vars.insert("stripe_webhook_secrets".into(), format!("{OLD_WEBHOOK_SECRET}, {WEBHOOK_SECRET}"));
    })
    .await;
    let user = app.create_user().await;
    let session = checkout_session(user, "tokens-small", "payment", "paid");
    let body = serde_json::to_vec(&event("checkout.session.completed", session.clone())).unwrap();
    let url = app.url(WEBHOOK);
    let t = now();
    let good = signature(&body, WEBHOOK_SECRET, t);
    let good_v1 = good.split_once("v1=").unwrap().1.to_string();
    let mut tampered = body.clone();
    let at = tampered.windows(5).position(|w| w == b"small").unwrap();
    tampered[at..at + 5].copy_from_slice(b"large");

    let refused: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        ("no header", body.clone(), None, "missing_signature"),
        ("empty header", body.clone(), Some(String::new()), "missing_signature"),
        ("garbage", body.clone(), Some("garbage".into()), "malformed_signature"),
        ("no timestamp", body.clone(), Some(format!("v1={good_v1}")), "malformed_signature"),
        ("only v0", body.clone(), Some(format!("t={t},v0={good_v1}")), "malformed_signature"),
        ("short v1", body.clone(), Some(format!("t={t},v1={}", &good_v1[..40])), "malformed_signature"),
        ("wrong secret", body.clone(), Some(signature(&body, "whsec_someone_else", t)), "signature_mismatch"),
        ("tampered body", tampered, Some(good.clone()), "signature_mismatch"),
        ("moved timestamp", body.clone(), Some(format!("t={},v1={good_v1}", t - 1)), "signature_mismatch"),
        ("stale", body.clone(), Some(signature(&body, WEBHOOK_SECRET, t - 301 - 5)), "signature_expired"),
        ("future", body.clone(), Some(signature(&body, WEBHOOK_SECRET, t + 301 + 5)), "signature_expired"),
    ];
    for (case, bytes, header, code) in refused {
        let (status, answer) = post_raw(&app.client, &url, &bytes, header.as_deref()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some(code)), "{case}: {answer}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 0, "nothing written");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.stripe_orders WHERE user_id = '{user}'")).await, 0);
    assert_eq!(app.tokens_of(user).await, 0);

    // Inside the tolerance (with a margin for the test's own run time): accepted.
    let edge = signature(&body, WEBHOOK_SECRET, t - 290);
    let (status, answer) = post_raw(&app.client, &url, &body, Some(&edge)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");

    // Signed with the old secret, and with one wrong v1 among several: accepted. Another
    // event about the same session credits nothing more (the ledger is keyed by session).
    let other = serde_json::to_vec(&event("checkout.session.completed", session)).unwrap();
    let wrong_v1 = signature(&other, "whsec_someone_else", t).split_once("v1=").unwrap().1.to_string();
    let old_v1 = signature(&other, OLD_WEBHOOK_SECRET, t).split_once("v1=").unwrap().1.to_string();
    let rotated = format!("t={t},v1={wrong_v1},v1={old_v1},v0=abc");
    let (status, answer) = post_raw(&app.client, &url, &other, Some(&rotated)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");

    assert_eq!(app.tokens_of(user).await, 110);
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.token_ledger WHERE user_id = '{user}'")).await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 2);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn twenty_concurrent_deliveries_of_one_paid_event_credit_once() {
    let app = spawn().await;
    let user = app.create_user().await;
    let session = checkout_session(user, "tokens-medium", "payment", "paid");
    let paid = event("checkout.session.completed", session.clone());

    let answers = join_all((0..20).map(|_| deliver(&app, &paid))).await;
    let mut outcomes: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["outcome"].as_str().unwrap().to_string()
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes.iter().filter(|o| *o == "applied").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 19, "{outcomes:?}");

    assert_eq!(app.tokens_of(user).await, 300, "250 + 50 bonus, once");
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase' AND user_id = '{user}'")
        )
        .await,
        1
    );
    let (status, tokens, _, _) = order_row(&app, session["id"].as_str().unwrap()).await;
    assert_eq!((status.as_str(), tokens), ("completed", 300));
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 1);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn delayed_payments_credit_on_success_and_never_on_failure() {
    let app = spawn().await;
    let user = app.create_user().await;

    // Bank debit: completed but unpaid → pending; async success → credited.
    let session = checkout_session(user, "tokens-small", "payment", "unpaid");
    let id = session["id"].as_str().unwrap().to_string();
    let (status, answer) = deliver(&app, &event("checkout.session.completed", session.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")));
    assert_eq!(order_row(&app, &id).await.0, "pending");
    assert_eq!(app.tokens_of(user).await, 0);
    let mut paid = session.clone();
    paid["payment_status"] = json!("paid");
    deliver(&app, &event("checkout.session.async_payment_succeeded", paid)).await;
    assert_eq!(order_row(&app, &id).await.0, "completed");
    assert_eq!(app.tokens_of(user).await, 110);

    // Failure: pending → failed, nothing credited.
    let failing = checkout_session(user, "tokens-large", "payment", "unpaid");
    let failing_id = failing["id"].as_str().unwrap().to_string();
    deliver(&app, &event("checkout.session.completed", failing.clone())).await;
    deliver(&app, &event("checkout.session.async_payment_failed", failing)).await;
    assert_eq!(order_row(&app, &failing_id).await.0, "failed");
    assert_eq!(app.tokens_of(user).await, 110);

    // Out of order: the success arrives before the "completed, unpaid" event, which must
    // not take the order back to pending.
    let late = checkout_session(user, "tokens-medium", "payment", "paid");
    let late_id = late["id"].as_str().unwrap().to_string();
    deliver(&app, &event("checkout.session.async_payment_succeeded", late.clone())).await;
    let mut unpaid = late;
    unpaid["payment_status"] = json!("unpaid");
    deliver(&app, &event("checkout.session.completed", unpaid)).await;
    assert_eq!(order_row(&app, &late_id).await.0, "completed");
    assert_eq!(app.tokens_of(user).await, 110 + 300);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn refunds_take_tokens_back_never_below_zero_and_record_the_shortfall() {
    let app = spawn().await;
    let user = app.create_user().await;
    let session = checkout_session(user, "tokens-large", "payment", "paid");
    let session_id = session["id"].as_str().unwrap().to_string();
    let payment_intent = session["payment_intent"].as_str().unwrap().to_string();
    deliver(&app, &event("checkout.session.completed", session)).await;
    assert_eq!(app.tokens_of(user).await, 650);

    // The user spends 300 tokens.
    let spent: Value = app
        .db_client()
        .await
        .query_one("SELECT public.spend_tokens_for($1, 'elevenlabs_tts', 150000, 'tts-1')", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(spent["ok"], true, "{spent}");
    assert_eq!(app.tokens_of(user).await, 350);

    // Half refunded: floor(650 × 500 / 999) = 325 taken back.
    let charge = random_id("ch_3Q");
    let partial = event("charge.refunded", refunded_charge(&charge, &payment_intent, 999, 500));
    let (status, answer) = deliver(&app, &partial).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 25);
    assert_eq!(order_row(&app, &session_id).await, ("completed".into(), 650, 325, 0));

    // Fully refunded: 325 more are owed, only 25 are left.
    let full = event("charge.refunded", refunded_charge(&charge, &payment_intent, 999, 999));
    deliver(&app, &full).await;
    assert_eq!(app.tokens_of(user).await, 0);
    assert_eq!(order_row(&app, &session_id).await, ("refunded".into(), 650, 350, 300));

    // Redelivered: nothing more.
    let (_, answer) = deliver(&app, &full).await;
    assert_eq!(answer["outcome"], "duplicate");
    assert_eq!(order_row(&app, &session_id).await, ("refunded".into(), 650, 350, 300));
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.token_ledger WHERE reason = 'refund' AND user_id = '{user}'")
        )
        .await,
        2
    );

    // A refund of a charge that is no token order (a subscription invoice's) does nothing.
    let foreign = event("charge.refunded", refunded_charge(&random_id("ch_3Q"), "pi_3Qunknown", 999, 999));
    let (status, answer) = deliver(&app, &foreign).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("no_order")));
    app.assert_ledger_consistent().await;
}

/// The fake Stripe's current state of one subscription, served at
/// `GET /v1/subscriptions/:id`, changeable as the test goes.
async fn serve_subscription(app: &StripeApp, id: &str, state: Value) -> Arc<Mutex<Value>> {
    let shared = Arc::new(Mutex::new(state));
    let served = shared.clone();
    Mock::given(method("GET"))
        .and(path(format!("/v1/subscriptions/{id}")))
        .and(header("authorization", format!("Bearer {SECRET_KEY}").as_str()))
        .and(header("stripe-version", API_VERSION))
        .respond_with(move |_: &wiremock::Request| {
            ResponseTemplate::new(200).set_body_json(served.lock().unwrap().clone())
        })
        .mount(&app.stripe)
        .await;
    shared
}

#[tokio::test]
async fn out_of_order_subscription_events_end_in_stripes_final_state() {
    let app = spawn().await;
    let user = app.create_user().await;
    let sub = "sub_1QtestSubscription";
    // What happened at Stripe, in order: created incomplete, paid, active, then the user
    // chose to cancel at the period end. The events carry those intermediate states.
    let happened = [
        event("customer.subscription.created", subscription(sub, user, "incomplete", false)),
        event("checkout.session.completed", checkout_session(user, "mystic-subscription", "subscription", "paid")),
        event("invoice.paid", invoice(sub, "paid")),
        event("customer.subscription.updated", subscription(sub, user, "active", false)),
        event("customer.subscription.updated", subscription(sub, user, "active", true)),
    ];
    let stripe_now = serve_subscription(&app, sub, subscription(sub, user, "active", true)).await;

    // Delivered newest first.
    for delivery in happened.iter().rev() {
        let (status, answer) = deliver(&app, delivery).await;
        assert_eq!(status, 200, "{answer}");
    }
    let row = app
        .db_client()
        .await
        .query_one(
            "SELECT status, cancel_at_period_end, price_id, current_period_end IS NOT NULL, user_id
               FROM public.stripe_subscriptions WHERE subscription_id = $1",
            &[&sub],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "active");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("price_1MysticMonthly"));
    assert!(row.get::<_, bool>(3), "the basil period (on the item) is stored");
    assert_eq!(row.get::<_, Uuid>(4), user);
    assert_eq!(plan_of(&app, user).await, "mystic");
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM public.stripe_customers WHERE user_id = '{user}'")).await,
        1,
        "customer mapped"
    );

    // The period ends: canceled. Its event arrives, then a late "updated" from before.
    *stripe_now.lock().unwrap() = subscription(sub, user, "canceled", true);
    deliver(&app, &event("customer.subscription.deleted", subscription(sub, user, "canceled", true))).await;
    assert_eq!(plan_of(&app, user).await, "free");
    deliver(&app, &event("customer.subscription.updated", subscription(sub, user, "active", false))).await;
    assert_eq!(plan_of(&app, user).await, "free", "a late event cannot resurrect the plan");

    // A read that started before the stored one (a slow concurrent delivery) is stale.
    let stale: Value = app
        .db_client()
        .await
        .query_one(
            "SELECT public.stripe_apply_subscription('evt_stale_read', 'customer.subscription.updated', 0,
                    $1, 'cus_RtestCustomer01', $2, 'active', 'price_1MysticMonthly', 0, 1, false, 0)",
            &[&sub, &user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stale["outcome"], "stale");
    assert_eq!(plan_of(&app, user).await, "free");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn unknown_events_are_recorded_without_effects() {
    let app = spawn().await;
    let unknown = event("customer.tax_id.created", json!({"id": "txi_1", "object": "tax_id"}));
    let (status, answer) = deliver(&app, &unknown).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("unhandled_type")));
    let (status, answer) = deliver(&app, &unknown).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("duplicate")));
    // A payment-mode session that our checkout did not make (no product metadata).
    let user = app.create_user().await;
    let mut foreign = checkout_session(user, "tokens-small", "payment", "paid");
    foreign["metadata"] = json!({});
    let (_, answer) = deliver(&app, &event("checkout.session.completed", foreign)).await;
    assert_eq!(answer["outcome"], "not_our_order");
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 2);
    assert_eq!(app.tokens_of(user).await, 0);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn database_down_answers_5xx_then_the_retry_applies_once() {
    let app = spawn().await;
    let user = app.create_user().await;
    // A second instance whose database address is a closed port.
    let mut down_vars = app.variables.clone();
    down_vars.insert("database_url".into(), "postgres://postgres@127.0.0.1:9/postgres".into());
    down_vars.insert("db_host".into(), "127.0.0.1:9".into());
    let down = start_instance(&down_vars).await;

    let paid = event("checkout.session.completed", checkout_session(user, "tokens-small", "payment", "paid"));
    let (status, answer) = deliver_to(&app.client, &down.url(WEBHOOK), &paid).await;
    assert!(status >= 500, "{status} {answer}");
    assert_eq!(answer["error"]["code"], "database_unavailable", "{answer}");
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 0);
    assert_eq!(app.tokens_of(user).await, 0);

    // Stripe retries; this time an instance that reaches the database gets it.
    let (status, answer) = deliver(&app, &paid).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")));
    let (status, answer) = deliver(&app, &paid).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("duplicate")));
    assert_eq!(app.tokens_of(user).await, 110);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn stripe_api_down_answers_502_then_the_retry_applies() {
    let app = spawn().await;
    let user = app.create_user().await;
    let sub = "sub_1QtestSubscription";
    Mock::given(method("GET"))
        .and(path(format!("/v1/subscriptions/{sub}")))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"error": {"type": "api_error", "message": "Stripe is down"}})),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&app.stripe)
        .await;
    serve_subscription(&app, sub, subscription(sub, user, "active", false)).await;

    let updated = event("customer.subscription.updated", subscription(sub, user, "active", false));
    let (status, answer) = deliver(&app, &updated).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("stripe_error")), "{answer}");
    assert_eq!(count(&app, "SELECT count(*) FROM public.stripe_events").await, 0);

    let (status, answer) = deliver(&app, &updated).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(plan_of(&app, user).await, "mystic");
    // Nothing secret in what the components logged.
    let logs = app.logs().join("\n");
    assert!(!logs.contains(SECRET_KEY) && !logs.contains(WEBHOOK_SECRET), "{logs}");
    app.assert_ledger_consistent().await;
}

async fn review_of(app: &StripeApp, session_id: &str) -> (String, Option<String>) {
    let row = app
        .db_client()
        .await
        .query_one(
            "SELECT status, review_reason FROM public.stripe_orders WHERE checkout_session_id = $1",
            &[&session_id],
        )
        .await
        .expect("order row");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn only_a_payment_of_the_catalog_price_is_credited() {
    let app = spawn().await;
    let user = app.create_user().await;
    let small = price_of("tokens-small");

    // Each case: a session with our metadata that was not paid as the catalog says.
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let other_price = checkout_session(user, "tokens-large", "payment", "paid");
    set_line_items(other_price["id"].as_str().unwrap(), line_items(small, 1999, "usd", 1));
    cases.push(("price_mismatch", other_price));
    let mut promo = checkout_session(user, "tokens-large", "payment", "paid");
    promo["amount_total"] = json!(1);
    promo["total_details"]["amount_discount"] = json!(1998);
    cases.push(("amount_mismatch", promo));
    let mut euros = checkout_session(user, "tokens-small", "payment", "paid");
    euros["currency"] = json!("eur");
    cases.push(("currency_mismatch", euros));
    let two = checkout_session(user, "tokens-small", "payment", "paid");
    set_line_items(two["id"].as_str().unwrap(), line_items(small, 499, "usd", 2));
    cases.push(("quantity_mismatch", two));
    let free = checkout_session(user, "tokens-large", "payment", "no_payment_required");
    cases.push(("no_payment_required", free));
    // A Dashboard or Payment Link session of another account or mode: Stripe has no
    // such session here.
    let mut foreign = checkout_session(user, "tokens-medium", "payment", "paid");
    foreign["id"] = json!(random_id("cs_test_elsewhere"));
    cases.push(("session_not_found", foreign));

    for (reason, session) in &cases {
        let (status, answer) = deliver(&app, &event("checkout.session.completed", session.clone())).await;
        assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{reason}: {answer}");
        assert_eq!(app.tokens_of(user).await, 0, "{reason}: credited");
        let id = session["id"].as_str().unwrap();
        assert_eq!(review_of(&app, id).await, ("review".to_string(), Some(reason.to_string())), "{reason}");
        // A later event about the same session cannot turn it into a credit.
        deliver(&app, &event("checkout.session.async_payment_succeeded", session.clone())).await;
        assert_eq!(review_of(&app, id).await.0, "review", "{reason}");
    }
    assert_eq!(app.tokens_of(user).await, 0, "nothing credited for any of them");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.token_ledger WHERE user_id = '{user}'")).await, 0);

    // Paid at the catalog's price: credited.
    let paid = checkout_session(user, "tokens-small", "payment", "paid");
    let (status, answer) = deliver(&app, &event("checkout.session.completed", paid.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(review_of(&app, paid["id"].as_str().unwrap()).await, ("completed".to_string(), None));
    assert_eq!(app.tokens_of(user).await, 110);
    let logs = app.logs().join("\n");
    assert!(logs.contains("held for review: price_mismatch"), "{logs}");
    app.assert_ledger_consistent().await;
}

/// A paid token order; returns (session id, payment intent).
async fn bought(app: &StripeApp, user: Uuid, product: &str) -> (String, String) {
    let session = checkout_session(user, product, "payment", "paid");
    let (status, answer) = deliver(app, &event("checkout.session.completed", session.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    (session["id"].as_str().unwrap().to_string(), session["payment_intent"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn disputes_take_tokens_back_exactly_once_and_won_disputes_give_them_back() {
    let app = spawn().await;
    let user = app.create_user().await;

    // Lost: everything still unspent is taken back, the rest is the shortfall (a debt).
    let (session, pi) = bought(&app, user, "tokens-large").await;
    let spent: Value = app
        .db_client()
        .await
        .query_one("SELECT public.spend_tokens_for($1, 'elevenlabs_tts', 150000, 'tts-1')", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(spent["ok"], true, "{spent}");
    assert_eq!(app.tokens_of(user).await, 350);
    let charge = random_id("ch_3Q");
    let dp = random_id("dp_1Q");
    let created = event("charge.dispute.created", dispute(&dp, &charge, &pi, 1999, "needs_response"));
    let (status, answer) = deliver(&app, &created).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 0);
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 650, 350, 300));
    assert_eq!(deliver(&app, &created).await.1["outcome"], "duplicate");
    deliver(&app, &event("charge.dispute.closed", dispute(&dp, &charge, &pi, 1999, "lost"))).await;
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 650, 350, 300), "lost: nothing more");
    // A refund after the chargeback takes nothing more.
    deliver(&app, &event("charge.refunded", refunded_charge(&charge, &pi, 1999, 1999))).await;
    assert_eq!(app.tokens_of(user).await, 0);
    // What had been spent is owed; the next purchase would pay it first (another test).
    assert_eq!(debt_of(&app, user).await, 300);

    // Won: what was taken comes back (another user, with no debt).
    let user = app.create_user().await;
    let (session, pi) = bought(&app, user, "tokens-small").await;
    let (charge, dp) = (random_id("ch_3Q"), random_id("dp_1Q"));
    deliver(&app, &event("charge.dispute.created", dispute(&dp, &charge, &pi, 499, "needs_response"))).await;
    assert_eq!(app.tokens_of(user).await, 0);
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 110, 110, 0));
    deliver(&app, &event("charge.dispute.closed", dispute(&dp, &charge, &pi, 499, "won"))).await;
    assert_eq!(app.tokens_of(user).await, 110);
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 110, 0, 0));

    // Out of order: `closed` first. Won, then the late `created`: nothing is taken.
    let (_, pi) = bought(&app, user, "tokens-small").await;
    let (charge, dp) = (random_id("ch_3Q"), random_id("dp_1Q"));
    deliver(&app, &event("charge.dispute.closed", dispute(&dp, &charge, &pi, 499, "won"))).await;
    deliver(&app, &event("charge.dispute.created", dispute(&dp, &charge, &pi, 499, "needs_response"))).await;
    assert_eq!(app.tokens_of(user).await, 220);
    // Lost, then the late `created`: taken once.
    let (session, pi) = bought(&app, user, "tokens-small").await;
    let (charge, dp) = (random_id("ch_3Q"), random_id("dp_1Q"));
    deliver(&app, &event("charge.dispute.closed", dispute(&dp, &charge, &pi, 499, "lost"))).await;
    deliver(&app, &event("charge.dispute.created", dispute(&dp, &charge, &pi, 499, "needs_response"))).await;
    assert_eq!(app.tokens_of(user).await, 220);
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 110, 110, 0));

    // The dispute before its purchase is applied (a delayed delivery): settled on credit.
    let early = checkout_session(user, "tokens-small", "payment", "paid");
    let pi = early["payment_intent"].as_str().unwrap().to_string();
    let (status, answer) = deliver(
        &app,
        &event("charge.dispute.created", dispute(&random_id("dp_1Q"), &random_id("ch_3Q"), &pi, 499, "needs_response")),
    )
    .await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("no_order")), "{answer}");
    deliver(&app, &event("checkout.session.completed", early.clone())).await;
    assert_eq!(app.tokens_of(user).await, 220, "credited and taken back in one step");
    assert_eq!(order_row(&app, early["id"].as_str().unwrap()).await, ("completed".into(), 110, 110, 0));

    let reasons: Vec<(String, i64)> = app
        .db_client()
        .await
        .query("SELECT reason, count(*) FROM public.token_ledger WHERE reference LIKE 'dispute:%' GROUP BY reason ORDER BY reason", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(reasons, [("dispute_won".to_string(), 1), ("refund".to_string(), 4)]);
    app.assert_ledger_consistent().await;
}

/// A user's debt (0 without a row).
async fn debt_of(app: &StripeApp, user: Uuid) -> i32 {
    app.db_client()
        .await
        .query_one("SELECT coalesce((SELECT amount FROM public.token_debts WHERE user_id = $1), 0)", &[&user])
        .await
        .unwrap()
        .get(0)
}

async fn spend(app: &StripeApp, user: Uuid, units: i32, reference: &str) -> Value {
    app.db_client()
        .await
        .query_one("SELECT public.spend_tokens_for($1, 'elevenlabs_tts', $2, $3)", &[&user, &units, &reference])
        .await
        .unwrap()
        .get(0)
}

/// The case: the purchase's delivery failed, the operator refunded it in the
/// Dashboard, then Stripe's retry (or reconcile) applied the purchase. The refund is kept
/// and applied when the purchase arrives: no money back *and* tokens.
#[tokio::test]
async fn a_refund_before_its_purchase_is_applied_when_the_purchase_arrives() {
    let app = spawn().await;
    let user = app.create_user().await;
    let session = checkout_session(user, "tokens-small", "payment", "paid");
    let (session_id, pi) =
        (session["id"].as_str().unwrap().to_string(), session["payment_intent"].as_str().unwrap().to_string());
    let refund = event("charge.refunded", refunded_charge(&random_id("ch_3Q"), &pi, 499, 499));
    let (status, answer) = deliver(&app, &refund).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("no_order")), "{answer}");
    let (status, answer) = deliver(&app, &event("checkout.session.completed", session)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 0, "credited and taken back in one step");
    assert_eq!(order_row(&app, &session_id).await, ("refunded".into(), 110, 110, 0));
    // A half refund kept the same way takes half.
    let half = checkout_session(user, "tokens-small", "payment", "paid");
    let pi = half["payment_intent"].as_str().unwrap().to_string();
    deliver(&app, &event("charge.refunded", refunded_charge(&random_id("ch_3Q"), &pi, 499, 250))).await;
    deliver(&app, &event("checkout.session.completed", half.clone())).await;
    assert_eq!(app.tokens_of(user).await, 55);
    assert_eq!(order_row(&app, half["id"].as_str().unwrap()).await, ("completed".into(), 110, 55, 0));
    assert_eq!(debt_of(&app, user).await, 0);
    app.assert_ledger_consistent().await;
}

/// Tokens bought, spent, then the charge lost in a dispute: what was spent is a debt,
/// paid features answer `account_in_debt` while it lasts, and the next credit pays it
/// first.
#[tokio::test]
async fn a_dispute_lost_after_the_tokens_were_spent_leaves_a_debt_the_next_credit_pays() {
    // The premium voice configured (its upstream is never reached: the charge comes first).
    let app = spawn_with(|vars| {
        vars.insert("elevenlabs_api_key".into(), "xi-test-key".into());
        vars.insert("elevenlabs_base_url".into(), "http://127.0.0.1:9".into());
        vars.insert("elevenlabs_default_voice_id".into(), "21m00Tcm4TlvDq8ikWAM".into());
    })
    .await;
    let user = app.create_user().await;
    let (session, pi) = bought(&app, user, "tokens-small").await;
    assert_eq!(spend(&app, user, 50_000, "tts-a").await["ok"], true); // 100 tokens
    assert_eq!(app.tokens_of(user).await, 10);
    let (charge, dp) = (random_id("ch_3Q"), random_id("dp_1Q"));
    deliver(&app, &event("charge.dispute.created", dispute(&dp, &charge, &pi, 499, "needs_response"))).await;
    deliver(&app, &event("charge.dispute.closed", dispute(&dp, &charge, &pi, 499, "lost"))).await;
    assert_eq!((app.tokens_of(user).await, debt_of(&app, user).await), (0, 100));
    assert_eq!(order_row(&app, &session).await, ("completed".into(), 110, 10, 100));

    // Free tokens earned meanwhile pay the debt at the next spend; a debt left refuses it.
    app.grant_tokens(user, 30).await;
    let refused = spend(&app, user, 500, "tts-b").await;
    assert_eq!((refused["ok"].as_bool(), refused["reason"].as_str()), (Some(false), Some("account_in_debt")));
    assert_eq!((refused["debt"].as_i64(), refused["balance"].as_i64()), (Some(70), Some(0)));
    assert_eq!((app.tokens_of(user).await, debt_of(&app, user).await), (0, 70));

    // The next purchase pays the rest first.
    bought(&app, user, "tokens-small").await;
    assert_eq!((app.tokens_of(user).await, debt_of(&app, user).await), (40, 0));
    assert_eq!(spend(&app, user, 500, "tts-c").await["ok"], true);
    app.assert_ledger_consistent().await;

    // The same through the paid endpoint: a premium voice call answers 402 account_in_debt.
    let other = app.create_user().await;
    let (_, pi) = bought(&app, other, "tokens-small").await;
    assert_eq!(spend(&app, other, 55_000, "tts-d").await["ok"], true);
    deliver(&app, &event("charge.refunded", refunded_charge(&random_id("ch_3Q"), &pi, 499, 499))).await;
    assert_eq!((app.tokens_of(other).await, debt_of(&app, other).await), (0, 110));
    let answer = app
        .client
        .post(app.url("/functions/v1/elevenlabs-tts-proxy"))
        .bearer_auth(app.token_for(other))
        .json(&json!({"text": "Breathe in.", "voice_id": "21m00Tcm4TlvDq8ikWAM"}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (402, Some("account_in_debt")), "{body}");
    assert_eq!(body["debt"], 110);
    app.assert_ledger_consistent().await;
}

/// The final balance, debt and order are the same for every arrival order of a
/// purchase's events (all 24 orders of purchase, refund, dispute created and dispute
/// closed, each delivered through the webhook, the first one delivered twice), for
/// refunds and dispute outcomes that move the order in different directions.
#[tokio::test]
async fn every_arrival_order_of_a_purchases_events_ends_in_the_same_state() {
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, n - 1);
                out.push(q);
            }
        }
        out
    }
    let app = spawn().await;
    // (refunded of 499 cents, dispute outcome, tokens left of the 40 + 110, order status)
    let scenarios = [
        (499, "lost", 40, "refunded"),
        (250, "won", 95, "completed"),
        (250, "lost", 40, "completed"),
        (0, "won", 150, "completed"),
    ];
    // The scenarios run side by side (each its own users); the orders within one in turn.
    let runs = join_all(scenarios.map(|(refunded, outcome, expected_tokens, expected_status)| {
        let app = &app;
        async move {
            let mut runs = 0;
            for order in permutations(4) {
                let user = app.create_user().await;
                // Tokens from elsewhere, part of them spent before any of these events.
                app.grant_tokens(user, 60).await;
                assert_eq!(spend(app, user, 10_000, "before").await["ok"], true); // 20 tokens
                let session = checkout_session(user, "tokens-small", "payment", "paid");
                let (session_id, pi) = (
                    session["id"].as_str().unwrap().to_string(),
                    session["payment_intent"].as_str().unwrap().to_string(),
                );
                let (charge, dp) = (random_id("ch_3Q"), random_id("dp_1Q"));
                let events = [
                    event("checkout.session.completed", session),
                    if refunded > 0 {
                        event("charge.refunded", refunded_charge(&charge, &pi, 499, refunded))
                    } else {
                        event("charge.succeeded", refunded_charge(&charge, &pi, 499, 0))
                    },
                    event("charge.dispute.created", dispute(&dp, &charge, &pi, 499, "needs_response")),
                    event("charge.dispute.closed", dispute(&dp, &charge, &pi, 499, outcome)),
                ];
                for &i in order.iter().chain(order.first()) {
                    let (status, answer) = deliver(app, &events[i]).await;
                    assert_eq!(status, 200, "{order:?}: {answer}");
                }
                let target = if outcome == "lost" { 110 } else { 110 * refunded as i32 / 499 };
                assert_eq!(
                    (app.tokens_of(user).await, debt_of(app, user).await),
                    (expected_tokens, 0),
                    "{refunded} {outcome} {order:?}"
                );
                let (status, tokens, reversed, shortfall) = order_row(app, &session_id).await;
                assert_eq!(
                    (status.as_str(), tokens, reversed + shortfall),
                    (expected_status, 110, target),
                    "{order:?}"
                );
                runs += 1;
            }
            runs
        }
    }))
    .await
    .into_iter()
    .sum::<i32>();
    assert_eq!(runs, 96);
    app.assert_ledger_consistent().await;
}
