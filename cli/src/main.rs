//! `libero`: the operator's commands.
//!
//! ```text
//! libero migrate [--database-url URL] [--migrations DIR]
//! libero analytics [--days N] [--csv] [--only VIEW] [--refresh] [--database-url URL]
//! libero stripe sync [--dry-run] [--live] [--database-url URL] [--api-base URL]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use libero_cli::{migrate, stripe};

const USAGE: &str = concat!(
    "usage:
  libero migrate [--database-url URL] [--migrations DIR]
      apply migrations/*.sql not yet recorded in supabase_migrations.schema_migrations
      (URL: --database-url, else DATABASE_URL, else SPIN_VARIABLE_DATABASE_URL)
",
    // Keep in step with libero_cli::stripe::USAGE.
    "  libero stripe sync [--dry-run] [--live] [--database-url URL] [--api-base URL]
      make Stripe match the catalog (products, prices, portal) and store the price ids"
);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("libero: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else { bail!("{USAGE}") };
    match command.as_str() {
        "migrate" => {
            let args = Args::parse(rest, &["--database-url", "--migrations"])?;
            let url = match args.value("--database-url") {
                Some(u) => u.to_string(),
                None => ["DATABASE_URL", "SPIN_VARIABLE_DATABASE_URL"]
                    .iter()
                    .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
                    .context("give --database-url, or set DATABASE_URL or SPIN_VARIABLE_DATABASE_URL")?,
            };
            let dir = args.value("--migrations").map_or_else(|| PathBuf::from("migrations"), PathBuf::from);
            let applied = migrate::migrate_dir(&url, &dir).await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for m in applied {
                println!("applied {}_{}", m.version, m.name);
            }
            Ok(())
        }
        "stripe" => stripe::command(rest).await,
        "analytics" => libero_cli::analytics::command(rest).await,
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            println!("{}", libero_cli::analytics::USAGE);
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `--name value` (or `--name=value`) arguments after the command.
struct Args(Vec<(String, String)>);

impl Args {
    fn parse(args: &[String], valued: &[&str]) -> Result<Self> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            if !valued.contains(&name) {
                bail!("unknown argument {arg:?}\n{USAGE}");
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().with_context(|| format!("{name} needs a value"))?.clone(),
            };
            out.push((name.to_string(), value));
        }
        Ok(Args(out))
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
