//! The database on its own, in SQL, the way its callers use it: the migrations; who may
//! do what (Supabase's roles: `anon`, `authenticated` as PostgREST sets it up,
//! `service_role` for the server); spending tokens; and the session rewards of
//! `complete_session`. (The end-to-end tests through the HTTP endpoints live elsewhere.)
//!
//! Every test gets a database of its own, cloned from the migrated template, and ends by
//! checking that every balance equals the sum of its ledger.

use libero_tests::db::{self, TestDb};
use libero_tests::sql::{
    as_role, assert_denied, assert_rewarded_sessions_do_not_overlap, fresh, new_user, seed_reward_days,
};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn as_user(client: &mut Client, user: Uuid, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
    as_role(client, "authenticated", Some(user), sql).await
}

/// The jsonb a statement returns (first column of its one row).
async fn json_of(client: &Client, sql: &str) -> Value {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Credits tokens the way a purchase does: balance and ledger row in one statement.
async fn credit(client: &Client, user: Uuid, tokens: i32, reference: &str) {
    client
        .execute(
            "with p as (update user_profiles set tokens = tokens + $2 where id = $1 returning tokens)
             insert into token_ledger (user_id, delta, reason, reference, balance_after)
             select $1, $2::integer, 'purchase', $3::text, tokens from p",
            &[&user, &tokens, &reference],
        )
        .await
        .unwrap();
}

/// (tokens, experience, level, session_streak)
async fn progress(client: &Client, user: Uuid) -> (i32, i32, i32, i32) {
    let row = client
        .query_one("select tokens, experience, level, session_streak from user_profiles where id = $1", &[&user])
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// The user's unlocked achievement ids, in order.
async fn achievements_of(client: &Client, user: Uuid) -> Vec<String> {
    client
        .query("select achievement_id from user_achievements where user_id = $1 order by 1", &[&user])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn assert_ledger_consistent(client: &Client) {
    let rows = client.query("select user_id::text, tokens, ledger_sum from ledger_mismatches", &[]).await.unwrap();
    let mismatches: Vec<(String, i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(mismatches.is_empty(), "balances that disagree with the ledger: {mismatches:?}");
}

/// Tests cannot wait for a session to end before the next one starts: this moves the
/// user's recorded sessions 25 hours back on the clock (`ended_at` only), as if they had
/// run then, so the next session overlaps none of them. The daily caps and the streak
/// count days on the profile and are left as they are.
async fn earlier_sessions_ended_long_ago(client: &Client, user: Uuid) {
    client
        .execute("update sessions set ended_at = ended_at - interval '25 hours' where user_id = $1", &[&user])
        .await
        .unwrap();
}

/// A session that started after the user's earlier ones ended (see
/// [`earlier_sessions_ended_long_ago`]), completed now.
async fn complete_session(
    client: &Client,
    user: Uuid,
    session: Uuid,
    ego_state: &str,
    seconds: i32,
    protocol: Option<Uuid>,
    fingerprint: &str,
) -> Value {
    earlier_sessions_ended_long_ago(client, user).await;
    client
        .query_one(
            "select complete_session($1, $2, $3, $4, $5, $6, $7, null)",
            &[&user, &session, &ego_state, &None::<&str>, &seconds, &protocol, &fingerprint],
        )
        .await
        .unwrap()
        .get(0)
}

/// A new session of `seconds` in the 'guardian' ego state, after the user's earlier ones.
async fn complete(client: &Client, user: Uuid, seconds: i32) -> Value {
    complete_session(client, user, Uuid::new_v4(), "guardian", seconds, None, "fp").await
}

/// Runs `statements[i]` (each returning one jsonb), each on its own connection, all
/// released at once.
async fn in_parallel(test_db: &TestDb, statements: Vec<String>) -> Vec<Value> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(statements.len()));
    let tasks: Vec<_> = statements
        .into_iter()
        .map(|sql| {
            let url = test_db.url.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let client = db::connect(&url).await.unwrap();
                barrier.wait().await;
                client.query_one(sql.as_str(), &[]).await.unwrap().get::<_, Value>(0)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

fn count(values: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    values.iter().filter(|v| pred(v)).count()
}

/// The account was created just now (auth.users and the profile): no time before now is
/// credited.
async fn make_account_new(client: &Client, user: Uuid) {
    client
        .execute(
            "with u as (update auth.users set created_at = now() where id = $1)
             update user_profiles set created_at = now() where id = $1",
            &[&user],
        )
        .await
        .unwrap();
}

/// The profile was created a day ago, so sessions may be reported as having started
/// earlier today (no time before the account is credited).
async fn make_account_a_day_old(client: &Client, user: Uuid) {
    make_account_days_old(client, user, 1).await;
}

async fn make_account_days_old(client: &Client, user: Uuid, days: i32) {
    client
        .execute(
            "update user_profiles set created_at = now() - make_interval(days => $2) where id = $1",
            &[&user, &days],
        )
        .await
        .unwrap();
}

/// As if a day had passed: the user's days and sessions move 24 hours back on the clock,
/// each day to the date before (through a far date, so no two rows ever share one).
async fn a_day_passes(client: &Client, user: Uuid) {
    client
        .batch_execute(&format!(
            "update reward_days set day = day + 100000 where user_id = '{user}';
             update reward_days set day = day - 100001, starts_at = starts_at - interval '1 day',
                    ends_at = ends_at - interval '1 day', first_started_at = first_started_at - interval '1 day',
                    last_ended_at = last_ended_at - interval '1 day'
              where user_id = '{user}';
             update sessions set ended_at = ended_at - interval '1 day' where user_id = '{user}';"
        ))
        .await
        .unwrap();
}

async fn set_zone(client: &Client, user: Uuid, zone: &str) {
    client
        .execute(
            "update user_profiles set settings = jsonb_build_object('timezone', $2::text) where id = $1",
            &[&user, &zone],
        )
        .await
        .unwrap();
}

async fn local_today(client: &Client, zone: &str) -> String {
    client.query_one("select ((now() at time zone $1)::date)::text", &[&zone]).await.unwrap().get(0)
}

/// A session of `seconds` that started at `now() - started_ago`, completed now, with
/// nothing moved on the clock first.
async fn complete_started(client: &Client, user: Uuid, seconds: i32, started_ago: &str) -> Value {
    client
        .query_one(
            "select complete_session($1, gen_random_uuid(), 'guardian', null, $2, null, 'fp',
                                     now() - $3::text::interval)",
            &[&user, &seconds, &started_ago],
        )
        .await
        .unwrap()
        .get(0)
}

/// A session of `seconds` ending now, with nothing moved on the clock first.
async fn complete_now(client: &Client, user: Uuid, id: Uuid, seconds: i32) -> Value {
    client
        .query_one("select complete_session($1, $2, 'guardian', null, $3, null, 'fp', null)", &[&user, &id, &seconds])
        .await
        .unwrap()
        .get(0)
}

/// Moves the user's sessions `seconds` back on the clock: that much time has passed.
async fn time_passes(client: &Client, user: Uuid, seconds: i32) {
    client
        .execute(
            "update sessions set ended_at = ended_at - make_interval(secs => $2) where user_id = $1",
            &[&user, &f64::from(seconds)],
        )
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn migrations_apply_to_an_empty_database_in_order_once() {
    let admin_url = db::admin_url().unwrap();
    let admin = db::connect(&admin_url).await.unwrap();
    let name = format!("libero_empty_{}", Uuid::new_v4().simple());
    admin.batch_execute(&format!("create database {}", db::quote_ident(&name))).await.unwrap();
    let url = db::with_dbname(&admin_url, &name).unwrap();

    let outcome = async {
        let first = db::migrate(&url).await?;
        let second = db::migrate(&url).await?;
        anyhow::Ok((first, second))
    }
    .await;
    admin.batch_execute(&format!("drop database {} with (force)", db::quote_ident(&name))).await.unwrap();

    let (first, second) = outcome.expect("migrations apply to an empty database");
    let expected: Vec<String> =
        db::read_migrations(&db::migrations_dir()).unwrap().into_iter().map(|m| m.version).collect();
    let applied: Vec<String> = first.into_iter().map(|m| m.version).collect();
    assert_eq!(applied, expected, "every migration, in filename order");
    assert!(second.is_empty(), "a second run applies nothing");
}

#[tokio::test]
async fn test_databases_are_fully_migrated() {
    let (test_db, _client) = fresh().await;
    assert!(db::migrate(&test_db.url).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Who may do what
// ---------------------------------------------------------------------------------------

const TABLES: &[&str] = &[
    "user_profiles",
    "sessions",
    "custom_protocols",
    "user_achievements",
    "token_ledger",
    "token_prices",
    "stripe_customers",
    "stripe_subscriptions",
    "stripe_orders",
    "stripe_events",
    "stripe_user_subscriptions",
    "stripe_user_orders",
    "ai_usage",
    "tts_cache",
    "ledger_mismatches",
];

#[tokio::test]
async fn anon_can_read_nothing() {
    let (_db, mut client) = fresh().await;
    for table in TABLES {
        assert_denied(as_role(&mut client, "anon", None, &format!("select * from {table}")).await, table);
    }
    assert_denied(as_role(&mut client, "anon", None, "select spend_tokens('custom_protocol')").await, "anon spending");
}

#[tokio::test]
async fn users_read_only_their_own_rows() {
    let (_db, mut client) = fresh().await;
    let (alice, bob) = (new_user(&client).await, new_user(&client).await);
    for user in [alice, bob] {
        complete(&client, user, 60).await;
        credit(&client, user, 5, "cs_test").await;
        client.execute("insert into custom_protocols (user_id, name) values ($1, 'mine')", &[&user]).await.unwrap();
        client
            .execute("insert into stripe_customers (user_id, customer_id) values ($1, $2)", &[&user, &user.to_string()])
            .await
            .unwrap();
    }

    for (table, owner) in [
        ("user_profiles", "id"),
        ("sessions", "user_id"),
        ("custom_protocols", "user_id"),
        ("user_achievements", "user_id"),
        ("token_ledger", "user_id"),
        ("stripe_customers", "user_id"),
    ] {
        let rows = as_user(&mut client, alice, &format!("select {owner} from {table}")).await.unwrap();
        let owners: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        assert!(!owners.is_empty(), "{table}: alice sees her rows");
        assert!(owners.iter().all(|o| *o == alice), "{table}: alice sees only hers: {owners:?}");
    }
    let prices = as_user(&mut client, alice, "select feature from token_prices").await.unwrap();
    // custom_protocol, elevenlabs_tts, elevenlabs_tts_fast
    assert_eq!(prices.len(), 3, "prices are visible to every signed-in user");
    for table in ["stripe_events", "tts_cache", "ledger_mismatches"] {
        assert_denied(as_user(&mut client, alice, &format!("select * from {table}")).await, table);
    }
}

#[tokio::test]
async fn users_update_journey_and_settings_but_not_progress() {
    let (_db, mut client) = fresh().await;
    let (alice, bob) = (new_user(&client).await, new_user(&client).await);

    let updated = as_user(
        &mut client,
        alice,
        &format!(
            "update user_profiles
                set settings = '{{\"timezone\":\"Europe/Paris\"}}', journey_goals = '[\"sleep\"]',
                    journey_preferences = '{{\"voice\":\"calm\"}}', onboarding_completed = true,
                    display_name = 'Alice', active_ego_state = 'guardian'
              where id = '{alice}'"
        ),
    )
    .await;
    assert!(updated.is_ok(), "{updated:?}");
    let tz: String = client
        .query_one("select settings->>'timezone' from user_profiles where id = $1", &[&alice])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tz, "Europe/Paris");

    for column in [
        "tokens = 1000",
        "experience = 1000",
        "level = 10",
        "session_streak = 30",
        "plan = 'mystic'",
        "last_session_date = current_date",
        "ego_state_usage = '{}'",
        "sessions_completed = 100",
        "id = gen_random_uuid()",
    ] {
        let sql = format!("update user_profiles set {column} where id = '{alice}'");
        assert_denied(as_user(&mut client, alice, &sql).await, &sql);
    }
    assert_denied(
        as_user(&mut client, alice, &format!("insert into user_profiles (id, tokens) values ('{alice}', 1000)")).await,
        "inserting a profile",
    );
    assert_denied(
        as_user(&mut client, alice, &format!("delete from user_profiles where id = '{alice}'")).await,
        "deleting a profile",
    );

    // Someone else's profile is invisible, so updating it changes no row.
    let sql = format!("update user_profiles set display_name = 'Mallory' where id = '{bob}' returning id");
    assert!(as_user(&mut client, alice, &sql).await.unwrap().is_empty());

    // Journey data stays the shape the app expects, and bounded.
    let sql = format!("update user_profiles set journey_goals = '{{}}' where id = '{alice}'");
    let err = as_user(&mut client, alice, &sql).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));
    let sql = format!(
        "update user_profiles set settings = jsonb_build_object('x', repeat('y', 100000)) where id = '{alice}'"
    );
    let err = as_user(&mut client, alice, &sql).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));
}

#[tokio::test]
async fn users_cannot_write_the_economy_or_call_server_functions() {
    let (_db, mut client) = fresh().await;
    let alice = new_user(&client).await;
    let session = complete(&client, alice, 60).await;
    let session_id = session["session_id"].as_str().unwrap().to_string();

    for sql in [
        format!("insert into token_ledger (user_id, delta, reason, reference, balance_after) values ('{alice}', 100, 'purchase', 'x', 102)"),
        format!("update token_ledger set delta = 100 where user_id = '{alice}'"),
        format!("delete from token_ledger where user_id = '{alice}'"),
        format!("insert into sessions (user_id, client_session_id, ego_state, duration, experience_gained, tokens_awarded, request_fingerprint, result, local_date) values ('{alice}', gen_random_uuid(), 'g', 60, 1000, 1000, 'f', '{{}}', current_date)"),
        format!("update sessions set experience_gained = 1000 where id = '{session_id}'"),
        // Moving a rewarded session back in time would make room for another one.
        format!("update sessions set ended_at = now() - interval '1 day' where id = '{session_id}'"),
        // Deleting a session would let its client session id be rewarded again.
        format!("delete from sessions where id = '{session_id}'"),
        format!("insert into user_achievements (user_id, achievement_id) values ('{alice}', 'level_10')"),
        format!("insert into custom_protocols (user_id, name) values ('{alice}', 'free')"),
        format!("update custom_protocols set user_id = '{alice}'"),
        format!("insert into stripe_orders (checkout_session_id, user_id, product, tokens) values ('cs', '{alice}', 'tokens-large', 650)"),
        format!("update stripe_subscriptions set status = 'active' where user_id = '{alice}'"),
        "insert into token_prices (feature, tokens) values ('free', 1)".to_string(),
        "update token_prices set tokens = 1".to_string(),
        // Made-up ego states would count towards ego_explorer.
        "insert into ego_states (name) values ('made_up')".to_string(),
        format!("select complete_session('{alice}', gen_random_uuid(), 'g', null, 60, null, 'f', null)"),
        format!("select complete_session('{alice}', gen_random_uuid(), 'g', null, 60, null, 'f', now() - interval '1 hour')"),
        format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'r')"),
        format!("select refund_spend('{alice}', 'r')"),
        "select local_today('UTC')".to_string(),
        // The days the caps and the streak count: resetting one would reopen its caps.
        format!("update reward_days set sessions = 0 where user_id = '{alice}'"),
        format!("delete from reward_days where user_id = '{alice}'"),
        format!("insert into reward_days (user_id, day, starts_at, ends_at, timezone) values ('{alice}', current_date + 1, now() + interval '1 day', now() + interval '2 days', 'UTC')"),
        format!("select reward_day_for('{alice}', now(), 'UTC')"),
        format!("select ensure_user_profile('{alice}')"),
    ] {
        assert_denied(as_user(&mut client, alice, &sql).await, &sql);
    }
    assert_eq!(progress(&client, alice).await.0, 2);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn users_manage_their_own_protocols_and_pay_for_new_ones() {
    let (_db, mut client) = fresh().await;
    let (alice, bob) = (new_user(&client).await, new_user(&client).await);
    credit(&client, alice, 7, "cs_test").await;
    let protocol = Uuid::new_v4();
    let create = format!("select create_custom_protocol('Sleep', 'Deep rest', p_duration => 20, p_id => '{protocol}')");

    let created: Value = as_user(&mut client, alice, &create).await.unwrap()[0].get(0);
    assert_eq!(created["ok"], true);
    assert_eq!(created["replayed"], false);
    assert_eq!(created["cost"], 5);
    assert_eq!(created["balance"], 2);
    assert_eq!(created["protocol"]["id"], protocol.to_string());
    assert_eq!(created["protocol"]["name"], "Sleep");

    // A retry (same id) returns the same protocol and charges nothing.
    let retried: Value = as_user(&mut client, alice, &create).await.unwrap()[0].get(0);
    assert_eq!(retried["ok"], true);
    assert_eq!(retried["replayed"], true);
    assert_eq!(retried["protocol"]["id"], protocol.to_string());
    assert_eq!(progress(&client, alice).await.0, 2);

    // Not enough tokens: nothing created.
    let poor: Value = as_user(&mut client, alice, "select create_custom_protocol('Another')").await.unwrap()[0].get(0);
    assert_eq!(poor, json!({"ok": false, "reason": "insufficient_tokens", "cost": 5, "balance": 2}));

    // Edit and delete their own; someone else's are out of reach.
    let sql =
        format!("update custom_protocols set name = 'Sleep well', duration = 25 where id = '{protocol}' returning id");
    assert_eq!(as_user(&mut client, alice, &sql).await.unwrap().len(), 1);
    let sql = format!("update custom_protocols set name = 'Mine now' where id = '{protocol}' returning id");
    assert!(as_user(&mut client, bob, &sql).await.unwrap().is_empty());
    let sql = format!("delete from custom_protocols where id = '{protocol}' returning id");
    assert!(as_user(&mut client, bob, &sql).await.unwrap().is_empty());
    assert_eq!(as_user(&mut client, alice, &sql).await.unwrap().len(), 1);

    // A paid-for id whose protocol was deleted is not re-created for free.
    credit(&client, alice, 10, "cs_test_2").await;
    let again: Value = as_user(&mut client, alice, &create).await.unwrap()[0].get(0);
    assert_eq!(again, json!({"ok": false, "reason": "protocol_id_used"}));
    assert_eq!(progress(&client, alice).await.0, 12);

    // Invalid content charges nothing.
    let err = as_user(&mut client, alice, "select create_custom_protocol('')").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));
    assert_eq!(progress(&client, alice).await.0, 12);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn balances_change_only_through_the_ledger() {
    let (_db, mut client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 10, "cs_test").await;

    // Even with every privilege, a balance change without its ledger row is refused at
    // commit, and so is a ledger row without the balance change or one that does not
    // continue the previous balance.
    let err = client.execute("update user_profiles set tokens = 1000 where id = $1", &[&alice]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
    let err = client
        .execute(
            "insert into token_ledger (user_id, delta, reason, reference, balance_after) values ($1, 5, 'purchase', 'x', 15)",
            &[&alice],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
    let err = client
        .execute(
            "with p as (update user_profiles set tokens = tokens + 5 where id = $1 returning tokens)
             insert into token_ledger (user_id, delta, reason, reference, balance_after) select $1, 5, 'purchase', 'y', 1000 from p",
            &[&alice],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
    // A reward keyed by a reference is written once.
    let err = client
        .execute(
            "with p as (update user_profiles set tokens = tokens + 10 where id = $1 returning tokens)
             insert into token_ledger (user_id, delta, reason, reference, balance_after) select $1, 10, 'purchase', 'cs_test', tokens from p",
            &[&alice],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");

    // The ledger is append-only for the server too.
    for sql in [
        format!("update token_ledger set delta = 1000 where user_id = '{alice}'"),
        format!("delete from token_ledger where user_id = '{alice}'"),
    ] {
        assert_denied(as_role(&mut client, "service_role", None, &sql).await, &sql);
    }
    assert_eq!(progress(&client, alice).await.0, 10);
    assert_ledger_consistent(&client).await;

    // Deleting the user takes their rows with them.
    client.execute("delete from auth.users where id = $1", &[&alice]).await.unwrap();
    let left: i64 =
        client.query_one("select count(*) from token_ledger where user_id = $1", &[&alice]).await.unwrap().get(0);
    assert_eq!(left, 0);
}

// ---------------------------------------------------------------------------------------
// Spending
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_cost_charges_every_started_block() {
    let (_db, client) = fresh().await;
    for (feature, units, cost) in [
        ("custom_protocol", 1, 5),
        ("custom_protocol", 2, 10),
        ("elevenlabs_tts", 1, 1),
        ("elevenlabs_tts", 500, 1),
        ("elevenlabs_tts", 501, 2),
        ("elevenlabs_tts", 1200, 3),
    ] {
        let got: i32 = client.query_one("select token_cost($1, $2)", &[&feature, &units]).await.unwrap().get(0);
        assert_eq!(got, cost, "{feature} x {units}");
    }
    for (feature, units) in [("no_such_feature", 1), ("custom_protocol", 0), ("elevenlabs_tts", -1)] {
        let err = client.query_one("select token_cost($1, $2)", &[&feature, &units]).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_PARAMETER_VALUE), "{feature} x {units}");
    }
}

#[tokio::test]
async fn a_spend_debits_once_per_reference() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 12, "cs_test").await;
    let spend = |feature: &str, units: i32, reference: &str| {
        format!("select spend_tokens_for('{alice}', '{feature}', {units}, '{reference}')")
    };

    let first = json_of(&client, &spend("custom_protocol", 1, "r1")).await;
    assert_eq!(first, json!({"ok": true, "replayed": false, "cost": 5, "balance": 7, "reference": "r1"}));
    let again = json_of(&client, &spend("custom_protocol", 1, "r1")).await;
    assert_eq!(again, json!({"ok": true, "replayed": true, "cost": 5, "balance": 7, "reference": "r1"}));
    assert_eq!(progress(&client, alice).await.0, 7);

    let other_use = json_of(&client, &spend("elevenlabs_tts", 1200, "r1")).await;
    assert_eq!(other_use, json!({"ok": false, "reason": "reference_conflict", "cost": 5, "balance": 7}));

    let tts = json_of(&client, &spend("elevenlabs_tts", 1200, "r2")).await;
    assert_eq!(tts["cost"], 3);
    assert_eq!(tts["balance"], 4);

    let rows: Vec<(String, i32, Option<String>)> = client
        .query(
            "select reason, delta, feature from token_ledger where user_id = $1 and reason = 'spend' order by id",
            &[&alice],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("spend".to_string(), -5, Some("custom_protocol".to_string())),
            ("spend".to_string(), -3, Some("elevenlabs_tts".to_string()))
        ]
    );
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn a_spend_without_enough_tokens_changes_nothing() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 4, "cs_test").await;

    let refused = json_of(&client, &format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'r1')")).await;
    assert_eq!(refused, json!({"ok": false, "reason": "insufficient_tokens", "cost": 5, "balance": 4}));
    assert_eq!(progress(&client, alice).await.0, 4);
    let spends: i64 =
        client.query_one("select count(*) from token_ledger where reason = 'spend'", &[]).await.unwrap().get(0);
    assert_eq!(spends, 0);

    // Refused spends record nothing, so the same reference works once there is enough.
    credit(&client, alice, 1, "cs_test_2").await;
    let paid = json_of(&client, &format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'r1')")).await;
    assert_eq!(paid["ok"], true);
    assert_eq!(paid["balance"], 0);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn a_refund_gives_a_spend_back_once() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 5, "cs_test").await;
    let spend = format!("select spend_tokens_for('{alice}', 'elevenlabs_tts', 1200, 'tts:1')");
    let refund = format!("select refund_spend('{alice}', 'tts:1')");

    assert_eq!(json_of(&client, &spend).await["balance"], 2);
    assert_eq!(json_of(&client, &refund).await, json!({"ok": true, "replayed": false, "refunded": 3, "balance": 5}));
    assert_eq!(json_of(&client, &refund).await, json!({"ok": true, "replayed": true, "refunded": 3, "balance": 5}));
    assert_eq!(
        json_of(&client, &spend).await,
        json!({"ok": false, "reason": "already_refunded", "cost": 3, "balance": 5})
    );
    assert_eq!(
        json_of(&client, &format!("select refund_spend('{alice}', 'tts:2')")).await,
        json!({"ok": false, "reason": "no_such_spend"})
    );
    assert_eq!(progress(&client, alice).await.0, 5);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn users_spend_for_themselves_through_rpc() {
    let (_db, mut client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 10, "cs_test").await;

    let spent: Value =
        as_user(&mut client, alice, "select spend_tokens('custom_protocol', 1, 'abc')").await.unwrap()[0].get(0);
    assert_eq!(spent, json!({"ok": true, "replayed": false, "cost": 5, "balance": 5, "reference": "client:abc"}));
    // The user's references live apart from the server's.
    let server = json_of(&client, &format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'abc')")).await;
    assert_eq!(server["replayed"], false);
    assert_eq!(progress(&client, alice).await.0, 0);

    // Without a user in the claims: refused with SQLSTATE 42501.
    let err = as_role(&mut client, "authenticated", None, "select spend_tokens('custom_protocol')").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert_ledger_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_spends_never_overdraw() {
    let (test_db, client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 23, "cs_test").await;

    let results = in_parallel(
        &test_db,
        (0..20).map(|i| format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'r{i}')")).collect(),
    )
    .await;
    assert_eq!(count(&results, |r| r["ok"] == true), 4, "{results:?}");
    assert_eq!(count(&results, |r| r["reason"] == "insufficient_tokens"), 16);
    assert_eq!(progress(&client, alice).await.0, 3);
    assert_ledger_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_spends_with_one_reference_debit_once() {
    let (test_db, client) = fresh().await;
    let alice = new_user(&client).await;
    credit(&client, alice, 50, "cs_test").await;

    let results =
        in_parallel(&test_db, vec![format!("select spend_tokens_for('{alice}', 'custom_protocol', 1, 'same')"); 20])
            .await;
    assert_eq!(count(&results, |r| r["replayed"] == false), 1, "{results:?}");
    assert_eq!(count(&results, |r| r["replayed"] == true), 19);
    assert!(results.iter().all(|r| r["ok"] == true && r["balance"] == 45));
    assert_eq!(progress(&client, alice).await.0, 45);
    assert_ledger_consistent(&client).await;
}

// ---------------------------------------------------------------------------------------
// complete_session: the reward rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_first_session_grants_xp_tokens_a_streak_and_an_achievement() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    let id = Uuid::new_v4();

    // 2.5 minutes: 10 + 2 per whole minute.
    let result = complete_session(&client, alice, id, "guardian", 150, None, "fp").await;
    assert_eq!(result["outcome"], "created");
    assert_eq!(result["replayed"], false);
    assert_eq!(result["client_session_id"], id.to_string());
    assert_eq!(result["experience_gained"], 14);
    assert_eq!(result["tokens_awarded"], 2);
    assert_eq!(result["rewards"], json!([{"reason": "session_complete", "tokens": 2}]));
    assert_eq!(result["level_before"], 1);
    assert_eq!(result["level_after"], 1);
    assert_eq!(result["streak"], 1);
    assert_eq!(result["streak_extended"], true);
    assert_eq!(result["achievements_unlocked"], json!(["first_session"]));
    assert_eq!(result["totals"], json!({"tokens": 2, "experience": 14, "level": 1, "session_streak": 1}));
    assert_eq!(progress(&client, alice).await, (2, 14, 1, 1));

    let row = client
        .query_one(
            "select id::text, ego_state, duration, experience_gained, tokens_awarded, local_date::text
               from sessions where user_id = $1 and client_session_id = $2",
            &[&alice, &id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), result["session_id"].as_str().unwrap());
    assert_eq!(row.get::<_, String>(1), "guardian");
    assert_eq!((row.get::<_, i32>(2), row.get::<_, i32>(3), row.get::<_, i32>(4)), (150, 14, 2));
    assert_eq!(row.get::<_, String>(5), result["local_date"].as_str().unwrap());
    let usage: Value =
        client.query_one("select ego_state_usage from user_profiles where id = $1", &[&alice]).await.unwrap().get(0);
    assert_eq!(usage, json!({"guardian": 1}));
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn xp_counts_whole_minutes_up_to_an_hour() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    for (seconds, xp) in [(0, 10), (59, 10), (61, 12), (600, 30), (3600, 130), (3659, 130), (86400, 130)] {
        assert_eq!(complete(&client, alice, seconds).await["experience_gained"], xp, "{seconds}s");
    }
    for seconds in [-1, 86401] {
        let err = client
            .query_one(
                "select complete_session($1, gen_random_uuid(), 'guardian', null, $2, null, 'fp', null)",
                &[&alice, &seconds],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_PARAMETER_VALUE), "{seconds}s");
    }
}

#[tokio::test]
async fn each_level_reached_pays_five_tokens_once() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;

    let first = complete(&client, alice, 3600).await; // 130 XP: level 2
    assert_eq!(first["level_before"], 1);
    assert_eq!(first["level_after"], 2);
    assert_eq!(
        first["rewards"],
        json!([{"reason": "session_complete", "tokens": 2}, {"reason": "level_up", "tokens": 5, "level": 2}])
    );
    assert_eq!(first["tokens_awarded"], 7);

    // 140 XP: still level 2, so only the session's own tokens.
    let same_level = complete(&client, alice, 0).await;
    assert_eq!(same_level["level_after"], 2);
    assert_eq!(same_level["tokens_awarded"], 2);

    // Several levels in one session: each pays.
    client.execute("update user_profiles set experience = 490 where id = $1", &[&alice]).await.unwrap();
    let jump = complete(&client, alice, 3600).await; // 620 XP: level 7
    assert_eq!(jump["level_before"], 2);
    assert_eq!(jump["level_after"], 7);
    let levels: Vec<i64> = jump["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "level_up")
        .map(|r| r["level"].as_i64().unwrap())
        .collect();
    assert_eq!(levels, [3, 4, 5, 6, 7]);
    assert_eq!(jump["tokens_awarded"], 2 + 5 * 5);
    assert_eq!(jump["achievements_unlocked"], json!(["level_5"]));
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn a_replay_returns_the_first_answer_and_grants_nothing() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    let id = Uuid::new_v4();

    let first = complete_session(&client, alice, id, "guardian", 300, None, "fp-1").await;
    let replay = complete_session(&client, alice, id, "guardian", 300, None, "fp-1").await;
    let mut expected = first.clone();
    expected["outcome"] = json!("replayed");
    expected["replayed"] = json!(true);
    assert_eq!(replay, expected);

    let conflict = complete_session(&client, alice, id, "guardian", 600, None, "fp-2").await;
    assert_eq!(conflict, json!({"outcome": "conflict", "session_id": first["session_id"]}));

    assert_eq!(progress(&client, alice).await, (2, 20, 1, 1));
    let sessions: i64 =
        client.query_one("select count(*) from sessions where user_id = $1", &[&alice]).await.unwrap().get(0);
    assert_eq!(sessions, 1);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn a_session_protocol_must_be_the_users_own() {
    let (_db, client) = fresh().await;
    let (alice, bob) = (new_user(&client).await, new_user(&client).await);
    let protocol_of = |user: Uuid| {
        let client = &client;
        async move {
            client
                .query_one("insert into custom_protocols (user_id, name) values ($1, 'p') returning id", &[&user])
                .await
                .unwrap()
                .get::<_, Uuid>(0)
        }
    };
    let (hers, his) = (protocol_of(alice).await, protocol_of(bob).await);

    let unknown = complete_session(&client, alice, Uuid::new_v4(), "guardian", 60, Some(Uuid::new_v4()), "fp").await;
    assert_eq!(unknown, json!({"outcome": "unknown_protocol"}));
    let forbidden = complete_session(&client, alice, Uuid::new_v4(), "guardian", 60, Some(his), "fp").await;
    assert_eq!(forbidden, json!({"outcome": "forbidden_protocol"}));
    assert_eq!(progress(&client, alice).await, (0, 0, 1, 0), "nothing granted");

    let id = Uuid::new_v4();
    let own = complete_session(&client, alice, id, "guardian", 60, Some(hers), "fp").await;
    assert_eq!(own["outcome"], "created");
    let stored: Option<Uuid> =
        client.query_one("select protocol_id from sessions where client_session_id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(stored, Some(hers));

    let nobody = complete(&client, Uuid::new_v4(), 60).await;
    assert_eq!(nobody, json!({"outcome": "unknown_user"}));
    assert_ledger_consistent(&client).await;
}

/// The streak counts the user's local days (settings.timezone when a day opens): the
/// first rewarded session of a day extends a streak whose last day was the day before.
#[tokio::test]
async fn streaks_follow_the_users_local_days() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;

    // UTC+14 and UTC-11 are always on different dates: the day is the user's.
    set_zone(&client, alice, "Pacific/Kiritimati").await;
    let first = complete(&client, alice, 60).await;
    assert_eq!(first["local_date"], local_today(&client, "Pacific/Kiritimati").await);
    assert_ne!(first["local_date"], local_today(&client, "Pacific/Pago_Pago").await);
    assert_eq!((first["streak"].clone(), first["streak_extended"].clone()), (json!(1), json!(true)));

    // Another session the same day changes nothing.
    let same_day = complete(&client, alice, 60).await;
    assert_eq!((same_day["streak"].clone(), same_day["streak_extended"].clone()), (json!(1), json!(false)));

    // Moving west to a date before the day: still the same day, the streak stands.
    set_zone(&client, alice, "Pacific/Pago_Pago").await;
    let west = complete(&client, alice, 60).await;
    assert_eq!(west["local_date"], local_today(&client, "Pacific/Kiritimati").await);
    assert_eq!((west["streak"].clone(), west["streak_extended"].clone()), (json!(1), json!(false)));

    // Six days before today with a session: today is the seventh, which pays the bonus once.
    let bob = new_user(&client).await;
    set_zone(&client, bob, "Pacific/Kiritimati").await;
    seed_reward_days(&client, bob, "Pacific/Kiritimati", &[1, 2, 3, 4, 5, 6]).await;
    let seventh = complete(&client, bob, 60).await;
    assert_eq!(seventh["streak"], 7);
    assert_eq!(seventh["streak_extended"], true);
    assert_eq!(
        seventh["rewards"],
        json!([{"reason": "session_complete", "tokens": 2}, {"reason": "streak_bonus", "tokens": 10, "streak": 7}])
    );
    assert_eq!(seventh["achievements_unlocked"], json!(["first_session", "streak_7"]));
    let later = complete(&client, bob, 60).await;
    assert_eq!(later["streak"], 7);
    assert_eq!(later["tokens_awarded"], 2, "no second bonus the same day");
    assert_eq!(later["achievements_unlocked"], json!([]));
    let bonuses: Vec<String> = client
        .query("select reference from token_ledger where user_id = $1 and reason = 'streak_bonus'", &[&bob])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bonuses, ["streak:1"]);

    // A missed day starts over.
    let carol = new_user(&client).await;
    seed_reward_days(&client, carol, "UTC", &[2, 3, 4, 5]).await;
    let restarted = complete(&client, carol, 60).await;
    assert_eq!((restarted["streak"].clone(), restarted["streak_extended"].clone()), (json!(1), json!(true)));
    assert_ledger_consistent(&client).await;
}

/// A streak does not survive more than 48 hours without a session, even over days that
/// follow each other (a day stretched by a move west is longer than 24 hours).
#[tokio::test]
async fn a_streak_breaks_after_48_hours_without_a_session() {
    let (_db, client) = fresh().await;
    for (gap_hours, streak) in [(47, 2), (49, 1)] {
        let user = new_user(&client).await;
        seed_reward_days(&client, user, "UTC", &[1]).await;
        client
            .execute(
                "update reward_days set last_ended_at = now() - make_interval(hours => $2), first_started_at = null
                  where user_id = $1",
                &[&user, &gap_hours],
            )
            .await
            .unwrap();
        let today = complete(&client, user, 0).await;
        assert_eq!(today["streak"], streak, "{gap_hours} h after the last session: {today}");
    }
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn achievements_unlock_once_each() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    let mut unlocked = Vec::new();
    for (i, ego_state) in [
        "guardian", "rebel", "healer", "explorer", "mystic", "guardian", "rebel", "healer", "explorer", "mystic",
        "sage",
    ]
    .into_iter()
    .enumerate()
    {
        let result = complete_session(&client, alice, Uuid::new_v4(), ego_state, 60, None, "fp").await;
        for a in result["achievements_unlocked"].as_array().unwrap() {
            unlocked.push((i + 1, a.as_str().unwrap().to_string()));
        }
    }
    assert_eq!(
        unlocked,
        [(1, "first_session".to_string()), (5, "ego_explorer".to_string()), (10, "sessions_10".to_string())]
    );
    assert_eq!(achievements_of(&client, alice).await, ["ego_explorer", "first_session", "sessions_10"]);
}

// ---------------------------------------------------------------------------------------
// complete_session: only sessions that could have happened earn
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn overlapping_sessions_are_recorded_but_earn_nothing() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;

    let first = complete_now(&client, alice, Uuid::new_v4(), 600).await;
    assert_eq!((first["rewarded"].clone(), first["reason"].clone()), (json!(true), Value::Null));
    assert_eq!(first["xp_minutes"], 10);

    // Another 10 minutes ending now: it would have run alongside the first.
    let id = Uuid::new_v4();
    let overlapping = complete_now(&client, alice, id, 600).await;
    assert_eq!(overlapping["outcome"], "created");
    assert_eq!(overlapping["rewarded"], false);
    assert_eq!(overlapping["reason"], "overlaps_previous_session");
    assert_eq!(
        (
            overlapping["experience_gained"].clone(),
            overlapping["tokens_awarded"].clone(),
            overlapping["xp_minutes"].clone(),
            overlapping["rewards"].clone(),
            overlapping["achievements_unlocked"].clone(),
            overlapping["streak_extended"].clone(),
        ),
        (json!(0), json!(0), json!(0), json!([]), json!([]), json!(false))
    );
    assert_eq!(overlapping["totals"], first["totals"], "nothing changed");
    assert_eq!(overlapping["daily"]["rewarded_sessions"], 1);
    let row = client
        .query_one(
            "select rewarded, unrewarded_reason, experience_gained, tokens_awarded from sessions where client_session_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, Option<String>>(1), row.get::<_, i32>(2), row.get::<_, i32>(3)),
        (false, Some("overlaps_previous_session".to_string()), 0, 0)
    );
    let usage: Value = client
        .query_one(
            "select jsonb_build_array(ego_state_usage, sessions_completed) from user_profiles where id = $1",
            &[&alice],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, json!([{"guardian": 1}, 1]), "an unrewarded session is not counted");

    // Its replay answers the same, and still grants nothing.
    let replay = complete_now(&client, alice, id, 600).await;
    let mut expected = overlapping.clone();
    expected["outcome"] = json!("replayed");
    expected["replayed"] = json!(true);
    assert_eq!(replay, expected);

    // Back to back: ten minutes later, the next ten minutes are rewarded.
    time_passes(&client, alice, 600).await;
    let next = complete_now(&client, alice, Uuid::new_v4(), 600).await;
    assert_eq!(next["rewarded"], true, "{next}");

    // The tolerance: 20 seconds of overlap pass, 40 do not.
    time_passes(&client, alice, 580).await;
    assert_eq!(complete_now(&client, alice, Uuid::new_v4(), 600).await["rewarded"], true);
    time_passes(&client, alice, 560).await;
    assert_eq!(complete_now(&client, alice, Uuid::new_v4(), 600).await["reason"], "overlaps_previous_session");

    // Zero-length sessions take a minute each, so they cannot be stacked either.
    time_passes(&client, alice, 3600).await;
    assert_eq!(complete_now(&client, alice, Uuid::new_v4(), 0).await["rewarded"], true);
    assert_eq!(complete_now(&client, alice, Uuid::new_v4(), 0).await["reason"], "overlaps_previous_session");
    time_passes(&client, alice, 60).await;
    assert_eq!(complete_now(&client, alice, Uuid::new_v4(), 0).await["rewarded"], true);

    // Five of the eight earned: 5 x 2 tokens, 30+30+30+10+10 = 110 XP, so level 2 (+5).
    assert_eq!(progress(&client, alice).await, (15, 110, 2, 1));
    assert_rewarded_sessions_do_not_overlap(&client).await;
    assert_ledger_consistent(&client).await;
}

/// `started_at`: a completion sent late (the app was offline) keeps the time its session
/// ran, so sessions done back to back and reported together all count.
#[tokio::test]
async fn a_reported_start_places_the_session_and_must_be_possible() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    make_account_new(&client, alice).await;

    // Not before the account existed: the mint would otherwise reach back three days.
    let early = complete_started(&client, alice, 600, "1 hour").await;
    assert_eq!(early, json!({"outcome": "invalid_started_at", "problem": "before_account"}));

    make_account_days_old(&client, alice, 4).await;
    // Three sessions done back to back two hours ago, reported now.
    for ago in ["2 hours", "1 hour 50 minutes", "1 hour 40 minutes"] {
        let result = complete_started(&client, alice, 600, ago).await;
        assert_eq!(result["rewarded"], true, "{ago}: {result}");
    }
    // One that would have run alongside the second.
    let overlapping = complete_started(&client, alice, 600, "1 hour 55 minutes").await;
    assert_eq!(overlapping["reason"], "overlaps_previous_session");
    // Ending now, after them: fine.
    assert_eq!(complete_started(&client, alice, 600, "10 minutes").await["rewarded"], true);

    // A device clock up to 5 minutes ahead: the session ended now (and so overlaps the
    // one just reported). Further ahead, refused.
    let ahead = complete_started(&client, alice, 600, "6 minutes").await;
    assert_eq!(
        (ahead["outcome"].clone(), ahead["reason"].clone()),
        (json!("created"), json!("overlaps_previous_session"))
    );
    let ended_by_now: bool = client
        .query_one("select $1::text::timestamptz <= now()", &[&ahead["ended_at"].as_str().unwrap()])
        .await
        .unwrap()
        .get(0);
    assert!(ended_by_now, "{ahead}");
    assert_eq!(
        complete_started(&client, alice, 600, "4 minutes").await,
        json!({"outcome": "invalid_started_at", "problem": "in_future", "clock_tolerance_seconds": 300})
    );
    assert_eq!(complete_started(&client, alice, 60, "-1 hour").await["problem"], "in_future");

    // Reported up to 72 hours after it ended.
    assert_eq!(complete_started(&client, alice, 60, "30 hours").await["rewarded"], true);
    assert_eq!(complete_started(&client, alice, 60, "71 hours 1 minute").await["rewarded"], true);
    assert_eq!(
        complete_started(&client, alice, 60, "73 hours 1 minute").await,
        json!({"outcome": "invalid_started_at", "problem": "too_old", "late_window_seconds": 259200})
    );

    let sessions: i64 =
        client.query_one("select count(*) from sessions where user_id = $1", &[&alice]).await.unwrap().get(0);
    assert_eq!(sessions, 8, "refused reports are not recorded");
    assert_eq!(progress(&client, alice).await.0, 6 * 2 + 5, "six earned, one level");
    assert_rewarded_sessions_do_not_overlap(&client).await;
    assert_ledger_consistent(&client).await;
}

/// Per day, 12 sessions earn rewards and 240 minutes earn XP. A day is the user's local
/// date (settings.timezone) when it opens, and from then on a fixed stretch of real time:
/// no change of zone reopens it or opens another inside it.
#[tokio::test]
async fn daily_caps_follow_the_users_local_day() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    set_zone(&client, alice, "Pacific/Kiritimati").await;
    let kiritimati_today = local_today(&client, "Pacific/Kiritimati").await;

    for n in 1..=12 {
        let result = complete(&client, alice, 60).await;
        assert_eq!(result["rewarded"], true, "session {n}: {result}");
        assert_eq!(
            result["daily"],
            json!({"date": kiritimati_today, "rewarded_sessions": n,
                   "rewarded_sessions_cap": 12, "xp_minutes": n, "xp_minutes_cap": 240})
        );
    }
    let before = progress(&client, alice).await;
    let id = Uuid::new_v4();
    let capped = complete_session(&client, alice, id, "guardian", 60, None, "fp").await;
    assert_eq!((capped["rewarded"].clone(), capped["reason"].clone()), (json!(false), json!("daily_session_cap")));
    assert_eq!(capped["tokens_awarded"], 0);
    assert_eq!(progress(&client, alice).await, before);
    let mut replayed = capped.clone();
    replayed["outcome"] = json!("replayed");
    replayed["replayed"] = json!(true);
    assert_eq!(complete_session(&client, alice, id, "guardian", 60, None, "fp").await, replayed);

    // Hopping zones, east and west, to dates before and after: the day holds.
    for zone in ["Pacific/Pago_Pago", "Asia/Tokyo", "Etc/GMT-14", "America/New_York", "Etc/GMT+12", "Europe/Paris"] {
        set_zone(&client, alice, zone).await;
        let hop = complete(&client, alice, 60).await;
        assert_eq!(hop["reason"], "daily_session_cap", "{zone}: {hop}");
        assert_eq!(hop["daily"]["date"], kiritimati_today.as_str(), "{zone}");
    }
    assert_eq!(progress(&client, alice).await, before);

    // A day later, in a zone whose date is not after the day's, the day goes on.
    a_day_passes(&client, alice).await;
    set_zone(&client, alice, "Pacific/Pago_Pago").await;
    assert_eq!(complete(&client, alice, 60).await["reason"], "daily_session_cap");
    // Two days later (so that even the stretched day is over), back in Kiritimati: a new day.
    a_day_passes(&client, alice).await;
    a_day_passes(&client, alice).await;
    set_zone(&client, alice, "Pacific/Kiritimati").await;
    let next_day = complete(&client, alice, 60).await;
    assert_eq!(next_day["rewarded"], true, "{next_day}");
    assert_eq!(next_day["daily"]["date"], kiritimati_today.as_str());
    assert_eq!(next_day["daily"]["rewarded_sessions"], 1);

    // Minutes: 240 a day earn XP. Three hours, then 50 minutes, then only 10 of the next 60.
    let bob = new_user(&client).await;
    for _ in 0..3 {
        assert_eq!(complete(&client, bob, 3600).await["xp_minutes"], 60);
    }
    assert_eq!(complete(&client, bob, 3000).await["xp_minutes"], 50);
    let clipped = complete(&client, bob, 3600).await;
    assert_eq!((clipped["rewarded"].clone(), clipped["xp_minutes"].clone()), (json!(true), json!(10)));
    assert_eq!(clipped["experience_gained"], 10 + 2 * 10);
    assert_eq!(clipped["daily"]["xp_minutes"], 240);
    let past = complete(&client, bob, 600).await;
    assert_eq!((past["rewarded"].clone(), past["reason"].clone()), (json!(false), json!("daily_xp_minutes_cap")));
    assert_eq!(past["experience_gained"], 0);
    // Bob's day is UTC's; the next day the minutes count again.
    a_day_passes(&client, bob).await;
    assert_eq!(complete(&client, bob, 600).await["xp_minutes"], 10);
    assert_rewarded_sessions_do_not_overlap(&client).await;
    assert_ledger_consistent(&client).await;
}

/// Only the app's ego states (the ego_states rows) are counted, so
/// made-up ones neither unlock ego_explorer nor grow ego_state_usage.
#[tokio::test]
async fn only_the_apps_ego_states_are_counted() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    let usage = || {
        let client = &client;
        async move {
            client
                .query_one("select ego_state_usage from user_profiles where id = $1", &[&alice])
                .await
                .unwrap()
                .get::<_, Value>(0)
        }
    };

    let long = "x".repeat(60);
    for (i, made_up) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let name = format!("{made_up}{long}");
        let result = complete_session(&client, alice, Uuid::new_v4(), &name, 60, None, "fp").await;
        assert_eq!(result["rewarded"], true, "the session itself still earns");
        if i == 0 {
            assert_eq!(result["achievements_unlocked"], json!(["first_session"]));
        } else {
            assert_eq!(result["achievements_unlocked"], json!([]), "{made_up}");
        }
    }
    assert_eq!(usage().await, json!({}));
    let stored: i64 = client
        .query_one("select count(distinct ego_state) from sessions where user_id = $1", &[&alice])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 5, "the sessions keep the state they were done in");

    // The app's states, in any case, count under their own name; the fifth unlocks.
    let mut unlocked = Vec::new();
    for state in ["Guardian", "REBEL", "healer", "guardian", "explorer", "mystic"] {
        let result = complete_session(&client, alice, Uuid::new_v4(), state, 60, None, "fp").await;
        unlocked.push(result["achievements_unlocked"].clone());
    }
    // (The tenth session of all also unlocks sessions_10.)
    assert_eq!(unlocked, [json!([]), json!([]), json!([]), json!([]), json!(["sessions_10"]), json!(["ego_explorer"])]);
    assert_eq!(usage().await, json!({"guardian": 2, "rebel": 1, "healer": 1, "explorer": 1, "mystic": 1}));

    // A state the app adds later counts once its row exists.
    client.execute("insert into ego_states (name) values ('dreamer')", &[]).await.unwrap();
    complete_session(&client, alice, Uuid::new_v4(), "dreamer", 60, None, "fp").await;
    assert_eq!(usage().await["dreamer"], 1);
    assert_ledger_consistent(&client).await;
}

#[tokio::test]
async fn users_without_a_profile_get_one_on_their_first_session() {
    let (_db, client) = fresh().await;
    // A user from before the sign-up trigger existed: the profile made now, the account
    // older, so the minute of the session counts (the account's start is the earlier).
    let old = Uuid::new_v4();
    client
        .batch_execute(&format!(
            "alter table auth.users disable trigger on_auth_user_created_create_profile;
             insert into auth.users (id, email, created_at) values ('{old}', 'old@example.test', now() - interval '1 day');
             alter table auth.users enable trigger on_auth_user_created_create_profile;"
        ))
        .await
        .unwrap();
    assert_eq!(complete(&client, old, 60).await["outcome"], "created");
    assert_eq!(progress(&client, old).await, (2, 12, 1, 1));
    assert_ledger_consistent(&client).await;
}

/// Non-overlapping sessions (the app reports when each started, e.g. after being offline)
/// sent at once: each is checked against all committed before it, none lost. Past the
/// daily cap of 12 rewarded sessions, the rest earn nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_for_one_user_lose_no_update() {
    let (test_db, client) = fresh().await;
    let alice = new_user(&client).await;
    make_account_a_day_old(&client, alice).await;

    // Twenty 10-minute sessions, one every 11 minutes over the last 220 minutes (or before
    // midnight UTC, when they would straddle it: one day's cap is counted).
    let shift = libero_tests::testing::one_utc_day_shift(chrono::Duration::minutes(220)).num_minutes();
    let results = in_parallel(
        &test_db,
        (1..=20)
            .map(|k| {
                format!(
                    "select complete_session('{alice}', gen_random_uuid(), 'guardian', null, 600, null, 'fp',
                                         now() - interval '{}' minute)",
                    k * 11 + shift
                )
            })
            .collect(),
    )
    .await;
    assert_eq!(count(&results, |r| r["outcome"] == "created"), 20, "{results:?}");
    assert_eq!(count(&results, |r| r["rewarded"] == true), 12, "{results:?}");
    assert_eq!(count(&results, |r| r["reason"] == "daily_session_cap"), 8, "{results:?}");
    // 12 x 30 XP = 360 XP: level 4, three level-ups; 12 x 2 + 3 x 5 tokens.
    assert_eq!(progress(&client, alice).await, (39, 360, 4, 1));
    let first_sessions =
        count(&results, |r| r["achievements_unlocked"].as_array().unwrap().contains(&json!("first_session")));
    assert_eq!(first_sessions, 1);
    assert_rewarded_sessions_do_not_overlap(&client).await;
    assert_ledger_consistent(&client).await;
}

/// Minting by overlap, in SQL: twenty 10-minute sessions, all ending now, sent at once.
/// Only one of them could have happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_completions_sent_at_once_reward_one() {
    let (test_db, client) = fresh().await;
    let alice = new_user(&client).await;

    let results = in_parallel(
        &test_db,
        (0..20)
            .map(|_| {
                format!(
                    "select complete_session('{alice}', gen_random_uuid(), 'guardian', null, 600, null, 'fp', null)"
                )
            })
            .collect(),
    )
    .await;
    assert_eq!(count(&results, |r| r["outcome"] == "created"), 20, "{results:?}");
    assert_eq!(count(&results, |r| r["rewarded"] == true), 1, "{results:?}");
    assert_eq!(count(&results, |r| r["reason"] == "overlaps_previous_session"), 19, "{results:?}");
    assert_eq!(progress(&client, alice).await, (2, 30, 1, 1));
    let (sessions, unrewarded): (i64, i64) = {
        let row = client
            .query_one(
                "select count(*), count(*) filter (where not rewarded) from sessions where user_id = $1",
                &[&alice],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((sessions, unrewarded), (20, 19), "every completion recorded");
    assert_rewarded_sessions_do_not_overlap(&client).await;
    assert_ledger_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_of_one_session_grant_once() {
    let (test_db, client) = fresh().await;
    let alice = new_user(&client).await;
    let id = Uuid::new_v4();

    let results = in_parallel(
        &test_db,
        vec![format!("select complete_session('{alice}', '{id}', 'guardian', null, 600, null, 'fp', null)"); 20],
    )
    .await;
    assert_eq!(count(&results, |r| r["outcome"] == "created"), 1, "{results:?}");
    assert_eq!(count(&results, |r| r["outcome"] == "replayed"), 19);
    assert!(results.iter().all(|r| r["session_id"] == results[0]["session_id"]));
    assert_eq!(progress(&client, alice).await, (2, 30, 1, 1));
    assert_ledger_consistent(&client).await;
}

// ---------------------------------------------------------------------------------------
// Late, skewed and out-of-order reports; time zones that cannot mint
// ---------------------------------------------------------------------------------------

/// settings.timezone holds only IANA names: anything else is refused when written, as
/// PostgREST writes it (the `authenticated` role), with a clear message, and stays unset.
#[tokio::test]
async fn only_iana_time_zone_names_are_stored() {
    let (_db, mut client) = fresh().await;
    let alice = new_user(&client).await;
    for zone in [
        "'\"UTC24\"'",
        "'\"A/B-167\"'",
        "'\"UTC+5\"'",
        "'\"EST5\"'",
        "'\"<+0330>-3:30\"'",
        "'\"posixrules\"'",
        "'\"Factory\"'",
        "'\"posix/Europe/Paris\"'",
        "'\"europe/paris\"'",
        "'\"Not/A_Zone\"'",
        "'\"\"'",
        "'42'",
    ] {
        let sql = format!(
            "update user_profiles set settings = jsonb_build_object('timezone', {zone}::jsonb) where id = '{alice}'"
        );
        let error = as_user(&mut client, alice, &sql).await.unwrap_err();
        assert_eq!(error.code(), Some(&SqlState::CHECK_VIOLATION), "{zone}: {error:?}");
        let message = error.as_db_error().unwrap().message().to_string();
        assert!(message.contains("must be an IANA time zone name"), "{zone}: {message}");
        // Not through the server's role either.
        assert!(client.execute(&sql, &[]).await.is_err(), "{zone} as the server");
    }
    let stored: Value =
        client.query_one("select settings from user_profiles where id = $1", &[&alice]).await.unwrap().get(0);
    assert_eq!(stored, json!({}), "nothing was stored");

    for zone in ["Europe/Paris", "UTC", "Etc/GMT+5", "America/St_Johns", "Asia/Kathmandu", "Pacific/Kiritimati"] {
        let sql = format!("update user_profiles set settings = '{{\"timezone\":\"{zone}\"}}' where id = '{alice}'");
        assert!(as_user(&mut client, alice, &sql).await.is_ok(), "{zone}");
    }
    // No zone, or null: UTC. Other settings are written as before.
    let sql =
        format!("update user_profiles set settings = '{{\"timezone\":null,\"voice\":\"calm\"}}' where id = '{alice}'");
    assert!(as_user(&mut client, alice, &sql).await.is_ok());
    assert_eq!(complete(&client, alice, 60).await["local_date"], local_today(&client, "UTC").await);
}

/// A day with a daylight-saving change has 23 or 25 hours: a day is its date's local
/// midnight to the next.
#[tokio::test]
async fn days_with_a_daylight_saving_change_keep_their_length() {
    let (_db, client) = fresh().await;
    let alice = new_user(&client).await;
    for (at, zone, day, hours) in [
        ("2026-03-29 12:00:00+00", "Europe/Paris", "2026-03-29", 23.0),
        ("2026-10-25 12:00:00+00", "Europe/Paris", "2026-10-25", 25.0),
        ("2026-11-01 12:00:00+00", "America/New_York", "2026-11-01", 25.0),
        // Lord Howe moves by half an hour.
        ("2026-04-05 12:00:00+00", "Australia/Lord_Howe", "2026-04-05", 24.5),
    ] {
        let row = client
            .query_one(
                "select d.day::text, extract(epoch from d.ends_at - d.starts_at)::float8 / 3600
                   from reward_day_for($1, $2::text::timestamptz, $3) d",
                &[&alice, &at, &zone],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, f64>(1)), (day.to_string(), hours), "{zone} {at}");
    }
    // The fall-back day is one day of caps and one day of the streak, in 25 hours: a
    // session at 00:30 and one at 24:30 local (23:30 by the clock) count on it alike.
    let bob = new_user(&client).await;
    for at in ["2026-10-24 22:30:00+00", "2026-10-25 22:30:00+00"] {
        let row = client
            .query_one("select day::text from reward_day_for($1, $2::text::timestamptz, 'Europe/Paris')", &[&bob, &at])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "2026-10-25", "{at}");
    }
}

/// `started_at` for a session of a minute that ended `days_ago` days before today (UTC)
/// at the same time of day, halfway between today's midnight and now: so each is on its
/// own UTC date, the latest today, whatever the time the test runs.
fn ended_days_ago(days_ago: i32) -> String {
    format!(
        "date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
           + (now() - (date_trunc('day', now() at time zone 'UTC') at time zone 'UTC')) / 2
           - interval '{days_ago} days' - interval '60 seconds'"
    )
}

/// Three days of sessions done offline, synced at once in every order: the same days, the
/// same streak and the same rewards, and the 7-day bonus (four days before them) paid
/// exactly once.
#[tokio::test]
async fn offline_days_synced_in_any_order_earn_the_same() {
    let (_db, client) = fresh().await;
    let orders = [[2, 1, 0], [2, 0, 1], [1, 2, 0], [1, 0, 2], [0, 2, 1], [0, 1, 2]];
    let mut outcomes = Vec::new();
    for order in orders {
        let user = new_user(&client).await;
        make_account_days_old(&client, user, 8).await;
        seed_reward_days(&client, user, "UTC", &[3, 4, 5, 6]).await;
        let mut answers = Vec::new();
        for days_ago in order {
            let answer: Value = client
                .query_one(
                    &format!(
                        "select complete_session($1, gen_random_uuid(), 'guardian', null, 60, null, 'fp', {})",
                        ended_days_ago(days_ago)
                    ),
                    &[&user],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(answer["rewarded"], true, "{order:?}: {answer}");
            answers.push((days_ago, answer["local_date"].clone()));
        }
        answers.sort_by_key(|(days_ago, _)| *days_ago);
        let outcome = client
            .query_one(
                "select jsonb_build_object(
                   'profile', (select jsonb_build_array(tokens, experience, level, session_streak,
                                                        last_session_date, sessions_completed)
                                 from user_profiles where id = $1),
                   'ledger', (select jsonb_agg(jsonb_build_array(reason, delta, reference) order by reason, reference)
                                from token_ledger where user_id = $1 and reason <> 'session_complete'),
                   'achievements', (select jsonb_agg(achievement_id order by achievement_id)
                                      from user_achievements where user_id = $1),
                   'days', (select jsonb_agg(jsonb_build_array(day, sessions) order by day)
                              from reward_days where user_id = $1))",
                &[&user],
            )
            .await
            .unwrap()
            .get::<_, Value>(0);
        outcomes.push((order, answers, outcome));
    }
    let (_, first_answers, first) = &outcomes[0];
    for (order, answers, outcome) in &outcomes {
        assert_eq!(outcome, first, "{order:?}");
        assert_eq!(answers, first_answers, "{order:?}: each session counts on its own day");
    }
    let today = local_today(&client, "UTC").await;
    assert_eq!(first["profile"], json!([16, 36, 1, 7, today, 3]), "{first}");
    assert_eq!(first["ledger"], json!([["streak_bonus", 10, "streak:1"]]));
    assert_eq!(first["achievements"], json!(["first_session", "streak_7"]));
    assert_eq!(first["days"].as_array().unwrap().len(), 7);
    assert_ledger_consistent(&client).await;
}

/// A user who hops between time zones over three days, reporting a session in every zone
/// at every half hour (late reports included, in any order), earns at most one day's
/// caps more than the calendar days those sessions span: the extra day a traveller gains
/// crossing the date line. Without fixed days each hop to a zone on another date would
/// open a fresh day of caps.
#[tokio::test]
async fn time_zone_hops_open_at_most_one_extra_day() {
    let (_db, client) = fresh().await;
    let zones =
        ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Tokyo", "America/Los_Angeles", "Etc/GMT-14", "Etc/GMT+12"];
    for backwards in [false, true] {
        let user = new_user(&client).await;
        make_account_days_old(&client, user, 4).await;
        let mut slots: Vec<i32> = (0..140).collect();
        if backwards {
            slots.reverse();
        }
        for slot in slots {
            for (z, zone) in zones.iter().enumerate() {
                // (Without the name check's trigger, which reads the zone list: these are
                // real zones, and this test changes zones 1,680 times.)
                client
                    .batch_execute(&format!(
                        "set session_replication_role = replica;
                         update user_profiles set settings = '{{\"timezone\":\"{zone}\"}}' where id = '{user}';
                         set session_replication_role = origin;"
                    ))
                    .await
                    .unwrap();
                // Slot k: the half hour starting 70 h - 30k min ago; each zone's minute in it.
                let minutes_ago = 70 * 60 - 30 * slot - 2 * z as i32;
                client
                    .query_one(
                        "select complete_session($1, gen_random_uuid(), 'guardian', null, 60, null, 'fp',
                                                 now() - make_interval(mins => $2))",
                        &[&user, &minutes_ago],
                    )
                    .await
                    .unwrap();
            }
        }
        let row = client
            .query_one(
                "select count(*) filter (where rewarded),
                        count(distinct (ended_at at time zone 'UTC')::date)
                   from sessions where user_id = $1",
                &[&user],
            )
            .await
            .unwrap();
        let (rewarded, utc_dates) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        assert!(rewarded <= 12 * (utc_dates + 1), "backwards={backwards}: {rewarded} rewarded over {utc_dates} dates");
        assert!(rewarded >= 12 * (utc_dates - 1), "an honest amount still earns: {rewarded}");
    }
    assert_ledger_consistent(&client).await;
}

/// On a database in use: stored time zones that are not IANA names become "UTC" (which
/// those users' days already were), and the days of existing rewarded sessions are
/// recorded, so caps and streaks carry on.
#[tokio::test]
async fn the_days_migration_keeps_existing_profiles_and_sessions() {
    let admin_url = db::admin_url().unwrap();
    let admin = db::connect(&admin_url).await.unwrap();
    let name = format!("libero_days_{}", Uuid::new_v4().simple());
    admin.batch_execute(&format!("create database {}", db::quote_ident(&name))).await.unwrap();
    let url = db::with_dbname(&admin_url, &name).unwrap();

    let outcome = async {
        let before = tempfile::tempdir()?;
        for m in std::fs::read_dir(db::migrations_dir())? {
            let path = m?.path();
            if path.file_name().unwrap().to_string_lossy().as_ref() < "20250107000000" {
                std::fs::copy(&path, before.path().join(path.file_name().unwrap()))?;
            }
        }
        db::migrate_dir(&url, before.path()).await?;
        let client = db::connect(&url).await?;
        let zones = [
            (r#"{"timezone":"Europe/Paris"}"#, r#"{"timezone":"Europe/Paris"}"#),
            (r#"{"timezone":"UTC24","voice":"calm"}"#, r#"{"timezone":"UTC","voice":"calm"}"#),
            (r#"{"timezone":"A/B-167"}"#, r#"{"timezone":"UTC"}"#),
            (r#"{"timezone":"posixrules"}"#, r#"{"timezone":"UTC"}"#),
            (r#"{"timezone":7}"#, r#"{"timezone":"UTC"}"#),
            (r#"{"timezone":null}"#, r#"{"timezone":null}"#),
            ("{}", "{}"),
        ];
        let mut users = Vec::new();
        for (settings, _) in zones {
            let user = new_user(&client).await;
            client
                .execute("update user_profiles set settings = $2::text::jsonb where id = $1", &[&user, &settings])
                .await?;
            users.push(user);
        }
        // Two rewarded sessions yesterday (Paris) for the first user, one unrewarded.
        client
            .batch_execute(&format!(
                "insert into sessions (user_id, client_session_id, ego_state, duration, experience_gained,
                                       tokens_awarded, request_fingerprint, result, local_date, ended_at,
                                       rewarded, unrewarded_reason)
                 select '{0}', gen_random_uuid(), 'guardian', 600, x, 2, 'fp', '{{}}',
                        (now() at time zone 'Europe/Paris')::date - 1,
                        ((now() at time zone 'Europe/Paris')::date - 1 + time '09:00') at time zone 'Europe/Paris'
                          + make_interval(mins => m), r, case when r then null else 'daily_session_cap' end
                   from (values (30, 0, true), (30, 20, true), (0, 40, false)) v (x, m, r);",
                users[0]
            ))
            .await?;
        db::migrate(&url).await?;
        let mut stored = Vec::new();
        for user in &users {
            let settings: Value =
                client.query_one("select settings from user_profiles where id = $1", &[user]).await?.get(0);
            stored.push(settings);
        }
        let day: Value = client
            .query_one(
                "select jsonb_build_object('day', day = (now() at time zone 'Europe/Paris')::date - 1,
                                           'hours', extract(epoch from ends_at - starts_at) / 3600,
                                           'sessions', sessions, 'xp_minutes', xp_minutes, 'timezone', timezone)
                   from reward_days where user_id = $1",
                &[&users[0]],
            )
            .await?
            .get(0);
        anyhow::Ok((zones, stored, day))
    }
    .await;
    admin.batch_execute(&format!("drop database {} with (force)", db::quote_ident(&name))).await.unwrap();

    let (zones, stored, day) = outcome.expect("the migration applies");
    for ((before, after), stored) in zones.iter().zip(&stored) {
        assert_eq!(stored, &serde_json::from_str::<Value>(after).unwrap(), "{before}");
    }
    assert_eq!(day["day"], true, "{day}");
    assert_eq!((day["sessions"].clone(), day["xp_minutes"].clone()), (json!(2), json!(20)), "{day}");
    assert_eq!(day["timezone"], "Europe/Paris");
    assert!(day["hours"].as_f64().unwrap() >= 23.0, "{day}");
}
