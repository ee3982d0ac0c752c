//! `libero analytics` against a scratch database on the test cluster (`DATABASE_URL`, else
//! the cluster `scripts/pg.sh` started), migrated with `libero migrate`, with a day of use.

use std::process::Command;

mod common;

use common::{workspace, ScratchDb};

const BIN: &str = env!("CARGO_BIN_EXE_libero");

fn libero(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).current_dir(workspace()).env_remove("DATABASE_URL").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn analytics_prints_the_days_figures_as_tables_and_csv() {
    let db = ScratchDb::new("cli_analytics").await;
    let (ok, _, err) = libero(&["migrate", "--database-url", &db.url]);
    assert!(ok, "{err}");
    let client = libero_cli::pg::connect(&db.url).await.unwrap();
    // A day of use: a 10-minute session, two tts calls that missed the cache, one hit.
    client
        .batch_execute(
            "insert into auth.users (id, email) values ('00000000-0000-4000-8000-000000000001', 'a@example.test');
             select public.complete_session('00000000-0000-4000-8000-000000000001', gen_random_uuid(), 'guardian',
                                            null, 600, null, 'fp', null);
             select public.ai_quota_take('00000000-0000-4000-8000-000000000001', 'tts', 30, 300);
             select public.ai_quota_take('00000000-0000-4000-8000-000000000001', 'tts', 30, 300);
             select public.tts_cache_store('k', 'openai', 'audio/mpeg', '\\x01'::bytea, 0, 1, 1000, 3600);",
        )
        .await
        .unwrap();
    client.batch_execute("select * from public.tts_cache_get('k', 3600)").await.unwrap();
    let today: String = client.query_one("select current_date::text", &[]).await.unwrap().get(0);

    let (ok, tables, err) = libero(&["analytics", "--database-url", &db.url, "--days", "1"]);
    assert!(ok, "{err}");
    for title in
        ["analytics_active_users", "analytics_revenue_daily", "analytics_plan_mix", "analytics_subscriptions_daily"]
    {
        assert!(tables.contains(title), "{title} in\n{tables}");
    }
    // The sessions table: header, rule, today's row.
    let sessions = tables.split("(analytics_sessions_daily").nth(1).unwrap();
    let lines: Vec<Vec<&str>> = sessions.lines().skip(1).take(3).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["day", "sessions", "rewarded_sessions", "minutes", "users"], "{tables}");
    assert_eq!(lines[2], [today.as_str(), "1", "1", "10.0", "1"], "{tables}");
    assert!(tables.contains("(no rows)"), "no purchases yet: {tables}");

    let (ok, csv, err) = libero(&["analytics", "--database-url", &db.url, "--csv", "--only", "analytics_tts_daily"]);
    assert!(ok, "{err}");
    assert_eq!(
        csv,
        format!("day,tts_requests,cache_hits,cache_misses,hit_rate,premium_calls\n{today},3,1,2,0.333,0\n")
    );

    let (ok, all_csv, err) = libero(&["analytics", "--database-url", &db.url, "--csv"]);
    assert!(ok, "{err}");
    assert_eq!(all_csv.lines().filter(|l| l.starts_with("# analytics_")).count(), 8, "{all_csv}");

    // --refresh rebuilds the insights histogram (the job cron runs).
    let (ok, refreshed, err) =
        libero(&["analytics", "--database-url", &db.url, "--refresh", "--only", "analytics_active_users"]);
    assert!(ok, "{err}");
    assert!(refreshed.starts_with("insights comparison histogram rebuilt: "), "{refreshed}");
    let population: i32 =
        client.query_one("select population from insights_histogram_state", &[]).await.unwrap().get(0);
    assert_eq!(population, 1);

    let (ok, _, err) = libero(&["analytics", "--database-url", &db.url, "--days", "0"]);
    assert!(!ok);
    assert!(err.contains("--days"), "{err}");
}
