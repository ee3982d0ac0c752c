//! Outbound HTTP through `wasi:http/outgoing-handler`, with the timeouts Spin honours
//! (connect, first byte, between bytes) so no upstream can hold a request forever.

use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::{InputStream, StreamError};

use crate::http::outbound::{ChunkReader, OutboundError, OutboundRequest, OutboundResponse};

pub fn send(request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let header_list: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
    let headers =
        Fields::from_list(&header_list).map_err(|_| OutboundError::Connection("invalid outbound header".into()))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "PUT" => Method::Put,
        other => Method::Other(other.to_string()),
    };
    let invalid = |what: &str| OutboundError::Connection(format!("invalid outbound {what}"));
    outgoing.set_method(&method).map_err(|_| invalid("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|_| invalid("scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|_| invalid("authority"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|_| invalid("path"))?;
    let body = outgoing.body().map_err(|_| invalid("body"))?;

    let options = RequestOptions::new();
    let nanos = request.timeout.as_nanos() as u64;
    let _ = options.set_connect_timeout(Some(nanos));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));

    // Hand the request to the host first, then write the body: the host reads the body
    // as it is written, so a large body cannot fill a buffer nobody drains.
    let future = outgoing_handler::handle(outgoing, Some(options)).map_err(map_error_code)?;
    {
        let stream = body.write().map_err(|_| invalid("body"))?;
        for piece in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|_| OutboundError::Connection("request body write failed".into()))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(map_error_code)?;

    future.subscribe().block();
    let incoming = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(map_error_code(code)),
        Some(Err(())) | None => return Err(OutboundError::Connection("no response".into())),
    };
    let status = incoming.status();
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let body = incoming.consume().map_err(|_| OutboundError::Body("unreadable".into()))?;
    let stream = body.stream().map_err(|_| OutboundError::Body("unreadable".into()))?;
    Ok(OutboundResponse { status, headers, body: Box::new(WasiBody { stream: Some(stream), body: Some(body) }) })
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), OutboundError> {
    let bad = || OutboundError::Connection("invalid upstream url".into());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, path))
}

fn map_error_code(code: ErrorCode) -> OutboundError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => OutboundError::Timeout,
        ErrorCode::HttpRequestDenied => OutboundError::Connection("host not allowed".into()),
        other => OutboundError::Connection(format!("{other:?}")),
    }
}

struct WasiBody {
    // Dropped before `body`: a stream must go before the body it came from.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
}

impl ChunkReader for WasiBody {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, OutboundError> {
        let Some(stream) = &self.stream else { return Ok(None) };
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(StreamError::Closed) => {
                self.stream = None;
                if let Some(body) = self.body.take() {
                    let _ = IncomingBody::finish(body);
                }
                Ok(None)
            }
            Err(StreamError::LastOperationFailed(error)) => {
                self.stream = None;
                let detail = error.to_debug_string();
                if detail.contains("timeout") || detail.contains("Timeout") {
                    Err(OutboundError::Timeout)
                } else {
                    Err(OutboundError::Body(detail))
                }
            }
        }
    }
}

impl Drop for WasiBody {
    fn drop(&mut self) {
        self.stream = None;
        self.body = None;
    }
}
