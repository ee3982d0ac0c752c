//! The catalog in the database (issue 14), end to end: checkout with no `stripe_price_*`
//! variables sells the stored prices, `/products` shows their amounts, and the webhook's
//! `price.*` / `product.*` events keep the table current, exactly once, in any order.
//! The fake Stripe keeps the prices and products as state (wiremock with a custom
//! `Respond`), so the webhook's re-reads see what Stripe would say now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::stripe_support::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const CHECKOUT: &str = "/functions/v1/stripe-checkout";

/// Stripe's prices and products, by id.
#[derive(Clone, Default)]
struct Catalog(Arc<Mutex<HashMap<String, Value>>>);

impl Catalog {
    fn put(&self, object: Value) {
        self.0.lock().unwrap().insert(object["id"].as_str().unwrap().to_string(), object);
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }

    fn edit(&self, id: &str, change: impl FnOnce(&mut Value)) {
        change(self.0.lock().unwrap().get_mut(id).unwrap());
    }

    fn get(&self, id: &str) -> Value {
        self.0.lock().unwrap()[id].clone()
    }
}

impl Respond for Catalog {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let id = request.url.path().rsplit('/').next().unwrap_or("");
        let objects = self.0.lock().unwrap();
        let Some(object) = objects.get(id) else {
            return ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
                "code": "resource_missing", "message": format!("No such object: '{id}'")}}));
        };
        let mut object = object.clone();
        let expand = request.url.query_pairs().any(|(k, v)| k == "expand[]" && v == "product");
        if expand {
            if let Some(product) = object["product"].as_str().and_then(|p| objects.get(p)) {
                object["product"] = product.clone();
            }
        }
        ResponseTemplate::new(200).set_body_json(object)
    }
}

fn product(id: &str, key: &str) -> Value {
    json!({"id": id, "object": "product", "active": true, "name": key, "metadata": {"libero_product": key},
           "created": 1_750_000_000, "livemode": false})
}

fn price(
    id: &str,
    product: &str,
    lookup_key: Option<&str>,
    amount: i64,
    currency: &str,
    interval: Option<&str>,
    created: i64,
) -> Value {
    json!({"id": id, "object": "price", "active": true, "product": product, "lookup_key": lookup_key,
           "unit_amount": amount, "currency": currency, "billing_scheme": "per_unit", "created": created,
           "metadata": {"libero_product": "x"}, "livemode": false, "type": if interval.is_some() { "recurring" } else { "one_time" },
           "recurring": interval.map(|i| json!({"interval": i, "interval_count": 1}))})
}

/// The app with no price variables, and a fake Stripe serving `catalog`'s objects plus
/// customers, Checkout Sessions and portal sessions.
async fn spawn_catalog_app() -> (StripeApp, Catalog) {
    let app = spawn_with(|vars| {
        for (name, _) in PRICES {
            vars.remove(name);
        }
    })
    .await;
    let catalog = Catalog::default();
    Mock::given(method("GET"))
        .and(path_regex("^/v1/(prices|products)/[A-Za-z0-9_]+$"))
        .respond_with(catalog.clone())
        .mount(&app.stripe)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "cus_RtestCatalog", "object": "customer"})))
        .mount(&app.stripe)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/checkout/sessions"))
        .respond_with(|_: &Request| {
            let id = random_id("cs_test_a1");
            ResponseTemplate::new(200).set_body_json(json!({"id": id, "object": "checkout.session",
                "url": format!("https://checkout.stripe.com/c/pay/{id}")}))
        })
        .mount(&app.stripe)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/billing_portal/sessions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "bps_1", "object": "billing_portal.session",
            "url": "https://billing.stripe.com/p/session/test_catalog"})),
        )
        .mount(&app.stripe)
        .await;
    (app, catalog)
}

/// Stripe's catalog as `libero stripe sync` would leave it, with amounts unlike the
/// code's (EUR), so what is shown and sold is visibly the stored price's.
fn publish(catalog: &Catalog) -> Vec<(&'static str, &'static str)> {
    let sold = [
        ("mystic-subscription", "prod_RMystic", "price_1MysticEur", "libero_mystic_subscription", 1299, Some("month")),
        ("tokens-small", "prod_RSmall", "price_1SmallEur", "libero_tokens_small", 549, None),
        ("tokens-medium", "prod_RMedium", "price_1MediumEur", "libero_tokens_medium", 1099, None),
        ("tokens-large", "prod_RLarge", "price_1LargeEur", "libero_tokens_large", 2199, None),
    ];
    for (key, product_id, price_id, lookup, amount, interval) in sold {
        catalog.put(product(product_id, key));
        catalog.put(price(price_id, product_id, Some(lookup), amount, "eur", interval, 1_750_000_100));
    }
    sold.iter().map(|(key, _, price, ..)| (*key, *price)).collect()
}

async fn products(app: &StripeApp) -> HashMap<String, Value> {
    let response = app.client.get(app.url(&format!("{CHECKOUT}/products"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["product"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

async fn checkout(app: &StripeApp, user: Uuid, body: Value) -> (u16, Value) {
    let response =
        app.client.post(app.url(CHECKOUT)).bearer_auth(app.token_for(user)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn last_session_form(app: &StripeApp, path: &str) -> String {
    let sent =
        app.stripe.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == path).last().unwrap();
    String::from_utf8(sent.body).unwrap()
}

/// What checkout sells now, from the database.
async fn sold(app: &StripeApp) -> Value {
    app.db_client().await.query_one("select public.stripe_catalog('[]'::jsonb)", &[]).await.unwrap().get::<_, Value>(0)
        ["prices"]
        .clone()
}

async fn sold_price(app: &StripeApp, key: &str) -> Option<String> {
    sold(app).await[key]["price_id"].as_str().map(str::to_string)
}

#[tokio::test]
async fn checkout_with_no_price_variables_sells_the_stored_prices() {
    let (app, catalog) = spawn_catalog_app().await;
    let user = app.create_user().await;

    // Before any sync: listed with the catalog's own prices, nothing for sale.
    let listed = products(&app).await;
    assert_eq!(listed["tokens-small"]["price_label"], "$4.99");
    assert_eq!(listed["mystic-subscription"]["price_label"], "$9.99 / month");
    assert!(listed.values().all(|p| p["available"] == false && p["amount"].is_null()), "{listed:?}");
    let (status, body) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("product_unavailable")), "{body}");
    assert!(app.stripe.received_requests().await.unwrap().is_empty(), "nothing was made at Stripe");

    // The sync's objects reach the table through the webhook (as with `stripe listen`
    // running during `libero stripe sync`), and the sync stores its portal configuration.
    let prices = publish(&catalog);
    for (_, price_id) in &prices {
        let (status, answer) = deliver(&app, &event("price.created", catalog.get(price_id))).await;
        assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    }
    app.db_client()
        .await
        .execute(
            "select public.stripe_catalog_store('[]'::jsonb, jsonb_build_object('configuration_id', 'bpc_1Catalog', \
             'read_at_ms', (extract(epoch from now()) * 1000)::bigint))",
            &[],
        )
        .await
        .unwrap();

    let listed = products(&app).await;
    for (key, label, amount) in [
        ("mystic-subscription", "€12.99 / month", 1299),
        ("tokens-small", "€5.49", 549),
        ("tokens-medium", "€10.99", 1099),
        ("tokens-large", "€21.99", 2199),
    ] {
        let p = &listed[key];
        assert_eq!(
            (p["available"].as_bool(), p["price_label"].as_str(), p["amount"].as_i64()),
            (Some(true), Some(label), Some(amount)),
            "{p}"
        );
        assert_eq!(p["currency"], "eur");
    }
    assert_eq!(listed["mystic-subscription"]["interval"], "month");
    assert!(listed["tokens-small"]["interval"].is_null());

    // Each product's session is for its stored price; the template's price_id shape too.
    for (key, price_id) in &prices {
        let (status, body) = checkout(&app, user, json!({"product": key})).await;
        assert_eq!(status, 200, "{key}: {body}");
        let form = last_session_form(&app, "/v1/checkout/sessions").await;
        assert!(form.contains(&format!("line_items%5B0%5D%5Bprice%5D={price_id}&")), "{key}: {form}");
    }
    let (status, body) = checkout(&app, user, json!({"price_id": "price_1LargeEur", "mode": "payment"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(last_session_form(&app, "/v1/checkout/sessions").await.contains("metadata%5Bproduct%5D=tokens-large"));
    let (status, body) = checkout(&app, user, json!({"price_id": "price_1TokensLarge", "mode": "payment"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_price")),
        "a price that is not stored: {body}"
    );

    // Paid at the stored price: credited (the webhook checks the stored price too).
    let mut session = checkout_session(user, "tokens-small", "payment", "paid");
    let session_id = session["id"].as_str().unwrap().to_string();
    session["amount_total"] = json!(549);
    session["currency"] = json!("eur");
    set_line_items(&session_id, line_items("price_1SmallEur", 549, "eur", 1));
    let (status, answer) = deliver(&app, &event("checkout.session.completed", session.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("applied")), "{answer}");
    assert_eq!(app.tokens_of(user).await, 110);
    // A session paid at another price (the old variable's) is held for review.
    let mut other = checkout_session(user, "tokens-small", "payment", "paid");
    set_line_items(other["id"].as_str().unwrap(), line_items("price_1TokensSmall", 499, "usd", 1));
    other["customer"] = json!("cus_RtestCatalog");
    deliver(&app, &event("checkout.session.completed", other.clone())).await;
    assert_eq!(app.tokens_of(user).await, 110);
    let reason: String = app
        .db_client()
        .await
        .query_one(
            "select review_reason from public.stripe_orders where checkout_session_id = $1",
            &[&other["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "price_mismatch");

    // The portal names the configuration the sync made.
    let response =
        app.client.post(app.url(&format!("{CHECKOUT}/portal"))).bearer_auth(app.token_for(user)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(last_session_form(&app, "/v1/billing_portal/sessions").await.contains("configuration=bpc_1Catalog"));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn price_events_update_the_table_exactly_once_in_any_order() {
    for order in [[0, 1], [1, 0]] {
        let (app, catalog) = spawn_catalog_app().await;
        catalog.put(product("prod_RSmall", "tokens-small"));
        catalog.put(price("price_1Old", "prod_RSmall", Some("libero_tokens_small"), 499, "usd", None, 1_750_000_000));
        deliver(&app, &event("price.created", catalog.get("price_1Old"))).await;
        assert_eq!(sold_price(&app, "tokens-small").await.as_deref(), Some("price_1Old"));

        // The sync replaces the price: the new one takes the lookup key, the old one is
        // archived. Stripe's two events, delivered in either order, each three times at once.
        catalog.put(price("price_1New", "prod_RSmall", Some("libero_tokens_small"), 599, "usd", None, 1_750_000_500));
        catalog.edit("price_1Old", |p| {
            p["lookup_key"] = Value::Null;
            p["active"] = json!(false);
        });
        let events =
            [event("price.created", catalog.get("price_1New")), event("price.updated", catalog.get("price_1Old"))];
        for i in order {
            let answers = join_all((0..3).map(|_| deliver(&app, &events[i]))).await;
            let mut outcomes: Vec<&str> = answers
                .iter()
                .map(|(s, a)| {
                    assert_eq!(*s, 200, "{a}");
                    a["outcome"].as_str().unwrap()
                })
                .collect();
            outcomes.sort();
            assert_eq!(outcomes, ["applied", "duplicate", "duplicate"], "order {order:?}, event {i}");
        }
        assert_eq!(sold_price(&app, "tokens-small").await.as_deref(), Some("price_1New"), "order {order:?}");
        assert_eq!(products(&app).await["tokens-small"]["amount"], 599);
        let old: (bool, bool) = {
            let row = app
                .db_client()
                .await
                .query_one(
                    "select active, catalog_lookup from public.stripe_catalog_prices where price_id = 'price_1Old'",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(old, (false, false));
        let recorded = count(&app, "select count(*) from public.stripe_events where type like 'price.%'").await;
        assert_eq!(recorded, 3, "each event recorded once");
    }
}

#[tokio::test]
async fn archived_prices_and_products_stop_being_sold_and_a_new_lookup_key_price_takes_over() {
    let (app, catalog) = spawn_catalog_app().await;
    let user = app.create_user().await;
    publish(&catalog);
    deliver(&app, &event("price.created", catalog.get("price_1SmallEur"))).await;
    assert_eq!(products(&app).await["tokens-small"]["available"], true);

    // Archived in the Dashboard, no replacement: not for sale.
    catalog.edit("price_1SmallEur", |p| p["active"] = json!(false));
    let (_, answer) = deliver(&app, &event("price.updated", catalog.get("price_1SmallEur"))).await;
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(products(&app).await["tokens-small"]["available"], false);
    let (status, body) = checkout(&app, user, json!({"product": "tokens-small"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("product_unavailable")));

    // A new price given the catalog's lookup key (made in the Dashboard, on the same product).
    catalog.edit("price_1SmallEur", |p| p["lookup_key"] = Value::Null);
    let mut dashboard =
        price("price_1Dashboard", "prod_RSmall", Some("libero_tokens_small"), 449, "eur", None, 1_750_001_000);
    dashboard["metadata"] = json!({});
    catalog.put(dashboard);
    let (_, answer) = deliver(&app, &event("price.created", catalog.get("price_1Dashboard"))).await;
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(sold_price(&app, "tokens-small").await.as_deref(), Some("price_1Dashboard"));
    assert_eq!(products(&app).await["tokens-small"]["price_label"], "€4.49");

    // The product archived, then restored.
    catalog.edit("prod_RSmall", |p| p["active"] = json!(false));
    let (_, answer) = deliver(&app, &event("product.updated", catalog.get("prod_RSmall"))).await;
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(products(&app).await["tokens-small"]["available"], false);
    catalog.edit("prod_RSmall", |p| p["active"] = json!(true));
    deliver(&app, &event("product.updated", catalog.get("prod_RSmall"))).await;
    assert_eq!(sold_price(&app, "tokens-small").await.as_deref(), Some("price_1Dashboard"));

    // Deleted in Stripe: the re-read answers 404, and the price is no longer sold.
    let deleted = catalog.get("price_1Dashboard");
    catalog.remove("price_1Dashboard");
    let (_, answer) = deliver(&app, &event("price.deleted", deleted)).await;
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(sold_price(&app, "tokens-small").await, None);

    // Someone else's price and product: recorded, nothing stored.
    catalog.put(json!({"id": "prod_ROther", "object": "product", "active": true, "metadata": {}}));
    catalog.put(price("price_1Other", "prod_ROther", Some("consulting"), 10_000, "usd", None, 1_750_002_000));
    let before = count(&app, "select count(*) from public.stripe_catalog_prices").await;
    let (_, answer) = deliver(&app, &event("price.created", catalog.get("price_1Other"))).await;
    assert_eq!(answer["outcome"], "not_catalog");
    let (_, answer) = deliver(&app, &event("product.updated", catalog.get("prod_ROther"))).await;
    assert_eq!(answer["outcome"], "not_catalog");
    assert_eq!(count(&app, "select count(*) from public.stripe_catalog_prices").await, before);

    // A read older than the one stored changes nothing (how a slow, late re-read loses).
    deliver(&app, &event("price.created", catalog.get("price_1MediumEur"))).await;
    let stale = app
        .db_client()
        .await
        .query_one(
            "select public.stripe_apply_catalog_price('evt_1StaleRead', 'price.updated', 1, \
             jsonb_build_object('price_id', 'price_1MediumEur', 'product_key', 'tokens-medium', 'product_id', 'prod_RMedium', \
             'lookup_key', 'libero_tokens_medium', 'catalog_lookup', true, 'unit_amount', 1, 'currency', 'usd', \
             'active', false, 'product_active', false, 'read_at_ms', 1000, 'product_read_at_ms', 1000))",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Value>(0);
    assert_eq!(stale["outcome"], "stale");
    assert_eq!(sold(&app).await["tokens-medium"]["unit_amount"], 1099);
    app.assert_ledger_consistent().await;
}
