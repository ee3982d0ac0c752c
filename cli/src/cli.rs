//! The `libero` command line: its commands, their flags and their help, as clap reads
//! them. Each command's flags are declared beside its code; this is the tree.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::{account, adopt, analytics, migrate, push, runtime_config, stripe};

/// The operator's commands: migrations, adopting the old app's database, Stripe, support
/// requests, analytics and Web Push keys.
///
/// A setting not given as a flag is read from the environment, as `spin up` would see it:
/// the database from DATABASE_URL, else SPIN_VARIABLE_DATABASE_URL; the Stripe key from
/// STRIPE_SECRET_KEY, else SPIN_VARIABLE_STRIPE_SECRET_KEY; Stripe's address from
/// STRIPE_API_BASE, else SPIN_VARIABLE_STRIPE_API_BASE.
#[derive(Parser, Debug)]
#[command(name = "libero", version, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply migrations/*.sql not yet recorded in supabase_migrations.schema_migrations
    ///
    /// Each file once, in filename order, each in a transaction with its record, as the
    /// Supabase CLI does: `supabase db push` and this runner never apply a file twice.
    Migrate(migrate::MigrateArgs),
    /// Bring a live database of the old app to the migrations' schema, keeping every user's rows
    ///
    /// The old app's database (user_profiles, sessions, custom_protocols and the Stripe
    /// template's tables) is brought to the migrations' schema in one transaction, keeping
    /// every user's tokens, progress, history, protocols and Stripe rows (docs/adopt.md). An
    /// unrecognised object stops it before anything changes. A second run is a no-op.
    Adopt(adopt::AdoptArgs),
    /// The service's figures per UTC day, from the analytics_* views
    ///
    /// Active users, sessions, revenue and refunds, token flows, AI and tts usage, plans and
    /// churn, as tables or CSV.
    Analytics(analytics::Options),
    /// Stripe: make the account match the catalog, or apply the events the webhook missed
    #[command(subcommand)]
    Stripe(stripe::Command),
    /// Support requests: export or delete a user's account, as the account endpoint does
    #[command(subcommand)]
    Account(account::Command),
    /// Web Push reminders' keys
    #[command(subcommand)]
    Push(push::Command),
    /// Write a Spin runtime config holding every setting, so requests read none from the environment
    ///
    /// Its static variables provider holds each setting's value from SPIN_VARIABLE_<NAME>, or
    /// its default. Spin 4 answers a setting from the environment at a cost in CPU on every
    /// request; from this file, from memory (docs/deploy.md, "Settings from a runtime
    /// config"). Its values win over the environment: write it again after changing one.
    RuntimeConfig(runtime_config::RuntimeConfigArgs),
    /// Print the completion script of a shell
    ///
    /// For example `libero completions bash > ~/.local/share/bash-completion/completions/libero`,
    /// `libero completions zsh > "${fpath[1]}/_libero"`, or
    /// `libero completions fish > ~/.config/fish/completions/libero.fish`.
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The shells `libero completions` writes for.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Cli {
    /// Runs the command. Usage mistakes never get here: clap reports them (exit code 2).
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Migrate(args) => migrate::command(args).await,
            Command::Adopt(args) => adopt::command(args).await,
            Command::Analytics(options) => analytics::command(options).await,
            Command::Stripe(command) => stripe::command(command).await,
            Command::Account(command) => account::command(command).await,
            Command::Push(command) => push::command(command),
            Command::RuntimeConfig(args) => runtime_config::command(args),
            Command::Completions { shell } => {
                completions(shell, &mut std::io::stdout());
                Ok(())
            }
        }
    }
}

/// Writes `shell`'s completion script for `libero` to `out`.
pub fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "libero", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        // clap's own checks: no two flags of one name, every default valid, ...
        Cli::command().debug_assert();
    }

    #[test]
    fn a_value_may_follow_its_flag_or_an_equals_sign_and_the_last_one_counts() {
        let parsed = |args: &[&str]| match Cli::try_parse_from(["libero", "migrate"].iter().chain(args)) {
            Ok(Cli { command: Command::Migrate(args) }) => args,
            other => panic!("{other:?}"),
        };
        assert_eq!(parsed(&["--database-url", "a=b"]).database.database_url.as_deref(), Some("a=b"));
        assert_eq!(parsed(&["--database-url=x", "--database-url", "y"]).database.database_url.as_deref(), Some("y"));
        assert_eq!(parsed(&[]).migrations, std::path::PathBuf::from("migrations"));
        assert_eq!(parsed(&["--migrations=m"]).migrations, std::path::PathBuf::from("m"));
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_which() {
        for (args, kind, says) in [
            (&["migrate", "--nope"][..], clap::error::ErrorKind::UnknownArgument, "'--nope'"),
            (&["migrate", "--database-url"], clap::error::ErrorKind::InvalidValue, "--database-url"),
            (&["adopt", "--dry-run=yes"], clap::error::ErrorKind::TooManyValues, "--dry-run"),
            (&["analytics", "--days", "3661"], clap::error::ErrorKind::ValueValidation, "--days"),
            (&["stripe", "reconcile", "--max-events=x"], clap::error::ErrorKind::ValueValidation, "--max-events"),
            (&["account", "export", "nope"], clap::error::ErrorKind::ValueValidation, "the user id is a UUID"),
            (&["push"], clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, "keys"),
            (&["migrat"], clap::error::ErrorKind::InvalidSubcommand, "'migrate'"),
            (&["completions", "tcsh"], clap::error::ErrorKind::InvalidValue, "bash"),
        ] {
            let error = Cli::try_parse_from(["libero"].iter().chain(args)).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(says), "{args:?}: {error}");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
