//! `libero adopt`: brings the live database of the app this project replaces to the
//! state the migrations describe, keeping everything its users own (docs/adopt.md).
//!
//! That database already has `user_profiles`, `sessions`, `custom_protocols` and the
//! Stripe template's tables in `public`, of other shapes, so the first migration cannot
//! apply to it. Adoption, in one transaction:
//!
//! 1. reads `public` and refuses unless every object in it is one it recognises (the
//!    tables, columns, enums, views and sign-up trigger of [`LEGACY_TABLES`] and the
//!    constants below), naming what it does not recognise;
//! 2. moves those objects, unchanged, into the schema `libero_legacy` (kept: the way
//!    back, and the record of what each user had), and the old project's own entries of
//!    `supabase_migrations.schema_migrations` into `libero_legacy.schema_migrations`, so
//!    `supabase db push` sees only this project's history;
//! 3. applies every migration, as `libero migrate` does on a fresh database;
//! 4. copies each user's rows in with the fix-up rules of [`COPY`] (the rules are the SQL;
//!    docs/adopt.md says them in words), each user's balance as ledger rows;
//! 5. checks `tokens == sum(ledger)` for everyone and records the report in
//!    `libero_legacy.adoption`, so a second run finds it and changes nothing.
//!
//! `--dry-run` does all of that and rolls back: the report it prints is what the real run
//! will do, counted by the same statements.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use libero_shared::stripe::catalog::{ProductKind, PRODUCTS};
use tokio_postgres::Transaction;

use crate::migrate::{describe_pg_error, read_migrations};
use crate::pg;

/// Where the old objects go, unchanged.
pub const LEGACY_SCHEMA: &str = "libero_legacy";

/// The migration that creates the app's tables: recorded means this project's schema is
/// already there.
const ECONOMY_MIGRATION: &str = "20250101000100";

/// A table of the old database: each column it may have, with its type (`pg_type.typname`).
/// A column missing from the database is added to the moved table as null (and reported),
/// so an older revision of the same shape adopts too; any other column is unrecognised.
pub struct LegacyTable {
    pub name: &'static str,
    pub columns: &'static [(&'static str, &'static str)],
}

pub const LEGACY_TABLES: &[LegacyTable] = &[
    LegacyTable {
        name: "user_profiles",
        columns: &[
            ("id", "uuid"),
            ("email", "text"),
            ("display_name", "text"),
            ("level", "int4"),
            ("experience", "int4"),
            ("tokens", "int4"),
            ("session_streak", "int4"),
            ("last_session_date", "date"),
            ("ego_state_usage", "jsonb"),
            ("active_ego_state", "text"),
            ("onboarding_completed", "bool"),
            ("journey_goals", "jsonb"),
            ("journey_preferences", "jsonb"),
            ("settings", "jsonb"),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ],
    },
    LegacyTable {
        name: "custom_protocols",
        columns: &[
            ("id", "uuid"),
            ("user_id", "uuid"),
            ("name", "text"),
            ("description", "text"),
            ("induction", "text"),
            ("deepener", "text"),
            ("duration", "int4"),
            ("ego_state", "text"),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ],
    },
    LegacyTable {
        name: "sessions",
        columns: &[
            ("id", "uuid"),
            ("user_id", "uuid"),
            ("protocol_id", "uuid"),
            ("ego_state", "text"),
            ("action", "text"),
            // Seconds.
            ("duration", "int4"),
            ("experience_gained", "int4"),
            ("completed_at", "timestamptz"),
            ("created_at", "timestamptz"),
        ],
    },
    LegacyTable {
        name: "stripe_customers",
        columns: &[
            ("id", "int8"),
            ("user_id", "uuid"),
            ("customer_id", "text"),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
            ("deleted_at", "timestamptz"),
        ],
    },
    LegacyTable {
        name: "stripe_subscriptions",
        columns: &[
            ("id", "int8"),
            ("customer_id", "text"),
            ("subscription_id", "text"),
            ("price_id", "text"),
            ("current_period_start", "int8"),
            ("current_period_end", "int8"),
            ("cancel_at_period_end", "bool"),
            ("payment_method_brand", "text"),
            ("payment_method_last4", "text"),
            ("status", "stripe_subscription_status"),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
            ("deleted_at", "timestamptz"),
        ],
    },
    LegacyTable {
        name: "stripe_orders",
        columns: &[
            ("id", "int8"),
            ("checkout_session_id", "text"),
            ("payment_intent_id", "text"),
            ("customer_id", "text"),
            ("amount_subtotal", "int8"),
            ("amount_total", "int8"),
            ("currency", "text"),
            ("payment_status", "text"),
            ("status", "stripe_order_status"),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
            ("deleted_at", "timestamptz"),
        ],
    },
];

/// The Stripe template's views.
const LEGACY_VIEWS: &[&str] = &["stripe_user_subscriptions", "stripe_user_orders"];

/// The Stripe template's enums, with every label they may hold.
const LEGACY_ENUMS: &[(&str, &[&str])] = &[
    (
        "stripe_subscription_status",
        &[
            "not_started",
            "incomplete",
            "incomplete_expired",
            "trialing",
            "active",
            "past_due",
            "canceled",
            "unpaid",
            "paused",
        ],
    ),
    ("stripe_order_status", &["pending", "completed", "canceled"]),
];

/// Functions of the old app: the usual Supabase sign-up trigger's (its trigger on
/// `auth.users` is dropped: the migrations bring their own) and the common `updated_at`
/// helper.
const LEGACY_FUNCTIONS: &[&str] = &["handle_new_user", "update_updated_at_column"];

/// What adoption found and did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Adopted,
    DryRun,
    /// Adopted before: nothing changed.
    AlreadyAdopted,
    /// The project's schema is there without an adoption (`libero migrate` made it).
    AlreadyMigrated,
    /// Not the old app's database, or something in it is not recognised: nothing changed.
    Refused,
}

pub struct Report {
    pub outcome: Outcome,
    pub text: String,
}

/// `libero adopt`'s flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct AdoptArgs {
    /// Report exactly what it would move, fix and refuse, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    // The database and the migrations, as `libero migrate` takes them.
    #[command(flatten)]
    pub migrate: crate::migrate::MigrateArgs,
}

/// `libero adopt`: prints the report; a refusal is a failure.
pub async fn command(args: AdoptArgs) -> Result<()> {
    let url = args.migrate.database.url()?;
    let report = adopt(&url, &args.migrate.migrations, args.dry_run).await?;
    print!("{}", report.text);
    if report.outcome == Outcome::Refused {
        bail!("refused: nothing was changed");
    }
    Ok(())
}

/// Adopts the database at `url` (see the module's docs); with `dry_run`, rolls back.
pub async fn adopt(url: &str, migrations: &Path, dry_run: bool) -> Result<Report> {
    let migrations = read_migrations(migrations)?;
    if !migrations.iter().any(|m| m.version == ECONOMY_MIGRATION) {
        bail!(
            "the migrations directory has no {ECONOMY_MIGRATION}_*.sql: run from the repository or give --migrations"
        );
    }
    let mut client = pg::connect(url).await?;
    let mut tx = client.transaction().await?;
    // The same lock `libero migrate` takes: no migration runs while the schema moves.
    tx.batch_execute("select pg_advisory_xact_lock(hashtext('libero_migrate'))").await?;

    let adopted: bool = tx.query_one("select to_regclass('libero_legacy.adoption') is not null", &[]).await?.get(0);
    if adopted {
        let at: String = tx.query_one("select min(adopted_at)::text from libero_legacy.adoption", &[]).await?.get(0);
        return Ok(Report {
            outcome: Outcome::AlreadyAdopted,
            text: format!("already adopted at {at} (libero_legacy.adoption): nothing to change\n"),
        });
    }

    let migrated: bool = tx
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations') is not null
                and exists (select 1 from pg_tables where schemaname = 'supabase_migrations'
                             and tablename = 'schema_migrations')",
            &[],
        )
        .await?
        .get(0);
    if migrated {
        let ours: bool = tx
            .query_one(
                "select exists (select 1 from supabase_migrations.schema_migrations where version = $1)",
                &[&ECONOMY_MIGRATION],
            )
            .await?
            .get(0);
        if ours {
            return Ok(Report {
                outcome: Outcome::AlreadyMigrated,
                text: "this database already has the project's schema (libero migrate): nothing to adopt\n".into(),
            });
        }
    }

    let mut text = String::new();
    let found = inspect(&tx).await?;
    if !found.unrecognised.is_empty() || !found.has_profiles {
        if !found.has_profiles {
            writeln!(
                text,
                "no public.user_profiles: this is not the old app's database (a new one takes `libero migrate`)"
            )?;
        }
        if !found.unrecognised.is_empty() {
            writeln!(text, "not recognised (adoption moves only what it knows):")?;
            for u in &found.unrecognised {
                writeln!(text, "  {u}")?;
            }
        }
        writeln!(text, "refused: nothing was changed")?;
        return Ok(Report { outcome: Outcome::Refused, text });
    }

    writeln!(text, "recognised, moved unchanged to schema {LEGACY_SCHEMA}:")?;
    for r in &found.recognised {
        writeln!(text, "  {r}")?;
    }
    move_aside(&tx, &found).await?;
    // Migrations: the old project's own history moves aside, then ours apply.
    let history: bool =
        tx.query_one("select to_regclass('supabase_migrations.schema_migrations') is not null", &[]).await?.get(0);
    if history {
        let ours: Vec<String> = migrations.iter().map(|m| m.version.clone()).collect();
        tx.batch_execute(
            "create table libero_legacy.schema_migrations as
               select * from supabase_migrations.schema_migrations where false",
        )
        .await?;
        let moved = tx
            .execute(
                "with moved as (delete from supabase_migrations.schema_migrations
                                 where not (version = any($1)) returning *)
                 insert into libero_legacy.schema_migrations select * from moved",
                &[&ours],
            )
            .await?;
        if moved > 0 {
            writeln!(
                text,
                "  {moved} entries of the old project's own migration history (supabase_migrations.schema_migrations)"
            )?;
        }
    }
    let applied = crate::migrate::apply_pending(&mut tx, migrations).await?;
    writeln!(text, "migrations applied: {}", applied.len())?;

    writeln!(text, "rows (moved = copied into this project's tables; the originals stay in {LEGACY_SCHEMA}):")?;
    tx.batch_execute(&packages_sql()).await?;
    for copy in COPY {
        copy_table(&tx, copy, &mut text).await?;
    }

    let check = tx
        .query_one(
            "select (select count(*) from public.ledger_mismatches),
                    (select coalesce(sum(tokens), 0)::int8 from public.user_profiles),
                    (select coalesce(sum(delta), 0)::int8 from public.token_ledger)",
            &[],
        )
        .await?;
    let (mismatches, tokens, ledger): (i64, i64, i64) = (check.get(0), check.get(1), check.get(2));
    writeln!(text, "tokens: {tokens} in balances, {ledger} in the ledger, {mismatches} users whose balance differs")?;
    if mismatches != 0 || tokens != ledger {
        bail!("the ledger does not match the balances after copying: rolled back, nothing was changed\n{text}");
    }

    tx.execute(
        "create table libero_legacy.adoption (adopted_at timestamptz not null default now(), report text not null)",
        &[],
    )
    .await?;
    tx.execute("insert into libero_legacy.adoption (report) values ($1)", &[&text]).await?;

    // The checks deferred to commit (a balance without its ledger row) run now, so a dry
    // run, which never commits, meets them too.
    tx.batch_execute("set constraints all immediate")
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
        .context("checking the adopted rows (rolled back, nothing was changed)")?;
    if dry_run {
        tx.rollback().await?;
        writeln!(text, "dry run: rolled back, nothing was changed")?;
        return Ok(Report { outcome: Outcome::DryRun, text });
    }
    tx.commit()
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
        .context("committing the adoption (nothing was changed)")?;
    writeln!(text, "adopted: committed")?;
    Ok(Report { outcome: Outcome::Adopted, text })
}

/// What `public` holds, sorted into what adoption knows and what it does not.
struct Found {
    has_profiles: bool,
    /// Tables present, with the known columns they lack.
    tables: Vec<(&'static LegacyTable, Vec<&'static str>)>,
    views: Vec<String>,
    enums: Vec<String>,
    /// `name(args)` of each legacy function.
    functions: Vec<String>,
    /// Triggers on `auth.users` that call a legacy function.
    auth_triggers: Vec<String>,
    recognised: Vec<String>,
    unrecognised: Vec<String>,
}

async fn inspect(tx: &Transaction<'_>) -> Result<Found> {
    let mut f = Found {
        has_profiles: false,
        tables: vec![],
        views: vec![],
        enums: vec![],
        functions: vec![],
        auth_triggers: vec![],
        recognised: vec![],
        unrecognised: vec![],
    };
    // Objects an extension owns (pgcrypto installed into public, ...) are the extension's.
    let not_extension = "not exists (select 1 from pg_depend d where d.objid = c.oid and d.deptype = 'e')";
    let relations = tx
        .query(
            &format!(
                "select c.relname::text, c.relkind::text, c.reltuples::int8 from pg_class c
                  where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
                    and {not_extension}
                    -- Sequences of identity and serial columns go with their table.
                    and not (c.relkind = 'S' and exists (select 1 from pg_depend d where d.objid = c.oid
                                                         and d.deptype in ('a', 'i')))
                  order by 1"
            ),
            &[],
        )
        .await?;
    for r in &relations {
        let (name, kind): (String, String) = (r.get(0), r.get(1));
        match (kind.as_str(), LEGACY_TABLES.iter().find(|t| t.name == name)) {
            ("r", Some(table)) => {
                let cols = tx
                    .query(
                        "select a.attname::text, t.typname::text from pg_attribute a join pg_type t on t.oid = a.atttypid
                          where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped order by a.attnum",
                        &[&format!("public.{name}")],
                    )
                    .await?;
                let mut ok = true;
                for c in &cols {
                    let (col, ty): (String, String) = (c.get(0), c.get(1));
                    match table.columns.iter().find(|(n, _)| *n == col) {
                        Some((_, want)) if *want == ty => {}
                        Some((_, want)) => {
                            ok = false;
                            f.unrecognised.push(format!("column {name}.{col} is {ty}, not {want}"));
                        }
                        None => {
                            ok = false;
                            f.unrecognised.push(format!("column {name}.{col} ({ty})"));
                        }
                    }
                }
                let missing: Vec<&'static str> = table
                    .columns
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| !cols.iter().any(|c| c.get::<_, String>(0) == *n))
                    .collect();
                if ok {
                    let present = table.columns.len() - missing.len();
                    let mut line = format!("table {name}: {present} of {} known columns", table.columns.len());
                    if !missing.is_empty() {
                        write!(line, " (absent, taken as null: {})", missing.join(", "))?;
                    }
                    f.recognised.push(line);
                    f.has_profiles |= name == "user_profiles";
                    f.tables.push((table, missing));
                }
            }
            ("v", None) if LEGACY_VIEWS.contains(&name.as_str()) => {
                f.recognised.push(format!("view {name}"));
                f.views.push(name);
            }
            (kind, _) => {
                let what = match kind {
                    "r" | "p" => "table",
                    "v" => "view",
                    "m" => "materialized view",
                    "f" => "foreign table",
                    _ => "sequence",
                };
                f.unrecognised.push(format!("{what} public.{name}"));
            }
        }
    }

    let types = tx
        .query(
            &format!(
                "select c.typname::text, c.typtype::text,
                        coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder)
                                    from pg_enum e where e.enumtypid = c.oid), '{{}}')
                   from pg_type c
                  where c.typnamespace = 'public'::regnamespace and {not_extension}
                    and c.typcategory <> 'A'
                    -- A table's or view's row type goes with it.
                    and (c.typrelid = 0 or (select r.relkind from pg_class r where r.oid = c.typrelid) = 'c')
                  order by 1"
            ),
            &[],
        )
        .await?;
    for t in &types {
        let (name, kind, labels): (String, String, Vec<String>) = (t.get(0), t.get(1), t.get(2));
        match LEGACY_ENUMS.iter().find(|(n, _)| *n == name) {
            Some((_, known)) if kind == "e" && labels.iter().all(|l| known.contains(&l.as_str())) => {
                f.recognised.push(format!("enum {name} ({})", labels.join(", ")));
                f.enums.push(name);
            }
            Some(_) if kind == "e" => f.unrecognised.push(format!("enum public.{name} with labels {labels:?}")),
            _ => f.unrecognised.push(format!("type public.{name}")),
        }
    }

    let functions = tx
        .query(
            &format!(
                "select c.proname::text, c.oid::regprocedure::text from pg_proc c
                  where c.pronamespace = 'public'::regnamespace and {not_extension} order by 2"
            ),
            &[],
        )
        .await?;
    for p in &functions {
        let (name, signature): (String, String) = (p.get(0), p.get(1));
        if LEGACY_FUNCTIONS.contains(&name.as_str()) {
            f.recognised.push(format!("function {signature}"));
            f.functions.push(signature);
        } else {
            f.unrecognised.push(format!("function public.{signature}"));
        }
    }

    let triggers = tx
        .query(
            "select t.tgname::text, p.proname::text from pg_trigger t join pg_proc p on p.oid = t.tgfoid
              where t.tgrelid = to_regclass('auth.users') and not t.tgisinternal
                and p.pronamespace = 'public'::regnamespace order by 1",
            &[],
        )
        .await?;
    for t in &triggers {
        let (name, function): (String, String) = (t.get(0), t.get(1));
        if LEGACY_FUNCTIONS.contains(&function.as_str()) {
            f.recognised.push(format!("trigger {name} on auth.users (calls {function}; dropped)"));
            f.auth_triggers.push(name);
        } else {
            f.unrecognised.push(format!("trigger {name} on auth.users (calls public.{function})"));
        }
    }
    Ok(f)
}

/// Moves every recognised object into `libero_legacy` and gives the tables any known
/// column they lack (as null), so the copy reads one shape.
async fn move_aside(tx: &Transaction<'_>, f: &Found) -> Result<()> {
    let mut sql = format!(
        "create schema {LEGACY_SCHEMA};
         comment on schema {LEGACY_SCHEMA} is 'The old app''s objects, as they were before libero adopt (docs/adopt.md).';
         revoke all on schema {LEGACY_SCHEMA} from public;\n"
    );
    for t in &f.auth_triggers {
        writeln!(sql, "drop trigger \"{t}\" on auth.users;")?;
    }
    for v in &f.views {
        writeln!(sql, "alter view public.\"{v}\" set schema {LEGACY_SCHEMA};")?;
    }
    for (t, _) in &f.tables {
        writeln!(sql, "alter table public.\"{}\" set schema {LEGACY_SCHEMA};", t.name)?;
    }
    for e in &f.enums {
        writeln!(sql, "alter type public.\"{e}\" set schema {LEGACY_SCHEMA};")?;
    }
    for p in &f.functions {
        writeln!(sql, "alter function public.{p} set schema {LEGACY_SCHEMA};")?;
    }
    for table in LEGACY_TABLES {
        let missing: Vec<&str> = match f.tables.iter().find(|(t, _)| t.name == table.name) {
            Some((_, missing)) => missing.clone(),
            None => {
                writeln!(sql, "create table {LEGACY_SCHEMA}.\"{}\" ();", table.name)?;
                table.columns.iter().map(|(n, _)| *n).collect()
            }
        };
        for col in missing {
            let ty = table.columns.iter().find(|(n, _)| *n == col).map(|(_, t)| *t).unwrap();
            // A missing enum column reads as its labels.
            let ty = if ty.starts_with("stripe_") { "text" } else { ty };
            writeln!(sql, "alter table {LEGACY_SCHEMA}.\"{}\" add column \"{col}\" {ty};", table.name)?;
        }
    }
    tx.batch_execute(&sql).await.map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e))).context("moving aside")
}

/// The catalog's token packages, by what they cost: a past order is the package whose
/// price it paid.
fn packages_sql() -> String {
    let rows: Vec<String> = PRODUCTS
        .iter()
        .filter(|p| p.kind == ProductKind::Tokens)
        .map(|p| format!("('{}', {}, '{}', {})", p.key, p.unit_amount, p.currency, p.credited_tokens()))
        .collect();
    format!(
        "create temp table adopt_packages (product text, amount bigint, currency text, tokens int) on commit drop;
         insert into adopt_packages values {};",
        rows.join(", ")
    )
}

/// One old table's rows into this project's table, as the report shows them: figures,
/// then each rule's count (rows refused, fixed or flagged), then the statements that copy.
struct TableCopy {
    /// The old table, in `libero_legacy`; the rules read it as `t`.
    table: &'static str,
    /// What the rules count: rows, or (orders) checkout sessions.
    per: &'static str,
    /// Figures for the report, each `(label, statement)`, shown when not zero.
    figures: &'static [(&'static str, &'static str)],
    /// Each `(what, condition on t)`, shown as `<table> <what>: n` when not zero: the rows
    /// the statements below leave behind or change, so the report says what they do.
    rules: &'static [(&'static str, &'static str)],
    /// The statements, in order; each one's row count is shown under its label (none when
    /// the label is empty).
    writes: &'static [(&'static str, &'static str)],
}

const ROWS: &str = "count(*)";

/// A row whose user did not become a user of this project stays behind.
const USER_NOT_ADOPTED: (&str, &str) =
    ("refused: user not adopted", "not exists (select 1 from public.user_profiles p where p.id = t.user_id)");

/// Copies one table as `copy` says, adding its lines to the report `text`.
async fn copy_table(tx: &Transaction<'_>, copy: &TableCopy, text: &mut String) -> Result<()> {
    let rules = copy.rules.iter().map(|(what, condition)| {
        let sql = format!("select {} from {LEGACY_SCHEMA}.{} t where {condition}", copy.per, copy.table);
        (format!("{} {what}", copy.table), sql)
    });
    for (label, sql) in copy.figures.iter().map(|(label, sql)| (label.to_string(), sql.to_string())).chain(rules) {
        let n: i64 = tx.query_one(&sql, &[]).await.with_context(|| format!("counting {label}"))?.get(0);
        if n > 0 {
            writeln!(text, "  {label}: {n}")?;
        }
    }
    for (label, sql) in copy.writes {
        let n = tx
            .execute(*sql, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
            .with_context(|| format!("adopting: {label}"))?;
        if !label.is_empty() {
            writeln!(text, "  {label}: {n}")?;
        }
    }
    Ok(())
}

/// The copy, table by table, with the fix-up rules. Users are the old profiles whose auth
/// user exists; every other row belongs to one of them or is refused (left in
/// libero_legacy).
const COPY: &[TableCopy] = &[
    TableCopy {
        table: "user_profiles",
        per: ROWS,
        figures: &[(
            "tokens in the old balances (null and negative ones count as they are)",
            "select coalesce(sum(tokens), 0)::int8 from libero_legacy.user_profiles",
        )],
        rules: &[
            ("refused: no auth.users row", "not exists (select 1 from auth.users u where u.id = t.id)"),
            ("fixed: tokens null, set to 0", "tokens is null"),
            ("fixed: tokens negative, set to 0", "tokens < 0"),
            ("flagged, kept: tokens above 100000", "tokens > 100000"),
            ("fixed: experience null or negative, set to 0", "coalesce(experience, -1) < 0"),
            ("fixed: level null or below 1, set to 1", "coalesce(level, 0) < 1"),
            ("fixed: session_streak null or negative, set to 0", "coalesce(session_streak, -1) < 0"),
            (
                "fixed: ego_state_usage null, not an object or over 8 KiB, set to {}",
                "ego_state_usage is null or jsonb_typeof(ego_state_usage) <> 'object' or pg_column_size(ego_state_usage) > 8192",
            ),
            (
                "fixed: journey_goals, journey_preferences or settings null or of the wrong kind, set to the default",
                "journey_goals is null or jsonb_typeof(journey_goals) <> 'array' or pg_column_size(journey_goals) > 16384
                 or journey_preferences is null or jsonb_typeof(journey_preferences) <> 'object' or pg_column_size(journey_preferences) > 16384
                 or settings is null or jsonb_typeof(settings) <> 'object' or pg_column_size(settings) > 16384",
            ),
            (
                "fixed: display_name over 100 or active_ego_state over 64 characters, cut",
                "char_length(display_name) > 100 or char_length(active_ego_state) > 64",
            ),
        ],
    writes: &[
        (
            "user_profiles moved",
            "insert into public.user_profiles (id, email, display_name, level, experience, tokens, session_streak,
                                           last_session_date, ego_state_usage, active_ego_state, onboarding_completed,
                                           journey_goals, journey_preferences, settings, sessions_completed,
                                           created_at, updated_at)
         select p.id, coalesce(p.email, u.email), left(p.display_name, 100),
                greatest(coalesce(p.level, 1), 1), greatest(coalesce(p.experience, 0), 0),
                greatest(coalesce(p.tokens, 0), 0), greatest(coalesce(p.session_streak, 0), 0), p.last_session_date,
                case when jsonb_typeof(p.ego_state_usage) = 'object' and pg_column_size(p.ego_state_usage) <= 8192
                     then p.ego_state_usage else '{}' end,
                left(p.active_ego_state, 64), coalesce(p.onboarding_completed, false),
                case when jsonb_typeof(p.journey_goals) = 'array' and pg_column_size(p.journey_goals) <= 16384
                     then p.journey_goals else '[]' end,
                case when jsonb_typeof(p.journey_preferences) = 'object' and pg_column_size(p.journey_preferences) <= 16384
                     then p.journey_preferences else '{}' end,
                case when jsonb_typeof(p.settings) = 'object' and pg_column_size(p.settings) <= 16384
                     then p.settings else '{}' end,
                (select count(*) from libero_legacy.sessions s where s.user_id = p.id),
                coalesce(p.created_at, u.created_at, now()), coalesce(p.updated_at, p.created_at, now())
           from libero_legacy.user_profiles p join auth.users u on u.id = p.id",
        ),
    ],
    },
    TableCopy {
        table: "custom_protocols",
        per: ROWS,
        figures: &[],
        rules: &[
            USER_NOT_ADOPTED,
            ("fixed: name empty, set to 'Untitled protocol'", "coalesce(btrim(name), '') = ''"),
            (
                "fixed: duration not 1 to 240 minutes, set to null",
                "duration is not null and duration not between 1 and 240",
            ),
            (
                "fixed: a text over its bound (name 120, description 2000, induction and deepener 20000), cut",
                "char_length(name) > 120 or char_length(description) > 2000 or char_length(induction) > 20000
                 or char_length(deepener) > 20000 or char_length(ego_state) > 64",
            ),
        ],
    writes: &[
        (
            "custom_protocols moved",
            "insert into public.custom_protocols (id, user_id, name, description, induction, deepener, duration, ego_state,
                                              created_at, updated_at)
         select c.id, c.user_id, coalesce(nullif(left(btrim(c.name), 120), ''), 'Untitled protocol'),
                left(c.description, 2000), left(c.induction, 20000), left(c.deepener, 20000),
                case when c.duration between 1 and 240 then c.duration end, left(c.ego_state, 64),
                coalesce(c.created_at, now()), coalesce(c.updated_at, c.created_at, now())
           from libero_legacy.custom_protocols c join public.user_profiles p on p.id = c.user_id",
        ),
    ],
    },
    // Sessions: history, never rewarded again (no tokens; the XP they gave is already in
    // the profile).
    TableCopy {
        table: "sessions",
        per: ROWS,
        figures: &[],
        rules: &[
            USER_NOT_ADOPTED,
            ("fixed: duration null or negative, set to 0", "coalesce(duration, -1) < 0"),
            ("fixed: duration over a day, set to 86400 seconds", "duration > 86400"),
            ("fixed: ego_state empty, set to 'unknown'", "coalesce(btrim(ego_state), '') = ''"),
            ("fixed: experience_gained null or negative, set to 0", "coalesce(experience_gained, -1) < 0"),
            (
                "fixed: protocol_id names no adopted protocol of the user, set to null",
                "t.protocol_id is not null
                 and not exists (select 1 from public.custom_protocols c where c.id = t.protocol_id and c.user_id = t.user_id)",
            ),
        ],
    writes: &[
        (
            "sessions moved (as history: rewarded before, no tokens now)",
            "insert into public.sessions (id, user_id, client_session_id, ego_state, action, duration, protocol_id,
                                      experience_gained, tokens_awarded, request_fingerprint, result, completed_at,
                                      local_date, ended_at, rewarded)
         select s.id, s.user_id, s.id, coalesce(nullif(left(btrim(s.ego_state), 64), ''), 'unknown'), left(s.action, 64),
                least(greatest(coalesce(s.duration, 0), 0), 86400),
                (select c.id from public.custom_protocols c where c.id = s.protocol_id and c.user_id = s.user_id),
                greatest(coalesce(s.experience_gained, 0), 0), 0, 'adopted',
                jsonb_build_object('adopted', true),
                coalesce(s.completed_at, s.created_at, now()),
                (coalesce(s.completed_at, s.created_at, now()) at time zone 'UTC')::date,
                coalesce(s.completed_at, s.created_at, now()), true
           from libero_legacy.sessions s join public.user_profiles p on p.id = s.user_id",
        ),
        // Achievements the adopted progress already meets (sessions, streak, level), so that
        // the thresholds a user passed in the old app are shown and not skipped.
        (
            "user_achievements unlocked by the adopted progress",
            "insert into public.user_achievements (user_id, achievement_id, unlocked_at, metadata)
         select p.id, r.rules[i][1], now(), jsonb_build_object('adopted', true)
           from (select public.achievement_rules() as rules) r
           cross join generate_subscripts(r.rules, 1) i
           join public.user_profiles p
             on case r.rules[i][2] when 'sessions' then p.sessions_completed
                                   when 'streak' then p.session_streak
                                   when 'level' then p.level end >= r.rules[i][3]::int",
        ),
    ],
    },
    // Stripe customers: one to one.
    TableCopy {
        table: "stripe_customers",
        per: ROWS,
        figures: &[],
        rules: &[USER_NOT_ADOPTED],
    writes: &[
        (
            "stripe_customers moved",
            "insert into public.stripe_customers (user_id, customer_id, created_at, updated_at, deleted_at)
         select distinct on (c.user_id) c.user_id, c.customer_id, coalesce(c.created_at, now()),
                coalesce(c.updated_at, c.created_at, now()), c.deleted_at
           from libero_legacy.stripe_customers c join public.user_profiles p on p.id = c.user_id
          order by c.user_id, (c.deleted_at is null) desc, c.created_at desc nulls last, c.id desc",
        ),
    ],
    },
    TableCopy {
        table: "stripe_subscriptions",
        per: ROWS,
        figures: &[],
        rules: &[
            (
                "not moved: the template's placeholder (no subscription id, or not_started)",
                "subscription_id is null or status::text = 'not_started'",
            ),
            (
                "not moved: marked deleted",
                "subscription_id is not null and status::text <> 'not_started' and deleted_at is not null",
            ),
            (
                "refused: customer not adopted",
                "t.subscription_id is not null and t.status::text <> 'not_started' and t.deleted_at is null
                 and not exists (select 1 from public.stripe_customers c where c.customer_id = t.customer_id)",
            ),
        ],
    writes: &[
        (
            "stripe_subscriptions moved",
            "insert into public.stripe_subscriptions (subscription_id, customer_id, user_id, status, price_id,
                                                  current_period_start, current_period_end, cancel_at_period_end,
                                                  stripe_updated_at, created_at, updated_at)
         select distinct on (s.subscription_id) s.subscription_id, s.customer_id, c.user_id, s.status::text,
                s.price_id, to_timestamp(s.current_period_start), to_timestamp(s.current_period_end),
                coalesce(s.cancel_at_period_end, false), coalesce(s.updated_at, s.created_at, now()),
                coalesce(s.created_at, now()), coalesce(s.updated_at, s.created_at, now())
           from libero_legacy.stripe_subscriptions s join public.stripe_customers c on c.customer_id = s.customer_id
          where s.subscription_id is not null and s.status::text <> 'not_started' and s.deleted_at is null
          order by s.subscription_id, s.updated_at desc nulls last, s.id desc",
        ),
        // The subscription trigger counts an inserted live subscription as started now; like
        // the migration that added it, count each as started when its row was made.
        (
            "",
            "update public.analytics_subscription_changes a set at = s.created_at
           from public.stripe_subscriptions s where s.subscription_id = a.subscription_id",
        ),
        // The plan, by the rule stripe_apply_subscription keeps: 'mystic' while any of the
        // user's subscriptions is active or trialing.
        (
            "user_profiles on plan mystic (an active or trialing subscription)",
            "update public.user_profiles p set plan = 'mystic'
          where exists (select 1 from public.stripe_subscriptions s
                         where s.user_id = p.id and s.status in ('active', 'trialing'))",
        ),
    ],
    },
    TableCopy {
        table: "stripe_orders",
        per: "count(distinct t.checkout_session_id)",
        figures: &[(
            "stripe_orders merged: the same checkout session stored more than once",
            "select count(*) - count(distinct checkout_session_id) from libero_legacy.stripe_orders",
        )],
        rules: &[
            (
                "refused: customer not adopted",
                "not exists (select 1 from public.stripe_customers c where c.customer_id = t.customer_id)",
            ),
            (
                "completed, amount of no token package: moved as 'review', credits nothing",
                "t.status::text = 'completed'
                 and exists (select 1 from public.stripe_customers c where c.customer_id = t.customer_id)
                 and not exists (select 1 from adopt_packages k where k.amount = t.amount_total and k.currency = lower(t.currency))",
            ),
        ],
    writes: &[
        (
            "stripe_orders moved",
            "insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, user_id, product, tokens,
                                           amount_total, currency, payment_status, status, review_reason,
                                           created_at, updated_at)
         select o.checkout_session_id, o.payment_intent_id, o.customer_id, c.user_id,
                coalesce(k.product, 'unknown'), coalesce(k.tokens, 0), o.amount_total, lower(o.currency),
                o.payment_status,
                case when o.status::text = 'canceled' then 'failed'
                     when k.product is null then 'review'
                     else o.status::text end,
                case when o.status::text <> 'canceled' and k.product is null
                     then 'adopted: the amount paid is the price of no token package' end,
                coalesce(o.created_at, now()), coalesce(o.updated_at, o.created_at, now())
           from (select distinct on (checkout_session_id) *
                   from libero_legacy.stripe_orders
                  order by checkout_session_id, (status::text = 'completed') desc, id) o
           join public.stripe_customers c on c.customer_id = o.customer_id
           left join adopt_packages k on k.amount = o.amount_total and k.currency = lower(o.currency)
          order by o.created_at, o.id",
        ),
    ],
    },
    TableCopy {
        table: "token_ledger",
        per: ROWS,
        figures: &[],
        rules: &[],
    writes: &[
        // The ledger: per user, a 'purchase' row for each completed order (what a late webhook
        // or reconcile looks for before crediting, so a past purchase is never credited
        // again), then one 'opening_balance' row with the rest of the balance (negative when
        // the user had already spent some of what they bought).
        (
            "token_ledger rows for past purchases (recorded as already credited)",
            "insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
         select o.user_id, o.tokens, 'purchase', o.checkout_session_id,
                sum(o.tokens) over (partition by o.user_id order by o.created_at, o.id)
           from public.stripe_orders o
          where o.status = 'completed' and o.tokens > 0
          order by o.user_id, o.created_at, o.id",
        ),
        (
            "token_ledger opening balances",
            "insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
         select p.id, p.tokens - coalesce(b.bought, 0), 'opening_balance', 'adopt', p.tokens
           from public.user_profiles p
           left join (select user_id, sum(delta)::int as bought from public.token_ledger group by user_id) b
             on b.user_id = p.id
          where p.tokens <> coalesce(b.bought, 0)
          order by p.id",
        ),
    ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_package_has_a_price_of_its_own() {
        let packages = packages_sql();
        for p in PRODUCTS.iter().filter(|p| p.kind == ProductKind::Tokens) {
            assert!(packages.contains(&format!("'{}'", p.key)));
            let same = PRODUCTS
                .iter()
                .filter(|q| q.kind == ProductKind::Tokens && q.unit_amount == p.unit_amount && q.currency == p.currency)
                .count();
            assert_eq!(same, 1, "a past order's amount must name one package: {}", p.key);
        }
    }
}
