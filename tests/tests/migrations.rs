//! The migration runner and the per-test databases.

use libero_tests::db;

fn write(dir: &std::path::Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

#[tokio::test]
async fn migrate_applies_each_file_once_in_order() {
    let test_db = db::fresh_database().await.expect("fresh database");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "20240102000000_second.sql", "INSERT INTO runner_probe VALUES (2);");
    write(
        dir.path(),
        "20240101000000_first.sql",
        "CREATE TABLE runner_probe (n int); INSERT INTO runner_probe VALUES (1);",
    );

    let applied = db::migrate_dir(&test_db.url, dir.path()).await.unwrap();
    let versions: Vec<_> = applied.iter().map(|m| m.version.as_str()).collect();
    assert_eq!(versions, ["20240101000000", "20240102000000"]);
    assert!(db::migrate_dir(&test_db.url, dir.path()).await.unwrap().is_empty(), "second run applies nothing");

    let client = test_db.client().await;
    let n: i64 = client.query_one("SELECT count(*) FROM runner_probe", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let row = client
        .query_one(
            "SELECT name, statements FROM supabase_migrations.schema_migrations WHERE version = '20240101000000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "first");
    assert_eq!(row.get::<_, Vec<String>>(1).len(), 1);
}

#[tokio::test]
async fn a_failing_migration_rolls_back_and_is_not_recorded() {
    let test_db = db::fresh_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "20240101000000_bad.sql", "CREATE TABLE half_done (n int); SELECT no_such_function();");
    let err = db::migrate_dir(&test_db.url, dir.path()).await.unwrap_err();
    assert!(format!("{err:#}").contains("42883"), "{err:#}");
    let client = test_db.client().await;
    let exists: bool = client.query_one("SELECT to_regclass('half_done') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!exists);
}

#[tokio::test]
async fn fresh_databases_are_separate() {
    let (a, b) = tokio::join!(db::fresh_database(), db::fresh_database());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.name, b.name);
    a.client().await.batch_execute("CREATE TABLE only_in_a (n int)").await.unwrap();
    let in_b: bool =
        b.client().await.query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!in_b);
}

/// The names of the SQL functions a migration defines (`create [or replace] function`),
/// outside comments and string or dollar-quoted bodies' comments.
fn functions_defined_in(sql: &str) -> Vec<String> {
    let code: String = sql.lines().map(|line| line.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let lower = code.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let mut names = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let defines = *word == "function"
            && i >= 1
            && (words[i - 1] == "create" || (i >= 3 && words[i - 1] == "replace" && words[i - 3] == "create"));
        if defines {
            if let Some(next) = words.get(i + 1) {
                let name = next.split('(').next().unwrap_or("").trim_start_matches("public.");
                names.push(name.trim_matches('"').to_string());
            }
        }
    }
    names
}

#[test]
fn each_sql_function_is_defined_in_exactly_one_migration() {
    let mut homes: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in db::read_migrations(&db::migrations_dir()).unwrap() {
        let mut names = functions_defined_in(&m.sql);
        names.sort();
        names.dedup(); // overloads in one file share a home
        for name in names {
            homes.entry(name).or_default().push(format!("{}_{}", m.version, m.name));
        }
    }
    assert!(homes.len() > 30, "the scan finds the functions: {homes:?}");
    let twice: Vec<String> = homes
        .iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(name, files)| format!("{name}: {}", files.join(", ")))
        .collect();
    assert!(
        twice.is_empty(),
        "functions defined in more than one migration (move the whole definition into the newest, see docs/architecture.md, Migrations: one home per SQL function): {twice:?}"
    );
}

#[test]
fn the_function_scan_sees_create_and_create_or_replace() {
    let sql = "create function public.a(x int) returns int ...;\n-- create function commented_out()\nCREATE OR REPLACE FUNCTION b() ...";
    assert_eq!(functions_defined_in(sql), ["a", "b"]);
}
