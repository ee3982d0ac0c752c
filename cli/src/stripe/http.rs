//! The [`Platform`] the shared Stripe client runs on from the command line: blocking
//! HTTPS with `ureq` (rustls, ring and the webpki roots, as for Postgres), variables from
//! the command's settings, and no database (the command talks to Postgres itself).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libero_shared::db::{DbError, SqlParam, SqlRow};
use libero_shared::http::outbound::{BytesReader, OutboundError, OutboundRequest, OutboundResponse};
use libero_shared::Platform;
use ureq::RequestExt;

/// Stripe's objects are a few KiB; a page of 100 a few hundred.
const MAX_BODY: u64 = 8 * 1024 * 1024;

pub struct CliPlatform {
    variables: HashMap<String, String>,
    agent: ureq::Agent,
    started: Instant,
}

impl CliPlatform {
    /// `variables` as the components have them (`stripe_secret_key`, `stripe_api_base`).
    pub fn new(variables: HashMap<String, String>) -> Self {
        // Statuses are answers, not errors: the shared client reads Stripe's error body.
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { variables, agent, started: Instant::now() }
    }
}

fn transport_error(error: ureq::Error) -> OutboundError {
    match error {
        ureq::Error::Timeout(_) => OutboundError::Timeout,
        ureq::Error::BodyExceedsLimit(_) => OutboundError::BodyTooLarge,
        other => OutboundError::Connection(other.to_string()),
    }
}

impl Platform for CliPlatform {
    fn variable(&self, name: &str) -> Option<String> {
        self.variables.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn query(&self, _sql: &str, _params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError> {
        Err(DbError::NotConfigured("database_url"))
    }

    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let mut builder = ureq::http::Request::builder().method(request.method).uri(request.url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let timeout = Some(request.timeout);
        let response = if request.method == "GET" || request.method == "DELETE" {
            let http = builder.body(()).map_err(|e| OutboundError::Connection(e.to_string()))?;
            http.with_agent(&self.agent).configure().timeout_global(timeout).build().run()
        } else {
            let http = builder.body(request.body).map_err(|e| OutboundError::Connection(e.to_string()))?;
            http.with_agent(&self.agent).configure().timeout_global(timeout).build().run()
        };
        let mut response = response.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let body = response.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(transport_error)?;
        Ok(OutboundResponse { status, headers, body: Box::new(BytesReader(Some(body))) })
    }

    fn now_unix_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn random_bytes(&self, len: usize) -> Vec<u8> {
        // Only for request ids: unique enough from the clock, the process and a counter.
        use std::hash::{BuildHasher, Hasher};
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
            hasher.write_u32(std::process::id());
            out.extend_from_slice(&hasher.finish().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn log(&self, line: &str) {
        eprintln!("libero: {line}");
    }
}
