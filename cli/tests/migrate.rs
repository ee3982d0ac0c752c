//! `libero migrate` against a scratch database on the test cluster (`DATABASE_URL`, else
//! the cluster `scripts/pg.sh` started).

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_libero");

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::fs::read_to_string(workspace().join(".local/pg/url")).ok())
        .expect("DATABASE_URL, or a cluster started with scripts/pg.sh")
        .trim()
        .to_string()
}

/// A database of its own, dropped at the end.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn new() -> Scratch {
        let admin = admin_url();
        let name = format!("cli_test_{}_{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let client = libero_cli::pg::connect(&admin).await.unwrap();
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let config: tokio_postgres::Config = admin.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("unexpected host {other:?}"),
        };
        let user = config.get_user().unwrap_or("postgres");
        let url = format!("postgres://{user}@{host}:{}/{name}?sslmode=disable", config.get_ports()[0]);
        Scratch { admin, name, url }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = libero_cli::pg::connect(&admin).await.unwrap();
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            })
        })
        .join();
    }
}

fn libero(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).current_dir(workspace()).output().unwrap()
}

#[tokio::test]
async fn migrate_applies_every_file_once_then_reports_up_to_date() {
    let db = Scratch::new().await;
    let files = std::fs::read_dir(workspace().join("migrations")).unwrap().filter(|e| {
        e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql")
    }).count();

    let first = libero(&["migrate", "--database-url", &db.url]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let applied = String::from_utf8_lossy(&first.stdout).lines().filter(|l| l.starts_with("applied ")).count();
    assert_eq!(applied, files, "{}", String::from_utf8_lossy(&first.stdout));

    let second = libero(&["migrate", "--database-url", &db.url]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "database is up to date");

    // Recorded where the Supabase CLI looks, so `supabase db push` skips them too.
    let client = libero_cli::pg::connect(&db.url).await.unwrap();
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM supabase_migrations.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"), "{}", String::from_utf8_lossy(&out.stderr));
}
