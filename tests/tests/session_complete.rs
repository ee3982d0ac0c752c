//! session-complete end to end: the real component through the host, a fresh database
//! per test, and after every test `tokens == sum(ledger)` for every user.

use futures_util::future::join_all;
use libero_tests::sql::{as_role, seed_reward_days};
use libero_tests::testing::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

const PATH: &str = "/functions/v1/session-complete";

async fn complete(app: &TestApp, user: Uuid, body: Value) -> (u16, Value) {
    let response =
        app.client.post(app.url(PATH)).bearer_auth(app.token_for(user)).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

fn session(duration_seconds: i64) -> Value {
    json!({
        "session_id": Uuid::new_v4().to_string(),
        "ego_state": "guardian",
        "action": "calm",
        "duration_seconds": duration_seconds,
    })
}

async fn count(app: &TestApp, sql: &str, user: Uuid) -> i64 {
    app.db_client().await.query_one(sql, &[&user]).await.expect(sql).get(0)
}

async fn sessions_of(app: &TestApp, user: Uuid) -> i64 {
    count(app, "select count(*) from public.sessions where user_id = $1", user).await
}

async fn ledger_rows_of(app: &TestApp, user: Uuid) -> i64 {
    count(app, "select count(*) from public.token_ledger where user_id = $1", user).await
}

/// Tests cannot wait for a session to end before starting the next: this moves the
/// user's recorded sessions `seconds` back on the clock (`ended_at`), as if that much
/// time had passed since. Daily caps and streaks count days on the profile, untouched.
async fn time_passes(app: &TestApp, user: Uuid, seconds: f64) {
    app.db_client()
        .await
        .execute(
            "update public.sessions set ended_at = ended_at - make_interval(secs => $2) where user_id = $1",
            &[&user, &seconds],
        )
        .await
        .expect("moving sessions back");
}

/// `started_at` for a session that started `ago` before now.
fn started(ago: chrono::Duration) -> String {
    (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// As if a day had passed: the user's days and sessions move 24 hours back on the clock,
/// each day to the date before (through a far date, so no two rows ever share one).
async fn a_day_passes(app: &TestApp, user: Uuid) {
    app.db_client()
        .await
        .batch_execute(&format!(
            "update public.reward_days set day = day + 100000 where user_id = '{user}';
             update public.reward_days set day = day - 100001, starts_at = starts_at - interval '1 day',
                    ends_at = ends_at - interval '1 day' where user_id = '{user}';
             update public.sessions set ended_at = ended_at - interval '1 day' where user_id = '{user}';"
        ))
        .await
        .expect("a day passing");
}

async fn account_start(app: &TestApp, user: Uuid) -> chrono::DateTime<chrono::Utc> {
    app.db_client()
        .await
        .query_one("select created_at from public.user_profiles where id = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

/// The account (the auth user and its profile) was created `ago` before now.
async fn account_created(app: &TestApp, user: Uuid, ago: &str) {
    app.db_client()
        .await
        .execute(
            "with u as (update auth.users set created_at = now() - $2::text::interval where id = $1)
             update public.user_profiles set created_at = now() - $2::text::interval where id = $1",
            &[&user, &ago],
        )
        .await
        .expect("dating the account");
}

async fn set_profile(app: &TestApp, user: Uuid, sql_set: &str) {
    app.db_client()
        .await
        .execute(&format!("update public.user_profiles set {sql_set} where id = $1"), &[&user])
        .await
        .expect("updating the profile");
}

#[tokio::test]
async fn first_session_grants_xp_tokens_streak_and_achievement() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    let (status, body) = complete(&app, user, session(150)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], false);
    assert_eq!(body["experience_gained"], 10 + 2 * 2, "two whole minutes");
    assert_eq!(body["tokens_awarded"], 2);
    assert_eq!(body["rewards"], json!([{"reason": "session_complete", "tokens": 2}]));
    assert_eq!(body["streak"], 1);
    assert_eq!(body["streak_extended"], true);
    assert_eq!(body["achievements_unlocked"], json!(["first_session"]));
    assert_eq!(body["totals"], json!({"tokens": 2, "experience": 14, "level": 1, "session_streak": 1}));
    assert_eq!(sessions_of(&app, user).await, 1);
    assert_eq!(app.tokens_of(user).await, 2);
    let usage: Value = app
        .db_client()
        .await
        .query_one("select to_jsonb(p) from public.user_profiles p where id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert!(usage.to_string().contains("guardian"), "ego-state usage recorded: {usage}");
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn minutes_are_capped_and_level_ups_pay_tokens() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    // 90 minutes count as 60: 10 + 120 = 130 XP, which reaches level 2.
    let (status, body) = complete(&app, user, session(90 * 60)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["experience_gained"], 130);
    assert_eq!(body["level_before"], 1);
    assert_eq!(body["level_after"], 2);
    assert_eq!(body["tokens_awarded"], 2 + 5);
    let reasons: Vec<&str> =
        body["rewards"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["session_complete", "level_up"]);
    assert_eq!(app.tokens_of(user).await, 7);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn several_levels_at_once_pay_each_level() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "experience = 390").await; // level 1 held, 390 XP earned by the old client

    let (_, body) = complete(&app, user, session(60)).await; // +12 XP → 402 → level 5

    assert_eq!(body["level_after"], 5);
    let level_ups = body["rewards"].as_array().unwrap().iter().filter(|r| r["reason"] == "level_up").count();
    assert_eq!(level_ups, 4);
    assert!(body["achievements_unlocked"].as_array().unwrap().contains(&json!("level_5")));
    assert_eq!(app.tokens_of(user).await, 2 + 4 * 5);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn replay_returns_the_first_answer_and_grants_nothing() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let body = session(300);

    let (first_status, first) = complete(&app, user, body.clone()).await;
    let (second_status, second) = complete(&app, user, body).await;

    assert_eq!((first_status, second_status), (200, 200));
    assert_eq!(second["replayed"], true);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("replayed");
        v
    };
    assert_eq!(strip(first), strip(second), "the same answer");
    assert_eq!(sessions_of(&app, user).await, 1);
    assert_eq!(app.tokens_of(user).await, 2);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn same_id_with_different_details_is_a_conflict() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let mut body = session(300);
    complete(&app, user, body.clone()).await;
    let ledger_before = ledger_rows_of(&app, user).await;

    body["duration_seconds"] = json!(600);
    let (status, error) = complete(&app, user, body).await;

    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "session_conflict");
    assert_eq!(sessions_of(&app, user).await, 1);
    assert_eq!(ledger_rows_of(&app, user).await, ledger_before);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_seventh_day_pays_the_streak_bonus() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    seed_reward_days(&app.db_client().await, user, "UTC", &[1, 2, 3, 4, 5, 6]).await;

    let (_, body) = complete(&app, user, session(60)).await;

    assert_eq!(body["streak"], 7);
    assert_eq!(body["streak_extended"], true);
    assert!(body["rewards"]
        .as_array()
        .unwrap()
        .contains(&json!({"reason": "streak_bonus", "tokens": 10, "streak": 7})));
    assert!(body["achievements_unlocked"].as_array().unwrap().contains(&json!("streak_7")));
    assert_eq!(app.tokens_of(user).await, 12);

    // A second session the same day changes nothing about the streak and pays no bonus.
    time_passes(&app, user, 3600.0).await;
    let (_, again) = complete(&app, user, session(60)).await;
    assert_eq!(again["rewarded"], true);
    assert_eq!(again["streak"], 7);
    assert_eq!(again["streak_extended"], false);
    assert_eq!(again["tokens_awarded"], 2);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_missed_day_restarts_the_streak() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    seed_reward_days(&app.db_client().await, user, "UTC", &[2, 3, 4, 5]).await;

    let (_, body) = complete(&app, user, session(60)).await;

    assert_eq!(body["streak"], 1);
    assert_eq!(body["streak_extended"], true);
    app.assert_ledger_consistent().await;
}

/// UTC+14 and UTC-11: at any moment at least one of them is on a different date than UTC,
/// so a server that counted days in UTC would fail one of these.
#[tokio::test]
async fn streak_days_follow_the_users_time_zone() {
    let app = TestApp::spawn().await;
    for zone in ["Pacific/Kiritimati", "Pacific/Pago_Pago"] {
        let extends = app.create_user().await;
        set_profile(&app, extends, &format!("settings = '{{\"timezone\":\"{zone}\"}}'")).await;
        seed_reward_days(&app.db_client().await, extends, zone, &[1, 2, 3]).await;
        let (_, body) = complete(&app, extends, session(60)).await;
        assert_eq!(body["streak"], 4, "{zone}: yesterday in the user's zone extends the streak");

        let same_day = app.create_user().await;
        set_profile(&app, same_day, &format!("settings = '{{\"timezone\":\"{zone}\"}}'")).await;
        seed_reward_days(&app.db_client().await, same_day, zone, &[0, 1, 2]).await;
        let (_, body) = complete(&app, same_day, session(60)).await;
        assert_eq!(body["streak"], 3, "{zone}: today in the user's zone leaves the streak");
        assert_eq!(body["streak_extended"], false, "{zone}");
    }
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn own_protocol_is_accepted_and_others_are_refused() {
    let app = TestApp::spawn().await;
    let owner = app.create_user().await;
    let stranger = app.create_user().await;
    let protocol: Uuid = app
        .db_client()
        .await
        .query_one(
            "insert into public.custom_protocols (user_id, name) values ($1, 'Evening calm') returning id",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);

    let mut body = session(120);
    body["protocol_id"] = json!(protocol.to_string());
    let (status, _) = complete(&app, owner, body.clone()).await;
    assert_eq!(status, 200);

    body["session_id"] = json!(Uuid::new_v4().to_string());
    let (status, error) = complete(&app, stranger, body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(error["error"]["code"], "protocol_forbidden");

    body["protocol_id"] = json!(Uuid::new_v4().to_string());
    let (status, error) = complete(&app, stranger, body).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "protocol_not_found");

    assert_eq!(sessions_of(&app, stranger).await, 0);
    assert_eq!(ledger_rows_of(&app, stranger).await, 0);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let id = Uuid::new_v4().to_string();
    let cases = [
        json!({}),
        json!({"ego_state": "guardian", "duration_seconds": 60}),
        json!({"session_id": id, "duration_seconds": 60}),
        json!({"session_id": id, "ego_state": "guardian"}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": "60"}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": -1}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": 10_000_000}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": 1.5}),
        json!({"session_id": "not-a-uuid", "ego_state": "guardian", "duration_seconds": 60}),
        json!({"session_id": id, "ego_state": "", "duration_seconds": 60}),
        json!({"session_id": id, "ego_state": "<script>", "duration_seconds": 60}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": 60, "protocol_id": "x"}),
        json!({"session_id": id, "ego_state": "guardian", "duration_seconds": 60, "tokens": 1000}),
        json!([1, 2, 3]),
    ];
    for case in cases {
        let (status, body) = complete(&app, user, case.clone()).await;
        assert_eq!(status, 400, "{case} → {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // Not JSON at all.
    let response = app
        .client
        .post(app.url(PATH))
        .bearer_auth(app.token_for(user))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    assert_eq!(sessions_of(&app, user).await, 0);
    assert_eq!(ledger_rows_of(&app, user).await, 0);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn without_a_valid_token_nothing_happens() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    let anonymous = app.client.post(app.url(PATH)).json(&session(60)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_token");

    let now = chrono::Utc::now().timestamp();
    let expired = app.token_with_claims(json!({
        "sub": user.to_string(), "aud": "authenticated", "role": "authenticated", "exp": now - 3600
    }));
    let response = app.client.post(app.url(PATH)).bearer_auth(expired).json(&session(60)).send().await.unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(sessions_of(&app, user).await, 0);
}

/// Minting by overlap: 50 completions of 10-minute sessions, each with a fresh id, sent at
/// once by a user who just signed up. They all ended now, so only one of them could have
/// happened: one is rewarded, the other 49 are recorded and earn nothing.
#[tokio::test]
async fn fifty_concurrent_ten_minute_completions_reward_one() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let bodies: Vec<Value> = (0..50).map(|_| session(600)).collect();

    let results = join_all(bodies.iter().map(|b| complete(&app, user, b.clone()))).await;

    assert!(results.iter().all(|(status, _)| *status == 200), "{results:?}");
    let rewarded: Vec<&Value> = results.iter().map(|(_, b)| b).filter(|b| b["rewarded"] == true).collect();
    assert_eq!(rewarded.len(), 1, "{results:?}");
    assert_eq!(rewarded[0]["tokens_awarded"], 2);
    assert_eq!(rewarded[0]["experience_gained"], 30);
    for (_, body) in results.iter().filter(|(_, b)| b["rewarded"] == false) {
        assert_eq!(body["reason"], "overlaps_previous_session");
        assert_eq!((body["tokens_awarded"].as_i64(), body["experience_gained"].as_i64()), (Some(0), Some(0)));
        assert_eq!(body["rewards"], json!([]));
    }
    assert_eq!(sessions_of(&app, user).await, 50, "every completion is recorded");
    assert_eq!(app.tokens_of(user).await, 2);
    assert_eq!(ledger_rows_of(&app, user).await, 1);
    app.assert_ledger_consistent().await;

    // A replay of an unrewarded completion answers exactly as the first time.
    let (index, (_, first)) = results.iter().enumerate().find(|(_, (_, b))| b["rewarded"] == false).unwrap();
    time_passes(&app, user, 3600.0).await; // even once it would no longer overlap
    let (status, replay) = complete(&app, user, bodies[index].clone()).await;
    assert_eq!(status, 200);
    let mut expected = first.clone();
    expected["replayed"] = json!(true);
    assert_eq!(replay, expected);
    assert_eq!(app.tokens_of(user).await, 2);
    app.assert_ledger_consistent().await;
}

/// Sessions done one after another are all rewarded: each started when the one before
/// it ended.
#[tokio::test]
async fn back_to_back_honest_sessions_are_all_rewarded() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;

    for n in 1..=5 {
        let (status, body) = complete(&app, user, session(600)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rewarded"], true, "session {n}: {body}");
        assert_eq!(body["reason"], Value::Null);
        assert!(body["tokens_awarded"].as_i64().unwrap() >= 2, "{body}");
        assert_eq!(body["daily"]["rewarded_sessions"], n);
        // The next session starts now and takes ten minutes: this one ended ten minutes
        // before the next completion arrives.
        time_passes(&app, user, 600.0).await;
    }
    // 5 x 30 XP = 150: level 2. 5 x 2 + 5 tokens, as before these rules.
    assert_eq!(app.tokens_of(user).await, 15);
    app.assert_ledger_consistent().await;
}

/// Sessions done back to back while offline, reported together (at once) with their
/// `started_at`: all rewarded, and none lost. Past the daily cap of 12 rewarded sessions
/// the rest are recorded and earn nothing.
#[tokio::test]
async fn fifty_concurrent_completions_lose_no_update() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "created_at = now() - interval '1 day'").await;

    // Fifty 10-minute sessions, one every 11 minutes, the last ending a minute ago (or
    // before midnight UTC, when they would straddle it: one day's cap is counted).
    let shift = libero_tests::testing::one_utc_day_shift(chrono::Duration::minutes(11 * 50));
    let results = join_all((1..=50).map(|k| {
        let mut body = session(600);
        body["started_at"] = json!(started(shift + chrono::Duration::minutes(11 * k)));
        complete(&app, user, body)
    }))
    .await;

    let mut tokens = 0;
    let mut experience = 0;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        tokens += body["tokens_awarded"].as_i64().unwrap();
        experience += body["experience_gained"].as_i64().unwrap();
    }
    let rewarded = results.iter().filter(|(_, b)| b["rewarded"] == true).count();
    let capped = results.iter().filter(|(_, b)| b["reason"] == "daily_session_cap").count();
    assert_eq!((rewarded, capped), (12, 38), "{results:?}");
    assert_eq!(sessions_of(&app, user).await, 50);
    assert_eq!(experience, 12 * 30);
    let totals: (i32, i32) = {
        let row = app
            .db_client()
            .await
            .query_one("select tokens, experience from public.user_profiles where id = $1", &[&user])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(totals, (tokens as i32, experience as i32));
    assert_eq!(tokens, 12 * 2 + 3 * 5, "12 sessions, levels 2 to 4");
    app.assert_ledger_consistent().await;
}

/// The daily caps count the user's local days: 12 rewarded sessions a day in
/// Pacific/Kiritimati (UTC+14), then nothing, then a new day after their midnight.
#[tokio::test]
async fn daily_caps_count_the_users_local_day() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "settings = '{\"timezone\":\"Pacific/Kiritimati\"}'").await;
    let kiritimati_today: String = app
        .db_client()
        .await
        .query_one("select ((now() at time zone 'Pacific/Kiritimati')::date)::text", &[])
        .await
        .unwrap()
        .get(0);

    for n in 1..=12 {
        let (_, body) = complete(&app, user, session(60)).await;
        assert_eq!(body["rewarded"], true, "session {n}: {body}");
        time_passes(&app, user, 3600.0).await;
    }
    let tokens = app.tokens_of(user).await;
    let capped_body = session(60);
    let (status, capped) = complete(&app, user, capped_body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!((capped["rewarded"].clone(), capped["reason"].clone()), (json!(false), json!("daily_session_cap")));
    assert_eq!(
        capped["daily"],
        json!({"date": kiritimati_today, "rewarded_sessions": 12, "rewarded_sessions_cap": 12,
               "xp_minutes": 12, "xp_minutes_cap": 240})
    );
    assert_eq!(app.tokens_of(user).await, tokens);
    let (_, replay) = complete(&app, user, capped_body).await;
    assert_eq!((replay["replayed"].clone(), replay["reason"].clone()), (json!(true), json!("daily_session_cap")));

    // After midnight in Kiritimati, the day counted is yesterday: the caps start over.
    a_day_passes(&app, user).await;
    let (_, next_day) = complete(&app, user, session(60)).await;
    assert_eq!(next_day["rewarded"], true, "{next_day}");
    assert_eq!(next_day["daily"]["rewarded_sessions"], 1);
    assert_eq!(app.tokens_of(user).await, tokens + 2);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn started_at_must_be_possible() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    account_created(&app, user, "0 seconds").await;
    let minutes = chrono::Duration::minutes;
    let with_start = |start: String| {
        let mut body = session(600);
        body["started_at"] = json!(start);
        body
    };

    // Ending before the account existed; then (the account older) ending in the future beyond
    // the clock tolerance; more than 72 hours ago; not a timestamp.
    let (status, error) = complete(&app, user, with_start(started(minutes(60)))).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("invalid_field")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("before the account"), "{error}");
    account_created(&app, user, "4 days").await;
    for (start, words) in [
        (started(minutes(2)), "more than 5 minutes later than now"),
        (started(minutes(73 * 60 + 11)), "more than 72 hours ago"),
        ("2000-01-01T00:00:00Z".to_string(), "more than 72 hours ago"),
        ("2025-02-30T10:00:00Z".to_string(), "RFC 3339"),
        ("yesterday".to_string(), "RFC 3339"),
    ] {
        let (status, error) = complete(&app, user, with_start(start.clone())).await;
        assert_eq!(status, 400, "{start}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(words), "{start}: {error}");
    }
    assert_eq!(sessions_of(&app, user).await, 0, "nothing recorded");
    assert_eq!(ledger_rows_of(&app, user).await, 0);

    // A session reported late keeps its time: the answer says when it ran.
    let start = chrono::Utc::now() - minutes(30);
    let (status, body) = complete(&app, user, with_start(start.to_rfc3339())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rewarded"], true);
    let reported = chrono::DateTime::parse_from_rfc3339(body["started_at"].as_str().unwrap()).unwrap();
    assert!((reported.timestamp_millis() - start.timestamp_millis()).abs() <= 1, "{body}");
    // Now sessions ending now are free to earn: that one ended 20 minutes ago.
    assert_eq!(complete(&app, user, session(600)).await.1["rewarded"], true);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn fifty_concurrent_repeats_of_one_id_grant_once() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let body = session(60);

    let results = join_all((0..50).map(|_| complete(&app, user, body.clone()))).await;

    let fresh = results.iter().filter(|(status, b)| *status == 200 && b["replayed"] == false).count();
    let replays = results.iter().filter(|(status, b)| *status == 200 && b["replayed"] == true).count();
    assert_eq!((fresh, replays), (1, 49));
    let session_ids: std::collections::HashSet<String> =
        results.iter().map(|(_, b)| b["session_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(session_ids.len(), 1);
    assert_eq!(sessions_of(&app, user).await, 1);
    assert_eq!(app.tokens_of(user).await, 2);
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn both_paths_and_the_preflight_answer() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    for path in ["/session-complete", PATH] {
        let response =
            app.client.post(app.url(path)).bearer_auth(app.token_for(user)).json(&session(60)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        time_passes(&app, user, 3600.0).await;
        assert!(response.headers().contains_key("x-request-id"));

        let preflight = app
            .client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", "http://localhost:5173")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{path}");
        assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

        let wrong_method = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(wrong_method.status(), 405);
        assert_eq!(wrong_method.headers()["allow"], "POST, OPTIONS");
    }
    app.assert_ledger_consistent().await;
}

// ---------------------------------------------------------------------------------------
// Late, skewed and out-of-order reports; time zones that cannot mint
// ---------------------------------------------------------------------------------------

fn with_start(duration_seconds: i64, start: chrono::DateTime<chrono::Utc>) -> Value {
    let mut body = session(duration_seconds);
    body["started_at"] = json!(start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    body
}

fn utc_midnight_today() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// An app that was offline reports its sessions late: 30 and 71 hours after they ended
/// they earn as they would have on time, on the day they ended; at 73 hours the report is
/// refused with a clear error.
#[tokio::test]
async fn sessions_reported_up_to_72_hours_late_count_on_their_day() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "created_at = now() - interval '4 days'").await;
    let hours = chrono::Duration::hours;
    let minutes = chrono::Duration::minutes;

    for late in [30, 71] {
        let end = chrono::Utc::now() - hours(late);
        let (status, body) = complete(&app, user, with_start(1200, end - minutes(20))).await;
        assert_eq!(status, 200, "{late} h: {body}");
        assert_eq!((body["rewarded"].clone(), body["experience_gained"].clone()), (json!(true), json!(50)), "{body}");
        assert_eq!(body["local_date"], end.date_naive().to_string(), "{late} h: the day it ended");
    }
    let end = chrono::Utc::now() - hours(73);
    let (status, error) = complete(&app, user, with_start(1200, end - minutes(20))).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("session_too_old")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("more than 72 hours ago"), "{error}");
    assert_eq!(sessions_of(&app, user).await, 2);
    assert_eq!(app.tokens_of(user).await, 2 * 2 + 5, "two sessions and level 2 (100 XP)");
    app.assert_ledger_consistent().await;
}

/// A phone whose clock runs 2 minutes ahead reports a session that just ended: it is
/// taken as ending now, and earns.
#[tokio::test]
async fn a_clock_two_minutes_ahead_is_taken_as_ending_now() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "created_at = now() - interval '1 day'").await;

    let body = with_start(600, chrono::Utc::now() - chrono::Duration::minutes(8));
    let (status, answer) = complete(&app, user, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["rewarded"].clone(), answer["experience_gained"].clone()), (json!(true), json!(30)));
    let ended = chrono::DateTime::parse_from_rfc3339(answer["ended_at"].as_str().unwrap()).unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(answer["started_at"].as_str().unwrap()).unwrap();
    assert!(ended <= chrono::Utc::now(), "ended by now: {answer}");
    assert_eq!((ended - started).num_seconds(), 600);
    let (status, replay) = complete(&app, user, body).await;
    assert_eq!(
        (status, replay["replayed"].clone(), replay["ended_at"].clone()),
        (200, json!(true), answer["ended_at"].clone())
    );
    assert_eq!(app.tokens_of(user).await, 2);
    app.assert_ledger_consistent().await;
}

/// Sessions of the day before yesterday, yesterday and today, done offline and synced
/// today in every order: each counts on its own day, and the streak and the rewards are
/// the same whatever the order; with four days before them the 7-day bonus and
/// `streak_7` come exactly once.
#[tokio::test]
async fn three_offline_days_synced_in_any_order_earn_the_same() {
    let app = TestApp::spawn().await;
    let db = app.db_client().await;
    // Each session ends at the same time of day, halfway between today's midnight (UTC)
    // and now, so each lies on its own date whenever the test runs.
    let midnight = utc_midnight_today();
    let end_of = |days_ago: i64| midnight + (chrono::Utc::now() - midnight) / 2 - chrono::Duration::days(days_ago);
    let mut outcomes = Vec::new();
    for order in [[2, 1, 0], [2, 0, 1], [1, 2, 0], [1, 0, 2], [0, 2, 1], [0, 1, 2]] {
        let user = app.create_user().await;
        set_profile(&app, user, "created_at = now() - interval '8 days'").await;
        seed_reward_days(&db, user, "UTC", &[3, 4, 5, 6]).await;
        let mut days = Vec::new();
        for days_ago in order {
            let end = end_of(days_ago);
            let (status, body) = complete(&app, user, with_start(60, end - chrono::Duration::seconds(60))).await;
            assert_eq!((status, body["rewarded"].clone()), (200, json!(true)), "{order:?}: {body}");
            assert_eq!(body["local_date"], end.date_naive().to_string(), "{order:?}");
            days.push(body["local_date"].clone());
        }
        let outcome: Value = db
            .query_one(
                "select jsonb_build_object(
                   'profile', (select jsonb_build_array(tokens, experience, session_streak, last_session_date)
                                 from public.user_profiles where id = $1),
                   'bonuses', (select jsonb_agg(reference order by reference)
                                 from public.token_ledger where user_id = $1 and reason = 'streak_bonus'),
                   'achievements', (select jsonb_agg(achievement_id order by achievement_id)
                                      from public.user_achievements where user_id = $1))",
                &[&user],
            )
            .await
            .unwrap()
            .get(0);
        outcomes.push((order, outcome));
    }
    let today = end_of(0).date_naive().to_string();
    for (order, outcome) in &outcomes {
        assert_eq!(
            outcome,
            &json!({"profile": [16, 36, 7, today], "bonuses": ["streak:1"], "achievements": ["first_session", "streak_7"]}),
            "{order:?}"
        );
    }
    app.assert_ledger_consistent().await;
}

/// After the daily cap, the app writing `settings.timezone` (through PostgREST, as the
/// user) to zones on other dates opens no fresh day; names that are not IANA zones are
/// refused when written and nothing changes.
#[tokio::test]
async fn time_zone_hops_after_the_cap_open_no_day() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    for n in 1..=12 {
        let (_, body) = complete(&app, user, session(60)).await;
        assert_eq!(body["rewarded"], true, "session {n}: {body}");
        time_passes(&app, user, 120.0).await;
    }
    let tokens = app.tokens_of(user).await;
    let mut db = app.db_client().await;
    for zone in
        ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Tokyo", "America/Los_Angeles", "Etc/GMT-14", "Etc/GMT+12"]
    {
        let sql =
            format!("update public.user_profiles set settings = '{{\"timezone\":\"{zone}\"}}' where id = '{user}'");
        as_role(&mut db, "authenticated", Some(user), &sql).await.expect(zone);
        let (status, body) = complete(&app, user, session(60)).await;
        assert_eq!((status, body["reason"].clone()), (200, json!("daily_session_cap")), "{zone}: {body}");
        time_passes(&app, user, 120.0).await;
    }
    for zone in ["UTC24", "A/B-167", "UTC+5", "posixrules"] {
        let sql =
            format!("update public.user_profiles set settings = '{{\"timezone\":\"{zone}\"}}' where id = '{user}'");
        let error = as_role(&mut db, "authenticated", Some(user), &sql).await.unwrap_err();
        assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{zone}: {error:?}");
        let (_, body) = complete(&app, user, session(60)).await;
        assert_eq!(body["reason"], "daily_session_cap", "{zone}: {body}");
        time_passes(&app, user, 120.0).await;
    }
    assert_eq!(app.tokens_of(user).await, tokens);
    app.assert_ledger_consistent().await;
}

/// A session from 23:50 to 00:10 counts on the day it ended.
#[tokio::test]
async fn a_session_across_midnight_counts_on_the_day_it_ended() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    set_profile(&app, user, "created_at = now() - interval '4 days'").await;
    let yesterday = utc_midnight_today() - chrono::Duration::days(1);

    let (status, body) = complete(&app, user, with_start(1200, yesterday - chrono::Duration::minutes(10))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["local_date"], yesterday.date_naive().to_string(), "{body}");
    assert_eq!((body["rewarded"].clone(), body["streak"].clone()), (json!(true), json!(1)));
    app.assert_ledger_consistent().await;
}

/// No completion is credited for time before the account existed, with or without
/// `started_at`: the session counts from the account's creation (its XP minutes, the
/// interval it occupies), one that ended before it is refused, and an honest one that ran
/// after it earns in full. A replay answers the same.
#[tokio::test]
async fn no_time_before_the_account_is_credited() {
    let app = TestApp::spawn().await;
    let minutes = chrono::Duration::minutes;
    let at = |body: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(body[field].as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
    };

    // Signed up five minutes ago; an hour's session without started_at, ending now.
    let newcomer = app.create_user().await;
    account_created(&app, newcomer, "5 minutes").await;
    let body = session(3600);
    let (status, first) = complete(&app, newcomer, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["rewarded"].clone(), first["xp_minutes"].clone()), (json!(true), json!(5)), "{first}");
    assert_eq!((first["experience_gained"].clone(), first["tokens_awarded"].clone()), (json!(20), json!(2)));
    let start = account_start(&app, newcomer).await;
    assert!((at(&first, "started_at") - start).num_milliseconds().abs() <= 1, "from the account's start: {first}");
    let (_, replay) = complete(&app, newcomer, body).await;
    let mut expected = first.clone();
    expected["replayed"] = json!(true);
    assert_eq!(replay, expected);
    // An honest session of four minutes, all after the account's start (the first one
    // moved out of its way): they all count.
    time_passes(&app, newcomer, 300.0).await;
    let (_, next) = complete(&app, newcomer, session(240)).await;
    assert_eq!((next["rewarded"].clone(), next["xp_minutes"].clone()), (json!(true), json!(4)), "{next}");

    // Signed up half an hour ago; sessions reported with started_at.
    let offline = app.create_user().await;
    account_created(&app, offline, "30 minutes").await;
    let (status, error) = complete(&app, offline, with_start(1200, chrono::Utc::now() - minutes(60))).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("invalid_field")), "ended before: {error}");
    assert_eq!(sessions_of(&app, offline).await, 0);
    let (status, straddling) = complete(&app, offline, with_start(1200, chrono::Utc::now() - minutes(40))).await;
    assert_eq!(status, 200, "{straddling}");
    assert_eq!((straddling["rewarded"].clone(), straddling["xp_minutes"].clone()), (json!(true), json!(10)));
    let start = account_start(&app, offline).await;
    assert!((at(&straddling, "started_at") - start).num_milliseconds().abs() <= 1, "{straddling}");
    // One right after it earns in full.
    let (_, after) = complete(&app, offline, with_start(600, at(&straddling, "ended_at"))).await;
    assert_eq!((after["rewarded"].clone(), after["xp_minutes"].clone()), (json!(true), json!(10)), "{after}");

    assert_eq!(app.tokens_of(newcomer).await + app.tokens_of(offline).await, 4 * 2);
    app.assert_ledger_consistent().await;
}
