//! `libero-host`: serves the Spin app where `spin` is not installed.
//!
//! ```text
//! libero-host serve [--manifest spin.toml] [--listen 127.0.0.1:3000] [--quiet]
//! ```
//!
//! `serve` reads variables from `SPIN_VARIABLE_<NAME>` like `spin up`. Migrations are the
//! operator CLI's job (`libero migrate`, in `cli/`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use libero_host as host;

const USAGE: &str = "usage:
  libero-host serve [--manifest spin.toml] [--listen 127.0.0.1:3000] [--quiet]";

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
            let args = Args::parse(rest, &["--manifest", "--listen"], &["--quiet"])?;
            let manifest = PathBuf::from(args.values.get("--manifest").map_or("spin.toml", String::as_str));
            let listen: SocketAddr = args
                .values
                .get("--listen")
                .map_or("127.0.0.1:3000", String::as_str)
                .parse()
                .context("--listen must be an address like 127.0.0.1:3000")?;
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
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
