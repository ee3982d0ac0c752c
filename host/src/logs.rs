//! Guest stdout/stderr, captured line by line (the secret-leak tests read them) and
//! optionally echoed to the host's stderr.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Lines kept; older ones are dropped so a long-running server does not grow forever.
const MAX_LINES: usize = 100_000;

/// The lines an app's components (and the host, about them) have written.
#[derive(Clone, Default)]
pub struct LogBuffer {
    lines: Arc<Mutex<VecDeque<String>>>,
    echo: bool,
}

impl LogBuffer {
    pub fn new(echo: bool) -> Self {
        LogBuffer { lines: Default::default(), echo }
    }

    pub fn push(&self, line: String) {
        if self.echo {
            eprintln!("{line}");
        }
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == MAX_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A WASI output stream whose lines land here, prefixed `[<component>] `.
    pub fn stream(&self, component: &str) -> GuestOutput {
        GuestOutput { logs: self.clone(), prefix: format!("[{component}] ") }
    }
}

/// A guest's stdout or stderr.
pub struct GuestOutput {
    logs: LogBuffer,
    prefix: String,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter { logs: self.logs.clone(), prefix: self.prefix.clone(), partial: Vec::new() })
    }
}

/// Splits writes into lines; a trailing partial line is kept until the next newline or
/// until the stream is dropped (the instance ends).
struct LineWriter {
    logs: LogBuffer,
    prefix: String,
    partial: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        self.logs.push(format!("{}{}", self.prefix, text.trim_end_matches('\r')));
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.partial.extend_from_slice(buf);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}
