//! Shared by the CLI's test binaries: the workspace, the test cluster, a scratch
//! database of a test's own on it, and a fake Stripe event log.
#![allow(dead_code)] // each test binary uses its own subset

pub mod stripe_events;

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The test cluster: `DATABASE_URL`, else the one `scripts/pg.sh` started.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::fs::read_to_string(workspace().join(".local/pg/url")).ok())
        .expect("DATABASE_URL, or a cluster started with scripts/pg.sh")
        .trim()
        .to_string()
}

/// The address of database `name` on the cluster at `admin`, with the same credentials
/// (the cluster asks for the password over TCP).
pub fn url_of(admin: &str, name: &str) -> String {
    let (server, _) = admin.rsplit_once('/').expect("a postgres://…/db address");
    format!("{server}/{name}?sslmode=disable")
}

/// A database of its own (`<prefix>_<pid>_<nanos>`), dropped at the end.
pub struct ScratchDb {
    admin: String,
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    pub async fn new(prefix: &str) -> ScratchDb {
        let admin = admin_url();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        let client = libero_cli::pg::connect(&admin).await.unwrap();
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let url = url_of(&admin, &name);
        ScratchDb { admin, name, url }
    }

    /// The same, with the project's migrations applied.
    pub async fn migrated(prefix: &str) -> ScratchDb {
        let db = ScratchDb::new(prefix).await;
        libero_cli::migrate::migrate_dir(&db.url, &workspace().join("migrations")).await.unwrap();
        db
    }
}

impl Drop for ScratchDb {
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
