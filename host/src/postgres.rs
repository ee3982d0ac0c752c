//! `spin:postgres/postgres@4.0.0` over tokio-postgres, converting values the way Spin's
//! outbound Postgres does, so a component that works here works under Spin and fails
//! here where it would fail there:
//!
//! * Parameters are bound by their WIT case, not by the statement's types: `str` binds a
//!   Rust `String` (text, varchar, bpchar, name only: a `str` for a `uuid` or `jsonb`
//!   parameter fails; cast in SQL, `$1::text::uuid`, or send `uuid`/`jsonb`), `datetime`
//!   binds a `timestamp` (without time zone), `timestamp` (epoch seconds) binds a
//!   `timestamptz`.
//! * Columns are read by their Postgres type. `timestamptz` columns are read as Spin
//!   reads them, through a `timestamp` (without time zone) decoder, which Postgres' binary
//!   format does not allow, so such a query fails: select `col AT TIME ZONE 'UTC'`,
//!   `extract(epoch from col)` or `col::text` instead. `json` (not `jsonb`), `name` and
//!   other types come back as `unsupported` raw bytes.
//! * A query with no rows never returns under Spin 4.0.0–4.0.2 (spin#3671): the instance
//!   hangs and keeps its pooled connection. Here such a query traps the instance with
//!   [`ZERO_ROWS_HANG`] in the message and is counted ([`Pools::zero_row_queries`]), so
//!   the test that sent it fails instead of passing on a host kinder than Spin.
//! * Connections are pooled per component and address, as Spin keeps a pool for each
//!   component (`AppOptions::pg_pool_size` at most: 64, Spin's size, unless set): a
//!   component whose requests hold all of theirs leaves the others' untouched, and an app
//!   may open that many connections for each component. They are recycled with
//!   deadpool's `Clean` method, as Spin does: session state is reset but an open
//!   transaction survives into the next request that gets the connection.
//!
//! Range types (`range-int32`, ...) are not supported here (the app does not use them):
//! such parameters fail with `bad-parameter` and such columns read as `unsupported`.

// The WIT error type is large; it is what the interface returns.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BufMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::{NoTls, Row};
use wasmtime::component::Resource;

use super::allowed_hosts::AllowedHosts;
use super::bindings::pg::{self, Column, DbDataType, DbValue, ParameterValue, RowSet};

/// What the host says when a guest's `query` returns zero rows.
pub const ZERO_ROWS_HANG: &str = "spin:postgres query returned zero rows: Spin 4.0.0-4.0.2 never \
    return from such a query (spin#3671) and the request would hang forever; make the statement \
    return exactly one row (see shared/src/db.rs, query_row)";

/// Spin's per-address pool size (`CONNECTION_POOL_SIZE` in its outbound Postgres).
pub const SPIN_POOL_SIZE: usize = 64;

type BoxError = Box<dyn StdError + Sync + Send>;

/// An open connection as the guest holds it: a pooled client, returned to the pool
/// when the guest drops it (or its instance ends).
pub struct Connection {
    client: deadpool_postgres::Object,
}

/// The connection pools of one running app, one per component and address.
pub struct Pools {
    pools: Mutex<HashMap<(String, String), Pool>>,
    /// Connections per address at most.
    size: usize,
    /// Statements the guests ran (`query` and `execute` calls), for the benchmark's
    /// round-trips-per-request figure.
    statements: AtomicU64,
    /// Queries that returned zero rows (each trapped its instance; see [`ZERO_ROWS_HANG`]).
    zero_row_queries: AtomicU64,
}

impl Pools {
    pub fn new(size: usize) -> Self {
        Pools { pools: Mutex::default(), size, statements: AtomicU64::new(0), zero_row_queries: AtomicU64::new(0) }
    }

    fn pool(&self, component: &str, address: &str) -> anyhow::Result<Pool> {
        let mut pools = self.pools.lock().expect("pool map lock");
        let key = (component.to_string(), address.to_string());
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let config: tokio_postgres::Config = address.parse()?;
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Clean };
        // Like Spin: TLS unless the address disables it (the default, `prefer`, falls
        // back to plain TCP when the server does not offer TLS, as a local one does not).
        let manager = if config.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(config, NoTls, manager_config)
        } else {
            Manager::from_config(config, tls_connector()?, manager_config)
        };
        // Most recently used first: at low concurrency requests keep landing on the same
        // few (warm) backends instead of rotating through every connection the pool ever
        // opened. Which connection a request gets is not something a guest can observe
        // beyond what `Clean` recycling already allows (see the module docs).
        let pool = Pool::builder(manager).max_size(self.size).queue_mode(deadpool_postgres::QueueMode::Lifo).build()?;
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// Statements run so far through these pools.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Queries that returned zero rows, which Spin 4.0.x would have hung on.
    pub fn zero_row_queries(&self) -> u64 {
        self.zero_row_queries.load(Ordering::Relaxed)
    }

    /// Closes every pooled connection (the app is stopping).
    pub fn close(&self) {
        for pool in self.pools.lock().expect("pool map lock").values() {
            pool.close();
        }
    }
}

/// Verifies servers against the webpki roots (Supabase and other hosted Postgres).
fn tls_connector() -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The per-request side of the interface.
pub struct PgHost {
    /// The component the request runs (its own pools).
    pub component: String,
    pub pools: Arc<Pools>,
    pub allowed: Arc<AllowedHosts>,
    pub table: wasmtime::component::ResourceTable,
}

impl pg::Host for PgHost {}

impl pg::HostConnection for PgHost {
    async fn open(&mut self, address: String) -> Result<Resource<Connection>, pg::Error> {
        self.ensure_allowed(&address)?;
        let pool =
            self.pools.pool(&self.component, &address).map_err(|e| pg::Error::ConnectionFailed(format!("{e:?}")))?;
        let client = pool.get().await.map_err(|e| pg::Error::ConnectionFailed(format!("{e:?}")))?;
        self.table.push(Connection { client }).map_err(|_| pg::Error::ConnectionFailed("too many connections".into()))
    }

    async fn query(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, pg::Error>> {
        let params = match to_sql_parameters(&params) {
            Ok(params) => params,
            Err(e) => return Ok(Err(pg::Error::BadParameter(format!("{e:?}")))),
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        self.pools.statements.fetch_add(1, Ordering::Relaxed);
        let client = match self.client(&conn) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let rows = match client.query(statement.as_str(), &refs).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(query_failed(e))),
        };
        let Some(first) = rows.first() else {
            self.pools.zero_row_queries.fetch_add(1, Ordering::Relaxed);
            let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(wasmtime::format_err!("{ZERO_ROWS_HANG}. Statement: {statement}"));
        };
        let columns = first
            .columns()
            .iter()
            .map(|c| Column { name: c.name().to_string(), data_type: data_type(c.type_()) })
            .collect();
        let rows = rows
            .iter()
            .map(convert_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pg::Error::QueryFailed(pg::QueryError::Text(format!("{e:?}"))));
        Ok(rows.map(|rows| RowSet { columns, rows }))
    }

    async fn execute(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, pg::Error> {
        // Spin reports a parameter that does not convert differently here than in `query`.
        let params = to_sql_parameters(&params).map_err(|e| pg::Error::ValueConversionFailed(format!("{e:?}")))?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        self.pools.statements.fetch_add(1, Ordering::Relaxed);
        let client = self.client(&conn)?;
        client.execute(statement.as_str(), &refs).await.map_err(query_failed)
    }

    async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        // Dropping the pooled object returns the connection to its pool.
        self.table.delete(conn)?;
        Ok(())
    }
}

impl PgHost {
    fn client(&self, conn: &Resource<Connection>) -> Result<&tokio_postgres::Client, pg::Error> {
        self.table.get(conn).map(|c| &**c.client).map_err(|_| pg::Error::ConnectionFailed("no connection found".into()))
    }

    /// Every TCP host of the address must be allowed as `postgres://host:port`.
    fn ensure_allowed(&self, address: &str) -> Result<(), pg::Error> {
        let config: tokio_postgres::Config =
            address.parse().map_err(|e: tokio_postgres::Error| pg::Error::ConnectionFailed(e.to_string()))?;
        let ports = config.get_ports();
        for (i, host) in config.get_hosts().iter().enumerate() {
            match host {
                tokio_postgres::config::Host::Tcp(name) => {
                    let port = ports.get(i).or(if ports.len() == 1 { ports.first() } else { None });
                    if !self.allowed.allows("postgres", name, port.copied()) {
                        let shown = match port {
                            Some(p) => format!("{name}:{p}"),
                            None => name.clone(),
                        };
                        return Err(pg::Error::ConnectionFailed(format!(
                            "address postgres://{shown} is not permitted"
                        )));
                    }
                }
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => {
                    return Err(pg::Error::ConnectionFailed("Unix sockets are not supported on WebAssembly".into()))
                }
            }
        }
        Ok(())
    }
}

fn query_failed(e: tokio_postgres::Error) -> pg::Error {
    let as_text = format!("{e:?}");
    match e.as_db_error() {
        None => pg::Error::QueryFailed(pg::QueryError::Text(as_text)),
        Some(db) => {
            let mut extras = Vec::new();
            let mut extra = |name: &str, value: Option<String>| {
                if let Some(v) = value {
                    extras.push((name.to_string(), v));
                }
            };
            extra("column", db.column().map(str::to_string));
            extra("constraint", db.constraint().map(str::to_string));
            extra("routine", db.routine().map(str::to_string));
            extra("hint", db.hint().map(str::to_string));
            extra("table", db.table().map(str::to_string));
            extra("datatype", db.datatype().map(str::to_string));
            extra("schema", db.schema().map(str::to_string));
            extra("file", db.file().map(str::to_string));
            extra("line", db.line().map(|l| l.to_string()));
            extra("where_", db.where_().map(str::to_string));
            pg::Error::QueryFailed(pg::QueryError::DbError(pg::DbError {
                as_text,
                severity: db.severity().to_string(),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                extras,
            }))
        }
    }
}

// ---- parameters -------------------------------------------------------------------

fn to_sql_parameters(params: &[ParameterValue]) -> anyhow::Result<Vec<Box<dyn ToSql + Send + Sync>>> {
    params.iter().map(to_sql_parameter).collect()
}

fn to_sql_parameter(value: &ParameterValue) -> anyhow::Result<Box<dyn ToSql + Send + Sync>> {
    use anyhow::{anyhow, Context};
    Ok(match value {
        ParameterValue::Boolean(v) => Box::new(*v),
        ParameterValue::Int8(v) => Box::new(*v),
        ParameterValue::Int16(v) => Box::new(*v),
        ParameterValue::Int32(v) => Box::new(*v),
        ParameterValue::Int64(v) => Box::new(*v),
        ParameterValue::Floating32(v) => Box::new(*v),
        ParameterValue::Floating64(v) => Box::new(*v),
        ParameterValue::Str(v) => Box::new(v.clone()),
        ParameterValue::Binary(v) => Box::new(v.clone()),
        ParameterValue::Date((y, m, d)) => Box::new(
            chrono::NaiveDate::from_ymd_opt(*y, (*m).into(), (*d).into())
                .ok_or_else(|| anyhow!("invalid date y={y}, m={m}, d={d}"))?,
        ),
        ParameterValue::Time(t) => Box::new(naive_time(*t)?),
        ParameterValue::Datetime((y, mo, d, h, mi, s, ns)) => {
            let date = chrono::NaiveDate::from_ymd_opt(*y, (*mo).into(), (*d).into())
                .ok_or_else(|| anyhow!("invalid date y={y}, m={mo}, d={d}"))?;
            Box::new(chrono::NaiveDateTime::new(date, naive_time((*h, *mi, *s, *ns))?))
        }
        ParameterValue::Timestamp(secs) => Box::new(
            chrono::DateTime::<chrono::Utc>::from_timestamp(*secs, 0)
                .ok_or_else(|| anyhow!("invalid epoch timestamp {secs}"))?,
        ),
        ParameterValue::Uuid(v) => Box::new(uuid::Uuid::parse_str(v).with_context(|| format!("invalid UUID {v}"))?),
        ParameterValue::Jsonb(v) => Box::new(
            serde_json::from_slice::<serde_json::Value>(v)
                .with_context(|| format!("invalid JSON {}", String::from_utf8_lossy(v)))?,
        ),
        ParameterValue::Decimal(v) => Box::new(decimal(v)?),
        ParameterValue::ArrayInt32(v) => Box::new(v.clone()),
        ParameterValue::ArrayInt64(v) => Box::new(v.clone()),
        ParameterValue::ArrayStr(v) => Box::new(v.clone()),
        ParameterValue::ArrayDecimal(v) => {
            Box::new(v.iter().map(|d| d.as_deref().map(decimal).transpose()).collect::<anyhow::Result<Vec<_>>>()?)
        }
        ParameterValue::Interval(v) => Box::new(Interval(*v)),
        ParameterValue::DbNull => Box::new(PgNull),
        ParameterValue::RangeInt32(_) | ParameterValue::RangeInt64(_) | ParameterValue::RangeDecimal(_) => {
            anyhow::bail!("range parameters are not supported by the libero test host")
        }
    })
}

fn naive_time((h, m, s, ns): (u8, u8, u8, u32)) -> anyhow::Result<chrono::NaiveTime> {
    chrono::NaiveTime::from_hms_nano_opt(h.into(), m.into(), s.into(), ns)
        .ok_or_else(|| anyhow::anyhow!("invalid time {h}:{m}:{s}:{ns}"))
}

fn decimal(v: &str) -> anyhow::Result<rust_decimal::Decimal> {
    use anyhow::Context;
    rust_decimal::Decimal::from_str_exact(v).with_context(|| format!("invalid decimal {v}"))
}

/// SQL NULL for a parameter of any type.
#[derive(Debug)]
struct PgNull;

impl ToSql for PgNull {
    fn to_sql(&self, _: &Type, _: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// `interval` in Postgres' binary layout: microseconds, days, months.
#[derive(Debug)]
struct Interval(pg::Interval);

impl ToSql for Interval {
    fn to_sql(&self, _: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.0.micros);
        out.put_i32(self.0.days);
        out.put_i32(self.0.months);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if raw.len() != 16 {
            return Err("unexpected binary format for Postgres INTERVAL".into());
        }
        Ok(Interval(pg::Interval {
            micros: i64::from_be_bytes(raw[0..8].try_into()?),
            days: i32::from_be_bytes(raw[8..12].try_into()?),
            months: i32::from_be_bytes(raw[12..16].try_into()?),
        }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

/// The raw binary value of a column of any other type.
struct Other(Vec<u8>);

impl<'a> FromSql<'a> for Other {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Other(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

// ---- columns ----------------------------------------------------------------------

fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::BYTEA => DbDataType::Binary,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => DbDataType::Str,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_RANGE => DbDataType::RangeInt32,
        Type::INT8_RANGE => DbDataType::RangeInt64,
        Type::NUM_RANGE => DbDataType::RangeDecimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::NUMERIC_ARRAY => DbDataType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_string()),
    }
}

fn convert_row(row: &Row) -> anyhow::Result<Vec<DbValue>> {
    (0..row.len()).map(|i| convert_entry(row, i)).collect()
}

/// Reads column `i` as `T` (NULL → `db-null`) and wraps it.
fn get<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    f: impl FnOnce(T) -> anyhow::Result<DbValue>,
) -> anyhow::Result<DbValue> {
    match row.try_get::<_, Option<T>>(i)? {
        Some(v) => f(v),
        None => Ok(DbValue::DbNull),
    }
}

fn convert_entry(row: &Row, i: usize) -> anyhow::Result<DbValue> {
    use chrono::{Datelike, Timelike};
    let ty = row.columns()[i].type_().clone();
    match ty {
        Type::BOOL => get(row, i, |v| Ok(DbValue::Boolean(v))),
        Type::BYTEA => get(row, i, |v| Ok(DbValue::Binary(v))),
        Type::FLOAT4 => get(row, i, |v| Ok(DbValue::Floating32(v))),
        Type::FLOAT8 => get(row, i, |v| Ok(DbValue::Floating64(v))),
        Type::INT2 => get(row, i, |v| Ok(DbValue::Int16(v))),
        Type::INT4 => get(row, i, |v| Ok(DbValue::Int32(v))),
        Type::INT8 => get(row, i, |v| Ok(DbValue::Int64(v))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => get(row, i, |v| Ok(DbValue::Str(v))),
        // Spin decodes both through NaiveDateTime, which rejects timestamptz (see above).
        Type::TIMESTAMP | Type::TIMESTAMPTZ => get(row, i, |v: chrono::NaiveDateTime| {
            Ok(DbValue::Datetime((
                v.year(),
                v.month().try_into()?,
                v.day().try_into()?,
                v.hour().try_into()?,
                v.minute().try_into()?,
                v.second().try_into()?,
                v.nanosecond(),
            )))
        }),
        Type::DATE => get(row, i, |v: chrono::NaiveDate| {
            Ok(DbValue::Date((v.year(), v.month().try_into()?, v.day().try_into()?)))
        }),
        Type::TIME => get(row, i, |v: chrono::NaiveTime| {
            Ok(DbValue::Time((v.hour().try_into()?, v.minute().try_into()?, v.second().try_into()?, v.nanosecond())))
        }),
        Type::UUID => get(row, i, |v: uuid::Uuid| Ok(DbValue::Uuid(v.to_string()))),
        Type::JSONB => get(row, i, |v: serde_json::Value| Ok(DbValue::Jsonb(serde_json::to_vec(&v)?))),
        Type::NUMERIC => get(row, i, |v: rust_decimal::Decimal| Ok(DbValue::Decimal(v.to_string()))),
        Type::INT4_ARRAY => get(row, i, |v| Ok(DbValue::ArrayInt32(v))),
        Type::INT8_ARRAY => get(row, i, |v| Ok(DbValue::ArrayInt64(v))),
        Type::NUMERIC_ARRAY => get(row, i, |v: Vec<Option<rust_decimal::Decimal>>| {
            Ok(DbValue::ArrayDecimal(v.iter().map(|d| d.map(|d| d.to_string())).collect()))
        }),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => get(row, i, |v| Ok(DbValue::ArrayStr(v))),
        Type::INTERVAL => get(row, i, |v: Interval| Ok(DbValue::Interval(v.0))),
        _ => get(row, i, |v: Other| Ok(DbValue::Unsupported(v.0))),
    }
}
