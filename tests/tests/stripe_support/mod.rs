//! Shared by the two Stripe test binaries: the app with a fake Stripe API (wiremock on
//! loopback), signed deliveries, and event payloads shaped like Stripe's for the pinned
//! API version (2025-03-31.basil).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use libero_tests::testing::{Instance, TestApp};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const SECRET_KEY: &str = "sk_test_fake-libero-key-never-logged";
pub const WEBHOOK_SECRET: &str = "whsec_primary_test_secret";
pub const OLD_WEBHOOK_SECRET: &str = "whsec_previous_test_secret";
pub const API_VERSION: &str = "2025-03-31.basil";

pub const PRICES: [(&str, &str); 4] = [
    ("stripe_price_mystic_subscription", "price_1MysticMonthly"),
    ("stripe_price_tokens_small", "price_1TokensSmall"),
    ("stripe_price_tokens_medium", "price_1TokensMedium"),
    ("stripe_price_tokens_large", "price_1TokensLarge"),
];

/// What each price costs at the fake Stripe (smallest unit, USD), like the design's
/// price labels.
pub const AMOUNTS: [(&str, i64); 4] =
    [("mystic-subscription", 999), ("tokens-small", 499), ("tokens-medium", 999), ("tokens-large", 1999)];

pub fn amount_of(product: &str) -> i64 {
    AMOUNTS.iter().find(|(p, _)| *p == product).map(|(_, a)| *a).unwrap_or(999)
}

pub fn price_of(product: &str) -> &'static str {
    let variable = format!("stripe_price_{}", product.replace('-', "_"));
    PRICES.iter().find(|(v, _)| **v == variable).map(|(_, p)| *p).unwrap_or("price_1Unknown")
}

/// The line items the fake Stripe answers for each Checkout Session made by
/// [`checkout_session`] (the catalog's price, quantity 1); tests change them with
/// [`set_line_items`] to play a session that was not sold at the catalog's price.
static LINE_ITEMS: LazyLock<Mutex<HashMap<String, Value>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A line-items list as `GET /v1/checkout/sessions/:id/line_items` returns it.
pub fn line_items(price: &str, unit_amount: i64, currency: &str, quantity: i64) -> Value {
    json!({
        "object": "list",
        "data": [{
            "id": random_id("li_1Q"),
            "object": "item",
            "amount_discount": 0,
            "amount_subtotal": unit_amount * quantity,
            "amount_tax": 0,
            "amount_total": unit_amount * quantity,
            "currency": currency,
            "description": "tokens",
            "price": { "id": price, "object": "price", "active": true, "currency": currency,
                       "type": "one_time", "unit_amount": unit_amount, "product": "prod_Rtest" },
            "quantity": quantity,
        }],
        "has_more": false,
        "url": "/v1/checkout/sessions/cs_test/line_items",
    })
}

pub fn set_line_items(session_id: &str, items: Value) {
    LINE_ITEMS.lock().unwrap().insert(session_id.to_string(), items);
}

struct LineItems;

impl Respond for LineItems {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let id = request.url.path().trim_start_matches("/v1/checkout/sessions/").trim_end_matches("/line_items");
        match LINE_ITEMS.lock().unwrap().get(id) {
            Some(items) => ResponseTemplate::new(200).set_body_json(items),
            None => ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
                "code": "resource_missing", "message": format!("No such checkout.session: '{id}'")}})),
        }
    }
}

/// Serves the line items of the sessions [`checkout_session`] made, on `stripe` (the
/// webhook re-reads them before it credits a payment).
pub async fn serve_line_items(stripe: &MockServer) {
    Mock::given(method("GET"))
        .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+/line_items$"))
        .respond_with(LineItems)
        .mount(stripe)
        .await;
}

/// A fake Stripe that knows only the sessions' line items.
pub async fn fake_stripe() -> MockServer {
    let stripe = MockServer::start().await;
    serve_line_items(&stripe).await;
    stripe
}

/// The app on a fresh database, with Stripe pointed at a
/// fake on loopback.
pub struct StripeApp {
    pub app: TestApp,
    pub stripe: MockServer,
}

impl std::ops::Deref for StripeApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// The app's Stripe settings: the API at `api_base` (a fake), the test key, the webhook
/// secret and the catalog's price ids.
pub fn stripe_vars(variables: &mut HashMap<String, String>, api_base: &str) {
    for (k, v) in
        [("stripe_api_base", api_base), ("stripe_secret_key", SECRET_KEY), ("stripe_webhook_secrets", WEBHOOK_SECRET)]
    {
        variables.insert(k.to_string(), v.to_string());
    }
    for (name, price) in PRICES {
        variables.insert(name.into(), price.into());
    }
}

pub async fn spawn() -> StripeApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(configure: impl FnOnce(&mut HashMap<String, String>)) -> StripeApp {
    let stripe = fake_stripe().await;
    let stripe_uri = stripe.uri();
    let app = TestApp::spawn_with(|variables| {
        variables.insert("app_origins".into(), "http://localhost:5173,https://app.libero.test".into());
        stripe_vars(variables, &stripe_uri);
        configure(variables);
    })
    .await;
    StripeApp { app, stripe }
}

/// Another instance of the app with these variables (e.g. the same database, or one
/// that cannot reach it), checked against the contract like the test's own when dropped.
pub async fn start_instance(variables: &HashMap<String, String>) -> Instance {
    Instance::start(variables).await
}

/// A `Stripe-Signature` header as Stripe makes it.
pub fn signature(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Posts raw bytes with this signature header (or none) to the webhook at `base`.
pub async fn post_raw(client: &reqwest::Client, url: &str, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut request = client.post(url).header("content-type", "application/json; charset=utf-8").body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    let response = request.send().await.expect("webhook request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Delivers `event` to the app at `url`, signed now with the primary secret.
pub async fn deliver_to(client: &reqwest::Client, url: &str, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    post_raw(client, url, &body, Some(&signature(&body, WEBHOOK_SECRET, now()))).await
}

pub async fn deliver(app: &TestApp, event: &Value) -> (u16, Value) {
    deliver_to(&app.client, &app.url("/functions/v1/stripe-webhook"), event).await
}

pub fn random_id(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..24])
}

/// An event envelope as Stripe sends it.
pub fn event(event_type: &str, object: Value) -> Value {
    json!({
        "id": random_id("evt_1Q"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": random_id("req"), "idempotency_key": Uuid::new_v4().to_string() },
        "type": event_type,
    })
}

/// A Checkout Session made by our checkout for `product`, paid at the catalog's price
/// (its line items are served by [`serve_line_items`]).
pub fn checkout_session(user: Uuid, product: &str, mode: &str, payment_status: &str) -> Value {
    let id = random_id("cs_test_a1");
    let subscription = mode == "subscription";
    let amount = amount_of(product);
    set_line_items(&id, line_items(price_of(product), amount, "usd", 1));
    json!({
        "id": id,
        "object": "checkout.session",
        "adaptive_pricing": { "enabled": false },
        "after_expiration": null,
        "allow_promotion_codes": null,
        "amount_subtotal": amount,
        "amount_total": amount,
        "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
        "billing_address_collection": null,
        "cancel_url": "http://localhost:5173/?checkout=cancel",
        "client_reference_id": user.to_string(),
        "client_secret": null,
        "collected_information": null,
        "consent": null,
        "created": now() - 60,
        "currency": "usd",
        "custom_fields": [],
        "customer": "cus_RtestCustomer01",
        "customer_creation": null,
        "customer_details": { "address": null, "email": format!("{user}@test.local"), "name": null, "phone": null, "tax_exempt": "none", "tax_ids": [] },
        "customer_email": null,
        "discounts": [],
        "expires_at": now() + 86_000,
        "invoice": if subscription { json!(random_id("in_1Q")) } else { Value::Null },
        "invoice_creation": null,
        "livemode": false,
        "locale": null,
        "metadata": { "user_id": user.to_string(), "product": product },
        "mode": mode,
        "payment_intent": if subscription { Value::Null } else { json!(random_id("pi_3Q")) },
        "payment_link": null,
        "payment_method_collection": "if_required",
        "payment_method_types": ["card", "us_bank_account"],
        "payment_status": payment_status,
        "permissions": null,
        "phone_number_collection": { "enabled": false },
        "recovered_from": null,
        "saved_payment_method_options": null,
        "setup_intent": null,
        "shipping_address_collection": null,
        "shipping_cost": null,
        "status": "complete",
        "submit_type": null,
        "subscription": if subscription { json!("sub_1QtestSubscription") } else { Value::Null },
        "success_url": "http://localhost:5173/?checkout=success&session_id={CHECKOUT_SESSION_ID}",
        "total_details": { "amount_discount": 0, "amount_shipping": 0, "amount_tax": 0 },
        "ui_mode": "hosted",
        "url": null,
    })
}

/// A subscription as `GET /v1/subscriptions/:id` returns it in 2025-03-31.basil (the
/// current period is on the item).
pub fn subscription(id: &str, user: Uuid, status: &str, cancel_at_period_end: bool) -> Value {
    let start = now() - 3600;
    json!({
        "id": id,
        "object": "subscription",
        "application": null,
        "automatic_tax": { "disabled_reason": null, "enabled": false, "liability": null },
        "billing_cycle_anchor": start,
        "cancel_at": null,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": if status == "canceled" { json!(now()) } else { Value::Null },
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "customer": "cus_RtestCustomer01",
        "default_payment_method": "pm_1Qtest",
        "ended_at": null,
        "items": {
            "object": "list",
            "data": [{
                "id": "si_Rtest",
                "object": "subscription_item",
                "created": start,
                "current_period_start": start,
                "current_period_end": start + 30 * 86_400,
                "metadata": {},
                "price": { "id": "price_1MysticMonthly", "object": "price", "recurring": { "interval": "month", "interval_count": 1 }, "unit_amount": 999, "currency": "usd" },
                "quantity": 1,
                "subscription": id,
            }],
            "has_more": false,
            "url": format!("/v1/subscription_items?subscription={id}"),
        },
        "latest_invoice": "in_1Qtest",
        "livemode": false,
        "metadata": { "user_id": user.to_string(), "product": "mystic-subscription" },
        "start_date": start,
        "status": status,
        "trial_end": null,
        "trial_start": null,
    })
}

/// An invoice of a subscription, as in 2025-03-31.basil (`parent.subscription_details`).
pub fn invoice(subscription_id: &str, status: &str) -> Value {
    json!({
        "id": random_id("in_1Q"),
        "object": "invoice",
        "amount_due": 999,
        "amount_paid": if status == "paid" { 999 } else { 0 },
        "billing_reason": "subscription_cycle",
        "currency": "usd",
        "customer": "cus_RtestCustomer01",
        "parent": {
            "quote_details": null,
            "subscription_details": { "metadata": {}, "subscription": subscription_id },
            "type": "subscription_details",
        },
        "status": status,
    })
}

/// A charge after a refund of `refunded` of `amount`.
pub fn refunded_charge(charge_id: &str, payment_intent: &str, amount: i64, refunded: i64) -> Value {
    json!({
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": refunded,
        "captured": true,
        "currency": "usd",
        "customer": "cus_RtestCustomer01",
        "paid": true,
        "payment_intent": payment_intent,
        "refunded": refunded >= amount,
        "status": "succeeded",
    })
}

/// A dispute on a charge, as `charge.dispute.*` events carry it.
pub fn dispute(dispute_id: &str, charge_id: &str, payment_intent: &str, amount: i64, status: &str) -> Value {
    json!({
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge_id,
        "created": now(),
        "currency": "usd",
        "evidence_details": { "due_by": now() + 7 * 86_400, "has_evidence": false, "past_due": false, "submission_count": 0 },
        "is_charge_refundable": false,
        "livemode": false,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
    })
}

/// Everything an app's database says about Stripe, for assertions.
pub async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db_client().await.query_one(sql, &[]).await.expect(sql).get(0)
}

/// How long Stripe keeps events: older ones are neither listed nor usable as a cursor.
pub const RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Stripe's event log (`GET /v1/events`), stateful and as Stripe documents it: newest
/// first (by `created`, then by when the event entered the log); `created[gt|gte|lt|lte]`,
/// `types[]` (at most 20), `limit` (1 to 100, default 10); `starting_after` (the page
/// after an event, older) and `ending_before` (the page just before it, newer, still
/// newest first); `has_more`; 30 days of retention, and 404 `resource_missing` for a
/// cursor that is not in the log. An event pushed with an older `created` than events
/// already listed plays an event Stripe listed late. On demand: a delay per page, 429
/// answers, 500 answers.
#[derive(Clone, Default)]
pub struct EventLog {
    /// Oldest first.
    events: Arc<Mutex<Vec<Value>>>,
    pub failing: Arc<AtomicBool>,
    /// The next this many list requests answer 429.
    pub rate_limit_next: Arc<AtomicUsize>,
    pub delay: Arc<Mutex<Duration>>,
    /// List requests answered (429s and 500s included).
    pub lists: Arc<AtomicUsize>,
    pub rate_limited: Arc<AtomicUsize>,
}

impl EventLog {
    /// Adds an event where its `created` puts it (after any with the same `created`).
    pub fn push(&self, event: Value) {
        let mut events = self.events.lock().unwrap();
        let created = event["created"].as_i64().expect("created");
        let at = events.partition_point(|e| e["created"].as_i64().unwrap() <= created);
        events.insert(at, event);
    }

    /// Adds many events (any order) at once.
    pub fn extend(&self, new: impl IntoIterator<Item = Value>) {
        let mut events = self.events.lock().unwrap();
        events.extend(new);
        events.sort_by_key(|e| e["created"].as_i64().unwrap());
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// The newest event.
    pub fn last(&self) -> Option<Value> {
        self.events.lock().unwrap().last().cloned()
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn answer(&self, request: &Request) -> ResponseTemplate {
        let invalid = |message: String| {
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"type": "invalid_request_error", "message": message}}))
        };
        let mut types = Vec::new();
        let (mut from, mut to) = (i64::MIN, i64::MAX); // inclusive
        let (mut limit, mut after, mut before) = (10usize, None, None);
        for (k, v) in request.url.query_pairs() {
            let created = k.starts_with("created[");
            let number = v.parse::<i64>().ok();
            if created && number.is_none() {
                return invalid(format!("Invalid integer: {v}"));
            }
            let n = number.unwrap_or_default();
            match k.as_ref() {
                "types[]" => types.push(v.to_string()),
                "created[gte]" => from = from.max(n),
                "created[gt]" => from = from.max(n + 1),
                "created[lte]" => to = to.min(n),
                "created[lt]" => to = to.min(n - 1),
                "limit" => match v.parse() {
                    Ok(n @ 1..=100) => limit = n,
                    _ => return invalid(format!("Invalid limit: {v}: must be between 1 and 100.")),
                },
                "starting_after" => after = Some(v.to_string()),
                "ending_before" => before = Some(v.to_string()),
                other => return invalid(format!("Received unknown parameter: {other}")),
            }
        }
        if types.len() > 20 {
            return invalid("types: at most 20 event types".into());
        }
        if after.is_some() && before.is_some() {
            return invalid("You may only specify one of these parameters: ending_before, starting_after.".into());
        }
        let oldest_kept = now() - RETENTION_SECS;
        let events = self.events.lock().unwrap();
        let kept = |e: &Value| e["created"].as_i64().unwrap() >= oldest_kept;
        let listed = |e: &&Value| {
            let created = e["created"].as_i64().unwrap();
            kept(e)
                && (from..=to).contains(&created)
                && (types.is_empty() || types.iter().any(|t| t == e["type"].as_str().unwrap()))
        };
        // A cursor is a place in the whole log, whatever the filters.
        let place = |id: &str| events.iter().position(|e| e["id"].as_str() == Some(id) && kept(e));
        let (data, has_more): (Vec<Value>, bool) = match (after, before) {
            (Some(id), _) => {
                let Some(at) = place(&id) else { return missing(&id) };
                // Older than the cursor, newest first (one more than a page says has_more).
                let older: Vec<&Value> = events[..at].iter().rev().filter(listed).take(limit + 1).collect();
                (older.iter().take(limit).map(|e| (*e).clone()).collect(), older.len() > limit)
            }
            (None, Some(id)) => {
                let Some(at) = place(&id) else { return missing(&id) };
                // The page just newer than the cursor, still newest first.
                let newer: Vec<&Value> = events[at + 1..].iter().filter(listed).take(limit + 1).collect();
                let page = &newer[..newer.len().min(limit)];
                (page.iter().rev().map(|e| (*e).clone()).collect(), newer.len() > limit)
            }
            (None, None) => {
                let all: Vec<&Value> = events.iter().rev().filter(listed).take(limit + 1).collect();
                (all.iter().take(limit).map(|e| (*e).clone()).collect(), all.len() > limit)
            }
        };
        ResponseTemplate::new(200).set_body_json(json!({"object": "list", "url": "/v1/events",
            "has_more": has_more, "data": data}))
    }
}

impl Respond for EventLog {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        let answer =
            if self.rate_limit_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                self.rate_limited.fetch_add(1, Ordering::SeqCst);
                ResponseTemplate::new(429).set_body_json(json!({"error": {"type": "invalid_request_error",
                "code": "rate_limit", "message": "Too many requests hit the API too quickly."}}))
            } else if self.failing.load(Ordering::SeqCst) {
                ResponseTemplate::new(500)
                    .set_body_json(json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}))
            } else {
                self.answer(request)
            };
        answer.set_delay(delay)
    }
}

fn missing(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
        "code": "resource_missing", "message": format!("No such event: '{id}'")}}))
}

/// Serves a new, empty [`EventLog`] on `stripe`.
pub async fn serve_event_log(stripe: &MockServer) -> EventLog {
    let log = EventLog::default();
    Mock::given(method("GET")).and(path("/v1/events")).respond_with(log.clone()).mount(stripe).await;
    log
}
