//! stripe-checkout end to end: the real component through the host, a real database, and
//! a fake Stripe API (wiremock) on loopback that records what the component sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stripe_support::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, ResponseTemplate};

const CHECKOUT: &str = "/functions/v1/stripe-checkout";

/// A form body as Stripe receives it, decoded.
fn form(request: &Request) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).expect("hex escape"));
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }
    String::from_utf8(request.body.clone())
        .unwrap()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn header(request: &Request, name: &str) -> Option<String> {
    request.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// The fake Stripe: customers (a new id per call, as if Stripe did not deduplicate, after
/// `customer_delay`), Checkout Sessions and Billing Portal sessions.
async fn fake_stripe(app: &StripeApp, customer_delay: Duration) {
    let customers = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(move |_: &Request| {
            let n = customers.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(200)
                .set_delay(customer_delay)
                .set_body_json(json!({"id": format!("cus_Rtest{n:04}"), "object": "customer", "livemode": false}))
        })
        .mount(&app.stripe)
        .await;
    let sessions = Arc::new(AtomicUsize::new(0));
    // Unique across the tests of this binary: the line items the fake Stripe serves are
    // kept per session id in one table shared by all of them.
    let unique = Uuid::new_v4().simple().to_string()[..12].to_string();
    Mock::given(method("POST"))
        .and(path("/v1/checkout/sessions"))
        .respond_with(move |request: &Request| {
            let n = sessions.fetch_add(1, Ordering::SeqCst);
            let sent = form(request);
            let id = format!("cs_test_a1Libero{n:04}{unique}");
            ResponseTemplate::new(200).set_body_json(json!({
                "id": id,
                "object": "checkout.session",
                "mode": sent.get("mode"),
                "customer": sent.get("customer"),
                "payment_status": "unpaid",
                "status": "open",
                "url": format!("https://checkout.stripe.com/c/pay/{id}#fidkdWxOYHwnPyd1blpxYHZxWjA0"),
            }))
        })
        .mount(&app.stripe)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/billing_portal/sessions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "bps_1QLibero", "object": "billing_portal.session",
            "url": "https://billing.stripe.com/p/session/test_YWNjdF8xTGliZXJv",
        })))
        .mount(&app.stripe)
        .await;
}

async fn requests_to(app: &StripeApp, path: &str) -> Vec<Request> {
    app.stripe.received_requests().await.unwrap_or_default().into_iter().filter(|r| r.url.path() == path).collect()
}

async fn checkout(app: &StripeApp, user: Uuid, body: Value) -> (u16, Value) {
    let response =
        app.client.post(app.url(CHECKOUT)).bearer_auth(app.token_for(user)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn products_are_listed_from_the_server_catalog_without_sign_in() {
    let app = spawn().await;
    let response = app.client.get(app.url(&format!("{CHECKOUT}/products"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let products: Vec<(String, String, i64, i64, String)> = body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            // Sold at the `stripe_price_*` overrides, which the database has not stored:
            // the amount is unknown, and the label is the catalog's own price.
            assert_eq!(p["available"], true);
            assert!(p["amount"].is_null() && p["currency"].is_null(), "{p}");
            (
                p["product"].as_str().unwrap().into(),
                p["kind"].as_str().unwrap().into(),
                p["tokens"].as_i64().unwrap(),
                p["bonus"].as_i64().unwrap(),
                p["price_label"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        products,
        vec![
            ("mystic-subscription".into(), "subscription".into(), 0, 0, "$9.99 / month".into()),
            ("tokens-small".into(), "tokens".into(), 100, 10, "$4.99".into()),
            ("tokens-medium".into(), "tokens".into(), 250, 50, "$9.99".into()),
            ("tokens-large".into(), "tokens".into(), 500, 150, "$19.99".into()),
        ]
    );
    assert!(requests_to(&app, "/v1/customers").await.is_empty());
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn checkout_for_each_product_makes_one_customer_and_a_session() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;

    for (product, price) in [
        ("mystic-subscription", "price_1MysticMonthly"),
        ("tokens-small", "price_1TokensSmall"),
        ("tokens-medium", "price_1TokensMedium"),
        ("tokens-large", "price_1TokensLarge"),
    ] {
        let (status, body) = checkout(&app, user, json!({ "product": product })).await;
        assert_eq!(status, 200, "{product}: {body}");
        let session_id = body["session_id"].as_str().unwrap();
        assert!(session_id.starts_with("cs_test_"));
        assert_eq!(
            body["url"].as_str().unwrap(),
            format!("https://checkout.stripe.com/c/pay/{session_id}#fidkdWxOYHwnPyd1blpxYHZxWjA0")
        );

        let sent = requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap();
        let f = form(&sent);
        let subscription = product == "mystic-subscription";
        let nested = if subscription { "subscription_data" } else { "payment_intent_data" };
        assert_eq!(f["mode"], if subscription { "subscription" } else { "payment" });
        assert_eq!(f["line_items[0][price]"], price);
        assert_eq!(f["line_items[0][quantity]"], "1");
        assert_eq!(f["customer"], "cus_Rtest0000");
        assert_eq!(f["client_reference_id"], user.to_string());
        assert_eq!(f["metadata[user_id]"], user.to_string());
        assert_eq!(f["metadata[product]"], product);
        assert_eq!(f[&format!("{nested}[metadata][user_id]")], user.to_string());
        assert_eq!(f["success_url"], "http://localhost:5173/?checkout=success&session_id={CHECKOUT_SESSION_ID}");
        assert_eq!(f["cancel_url"], "http://localhost:5173/?checkout=cancel");
        assert!(!f.keys().any(|k| k.contains("tokens")), "token amounts never go through Stripe or the client");
        assert_eq!(header(&sent, "authorization").unwrap(), format!("Bearer {SECRET_KEY}"));
        assert_eq!(header(&sent, "stripe-version").as_deref(), Some(API_VERSION));
        let key = header(&sent, "idempotency-key").unwrap();
        assert!(key.starts_with(&format!("libero-checkout-{user}-{product}-")), "{key}");
    }

    // A redirect on another configured app origin is passed through.
    let (status, _) = checkout(
        &app,
        user,
        json!({"product": "tokens-small", "success_url": "https://app.libero.test/shop?paid=1", "cancel_url": "https://app.libero.test/shop"}),
    )
    .await;
    assert_eq!(status, 200);
    let f = form(&requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap());
    assert_eq!(f["success_url"], "https://app.libero.test/shop?paid=1");

    let customers = requests_to(&app, "/v1/customers").await;
    assert_eq!(customers.len(), 1, "the customer is created on the first checkout only");
    let f = form(&customers[0]);
    assert_eq!(f["metadata[user_id]"], user.to_string());
    assert_eq!(f["email"], format!("{user}@test.local"));
    assert_eq!(header(&customers[0], "idempotency-key").unwrap(), format!("libero-customer-{user}"));
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.stripe_customers WHERE user_id = '{user}'")).await, 1);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_supabase_template_shape_is_accepted_for_catalog_prices() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let (status, body) = checkout(
        &app,
        user,
        json!({"price_id": "price_1TokensLarge", "mode": "payment",
               "success_url": "http://localhost:5173/success", "cancel_url": "http://localhost:5173/pricing"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let f = form(&requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap());
    assert_eq!((f["metadata[product]"].as_str(), f["mode"].as_str()), ("tokens-large", "payment"));

    let (status, body) = checkout(&app, user, json!({"price_id": "price_1TokensLarge", "mode": "subscription"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("mode_mismatch")));
    let (status, body) = checkout(&app, user, json!({"price_id": "price_1SomeoneElses", "mode": "payment"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unknown_price")));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn racing_first_checkouts_make_one_customer() {
    let app = spawn().await;
    // Every create returns a new customer after a delay, so the requests overlap and a
    // missing guard would show up as several customers.
    fake_stripe(&app, Duration::from_millis(300)).await;
    let user = app.create_user().await;

    let answers = join_all((0..6).map(|_| checkout(&app, user, json!({"product": "tokens-small"})))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let row = app
        .db_client()
        .await
        .query("SELECT customer_id FROM public.stripe_customers WHERE user_id = $1", &[&user])
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    let customer: String = row[0].get(0);

    let creates = requests_to(&app, "/v1/customers").await;
    assert!(creates.len() >= 2, "the requests raced ({} creates)", creates.len());
    let keys: std::collections::HashSet<String> =
        creates.iter().map(|r| header(r, "idempotency-key").unwrap()).collect();
    assert_eq!(keys.len(), 1, "one Idempotency-Key per user, so real Stripe returns one customer: {keys:?}");
    let sessions = requests_to(&app, "/v1/checkout/sessions").await;
    assert_eq!(sessions.len(), 6);
    assert!(sessions.iter().all(|r| form(r)["customer"] == customer), "every session uses the stored customer");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_stripe_is_called() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let cases = [
        (json!({"product": "tokens-infinite"}), 400, "unknown_product"),
        (json!({}), 400, "missing_product"),
        (json!({"product": "tokens-small", "tokens": 100000}), 400, "invalid_body"),
        (json!({"product": "tokens-small", "success_url": "https://evil.test/phish"}), 400, "invalid_redirect"),
        (
            json!({"product": "tokens-small", "success_url": "http://localhost:5173.evil.test/"}),
            400,
            "invalid_redirect",
        ),
        (json!({"product": "tokens-small", "cancel_url": "http://localhost:5173@evil.test/"}), 400, "invalid_redirect"),
        (json!({"product": "tokens-small", "cancel_url": "javascript:alert(1)"}), 400, "invalid_redirect"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = checkout(&app, user, body.clone()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
    }
    // An Idempotency-Key that is not a plain token is refused, not silently replaced: the
    // client would believe its retries were safe.
    let checkout_body = json!({"product": "tokens-small"});
    let portal = format!("{CHECKOUT}/portal");
    let long = "k".repeat(65);
    for (route, body, key) in
        [(CHECKOUT, &checkout_body, "a b"), (CHECKOUT, &checkout_body, ""), (&portal, &json!({}), &long)]
    {
        let response = app
            .client
            .post(app.url(route))
            .bearer_auth(app.token_for(user))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{route} {key:?}: {answer}"
        );
    }
    let response = app.client.post(app.url(CHECKOUT)).json(&json!({"product": "tokens-small"})).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = app.client.get(app.url(CHECKOUT)).send().await.unwrap();
    assert_eq!(response.status(), 405);
    // A valid token for a user this project does not have: no customer is made for them.
    let ghost = Uuid::new_v4();
    let (status, answer) = checkout(&app, ghost, json!({"product": "tokens-small"})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("user_not_found")), "{answer}");
    let response =
        app.client.post(app.url(&format!("{CHECKOUT}/portal"))).bearer_auth(app.token_for(ghost)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(app.stripe.received_requests().await.unwrap().is_empty(), "Stripe was never called");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.stripe_customers WHERE user_id = '{user}'")).await, 0);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_subscriber_asking_again_is_pointed_at_the_portal() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let db = app.db_client().await;
    db.execute("INSERT INTO public.stripe_customers (user_id, customer_id) VALUES ($1, 'cus_RtestExisting')", &[&user])
        .await
        .unwrap();
    db.execute(
        "INSERT INTO public.stripe_subscriptions (subscription_id, customer_id, user_id, status, stripe_updated_at)
         VALUES ('sub_1QExisting', 'cus_RtestExisting', $1, 'active', now())",
        &[&user],
    )
    .await
    .unwrap();

    let (status, body) = checkout(&app, user, json!({"product": "mystic-subscription"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_subscribed")), "{body}");
    assert_eq!(body["portal"], "/functions/v1/stripe-checkout/portal");
    assert!(requests_to(&app, "/v1/checkout/sessions").await.is_empty());

    // Token packages are still for sale, on the existing customer.
    let (status, _) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!(status, 200);
    assert!(requests_to(&app, "/v1/customers").await.is_empty());
    assert_eq!(form(&requests_to(&app, "/v1/checkout/sessions").await[0])["customer"], "cus_RtestExisting");

    // The portal.
    let response = app
        .client
        .post(app.url(&format!("{CHECKOUT}/portal")))
        .bearer_auth(app.token_for(user))
        .json(&json!({"return_url": "https://app.libero.test/account"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["url"], "https://billing.stripe.com/p/session/test_YWNjdF8xTGliZXJv");
    let sent = requests_to(&app, "/v1/billing_portal/sessions").await;
    let f = form(&sent[0]);
    assert_eq!(
        (f["customer"].as_str(), f["return_url"].as_str()),
        ("cus_RtestExisting", "https://app.libero.test/account")
    );
    assert!(header(&sent[0], "idempotency-key").is_some());
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_portal_is_404_for_a_user_who_never_paid_and_checks_the_return_url() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let portal = app.url(&format!("{CHECKOUT}/portal"));
    let response = app.client.post(&portal).bearer_auth(app.token_for(user)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_customer");

    let response = app
        .client
        .post(&portal)
        .bearer_auth(app.token_for(user))
        .json(&json!({"return_url": "https://evil.test/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = app.client.post(&portal).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(app.stripe.received_requests().await.unwrap().is_empty());

    // An abandoned checkout makes a customer, but still nothing to manage.
    let (status, _) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!(status, 200);
    let response = app.client.post(&portal).bearer_auth(app.token_for(user)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(requests_to(&app, "/v1/billing_portal/sessions").await.is_empty());
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn stripe_errors_become_502_with_our_message_and_stripes_text_only_in_the_log() {
    let app = spawn().await;
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(ResponseTemplate::new(401).insert_header("stripe-should-retry", "false").set_body_json(json!({
            "error": {
                "type": "invalid_request_error",
                "message": format!("Invalid API Key provided: {}", SECRET_KEY),
                "request_log_url": "https://dashboard.stripe.com/test/logs/req_secret?t=1",
            }
        })))
        .mount(&app.stripe)
        .await;
    let user = app.create_user().await;
    let (status, body) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("stripe_error")), "{body}");
    assert_eq!(body["stripe_error_type"], "invalid_request_error");
    let text = body.to_string();
    assert!(!text.contains("Invalid API Key") && !text.contains(SECRET_KEY), "{text}");
    assert!(!text.contains("request_log_url") && !text.contains("req_secret"), "{text}");
    let logs = app.logs().join("\n");
    assert!(logs.contains("Invalid API Key provided"), "Stripe's text is logged: {logs}");
    assert!(!logs.contains(SECRET_KEY), "{logs}");
    assert_eq!(requests_to(&app, "/v1/customers").await.len(), 1, "not retried when Stripe says so");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn stripe_error_text_naming_objects_never_reaches_the_client() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let leaked = "No such price: 'price_1TokensSmall'; a similar object exists in live mode";
    Mock::given(method("POST"))
        .and(path("/v1/checkout/sessions"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"type": "invalid_request_error", "code": "resource_missing", "param": "line_items[0][price]", "message": leaked}
        })))
        .with_priority(1)
        .mount(&app.stripe)
        .await;
    let user = app.create_user().await;
    let (status, body) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("stripe_error")), "{body}");
    let text = body.to_string();
    for private in ["price_1TokensSmall", "No such price", "live mode", "line_items", "cus_"] {
        assert!(!text.contains(private), "the answer names {private}: {text}");
    }
    assert!(app.logs().iter().any(|l| l.contains(leaked)), "Stripe's text is in the log for the operator");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn anonymous_sign_ins_cannot_buy_unless_allowed() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let now = chrono::Utc::now().timestamp();
    let guest = app.token_with_claims(json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated", "email": "",
        "is_anonymous": true, "iat": now, "exp": now + 3600,
    }));
    for body in [json!({"product": "tokens-small"}), json!({"product": "mystic-subscription"})] {
        let response = app.client.post(app.url(CHECKOUT)).bearer_auth(&guest).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 403);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "anonymous_not_allowed", "{answer}");
    }
    assert!(app.stripe.received_requests().await.unwrap().is_empty(), "nothing was created at Stripe");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.stripe_customers WHERE user_id = '{user}'")).await, 0);

    // An operator who allows it: the same guest can buy.
    let open = spawn_with(|vars| {
        vars.insert("anonymous_paid_access".into(), "true".into());
    })
    .await;
    fake_stripe(&open, Duration::ZERO).await;
    let user = open.create_user().await;
    let guest = open.token_with_claims(json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
        "is_anonymous": true, "iat": now, "exp": now + 3600,
    }));
    let response = open
        .client
        .post(open.url(CHECKOUT))
        .bearer_auth(&guest)
        .json(&json!({"product": "tokens-small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stripe_that_does_not_answer_is_given_up_on_in_bounded_time() {
    let app = spawn().await;
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(
            ResponseTemplate::new(200).set_delay(Duration::from_secs(60)).set_body_json(json!({"id": "cus_late"})),
        )
        .mount(&app.stripe)
        .await;
    let user = app.create_user().await;
    let started = Instant::now();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(45), checkout(&app, user, json!({"product": "tokens-small"})))
            .await
            .expect("the endpoint answers before the upstream does");
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("stripe_unavailable")), "{body}");
    // Two attempts of at most 10 s each, plus the pause between them.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let creates = requests_to(&app, "/v1/customers").await;
    assert_eq!(creates.len(), 2);
    assert_eq!(header(&creates[0], "idempotency-key"), header(&creates[1], "idempotency-key"));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn racing_first_checkouts_against_an_idempotent_stripe_all_succeed_with_one_customer() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    // Stripe's Idempotency-Key behaviour: while the first request with a key is in
    // progress, others with that key get 409 `idempotency_error`; afterwards they get the
    // first response again. A new key creates a new customer.
    let seen: Arc<std::sync::Mutex<HashMap<String, (Instant, String)>>> = Default::default();
    let created = Arc::new(AtomicUsize::new(0));
    let counter = created.clone();
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(move |request: &Request| {
            let key = header(request, "idempotency-key").expect("an Idempotency-Key");
            let mut seen = seen.lock().unwrap();
            match seen.get(&key) {
                Some((started, _)) if started.elapsed() < Duration::from_millis(300) => ResponseTemplate::new(409)
                    .set_body_json(json!({"error": {"type": "idempotency_error",
                        "message": "There is currently another in-progress request using this Idempotent Key. Please try again later."}})),
                Some((_, id)) => ResponseTemplate::new(200)
                    .insert_header("idempotent-replayed", "true")
                    .set_body_json(json!({"id": id, "object": "customer"})),
                None => {
                    let id = format!("cus_RIdem{:04}", counter.fetch_add(1, Ordering::SeqCst));
                    seen.insert(key, (Instant::now(), id.clone()));
                    ResponseTemplate::new(200)
                        .set_delay(Duration::from_millis(300))
                        .set_body_json(json!({"id": id, "object": "customer"}))
                }
            }
        })
        .with_priority(1)
        .mount(&app.stripe)
        .await;
    let user = app.create_user().await;

    let answers = join_all((0..4).map(|_| checkout(&app, user, json!({"product": "tokens-medium"})))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(created.load(Ordering::SeqCst), 1, "Stripe created one customer");
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.stripe_customers WHERE user_id = '{user}'")).await, 1);
    let sessions = requests_to(&app, "/v1/checkout/sessions").await;
    assert!(sessions.iter().all(|r| form(r)["customer"] == "cus_RIdem0000"));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_whole_loop_checkout_then_webhook_credits_the_package_and_the_plan() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;

    // Token package: the session Stripe completes carries what our checkout sent.
    let (status, body) = checkout(&app, user, json!({"product": "tokens-large"})).await;
    assert_eq!(status, 200, "{body}");
    let sent = form(&requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap());
    let mut session = checkout_session(user, "tokens-large", "payment", "paid");
    session["id"] = body["session_id"].clone();
    // Stripe's line items for it: the catalog's price, which the webhook checks.
    set_line_items(
        body["session_id"].as_str().unwrap(),
        line_items(price_of("tokens-large"), amount_of("tokens-large"), "usd", 1),
    );
    session["customer"] = json!(sent["customer"]);
    session["client_reference_id"] = json!(sent["client_reference_id"]);
    session["metadata"] = json!({"user_id": sent["metadata[user_id]"], "product": sent["metadata[product]"]});
    let (status, answer) = deliver(&app, &event("checkout.session.completed", session)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 650);

    // Subscription: Stripe's subscription carries the subscription_data metadata.
    let (status, _) = checkout(&app, user, json!({"product": "mystic-subscription"})).await;
    assert_eq!(status, 200);
    let sent = form(&requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap());
    assert_eq!(sent["subscription_data[metadata][user_id]"], user.to_string());
    let mut stripe_subscription = subscription("sub_1QtestSubscription", user, "active", false);
    stripe_subscription["customer"] = json!(sent["customer"]);
    Mock::given(method("GET"))
        .and(path("/v1/subscriptions/sub_1QtestSubscription"))
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription))
        .mount(&app.stripe)
        .await;
    let mut session = checkout_session(user, "mystic-subscription", "subscription", "paid");
    session["customer"] = json!(sent["customer"]);
    deliver(&app, &event("checkout.session.completed", session)).await;
    let plan: String = app
        .db_client()
        .await
        .query_one("SELECT plan FROM public.user_profiles WHERE id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "mystic");

    // Asking for the subscription again now points at the portal.
    let (status, body) = checkout(&app, user, json!({"product": "mystic-subscription"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_subscribed")));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_customer_deleted_in_stripe_is_replaced_on_the_next_checkout() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let user = app.create_user().await;
    let (status, _) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!(status, 200);

    let deleted = event("customer.deleted", json!({"id": "cus_Rtest0000", "object": "customer", "deleted": true}));
    let (status, answer) = deliver(&app, &deleted).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");

    let (status, _) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!(status, 200);
    let creates = requests_to(&app, "/v1/customers").await;
    assert_eq!(creates.len(), 2);
    assert_eq!(
        header(&creates[1], "idempotency-key").unwrap(),
        format!("libero-customer-{user}-replaces-cus_Rtest0000"),
        "a new key, or Stripe would answer with the deleted customer"
    );
    assert_eq!(form(&requests_to(&app, "/v1/checkout/sessions").await.pop().unwrap())["customer"], "cus_Rtest0001");
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.stripe_customers WHERE deleted_at IS NULL AND user_id = '{user}'")
        )
        .await,
        1
    );
    app.assert_ledger_consistent().await;
}

/// The Checkout Sessions the fake Stripe answers `GET /v1/checkout/sessions/:id` with (404
/// for any other id); a test moves a session along (open, paid, expired) by setting it.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Value>>>);

impl Sessions {
    async fn serve(app: &StripeApp) -> Sessions {
        let sessions = Sessions::default();
        let store = sessions.0.clone();
        Mock::given(method("GET"))
            .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+$"))
            .respond_with(move |request: &Request| {
                let id = request.url.path().rsplit('/').next().unwrap_or("");
                match store.lock().unwrap().get(id) {
                    Some(session) => ResponseTemplate::new(200).set_body_json(session),
                    None => ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
                        "code": "resource_missing", "message": format!("No such checkout.session: '{id}'")}})),
                }
            })
            .mount(&app.stripe)
            .await;
        sessions
    }

    fn set(&self, session: &Value) {
        self.0.lock().unwrap().insert(session["id"].as_str().unwrap().to_string(), session.clone());
    }
}

/// Starts a checkout of `product` for `user` through the endpoint and returns the session
/// as Stripe would show it (still `open`), carrying what our checkout sent, with its line
/// items at the catalog's price.
async fn start(app: &StripeApp, user: Uuid, product: &str) -> Value {
    let (status, body) = checkout(app, user, json!({ "product": product })).await;
    assert_eq!(status, 200, "{body}");
    let id = body["session_id"].as_str().unwrap();
    let sent = form(&requests_to(app, "/v1/checkout/sessions").await.pop().unwrap());
    let mut session = checkout_session(user, product, &sent["mode"], "unpaid");
    session["id"] = json!(id);
    session["status"] = json!("open");
    session["customer"] = json!(sent["customer"]);
    set_line_items(id, line_items(price_of(product), amount_of(product), "usd", 1));
    session
}

fn in_state(session: &Value, status: &str, payment_status: &str) -> Value {
    let mut session = session.clone();
    session["status"] = json!(status);
    session["payment_status"] = json!(payment_status);
    session
}

/// `GET /stripe-checkout/session/{id}` as `user`: (status, body, Retry-After).
async fn session_status(app: &StripeApp, user: Uuid, id: &str) -> (u16, Value, Option<String>) {
    let response = app
        .client
        .get(app.url(&format!("{CHECKOUT}/session/{id}")))
        .bearer_auth(app.token_for(user))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.unwrap_or(Value::Null), retry_after)
}

/// How many times the fake Stripe was asked for the session `id` itself.
async fn session_reads(app: &StripeApp, id: &str) -> usize {
    requests_to(app, &format!("/v1/checkout/sessions/{id}")).await.len()
}

fn state(body: &Value) -> (Option<&str>, Option<bool>, Option<i64>, Option<i64>) {
    (body["status"].as_str(), body["credited"].as_bool(), body["tokens_added"].as_i64(), body["balance"].as_i64())
}

#[tokio::test]
async fn the_success_page_credits_the_purchase_when_the_webhook_is_late() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let user = app.create_user().await;
    let session = start(&app, user, "tokens-small").await;
    let id = session["id"].as_str().unwrap();

    // Back before paying (or with the browser's back button): nothing changes.
    sessions.set(&session);
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&body), (Some("open"), Some(false), Some(0), Some(0)));

    // Paid, and the webhook has not come: this call applies it, checking the line items.
    let paid = in_state(&session, "complete", "paid");
    sessions.set(&paid);
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"session_id": id, "status": "paid", "credited": true, "held_for_review": false,
               "product": "tokens-small", "mode": "payment", "tokens_added": 110, "plan": "free", "balance": 110})
    );
    assert_eq!(requests_to(&app, &format!("/v1/checkout/sessions/{id}/line_items")).await.len(), 1);

    // From the database now: Stripe is not asked again.
    let reads = session_reads(&app, id).await;
    let (status, again, _) = session_status(&app, user, id).await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(session_reads(&app, id).await, reads);

    // The late webhook finds it applied and credits nothing more.
    let (status, answer) = deliver(&app, &event("checkout.session.completed", paid)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 110);
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase' AND user_id = '{user}'")
        )
        .await,
        1
    );
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn twenty_webhooks_and_twenty_success_pages_at_once_credit_once() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let user = app.create_user().await;
    let paid = in_state(&start(&app, user, "tokens-medium").await, "complete", "paid");
    sessions.set(&paid);
    let id = paid["id"].as_str().unwrap();

    // Ten distinct events for the session (completed, as a second endpoint or a replay
    // would send) and ten redeliveries of one, with twenty success pages, all at once.
    let redelivered = event("checkout.session.completed", paid.clone());
    let events: Vec<Value> = (0..20)
        .map(|i| if i % 2 == 0 { redelivered.clone() } else { event("checkout.session.completed", paid.clone()) })
        .collect();
    let webhooks = join_all(events.iter().map(|e| deliver(&app, e)));
    let pages = join_all((0..20).map(|_| session_status(&app, user, id)));
    let (webhooks, pages) = tokio::join!(webhooks, pages);

    for (status, answer) in &webhooks {
        assert_eq!(*status, 200, "{answer}");
        assert!(matches!(answer["outcome"].as_str(), Some("applied" | "duplicate")), "{answer}");
    }
    let tokens = pages[0].1["tokens_added"].as_i64().unwrap();
    assert!(tokens > 0, "{}", pages[0].1);
    for (status, body, _) in &pages {
        assert_eq!(*status, 200, "{body}");
        // Every page sees the purchase, whichever of the forty applied it.
        assert_eq!(state(body), (Some("paid"), Some(true), Some(tokens), Some(tokens)), "{body}");
    }
    assert_eq!(i64::from(app.tokens_of(user).await), tokens);
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase' AND user_id = '{user}'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.stripe_orders WHERE status = 'completed' AND user_id = '{user}'")
        )
        .await,
        1
    );
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_delayed_payment_is_processing_until_the_later_event_credits_it() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let user = app.create_user().await;
    let session = start(&app, user, "tokens-small").await;
    let id = session["id"].as_str().unwrap();

    // A bank debit: the session is complete, the money is not there yet.
    let processing = in_state(&session, "complete", "unpaid");
    sessions.set(&processing);
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!((status, state(&body)), (200, (Some("processing"), Some(false), Some(0), Some(0))), "{body}");
    let (status, answer) = deliver(&app, &event("checkout.session.completed", processing.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.stripe_orders WHERE status = 'pending' AND user_id = '{user}'")
        )
        .await,
        1
    );
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!((status, state(&body)), (200, (Some("processing"), Some(false), Some(0), Some(0))), "{body}");

    // The payment succeeds later; the event credits it, and the page answers from the database.
    let succeeded = in_state(&session, "complete", "paid");
    let (status, answer) = deliver(&app, &event("checkout.session.async_payment_succeeded", succeeded)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    let reads = session_reads(&app, id).await;
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!((status, state(&body)), (200, (Some("paid"), Some(true), Some(110), Some(110))), "{body}");
    assert_eq!(session_reads(&app, id).await, reads, "settled in the database: Stripe is not asked");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_expired_unpaid_or_failed_session_credits_nothing() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let user = app.create_user().await;

    let expired = in_state(&start(&app, user, "tokens-large").await, "expired", "unpaid");
    sessions.set(&expired);
    let (status, body, _) = session_status(&app, user, expired["id"].as_str().unwrap()).await;
    assert_eq!((status, state(&body)), (200, (Some("expired"), Some(false), Some(0), Some(0))), "{body}");

    let open = start(&app, user, "tokens-small").await;
    sessions.set(&open);
    let (status, body, _) = session_status(&app, user, open["id"].as_str().unwrap()).await;
    assert_eq!((status, state(&body)), (200, (Some("open"), Some(false), Some(0), Some(0))), "{body}");

    // A delayed payment that failed: the webhook's order says so, without Stripe.
    let unpaid = in_state(&start(&app, user, "tokens-medium").await, "complete", "unpaid");
    sessions.set(&unpaid);
    let (status, answer) = deliver(&app, &event("checkout.session.async_payment_failed", unpaid.clone())).await;
    assert_eq!(status, 200, "{answer}");
    let id = unpaid["id"].as_str().unwrap();
    let reads = session_reads(&app, id).await;
    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!((status, state(&body)), (200, (Some("failed"), Some(false), Some(0), Some(0))), "{body}");
    assert_eq!(session_reads(&app, id).await, reads);

    assert_eq!(app.tokens_of(user).await, 0);
    assert_eq!(count(&app, &format!("SELECT count(*) FROM public.token_ledger WHERE user_id = '{user}'")).await, 0);
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM public.stripe_orders WHERE status <> 'failed' AND user_id = '{user}'")
        )
        .await,
        0
    );
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn another_users_or_an_unknown_session_is_404_and_stripe_is_not_asked() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let (owner, other) = (app.create_user().await, app.create_user().await);
    let paid = in_state(&start(&app, owner, "tokens-small").await, "complete", "paid");
    sessions.set(&paid);
    let id = paid["id"].as_str().unwrap();

    let (status, foreign, _) = session_status(&app, other, id).await;
    assert_eq!((status, foreign["error"]["code"].as_str()), (404, Some("checkout_session_not_found")), "{foreign}");
    assert!(!foreign.to_string().contains(id), "nothing about the session is revealed: {foreign}");
    for unknown in ["cs_test_a1NoSuchSession", "pi_3QnotASession", "cs_test_a1%2F..%2Fcustomers"] {
        let (status, body, _) = session_status(&app, other, unknown).await;
        assert_eq!((status, &body["error"]), (404, &foreign["error"]), "{unknown}: the same answer as another's");
    }
    assert_eq!(session_reads(&app, id).await, 0, "Stripe is not asked about ids that are not the caller's");
    assert_eq!(requests_to(&app, "/v1/checkout/sessions/cs_test_a1NoSuchSession").await.len(), 0);
    assert_eq!((app.tokens_of(owner).await, app.tokens_of(other).await), (0, 0), "nothing applied");

    let response = app.client.get(app.url(&format!("{CHECKOUT}/session/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // The owner's own call is answered (and credits).
    let (status, body, _) = session_status(&app, owner, id).await;
    assert_eq!((status, state(&body)), (200, (Some("paid"), Some(true), Some(110), Some(110))), "{body}");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_status_is_rate_limited_per_user() {
    let app = spawn_with(|v| {
        v.insert("stripe_session_status_per_hour".into(), "3".into());
    })
    .await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let (user, other) = (app.create_user().await, app.create_user().await);
    let session = start(&app, user, "tokens-small").await;
    sessions.set(&session);
    let id = session["id"].as_str().unwrap();

    for _ in 0..3 {
        let (status, body, _) = session_status(&app, user, id).await;
        assert_eq!(status, 200, "{body}");
    }
    let reads = session_reads(&app, id).await;
    // Unknown ids count too, so guessing cannot go on without bound.
    let (status, body, retry_after) = session_status(&app, user, "cs_test_a1NoSuchSession").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(body["retry_after"].as_u64(), Some(retry_after));
    let (status, _, _) = session_status(&app, user, id).await;
    assert_eq!(status, 429);
    assert_eq!(session_reads(&app, id).await, reads, "a refused call does not reach Stripe");

    // Per user: another user is not limited by this one's calls.
    let (status, body, _) = session_status(&app, other, "cs_test_a1NoSuchSession").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("checkout_session_not_found")));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_success_page_activates_a_subscription_once() {
    let app = spawn().await;
    fake_stripe(&app, Duration::ZERO).await;
    let sessions = Sessions::serve(&app).await;
    let user = app.create_user().await;
    let session = start(&app, user, "mystic-subscription").await;
    let mut stripe_subscription = subscription("sub_1QtestSubscription", user, "active", false);
    stripe_subscription["customer"] = session["customer"].clone();
    Mock::given(method("GET"))
        .and(path("/v1/subscriptions/sub_1QtestSubscription"))
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription))
        .mount(&app.stripe)
        .await;
    let paid = in_state(&session, "complete", "paid");
    sessions.set(&paid);
    let id = paid["id"].as_str().unwrap();

    let (status, body, _) = session_status(&app, user, id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"session_id": id, "status": "paid", "credited": true, "held_for_review": false,
               "product": "mystic-subscription", "mode": "subscription", "tokens_added": 0, "plan": "mystic", "balance": 0})
    );
    let reads = session_reads(&app, id).await;
    let (status, again, _) = session_status(&app, user, id).await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(session_reads(&app, id).await, reads, "answered from the stored subscription");
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM public.stripe_subscriptions WHERE user_id = '{user}'")).await,
        1
    );
}
