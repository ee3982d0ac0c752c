//! The Spin side (wasm only): turns the WASI HTTP request into an [`ApiRequest`], runs
//! the endpoint, writes the [`ApiResponse`] back (streaming where the body streams), and
//! implements [`Platform`] with Spin's variables, outbound Postgres and outbound HTTP.

mod outbound;
mod postgres;

use std::cell::RefCell;
use std::time::Duration;

use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::wit::wasi::http0_2_0::types::{self as wasi_http, Fields, OutgoingBody, OutgoingResponse};
use wasi::io::streams::StreamError;

use crate::db::{DbError, SqlParam, SqlRow};
use crate::http::outbound::{OutboundError, OutboundRequest, OutboundResponse};
use crate::http::{dispatch, ApiError, ApiRequest, ApiResponse, Body, Endpoint};
use crate::Platform;

/// The entry point every endpoint crate calls from its `#[http_component]`.
pub fn serve(request: IncomingRequest, out: ResponseOutparam, endpoint: &Endpoint) {
    let platform = SpinPlatform::default();
    let started = platform.monotonic_ms();
    let (response, request_id) = match read_request(request, endpoint.body_limit, &platform) {
        Ok(api_request) => {
            let response = dispatch(endpoint, &api_request, &platform);
            (response, api_request.request_id)
        }
        Err((error, partial)) => {
            // The body was refused before we had a whole request; still answer with the
            // same headers (CORS, request id) as any other response.
            let mut response = ApiResponse::from(error);
            crate::http::Cors::from_platform(&platform).decorate(&partial, &mut response);
            response.set_header("x-request-id", &partial.request_id);
            (response, partial.request_id)
        }
    };
    let status = response.status;
    // A body may stream for minutes (a chat, audio). Spin pools 64 connections per
    // database address for each component, and a connection goes back only when the guest
    // drops it: held through a stream, 64 open chats would leave every further request of
    // the component waiting for the database.
    platform.release_database();
    write_response(out.into_inner(), response);
    platform.log(&format!(
        "{} {} status={} ms={}",
        endpoint.name,
        request_id,
        status,
        platform.monotonic_ms().saturating_sub(started)
    ));
}

fn method_name(method: &wasi_http::Method) -> String {
    use wasi_http::Method::*;
    match method {
        Get => "GET".into(),
        Head => "HEAD".into(),
        Post => "POST".into(),
        Put => "PUT".into(),
        Delete => "DELETE".into(),
        Connect => "CONNECT".into(),
        Options => "OPTIONS".into(),
        Trace => "TRACE".into(),
        Patch => "PATCH".into(),
        Other(other) => other.to_ascii_uppercase(),
    }
}

fn read_request(
    request: IncomingRequest,
    body_limit: usize,
    platform: &SpinPlatform,
) -> Result<ApiRequest, (ApiError, ApiRequest)> {
    let headers: Vec<(String, String)> = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let path_with_query = request.path_with_query().unwrap_or_default();
    let query = path_with_query.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let path = match find("spin-path-info") {
        Some(info) if !info.is_empty() => info.to_string(),
        _ => "/".to_string(),
    };
    let request_id = ApiRequest::choose_request_id(find("x-request-id"), &platform.random_bytes(12));
    let mut api_request =
        ApiRequest { method: method_name(&request.method()), path, query, headers, body: Vec::new(), request_id };

    let declared = api_request.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > body_limit as u64) {
        return Err((ApiError::payload_too_large(body_limit), api_request));
    }
    match read_body(request, body_limit) {
        Ok(body) => {
            api_request.body = body;
            Ok(api_request)
        }
        Err(error) => Err((error, api_request)),
    }
}

/// Reads the body, refusing it as soon as it passes the limit (never buffering more).
fn read_body(request: IncomingRequest, limit: usize) -> Result<Vec<u8>, ApiError> {
    let unreadable = || ApiError::bad_request("body_unreadable", "The request body could not be read.");
    let body = request.consume().map_err(|_| unreadable())?;
    let stream = body.stream().map_err(|_| unreadable())?;
    let mut buffer = Vec::new();
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                buffer.extend_from_slice(&chunk);
                if buffer.len() > limit {
                    return Err(ApiError::payload_too_large(limit));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return Err(unreadable()),
        }
    }
    drop(stream);
    wasi_http::IncomingBody::finish(body);
    Ok(buffer)
}

fn write_response(out: wasi_http::ResponseOutparam, response: ApiResponse) {
    let header_list: Vec<(String, Vec<u8>)> =
        response.headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
    let headers = Fields::from_list(&header_list).unwrap_or_else(|_| Fields::new());
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let Ok(body) = outgoing.body() else { return };
    wasi_http::ResponseOutparam::set(out, Ok(outgoing));
    let Ok(stream) = body.write() else { return };
    let completed = match response.body {
        Body::Bytes(bytes) => write_all(&stream, &bytes),
        Body::Stream(mut chunks) => loop {
            match chunks.next_chunk() {
                None => break true,
                Some(Ok(chunk)) => {
                    if !write_all(&stream, &chunk) {
                        break false;
                    }
                }
                Some(Err(_)) => break false,
            }
        },
    };
    drop(stream);
    if completed {
        let _ = OutgoingBody::finish(body, None);
    }
    // An incomplete body is dropped without `finish`, which tells the host (and the
    // client) the response was cut short rather than silently ending it.
}

/// Writes in the 4 KiB pieces `blocking-write-and-flush` accepts.
fn write_all(stream: &wasi::io::streams::OutputStream, bytes: &[u8]) -> bool {
    bytes.chunks(4096).all(|piece| stream.blocking_write_and_flush(piece).is_ok())
}

#[derive(Default)]
struct SpinPlatform {
    connection: RefCell<Option<spin_sdk::pg4::Connection>>,
}

impl SpinPlatform {
    /// Returns the request's database connection to Spin's pool (a later statement opens
    /// another).
    fn release_database(&self) {
        self.connection.borrow_mut().take();
    }
}

impl Platform for SpinPlatform {
    fn variable(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name).ok().filter(|value| !value.is_empty())
    }

    fn query(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<SqlRow>, DbError> {
        let mut connection = self.connection.borrow_mut();
        if connection.is_none() {
            let address = crate::settings::DATABASE_URL
                .value(self)
                .ok_or(DbError::NotConfigured(crate::settings::DATABASE_URL.name))?;
            *connection = Some(postgres::open(&address)?);
        }
        let open = connection.as_ref().ok_or(DbError::NotConfigured(crate::settings::DATABASE_URL.name))?;
        postgres::query(open, sql, params)
    }

    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        outbound::send(request)
    }

    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        wasi::clocks::monotonic_clock::now() / 1_000_000
    }

    fn sleep(&self, duration: Duration) {
        wasi::clocks::monotonic_clock::subscribe_duration(duration.as_nanos() as u64).block();
    }

    fn random_bytes(&self, len: usize) -> Vec<u8> {
        wasi::random::random::get_random_bytes(len as u64)
    }

    fn log(&self, line: &str) {
        // One write per line. `eprintln!` would make two (the line, then the newline:
        // stderr is unbuffered), and Spin turns each guest write into a write to the
        // component's log file and one to its own stderr.
        use std::io::Write;
        let mut buffer = String::with_capacity(line.len() + 1);
        buffer.push_str(line);
        buffer.push('\n');
        let _ = std::io::stderr().write_all(buffer.as_bytes());
    }

    fn detached(&self) -> Option<Box<dyn Platform>> {
        // Opens its own database connection on first use; everything else is stateless.
        Some(Box::new(SpinPlatform::default()))
    }
}
