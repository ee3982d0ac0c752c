//! The single-column rules of the tables every payment and reward writes, which
//! `20250106700000_rules_as_domains.sql` moved from table CHECK constraints onto domains
//! (the same rules, read once per connection instead of once per statement).
//! These tests hold it to "the same rules": none lost or changed by the move, each still
//! refusing what breaks it, and the views and triggers it had to make again unchanged.

use std::collections::BTreeSet;

use libero_tests::db::{self, TestDb};
use libero_tests::sql;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const MOVE: &str = "20250106700000_rules_as_domains.sql";
const TABLES: [&str; 4] = ["user_profiles", "sessions", "token_ledger", "stripe_orders"];

/// Each CHECK a column of `TABLES` must satisfy, as `table: CHECK (...)` written in terms of
/// the column: the tables' own constraints, and their columns' domains' with `VALUE`
/// replaced by the column's name. A column read as its domain's base type (`(tokens)::integer`,
/// as Postgres shows a rule reading two domain columns) is written as the column.
async fn rules(client: &Client) -> BTreeSet<String> {
    let rows = client
        .query(
            "select c.relname, regexp_replace(pg_get_constraintdef(k.oid), '\\((\\w+)\\)::\\w+', '\\1', 'g')
               from pg_constraint k join pg_class c on c.oid = k.conrelid
              where k.contype = 'c' and c.relname = any($1) and c.relnamespace = 'public'::regnamespace
             union all
             select c.relname, replace(pg_get_constraintdef(k.oid), 'VALUE', quote_ident(a.attname))
               from pg_attribute a
               join pg_class c on c.oid = a.attrelid
               join pg_constraint k on k.contypid = a.atttypid and k.contype = 'c'
              where c.relname = any($1) and c.relnamespace = 'public'::regnamespace
                and a.attnum > 0 and not a.attisdropped",
            &[&TABLES.to_vec()],
        )
        .await
        .unwrap();
    rows.iter().map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1))).collect()
}

/// What the move had to drop and make again, or must not touch, as text to compare: the
/// tables' columns (base type, nullability, default, column grants), every view (options,
/// owner, grants, columns and their base types), and every trigger of the public schema.
async fn shape(client: &Client) -> Vec<String> {
    let rows = client
        .query(
            "select 'column ' || c.relname || '.' || a.attname || ' ' || format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), a.atttypmod)
                    || case when a.attnotnull then ' not null' else '' end
                    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                    || coalesce(' grants ' || a.attacl::text, '')
               from pg_attribute a
               join pg_class c on c.oid = a.attrelid
               join pg_type t on t.oid = a.atttypid
               left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v')
                and a.attnum > 0 and not a.attisdropped
             union all
             select 'view ' || c.relname || ' ' || coalesce(c.reloptions::text, '') || ' owner ' || pg_get_userbyid(c.relowner)
                    || ' grants ' || coalesce((select string_agg(pg_get_userbyid(x.grantee) || ':' || x.privilege_type || ':' || x.is_grantable, ',' order by 1)
                                                 from (select g.grantee, g.privilege_type, g.is_grantable from aclexplode(c.relacl) g) x), '')
               from pg_class c
              where c.relnamespace = 'public'::regnamespace and c.relkind = 'v'
             union all
             select 'trigger ' || pg_get_triggerdef(g.oid)
               from pg_trigger g join pg_class c on c.oid = g.tgrelid
              where not g.tgisinternal and c.relnamespace = 'public'::regnamespace
             order by 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A database migrated up to, not including, the move; and the directory of those
/// migrations' files.
async fn database_before_the_move() -> (TestDb, tempfile::TempDir) {
    let before = tempfile::tempdir().unwrap();
    let mut found = false;
    for m in db::read_migrations(&db::migrations_dir()).unwrap() {
        let file = m.path.file_name().unwrap().to_owned();
        if file.to_str() == Some(MOVE) {
            found = true;
            break;
        }
        std::fs::copy(&m.path, before.path().join(file)).unwrap();
    }
    assert!(found, "{MOVE} is among the migrations");
    let test_db = db::empty_database().await.unwrap();
    db::migrate_dir(&test_db.url, before.path()).await.unwrap();
    (test_db, before)
}

#[tokio::test]
async fn moving_the_rules_onto_domains_keeps_every_rule_view_grant_and_trigger() {
    let (test_db, files) = database_before_the_move().await;
    let client = test_db.client().await;
    let rules_before = rules(&client).await;
    let shape_before = shape(&client).await;
    // The move alone: later migrations change the tables on purpose.
    std::fs::copy(db::migrations_dir().join(MOVE), files.path().join(MOVE)).unwrap();
    let applied = db::migrate_dir(&test_db.url, files.path()).await.unwrap();
    assert!(applied.iter().any(|m| m.path.ends_with(MOVE)), "the move was applied: {applied:?}");
    let client = test_db.client().await;

    assert!(rules_before.len() >= 30, "the rules are found: {rules_before:#?}");
    assert_eq!(rules(&client).await, rules_before, "the same rules, now partly as domains");
    assert_eq!(shape(&client).await, shape_before, "columns, views, grants and triggers as they were");
    let single_column_checks: Vec<String> = client
        .query(
            "select c.relname || ': ' || pg_get_constraintdef(k.oid)
               from pg_constraint k join pg_class c on c.oid = k.conrelid
              where k.contype = 'c' and c.relname = any($1) and c.relnamespace = 'public'::regnamespace
                and cardinality(k.conkey) < 2",
            &[&TABLES.to_vec()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        single_column_checks.is_empty(),
        "only the rules reading two columns stay table CHECKs (each one is re-read by every write): {single_column_checks:?}"
    );
}

/// One write per rule, through the column it guards: the value just past the rule is
/// refused with a check violation naming the rule, and the value at its edge is accepted.
/// Each write is rolled back, so the deferred balance check never sees it.
#[tokio::test]
async fn each_moved_rule_refuses_what_breaks_it_and_accepts_its_edge() {
    let (_test_db, mut client) = sql::fresh().await;
    let user = sql::new_user(&client).await;
    client
        .batch_execute(&format!(
            "update auth.users set created_at = now() - interval '1 day' where id = '{user}';
             update public.user_profiles set created_at = now() - interval '1 day' where id = '{user}';
             select public.complete_session('{user}', gen_random_uuid(), 'explorer', null, 600, null, 'v1|rules', now() - interval '1 hour');
             insert into public.stripe_orders (checkout_session_id, user_id, product, tokens, status)
               values ('cs_rules', '{user}', 'tokens-small', 100, 'pending');"
        ))
        .await
        .unwrap();
    let profile = format!("public.user_profiles where id = '{user}'");
    let session = format!("public.sessions where user_id = '{user}'");
    let ledger = format!("public.token_ledger where user_id = '{user}' and reason = 'session_complete'");
    let order = "public.stripe_orders where checkout_session_id = 'cs_rules'".to_string();

    // (where, column, refused, accepted, the rule that refuses)
    let cases: Vec<(&String, &str, &str, &str, &str)> = vec![
        (&profile, "tokens", "-1", "0", "non_negative_integer_check"),
        (&profile, "experience", "-1", "0", "non_negative_integer_check"),
        (&profile, "session_streak", "-1", "0", "non_negative_integer_check"),
        (&profile, "sessions_completed", "-1", "0", "non_negative_integer_check"),
        (&profile, "level", "0", "1", "level_number_check"),
        (&profile, "display_name", "repeat('n', 101)", "repeat('n', 100)", "text_max_100_check"),
        (&profile, "active_ego_state", "repeat('e', 65)", "repeat('e', 64)", "text_max_64_check"),
        (&profile, "plan", "'gold'", "'mystic'", "profile_plan_check"),
        (&profile, "ego_state_usage", "'[]'", "'{}'", "json_object_8k_check"),
        (
            &profile,
            "ego_state_usage",
            "jsonb_build_object('x', repeat(md5(random()::text), 300))",
            "'{\"guardian\": 3}'",
            "json_object_8k_check",
        ),
        (&profile, "journey_goals", "'{}'", "'[]'", "json_array_16k_check"),
        (
            &profile,
            "journey_goals",
            "jsonb_build_array(repeat(md5(random()::text), 600))",
            "'[\"calm\"]'",
            "json_array_16k_check",
        ),
        (&profile, "journey_preferences", "'[]'", "'{}'", "json_object_16k_check"),
        (&profile, "settings", "'\"UTC\"'", "'{\"timezone\": \"UTC\"}'", "json_object_16k_check"),
        (
            &profile,
            "settings",
            "jsonb_build_object('x', repeat(md5(random()::text), 600))",
            "'{}'",
            "json_object_16k_check",
        ),
        (&session, "duration", "86401", "86400", "session_seconds_check"),
        (&session, "duration", "-1", "0", "session_seconds_check"),
        (&session, "ego_state", "''", "'e'", "text_1_to_64_check"),
        (&session, "ego_state", "repeat('e', 65)", "repeat('e', 64)", "text_1_to_64_check"),
        (&session, "action", "repeat('a', 65)", "repeat('a', 64)", "text_max_64_check"),
        (&session, "experience_gained", "-1", "0", "non_negative_integer_check"),
        (&session, "tokens_awarded", "-1", "0", "non_negative_integer_check"),
        (&session, "request_fingerprint", "''", "repeat('f', 200)", "text_1_to_200_check"),
        (&session, "request_fingerprint", "repeat('f', 201)", "'f'", "text_1_to_200_check"),
        (&session, "unrewarded_reason", "'felt_like_it'", "null", "unrewarded_reason_check"),
        (&ledger, "delta", "0", "delta", "token_delta_check"),
        (&ledger, "balance_after", "-1", "balance_after", "non_negative_integer_check"),
        (&ledger, "reason", "'gift'", "'level_up'", "ledger_reason_check"),
        (&ledger, "reference", "''", "repeat('r', 200)", "text_1_to_200_check"),
        (&order, "tokens", "-1", "0", "non_negative_integer_check"),
        (&order, "tokens_reversed", "-1", "0", "non_negative_integer_check"),
        (&order, "refund_shortfall", "-1", "0", "non_negative_integer_check"),
        (&order, "status", "'lost'", "'failed'", "order_status_check"),
        (&order, "product", "''", "repeat('p', 64)", "text_1_to_64_check"),
        (&order, "review_reason", "repeat('r', 201)", "null", "text_max_200_check"),
    ];
    for (place, column, refused, accepted, rule) in cases {
        let (table, filter) = place.split_once(" where ").unwrap();
        let tx = client.transaction().await.unwrap();
        let error = tx
            .execute(&format!("update {table} set {column} = {refused} where {filter}"), &[])
            .await
            .expect_err(&format!("{table}.{column} = {refused} is refused"));
        let db_error = error.as_db_error().unwrap_or_else(|| panic!("{error}"));
        assert_eq!(db_error.code(), &SqlState::CHECK_VIOLATION, "{table}.{column} = {refused}: {db_error}");
        assert_eq!(db_error.constraint(), Some(rule), "{table}.{column} = {refused}: {db_error}");
        tx.rollback().await.unwrap();

        let tx = client.transaction().await.unwrap();
        let updated = tx
            .execute(&format!("update {table} set {column} = {accepted} where {filter}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table}.{column} = {accepted} is accepted: {e:?}"));
        assert!(updated >= 1, "{table}.{column}: a row to write");
        tx.rollback().await.unwrap();
    }

    // A new row gets the same rules as an update does.
    let error = client
        .execute(
            &format!(
                "insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
                 values ('{user}', 5, 'session_complete', repeat('r', 201), 10)"
            ),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(error.as_db_error().and_then(|e| e.constraint()), Some("text_1_to_200_check"), "{error:?}");
}
