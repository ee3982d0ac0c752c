//! `multipart/form-data` (RFC 7578 over RFC 2046): the parser for what browsers send
//! (`FormData`), and the builder for what we send upstream.
//!
//! Written here rather than taken from a crate: the form we accept is tiny (three fields)
//! and the crates that parse it are built around async streams we do not have. The
//! parser borrows the parts from the body (no copy of the audio) and runs in time linear
//! in the body: the delimiter `\r\n--boundary` has its only `\r` at the start (a boundary
//! may not contain one, RFC 2046 `bchars`), so each comparison started at a `\r` ends at
//! or before the next `\r`, and the bytes between candidates are never looked at twice.
//!
//! Bounds: at most [`MAX_PARTS`] parts and [`MAX_HEADER_BYTES`] of headers per part.

use std::fmt;

/// More parts than any client of ours sends (file, language, prompt).
pub const MAX_PARTS: usize = 16;
/// Headers of one part: a name, a filename and a content type fit in far less.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// RFC 2046: a boundary is 1 to 70 characters.
const MAX_BOUNDARY_LEN: usize = 70;

/// One part of a form, borrowing its content from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of its `Content-Disposition: form-data`.
    pub name: String,
    /// The `filename`, when the part is a file (browsers send `blob` for a `Blob`).
    pub filename: Option<String>,
    /// The part's `Content-Type`, as sent (trimmed), when there is one.
    pub content_type: Option<String>,
    pub body: &'a [u8],
}

/// Why a body is not a form we can read. The messages name no content of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartError {
    /// `Content-Type` has no usable `boundary` parameter.
    Boundary,
    /// The body does not start with the boundary.
    NoFirstBoundary,
    /// A part (or the closing boundary) is missing: the body was cut off.
    Truncated,
    /// A line after a boundary is not CRLF, or a header line is malformed.
    Malformed(&'static str),
    /// A part's headers exceed [`MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// More than [`MAX_PARTS`] parts.
    TooManyParts,
    /// A part without `Content-Disposition: form-data; name="…"`.
    NoName,
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::Boundary => write!(f, "the Content-Type has no valid boundary parameter"),
            MultipartError::NoFirstBoundary => write!(f, "the body does not start with the boundary"),
            MultipartError::Truncated => write!(f, "the body ends before the closing boundary"),
            MultipartError::Malformed(what) => write!(f, "{what}"),
            MultipartError::HeadersTooLarge => write!(f, "a part's headers exceed {MAX_HEADER_BYTES} bytes"),
            MultipartError::TooManyParts => write!(f, "the form has more than {MAX_PARTS} parts"),
            MultipartError::NoName => write!(f, "a part has no Content-Disposition form-data name"),
        }
    }
}

/// RFC 2046 `bchars`: what a boundary may be made of (space only inside).
fn is_bchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

/// The `boundary` parameter of a `multipart/form-data` content type (quoted or not).
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let (_, params) = split_params(content_type);
    let value = params
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .ok_or(MultipartError::Boundary)?;
    let ok =
        !value.is_empty() && value.len() <= MAX_BOUNDARY_LEN && value.bytes().all(is_bchar) && !value.ends_with(' ');
    if ok {
        Ok(value)
    } else {
        Err(MultipartError::Boundary)
    }
}

/// The parts of `body`, in order. The preamble before the first boundary and the
/// epilogue after the closing one are ignored, as RFC 2046 says.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let dash_boundary = format!("--{boundary}");
    let delimiter = format!("\r\n{dash_boundary}");
    let mut pos = if body.starts_with(dash_boundary.as_bytes()) {
        dash_boundary.len()
    } else {
        find(body, delimiter.as_bytes(), 0).ok_or(MultipartError::NoFirstBoundary)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        // After a delimiter: `--` closes the form; otherwise optional whitespace
        // (transport padding) and CRLF start a part.
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let padding = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        let rest = &rest[padding..];
        if rest.is_empty() {
            return Err(MultipartError::Truncated);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(MultipartError::Malformed("a boundary line does not end with CRLF"));
        }
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        pos += padding + 2;

        // Headers end at the first empty line (CRLF CRLF, or CRLF at once: no headers).
        let window_end = body.len().min(pos.saturating_add(MAX_HEADER_BYTES + 4));
        let window = &body[pos..window_end];
        let header_len = if window.starts_with(b"\r\n") {
            0
        } else {
            match find(window, b"\r\n\r\n", 0) {
                Some(end) => end + 2,
                None if window_end == body.len() => return Err(MultipartError::Truncated),
                None => return Err(MultipartError::HeadersTooLarge),
            }
        };
        if header_len > MAX_HEADER_BYTES {
            return Err(MultipartError::HeadersTooLarge);
        }
        let headers = &body[pos..pos + header_len];
        let content_start = pos + header_len + 2;
        let content_end = find(body, delimiter.as_bytes(), content_start).ok_or(MultipartError::Truncated)?;
        let mut part = part_headers(headers)?;
        part.body = &body[content_start..content_end];
        parts.push(part);
        pos = content_end + delimiter.len();
    }
}

/// Reads `Content-Disposition` and `Content-Type` from a part's header block (each line
/// ending in CRLF); other headers are ignored.
fn part_headers(block: &[u8]) -> Result<Part<'static>, MultipartError> {
    let text = std::str::from_utf8(block).map_err(|_| MultipartError::Malformed("a part header is not UTF-8"))?;
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in text.split_terminator("\r\n") {
        if line.starts_with([' ', '\t']) {
            return Err(MultipartError::Malformed("a part header is folded"));
        }
        let (key, value) = line.split_once(':').ok_or(MultipartError::Malformed("a part header line has no colon"))?;
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            if name.is_some() {
                return Err(MultipartError::Malformed("a part has two Content-Disposition headers"));
            }
            let (kind, params) = split_params(value);
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(MultipartError::NoName);
            }
            for (k, v) in params {
                if k.eq_ignore_ascii_case("name") {
                    name = Some(v);
                } else if k.eq_ignore_ascii_case("filename") {
                    filename = Some(v);
                }
            }
            if name.is_none() {
                return Err(MultipartError::NoName);
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let name = name.ok_or(MultipartError::NoName)?;
    Ok(Part { name, filename, content_type, body: &[] })
}

/// `type/subtype; k=v; k="quoted \"v\""` → (`type/subtype`, [(k, v)]). Lenient: a
/// parameter it cannot read is skipped, and the caller decides whether it needed it.
pub fn split_params(value: &str) -> (String, Vec<(String, String)>) {
    let (head, mut rest) = match value.find(';') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, ""),
    };
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let Some(end) = end else { break };
            rest = &quoted[end..];
            out
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            let token = rest[..end].trim().to_string();
            rest = &rest[end..];
            token
        };
        params.push((key, value));
    }
    (head.trim().to_string(), params)
}

/// The first `needle` in `haystack` at or after `from`. Candidates start at the needle's
/// first byte only; with the delimiter this parser searches for, that keeps the search
/// linear (see the module docs).
pub fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        let offset = haystack[i..=haystack.len() - needle.len()].iter().position(|b| *b == first)?;
        i += offset;
        if haystack[i + 1..i + needle.len()] == *tail {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A `multipart/form-data` body built for an upstream. The boundary is random and
/// checked against every part's content, so no content can end a part early.
pub struct FormBuilder {
    boundary: String,
    body: Vec<u8>,
}

impl FormBuilder {
    /// `random`: at least 16 random bytes (the boundary's entropy); `capacity`: the
    /// expected body size, so a large file is not copied while the body grows.
    pub fn new(random: &[u8], capacity: usize) -> FormBuilder {
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        FormBuilder { boundary: format!("libero-form-{hex}"), body: Vec::with_capacity(capacity + 1024) }
    }

    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// Whether `content` could be sent under this boundary (it never contains the
    /// delimiter). With a random 128-bit boundary this fails only for content made to.
    pub fn fits(&self, content: &[u8]) -> bool {
        find(content, format!("--{}", self.boundary).as_bytes(), 0).is_none()
    }

    /// A text field. `name` is ours (a constant), so it needs no escaping.
    pub fn text(&mut self, name: &str, value: &str) -> &mut Self {
        self.open(name, None, None);
        self.body.extend_from_slice(value.as_bytes());
        self
    }

    /// A file field. `name`, `filename` and `content_type` are ours (constants).
    pub fn file(&mut self, name: &str, filename: &str, content_type: &str, content: &[u8]) -> &mut Self {
        self.open(name, Some(filename), Some(content_type));
        self.body.extend_from_slice(content);
        self
    }

    fn open(&mut self, name: &str, filename: Option<&str>, content_type: Option<&str>) {
        if !self.body.is_empty() {
            self.body.extend_from_slice(b"\r\n");
        }
        self.body.extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(filename) = filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        self.body.extend_from_slice(disposition.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            self.body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
    }

    /// The request's `Content-Type` and body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        if !self.body.is_empty() {
            self.body.extend_from_slice(b"\r\n");
        }
        self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (format!("multipart/form-data; boundary={}", self.boundary), self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHROME: &[u8] = b"------WebKitFormBoundaryq2mjPZ1XeR7vBx3k\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
Content-Type: audio/webm;codecs=opus\r\n\
\r\n\
\x1a\x45\xdf\xa3 audio \r\n--not-the-boundary\r\n\
------WebKitFormBoundaryq2mjPZ1XeR7vBx3k\r\n\
Content-Disposition: form-data; name=\"language\"\r\n\
\r\n\
de\r\n\
------WebKitFormBoundaryq2mjPZ1XeR7vBx3k--\r\n";

    #[test]
    fn reads_a_browser_form() {
        let boundary = boundary("multipart/form-data; boundary=----WebKitFormBoundaryq2mjPZ1XeR7vBx3k").unwrap();
        let parts = parse(CHROME, &boundary).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("blob"));
        assert_eq!(parts[0].content_type.as_deref(), Some("audio/webm;codecs=opus"));
        assert_eq!(parts[0].body, b"\x1a\x45\xdf\xa3 audio \r\n--not-the-boundary");
        assert_eq!((parts[1].name.as_str(), parts[1].body), ("language", &b"de"[..]));
    }

    #[test]
    fn boundaries_quoted_or_not_and_invalid() {
        assert_eq!(boundary("multipart/form-data; boundary=\"a b:c\"").unwrap(), "a b:c");
        assert_eq!(boundary("Multipart/Form-Data;BOUNDARY=xyz; charset=utf-8").unwrap(), "xyz");
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"a\rb\"",
            "multipart/form-data; boundary=\"trailing \"",
            &format!("multipart/form-data; boundary={}", "x".repeat(71)),
        ] {
            assert_eq!(boundary(bad), Err(MultipartError::Boundary), "{bad:?}");
        }
    }

    #[test]
    fn preamble_padding_and_epilogue() {
        let body = b"preamble\r\n--b  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--epilogue";
        let parts = parse(body, "b").unwrap();
        assert_eq!((parts[0].name.as_str(), parts[0].body), ("a", &b"1"[..]));
    }

    #[test]
    fn broken_forms_are_refused() {
        let part = "Content-Disposition: form-data; name=\"a\"\r\n\r\n1";
        for (body, error) in [
            (String::new(), MultipartError::NoFirstBoundary),
            ("--b".to_string(), MultipartError::Truncated),
            (format!("--b\r\n{part}"), MultipartError::Truncated),
            (format!("--b\r\n{part}\r\n--b"), MultipartError::Truncated),
            (format!("--bx\r\n{part}\r\n--b--"), MultipartError::Malformed("a boundary line does not end with CRLF")),
            ("--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--".to_string(), MultipartError::NoName),
            (
                "--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\n1\r\n--b--".to_string(),
                MultipartError::NoName,
            ),
            (
                "--b\r\nno colon\r\n\r\n1\r\n--b--".to_string(),
                MultipartError::Malformed("a part header line has no colon"),
            ),
            (format!("--b\r\nX: {}\r\n\r\n1\r\n--b--", "y".repeat(MAX_HEADER_BYTES)), MultipartError::HeadersTooLarge),
            (format!("--b\r\n{}--", format!("{part}\r\n--b\r\n").repeat(MAX_PARTS + 1)), MultipartError::TooManyParts),
        ] {
            assert_eq!(parse(body.as_bytes(), "b"), Err(error), "{body:?}");
        }
    }

    #[test]
    fn builder_output_parses_back_byte_for_byte() {
        let audio: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let mut form = FormBuilder::new(&[7; 16], audio.len());
        assert!(form.fits(&audio));
        form.text("model", "gpt-4o-mini-transcribe")
            .file("file", "audio.webm", "audio/webm", &audio)
            .text("prompt", "a\r\nb");
        let (content_type, body) = form.finish();
        let parts = parse(&body, &boundary(&content_type).unwrap()).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].body, &audio[..]);
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/webm"));
        assert_eq!(parts[2].body, b"a\r\nb");
        let tricky = format!("x--{}y", FormBuilder::new(&[7; 16], 0).boundary());
        assert!(!FormBuilder::new(&[7; 16], 0).fits(tricky.as_bytes()));
    }

    #[test]
    fn search_is_linear_on_near_miss_delimiters() {
        // 4 MiB of almost-delimiters: a quadratic search would take minutes.
        let near = format!("\r\n--{}", "b".repeat(69));
        let mut body =
            format!("--{}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n", "b".repeat(70)).into_bytes();
        while body.len() < 4 << 20 {
            body.extend_from_slice(near.as_bytes());
        }
        let started = std::time::Instant::now();
        assert_eq!(parse(&body, &"b".repeat(70)), Err(MultipartError::Truncated));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..2048), b in "[a-z0-9'()+_,./:=? -]{1,10}") {
            let _ = parse(&body, &b);
            let _ = boundary(&String::from_utf8_lossy(&body));
        }

        #[test]
        fn never_panics_on_almost_forms(
            pieces in proptest::collection::vec(prop_oneof![
                Just("--b".to_string()), Just("\r\n".to_string()), Just("--".to_string()),
                Just("Content-Disposition: form-data; name=\"file\"; filename=\"x\"".to_string()),
                Just("Content-Type: audio/webm".to_string()), Just(": \"\\;=".to_string()),
                "[ -~]{0,8}".prop_map(String::from),
            ], 0..24)
        ) {
            let body = pieces.concat();
            if let Ok(parts) = parse(body.as_bytes(), "b") {
                for part in parts {
                    prop_assert!(part.body.len() <= body.len());
                }
            }
        }
    }
}
