//! `libero stripe sync`: the catalog as code. Creates (or brings in line) the Stripe
//! products, prices and Billing Portal configuration of
//! `libero_shared::stripe::catalog`, then stores the price ids checkout sells in
//! Postgres (`stripe_catalog_prices`, `migrations/20250106300000_stripe_catalog.sql`).
//! See [`sync`] for how objects are found again and replaced, and docs/stripe.md.

pub mod http;
pub mod reconcile;
pub mod sync;

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use libero_shared::settings::STRIPE_API_BASE;

use crate::args::env;
use serde_json::Value;

use crate::pg;

pub const USAGE: &str = "  libero stripe sync [--dry-run] [--live] [--database-url URL] [--api-base URL]
      make the Stripe account match the catalog (shared/src/stripe/catalog.rs): products,
      prices (by lookup key) and the Billing Portal configuration; then store the price ids
      in the database for checkout. Running it again changes nothing.
      key: STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY (a live key needs --live)
      URL: --database-url, else DATABASE_URL, else SPIN_VARIABLE_DATABASE_URL
      --dry-run: say what would change, write nothing (no database needed)";

/// Which Stripe mode a secret key works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    Test,
    Live,
}

/// The mode of a secret (`sk_`) or restricted (`rk_`) key; anything else (a publishable
/// key, a webhook secret) is refused.
pub fn key_mode(key: &str) -> Result<KeyMode> {
    if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
        Ok(KeyMode::Test)
    } else if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
        Ok(KeyMode::Live)
    } else {
        bail!("the Stripe key is not a secret key (sk_test_…, sk_live_…, or a restricted rk_…)")
    }
}

#[derive(Debug, Default)]
struct SyncArgs {
    dry_run: bool,
    live: bool,
    database_url: Option<String>,
    api_base: Option<String>,
}

fn parse(args: &[String]) -> Result<SyncArgs> {
    let mut out = SyncArgs::default();
    crate::args::each(args, |mut flag| {
        match flag.name {
            "--dry-run" => out.dry_run = flag.switch()?,
            "--live" => out.live = flag.switch()?,
            "--database-url" => out.database_url = Some(flag.value()?),
            "--api-base" => out.api_base = Some(flag.value()?),
            _ => return Err(flag.unknown(USAGE)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// The account the commands work on: its secret key (`STRIPE_SECRET_KEY`, else
/// `SPIN_VARIABLE_STRIPE_SECRET_KEY`), the key's mode, and the API's address
/// (`--api-base`, else `STRIPE_API_BASE`, else `SPIN_VARIABLE_STRIPE_API_BASE`, else Stripe's).
pub(crate) struct Account {
    key: String,
    mode: KeyMode,
    base: String,
}

impl Account {
    pub(crate) fn from_env(api_base: Option<String>) -> Result<Account> {
        let key = env(&["STRIPE_SECRET_KEY", "SPIN_VARIABLE_STRIPE_SECRET_KEY"])
            .context("set STRIPE_SECRET_KEY (or SPIN_VARIABLE_STRIPE_SECRET_KEY) to the account's secret key")?;
        let mode = key_mode(&key)?;
        let base = api_base
            .or_else(|| env(&["STRIPE_API_BASE", "SPIN_VARIABLE_STRIPE_API_BASE"]))
            .unwrap_or_else(|| STRIPE_API_BASE.default.unwrap_or_default().to_string());
        Ok(Account { key, mode, base })
    }

    /// What the shared Stripe client reads from its platform.
    pub(crate) fn variables(self) -> HashMap<String, String> {
        HashMap::from([("stripe_secret_key".to_string(), self.key), ("stripe_api_base".to_string(), self.base)])
    }
}

/// `libero stripe <args>`.
pub async fn command(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((sub, rest)) if sub == "sync" => sync_command(parse(rest)?).await,
        Some((sub, rest)) if sub == "reconcile" => reconcile::command(rest).await,
        _ => bail!("usage:\n{USAGE}\n{}", reconcile::USAGE),
    }
}

async fn sync_command(args: SyncArgs) -> Result<()> {
    let account = Account::from_env(args.api_base.clone())?;
    if account.mode == KeyMode::Live && !args.live && !args.dry_run {
        bail!("that is a live key: this would change the live account. Add --live if that is what you mean (or --dry-run to look first)");
    }

    // The database is checked before Stripe is touched, so a wrong address changes nothing.
    let database = if args.dry_run {
        None
    } else {
        // (The price ids are stored there for checkout.)
        let url = crate::args::database_url(args.database_url.clone())?;
        let client = pg::connect(&url).await?;
        let ready: bool = client
            .query_one("select to_regprocedure('public.stripe_catalog_store(jsonb, jsonb)') is not null", &[])
            .await?
            .get(0);
        if !ready {
            bail!("the database has no Stripe catalog yet: run `libero migrate` first");
        }
        Some(client)
    };

    let what = match account.mode {
        KeyMode::Test => "test mode",
        KeyMode::Live => "LIVE mode",
    };
    println!(
        "stripe sync: {what}, {}{}",
        account.base,
        if args.dry_run { " (dry run: nothing is written)" } else { "" }
    );
    let variables = account.variables();
    let dry_run = args.dry_run;
    // Stripe's client is blocking: off the async thread.
    let synced = tokio::task::spawn_blocking(move || {
        let platform = http::CliPlatform::new(variables);
        sync::sync(&platform, dry_run, &mut |line| println!("{line}"))
    })
    .await?
    .context("stopped; what was done above stays done, and running `libero stripe sync` again finishes the rest")?;

    let Some(client) = database else {
        println!(
            "database: would store {} price(s){}",
            synced.rows.len(),
            if synced.portal.is_some() { " and the portal configuration" } else { "" }
        );
        println!("dry run: {} change(s) to make in Stripe; nothing was written", synced.changes);
        return Ok(());
    };
    let prices = Value::from(synced.rows.clone()).to_string();
    let portal = synced.portal.as_ref().map(Value::to_string);
    let stored: Value = {
        let row = client
            .query_one(
                "select public.stripe_catalog_store($1::text::jsonb, $2::text::jsonb)::text",
                &[&prices, &portal],
            )
            .await
            .context("storing the catalog's prices")?;
        serde_json::from_str(row.get::<_, &str>(0))?
    };
    let mut stored_changes = 0;
    for row in &synced.rows {
        let id = row["price_id"].as_str().unwrap_or("?");
        let outcome = stored["prices"][id].as_str().unwrap_or("?");
        let product = row["product_key"].as_str().unwrap_or("-");
        match outcome {
            "inserted" | "updated" => {
                stored_changes += 1;
                println!(
                    "database: price {product}: stored {id} ({})",
                    if row["active"] == true { "sold" } else { "archived" }
                );
            }
            "stale" => println!("database: price {product}: {id} kept (the webhook stored a later read)"),
            _ => {}
        }
    }
    match stored["portal"].as_str() {
        Some("inserted" | "updated") => {
            stored_changes += 1;
            let id = synced.portal.as_ref().and_then(|p| p["configuration_id"].as_str()).unwrap_or("?");
            println!("database: portal: stored {id}");
        }
        Some("stale") => println!("database: portal: kept (a later read is stored)"),
        _ => {}
    }
    if synced.changes == 0 && stored_changes == 0 {
        println!("nothing to change: Stripe and the database already match the catalog");
    } else {
        println!("done: {} change(s) in Stripe, {stored_changes} in the database", synced.changes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_say_their_mode() {
        assert_eq!(key_mode("sk_test_abc").unwrap(), KeyMode::Test);
        assert_eq!(key_mode("rk_test_abc").unwrap(), KeyMode::Test);
        assert_eq!(key_mode("sk_live_abc").unwrap(), KeyMode::Live);
        assert_eq!(key_mode("rk_live_abc").unwrap(), KeyMode::Live);
        for not_secret in ["pk_test_abc", "whsec_abc", "", "sk_abc"] {
            assert!(key_mode(not_secret).is_err(), "{not_secret}");
        }
    }

    #[test]
    fn arguments_parse() {
        let args: Vec<String> =
            ["--dry-run", "--database-url=postgres://x", "--api-base", "http://s"].map(String::from).to_vec();
        let parsed = parse(&args).unwrap();
        assert!(parsed.dry_run && !parsed.live);
        assert_eq!(parsed.database_url.as_deref(), Some("postgres://x"));
        assert_eq!(parsed.api_base.as_deref(), Some("http://s"));
        assert!(parse(&["--live=yes".to_string()]).is_err());
        assert!(parse(&["--nope".to_string()]).is_err());
    }
}
