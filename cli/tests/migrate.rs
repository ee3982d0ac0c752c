//! `libero migrate` against a scratch database on the test cluster (`DATABASE_URL`, else
//! the cluster `scripts/pg.sh` started).

use std::process::Command;

mod common;

use common::{workspace, ScratchDb};

const BIN: &str = env!("CARGO_BIN_EXE_libero");

fn libero(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).current_dir(workspace()).output().unwrap()
}

#[tokio::test]
async fn migrate_applies_every_file_once_then_reports_up_to_date() {
    let db = ScratchDb::new("cli_test").await;
    let files = std::fs::read_dir(workspace().join("migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count();

    let first = libero(&["migrate", "--database-url", &db.url]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let applied = String::from_utf8_lossy(&first.stdout).lines().filter(|l| l.starts_with("applied ")).count();
    assert_eq!(applied, files, "{}", String::from_utf8_lossy(&first.stdout));

    let second = libero(&["migrate", "--database-url", &db.url]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "database is up to date");

    // Recorded where the Supabase CLI looks, so `supabase db push` skips them too.
    let client = libero_cli::pg::connect(&db.url).await.unwrap();
    let recorded: i64 =
        client.query_one("SELECT count(*) FROM supabase_migrations.schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(recorded as usize, files);
}

#[test]
fn migrate_without_a_database_says_what_to_set() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env_remove("SPIN_VARIABLE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--database-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
