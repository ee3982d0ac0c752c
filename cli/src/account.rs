//! `libero account export|delete <user-id>`: the operator's side of the `account`
//! endpoint, for support requests. Both run the endpoint's own code
//! (`libero_shared::account`) in this process, straight against Postgres and Stripe: the
//! same SQL functions, and for a deletion the same Stripe steps in the same order
//! (cancel the live subscriptions, delete the customer, then the one statement that
//! deletes the account).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use libero_shared::{account, validate};

use crate::args::{env, Database, StripeApi};
use crate::pg;
use crate::stripe::http::CliPlatform;
use crate::stripe::reconcile::{describe, DbPlatform};

/// `libero account`'s commands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Print everything the server holds about the user: the JSON document GET /account/export answers
    Export {
        /// The user's id (a UUID)
        #[arg(value_name = "USER_ID", value_parser = user_id)]
        user: String,
        #[command(flatten)]
        database: Database,
    },
    /// What DELETE /account does: cancel the user's live Stripe subscriptions, delete their Stripe customers, then delete the account
    ///
    /// Financial records are kept, detached from the user. Running it again finishes an
    /// interrupted deletion and changes nothing after a complete one.
    ///
    /// The Stripe key: STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY (needed only
    /// when the user has a Stripe customer).
    Delete {
        /// The user's id (a UUID)
        #[arg(value_name = "USER_ID", value_parser = user_id)]
        user: String,
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        stripe: StripeApi,
    },
}

/// A user id as the database stores it: a UUID, in lower case.
fn user_id(given: &str) -> Result<String, String> {
    if validate::is_uuid(given) {
        Ok(given.to_ascii_lowercase())
    } else {
        Err(format!("the user id is a UUID, not {given:?}"))
    }
}

/// `libero account <command>`.
pub async fn command(command: Command) -> Result<()> {
    let (delete, user, database, stripe) = match command {
        Command::Export { user, database } => (false, user, database, StripeApi::default()),
        Command::Delete { user, database, stripe } => (true, user, database, stripe),
    };
    let url = database.url()?;
    let client = pg::connect(&url).await?;
    let ready: bool =
        client.query_one("select to_regprocedure('public.account_delete(uuid)') is not null", &[]).await?.get(0);
    if !ready {
        bail!("the database has no account functions yet: run `libero migrate` first");
    }
    // The Stripe settings the components read, when they are set (a user without a
    // Stripe customer needs none).
    let mut variables = HashMap::new();
    if let Some(key) = env(&["STRIPE_SECRET_KEY", "SPIN_VARIABLE_STRIPE_SECRET_KEY"]) {
        variables.insert("stripe_secret_key".to_string(), key);
    }
    if let Some(base) = stripe.base() {
        variables.insert("stripe_api_base".to_string(), base);
    }
    let handle = tokio::runtime::Handle::current();
    // The shared logic is blocking (as in a component): off the async thread.
    tokio::task::spawn_blocking(move || {
        let platform = DbPlatform { http: CliPlatform::new(variables), db: client, handle };
        if delete {
            let cleanup = account::delete(&platform, &user).map_err(describe)?;
            println!(
                "deleted account {user}: {} subscription(s) cancelled ({}), {} Stripe customer(s) deleted ({})",
                cleanup.subscriptions_cancelled.len(),
                cleanup.subscriptions_cancelled.join(", "),
                cleanup.customers_deleted.len(),
                cleanup.customers_deleted.join(", "),
            );
        } else {
            let document = account::export(&platform, &user).map_err(describe)?;
            println!("{}", serde_json::Value::Object(document));
        }
        anyhow::Ok(())
    })
    .await?
    .context(if delete {
        "stopped; nothing was deleted in the database, and running it again continues"
    } else {
        "export failed"
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        match crate::cli::Cli::try_parse_from(["libero", "account"].iter().chain(args))?.command {
            crate::cli::Command::Account(command) => Ok(command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arguments_parse() {
        let id = "3F2A9C4E-1B7D-4C2E-9A6F-0E8D5B1C2A34";
        let parsed = parse(&["export", id, "--database-url=postgres://x"]).unwrap();
        assert_eq!(
            parsed,
            Command::Export {
                user: "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34".into(),
                database: Database { database_url: Some("postgres://x".into()) }
            }
        );
        let Command::Delete { stripe, .. } = parse(&["delete", "--api-base", "http://s", id]).unwrap() else {
            panic!("a deletion")
        };
        assert_eq!(stripe.api_base.as_deref(), Some("http://s"));
        for bad in [&["export", "not-a-uuid"][..], &["export", id, id], &["delete", id, "--live"], &["export"], &[id]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
