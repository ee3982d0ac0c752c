//! `spin:postgres/postgres@4.0.0` behind the library's [`SqlParam`]/[`SqlValue`].

use spin_sdk::pg4::{self, Connection, DbValue, ParameterValue};

use crate::db::{DbError, SqlParam, SqlRow, SqlValue};

pub fn open(address: &str) -> Result<Connection, DbError> {
    Connection::open(address).map_err(map_error)
}

pub fn query(connection: &Connection, sql: &str, params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError> {
    let params: Vec<ParameterValue> = params.iter().map(to_parameter).collect();
    let rows = connection.query(sql, &params).map_err(map_error)?;
    Ok(rows.rows.into_iter().map(|row| row.into_iter().map(from_value).collect()).collect())
}

fn to_parameter(param: &SqlParam) -> ParameterValue {
    match param {
        SqlParam::Null => ParameterValue::DbNull,
        SqlParam::Bool(b) => ParameterValue::Boolean(*b),
        SqlParam::Int32(i) => ParameterValue::Int32(*i),
        SqlParam::Int64(i) => ParameterValue::Int64(*i),
        SqlParam::Text(s) => ParameterValue::Str(s.clone()),
        SqlParam::Uuid(s) => ParameterValue::Uuid(s.clone()),
        SqlParam::Jsonb(bytes) => ParameterValue::Jsonb(bytes.clone()),
        SqlParam::Bytes(bytes) => ParameterValue::Binary(bytes.clone()),
    }
}

fn from_value(value: DbValue) -> SqlValue {
    match value {
        DbValue::DbNull => SqlValue::Null,
        DbValue::Boolean(b) => SqlValue::Bool(b),
        DbValue::Int8(i) => SqlValue::Int(i.into()),
        DbValue::Int16(i) => SqlValue::Int(i.into()),
        DbValue::Int32(i) => SqlValue::Int(i.into()),
        DbValue::Int64(i) => SqlValue::Int(i),
        DbValue::Floating32(f) => SqlValue::Float(f.into()),
        DbValue::Floating64(f) => SqlValue::Float(f),
        DbValue::Str(s) => SqlValue::Text(s),
        DbValue::Binary(bytes) => SqlValue::Bytes(bytes),
        DbValue::Jsonb(bytes) => SqlValue::Json(bytes),
        DbValue::Uuid(s) | DbValue::Decimal(s) => SqlValue::Other(s),
        DbValue::Date((y, m, d)) => SqlValue::Other(format!("{y:04}-{m:02}-{d:02}")),
        DbValue::Datetime((y, mo, d, h, mi, s, _)) => {
            SqlValue::Other(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
        }
        DbValue::Timestamp(secs) => SqlValue::Int(secs),
        other => SqlValue::Other(format!("{other:?}")),
    }
}

fn map_error(error: pg4::PgError) -> DbError {
    use pg4::{PgError, QueryError};
    match error {
        PgError::ConnectionFailed(detail) => DbError::Unavailable(detail),
        PgError::QueryFailed(QueryError::DbError(db)) => DbError::Query { sqlstate: db.code, message: db.message },
        // No SQLSTATE means the failure happened below SQL: the connection broke.
        PgError::QueryFailed(QueryError::Text(detail)) => DbError::Unavailable(detail),
        PgError::BadParameter(detail) | PgError::ValueConversionFailed(detail) => DbError::Conversion(detail),
        PgError::Other(detail) => DbError::Unavailable(detail),
    }
}
