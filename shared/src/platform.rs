//! What the request logic needs from the world, as a trait: the Spin host inside a
//! component (`crate::spin`), an in-process implementation natively.

use std::time::Duration;

use crate::db::{DbError, SqlParam, SqlRow};
use crate::http::outbound::{OutboundError, OutboundRequest, OutboundResponse};

pub trait Platform {
    /// The value of a Spin application variable visible to this component, or `None`
    /// when it is undefined or empty (an empty secret means "not configured").
    fn variable(&self, name: &str) -> Option<String>;

    /// Runs one SQL statement on the configured database and returns its rows.
    /// One statement per atomic change: a request that failed between BEGIN and COMMIT
    /// would hand its open transaction to the next request on that pooled connection.
    fn query(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError>;

    /// Sends an HTTP request to an upstream API (Stripe, OpenAI, ElevenLabs).
    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError>;

    /// Milliseconds since the Unix epoch (wall clock).
    fn now_unix_ms(&self) -> i64;

    /// A monotonic instant in milliseconds, for deadlines.
    fn monotonic_ms(&self) -> u64;

    fn sleep(&self, duration: Duration);

    fn random_bytes(&self, len: usize) -> Vec<u8>;

    /// One line to the operator's log. Never pass secrets or user content here.
    fn log(&self, line: &str);

    /// An independent platform of the same kind that a streamed response body can own,
    /// for work after the last chunk (filling a cache, refunding a broken paid stream):
    /// the handler's `&dyn Platform` does not live as long as the body. `None` (the
    /// default) makes callers hold such bodies whole instead of streaming them.
    fn detached(&self) -> Option<Box<dyn Platform>> {
        None
    }
}
