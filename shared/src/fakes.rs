//! An in-memory [`Platform`] for unit tests of request logic: variables from a map,
//! scripted database answers and upstream responses, a fixed clock.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::db::{DbError, SqlParam, SqlRow};
use crate::http::outbound::{BytesReader, OutboundError, OutboundRequest, OutboundResponse};
use crate::Platform;

/// One scripted upstream answer: status, headers and body, or a transport error.
pub type ScriptedUpstream = Result<(u16, Vec<(String, String)>, Vec<u8>), OutboundError>;

#[derive(Default)]
pub struct FakePlatform {
    pub variables: HashMap<String, String>,
    pub now_unix_ms: i64,
    pub queries: RefCell<Vec<(String, Vec<SqlParam>)>>,
    pub db_answers: RefCell<VecDeque<Result<Vec<SqlRow>, DbError>>>,
    pub sent: RefCell<Vec<OutboundRequest>>,
    pub upstream: RefCell<VecDeque<ScriptedUpstream>>,
    pub slept: RefCell<Vec<Duration>>,
    pub logs: RefCell<Vec<String>>,
    /// Every variable read, in order: under Spin each is a host call that costs CPU
    /// (docs/benchmark-notes.md), so tests can hold a request to the reads it needs.
    pub variable_reads: RefCell<Vec<String>>,
    clock_ms: RefCell<u64>,
}

impl FakePlatform {
    pub fn with_vars(pairs: &[(&str, &str)]) -> Self {
        Self {
            variables: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            now_unix_ms: 1_700_000_000_000,
            ..Self::default()
        }
    }

    pub fn push_upstream(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.upstream.borrow_mut().push_back(Ok((status, headers, body.to_vec())));
    }

    pub fn push_upstream_error(&self, error: OutboundError) {
        self.upstream.borrow_mut().push_back(Err(error));
    }
}

impl Platform for FakePlatform {
    fn variable(&self, name: &str) -> Option<String> {
        self.variable_reads.borrow_mut().push(name.to_string());
        self.variables.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn query(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError> {
        self.queries.borrow_mut().push((sql.to_string(), params.to_vec()));
        let answer = self
            .db_answers
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| Err(DbError::Unavailable("no scripted answer".into())));
        // As strict as Spin 4.0.x, which never returns from a query with zero rows.
        assert!(
            !matches!(&answer, Ok(rows) if rows.is_empty()),
            "scripted a zero-row answer for {sql:?}: on Spin 4.0.0-4.0.2 such a query hangs forever (spin#3671)"
        );
        answer
    }

    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        self.sent.borrow_mut().push(request);
        let next = self.upstream.borrow_mut().pop_front();
        match next {
            Some(Ok((status, headers, body))) => {
                Ok(OutboundResponse { status, headers, body: Box::new(BytesReader(Some(body))) })
            }
            Some(Err(error)) => Err(error),
            None => Err(OutboundError::Connection("no scripted upstream".into())),
        }
    }

    fn now_unix_ms(&self) -> i64 {
        self.now_unix_ms + *self.clock_ms.borrow() as i64
    }

    fn monotonic_ms(&self) -> u64 {
        *self.clock_ms.borrow()
    }

    fn sleep(&self, duration: Duration) {
        self.slept.borrow_mut().push(duration);
        *self.clock_ms.borrow_mut() += duration.as_millis() as u64;
    }

    fn random_bytes(&self, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 37 + 11) as u8).collect()
    }

    fn log(&self, line: &str) {
        self.logs.borrow_mut().push(line.to_string());
    }
}
