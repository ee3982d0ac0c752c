//! `libero stripe reconcile`: the operator's one command after lost deliveries. It runs
//! the same bounded runs as the `stripe-reconcile` endpoint
//! (`libero_shared::stripe::reconcile`, through the webhook's exactly-once apply
//! functions), in this process, straight against Postgres and Stripe, until nothing is
//! left. So it works while the app is down or misconfigured, which is when it is needed.
//! Each run stores its position after every page, so the command may be killed at any
//! moment: the next one carries on, and applies nothing twice.

use anyhow::{bail, Context, Result};
use libero_shared::db::{DbError, SqlParam, SqlRow, SqlValue};
use libero_shared::http::outbound::{OutboundError, OutboundRequest, OutboundResponse};
use libero_shared::stripe::reconcile::{self, Limits, Report};
use libero_shared::{ApiError, Platform};
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::http::CliPlatform;
use super::Account;
use crate::pg;

/// `libero stripe reconcile`'s flags.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ReconcileArgs {
    /// One bounded run, as the endpoint does, instead of runs until nothing is left
    #[arg(long)]
    pub once: bool,
    /// New events one run handles [default: the endpoint's]
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_events: Option<usize>,
    /// Seconds one run may take [default: the endpoint's]
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub max_seconds: Option<u64>,
    #[command(flatten)]
    pub database: crate::args::Database,
    #[command(flatten)]
    pub stripe: crate::args::StripeApi,
}

impl ReconcileArgs {
    /// One run's bounds: the endpoint's, with the ones given.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        if let Some(n) = self.max_events {
            limits.max_events = n;
        }
        if let Some(s) = self.max_seconds {
            limits.max_millis = s * 1000;
        }
        limits
    }
}

/// `libero stripe reconcile ...`.
pub async fn command(args: ReconcileArgs) -> Result<()> {
    let account = Account::from_env(args.stripe.clone())?;
    let url = args.database.clone().url()?;
    let client = pg::connect(&url).await?;
    let ready: bool =
        client.query_one("select to_regprocedure('public.stripe_reconcile_cursor()') is not null", &[]).await?.get(0);
    if !ready {
        bail!("the database has no reconciliation cursor yet: run `libero migrate` first");
    }
    // The price overrides the components read (`stripe_price_*`), from the environment.
    let mut variables = account.variables();
    for (name, value) in std::env::vars() {
        if let Some(variable) = name.strip_prefix("SPIN_VARIABLE_STRIPE_PRICE_") {
            variables.insert(format!("stripe_price_{}", variable.to_ascii_lowercase()), value);
        }
    }
    let handle = tokio::runtime::Handle::current();
    let (once, limits) = (args.once, args.limits());
    // The shared logic is blocking (as in a component): off the async thread, with the
    // database reached through this runtime.
    let total = tokio::task::spawn_blocking(move || {
        let platform = DbPlatform { http: CliPlatform::new(variables), db: client, handle };
        let mut total = Report::default();
        for run in 1.. {
            let report = reconcile::run(&platform, limits.clone()).map_err(describe)?;
            println!("run {run}: {}", progress(&report, platform.now_unix_ms() / 1000, limits.lookback_secs));
            println!("  {}", report.to_json());
            total.seen += report.seen;
            total.applied += report.applied;
            total.duplicate += report.duplicate;
            total.ignored += report.ignored;
            total.customers_checked += report.customers_checked;
            total.subscriptions_written += report.subscriptions_written;
            total.cursor = report.cursor.clone();
            total.requests += report.requests;
            total.more = report.more;
            if once || !report.more {
                break;
            }
            if report.rate_limited {
                // Stripe asked to slow down (its limit is per second): a pause before the
                // next run, so the account's other API traffic is not starved.
                std::thread::sleep(RATE_LIMIT_PAUSE);
            }
        }
        anyhow::Ok(total)
    })
    .await?
    .context(
        "stopped; the cursor stays before what was not done, and running `libero stripe reconcile` again continues",
    )?;
    println!(
        "done: {} event(s) seen, {} applied, {} already applied, {} recorded without effect; {} customer(s) re-read, {} subscription(s) updated; {} Stripe request(s){}",
        total.seen,
        total.applied,
        total.duplicate,
        total.ignored,
        total.customers_checked,
        total.subscriptions_written,
        total.requests,
        if total.more { "; more left (run again)" } else { "" }
    );
    Ok(())
}

/// How long the command waits after a run that Stripe rate-limited.
const RATE_LIMIT_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// One run's line: what it did and where the walk is in Stripe's 30-day window.
fn progress(report: &Report, now: i64, lookback_secs: i64) -> String {
    let place = match &report.cursor {
        Some((_, created)) => {
            let behind = (now - created).max(0);
            let through = 100 - (behind * 100 / lookback_secs.max(1)).clamp(0, 100);
            format!("at an event from {} ago ({through}% through the window)", duration(behind))
        }
        None => match &report.settled {
            Some(settled) => {
                format!("no event yet; everything before {} ago read", duration((now - settled.created).max(0)))
            }
            None => "not started".to_string(),
        },
    };
    format!(
        "{} seen, {} applied, {} already applied, {} without effect, {} Stripe request(s); {place}{}{}",
        report.seen,
        report.applied,
        report.duplicate,
        report.ignored,
        report.requests,
        if report.more { "; more to do" } else { "; up to date" },
        if report.rate_limited { " (Stripe rate limit: pausing)" } else { "" },
    )
}

fn duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

pub(crate) fn describe(error: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{} ({}): {}", error.status, error.code, error.message)
}

/// The CLI's Stripe platform plus the database, so the shared run works as in a component.
pub(crate) struct DbPlatform {
    pub(crate) http: CliPlatform,
    pub(crate) db: tokio_postgres::Client,
    pub(crate) handle: tokio::runtime::Handle,
}

/// Any column, as the bytes Postgres sent (binary format).
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn value_of(ty: &Type, raw: Raw) -> Result<SqlValue, DbError> {
    let Some(bytes) = raw.0 else { return Ok(SqlValue::Null) };
    let bad = || DbError::Conversion(format!("cannot read a {ty} column"));
    Ok(match *ty {
        // Binary jsonb is a version byte (1) and the text.
        Type::JSONB => SqlValue::Json(bytes.get(1..).ok_or_else(bad)?.to_vec()),
        Type::JSON => SqlValue::Json(bytes),
        Type::TEXT | Type::VARCHAR | Type::NAME => SqlValue::Text(String::from_utf8(bytes).map_err(|_| bad())?),
        Type::BOOL => SqlValue::Bool(bytes.first().ok_or_else(bad)? != &0),
        Type::INT4 => SqlValue::Int(i32::from_be_bytes(bytes.try_into().map_err(|_| bad())?) as i64),
        Type::INT8 => SqlValue::Int(i64::from_be_bytes(bytes.try_into().map_err(|_| bad())?)),
        _ => return Err(bad()),
    })
}

impl Platform for DbPlatform {
    fn variable(&self, name: &str) -> Option<String> {
        self.http.variable(name)
    }

    fn query(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError> {
        // Every parameter goes as text: the statements cast each one ($1::int8, $2::jsonb).
        let texts: Vec<Option<String>> = params
            .iter()
            .map(|p| match p {
                SqlParam::Null => Ok(None),
                SqlParam::Bool(b) => Ok(Some(b.to_string())),
                SqlParam::Int32(n) => Ok(Some(n.to_string())),
                SqlParam::Int64(n) => Ok(Some(n.to_string())),
                SqlParam::Text(s) | SqlParam::Uuid(s) => Ok(Some(s.clone())),
                SqlParam::Jsonb(bytes) => String::from_utf8(bytes.clone())
                    .map(Some)
                    .map_err(|_| DbError::Conversion("jsonb parameter is not UTF-8".into())),
                SqlParam::Bytes(_) => Err(DbError::Conversion("bytea parameters are not used here".into())),
            })
            .collect::<Result<_, _>>()?;
        let typed: Vec<(&(dyn ToSql + Sync), Type)> =
            texts.iter().map(|t| (t as &(dyn ToSql + Sync), Type::TEXT)).collect();
        let rows = self.handle.block_on(self.db.query_typed(sql, &typed)).map_err(|e| match e.as_db_error() {
            Some(db) => DbError::Query { sqlstate: db.code().code().to_string(), message: db.message().to_string() },
            None => DbError::Unavailable(e.to_string()),
        })?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let raw: Raw = row.try_get(i).map_err(|e| DbError::Conversion(e.to_string()))?;
                        value_of(row.columns()[i].type_(), raw)
                    })
                    .collect()
            })
            .collect()
    }

    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        self.http.send(request)
    }

    fn now_unix_ms(&self) -> i64 {
        self.http.now_unix_ms()
    }

    fn monotonic_ms(&self) -> u64 {
        self.http.monotonic_ms()
    }

    fn sleep(&self, duration: std::time::Duration) {
        self.http.sleep(duration)
    }

    fn random_bytes(&self, len: usize) -> Vec<u8> {
        self.http.random_bytes(len)
    }

    fn log(&self, line: &str) {
        self.http.log(line)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn progress_says_where_the_walk_is() {
        let mut report = Report { seen: 5, applied: 2, requests: 3, more: true, ..Report::default() };
        report.cursor = Some(("evt_1".into(), 1_000_000 - 15 * 86_400));
        let line = progress(&report, 1_000_000, 30 * 86_400);
        assert!(line.starts_with("5 seen, 2 applied"), "{line}");
        assert!(line.contains("15 days ago (50% through the window); more to do"), "{line}");
    }

    fn parse(args: &[&str]) -> Result<ReconcileArgs, clap::Error> {
        match crate::cli::Cli::try_parse_from(["libero", "stripe", "reconcile"].iter().chain(args))?.command {
            crate::cli::Command::Stripe(super::super::Command::Reconcile(args)) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arguments_parse() {
        let parsed = parse(&["--once", "--max-events=5", "--max-seconds", "9"]).unwrap();
        assert!(parsed.once);
        let limits = parsed.limits();
        assert_eq!((limits.max_events, limits.max_millis), (5, 9000));
        assert_eq!(parse(&[]).unwrap().limits(), Limits::default(), "the endpoint's bounds unless given");
        for bad in
            ["--max-events=0", "--max-events=100001", "--max-seconds=x", "--max-seconds=3601", "--live", "--once=yes"]
        {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
    }
}
