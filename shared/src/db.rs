//! The database as the request logic sees it: one statement in, rows out. Each atomic
//! change is one statement (usually a SQL function call returning jsonb), so a failed or
//! trapped request can never leave a half-done transaction on a pooled connection.

use serde_json::Value;

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
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        if let DbError::NotConfigured(variable) = error {
            return ApiError::config_missing(variable);
        }
        if error.is_unavailable() {
            ApiError::service_unavailable(
                "database_unavailable",
                "The database is unavailable; try again shortly.",
            )
            .with_header("retry-after", "5")
        } else {
            ApiError::internal("A database operation failed.")
        }
    }
}

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
        Some(SqlValue::Json(bytes)) => serde_json::from_slice(&bytes)
            .map_err(|e| DbError::Conversion(format!("invalid json from database: {e}"))),
        Some(SqlValue::Text(text)) => serde_json::from_str(&text)
            .map_err(|e| DbError::Conversion(format!("invalid json from database: {e}"))),
        Some(SqlValue::Null) | None => Ok(Value::Null),
        Some(other) => Err(DbError::Conversion(format!("expected json, got {other:?}"))),
    }
}

/// Logs the failure (without parameters, which may hold user data) and turns it into the
/// client-facing error.
pub fn report(platform: &dyn Platform, context: &str, error: DbError) -> ApiError {
    match &error {
        DbError::Query { sqlstate, message } => {
            platform.log(&format!("db error in {context}: sqlstate={sqlstate} {message}"))
        }
        DbError::Unavailable(detail) => platform.log(&format!("db unavailable in {context}: {detail}")),
        DbError::Conversion(detail) => platform.log(&format!("db conversion in {context}: {detail}")),
        DbError::NotConfigured(variable) => platform.log(&format!("db not configured in {context}: {variable}")),
    }
    error.into()
}
