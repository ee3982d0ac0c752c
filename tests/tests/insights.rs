//! insights end to end: sessions completed through session-complete, the comparison
//! histogram rebuilt as a scheduled job would (`insights_refresh()`), then what
//! `GET /functions/v1/insights` answers.

use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

const PATH: &str = "/functions/v1/insights";

async fn insights(app: &TestApp, user: Uuid) -> Value {
    let response = app.client.get(app.url(PATH)).bearer_auth(app.token_for(user)).send().await.expect("request");
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "private, no-store");
    let body: Value = response.json().await.expect("json body");
    assert_eq!(status, 200, "{body}");
    body
}

async fn complete(app: &TestApp, user: Uuid, ego_state: &str, duration_seconds: i64) {
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(app.token_for(user))
        .json(&json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": ego_state, "duration_seconds": duration_seconds }))
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["rewarded"], true, "{body}");
    // The next session may start right away: this one is moved back out of its way.
    app.db_client()
        .await
        .execute("update public.sessions set ended_at = ended_at - interval '5 hours' where user_id = $1", &[&user])
        .await
        .expect("moving sessions back");
}

async fn refresh(app: &TestApp) -> Value {
    app.db_client().await.query_one("select public.insights_refresh()", &[]).await.expect("refresh").get(0)
}

async fn sql_text(app: &TestApp, sql: &str, param: &str) -> String {
    app.db_client().await.query_one(sql, &[&param]).await.expect(sql).get(0)
}

#[tokio::test]
async fn a_user_with_a_history_sees_their_numbers_and_percentile() {
    let app = TestApp::spawn_with(|vars| {
        vars.insert("insights_min_population".into(), "3".into());
    })
    .await;
    let (me, light, keen) = (app.create_user().await, app.create_user().await, app.create_user().await);
    complete(&app, me, "guardian", 10 * 60).await;
    complete(&app, me, "rebel", 20 * 60).await;
    complete(&app, light, "guardian", 5 * 60).await;
    complete(&app, keen, "sage", 50 * 60).await;
    // keen has kept a 5-day streak going: a session on each of the 4 days before today.
    libero_tests::sql::seed_reward_days(&app.db_client().await, keen, "UTC", &[1, 2, 3, 4]).await;
    // A purchase and a spend, to see both directions of the token flow.
    app.grant_tokens(me, 50).await;
    let spend: Value = app
        .db_client()
        .await
        .query_one("select public.spend_tokens_for($1, 'custom_protocol', 1, 'test-spend')", &[&me])
        .await
        .unwrap()
        .get(0);
    assert_eq!(spend["ok"], true, "{spend}");
    let refreshed = refresh(&app).await;
    assert_eq!(refreshed["population"], 3, "{refreshed}");

    let body = insights(&app, me).await;

    let totals = &body["totals"];
    assert_eq!(totals["sessions"], 2, "{body}");
    assert_eq!(totals["unrewarded_sessions"], 0);
    assert_eq!(totals["minutes"], json!(30.0));
    // XP: (10 + 2 * 10) + (10 + 2 * 20) = 80: level 1, 20 XP to level 2.
    assert_eq!(totals["experience"], 80);
    assert_eq!(totals["level"], 1);
    assert_eq!(totals["next_level_experience"], 100);
    assert_eq!(totals["experience_to_next_level"], 20);
    assert_eq!(totals["level_progress"], json!(0.8));
    assert_eq!((totals["current_streak"].clone(), totals["longest_streak"].clone()), (json!(1), json!(1)));
    let tokens = &totals["tokens"];
    assert_eq!(tokens["earned"], json!({"session_complete": 4, "purchase": 50}));
    assert_eq!(tokens["spent"], json!({"custom_protocol": 5}));
    assert_eq!(tokens["balance"], 49);
    assert_eq!(tokens["earned_total"].as_i64().unwrap() - tokens["spent_total"].as_i64().unwrap(), 49);
    assert_eq!(app.tokens_of(me).await, 49);

    let activity = &body["activity"];
    let days = activity["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!((activity["sessions"].clone(), activity["minutes"].clone()), (json!(2), json!(30.0)));
    // Both sessions were moved 5 hours back, some of them maybe into yesterday (UTC).
    let per_day: i64 = days.iter().map(|d| d["sessions"].as_i64().unwrap()).sum();
    assert_eq!(per_day, 2);
    assert_eq!(days.last().unwrap()["date"], activity["to"]);
    let egos: Vec<(&str, i64)> = activity["ego_states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["ego_state"].as_str().unwrap(), e["sessions"].as_i64().unwrap()))
        .collect();
    assert_eq!(egos, [("guardian", 1), ("rebel", 1)]);

    let achievements = &body["achievements"];
    let unlocked: Vec<&str> =
        achievements["unlocked"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(unlocked, ["first_session"]);
    let next = &achievements["next"];
    assert!(
        next.as_array().unwrap().contains(&json!({
            "metric": "sessions", "id": "sessions_10", "threshold": 10, "current": 2, "remaining": 8, "progress": 0.2
        })),
        "{next}"
    );
    assert!(next.as_array().unwrap().iter().any(|n| n["id"] == "ego_explorer" && n["current"] == 2), "{next}");

    // Among 3 active users: minutes 5 < 30 < 50, so half of the tie (me) and one below;
    // streaks 1, 1, 5: nobody below, two tied.
    let comparison = &body["comparison"];
    assert_eq!(comparison["available"], true, "{comparison}");
    assert_eq!(comparison["population"], 3);
    assert_eq!(comparison["minutes_30d"], json!({"value": 30, "percentile": 50.0}));
    assert_eq!(comparison["current_streak"], json!({"value": 1, "percentile": 33.3}));
    assert!(comparison["age_seconds"].as_i64().unwrap() < 60, "{comparison}");
    assert_eq!(comparison["as_of"], refreshed["refreshed_at"]);

    let keen_view = insights(&app, keen).await;
    assert_eq!(keen_view["comparison"]["minutes_30d"]["percentile"], json!(83.3));
    assert_eq!(keen_view["comparison"]["current_streak"]["percentile"], json!(83.3));
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_brand_new_user_sees_zeros_and_no_errors() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    let body = insights(&app, user).await;

    assert_eq!(body["timezone"], "UTC");
    assert_eq!(
        body["totals"],
        json!({
            "sessions": 0, "unrewarded_sessions": 0, "minutes": 0, "experience": 0, "level": 1,
            "next_level_experience": 100, "experience_to_next_level": 100, "level_progress": 0.0,
            "current_streak": 0, "longest_streak": 0,
            "tokens": {"balance": 0, "earned_total": 0, "spent_total": 0, "earned": {}, "spent": {}}
        })
    );
    let days = body["activity"]["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert!(days.iter().all(|d| d["sessions"] == 0 && d["minutes"] == 0), "{days:?}");
    assert_eq!(body["activity"]["ego_states"], json!([]));
    assert_eq!(body["achievements"]["unlocked"], json!([]));
    let next: Vec<&str> =
        body["achievements"]["next"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(next, ["ego_explorer", "level_5", "first_session", "streak_7"]);
    // No histogram has been computed yet.
    assert_eq!(body["comparison"]["available"], false);
    assert_eq!(body["comparison"]["reason"], "not_computed");
    assert_eq!(body["comparison"]["as_of"], Value::Null);
}

#[tokio::test]
async fn the_comparison_is_withheld_while_the_population_is_small() {
    let app = TestApp::spawn().await; // insights_min_population: 20
    let mut users = Vec::new();
    for _ in 0..3 {
        let user = app.create_user().await;
        complete(&app, user, "guardian", 600).await;
        users.push(user);
    }
    assert_eq!(refresh(&app).await["population"], 3);

    let body = insights(&app, users[0]).await;

    let mut keys: Vec<&String> = body["comparison"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["age_seconds", "as_of", "available", "min_population", "reason"],
        "no population or percentile while hidden: {}",
        body["comparison"]
    );
    assert_eq!(body["comparison"]["reason"], "population_too_small");
    assert_eq!(body["comparison"]["min_population"], 20);
    assert_eq!(body["totals"]["sessions"], 1, "the rest is shown");
}

#[tokio::test]
async fn days_are_the_users_local_days() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    // A zone whose date differs from UTC's right now: UTC-12 before noon UTC, UTC+14 after.
    let hour: f64 = app
        .db_client()
        .await
        .query_one("select extract(hour from now() at time zone 'UTC')::float8", &[])
        .await
        .unwrap()
        .get(0);
    let zone = if hour < 12.0 { "Etc/GMT+12" } else { "Etc/GMT-14" };
    app.db_client()
        .await
        .execute(
            "update public.user_profiles set settings = jsonb_build_object('timezone', $2::text) where id = $1",
            &[&user, &zone],
        )
        .await
        .unwrap();
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(app.token_for(user))
        .json(&json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "healer", "duration_seconds": 900 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let local_today = sql_text(&app, "select (now() at time zone $1)::date::text", zone).await;
    let utc_today = sql_text(&app, "select (now() at time zone $1)::date::text", "UTC").await;
    assert_ne!(local_today, utc_today, "the zone was chosen to differ");

    let body = insights(&app, user).await;

    assert_eq!(body["timezone"], zone);
    assert_eq!(body["activity"]["to"], local_today.as_str());
    let days = body["activity"]["days"].as_array().unwrap();
    assert_eq!(days.last().unwrap(), &json!({"date": local_today, "sessions": 1, "minutes": 15.0}));
    assert_eq!(days.iter().filter(|d| d["sessions"] != 0).count(), 1);
    assert_eq!(body["totals"]["current_streak"], 1);

    // A zone Postgres does not know cannot be stored; without a zone, UTC.
    let db = app.db_client().await;
    let mars = "update public.user_profiles set settings = '{\"timezone\": \"Mars/Olympus_Mons\"}' where id = $1";
    assert!(db.execute(mars, &[&user]).await.is_err(), "not an IANA zone");
    db.execute("update public.user_profiles set settings = '{}' where id = $1", &[&user]).await.unwrap();
    let body = insights(&app, user).await;
    assert_eq!(body["timezone"], "UTC");
    assert_eq!(body["activity"]["to"], utc_today.as_str());
}

#[tokio::test]
async fn refusals_are_the_usual_errors() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    let anonymous = app.client.get(app.url(PATH)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let post = app.client.post(app.url(PATH)).bearer_auth(app.token_for(user)).json(&json!({})).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, OPTIONS");

    // A valid token for someone who is no user of this project.
    let stranger = app.client.get(app.url(PATH)).bearer_auth(app.token_for(Uuid::new_v4())).send().await.unwrap();
    assert_eq!(stranger.status(), 404);
    let body: Value = stranger.json().await.unwrap();
    assert_eq!(body["error"]["code"], "user_not_found");

    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(PATH))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
}

/// The streak insights shows is the one the rewards count, day by day as sessions arrive
/// late: a session just after midnight in UTC+14 (reported late), then the zone set to
/// UTC-12 (through PostgREST, as the app does). Now is the day after that session's day
/// in the new zone, but more than 48 hours after it: the streak is over (0), and a
/// session now starts a new one (1), not a second day of it; the two days are not one
/// run for the longest streak either.
#[tokio::test]
async fn the_streak_is_the_one_the_rewards_count() {
    use chrono::{Duration, Timelike, Utc};
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let now = Utc::now();
    let plus_14 = chrono::FixedOffset::east_opt(14 * 3600).unwrap();
    let minus_12 = chrono::FixedOffset::west_opt(12 * 3600).unwrap();
    // A minute's session ending between 00:00 and 03:00 in UTC+14, 49 to 71 hours ago,
    // on the date before today's in UTC-12.
    let end = (49 * 6..71 * 6)
        .map(|k| now - Duration::minutes(10 * k))
        .find(|end| {
            (10..13).contains(&end.hour())
                && end.with_timezone(&plus_14).date_naive() + Duration::days(1)
                    == now.with_timezone(&minus_12).date_naive()
        })
        .expect("such a moment in any 22 hours");
    let set_zone = |zone: &'static str| {
        let app = &app;
        async move {
            let mut db = app.db_client().await;
            let sql =
                format!("update public.user_profiles set settings = '{{\"timezone\":\"{zone}\"}}' where id = '{user}'");
            libero_tests::sql::as_role(&mut db, "authenticated", Some(user), &sql).await.expect(zone);
        }
    };
    let report = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(app.url("/functions/v1/session-complete"))
                .bearer_auth(app.token_for(user))
                .json(&body)
                .send()
                .await
                .expect("request");
            let answer: Value = response.json().await.expect("json body");
            assert_eq!(answer["rewarded"], true, "{answer}");
            answer
        }
    };

    set_zone("Etc/GMT-14").await;
    let started = (end - Duration::seconds(60)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let first = report(json!({"session_id": Uuid::new_v4().to_string(), "ego_state": "guardian",
                              "duration_seconds": 60, "started_at": started}))
    .await;
    assert_eq!(first["streak"], 1, "{first}");
    set_zone("Etc/GMT+12").await;

    let before = insights(&app, user).await;
    assert_eq!(
        (before["totals"]["current_streak"].clone(), before["totals"]["longest_streak"].clone()),
        (json!(0), json!(1)),
        "more than 48 hours without a session: {}",
        before["totals"]
    );

    let second =
        report(json!({"session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 60}))
            .await;
    assert_eq!(
        (second["streak"].clone(), second["streak_extended"].clone()),
        (json!(1), json!(true)),
        "a new run: {second}"
    );
    assert_ne!(second["local_date"], first["local_date"]);
    let after = insights(&app, user).await;
    assert_eq!(
        (after["totals"]["current_streak"].clone(), after["totals"]["longest_streak"].clone()),
        (second["streak"].clone(), json!(1)),
        "{}",
        after["totals"]
    );
    let days: Vec<&Value> =
        after["activity"]["days"].as_array().unwrap().iter().filter(|d| d["sessions"] != 0).collect();
    assert_eq!(days.len(), 2, "each session on the day it counted on: {days:?}");
    assert_eq!(days[0]["date"], first["local_date"]);
    assert_eq!(days[1]["date"], second["local_date"]);
    app.assert_ledger_consistent().await;
}
