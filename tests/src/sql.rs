//! What the tests of the database on its own share: a database of the test's own, a user
//! signing up, and a statement run as one of Supabase's roles.

use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::db::{self, TestDb};

/// A database of the test's own, cloned from the migrated template, and a connection to it.
pub async fn fresh() -> (TestDb, Client) {
    let test_db = db::fresh_database().await.expect("fresh database");
    let client = test_db.client().await;
    (test_db, client)
}

/// How long before now the users of the tests signed up: no session is credited for time
/// before its account existed, and a test's sessions start before it does.
pub const ACCOUNT_AGE: &str = "30 days";

/// A user who signed up [`ACCOUNT_AGE`] ago: the row in auth.users; the sign-up trigger
/// creates the profile (made now: the account counts from the earlier of the two).
pub async fn new_user(client: &Client) -> Uuid {
    let id = Uuid::new_v4();
    client
        .execute(
            "insert into auth.users (id, email, created_at) values ($1, $2, now() - $3::text::interval)",
            &[&id, &format!("{id}@example.test"), &ACCOUNT_AGE],
        )
        .await
        .unwrap();
    id
}

/// Runs `sql` in a transaction as `role`; for `authenticated`, signed in as `user` the
/// way PostgREST does it (the verified JWT claims in `request.jwt.claims`). Commits when
/// the statement succeeds.
pub async fn as_role(
    client: &mut Client,
    role: &str,
    user: Option<Uuid>,
    sql: &str,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let tx = client.transaction().await.unwrap();
    if let Some(user) = user {
        let claims = json!({ "sub": user.to_string(), "role": role }).to_string();
        tx.execute("select set_config('request.jwt.claims', $1, true)", &[&claims]).await.unwrap();
    }
    tx.batch_execute(&format!("set local role {role}")).await.unwrap();
    let result = tx.query(sql, &[]).await;
    if result.is_ok() {
        tx.commit().await.unwrap();
    }
    result
}

/// The statement was refused for want of a privilege (42501).
#[track_caller]
pub fn assert_denied(result: Result<Vec<Row>, tokio_postgres::Error>, what: &str) {
    match result {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {}
        other => panic!("{what}: expected permission denied (42501), got {other:?}"),
    }
}

/// Gives `user` one rewarded session at noon on each of the local days `days_ago` before
/// today (1 = yesterday) in `zone`, as the economy records days (`reward_days`: the whole
/// local date, its sessions). Sessions cannot be reported after the late window (72 h),
/// so a longer history for the streak is seeded this way.
pub async fn seed_reward_days(client: &Client, user: Uuid, zone: &str, days_ago: &[i32]) {
    client
        .execute(
            "insert into public.reward_days (user_id, day, starts_at, ends_at, timezone, sessions, xp_minutes,
                                             first_started_at, last_ended_at)
             select $1, d, d::timestamp at time zone $2, (d + 1)::timestamp at time zone $2, $2, 1, 1,
                    (d + time '11:59')::timestamp at time zone $2, (d + time '12:00')::timestamp at time zone $2
               from (select (now() at time zone $2)::date - n as d from unnest($3::int[]) as n) days",
            &[&user, &zone, &days_ago],
        )
        .await
        .expect("seeding reward days");
}

/// No user has two rewarded sessions whose wall-clock intervals overlap by more than the
/// tolerance (30 s; a session shorter than a minute takes a minute). A session's interval
/// is the part of it the economy credited (`credited_seconds`, none before the account).
pub async fn assert_rewarded_sessions_do_not_overlap(client: &Client) {
    let overlapping: i64 = client
        .query_one(
            "with r as (
               select user_id, id, ended_at,
                      ended_at - greatest(make_interval(secs => coalesce(credited_seconds, duration)),
                                          interval '60 seconds') as began
                 from public.sessions where rewarded
             )
             select count(*) from r a join r b on a.user_id = b.user_id and a.id < b.id
              where least(a.ended_at, b.ended_at) - greatest(a.began, b.began) > interval '30 seconds'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "rewarded sessions overlap");
}
