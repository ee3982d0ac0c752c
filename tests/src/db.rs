//! Postgres for the tests.
//!
//! * [`migrate`]: the operator's migration runner (`libero migrate`, in `cli/`) on the
//!   project's `migrations/`.
//! * [`fresh_database`] hands every test its own database, cloned (`CREATE DATABASE ...
//!   TEMPLATE`) from a template that is migrated once per migrations content. Cloning takes
//!   tens of milliseconds, where running the migrations each time would take seconds.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

/// Env var that, when set, keeps test databases after the test (for post-mortems).
const KEEP_ENV: &str = "LIBERO_KEEP_TEST_DB";

/// Env var that, when `1`, makes every test database an adopted one: the old app's
/// database (tests/adopt, with [`ADOPTED_USERS`] users) brought over by `libero adopt`
/// instead of migrated from nothing, so the suite shows the app serving an adopted
/// database (docs/adopt.md).
pub const ADOPTED_ENV: &str = "LIBERO_TEST_ADOPTED";
const ADOPTED_USERS: u32 = 500;

fn adopted() -> bool {
    std::env::var(ADOPTED_ENV).is_ok_and(|v| v == "1")
}

/// The admin address of the Postgres cluster the tests use: `DATABASE_URL`, else the
/// cluster started by `scripts/pg.sh` (its URL is in `.local/pg/url`).
pub fn admin_url() -> Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Ok(url.trim().to_string());
        }
    }
    let file = crate::repo_root().join(".local/pg/url");
    match std::fs::read_to_string(&file) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_string()),
        _ => bail!(
            "no Postgres for the tests: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) \
             or start the local cluster with `scripts/pg.sh` (it writes {})",
            file.display()
        ),
    }
}

/// The project's migrations directory (`<repo>/migrations`).
pub fn migrations_dir() -> PathBuf {
    crate::repo_root().join("migrations")
}

/// Connects and drives the connection on a background task.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to Postgres at {}", libero_cli::pg::redact(url)))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; an error here was already
        // reported to whoever issued the failing query.
        let _ = connection.await;
    });
    Ok(client)
}

pub use libero_cli::migrate::{describe_pg_error, migrate_dir, read_migrations, Migration};

/// Applies the project's migrations (`<repo>/migrations`) to the database at `url`.
/// Returns the migrations it applied (none when the database is up to date).
pub async fn migrate(url: &str) -> Result<Vec<Migration>> {
    migrate_dir(url, &migrations_dir()).await
}

/// A database of its own for one test, cloned from the migrated template.
#[derive(Debug)]
pub struct TestDb {
    /// Address of this database (same credentials as [`admin_url`]).
    pub url: String,
    /// Its name (`test_<random>`).
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await.expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    /// Drops the database so test runs do not pile up databases in the cluster
    /// (`LIBERO_KEEP_TEST_DB=1` keeps them), on the [`reaper`]'s thread: a drop cannot
    /// await, and it must not block either. `DROP DATABASE ... WITH (FORCE)` waits until
    /// every backend has acknowledged it, and one still authenticating (SCRAM takes
    /// several round trips) waits for its client, which may be a task on the very
    /// single-threaded runtime the drop runs on.
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_none() {
            reaper().drop_later(self.admin_url.clone(), self.name.clone());
        }
    }
}

/// Drops the test databases of this process one after another, off every test's runtime;
/// at exit the process waits (a bounded time) for the last ones.
struct Reaper {
    jobs: Mutex<Sender<(String, String)>>,
    pending: Arc<(Mutex<usize>, Condvar)>,
}

/// How long the process waits at exit for databases still being dropped.
const REAPER_EXIT_WAIT: Duration = Duration::from_secs(30);

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let (jobs, queue) = channel::<(String, String)>();
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let done = pending.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            for (admin, name) in queue {
                rt.block_on(async {
                    // FORCE: the app under test may still hold pooled connections.
                    if let Ok(client) = connect(&admin).await {
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&name)))
                            .await;
                    }
                });
                let (count, changed) = &*done;
                *count.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
                changed.notify_all();
            }
        });
        extern "C" fn wait_for_drops() {
            let (count, changed) = &*reaper().pending;
            let count = count.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = changed.wait_timeout_while(count, REAPER_EXIT_WAIT, |n| *n > 0);
        }
        // SAFETY: registers a plain function without arguments; it runs once, at exit.
        unsafe { libc::atexit(wait_for_drops) };
        Reaper { jobs: Mutex::new(jobs), pending }
    })
}

impl Reaper {
    fn drop_later(&self, admin: String, name: String) {
        *self.pending.0.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        let sent = self.jobs.lock().unwrap_or_else(PoisonError::into_inner).send((admin, name));
        if sent.is_err() {
            *self.pending.0.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        }
    }
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> Result<TestDb> {
    fresh_database_on(&admin_url()?).await
}

/// A fresh, migrated database for one test on the cluster at `admin` (a cluster of the
/// test's own, e.g. one the fault tests stop and restart).
pub async fn fresh_database_on(admin: &str) -> Result<TestDb> {
    let admin = admin.to_string();
    let template = ensure_template(&admin).await?;
    let name = format!("test_{}", random_suffix());
    let client = connect(&admin).await?;
    // Concurrent clones of one template can collide (SQLSTATE 55006, "source database is
    // being accessed by other users") while another session briefly touches it: retry.
    let mut attempt = 0;
    loop {
        let sql = format!("CREATE DATABASE {} TEMPLATE {}", quote_ident(&name), quote_ident(&template));
        match client.batch_execute(&sql).await {
            Ok(()) => break,
            Err(e) if attempt < 50 && e.code().is_some_and(|c| c.code() == "55006") => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating test database {name}")),
        }
    }
    Ok(TestDb { url: with_dbname(&admin, &name)?, name, admin_url: admin })
}

/// A fresh database with no migrations applied (for tests of the migrations themselves).
pub async fn empty_database() -> Result<TestDb> {
    let admin = admin_url()?;
    let name = format!("test_{}", random_suffix());
    connect(&admin).await?.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))).await?;
    Ok(TestDb { url: with_dbname(&admin, &name)?, name, admin_url: admin })
}

/// Creates `libero_tpl_<hash of migrations>` if missing and returns its name. Built under
/// another name and renamed when complete, so a half-migrated template is never cloned.
async fn ensure_template(admin: &str) -> Result<String> {
    let migrations = read_migrations(&migrations_dir())?;
    let mut hasher = Sha256::new();
    for m in &migrations {
        hasher.update(m.version.as_bytes());
        hasher.update([0]);
        hasher.update(m.name.as_bytes());
        hasher.update([0]);
        hasher.update(m.sql.as_bytes());
        hasher.update([0]);
    }
    if adopted() {
        // The adopted template also depends on the fixture and on `libero adopt` itself.
        for f in ["tests/adopt/legacy_schema.sql", "tests/adopt/legacy_data.sql", "cli/src/adopt.rs"] {
            let content = std::fs::read(crate::repo_root().join(f)).with_context(|| format!("reading {f}"))?;
            hasher.update(&content);
        }
    }
    let hash = hex::encode(&hasher.finalize()[..8]);
    let template = if adopted() { format!("libero_tpl_adopted_{hash}") } else { format!("libero_tpl_{hash}") };
    let building = format!("{template}_building");

    let client = connect(admin).await?;
    // A session lock: parallel test binaries wait here while the first builds the template.
    client.batch_execute("SELECT pg_advisory_lock(hashtext('libero_test_template'))").await?;
    let result = async {
        let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template]).await?.is_some();
        if exists {
            return Ok(());
        }
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&building))).await?;
        client.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&building))).await?;
        let url = with_dbname(admin, &building)?;
        if adopted() {
            adopt_fixture(&url, &migrations).await.context("adopting the old app's database as the test template")?;
        } else {
            migrate(&url).await.context("migrating the test template database")?;
        }
        // The migration connection may take a moment to go away after it is dropped.
        for _ in 0..50 {
            let sql = format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&building), quote_ident(&template));
            match client.batch_execute(&sql).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code().is_some_and(|c| c.code() == "55006") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("template database {building} stayed in use")
    }
    .await;
    let _ = client.batch_execute("SELECT pg_advisory_unlock(hashtext('libero_test_template'))").await;
    result.map(|()| template)
}

/// The old app's database (Supabase's roles and `auth` as the compatibility migration
/// makes them, the as-is schema and its users), then `libero adopt` on it.
async fn adopt_fixture(url: &str, migrations: &[Migration]) -> Result<()> {
    let client = connect(url).await?;
    let compat = migrations.first().context("no migrations")?;
    client.batch_execute(&compat.sql).await?;
    client.batch_execute(&format!("set libero.fixture_users = '{ADOPTED_USERS}'")).await?;
    for f in ["tests/adopt/legacy_schema.sql", "tests/adopt/legacy_data.sql"] {
        let sql = std::fs::read_to_string(crate::repo_root().join(f)).with_context(|| format!("reading {f}"))?;
        client.batch_execute(&sql).await.map_err(|e| anyhow::anyhow!("{f}: {}", describe_pg_error(&e)))?;
    }
    drop(client);
    let report = libero_cli::adopt::adopt(url, &migrations_dir(), false).await?;
    if report.outcome != libero_cli::adopt::Outcome::Adopted {
        bail!("libero adopt did not adopt the fixture:\n{}", report.text);
    }
    Ok(())
}

/// `url` with its database name replaced by `dbname` (URL or key=value form).
pub fn with_dbname(url: &str, dbname: &str) -> Result<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (scheme, rest) = url.split_once("://").expect("checked above");
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split_once('/').map_or(before_query, |(a, _)| a);
        let mut out = format!("{scheme}://{authority}/{dbname}");
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Ok(out)
    } else {
        // key=value form: drop any dbname=... and append ours.
        let kept: Vec<&str> = url.split_whitespace().filter(|kv| !kv.starts_with("dbname=")).collect();
        Ok(format!("{} dbname={dbname}", kept.join(" ")).trim().to_string())
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced_in_both_forms() {
        assert_eq!(
            with_dbname("postgres://u:p@h:1/postgres?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://u@h:1", "x").unwrap(), "postgres://u@h:1/x");
        assert_eq!(with_dbname("host=h port=1 dbname=postgres", "x").unwrap(), "host=h port=1 dbname=x");
    }
}
