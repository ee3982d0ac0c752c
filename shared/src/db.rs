//! The database as the request logic sees it: one statement in, rows out. Each atomic
//! change is one statement (usually a SQL function call returning jsonb), so a failed or
//! trapped request can never leave a half-done transaction on a pooled connection.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{ApiError, Platform};

#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Text(String),
    /// Bound as a text parameter; the SQL casts it (`$1::uuid`).
    Uuid(String),
    Jsonb(Vec<u8>),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Json(Vec<u8>),
    /// Anything else, rendered as text by the platform (dates, uuids, numerics).
    Other(String),
}

pub type SqlRow = Vec<SqlValue>;

#[derive(Debug, Clone, PartialEq)]
pub enum DbError {
    /// The database could not be reached (down, refused, bad address).
    Unavailable(String),
    /// The statement failed; `sqlstate` is Postgres' error code.
    Query { sqlstate: String, message: String },
    /// A value could not be converted between Postgres and the component.
    Conversion(String),
    /// The named Spin variable holding the database address is not set.
    NotConfigured(&'static str),
}

impl DbError {
    /// Whether the failure is the database being unreachable or overloaded rather than
    /// our statement being wrong: class 08 (connection), 53 (resources), 57P (shutdown).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Query { sqlstate, .. } => {
                sqlstate.starts_with("08") || sqlstate.starts_with("53") || sqlstate.starts_with("57P")
            }
            DbError::Conversion(_) | DbError::NotConfigured(_) => false,
        }
    }

    /// Whether the failure is the signature of a connection pooler in transaction mode
    /// that does not keep named prepared statements (PgBouncer before 1.21, or without
    /// `max_prepared_statements`). Spin's Postgres client prepares a named statement,
    /// executes it and closes it, as three round trips; between them such a pooler may
    /// hand the client another server connection, where the statement does not exist
    /// (26000), where another client's statement of the same name does (42P05 on
    /// prepare; 08P01 "bind message supplies N parameters, but prepared statement ...
    /// requires M" on execute). The app itself never prepares statements by name, so
    /// these codes mean the deployment, not a bug in a statement.
    pub fn is_pooler_misconfigured(&self) -> bool {
        let text = match self {
            DbError::Query { sqlstate, message } => {
                if sqlstate == "26000" || sqlstate == "42P05" {
                    return true;
                }
                message
            }
            DbError::Unavailable(detail) => detail,
            DbError::Conversion(_) | DbError::NotConfigured(_) => return false,
        };
        let text = text.to_ascii_lowercase();
        text.contains("prepared statement")
            && (text.contains("does not exist") || text.contains("already exists") || text.contains("requires"))
    }

    /// Which connection limit refused the connection, when one did: Postgres'
    /// (`max_connections`, a role's or a database's `CONNECTION LIMIT`; SQLSTATE 53300)
    /// or a pooler's (PgBouncer's `max_client_conn`, or its pool staying full past
    /// `query_wait_timeout`; Supavisor's client and session-mode limits). The limit is
    /// read from the message: at connection time Spin reports no SQLSTATE, only text.
    pub fn connection_limit(&self) -> Option<ConnectionLimit> {
        let (sqlstate, text) = match self {
            DbError::Query { sqlstate, message } => (sqlstate.as_str(), message.as_str()),
            DbError::Unavailable(detail) => ("", detail.as_str()),
            DbError::Conversion(_) | DbError::NotConfigured(_) => return None,
        };
        let text = text.to_ascii_lowercase();
        let has = |needle: &str| text.contains(needle);
        if has("too many connections for role") {
            Some(ConnectionLimit::Role)
        } else if has("too many connections for database") {
            Some(ConnectionLimit::Database)
        } else if has("too many clients already") || has("remaining connection slots are reserved") {
            Some(ConnectionLimit::Server)
        } else if has("max_client_conn") || has("no more connections allowed") || has("max client connections reached")
        {
            Some(ConnectionLimit::PoolerClients)
        } else if has("query_wait_timeout") || has("emaxconn") || has("max clients reached") {
            Some(ConnectionLimit::PoolerPool)
        } else if sqlstate == "53300" || has("53300") {
            // Another wording of "too many connections" (a pooler relaying it, say).
            Some(ConnectionLimit::Server)
        } else {
            None
        }
    }
}

/// A connection limit between the app and the database (see `docs/deploy.md` for sizing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// Postgres' `max_connections` (less the reserved slots).
    Server,
    /// `CONNECTION LIMIT` of the role in `database_url`.
    Role,
    /// `CONNECTION LIMIT` of the database.
    Database,
    /// The pooler's limit on client connections (PgBouncer `max_client_conn`, Supavisor's
    /// max clients).
    PoolerClients,
    /// The pooler's server pool stayed full (PgBouncer `default_pool_size`/`pool_size` and
    /// `query_wait_timeout`; Supavisor session mode allows only `pool_size` clients).
    PoolerPool,
}

impl ConnectionLimit {
    /// The limit, and what raises it or lowers the app's share of it, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            ConnectionLimit::Server => {
                "Postgres' max_connections is reached: raise it, or lower replicas x 64 x busy components (Spin's connections per component and process), or put a pooler in front"
            }
            ConnectionLimit::Role => {
                "the CONNECTION LIMIT of the role in database_url is reached: raise it (ALTER ROLE ... CONNECTION LIMIT) or run fewer replicas"
            }
            ConnectionLimit::Database => {
                "the CONNECTION LIMIT of the database is reached: raise it (ALTER DATABASE ... CONNECTION LIMIT) or run fewer replicas"
            }
            ConnectionLimit::PoolerClients => {
                "the pooler's client connection limit is reached (PgBouncer max_client_conn, Supavisor max clients): allow at least replicas x 64 x busy components clients"
            }
            ConnectionLimit::PoolerPool => {
                "the pooler's pool of server connections is full (PgBouncer default_pool_size/query_wait_timeout, Supavisor pool_size in session mode): in session mode every client connection Spin keeps open holds a server connection, so the pool needs replicas x 64 x busy components"
            }
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        if let DbError::NotConfigured(variable) = error {
            return ApiError::config_missing(variable);
        }
        if error.is_pooler_misconfigured() {
            // A deployment fault, but an intermittent one (requests one at a time get
            // through): a retry may well succeed, so callers (Stripe) should retry.
            ApiError::service_unavailable(
                "database_pooler_misconfigured",
                "The database connection pooler is misconfigured for this app (the operator's log names the fix); try again shortly.",
            )
            .with_header("retry-after", "5")
        } else if error.connection_limit().is_some() {
            ApiError::service_unavailable(
                "database_busy",
                "The database has no free connection right now; try again shortly.",
            )
            .with_header("retry-after", "2")
        } else if error.is_unavailable() {
            ApiError::service_unavailable("database_unavailable", "The database is unavailable; try again shortly.")
                .with_header("retry-after", "5")
        } else {
            ApiError::internal("A database operation failed.")
        }
    }
}

/// What the operator's log says about a pooler that loses prepared statements.
pub const POOLER_FIX: &str = "database_url goes through a connection pooler in transaction mode that does not keep \
named prepared statements (Spin prepares, executes and closes a named statement per query, and the pooler ran them \
on different server connections). Fix: connect directly or through the pooler's session mode (Supabase: the session \
pooler on port 5432, not the transaction pooler on 6543), or use a pooler that supports prepared statements in \
transaction mode (PgBouncer >= 1.21 with max_prepared_statements > 0). See docs/deploy.md";

/// Runs a statement that returns exactly one row, and returns that row. This is the only
/// way the request logic talks to the database (`Platform::query` is its backend).
///
/// Why exactly one: on Spin 4.0.0–4.0.2 a `spin:postgres` `query` whose result has zero
/// rows never returns (spin#3671, fixed after 4.0.2). The guest cannot time out a host
/// call, so the instance hangs for good and keeps its pooled connection: a request that
/// can find nothing could exhaust the database's connections. So every statement is
/// written to answer one row whatever it finds (a scalar or jsonb function result,
/// `select (select …)`, or a `left join` from a one-row `values`), and a statement that
/// comes back with any other number of rows is a bug reported here, not data.
pub fn query_row(platform: &dyn Platform, sql: &str, params: &[SqlParam]) -> Result<SqlRow, DbError> {
    let mut rows = platform.query(sql, params)?;
    if rows.len() != 1 {
        return Err(DbError::Conversion(format!(
            "a statement returned {} rows; every statement must return exactly one (Spin 4.0.x hangs on zero)",
            rows.len()
        )));
    }
    Ok(rows.pop().unwrap_or_default())
}

/// Runs a statement that returns one jsonb (or json) value in its first column, the way
/// every SQL function of the economy answers.
pub fn query_json(platform: &dyn Platform, sql: &str, params: &[SqlParam]) -> Result<Value, DbError> {
    let row = query_row(platform, sql, params)?;
    match row.into_iter().next() {
        Some(SqlValue::Json(bytes)) => {
            serde_json::from_slice(&bytes).map_err(|e| DbError::Conversion(format!("invalid json from database: {e}")))
        }
        Some(SqlValue::Text(text)) => {
            serde_json::from_str(&text).map_err(|e| DbError::Conversion(format!("invalid json from database: {e}")))
        }
        Some(SqlValue::Null) | None => Ok(Value::Null),
        Some(other) => Err(DbError::Conversion(format!("expected json, got {other:?}"))),
    }
}

/// The answer of a SQL function that reads one user's document (`account_export`,
/// `user_insights`), by its `outcome`.
#[derive(Debug, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UserDocument {
    /// The document, without its `outcome`.
    Ok(Map<String, Value>),
    /// The user has no profile.
    UnknownUser,
}

/// Logs the failure (without parameters, which may hold user data) and turns it into the
/// client-facing error. A failure caused by the deployment (a pooler that loses prepared
/// statements, a connection limit) says so, with the fix, on the same line.
pub fn report(platform: &dyn Platform, context: &str, error: DbError) -> ApiError {
    let cause = match &error {
        DbError::Query { sqlstate, message } => format!("db error in {context}: sqlstate={sqlstate} {message}"),
        // Spin's connection errors are an error chain, with a backtrace when the process
        // has RUST_BACKTRACE set: its first line says what happened, and one failure
        // stays one log line.
        DbError::Unavailable(detail) => {
            format!("db unavailable in {context}: {}", detail.lines().next().unwrap_or_default())
        }
        DbError::Conversion(detail) => format!("db conversion in {context}: {detail}"),
        DbError::NotConfigured(variable) => format!("db not configured in {context}: {variable}"),
    };
    if error.is_pooler_misconfigured() {
        platform.log(&format!("{cause} -- database_pooler_misconfigured: {POOLER_FIX}"));
    } else if let Some(limit) = error.connection_limit() {
        platform.log(&format!("{cause} -- database_busy: {}", limit.describe()));
    } else {
        platform.log(&cause);
    }
    error.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    fn query(sqlstate: &str, message: &str) -> DbError {
        DbError::Query { sqlstate: sqlstate.into(), message: message.into() }
    }

    fn header<'a>(error: &'a ApiError, name: &str) -> Option<&'a str> {
        error.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// What PgBouncer 1.18 in transaction mode made of Spin's statements, and
    /// the other two ways a statement name can land on the wrong server connection.
    #[test]
    fn lost_prepared_statements_are_a_misconfigured_pooler_not_a_500() {
        for error in [
            query("26000", r#"prepared statement "s12" does not exist"#),
            query("42P05", r#"prepared statement "s0" already exists"#),
            query("08P01", r#"bind message supplies 2 parameters, but prepared statement "s3" requires 3"#),
            DbError::Unavailable(r#"db error: ERROR: prepared statement "s7" does not exist"#.into()),
        ] {
            assert!(error.is_pooler_misconfigured(), "{error:?}");
            let platform = FakePlatform::default();
            let answer = report(&platform, "complete_session", error.clone());
            assert_eq!((answer.status, answer.code), (503, "database_pooler_misconfigured"), "{error:?}");
            assert_eq!(header(&answer, "retry-after"), Some("5"));
            let logs = platform.logs.borrow();
            assert_eq!(logs.len(), 1);
            assert!(
                logs[0].contains("complete_session") && logs[0].contains("database_pooler_misconfigured"),
                "{logs:?}"
            );
            assert!(logs[0].contains("session mode") && logs[0].contains("max_prepared_statements"), "{logs:?}");
        }
    }

    #[test]
    fn ordinary_failures_keep_their_answers() {
        for (error, status, code) in [
            (query("23505", "duplicate key value violates unique constraint"), 500, "internal_error"),
            (query("42883", "function public.nope() does not exist"), 500, "internal_error"),
            (query("08006", "connection failure"), 503, "database_unavailable"),
            (query("57P01", "terminating connection due to administrator command"), 503, "database_unavailable"),
            (DbError::Unavailable("Connection refused (os error 111)".into()), 503, "database_unavailable"),
            (DbError::Conversion("expected json".into()), 500, "internal_error"),
        ] {
            assert!(!error.is_pooler_misconfigured() && error.connection_limit().is_none(), "{error:?}");
            let answer = ApiError::from(error);
            assert_eq!((answer.status, answer.code), (status, code));
        }
        assert_eq!(ApiError::from(DbError::NotConfigured("database_url")).code, "config_missing");
    }

    /// Each wording of "no connection for you" names its limit: Postgres' own (with the
    /// SQLSTATE when a query saw it, as text when the connection did), PgBouncer's and
    /// Supavisor's.
    #[test]
    fn connection_limits_are_503_busy_and_the_log_names_the_limit() {
        use ConnectionLimit::*;
        for (error, limit, named) in [
            (query("53300", "sorry, too many clients already"), Server, "max_connections"),
            (
                DbError::Unavailable(r#"Error { kind: Db, cause: Some(DbError { severity: "FATAL", code: SqlState(E53300), message: "remaining connection slots are reserved for non-replication superuser connections" }) }"#.into()),
                Server,
                "max_connections",
            ),
            (
                // As Spin 4.0.2 reports it (with RUST_BACKTRACE set, a backtrace follows).
                DbError::Unavailable(
                    "Error occurred while creating a new object: db error: FATAL: too many connections for role \"libero\"\n\nCaused by:\n    0: db error: FATAL: too many connections for role \"libero\"\n\nStack backtrace:\n   0: <unknown>".into(),
                ),
                Role,
                "ALTER ROLE",
            ),
            (query("53300", r#"too many connections for database "postgres""#), Database, "ALTER DATABASE"),
            (DbError::Unavailable("db error: FATAL: no more connections allowed (max_client_conn)".into()), PoolerClients, "max_client_conn"),
            (DbError::Unavailable("error returned from database: Max client connections reached".into()), PoolerClients, "max_client_conn"),
            (query("08P01", "query_wait_timeout"), PoolerPool, "query_wait_timeout"),
            (
                DbError::Unavailable("FATAL: (EMAXCONNSESSION) max clients reached in session mode - max clients are limited to pool_size: 15".into()),
                PoolerPool,
                "pool_size",
            ),
        ] {
            assert_eq!(error.connection_limit(), Some(limit), "{error:?}");
            let platform = FakePlatform::default();
            let answer = report(&platform, "stripe_apply_event", error);
            assert_eq!((answer.status, answer.code), (503, "database_busy"));
            assert_eq!(header(&answer, "retry-after"), Some("2"));
            let logs = platform.logs.borrow();
            assert!(logs[0].contains("database_busy") && logs[0].contains(named), "{logs:?}");
            assert!(!logs[0].contains('\n'), "one failure, one log line: {logs:?}");
        }
    }
}
