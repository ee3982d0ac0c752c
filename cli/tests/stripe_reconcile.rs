//! `libero stripe reconcile` against a fake Stripe event log (wiremock, custom `Respond`)
//! and a scratch database on the test cluster (`DATABASE_URL`, else the cluster
//! `scripts/pg.sh` started): the command applies what the webhook missed, once, a Stripe
//! failure stops it with the cursor where it was, and killing it mid-run loses nothing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::admin_url;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_libero");
const KEY: &str = "sk_test_fake-reconcile-key-never-printed";
const PRICE: &str = "price_1TokensSmall";

#[derive(Clone, Default)]
struct Log {
    events: Arc<Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    /// How long each page takes.
    delay: Arc<Mutex<Duration>>,
}

impl Respond for Log {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let delay = *self.delay.lock().unwrap();
        self.answer(request).set_delay(delay)
    }
}

impl Log {
    fn answer(&self, request: &Request) -> ResponseTemplate {
        if self.failing.load(Ordering::SeqCst) {
            return ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"type": "api_error", "message": "down"}}));
        }
        let q: Vec<(String, String)> = request.url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let limit: usize = get("limit").unwrap().parse().unwrap();
        let (gte, lte, lt) = (
            get("created[gte]").map_or(i64::MIN, |v| v.parse().unwrap()),
            get("created[lte]").map_or(i64::MAX, |v| v.parse().unwrap()),
            get("created[lt]").map_or(i64::MAX, |v| v.parse().unwrap()),
        );
        let listed: Vec<Value> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|e| (gte..=lte).contains(&e["created"].as_i64().unwrap()) && e["created"].as_i64().unwrap() < lt)
            .cloned()
            .collect();
        let at = |id: String| listed.iter().position(|e| e["id"] == id.as_str()).unwrap();
        let (data, more) = if let Some(id) = get("starting_after") {
            let rest = &listed[at(id) + 1..];
            (rest.iter().take(limit).cloned().collect::<Vec<_>>(), rest.len() > limit)
        } else if let Some(id) = get("ending_before") {
            let newer = &listed[..at(id)];
            let from = newer.len().saturating_sub(limit);
            (newer[from..].to_vec(), from > 0)
        } else {
            (listed.iter().take(limit).cloned().collect(), listed.len() > limit)
        };
        ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": more, "data": data}))
    }
}

/// A paid order of `user`, `age` seconds old.
fn paid_order(n: u32, user: &str, age: i64) -> Value {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - age;
    json!({"id": format!("evt_1Qcli{n}"), "object": "event", "type": "checkout.session.completed", "created": created,
        "data": {"object": {"id": format!("cs_test_cli{n}"), "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "amount_total": 499, "currency": "usd", "customer": null,
            "payment_intent": format!("pi_3Qcli{n}"), "client_reference_id": user,
            "metadata": {"user_id": user, "product": "tokens-small"}}}})
}

async fn scratch_database() -> (String, String) {
    let admin = admin_url();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("reconcile_test_{}_{nanos}", std::process::id());
    let client = libero_cli::pg::connect(&admin).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = common::url_of(&admin, &name);
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    libero_cli::migrate::migrate_dir(&url, &migrations).await.unwrap();
    (url, name)
}

fn command(stripe: &MockServer, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["stripe", "reconcile"])
        .args(args)
        .env("STRIPE_SECRET_KEY", KEY)
        .env("STRIPE_API_BASE", stripe.uri())
        .env("DATABASE_URL", url)
        .env("SPIN_VARIABLE_STRIPE_PRICE_TOKENS_SMALL", PRICE)
        .env_remove("SPIN_VARIABLE_STRIPE_SECRET_KEY")
        .env_remove("SPIN_VARIABLE_DATABASE_URL");
    command
}

async fn reconcile(stripe: &MockServer, url: &str) -> (bool, String) {
    reconcile_with(stripe, url, &[]).await
}

async fn reconcile_with(stripe: &MockServer, url: &str, args: &[&str]) -> (bool, String) {
    let mut command = command(stripe, url, args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains(KEY), "the key is never printed");
    (output.status.success(), all)
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_applies_missed_events_once_and_a_failure_keeps_the_cursor() {
    let (url, name) = scratch_database().await;
    let db = libero_cli::pg::connect(&url).await.unwrap();
    let user = "5b0e8c1a-7d2f-4e3b-9c4a-1f2e3d4c5b6a";
    db.batch_execute(&format!(
        "INSERT INTO auth.users (id, email) VALUES ('{user}', 'cli@test.local');
         INSERT INTO public.user_profiles (id, email) VALUES ('{user}', 'cli@test.local') ON CONFLICT (id) DO NOTHING;"
    ))
    .await
    .unwrap();
    let stripe = MockServer::start().await;
    let log = Log::default();
    Mock::given(method("GET")).and(path("/v1/events")).respond_with(log.clone()).mount(&stripe).await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+/line_items$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": false,
            "data": [{"id": "li_1", "quantity": 1, "price": {"id": PRICE, "unit_amount": 499, "currency": "usd"}}]})))
        .mount(&stripe)
        .await;
    for n in 0..3 {
        log.events.lock().unwrap().push(paid_order(n, user, 900 - n as i64));
    }
    let tokens = || async {
        let row = db
            .query_one("SELECT tokens, (SELECT coalesce(sum(delta), 0)::int4 FROM public.token_ledger) FROM public.user_profiles", &[])
            .await
            .unwrap();
        (row.get::<_, i32>(0), row.get::<_, i32>(1))
    };

    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(ok, "{out}");
    assert!(out.contains("3 applied"), "{out}");
    assert_eq!(tokens().await, (330, 330));

    // Nothing new: nothing applied, and the command says it is up to date.
    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(ok && out.contains("0 applied, 0 already applied") && out.contains("up to date"), "{out}");

    let cursor = || async {
        db.query_one("SELECT anchor_event_id FROM public.stripe_reconcile_state", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = cursor().await;
    log.events.lock().unwrap().push(paid_order(3, user, 60));
    log.failing.store(true, Ordering::SeqCst);
    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(!ok && out.contains("502"), "{out}");
    assert_eq!(cursor().await, before);
    log.failing.store(false, Ordering::SeqCst);
    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(ok && out.contains("1 applied"), "{out}");
    assert_eq!(tokens().await, (440, 440));

    drop(db);
    let admin = libero_cli::pg::connect(&admin_url()).await.unwrap();
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_killed_mid_run_loses_nothing_and_applies_nothing_twice() {
    let (url, name) = scratch_database().await;
    let db = libero_cli::pg::connect(&url).await.unwrap();
    let user = "6c1f9d2b-8e3a-4f4c-8d5b-2a3f4e5d6c7b";
    db.batch_execute(&format!(
        "INSERT INTO auth.users (id, email) VALUES ('{user}', 'kill@test.local');
         INSERT INTO public.user_profiles (id, email) VALUES ('{user}', 'kill@test.local') ON CONFLICT (id) DO NOTHING;"
    ))
    .await
    .unwrap();
    let stripe = MockServer::start().await;
    let log = Log::default();
    Mock::given(method("GET")).and(path("/v1/events")).respond_with(log.clone()).mount(&stripe).await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+/line_items$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": false,
            "data": [{"id": "li_1", "quantity": 1, "price": {"id": PRICE, "unit_amount": 499, "currency": "usd"}}]})))
        .mount(&stripe)
        .await;
    // 60 lost orders over the last two days, a slow Stripe and small runs: the command
    // needs many runs, and is killed in the middle of them.
    for n in 0..60 {
        log.events.lock().unwrap().push(paid_order(100 + n, user, 172_000 - 2_800 * n as i64));
    }
    *log.delay.lock().unwrap() = Duration::from_millis(150);
    let mut child = command(&stripe, &url, &["--max-events", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let applied_by_then =
        || async { db.query_one("SELECT count(*) FROM public.stripe_events", &[]).await.unwrap().get::<_, i64>(0) };
    let started = std::time::Instant::now();
    while applied_by_then().await < 10 {
        assert!(started.elapsed() < Duration::from_secs(60), "the command made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no chance to tidy up
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("run 1: ") && printed.contains("through the window"), "progress is printed: {printed}");
    let killed_at = applied_by_then().await;
    assert!(killed_at < 60, "killed before the end ({killed_at} applied)");

    *log.delay.lock().unwrap() = Duration::ZERO;
    let (ok, out) = reconcile_with(&stripe, &url, &["--max-events", "4"]).await;
    assert!(ok, "{out}");
    // The same end as an uninterrupted run: each order credited once, the ledger agrees,
    // the cursor on the newest event.
    let row = db
        .query_one(
            "SELECT p.tokens, (SELECT coalesce(sum(delta), 0)::int4 FROM public.token_ledger),
                    (SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase'),
                    (SELECT anchor_event_id FROM public.stripe_reconcile_state)
               FROM public.user_profiles p",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, i32>(1), row.get::<_, i64>(2), row.get::<_, String>(3)),
        (60 * 110, 60 * 110, 60, "evt_1Qcli159".to_string()),
        "{out}"
    );
    assert_eq!(applied_by_then().await, 60);

    drop(db);
    let admin = libero_cli::pg::connect(&admin_url()).await.unwrap();
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}
