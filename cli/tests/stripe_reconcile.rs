//! `libero stripe reconcile` against a fake Stripe event log (wiremock, custom `Respond`)
//! and a scratch database on the test cluster (`DATABASE_URL`, else the cluster
//! `scripts/pg.sh` started): the command applies what the webhook missed, once, a Stripe
//! failure stops it with the cursor where it was, and killing it mid-run loses nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::stripe_events::{reconcile_command, EventLog};
use common::ScratchDb;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk_test_fake-reconcile-key-never-printed";
const PRICE: &str = "price_1TokensSmall";

/// A paid order of `user`, `age` seconds old.
fn paid_order(n: u32, user: &str, age: i64) -> Value {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - age;
    json!({"id": format!("evt_1Qcli{n}"), "object": "event", "type": "checkout.session.completed", "created": created,
        "data": {"object": {"id": format!("cs_test_cli{n}"), "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "amount_total": 499, "currency": "usd", "customer": null,
            "payment_intent": format!("pi_3Qcli{n}"), "client_reference_id": user,
            "metadata": {"user_id": user, "product": "tokens-small"}}}})
}

fn command(stripe: &MockServer, url: &str, args: &[&str]) -> std::process::Command {
    let mut command = reconcile_command(stripe, KEY);
    command.args(args).env("DATABASE_URL", url).env("SPIN_VARIABLE_STRIPE_PRICE_TOKENS_SMALL", PRICE);
    command
}

/// A migrated scratch database with one user, and a fake Stripe: an event log, empty,
/// and every checkout session's line item the small token package.
async fn setup(user: &str, email: &str) -> (ScratchDb, tokio_postgres::Client, MockServer, EventLog) {
    let scratch = ScratchDb::migrated("reconcile_test").await;
    let db = libero_cli::pg::connect(&scratch.url).await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO auth.users (id, email) VALUES ('{user}', '{email}');
         INSERT INTO public.user_profiles (id, email) VALUES ('{user}', '{email}') ON CONFLICT (id) DO NOTHING;"
    ))
    .await
    .unwrap();
    let stripe = MockServer::start().await;
    let log = EventLog::default();
    log.mount(&stripe).await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+/line_items$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": false,
            "data": [{"id": "li_1", "quantity": 1, "price": {"id": PRICE, "unit_amount": 499, "currency": "usd"}}]})))
        .mount(&stripe)
        .await;
    (scratch, db, stripe, log)
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
    let user = "5b0e8c1a-7d2f-4e3b-9c4a-1f2e3d4c5b6a";
    let (scratch, db, stripe, log) = setup(user, "cli@test.local").await;
    let url = scratch.url.clone();
    for n in 0..3 {
        log.push(paid_order(n, user, 900 - n as i64));
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
    log.push(paid_order(3, user, 60));
    log.failing.store(true, Ordering::SeqCst);
    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(!ok && out.contains("502"), "{out}");
    assert_eq!(cursor().await, before);
    log.failing.store(false, Ordering::SeqCst);
    let (ok, out) = reconcile(&stripe, &url).await;
    assert!(ok && out.contains("1 applied"), "{out}");
    assert_eq!(tokens().await, (440, 440));
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_killed_mid_run_loses_nothing_and_applies_nothing_twice() {
    let user = "6c1f9d2b-8e3a-4f4c-8d5b-2a3f4e5d6c7b";
    let (scratch, db, stripe, log) = setup(user, "kill@test.local").await;
    let url = scratch.url.clone();
    // 60 lost orders over the last two days, a slow Stripe and small runs: the command
    // needs many runs, and is killed in the middle of them.
    for n in 0..60 {
        log.push(paid_order(100 + n, user, 172_000 - 2_800 * n as i64));
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
}
