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

use crate::args::{env, Database, StripeApi};
use serde_json::Value;

use crate::pg;

/// `libero stripe`'s commands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Make the Stripe account match the catalog, then store the price ids in the database for checkout
    ///
    /// The catalog is shared/src/stripe/catalog.rs: products, prices (by lookup key) and the
    /// Billing Portal configuration. Running it again changes nothing.
    ///
    /// The Stripe key: STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY (a live key
    /// needs --live).
    Sync(SyncArgs),
    /// Apply the Stripe events the webhook missed, and re-read stale subscriptions
    ///
    /// GET /v1/events from the stored cursor, each event applied exactly once; runs until
    /// nothing is left (--once: one bounded run, as the endpoint does), printing its progress
    /// after each run. Safe to stop at any moment: the next run carries on. Reads Stripe,
    /// never writes it.
    ///
    /// The Stripe key: STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY.
    Reconcile(reconcile::ReconcileArgs),
}

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

/// `libero stripe sync`'s flags.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct SyncArgs {
    /// Say what would change, write nothing (no database needed)
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a live key to change the live account
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub database: Database,
    #[command(flatten)]
    pub stripe: StripeApi,
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
    pub(crate) fn from_env(api: StripeApi) -> Result<Account> {
        let key = env(&["STRIPE_SECRET_KEY", "SPIN_VARIABLE_STRIPE_SECRET_KEY"])
            .context("set STRIPE_SECRET_KEY (or SPIN_VARIABLE_STRIPE_SECRET_KEY) to the account's secret key")?;
        let mode = key_mode(&key)?;
        let base = api.base().unwrap_or_else(|| STRIPE_API_BASE.default.unwrap_or_default().to_string());
        Ok(Account { key, mode, base })
    }

    /// What the shared Stripe client reads from its platform.
    pub(crate) fn variables(self) -> HashMap<String, String> {
        HashMap::from([("stripe_secret_key".to_string(), self.key), ("stripe_api_base".to_string(), self.base)])
    }
}

/// `libero stripe <command>`.
pub async fn command(command: Command) -> Result<()> {
    match command {
        Command::Sync(args) => sync_command(args).await,
        Command::Reconcile(args) => reconcile::command(args).await,
    }
}

async fn sync_command(args: SyncArgs) -> Result<()> {
    let account = Account::from_env(args.stripe.clone())?;
    if account.mode == KeyMode::Live && !args.live && !args.dry_run {
        bail!("that is a live key: this would change the live account. Add --live if that is what you mean (or --dry-run to look first)");
    }

    // The database is checked before Stripe is touched, so a wrong address changes nothing.
    let database = if args.dry_run {
        None
    } else {
        // (The price ids are stored there for checkout.)
        let url = args.database.clone().url()?;
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
    use clap::Parser;

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
        let parse = |args: &[&str]| match crate::cli::Cli::try_parse_from(["libero", "stripe"].iter().chain(args)) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Stripe(command) }) => Ok(command),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let parsed = parse(&["sync", "--dry-run", "--database-url=postgres://x", "--api-base", "http://s"]).unwrap();
        let Command::Sync(parsed) = parsed else { panic!("{parsed:?}") };
        assert!(parsed.dry_run && !parsed.live);
        assert_eq!(parsed.database.database_url.as_deref(), Some("postgres://x"));
        assert_eq!(parsed.stripe.api_base.as_deref(), Some("http://s"));
        for bad in [&["sync", "--live=yes"][..], &["sync", "--nope"], &["sync", "extra"], &[], &["resync"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
