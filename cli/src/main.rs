//! `libero`: the operator's commands.
//!
//! ```text
//! libero migrate [--database-url URL] [--migrations DIR]
//! libero adopt [--dry-run] [--database-url URL] [--migrations DIR]
//! libero analytics [--days N] [--csv] [--only VIEW] [--refresh] [--database-url URL]
//! libero stripe sync [--dry-run] [--live] [--database-url URL] [--api-base URL]
//! libero stripe reconcile [--once] [--max-events N] [--max-seconds S] [--database-url URL] [--api-base URL]
//! libero account export <user-id> [--database-url URL]
//! libero account delete <user-id> [--database-url URL] [--api-base URL]
//! libero push keys
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use libero_cli::{args, migrate, stripe};

const USAGE: &str = concat!(
    "  libero migrate [--database-url URL] [--migrations DIR]
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
    let Some((command, rest)) = args.split_first() else { bail!("usage:\n{USAGE}") };
    match command.as_str() {
        "migrate" => {
            let (mut url, mut dir) = (None, PathBuf::from("migrations"));
            args::each(rest, |mut flag| {
                match flag.name {
                    "--database-url" => url = Some(flag.value()?),
                    "--migrations" => dir = PathBuf::from(flag.value()?),
                    _ => return Err(flag.unknown(USAGE)),
                }
                Ok(())
            })?;
            let url = args::database_url(url)?;
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
        "account" => libero_cli::account::command(rest).await,
        "adopt" => libero_cli::adopt::command(rest).await,
        "analytics" => libero_cli::analytics::command(rest).await,
        "push" => libero_cli::push::command(rest),
        "-h" | "--help" | "help" => {
            println!("usage:\n{USAGE}");
            println!("{}", libero_cli::adopt::USAGE);
            println!("{}", libero_cli::analytics::USAGE);
            println!("{}", libero_cli::account::USAGE);
            println!("{}", libero_cli::push::USAGE);
            Ok(())
        }
        other => bail!("unknown command {other:?}\nusage:\n{USAGE}"),
    }
}
