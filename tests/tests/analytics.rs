//! Insights and operator analytics in SQL, as their readers use them: a signed-in user
//! through PostgREST (`authenticated`, row-level security), `anon`, and the server
//! (`service_role`). No user sees another user's rows or any operator view; the counters
//! the operator views need are kept by the paths that do the work; the figures are right.

use libero_tests::sql::{as_role, assert_denied, fresh, new_user};
use serde_json::{json, Value};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

const INSIGHTS_VIEWS: &[&str] =
    &["insights_totals", "insights_days", "insights_ego_states", "insights_tokens", "insights_achievements"];

const OPERATOR_VIEWS: &[&str] = &[
    "analytics_active_users",
    "analytics_sessions_daily",
    "analytics_revenue_daily",
    "analytics_tokens_daily",
    "analytics_ai_daily",
    "analytics_tts_daily",
    "analytics_plan_mix",
    "analytics_subscriptions_daily",
];

/// Tables behind the figures that only the server may read.
const SERVER_TABLES: &[&str] = &[
    "analytics_daily_counts",
    "analytics_order_reversals",
    "analytics_subscription_changes",
    "insights_histograms",
    "insights_histogram_state",
];

/// A rewarded session through complete_session, then moved `hours_ago` back so the next
/// one does not overlap it.
async fn session(client: &Client, user: Uuid, ego_state: &str, seconds: i32) {
    let answer: Value = client
        .query_one(
            "select public.complete_session($1, gen_random_uuid(), $2, null, $3, null, 'fp', null)",
            &[&user, &ego_state, &seconds],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(answer["rewarded"], true, "{answer}");
    client
        .execute("update sessions set ended_at = ended_at - interval '3 hours' where user_id = $1", &[&user])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_signed_in_user_reads_only_their_own_insights() {
    let (_db, mut client) = fresh().await;
    let (me, other) = (new_user(&client).await, new_user(&client).await);
    session(&client, me, "guardian", 600).await;
    session(&client, other, "rebel", 1200).await;
    session(&client, other, "sage", 300).await;

    for view in INSIGHTS_VIEWS {
        let rows = as_role(&mut client, "authenticated", Some(me), &format!("select user_id from public.{view}"))
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        assert!(!rows.is_empty(), "{view}: the user's own rows");
        assert!(rows.iter().all(|r| r.get::<_, Uuid>(0) == me), "{view}: only the user's own rows");

        assert_denied(as_role(&mut client, "anon", None, &format!("select * from public.{view}")).await, view);
        // The server reads everyone's.
        let all = as_role(&mut client, "service_role", None, &format!("select distinct user_id from public.{view}"))
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "{view}");
    }
    // Asking for another user's rows by id finds nothing.
    let theirs = as_role(
        &mut client,
        "authenticated",
        Some(me),
        &format!("select * from public.insights_days where user_id = '{other}'"),
    )
    .await
    .unwrap();
    assert!(theirs.is_empty());
    let days =
        as_role(&mut client, "authenticated", Some(me), "select sessions from public.insights_days").await.unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days.iter().map(|r| r.get::<_, i64>(0)).sum::<i64>(), 1);

    // The endpoint's function and the histogram are the server's.
    for sql in [format!("select public.user_insights('{me}', 20)"), "select public.insights_refresh()".to_string()] {
        assert_denied(as_role(&mut client, "authenticated", Some(me), &sql).await, &sql);
    }
    for table in SERVER_TABLES {
        assert_denied(
            as_role(&mut client, "authenticated", Some(me), &format!("select * from public.{table}")).await,
            table,
        );
    }
}

#[tokio::test]
async fn the_views_and_the_endpoint_give_the_same_figures() {
    let (_db, mut client) = fresh().await;
    let me = new_user(&client).await;
    session(&client, me, "guardian", 600).await;
    session(&client, me, "Guardian", 125).await;
    session(&client, me, "made-up", 60).await;

    let insights: Value = client.query_one("select public.user_insights($1, 20)", &[&me]).await.unwrap().get(0);
    let totals = as_role(&mut client, "authenticated", Some(me), "select to_jsonb(t) from public.insights_totals t")
        .await
        .unwrap();
    let totals: Value = totals[0].get(0);
    for key in ["sessions", "minutes", "experience", "level", "current_streak", "longest_streak"] {
        assert_eq!(totals[key], insights["totals"][key], "{key}");
    }
    assert_eq!(insights["totals"]["sessions"], 3);
    assert_eq!(insights["totals"]["minutes"], json!(13.1));
    // Ego states: the app's, case-insensitively; anything else is `other`.
    let egos: Vec<(String, i64)> = insights["activity"]["ego_states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["ego_state"].as_str().unwrap().to_string(), e["sessions"].as_i64().unwrap()))
        .collect();
    assert_eq!(egos, [("guardian".to_string(), 2), ("other".to_string(), 1)]);
}

#[tokio::test]
async fn the_operator_views_are_for_the_server_only() {
    let (_db, mut client) = fresh().await;
    let me = new_user(&client).await;
    session(&client, me, "guardian", 600).await;

    for view in OPERATOR_VIEWS {
        let sql = format!("select * from public.{view}");
        assert_denied(as_role(&mut client, "authenticated", Some(me), &sql).await, &format!("authenticated: {view}"));
        assert_denied(as_role(&mut client, "anon", None, &sql).await, &format!("anon: {view}"));
        as_role(&mut client, "service_role", None, &sql).await.unwrap_or_else(|e| panic!("service_role: {view}: {e}"));
    }
    // Nothing in them is reachable through PostgREST's roles either: no grant at all.
    let granted: i64 = client
        .query_one(
            "select count(*) from information_schema.role_table_grants
              where table_schema = 'public' and grantee in ('anon', 'authenticated', 'PUBLIC')
                and (table_name like 'analytics\\_%' or table_name like 'insights\\_hist%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(granted, 0);
}

#[tokio::test]
async fn ai_calls_tts_hits_refunds_and_subscriptions_are_counted_per_day() {
    let (_db, mut client) = fresh().await;
    let (me, other) = (new_user(&client).await, new_user(&client).await);
    for (user, endpoint) in [(me, "tts"), (me, "tts"), (other, "tts"), (other, "generate-script")] {
        let quota: Value =
            client.query_one("select public.ai_quota_take($1, $2, 30, 300)", &[&user, &endpoint]).await.unwrap().get(0);
        assert_eq!(quota["allowed"], true);
    }
    // A call over the quota is not counted.
    let refused: Value =
        client.query_one("select public.ai_quota_take($1, 'chatgpt-chat', 0, 0)", &[&me]).await.unwrap().get(0);
    assert_eq!(refused["allowed"], false);
    // Two hits; storing the entry again (a miss filled) is no hit.
    client
        .query_one(
            "select public.tts_cache_store('k1', 'openai', 'audio/mpeg', '\\x0102'::bytea, 0, 1, 1000000, 3600)",
            &[],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        client.query("select * from public.tts_cache_get('k1', 3600)", &[]).await.unwrap();
    }
    client
        .query_one(
            "select public.tts_cache_store('k1', 'openai', 'audio/mpeg', '\\x0103'::bytea, 0, 1, 1000000, 3600)",
            &[],
        )
        .await
        .unwrap();

    // An order, half refunded, then a dispute lost and won again.
    client
        .execute(
            "insert into stripe_orders (checkout_session_id, user_id, product, tokens, amount_total, currency, status)
             values ('cs_1', $1, 'tokens-small', 110, 499, 'usd', 'completed')",
            &[&me],
        )
        .await
        .unwrap();
    client
        .execute("update stripe_orders set tokens_reversed = 55 where checkout_session_id = 'cs_1'", &[])
        .await
        .unwrap();
    client
        .execute("update stripe_orders set payment_status = 'paid' where checkout_session_id = 'cs_1'", &[])
        .await
        .unwrap();

    // Two subscriptions start, one ends.
    for (id, user) in [("sub_1", me), ("sub_2", other)] {
        client
            .execute(
                "insert into stripe_subscriptions (subscription_id, customer_id, user_id, status, stripe_updated_at)
                 values ($1, 'cus_' || $1, $2, 'active', now())",
                &[&id, &user],
            )
            .await
            .unwrap();
    }
    client
        .execute("update stripe_subscriptions set status = 'past_due' where subscription_id = 'sub_2'", &[])
        .await
        .unwrap();
    client
        .execute("update stripe_subscriptions set status = 'canceled' where subscription_id = 'sub_2'", &[])
        .await
        .unwrap();

    let today = |view: &str| format!("select to_jsonb(v) from public.{view} v where day = current_date");
    let one = |rows: Vec<Row>| -> Value { rows.iter().map(|r| r.get::<_, Value>(0)).collect() };

    let ai =
        one(as_role(&mut client, "service_role", None, &format!("{} order by endpoint", today("analytics_ai_daily")))
            .await
            .unwrap());
    let calls: Vec<(String, i64)> = ai
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["endpoint"].as_str().unwrap().into(), r["calls"].as_i64().unwrap()))
        .collect();
    assert_eq!(calls, [("generate-script".to_string(), 1), ("tts".to_string(), 3)]);

    let tts = one(as_role(&mut client, "service_role", None, &today("analytics_tts_daily")).await.unwrap());
    assert_eq!(
        tts[0],
        json!({"day": tts[0]["day"], "tts_requests": 5, "cache_hits": 2, "cache_misses": 3, "hit_rate": 0.4, "premium_calls": 0})
    );

    let revenue = one(as_role(&mut client, "service_role", None, &today("analytics_revenue_daily")).await.unwrap());
    assert_eq!(revenue.as_array().unwrap().len(), 1, "{revenue}");
    let row = &revenue[0];
    assert_eq!(
        (
            &row["product"],
            &row["orders"],
            &row["tokens_sold"],
            &row["revenue"],
            &row["refunds"],
            &row["tokens_refunded"],
            &row["refunded"],
            &row["net_revenue"]
        ),
        (&json!("tokens-small"), &json!(1), &json!(110), &json!(499), &json!(1), &json!(55), &json!(250), &json!(249))
    );

    let subs = one(as_role(&mut client, "service_role", None, &today("analytics_subscriptions_daily")).await.unwrap());
    assert_eq!((&subs[0]["started"], &subs[0]["ended"], &subs[0]["active"]), (&json!(2), &json!(1), &json!(1)));
    assert_eq!(subs[0]["churn_rate"], json!(0.5), "one of the two live today ended");

    let mix = one(as_role(
        &mut client,
        "service_role",
        None,
        "select to_jsonb(v) from public.analytics_plan_mix v order by kind, name",
    )
    .await
    .unwrap());
    assert!(
        mix.as_array().unwrap().contains(&json!({"kind": "plan", "name": "free", "count": 2, "share": 1.0})),
        "{mix}"
    );
    assert!(
        mix.as_array().unwrap().contains(&json!({"kind": "subscription", "name": "active", "count": 1, "share": 0.5})),
        "{mix}"
    );
}

#[tokio::test]
async fn active_users_match_a_distinct_count_for_every_day() {
    let (_db, mut client) = fresh().await;
    // Active days (days ago) per user: windows that overlap, touch, and stand apart.
    let plan: &[&[i32]] = &[&[0, 3, 10], &[1, 40], &[2, 3, 4, 5, 6, 7, 8, 9], &[29, 30, 31], &[60]];
    for days_ago in plan {
        let user = new_user(&client).await;
        for d in *days_ago {
            client
                .execute(
                    "insert into sessions (user_id, client_session_id, ego_state, duration, experience_gained, tokens_awarded,
                                           request_fingerprint, result, local_date, ended_at)
                     values ($1, gen_random_uuid(), 'guardian', 600, 0, 0, 'fp', '{}', current_date - $2::int,
                             (current_date - $2::int)::timestamp at time zone 'UTC' + interval '12 hours')",
                    &[&user, d],
                )
                .await
                .unwrap();
        }
    }

    // Counted as text: the view's running sums are numeric, count() is bigint.
    let rows = |rows: &[Row]| -> Vec<(String, String, String, String)> {
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
    };
    let view_text = as_role(
        &mut client,
        "service_role",
        None,
        "select day::text, dau::text, wau::text, mau::text from public.analytics_active_users order by day",
    )
    .await
    .unwrap();
    let naive_text = client
        .query(
            "with ud as (select distinct user_id, (ended_at at time zone 'UTC')::date as day from sessions)
             select d::date::text,
                    (select count(distinct user_id) from ud where ud.day = d::date)::text,
                    (select count(distinct user_id) from ud where ud.day between d::date - 6 and d::date)::text,
                    (select count(distinct user_id) from ud where ud.day between d::date - 29 and d::date)::text
               from generate_series(current_date - 60, current_date, interval '1 day') d
              order by 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(view_text.len(), 61, "from the first active day to today");
    assert_eq!(rows(&view_text), rows(&naive_text));
    let today = rows(&view_text).pop().unwrap();
    assert_eq!((today.1.as_str(), today.2.as_str(), today.3.as_str()), ("1", "3", "4"));
}

#[tokio::test]
async fn the_histogram_counts_active_users_once_in_buckets() {
    let (_db, client) = fresh().await;
    for (value, bucket) in [(0_i64, 0_i64), (99, 99), (100, 100), (1234, 1200), (98_765, 98_000)] {
        let got: i64 =
            client.query_one("select public.insights_bucket('minutes_30d', $1)", &[&value]).await.unwrap().get(0);
        assert_eq!(got, bucket, "{value}");
    }
    let streak: i64 =
        client.query_one("select public.insights_bucket('current_streak', 1234)", &[]).await.unwrap().get(0);
    assert_eq!(streak, 1234);

    let (a, b, idle) = (new_user(&client).await, new_user(&client).await, new_user(&client).await);
    session(&client, a, "guardian", 600).await;
    session(&client, a, "guardian", 600).await;
    session(&client, b, "guardian", 3000).await;
    session(&client, idle, "guardian", 600).await;
    // idle's only session was 40 days ago: not active.
    client
        .execute("update sessions set ended_at = now() - interval '40 days' where user_id = $1", &[&idle])
        .await
        .unwrap();

    let refreshed: Value = client.query_one("select public.insights_refresh()", &[]).await.unwrap().get(0);
    assert_eq!(refreshed["population"], 2);
    let histogram: Vec<(String, i64, i32)> = client
        .query("select metric, bucket, users from insights_histograms order by 1, 2", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        histogram,
        [("current_streak".to_string(), 1, 2), ("minutes_30d".to_string(), 20, 1), ("minutes_30d".to_string(), 50, 1)]
    );
    // Refreshing again rebuilds rather than adds.
    client.query_one("select public.insights_refresh()", &[]).await.unwrap();
    let users: i64 = client.query_one("select sum(users)::int8 from insights_histograms", &[]).await.unwrap().get(0);
    assert_eq!(users, 4);
}
