//! `libero adopt` against the as-is fixture (tests/adopt: the old app's schema and a
//! generator of its users) in a scratch database on the test cluster (`DATABASE_URL`,
//! else the cluster `scripts/pg.sh` started).

use std::process::Command;

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

mod common;
use common::stripe_events::{reconcile_command, EventLog};
use common::{workspace, ScratchDb};

const BIN: &str = env!("CARGO_BIN_EXE_libero");

/// A scratch database holding the old app's database: Supabase's roles and `auth`
/// (the compatibility migration, applied by hand as Supabase would have them), the
/// as-is schema, and `users` users.
async fn legacy_database(users: u32) -> (ScratchDb, tokio_postgres::Client) {
    let db = ScratchDb::new("adopt_test").await;
    let client = libero_cli::pg::connect(&db.url).await.unwrap();
    let read = |p: &str| std::fs::read_to_string(workspace().join(p)).unwrap();
    client.batch_execute(&read("migrations/20250101000000_supabase_compat.sql")).await.unwrap();
    client.batch_execute(&read("tests/adopt/legacy_schema.sql")).await.unwrap();
    client.batch_execute(&format!("set libero.fixture_users = '{users}'")).await.unwrap();
    client.batch_execute(&read("tests/adopt/legacy_data.sql")).await.unwrap();
    (db, client)
}

fn adopt(url: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("adopt")
        .args(extra)
        .args(["--database-url", url])
        .current_dir(workspace())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A digest of everything a user owns and of the schema, to show that a run changed
/// nothing.
async fn fingerprint(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "select md5(string_agg(x, '|' order by x)) from (
               select format('%s %s.%s', c.relkind, n.nspname, c.relname) || ':' ||
                      coalesce((select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' order by a.attnum)
                                  from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '') as x
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where n.nspname in ('public', 'libero_legacy', 'supabase_migrations', 'auth')
               union all select 'version ' || version from supabase_migrations.schema_migrations
               union all select 'profile ' || p::text from public.user_profiles p
               union all select 'session ' || s.id::text from public.sessions s
               union all select 'protocol ' || c.id::text from public.custom_protocols c
               union all select 'customer ' || c.customer_id from public.stripe_customers c
               union all select 'order ' || o.checkout_session_id || ' ' || o.status from public.stripe_orders o
             ) t",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

type Progress = Vec<(String, i32, i32, i32, i32)>;

/// Each user's (id, tokens, experience, level, streak), by id.
async fn progress(client: &tokio_postgres::Client, table: &str) -> Progress {
    client
        .query(&format!("select id::text, tokens, experience, level, session_streak from {table} order by id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn adopting_keeps_every_users_progress_and_a_second_run_changes_nothing() {
    let (db, client) = legacy_database(3000).await;
    // What the old database holds, with the documented fix-ups applied (a null or
    // negative balance, experience or streak is 0; a level below 1 is 1).
    let expected: Progress = client
        .query(
            "select id::text, greatest(coalesce(tokens, 0), 0), greatest(coalesce(experience, 0), 0),
                    greatest(coalesce(level, 1), 1), greatest(coalesce(session_streak, 0), 0)
               from public.user_profiles order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(expected.len(), 3000);
    let legacy_sessions = count(&client, "select count(*) from public.sessions").await;
    let legacy_protocols = count(&client, "select count(*) from public.custom_protocols").await;
    let legacy_customers = count(&client, "select count(*) from public.stripe_customers").await;
    let legacy_orders = count(
        &client,
        "select count(distinct checkout_session_id) from public.stripe_orders o
          where exists (select 1 from public.stripe_customers c where c.customer_id = o.customer_id)",
    )
    .await;
    let negative = count(&client, "select count(*) from public.user_profiles where tokens < 0").await;
    assert!(negative > 0 && legacy_orders > 0);

    // The dry run says what it will do, with counts, and changes nothing.
    let before = fingerprint_legacy(&client).await;
    let (ok, dry) = adopt(&db.url, &["--dry-run"]);
    assert!(ok, "{dry}");
    for line in [
        "table user_profiles: 16 of 16 known columns",
        "enum stripe_order_status (pending, completed, canceled)",
        "trigger on_auth_user_created on auth.users (calls handle_new_user; dropped)",
        "3 entries of the old project's own migration history",
        "user_profiles moved: 3000",
        &format!("user_profiles fixed: tokens negative, set to 0: {negative}"),
        &format!("sessions moved (as history: rewarded before, no tokens now): {legacy_sessions}"),
        &format!("custom_protocols moved: {legacy_protocols}"),
        &format!("stripe_customers moved: {legacy_customers}"),
        &format!("stripe_orders moved: {legacy_orders}"),
        "stripe_orders refused: customer not adopted: 1",
        "stripe_orders merged: the same checkout session stored more than once:",
        "dry run: rolled back, nothing was changed",
    ] {
        assert!(dry.contains(line), "the dry run says {line:?}:\n{dry}");
    }
    assert_eq!(fingerprint_legacy(&client).await, before, "a dry run changes nothing");

    let (ok, out) = adopt(&db.url, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("adopted: committed"), "{out}");
    // The real run does what the dry run said.
    let body = |s: &str| s.lines().filter(|l| l.starts_with("  ")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&out), body(&dry));

    // Per user: balance, experience, level and streak as they were (after the fix-ups).
    assert_eq!(progress(&client, "public.user_profiles").await, expected);
    let total: i64 = expected.iter().map(|p| p.1 as i64).sum();
    assert_eq!(count(&client, "select sum(tokens)::int8 from public.user_profiles").await, total);
    assert_eq!(count(&client, "select sum(delta)::int8 from public.token_ledger").await, total);
    assert_eq!(count(&client, "select count(*) from public.ledger_mismatches").await, 0, "tokens == sum(ledger)");
    // Users who had spent part of what they bought: their opening row is negative.
    assert!(
        count(&client, "select count(*) from public.token_ledger where reason = 'opening_balance' and delta < 0").await
            > 0
    );
    assert_eq!(
        count(&client, "select count(*) from public.token_ledger where reason not in ('purchase', 'opening_balance')")
            .await,
        0
    );
    // Ego-state usage and journey, as they were where they were valid.
    assert_eq!(
        count(
            &client,
            "select count(*) from public.user_profiles p join libero_legacy.user_profiles o using (id)
              where jsonb_typeof(o.ego_state_usage) = 'object'
                and (p.ego_state_usage::jsonb <> o.ego_state_usage or p.settings::jsonb is distinct from o.settings
                     and jsonb_typeof(o.settings) = 'object' or p.journey_goals::jsonb <> o.journey_goals
                     or p.last_session_date is distinct from o.last_session_date)"
        )
        .await,
        0
    );
    assert_eq!(count(&client, "select count(*) from public.sessions").await, legacy_sessions);
    assert_eq!(count(&client, "select count(*) from public.sessions where tokens_awarded <> 0").await, 0);
    assert_eq!(count(&client, "select count(*) from public.custom_protocols").await, legacy_protocols);
    assert_eq!(count(&client, "select count(*) from public.stripe_customers").await, legacy_customers);
    assert_eq!(count(&client, "select count(*) from public.stripe_orders").await, legacy_orders);
    // Every completed order with a package is recorded as credited, once.
    assert_eq!(
        count(
            &client,
            "select count(*) from public.stripe_orders o where o.status = 'completed'
               and (select count(*) from public.token_ledger l where l.user_id = o.user_id and l.reason = 'purchase'
                     and l.reference = o.checkout_session_id and l.delta = o.tokens) <> 1"
        )
        .await,
        0
    );
    // Subscriptions keep their plan: mystic exactly for the users with a live one.
    assert_eq!(
        count(
            &client,
            "select count(*) from public.user_profiles p
              where (p.plan = 'mystic') <> exists (
                select 1 from libero_legacy.stripe_subscriptions s join libero_legacy.stripe_customers c using (customer_id)
                 where c.user_id = p.id and s.status::text in ('active', 'trialing'))"
        )
        .await,
        0
    );

    // `supabase db push` and `libero migrate` find nothing to apply, and only this
    // project's history is recorded.
    let files = std::fs::read_dir(workspace().join("migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count() as i64;
    assert_eq!(count(&client, "select count(*) from supabase_migrations.schema_migrations").await, files);
    let migrate =
        Command::new(BIN).args(["migrate", "--database-url", &db.url]).current_dir(workspace()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&migrate.stdout).trim(), "database is up to date");

    // `public` is exactly what the migrations make on a fresh database.
    let fresh = ScratchDb::migrated("adopt_fresh").await;
    assert_eq!(public_schema(&db.url), public_schema(&fresh.url));

    // A second run is a no-op.
    let adopted = fingerprint(&client).await;
    let (ok, again) = adopt(&db.url, &[]);
    assert!(ok, "{again}");
    assert!(again.starts_with("already adopted at "), "{again}");
    let (ok, dry_again) = adopt(&db.url, &["--dry-run"]);
    assert!(ok && dry_again.starts_with("already adopted at "), "{dry_again}");
    assert_eq!(fingerprint(&client).await, adopted);
}

/// `pg_dump --schema-only` of the schema `public` (without the dump's random
/// `\restrict` key).
fn public_schema(url: &str) -> String {
    let out = Command::new("pg_dump").args(["--schema-only", "--schema=public", url]).output().expect("pg_dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The old database's rows and schema (before adoption there is no ledger).
async fn fingerprint_legacy(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "select md5(string_agg(x, '|' order by x)) from (
               select format('%s %s.%s', c.relkind, n.nspname, c.relname) as x
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where n.nspname in ('public', 'libero_legacy', 'supabase_migrations')
               union all select 'version ' || version from supabase_migrations.schema_migrations
               union all select 'profile ' || p::text from public.user_profiles p
               union all select 'order ' || o::text from public.stripe_orders o
               union all select 'trigger ' || tgname from pg_trigger where tgrelid = 'auth.users'::regclass
             ) t",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unrecognised_shape_is_refused_with_its_report_and_nothing_changes() {
    let (db, client) = legacy_database(50).await;
    client
        .batch_execute(
            "create table public.meditation_streak_backup (id uuid, streak int);
             alter table public.user_profiles add column favourite_colour text;
             alter table public.sessions alter column duration type text;",
        )
        .await
        .unwrap();
    let before = fingerprint_legacy(&client).await;
    for extra in [&["--dry-run"][..], &[]] {
        let (ok, out) = adopt(&db.url, extra);
        assert!(!ok, "{out}");
        for line in [
            "not recognised",
            "table public.meditation_streak_backup",
            "column user_profiles.favourite_colour (text)",
            "column sessions.duration is text, not int4",
            "refused: nothing was changed",
        ] {
            assert!(out.contains(line), "{line:?}:\n{out}");
        }
        assert_eq!(fingerprint_legacy(&client).await, before);
    }

    // A database that is not the old app's at all is refused too.
    let empty = ScratchDb::new("adopt_empty").await;
    let (ok, out) = adopt(&empty.url, &[]);
    assert!(!ok && out.contains("no public.user_profiles"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_clients_token_and_experience_writes_are_refused_after_adoption() {
    let (db, client) = legacy_database(30).await;
    let user: String =
        client.query_one("select id::text from public.user_profiles order by id limit 1", &[]).await.unwrap().get(0);
    let as_user = |sql: &str| {
        format!(
            "begin; set local role authenticated;
             set local request.jwt.claims = '{{\"sub\":\"{user}\",\"role\":\"authenticated\"}}'; {sql}; commit;"
        )
    };
    // Before: the old client may write its own balance.
    client
        .batch_execute(&as_user("update public.user_profiles set tokens = tokens + 1 where id = auth.uid()"))
        .await
        .unwrap();

    let (ok, out) = adopt(&db.url, &[]);
    assert!(ok, "{out}");
    // What the old client sends through PostgREST: each one is refused with 42501,
    // which PostgREST answers as 403 with the message below, and nothing changes.
    let tokens = || async {
        count(&client, &format!("select tokens::int8 from public.user_profiles where id = '{user}'")).await
    };
    let held = tokens().await;
    for (write, says) in [
        ("update public.user_profiles set tokens = tokens + 100 where id = auth.uid()", "permission denied for table user_profiles"),
        ("update public.user_profiles set experience = 99999, level = 99 where id = auth.uid()", "permission denied for table user_profiles"),
        ("update public.user_profiles set session_streak = 70 where id = auth.uid()", "permission denied for table user_profiles"),
        (
            "insert into public.sessions (user_id, client_session_id, ego_state, duration, experience_gained, tokens_awarded,
                                          request_fingerprint, result, local_date)
             values (auth.uid(), gen_random_uuid(), 'guardian', 600, 30, 2, 'x', '{}', current_date)",
            "permission denied for table sessions",
        ),
        (
            "insert into public.custom_protocols (user_id, name) values (auth.uid(), 'free protocol')",
            "permission denied for table custom_protocols",
        ),
    ] {
        let error = client.batch_execute(&as_user(write)).await.unwrap_err();
        let db_error = error.as_db_error().unwrap_or_else(|| panic!("{write}: {error}"));
        assert_eq!(db_error.code().code(), "42501", "{write}: {db_error}");
        assert_eq!(db_error.message(), says);
        client.batch_execute("rollback").await.unwrap();
    }
    assert_eq!(tokens().await, held);
    // The journey and settings stay the client's to write.
    client
        .batch_execute(&as_user(
            "update public.user_profiles set settings = '{\"timezone\":\"Europe/Paris\"}', onboarding_completed = true
              where id = auth.uid()",
        ))
        .await
        .unwrap();
}

/// Line items as Stripe answers them: one line, at the price the session's amount paid.
struct LineItems(std::collections::HashMap<String, i64>);

impl Respond for LineItems {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let session = request.url.path().split('/').nth(4).unwrap_or_default();
        let amount = self.0[session];
        ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": false,
            "data": [{"id": "li_1", "quantity": 1,
                      "price": {"id": format!("price_{amount}"), "unit_amount": amount, "currency": "usd"}}]}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_over_thirty_days_of_past_purchases_credits_none_of_them_again() {
    let (db, client) = legacy_database(600).await;
    let (ok, out) = adopt(&db.url, &[]);
    assert!(ok, "{out}");
    // Stripe's log of the last 30 days holds a checkout.session.completed for every paid
    // order (as our checkout would have written it, metadata included: the case where a
    // credit could happen), spread over the days, and each delivered twice.
    let orders = client
        .query(
            "select o.checkout_session_id, o.payment_intent_id, o.customer_id, o.user_id::text, o.product, o.amount_total
               from public.stripe_orders o where o.status in ('completed', 'review') order by o.id",
            &[],
        )
        .await
        .unwrap();
    assert!(orders.len() > 50, "{}", orders.len());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let log = EventLog::default();
    for (n, o) in orders.iter().enumerate() {
        let (session, amount): (String, i64) = (o.get(0), o.get(5));
        let product: String = o.get(4);
        let created = now - 29 * 86400 + (n as i64) * (28 * 86400 / orders.len() as i64);
        let event = |id: String| {
            json!({"id": id, "object": "event", "type": "checkout.session.completed", "created": created,
                "data": {"object": {"id": session, "object": "checkout.session", "mode": "payment",
                    "payment_status": "paid", "amount_total": amount, "currency": "usd",
                    "customer": o.get::<_, String>(2), "payment_intent": o.get::<_, String>(1),
                    "client_reference_id": o.get::<_, String>(3),
                    "metadata": {"user_id": o.get::<_, String>(3), "product": product}}}})
        };
        log.push(event(format!("evt_adopt{n}")));
        log.push(event(format!("evt_adopt{n}_again")));
    }
    let stripe = MockServer::start().await;
    log.mount(&stripe).await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/checkout/sessions/[A-Za-z0-9_]+/line_items$"))
        .respond_with(LineItems(orders.iter().map(|o| (o.get(0), o.get(5))).collect()))
        .mount(&stripe)
        .await;
    // Reconcile also re-reads the subscriptions of customers it has not read yet: every
    // adopted one. Their state is not what this test is about.
    Mock::given(method("GET"))
        .and(path("/v1/subscriptions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": false, "data": []})),
        )
        .mount(&stripe)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error"}})))
        .mount(&stripe)
        .await;

    let ledger = || async {
        let r = client
            .query_one(
                "select count(*), coalesce(sum(delta), 0)::int8, (select sum(tokens)::int8 from public.user_profiles)
                          from public.token_ledger",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
    };
    let before = ledger().await;
    let mut command = reconcile_command(&stripe, "sk_test_fake-adopt-reconcile");
    command
        .args(["--database-url", &db.url])
        .env("SPIN_VARIABLE_STRIPE_PRICE_TOKENS_SMALL", "price_499")
        .env("SPIN_VARIABLE_STRIPE_PRICE_TOKENS_MEDIUM", "price_999")
        .env("SPIN_VARIABLE_STRIPE_PRICE_TOKENS_LARGE", "price_1999");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{all}");
    // Every event of the log went through the webhook's apply path.
    assert_eq!(
        count(&client, "select count(*) from public.stripe_events where event_id like 'evt_adopt%'").await,
        2 * orders.len() as i64,
        "{all}"
    );
    assert_eq!(ledger().await, before, "no past purchase is credited again:\n{all}");
    assert_eq!(count(&client, "select count(*) from public.ledger_mismatches").await, 0);
}
