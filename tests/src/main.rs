//! `libero-host`: serves the Spin app where `spin` is not installed, and applies the
//! migrations.
//!
//! ```text
//! libero-host serve [--manifest spin.toml] [--listen 127.0.0.1:3000] [--migrate]
//! libero-host migrate --database-url URL [--migrations DIR]
//! ```
//!
//! `serve` reads variables from `SPIN_VARIABLE_<NAME>` like `spin up`; with `--migrate`
//! it first applies the migrations (from `migrations/` beside the manifest) to the
//! database in the `database_url` variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libero_tests::{db, host};

const USAGE: &str = "usage:
  libero-host serve [--manifest spin.toml] [--listen 127.0.0.1:3000] [--migrate] [--quiet]
  libero-host migrate --database-url URL [--migrations DIR]";

#[tokio::main]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("libero-host: {e:#}");
        std::process::exit(1);
    }
}

/// `--name value` and `--flag` arguments after the subcommand.
struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse(args: &[String], valued: &[&str], flags: &[&str]) -> Result<Self> {
        let mut out = Args { values: HashMap::new(), flags: Vec::new() };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            if valued.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().with_context(|| format!("{name} needs a value"))?.clone(),
                };
                out.values.insert(name.to_string(), value);
            } else if flags.contains(&name) {
                out.flags.push(name.to_string());
            } else {
                bail!("unknown argument {arg:?}\n{USAGE}");
            }
        }
        Ok(out)
    }
}

async fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else { bail!("{USAGE}") };
    match command.as_str() {
        "serve" => {
            let args = Args::parse(rest, &["--manifest", "--listen"], &["--migrate", "--quiet"])?;
            let manifest = PathBuf::from(args.values.get("--manifest").map_or("spin.toml", String::as_str));
            let listen: SocketAddr = args
                .values
                .get("--listen")
                .map_or("127.0.0.1:3000", String::as_str)
                .parse()
                .context("--listen must be an address like 127.0.0.1:3000")?;
            if args.flags.iter().any(|f| f == "--migrate") {
                let url = std::env::var("SPIN_VARIABLE_DATABASE_URL")
                    .context("--migrate needs SPIN_VARIABLE_DATABASE_URL (the database_url variable)")?;
                let base = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let dir = base.join("migrations");
                for m in db::migrate_dir(&url, &dir).await? {
                    eprintln!("applied migration {}_{}", m.version, m.name);
                }
            }
            let mut options = host::AppOptions::new(manifest);
            options.listen = listen;
            options.env_variables = true;
            options.echo_logs = !args.flags.iter().any(|f| f == "--quiet");
            let app = host::start(options).await?;
            println!("listening on http://{}", app.addr);
            tokio::signal::ctrl_c().await?;
            app.shutdown().await;
            Ok(())
        }
        "migrate" => {
            let args = Args::parse(rest, &["--database-url", "--migrations"], &[])?;
            let url = match args.values.get("--database-url") {
                Some(u) => u.clone(),
                None => std::env::var("DATABASE_URL").context("give --database-url or set DATABASE_URL")?,
            };
            let dir = args.values.get("--migrations").map(PathBuf::from).unwrap_or_else(db::migrations_dir);
            let applied = db::migrate_dir(&url, &dir).await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for m in applied {
                println!("applied {}_{}", m.version, m.name);
            }
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
