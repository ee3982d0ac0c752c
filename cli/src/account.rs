//! `libero account export|delete <user-id>`: the operator's side of the `account`
//! endpoint, for support requests. Both run the endpoint's own code
//! (`libero_shared::account`) in this process, straight against Postgres and Stripe: the
//! same SQL functions, and for a deletion the same Stripe steps in the same order
//! (cancel the live subscriptions, delete the customer, then the one statement that
//! deletes the account).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use libero_shared::{account, validate};

use crate::args::env;
use crate::pg;
use crate::stripe::http::CliPlatform;
use crate::stripe::reconcile::{describe, DbPlatform};

pub const USAGE: &str = "  libero account export <user-id> [--database-url URL]
      print everything the server holds about the user: the JSON document
      GET /account/export answers
  libero account delete <user-id> [--database-url URL] [--api-base URL]
      what DELETE /account does: cancel the user's live Stripe subscriptions, delete their
      Stripe customers, then delete the account (financial records kept, detached).
      Running it again finishes an interrupted deletion and changes nothing after a
      complete one.
      key: STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY (needed only when the
      user has a Stripe customer)
      URL: --database-url, else DATABASE_URL, else SPIN_VARIABLE_DATABASE_URL";

#[derive(Debug, Default, PartialEq)]
struct Args {
    user: Option<String>,
    database_url: Option<String>,
    api_base: Option<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args::default();
    crate::args::each(args, |mut flag| {
        match flag.name {
            "--database-url" => out.database_url = Some(flag.value()?),
            "--api-base" => out.api_base = Some(flag.value()?),
            name if !name.starts_with('-') && out.user.is_none() => {
                if !validate::is_uuid(name) {
                    bail!("the user id is a UUID, not {name:?}");
                }
                out.user = Some(name.to_ascii_lowercase());
            }
            _ => return Err(flag.unknown(USAGE)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// `libero account <args>`.
pub async fn command(args: &[String]) -> Result<()> {
    let (delete, rest) = match args.split_first() {
        Some((sub, rest)) if sub == "export" => (false, rest),
        Some((sub, rest)) if sub == "delete" => (true, rest),
        _ => bail!("usage:\n{USAGE}"),
    };
    let args = parse(rest)?;
    let user = args.user.with_context(|| format!("which user? usage:\n{USAGE}"))?;
    let url = crate::args::database_url(args.database_url)?;
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
    if let Some(base) = args.api_base.or_else(|| env(&["STRIPE_API_BASE", "SPIN_VARIABLE_STRIPE_API_BASE"])) {
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
    use super::*;

    #[test]
    fn arguments_parse() {
        let id = "3F2A9C4E-1B7D-4C2E-9A6F-0E8D5B1C2A34";
        let parsed = parse(&[id.to_string(), "--database-url=postgres://x".into()]).unwrap();
        assert_eq!(parsed.user.as_deref(), Some("3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34"));
        assert_eq!(parsed.database_url.as_deref(), Some("postgres://x"));
        for bad in [vec!["not-a-uuid"], vec![id, id], vec!["--live"]] {
            let bad: Vec<String> = bad.into_iter().map(String::from).collect();
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
