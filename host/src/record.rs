//! A record of every response the host sent (method, path, status, headers and a
//! bounded copy of the body, teed from streamed bodies as they flow), for the contract
//! and secret-leak checks that [`crate::testing::TestApp`] runs when a test ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::ResponseBody;

/// At most this much of each body is kept (the rest is counted, not stored).
pub const MAX_RECORDED_BODY: usize = 1 << 20;
/// At most this many responses are kept per app.
const MAX_RECORDS: usize = 20_000;
/// At most this many body bytes in all per app; past it, bodies are dropped (marked
/// truncated, so the contract check skips their schema).
const MAX_TOTAL_BODY: usize = 256 << 20;

/// One response as the client received it.
#[derive(Debug, Clone)]
pub struct RecordedResponse {
    pub method: String,
    /// The request path without the query.
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The first [`MAX_RECORDED_BODY`] bytes of the body.
    pub body: Vec<u8>,
    /// The body was longer than what is kept.
    pub truncated: bool,
    /// The body ended with an error (e.g. the guest trapped mid-stream) or the client
    /// went away before its end.
    pub incomplete: bool,
}

impl RecordedResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The responses of one app, shared by its connections.
#[derive(Clone, Default)]
pub struct Recorder {
    records: Arc<Mutex<Vec<RecordedResponse>>>,
    body_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn snapshot(&self) -> Vec<RecordedResponse> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, mut record: RecordedResponse) {
        use std::sync::atomic::Ordering;
        if self.body_bytes.fetch_add(record.body.len(), Ordering::Relaxed) + record.body.len() > MAX_TOTAL_BODY {
            record.body = Vec::new();
            record.truncated = true;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() < MAX_RECORDS {
            records.push(record);
        }
    }

    /// Wraps `response` so that its body is copied as it is sent and the whole is recorded
    /// once the body ends (or is dropped).
    pub fn tee(
        &self,
        method: &str,
        path: &str,
        response: hyper::Response<ResponseBody>,
    ) -> hyper::Response<ResponseBody> {
        let (parts, body) = response.into_parts();
        let record = RecordedResponse {
            method: method.to_string(),
            path: path.to_string(),
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: Vec::new(),
            truncated: false,
            incomplete: true,
        };
        let tee = Tee { inner: body, record: Some(record), recorder: self.clone() };
        hyper::Response::from_parts(parts, tee.boxed_unsync())
    }
}

struct Tee {
    inner: ResponseBody,
    record: Option<RecordedResponse>,
    recorder: Recorder,
}

impl Tee {
    fn finish(&mut self, complete: bool) {
        if let Some(mut record) = self.record.take() {
            record.incomplete = !complete;
            self.recorder.push(record);
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), this.record.as_mut()) {
                    let room = MAX_RECORDED_BODY.saturating_sub(record.body.len());
                    if data.len() > room {
                        record.truncated = true;
                    }
                    record.body.extend_from_slice(&data[..data.len().min(room)]);
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // An empty body may never be polled; one dropped early is incomplete.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}
