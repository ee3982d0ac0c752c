//! Applies `migrations/*.sql` the way the Supabase CLI does: each file once, recorded in
//! `supabase_migrations.schema_migrations`, so `supabase db push` and this runner never
//! apply the same file twice to one database.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio_postgres::GenericClient;

use crate::pg::connect;

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The timestamp prefix (`20250101000000`): the Supabase CLI's primary key.
    pub version: String,
    /// The rest of the file stem (`init_economy`).
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
}

/// Reads `<dir>/*.sql` in filename order. Names follow the Supabase CLI:
/// `<timestamp>_<name>.sql`.
pub fn read_migrations(dir: &Path) -> Result<Vec<Migration>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("non-UTF-8 migration name {}", path.display()))?;
            let (version, name) = stem.split_once('_').unwrap_or((stem, ""));
            if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit()) {
                bail!("migration {} is not named <timestamp>_<name>.sql (as the Supabase CLI expects)", path.display());
            }
            let sql = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Migration { version: version.to_string(), name: name.to_string(), path, sql })
        })
        .collect()
}

/// `libero migrate`'s flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: crate::args::Database,
    /// The migrations' directory
    #[arg(long, value_name = "DIR", default_value = "migrations")]
    pub migrations: PathBuf,
}

/// `libero migrate`: applies what is pending and says what it applied.
pub async fn command(args: MigrateArgs) -> Result<()> {
    let url = args.database.url()?;
    let applied = migrate_dir(&url, &args.migrations).await?;
    if applied.is_empty() {
        println!("database is up to date");
    }
    for m in applied {
        println!("applied {}_{}", m.version, m.name);
    }
    Ok(())
}

/// Applies `<dir>/*.sql` to the database at `url`: each file not yet recorded, in filename
/// order, each in its own transaction together with its record in
/// `supabase_migrations.schema_migrations`.
pub async fn migrate_dir(url: &str, dir: &Path) -> Result<Vec<Migration>> {
    let migrations = read_migrations(dir)?;
    let mut client = connect(url).await?;
    // Two runners against one database (parallel test binaries, two servers starting)
    // must not both apply a file: serialise them on a transaction-independent lock.
    client.batch_execute("SELECT pg_advisory_lock(hashtext('libero_migrate'))").await?;
    let result = apply_pending(&mut client, migrations).await;
    let _ = client.batch_execute("SELECT pg_advisory_unlock(hashtext('libero_migrate'))").await;
    result
}

/// The same shape the Supabase CLI creates (it adds `statements` and `name` with ALTERs).
const HISTORY_TABLE: &str = "CREATE SCHEMA IF NOT EXISTS supabase_migrations;
     CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY);
     ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[];
     ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text;";

/// Applies each of `migrations` not yet recorded, in order, each with its record in a
/// transaction of its own: on a connection ([`migrate_dir`]) a transaction; inside a
/// transaction a savepoint, so all of them commit or roll back with it (`libero adopt`,
/// whose whole change, moving the old tables aside, the migrations and the copy, is one).
pub async fn apply_pending(client: &mut impl GenericClient, migrations: Vec<Migration>) -> Result<Vec<Migration>> {
    client.batch_execute(HISTORY_TABLE).await.context("creating supabase_migrations.schema_migrations")?;
    let applied: Vec<String> = client
        .query("SELECT version FROM supabase_migrations.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut done = Vec::new();
    for m in migrations.into_iter().filter(|m| !applied.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(&m.sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
            .with_context(|| format!("applying migration {}", m.path.display()))?;
        // The CLI stores the file split into statements; splitting SQL faithfully (dollar
        // quotes, comments) is beside the point here, so the file is one element.
        tx.execute(
            "INSERT INTO supabase_migrations.schema_migrations (version, name, statements) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &vec![m.sql.clone()]],
        )
        .await?;
        tx.commit().await?;
        done.push(m);
    }
    Ok(done)
}

/// A Postgres error with its SQLSTATE, message, detail, hint and position, for failures a
/// person reads (a migration that does not apply).
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!(" (where: {w})"));
            }
            if let Some(p) = db.position() {
                s.push_str(&format!(" (position: {p:?})"));
            }
            s
        }
        None => e.to_string(),
    }
}
