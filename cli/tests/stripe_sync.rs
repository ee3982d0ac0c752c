//! `libero stripe sync` against a fake Stripe that keeps state (products, prices, lookup
//! keys, archive flags, portal configurations, Idempotency-Keys), served by wiremock with
//! a custom `Respond`, and a scratch database on the test cluster (`DATABASE_URL`, else
//! the cluster `scripts/pg.sh` started) with the migrations applied.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

mod common;
use common::ScratchDb;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_libero");
const TEST_KEY: &str = "sk_test_fake-sync-key-never-printed";

// ---------------------------------------------------------------------------------------
// The fake Stripe.

#[derive(Default)]
struct State {
    products: Vec<Value>,
    prices: Vec<Value>,
    portals: Vec<Value>,
    /// Idempotency-Key → (request body, response), as Stripe replays them.
    replies: HashMap<String, (Vec<u8>, Value)>,
    next_id: u64,
    clock: i64,
    writes: usize,
    /// Writes after this many fail with a 500 (a Stripe outage halfway through a run).
    fail_after_writes: Option<usize>,
    /// Keys accepted besides [`TEST_KEY`] (a live key, for the runs that may use one).
    other_keys: Vec<String>,
}

#[derive(Clone)]
struct FakeStripe(Arc<Mutex<State>>);

fn error(status: u16, error_type: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {"type": error_type, "message": message}}))
}

/// A form body (or query) into nested JSON: `a[b][0]=x` → `{"a": {"b": ["x"]}}`;
/// `true`/`false` become booleans, whole numbers numbers (as Stripe types its params).
fn nested(pairs: &[(String, String)]) -> Value {
    fn put(target: &mut Value, path: &[String], value: Value) {
        let (first, rest) = path.split_first().unwrap();
        if !target.is_object() {
            *target = json!({});
        }
        let map = target.as_object_mut().unwrap();
        if rest.is_empty() {
            map.insert(first.clone(), value);
        } else {
            put(map.entry(first.clone()).or_insert(json!({})), rest, value);
        }
    }
    fn arrays(value: Value) -> Value {
        match value {
            Value::Object(map) if !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok()) => {
                let mut items: Vec<(usize, Value)> =
                    map.into_iter().map(|(k, v)| (k.parse().unwrap(), arrays(v))).collect();
                items.sort_by_key(|(k, _)| *k);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            }
            Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, arrays(v))).collect()),
            other => other,
        }
    }
    let mut out = json!({});
    for (key, value) in pairs {
        let mut path: Vec<String> = Vec::new();
        let (head, tail) = key.split_once('[').map(|(h, t)| (h, format!("[{t}"))).unwrap_or((key, String::new()));
        path.push(head.to_string());
        for part in tail.split('[').filter(|p| !p.is_empty()) {
            path.push(part.trim_end_matches(']').to_string());
        }
        let value = match value.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            v if key != "metadata" && !key.starts_with("metadata[") && v.parse::<i64>().is_ok() && !v.is_empty() => {
                json!(v.parse::<i64>().unwrap())
            }
            v => json!(v),
        };
        put(&mut out, &path, value);
    }
    arrays(out)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_object() && t.get(k).is_some_and(Value::is_object) {
                    merge(t.get_mut(k).unwrap(), v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn list(items: Vec<Value>, query: &[(String, String)], url: &str) -> ResponseTemplate {
    // At most 2 a page, whatever `limit` asks, so every listing pages.
    let limit = query.iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse().ok()).unwrap_or(10usize).min(2);
    let start = match query.iter().find(|(k, _)| k == "starting_after") {
        Some((_, after)) => items.iter().position(|o| o["id"] == after.as_str()).map(|i| i + 1).unwrap_or(items.len()),
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < items.len();
    ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": page, "has_more": has_more, "url": url}))
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_Fake{:04}", self.next_id)
    }

    fn now(&mut self) -> i64 {
        self.clock += 1;
        1_750_000_000 + self.clock
    }

    fn product(&self, id: &str) -> Option<&Value> {
        self.products.iter().find(|p| p["id"] == id)
    }

    fn expanded(&self, price: &Value) -> Value {
        let mut price = price.clone();
        if let Some(product) = price["product"].as_str().and_then(|id| self.product(id)) {
            price["product"] = product.clone();
        }
        price
    }

    /// A write: the object Stripe answers, or its error.
    #[allow(clippy::result_large_err)] // a test fake; the error is the response itself
    fn write(&mut self, path: &[&str], form: &Value) -> Result<Value, ResponseTemplate> {
        match path {
            ["products"] => {
                let id = self.id("prod");
                let created = self.now();
                let mut product = json!({"id": id, "object": "product", "active": true, "created": created,
                    "description": null, "metadata": {}, "name": "", "livemode": false});
                merge(&mut product, form);
                self.products.push(product.clone());
                Ok(product)
            }
            ["products", id] => match self.products.iter_mut().find(|p| p["id"] == *id) {
                Some(product) => {
                    merge(product, form);
                    Ok(product.clone())
                }
                None => Err(error(404, "invalid_request_error", "No such product")),
            },
            ["prices"] => {
                let Some(product) = form["product"].as_str().filter(|p| self.product(p).is_some()) else {
                    return Err(error(400, "invalid_request_error", "No such product"));
                };
                let product = product.to_string();
                if let Some(key) = form["lookup_key"].as_str() {
                    let holder = self.prices.iter().position(|p| p["lookup_key"] == key);
                    match holder {
                        Some(_) if form["transfer_lookup_key"] != true => {
                            return Err(error(400, "invalid_request_error", "A price already uses that lookup key."))
                        }
                        Some(i) => self.prices[i]["lookup_key"] = Value::Null,
                        None => {}
                    }
                }
                let id = self.id("price");
                let created = self.now();
                let recurring = if form["recurring"].is_object() {
                    json!({"interval": form["recurring"]["interval"], "interval_count": form["recurring"]["interval_count"].as_i64().unwrap_or(1)})
                } else {
                    Value::Null
                };
                let price = json!({"id": id, "object": "price", "active": true, "billing_scheme": "per_unit",
                    "created": created, "currency": form["currency"], "livemode": false,
                    "lookup_key": form.get("lookup_key").cloned().unwrap_or(Value::Null),
                    "metadata": form.get("metadata").cloned().unwrap_or(json!({})), "nickname": form.get("nickname").cloned().unwrap_or(Value::Null),
                    "product": product, "recurring": recurring,
                    "type": if recurring.is_null() { "one_time" } else { "recurring" },
                    "unit_amount": form["unit_amount"]});
                self.prices.push(price.clone());
                Ok(price)
            }
            ["prices", id] => match self.prices.iter_mut().find(|p| p["id"] == *id) {
                Some(price) => {
                    for field in ["active", "metadata", "nickname"] {
                        if let Some(v) = form.get(field) {
                            merge(&mut price[field], v);
                        }
                    }
                    Ok(price.clone())
                }
                None => Err(error(404, "invalid_request_error", "No such price")),
            },
            ["billing_portal", "configurations"] => {
                let id = self.id("bpc");
                let created = self.now();
                let mut configuration = json!({"id": id, "object": "billing_portal.configuration", "active": true,
                    "created": created, "is_default": false, "metadata": {}, "features": {}, "business_profile": {}});
                merge(&mut configuration, form);
                self.portals.push(configuration.clone());
                Ok(configuration)
            }
            ["billing_portal", "configurations", id] => match self.portals.iter_mut().find(|p| p["id"] == *id) {
                Some(configuration) => {
                    merge(configuration, form);
                    Ok(configuration.clone())
                }
                None => Err(error(404, "invalid_request_error", "No such configuration")),
            },
            _ => Err(error(404, "invalid_request_error", "Unrecognized request URL")),
        }
    }

    fn read(&self, path: &[&str], query: &[(String, String)], url: &str) -> ResponseTemplate {
        let has = |k: &str, v: &str| query.iter().any(|(qk, qv)| qk == k && qv == v);
        let value = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.clone());
        match path {
            ["products"] => list(self.products.clone(), query, url),
            ["products", id] => match self.product(id) {
                Some(p) => ResponseTemplate::new(200).set_body_json(p),
                None => error(404, "invalid_request_error", "No such product"),
            },
            ["prices"] => {
                let keys: Vec<String> =
                    query.iter().filter(|(k, _)| k == "lookup_keys[]").map(|(_, v)| v.clone()).collect();
                let prices: Vec<Value> = self
                    .prices
                    .iter()
                    .filter(|p| {
                        keys.is_empty() || p["lookup_key"].as_str().is_some_and(|k| keys.iter().any(|x| x == k))
                    })
                    .filter(|p| value("product").is_none_or(|id| p["product"] == id.as_str()))
                    .filter(|p| value("active").is_none_or(|a| p["active"] == (a == "true")))
                    .map(|p| if has("expand[]", "data.product") { self.expanded(p) } else { p.clone() })
                    .collect();
                list(prices, query, url)
            }
            ["prices", id] => match self.prices.iter().find(|p| p["id"] == *id) {
                Some(p) => ResponseTemplate::new(200).set_body_json(if has("expand[]", "product") {
                    self.expanded(p)
                } else {
                    p.clone()
                }),
                None => error(404, "invalid_request_error", "No such price"),
            },
            ["billing_portal", "configurations"] => list(self.portals.clone(), query, url),
            _ => error(404, "invalid_request_error", "Unrecognized request URL"),
        }
    }
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request.headers.get("authorization").and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
        let known = key.is_some_and(|k| k == TEST_KEY || self.0.lock().unwrap().other_keys.iter().any(|o| o == k));
        if !known {
            return error(401, "authentication_error", "Invalid API Key provided");
        }
        let full = request.url.path().to_string();
        let Some(rest) = full.strip_prefix("/v1/") else { return error(404, "invalid_request_error", "no") };
        let path: Vec<&str> = rest.split('/').collect();
        let query: Vec<(String, String)> =
            request.url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let mut state = self.0.lock().unwrap();
        match request.method.as_str() {
            "GET" => state.read(&path, &query, &full),
            "POST" => {
                let Some(key) =
                    request.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
                else {
                    return error(400, "invalid_request_error", "this fake wants an Idempotency-Key on every write");
                };
                if let Some((body, reply)) = state.replies.get(&key) {
                    return if *body == request.body {
                        ResponseTemplate::new(200)
                            .insert_header("idempotent-replayed", "true")
                            .set_body_json(reply.clone())
                    } else {
                        error(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters",
                        )
                    };
                }
                if state.fail_after_writes.is_some_and(|n| state.writes >= n) {
                    return error(500, "api_error", "injected outage");
                }
                let pairs: Vec<(String, String)> =
                    url::form_urlencoded::parse(&request.body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                let form = nested(&pairs);
                match state.write(&path, &form) {
                    Ok(object) => {
                        state.writes += 1;
                        state.replies.insert(key, (request.body.clone(), object.clone()));
                        ResponseTemplate::new(200).set_body_json(object)
                    }
                    Err(refused) => refused,
                }
            }
            _ => error(405, "invalid_request_error", "method"),
        }
    }
}

struct Fake {
    server: MockServer,
    state: Arc<Mutex<State>>,
}

impl Fake {
    async fn start() -> Fake {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::default()));
        // Someone else's product and price in the same account: never touched.
        {
            let mut s = state.lock().unwrap();
            s.products.push(json!({"id": "prod_Other", "object": "product", "active": true, "name": "Consulting",
                "description": null, "metadata": {}, "created": 1}));
            s.prices.push(json!({"id": "price_Other", "object": "price", "active": true, "product": "prod_Other",
                "unit_amount": 10000, "currency": "usd", "lookup_key": "consulting", "metadata": {},
                "recurring": null, "billing_scheme": "per_unit", "created": 1}));
        }
        Mock::given(any()).respond_with(FakeStripe(state.clone())).mount(&server).await;
        Fake { server, state }
    }

    async fn posts(&self) -> usize {
        self.server.received_requests().await.unwrap_or_default().iter().filter(|r| r.method.as_str() == "POST").count()
    }

    /// The account as the catalog sees it, without ids: per tagged product, its name and
    /// active flag, and its active prices (amount, currency, interval, lookup key).
    fn summary(&self) -> BTreeMap<String, Value> {
        let s = self.state.lock().unwrap();
        let mut out = BTreeMap::new();
        for product in s.products.iter().filter(|p| p["metadata"]["libero_product"].is_string()) {
            let key = product["metadata"]["libero_product"].as_str().unwrap().to_string();
            let mut prices: Vec<Value> = s
                .prices
                .iter()
                .filter(|p| p["product"] == product["id"] && p["active"] == true)
                .map(|p| json!([p["unit_amount"], p["currency"], p["recurring"]["interval"], p["lookup_key"]]))
                .collect();
            prices.sort_by_key(|p| p.to_string());
            let entry = json!({"name": product["name"], "active": product["active"], "prices": prices});
            assert!(out.insert(key.clone(), entry).is_none(), "two products tagged {key}");
        }
        let portals: Vec<Value> = s
            .portals
            .iter()
            .map(|c| {
                json!([
                    c["active"],
                    c["features"]["subscription_cancel"],
                    c["features"]["subscription_update"]["enabled"],
                    c["features"]["invoice_history"],
                    c["features"]["payment_method_update"]
                ])
            })
            .collect();
        out.insert("portal".into(), Value::from(portals));
        let other = s.prices.iter().find(|p| p["id"] == "price_Other").unwrap();
        out.insert("other".into(), json!([other["active"], other["lookup_key"]]));
        out
    }

    /// The id of the active price holding `lookup_key`.
    fn holder(&self, lookup_key: &str) -> String {
        let s = self.state.lock().unwrap();
        s.prices.iter().find(|p| p["lookup_key"] == lookup_key).map(|p| p["id"].as_str().unwrap().to_string()).unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The database and the command.

/// A migrated database of its own, dropped at the end.
struct Db {
    url: String,
    _scratch: ScratchDb,
}

impl Db {
    async fn new() -> Db {
        let scratch = ScratchDb::migrated("sync_test").await;
        Db { url: scratch.url.clone(), _scratch: scratch }
    }

    /// What checkout would sell: product key → price id, and the portal configuration.
    async fn sold(&self) -> (BTreeMap<String, String>, Option<String>) {
        let client = libero_cli::pg::connect(&self.url).await.unwrap();
        let row = client.query_one("select public.stripe_catalog('[]'::jsonb)::text", &[]).await.unwrap();
        let catalog: Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
        let prices = catalog["prices"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["price_id"].as_str().unwrap().to_string()))
            .collect();
        (prices, catalog["portal_configuration"].as_str().map(str::to_string))
    }

    async fn rows(&self) -> Vec<(String, String, bool, bool)> {
        let client = libero_cli::pg::connect(&self.url).await.unwrap();
        client
            .query("select price_id, product_key, active, catalog_lookup from public.stripe_catalog_prices order by price_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn sync(fake: &Fake, db: &Db, key: &str, extra: &[&str]) -> Run {
    let mut command = Command::new(BIN);
    command
        .args(["stripe", "sync"])
        .args(extra)
        .env("STRIPE_SECRET_KEY", key)
        .env("STRIPE_API_BASE", fake.server.uri())
        .env("DATABASE_URL", &db.url)
        .env_remove("SPIN_VARIABLE_STRIPE_SECRET_KEY")
        .env_remove("SPIN_VARIABLE_STRIPE_API_BASE")
        .env_remove("SPIN_VARIABLE_DATABASE_URL");
    let output: Output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let run = Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(!run.stdout.contains(key) && !run.stderr.contains(key), "the key is never printed");
    run
}

fn catalog_summary() -> BTreeMap<String, Value> {
    let mut expected = BTreeMap::new();
    for (key, name, amount, interval, lookup) in [
        ("mystic-subscription", "Mystic", 999, json!("month"), "libero_mystic_subscription"),
        ("tokens-small", "100 tokens", 499, Value::Null, "libero_tokens_small"),
        ("tokens-medium", "250 tokens", 999, Value::Null, "libero_tokens_medium"),
        ("tokens-large", "500 tokens", 1999, Value::Null, "libero_tokens_large"),
    ] {
        expected.insert(
            key.to_string(),
            json!({"name": name, "active": true, "prices": [[amount, "usd", interval, lookup]]}),
        );
    }
    let cancel = json!({"enabled": true, "mode": "at_period_end", "proration_behavior": "none"});
    expected.insert("portal".into(), json!([[true, cancel, false, {"enabled": true}, {"enabled": true}]]));
    expected.insert("other".into(), json!([true, "consulting"]));
    expected
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_first_run_creates_everything_and_the_second_changes_nothing() {
    let (fake, db) = (Fake::start().await, Db::new().await);

    let dry = sync(&fake, &db, TEST_KEY, &["--dry-run"]).await;
    assert!(dry.ok, "{}{}", dry.stdout, dry.stderr);
    assert_eq!(fake.posts().await, 0, "a dry run writes nothing");
    assert!(dry.stdout.contains("product tokens-small: would create \"100 tokens\""), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("price tokens-large: would create $19.99 with lookup key libero_tokens_large"),
        "{}",
        dry.stdout
    );
    assert!(db.rows().await.is_empty(), "nor the database");

    let first = sync(&fake, &db, TEST_KEY, &[]).await;
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    assert_eq!(fake.summary(), catalog_summary());
    // 4 products, 4 prices, 1 portal configuration.
    assert_eq!(fake.posts().await, 9);
    for line in [
        "product mystic-subscription: created prod_",
        "price mystic-subscription: created price_",
        "($9.99 / month, lookup key libero_mystic_subscription)",
        "portal: created bpc_",
        "database: price tokens-medium: stored price_",
        "done: 9 change(s) in Stripe, 5 in the database",
    ] {
        assert!(first.stdout.contains(line), "{line:?} in:\n{}", first.stdout);
    }
    let (sold, portal) = db.sold().await;
    assert_eq!(sold.len(), 4);
    for (key, lookup) in
        [("tokens-small", "libero_tokens_small"), ("mystic-subscription", "libero_mystic_subscription")]
    {
        assert_eq!(sold[key], fake.holder(lookup), "{key}: the stored price is the one with the lookup key");
    }
    assert_eq!(portal.as_deref(), fake.state.lock().unwrap().portals[0]["id"].as_str());
    // The portal is the catalog's: tagged as ours, and customers cannot edit their billing details there.
    let configuration = fake.state.lock().unwrap().portals[0].clone();
    assert_eq!(configuration["metadata"]["libero_portal"], "catalog");
    assert_eq!(configuration["features"]["customer_update"]["enabled"], false);

    let second = sync(&fake, &db, TEST_KEY, &[]).await;
    assert!(second.ok, "{}{}", second.stdout, second.stderr);
    assert_eq!(fake.posts().await, 9, "the second run wrote nothing to Stripe:\n{}", second.stdout);
    assert!(
        second.stdout.contains("nothing to change: Stripe and the database already match the catalog"),
        "{}",
        second.stdout
    );
    assert!(second.stdout.contains("product tokens-large: unchanged (prod_"), "{}", second.stdout);
    assert!(second.stdout.contains("portal: unchanged (bpc_"), "{}", second.stdout);
    assert!(!second.stdout.contains("database:"), "{}", second.stdout);
    assert_eq!(db.sold().await, (sold, portal));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_amount_or_interval_moves_the_lookup_key_and_archives_the_old_price() {
    let (fake, db) = (Fake::start().await, Db::new().await);
    assert!(sync(&fake, &db, TEST_KEY, &[]).await.ok);
    let old_small = fake.holder("libero_tokens_small");
    let old_mystic = fake.holder("libero_mystic_subscription");
    // As if the catalog had said $3.99 and yearly before: Stripe differs from it now.
    {
        let mut s = fake.state.lock().unwrap();
        let small = s.prices.iter_mut().find(|p| p["id"] == old_small.as_str()).unwrap();
        small["unit_amount"] = json!(399);
        let mystic = s.prices.iter_mut().find(|p| p["id"] == old_mystic.as_str()).unwrap();
        mystic["recurring"]["interval"] = json!("year");
    }
    let before = fake.posts().await;

    let run = sync(&fake, &db, TEST_KEY, &[]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(fake.summary(), catalog_summary(), "one active price each, at the catalog's terms");
    let new_small = fake.holder("libero_tokens_small");
    assert_ne!(new_small, old_small, "the lookup key moved to a new price");
    {
        let s = fake.state.lock().unwrap();
        let old = s.prices.iter().find(|p| p["id"] == old_small.as_str()).unwrap();
        assert_eq!((old["active"].as_bool(), old["lookup_key"].is_null()), (Some(false), true), "{old}");
    }
    // Two creates (with transfer_lookup_key) and two archives; nothing else.
    assert_eq!(fake.posts().await - before, 4, "{}", run.stdout);
    let creates: Vec<Request> = fake
        .server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/v1/prices")
        .collect();
    let last = String::from_utf8_lossy(&creates.last().unwrap().body).into_owned();
    assert!(last.contains("transfer_lookup_key=true"), "{last}");
    assert!(run.stdout.contains(&format!("price tokens-small: archived {old_small} ($3.99)")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("(replacing {old_small}, $3.99)")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("(replacing {old_mystic}, $9.99 / year)")), "{}", run.stdout);

    let (sold, _) = db.sold().await;
    assert_eq!(sold["tokens-small"], new_small);
    assert_eq!(sold["mystic-subscription"], fake.holder("libero_mystic_subscription"));
    let rows = db.rows().await;
    let old_row = rows.iter().find(|r| r.0 == old_small).unwrap();
    assert_eq!((old_row.2, old_row.3), (false, false), "the old price is stored archived, without the lookup key");

    let again = sync(&fake, &db, TEST_KEY, &[]).await;
    assert!(again.stdout.contains("nothing to change"), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_halfway_then_a_rerun_ends_in_the_same_state() {
    let clean = Fake::start().await;
    let clean_db = Db::new().await;
    assert!(sync(&clean, &clean_db, TEST_KEY, &[]).await.ok);
    let expected = clean.summary();
    assert_eq!(expected, catalog_summary());

    // Stripe fails after 0, 1, 3, 5 and 8 writes of a first run; after 1 and 3 writes of
    // a run that replaces a price (between the new price and the archive of the old).
    for (replace, fail_after) in [(false, 0), (false, 1), (false, 3), (false, 5), (false, 8), (true, 1), (true, 3)] {
        let (fake, db) = (Fake::start().await, Db::new().await);
        if replace {
            assert!(sync(&fake, &db, TEST_KEY, &[]).await.ok);
            let mut s = fake.state.lock().unwrap();
            for price in s.prices.iter_mut().filter(|p| p["metadata"]["libero_product"].is_string()) {
                price["unit_amount"] = json!(price["unit_amount"].as_i64().unwrap() + 100);
            }
            s.fail_after_writes = Some(s.writes + fail_after);
        } else {
            fake.state.lock().unwrap().fail_after_writes = Some(fail_after);
        }
        let failed = sync(&fake, &db, TEST_KEY, &[]).await;
        assert!(!failed.ok, "case {replace}/{fail_after}: the run fails\n{}", failed.stdout);
        assert!(failed.stderr.contains("running `libero stripe sync` again finishes the rest"), "{}", failed.stderr);
        assert!(failed.stderr.contains("injected outage"), "{}", failed.stderr);

        fake.state.lock().unwrap().fail_after_writes = None;
        let rerun = sync(&fake, &db, TEST_KEY, &[]).await;
        assert!(rerun.ok, "case {replace}/{fail_after}: {}{}", rerun.stdout, rerun.stderr);
        assert_eq!(fake.summary(), expected, "case {replace}/{fail_after}:\n{}", rerun.stdout);
        let (sold, portal) = db.sold().await;
        for product in ["mystic-subscription", "tokens-small", "tokens-medium", "tokens-large"] {
            let lookup = format!("libero_{}", product.replace('-', "_"));
            assert_eq!(sold[product], fake.holder(&lookup), "case {replace}/{fail_after}: {product}");
        }
        assert!(portal.is_some());
        let third = sync(&fake, &db, TEST_KEY, &[]).await;
        assert!(third.stdout.contains("nothing to change"), "case {replace}/{fail_after}: {}", third.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_key_needs_live_and_nothing_is_sent_without_it() {
    let (fake, db) = (Fake::start().await, Db::new().await);
    let live = "sk_live_fake-sync-key-never-printed";
    let refused = sync(&fake, &db, live, &[]).await;
    assert!(!refused.ok);
    assert!(refused.stderr.contains("that is a live key") && refused.stderr.contains("--live"), "{}", refused.stderr);
    assert!(fake.server.received_requests().await.unwrap().is_empty(), "Stripe was not called");

    // With --live it goes ahead (this fake only knows the test key, so Stripe refuses it).
    let tried = sync(&fake, &db, live, &["--live"]).await;
    assert!(!tried.ok);
    assert!(tried.stdout.contains("LIVE mode"), "{}", tried.stdout);
    assert!(tried.stderr.contains("Invalid API Key"), "{}", tried.stderr);
    assert_eq!(fake.posts().await, 0);

    let not_secret = sync(&fake, &db, "pk_test_publishable", &[]).await;
    assert!(!not_secret.ok && not_secret.stderr.contains("not a secret key"), "{}", not_secret.stderr);
}

/// A dry run reads the account as it is now and says what the real run would change,
/// without writing anything to Stripe or the database; the real run then makes exactly
/// those changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_against_a_drifted_account_says_what_would_change_and_writes_nothing() {
    let (fake, db) = (Fake::start().await, Db::new().await);
    assert!(sync(&fake, &db, TEST_KEY, &[]).await.ok);
    let old_small = fake.holder("libero_tokens_small");
    // Drift, as hands in the Dashboard make it: a price's amount, a product's name and a
    // portal feature.
    let medium = {
        let mut s = fake.state.lock().unwrap();
        let small = s.prices.iter_mut().find(|p| p["id"] == old_small.as_str()).unwrap();
        small["unit_amount"] = json!(399);
        let medium = s.products.iter_mut().find(|p| p["metadata"]["libero_product"] == "tokens-medium").unwrap();
        medium["name"] = json!("Renamed by hand");
        let medium = medium["id"].as_str().unwrap().to_string();
        s.portals[0]["features"]["invoice_history"]["enabled"] = json!(false);
        medium
    };
    let portal = fake.state.lock().unwrap().portals[0]["id"].as_str().unwrap().to_string();
    let (drifted, rows, sold, posts) = (fake.summary(), db.rows().await, db.sold().await, fake.posts().await);

    let dry = sync(&fake, &db, TEST_KEY, &["--dry-run"]).await;
    assert!(dry.ok, "{}{}", dry.stdout, dry.stderr);
    for line in [
        "(dry run: nothing is written)".to_string(),
        format!("product tokens-medium: would update {medium} (name, description, active)"),
        format!(
            "price tokens-small: would create $4.99 with lookup key libero_tokens_small (replacing {old_small}, $3.99)"
        ),
        format!("price tokens-small: would archive {old_small} ($3.99)"),
        "price tokens-large: unchanged (".to_string(),
        format!("portal: would update {portal} ("),
        "dry run: 4 change(s) to make in Stripe; nothing was written".to_string(),
    ] {
        assert!(dry.stdout.contains(&line), "{line:?} in:\n{}", dry.stdout);
    }
    assert_eq!(fake.posts().await, posts, "a dry run writes nothing to Stripe");
    assert_eq!(fake.summary(), drifted);
    assert_eq!((db.rows().await, db.sold().await), (rows, sold), "nor to the database");

    // The real run makes the changes the dry run listed, and no others.
    let run = sync(&fake, &db, TEST_KEY, &[]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("done: 4 change(s) in Stripe"), "{}", run.stdout);
    assert_eq!(fake.posts().await - posts, 4, "{}", run.stdout);
    assert_eq!(fake.summary(), catalog_summary());
    let again = sync(&fake, &db, TEST_KEY, &["--dry-run"]).await;
    assert!(again.stdout.contains("dry run: 0 change(s) to make in Stripe"), "{}", again.stdout);
}

/// A live key may look without `--live`: a dry run only reads, says it is the live
/// account, and writes nothing; the same run without `--dry-run` is refused before
/// Stripe is called.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_with_a_live_key_reads_the_live_account_and_writes_nothing() {
    let (fake, db) = (Fake::start().await, Db::new().await);
    let live = "sk_live_fake-sync-dry-key-never-printed";
    fake.state.lock().unwrap().other_keys.push(live.to_string());

    let dry = sync(&fake, &db, live, &["--dry-run"]).await;
    assert!(dry.ok, "{}{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("stripe sync: LIVE mode") && dry.stdout.contains("(dry run: nothing is written)"));
    assert!(dry.stdout.contains("product tokens-small: would create \"100 tokens\""), "{}", dry.stdout);
    assert!(dry.stdout.contains("dry run: 9 change(s) to make in Stripe; nothing was written"), "{}", dry.stdout);
    let requests = fake.server.received_requests().await.unwrap();
    assert!(!requests.is_empty(), "the live account was read");
    assert!(requests.iter().all(|r| r.method.as_str() == "GET"), "and only read");
    assert!(db.rows().await.is_empty());

    let refused = sync(&fake, &db, live, &[]).await;
    assert!(!refused.ok && refused.stderr.contains("that is a live key"), "{}", refused.stderr);
    assert_eq!(fake.server.received_requests().await.unwrap().len(), requests.len(), "Stripe was not called");
    assert!(db.rows().await.is_empty());
}
