//! The settings every command finds the same way: a flag, else the environment as
//! `spin up` would see it (the first of its names that is set and not empty). The flags
//! themselves are parsed by clap (`cli.rs`); these are the ones several commands share.

use anyhow::{Context, Result};

/// The first of these environment variables that is set and not empty.
pub fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The database: `--database-url`, else `DATABASE_URL`, else `SPIN_VARIABLE_DATABASE_URL`.
pub fn database_url(given: Option<String>) -> Result<String> {
    given
        .or_else(|| env(&["DATABASE_URL", "SPIN_VARIABLE_DATABASE_URL"]))
        .context("give --database-url, or set DATABASE_URL or SPIN_VARIABLE_DATABASE_URL")
}

/// `--database-url`, for every command that reads or writes Postgres.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct Database {
    /// The Postgres address [env: DATABASE_URL, else SPIN_VARIABLE_DATABASE_URL]
    ///
    /// TLS unless it says sslmode=disable.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

impl Database {
    /// The address given, else the one in the environment.
    pub fn url(self) -> Result<String> {
        database_url(self.database_url)
    }
}

/// `--api-base`, for every command that talks to Stripe.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct StripeApi {
    /// Stripe's API address [env: STRIPE_API_BASE, else SPIN_VARIABLE_STRIPE_API_BASE; default: Stripe's]
    #[arg(long, value_name = "URL")]
    pub api_base: Option<String>,
}

impl StripeApi {
    /// The address given, else the one in the environment (`None`: Stripe's own).
    pub fn base(self) -> Option<String> {
        self.api_base.or_else(|| env(&["STRIPE_API_BASE", "SPIN_VARIABLE_STRIPE_API_BASE"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_address_wins_over_the_environment() {
        // The environment is the test process's: only the flag's side is asserted.
        assert_eq!(database_url(Some("postgres://given".into())).unwrap(), "postgres://given");
        let api = StripeApi { api_base: Some("http://given".into()) };
        assert_eq!(api.base().as_deref(), Some("http://given"));
    }
}
