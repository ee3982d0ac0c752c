//! Server-sent events as OpenAI streams them: events separated by a blank line, each
//! with one or more `data:` lines. Upstream chunks split events anywhere, so bytes are
//! buffered until an event is complete.

/// One event may not grow past this while incomplete (a stream that never sends a blank
/// line must not exhaust memory).
const MAX_PENDING_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
}

impl SseParser {
    /// Adds bytes and returns the `data` of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, &'static str> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + separator).take(end).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        if self.pending.len() > MAX_PENDING_BYTES {
            return Err("stream event too large");
        }
        Ok(out)
    }
}

/// Where the first complete event ends, and the length of the blank-line separator.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = find(buffer, b"\n\n").map(|i| (i, 2));
    let crlf = find(buffer, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
