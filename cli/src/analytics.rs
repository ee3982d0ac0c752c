//! `libero analytics`: the operator's figures per day, read from the `analytics_*` views
//! (migrations/20250106400100_operator_analytics.sql), which only `service_role` (and the
//! database owner) may read. Printed as tables, or as CSV.

use anyhow::{Context, Result};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A view, what it is called in the output, and the order of its rows.
pub struct View {
    pub name: &'static str,
    pub title: &'static str,
    /// False for a snapshot (no `day` column, not limited by --days).
    pub daily: bool,
    pub order_by: &'static str,
}

pub const VIEWS: &[View] = &[
    View { name: "analytics_active_users", title: "Active users (DAU, WAU, MAU)", daily: true, order_by: "day" },
    View { name: "analytics_sessions_daily", title: "Sessions and minutes", daily: true, order_by: "day" },
    View {
        name: "analytics_revenue_daily",
        title: "Token packages: revenue (smallest currency unit), tokens sold, refunds",
        daily: true,
        order_by: "day, product, currency",
    },
    View {
        name: "analytics_tokens_daily",
        title: "Tokens granted and spent",
        daily: true,
        order_by: "day, direction, source",
    },
    View {
        name: "analytics_ai_daily",
        title: "AI and voice calls per endpoint",
        daily: true,
        order_by: "day, endpoint",
    },
    View { name: "analytics_tts_daily", title: "tts requests and cache hit rate", daily: true, order_by: "day" },
    View {
        name: "analytics_plan_mix",
        title: "Plan mix and subscriptions (now)",
        daily: false,
        order_by: "kind, name",
    },
    View { name: "analytics_subscriptions_daily", title: "Subscriptions and churn", daily: true, order_by: "day" },
];

/// `libero analytics`'s flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Options {
    /// The last N days, today included
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub days: u32,
    /// Print CSV (with --only, one plain CSV table; else a "# view" line before each)
    #[arg(long)]
    pub csv: bool,
    /// Print this view only
    #[arg(long, value_name = "VIEW", value_parser = clap::builder::PossibleValuesParser::new(VIEWS.iter().map(|v| v.name)))]
    pub only: Option<String>,
    /// First rebuild the insights comparison histogram (run it from cron)
    #[arg(long)]
    pub refresh: bool,
    #[command(flatten)]
    pub database: crate::args::Database,
}

/// `libero analytics ...`.
pub async fn command(options: Options) -> Result<()> {
    let url = options.database.clone().url()?;
    let client = crate::pg::connect(&url).await?;
    print!("{}", report(&client, &options).await?);
    Ok(())
}

/// A view's rows, every value as Postgres writes it as text (null as "").
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub async fn read(client: &Client, view: &View, days: u32) -> Result<Table> {
    // `days` is a number we parsed, and the names are our constants: nothing from outside
    // is spliced into the statement.
    let filter = if view.daily { format!(" where day > current_date - {days}") } else { String::new() };
    let sql = format!("select * from public.{}{filter} order by {}", view.name, view.order_by);
    let messages = client.simple_query(&sql).await.with_context(|| {
        format!("reading {} (run `libero migrate` first; the role needs service_role's rights)", view.name)
    })?;
    let mut table = Table { columns: Vec::new(), rows: Vec::new() };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if table.columns.is_empty() {
                    table.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                table.rows.push((0..row.len()).map(|i| row.get(i).unwrap_or("").to_string()).collect());
            }
            _ => {}
        }
    }
    Ok(table)
}

/// Everything the command prints.
pub async fn report(client: &Client, options: &Options) -> Result<String> {
    let mut out = String::new();
    if options.refresh {
        let row =
            client.query_one("select public.insights_refresh()::text", &[]).await.context("insights_refresh()")?;
        let refreshed: String = row.get(0);
        if !options.csv {
            out.push_str(&format!("insights comparison histogram rebuilt: {refreshed}\n\n"));
        }
    }
    let views: Vec<&View> =
        VIEWS.iter().filter(|v| options.only.as_deref().is_none_or(|only| only == v.name)).collect();
    for (i, view) in views.iter().enumerate() {
        let table = read(client, view, options.days).await?;
        if i > 0 {
            out.push('\n');
        }
        if options.csv {
            if options.only.is_none() {
                out.push_str(&format!("# {}\n", view.name));
            }
            out.push_str(&csv(&table));
        } else {
            let span = if view.daily { format!(", last {} day(s), UTC", options.days) } else { String::new() };
            out.push_str(&format!("{} ({}{span})\n", view.title, view.name));
            out.push_str(&text_table(&table));
        }
    }
    Ok(out)
}

/// Columns padded to their widest value; numbers right-aligned.
pub fn text_table(table: &Table) -> String {
    if table.rows.is_empty() {
        return "  (no rows)\n".to_string();
    }
    let widths: Vec<usize> = (0..table.columns.len())
        .map(|i| {
            table.rows.iter().map(|r| r[i].chars().count()).chain([table.columns[i].chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..table.columns.len())
        .map(|i| table.rows.iter().all(|r| r[i].is_empty() || r[i].parse::<f64>().is_ok()))
        .collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(
                |(i, c)| if numeric[i] { format!("{c:>w$}", w = widths[i]) } else { format!("{c:<w$}", w = widths[i]) },
            )
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&table.columns);
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for row in &table.rows {
        out.push_str(&line(row));
    }
    out
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
pub fn csv(table: &Table) -> String {
    let field = |s: &String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.clone()
        }
    };
    let mut out = String::new();
    for row in std::iter::once(&table.columns).chain(&table.rows) {
        out.push_str(&row.iter().map(field).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        match crate::cli::Cli::try_parse_from(["libero", "analytics"].iter().chain(args))?.command {
            crate::cli::Command::Analytics(options) => Ok(options),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_parse_and_refuse_what_they_do_not_know() {
        let options = parse(&["--days", "30", "--csv", "--only=analytics_tts_daily", "--refresh"]).unwrap();
        assert_eq!(
            options,
            Options {
                days: 30,
                csv: true,
                only: Some("analytics_tts_daily".into()),
                refresh: true,
                database: Default::default(),
            }
        );
        assert_eq!(parse(&[]).unwrap().days, 7);
        for bad in [&["--days", "0"][..], &["--days", "x"], &["--days"], &["--only", "user_profiles"], &["--verbose"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let table = Table {
            columns: vec!["day".into(), "source".into()],
            rows: vec![vec!["2025-01-06".into(), "a,b".into()], vec!["".into(), "say \"hi\"".into()]],
        };
        assert_eq!(csv(&table), "day,source\n2025-01-06,\"a,b\"\n,\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn tables_align_numbers_right() {
        let table = Table {
            columns: vec!["endpoint".into(), "calls".into()],
            rows: vec![vec!["tts".into(), "7".into()], vec!["generate-script".into(), "12".into()]],
        };
        assert_eq!(
            text_table(&table),
            "  endpoint         calls\n  ---------------  -----\n  tts                  7\n  generate-script     12\n"
        );
        assert_eq!(text_table(&Table { columns: vec!["x".into()], rows: vec![] }), "  (no rows)\n");
    }
}
