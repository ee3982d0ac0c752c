//! Stripe's API, the way every call here makes it: form-encoded bodies, the secret key as
//! a bearer token, a pinned `Stripe-Version`, an `Idempotency-Key` on every POST, bounded
//! timeouts, and one retry of what Stripe says is safe to retry.
//!
//! Errors become 502 with our own message and Stripe's error type: Stripe's message (which
//! names object ids and parameters) is logged, with anything key-shaped masked, and never
//! reaches the client; neither does a raw response body.

use std::time::Duration;

use serde_json::Value;

use crate::http::outbound::{OutboundError, OutboundRequest};
use crate::{settings, ApiError, Platform};

/// The API version every request and the webhook endpoint use. Pinned, so a change of
/// the account's default version cannot change the shapes we parse. (In this version a
/// subscription's current period is on its items, and an invoice names its subscription
/// under `parent.subscription_details`.)
pub const STRIPE_VERSION: &str = "2025-03-31.basil";

/// Per attempt: connect, first byte, and each gap between body chunks. Stripe answers in
/// well under a second; a request still waiting after this is better failed and retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Two attempts in all, so one request costs at most ~2 × ATTEMPT_TIMEOUT + RETRY_DELAY.
const ATTEMPTS: usize = 2;
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Stripe's objects are a few KiB; a larger answer is not one we asked for.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A form body in Stripe's encoding: nested keys as `metadata[user_id]`,
/// `line_items[0][price]`, in insertion order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.push((key.to_string(), value.into()));
        self
    }

    pub fn encode(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
    }
}

/// `application/x-www-form-urlencoded`: unreserved bytes as they are, everything else
/// (including `[`, `]`, `&`, `=`, `+` and non-ASCII) as %XX.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub enum StripeError {
    /// Stripe answered with an error object.
    Api { status: u16, error_type: String, code: Option<String>, message: String },
    /// Timed out, refused, or the body broke off.
    Transport(OutboundError),
    /// A success status with a body that is not a JSON object.
    Decode,
}

impl StripeError {
    /// The object does not exist (`resource_missing`).
    pub fn is_missing(&self) -> bool {
        matches!(self, StripeError::Api { status: 404, .. })
    }

    /// Stripe asked us to slow down (429, after the client's one retry).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, StripeError::Api { status: 429, .. })
    }
}

impl From<StripeError> for ApiError {
    fn from(error: StripeError) -> Self {
        match error {
            // Stripe's own message names object ids, parameters and sometimes the key's
            // shape: it goes to the log (`log_failure`), and the client gets our words,
            // chosen by Stripe's error type only.
            StripeError::Api { status, error_type, code, .. } => {
                ApiError::bad_gateway("stripe_error", stripe_error_message(status, &error_type, code.as_deref()))
                    .with_field("stripe_error_type", known_error_type(&error_type))
            }
            StripeError::Transport(OutboundError::Timeout) => {
                ApiError::bad_gateway("stripe_unavailable", "Stripe did not answer in time; try again.")
            }
            StripeError::Transport(_) => {
                ApiError::bad_gateway("stripe_unavailable", "Stripe could not be reached; try again.")
            }
            StripeError::Decode => {
                ApiError::bad_gateway("stripe_unavailable", "Stripe sent an answer that could not be read; try again.")
            }
        }
    }
}

/// Stripe's documented error types; anything else is reported as `api_error`, so not
/// even this field can carry text of Stripe's choosing to the client.
fn known_error_type(error_type: &str) -> &'static str {
    const TYPES: [&str; 6] = [
        "api_error",
        "card_error",
        "idempotency_error",
        "invalid_request_error",
        "rate_limit_error",
        "authentication_error",
    ];
    TYPES.into_iter().find(|t| *t == error_type).unwrap_or("api_error")
}

/// What the client is told when Stripe refuses one of our calls.
fn stripe_error_message(status: u16, error_type: &str, code: Option<&str>) -> &'static str {
    match (status, error_type, code) {
        (401 | 403, _, _) | (_, "authentication_error", _) => {
            "The payment service refused this server's credentials; nothing was charged. Please try again later."
        }
        (429, _, _) | (_, "rate_limit_error", _) => {
            "The payment service is busy; nothing was charged. Try again shortly."
        }
        (_, "idempotency_error", _) => {
            "This request reuses an Idempotency-Key from a different request; send a new key."
        }
        (404, _, _) | (_, _, Some("resource_missing")) => {
            "A payment record this request needs was not found; nothing was charged. Please try again later."
        }
        _ => "The payment service refused the request; nothing was charged. Please try again later.",
    }
}

/// Masks anything shaped like a Stripe key (`sk_...`, `rk_...`, `pk_...`, `whsec_...`)
/// in a message we pass on or log, wherever it appears in the text.
pub fn redact(message: &str) -> String {
    const PREFIXES: [&str; 4] = ["sk_", "rk_", "pk_", "whsec_"];
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '*';
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let starts_word = !previous.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_');
        if starts_word && PREFIXES.iter().any(|p| rest.starts_with(p)) {
            let end = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
            out.push_str("[redacted]");
            previous = rest[..end].chars().last();
            rest = &rest[end..];
        } else {
            out.push(c);
            previous = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

pub struct StripeClient<'a> {
    platform: &'a dyn Platform,
    base: String,
    secret_key: String,
}

impl<'a> StripeClient<'a> {
    /// From the Spin variables `stripe_secret_key` (required) and `stripe_api_base`.
    pub fn from_platform(platform: &'a dyn Platform) -> Result<Self, ApiError> {
        let secret_key = settings::STRIPE_SECRET_KEY.require(platform)?;
        let base = settings::STRIPE_API_BASE.value(platform).unwrap_or_default();
        Ok(Self { platform, base: base.trim_end_matches('/').to_string(), secret_key })
    }

    /// `POST /v1/<path>`. The same `idempotency_key` is sent on the retry, so Stripe
    /// performs the operation at most once however many attempts reach it.
    pub fn post(&self, path: &str, form: &Form, idempotency_key: &str) -> Result<Value, StripeError> {
        let request = self.request("POST", path).header("idempotency-key", idempotency_key).form_body(form.encode());
        self.send(request, MAX_RESPONSE_BYTES)
    }

    /// `GET /v1/<path>`.
    pub fn get(&self, path: &str) -> Result<Value, StripeError> {
        self.send(self.request("GET", path), MAX_RESPONSE_BYTES)
    }

    /// `GET /v1/<path>` for an answer that may be larger than one object's limit (a list
    /// page of up to `max_bytes`).
    pub fn get_large(&self, path: &str, max_bytes: usize) -> Result<Value, StripeError> {
        self.send(self.request("GET", path), max_bytes.max(MAX_RESPONSE_BYTES))
    }

    /// `DELETE /v1/<path>`. Deleting is idempotent in itself (a second call finds the
    /// object gone: `resource_missing`), so no Idempotency-Key.
    pub fn delete(&self, path: &str) -> Result<Value, StripeError> {
        self.send(self.request("DELETE", path), MAX_RESPONSE_BYTES)
    }

    fn request(&self, method: &'static str, path: &str) -> OutboundRequest {
        OutboundRequest::new(method, format!("{}/v1/{}", self.base, path.trim_start_matches('/')))
            .header("authorization", format!("Bearer {}", self.secret_key))
            .header("stripe-version", STRIPE_VERSION)
            .header("accept", "application/json")
            .timeout(ATTEMPT_TIMEOUT)
    }

    fn send(&self, request: OutboundRequest, max_bytes: usize) -> Result<Value, StripeError> {
        let mut attempt = 1;
        loop {
            let result = self.attempt(request.clone(), max_bytes);
            match &result {
                Err((error, retryable)) if *retryable && attempt < ATTEMPTS => {
                    self.log_failure(&request, error);
                    attempt += 1;
                    self.platform.sleep(RETRY_DELAY);
                }
                _ => {
                    return result.map_err(|(error, _)| {
                        self.log_failure(&request, &error);
                        error
                    })
                }
            }
        }
    }

    /// One attempt; an error comes with whether retrying may help.
    fn attempt(&self, request: OutboundRequest, max_bytes: usize) -> Result<Value, (StripeError, bool)> {
        let response = self.platform.send(request).map_err(|e| {
            let retryable = e.is_transient();
            (StripeError::Transport(e), retryable)
        })?;
        let status = response.status;
        // Stripe says whether a retry is safe; without the header: 409 (a concurrent
        // request with the same Idempotency-Key), 429 and 5xx are, the rest are not.
        let should_retry = match response.header("stripe-should-retry") {
            Some(value) => value.eq_ignore_ascii_case("true"),
            None => status == 409 || status == 429 || status >= 500,
        };
        let body = response.read_all(max_bytes).map_err(|e| {
            let retryable = e.is_transient();
            (StripeError::Transport(e), retryable)
        })?;
        let value: Option<Value> = serde_json::from_slice(&body).ok().filter(Value::is_object);
        if (200..300).contains(&status) {
            return value.ok_or((StripeError::Decode, false));
        }
        let error = value.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str).map(str::to_string);
        Err((
            StripeError::Api {
                status,
                error_type: text("type").unwrap_or_else(|| "api_error".to_string()),
                code: text("code"),
                message: text("message").unwrap_or_else(|| format!("HTTP {status}")),
            },
            should_retry,
        ))
    }

    /// Method, path, Stripe's error type/code and message (keys masked): no key, no
    /// body, no parameters.
    fn log_failure(&self, request: &OutboundRequest, error: &StripeError) {
        let path = request.url.strip_prefix(&self.base).unwrap_or("");
        let detail = match error {
            // Stripe's message is for the operator (the client never sees it); keys are
            // masked in case Stripe ever echoes one.
            StripeError::Api { status, error_type, code, message } => {
                format!("{status} {error_type} {}: {}", code.as_deref().unwrap_or("-"), redact(message))
            }
            StripeError::Transport(e) => e.to_string(),
            StripeError::Decode => "undecodable response".to_string(),
        };
        self.platform.log(&format!("stripe {} {path}: {detail}", request.method));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    fn platform() -> FakePlatform {
        FakePlatform::with_vars(&[("stripe_secret_key", "sk_test_123"), ("stripe_api_base", "http://stripe.test/")])
    }

    #[test]
    fn stripe_form_encoding_nests_and_escapes() {
        let form = Form::new()
            .add("line_items[0][price]", "price_1")
            .add("success_url", "https://app.test/?a=1&b=2 x")
            .add("metadata[name]", "é+");
        assert_eq!(
            form.encode(),
            "line_items%5B0%5D%5Bprice%5D=price_1&success_url=https%3A%2F%2Fapp.test%2F%3Fa%3D1%26b%3D2%20x\
             &metadata%5Bname%5D=%C3%A9%2B"
        );
    }

    #[test]
    fn stripe_post_sends_key_version_and_idempotency_key() {
        let platform = platform();
        platform.push_upstream(200, &[], br#"{"id":"cus_1","object":"customer"}"#);
        let client = StripeClient::from_platform(&platform).unwrap();
        let value = client.post("customers", &Form::new().add("email", "a@b.c"), "key-1").unwrap();
        assert_eq!(value["id"], "cus_1");
        let sent = platform.sent.borrow();
        assert_eq!(sent[0].url, "http://stripe.test/v1/customers");
        let header = |n: &str| sent[0].headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(header("authorization").as_deref(), Some("Bearer sk_test_123"));
        assert_eq!(header("stripe-version").as_deref(), Some(STRIPE_VERSION));
        assert_eq!(header("idempotency-key").as_deref(), Some("key-1"));
        assert_eq!(header("content-type").as_deref(), Some("application/x-www-form-urlencoded"));
        assert_eq!(sent[0].timeout, ATTEMPT_TIMEOUT);
        assert_eq!(sent[0].body, b"email=a%40b.c");
    }

    #[test]
    fn stripe_retries_transient_failures_once_with_the_same_key() {
        let platform = platform();
        platform.push_upstream_error(OutboundError::Timeout);
        platform.push_upstream(200, &[], br#"{"id":"cs_1"}"#);
        let client = StripeClient::from_platform(&platform).unwrap();
        assert_eq!(client.post("checkout/sessions", &Form::new(), "k").unwrap()["id"], "cs_1");
        let sent = platform.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].headers, sent[1].headers);

        let platform = self::platform();
        for _ in 0..3 {
            platform.push_upstream(500, &[], br#"{"error":{"type":"api_error","message":"boom"}}"#);
        }
        let client = StripeClient::from_platform(&platform).unwrap();
        let error = client.get("subscriptions/sub_1").unwrap_err();
        assert_eq!(platform.sent.borrow().len(), 2, "bounded: two attempts");
        let api = ApiError::from(error);
        assert_eq!((api.status, api.code), (502, "stripe_error"));
    }

    #[test]
    fn stripe_errors_map_to_502_with_our_message_and_log_stripes() {
        let platform = platform();
        platform.push_upstream(
            401,
            &[("stripe-should-retry", "false")],
            br#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_********123","request_log_url":"https://x"}}"#,
        );
        let client = StripeClient::from_platform(&platform).unwrap();
        let error = client.post("customers", &Form::new(), "k").unwrap_err();
        assert_eq!(platform.sent.borrow().len(), 1, "not retried");
        let api = ApiError::from(error);
        assert_eq!(api.status, 502);
        assert_eq!(api.extra["stripe_error_type"], "invalid_request_error");
        let body = api.body().to_string();
        assert!(
            !body.contains("Invalid API Key") && !body.contains("sk_test") && !body.contains("request_log_url"),
            "{body}"
        );
        assert!(api.message.contains("credentials"), "{}", api.message);
        let logs = platform.logs.borrow();
        assert!(logs.iter().any(|l| l.contains("Invalid API Key provided: [redacted]")), "{logs:?}");
        assert!(logs.iter().all(|l| !l.contains("sk_test")));
    }

    #[test]
    fn stripe_messages_with_object_ids_stay_in_the_log() {
        let platform = platform();
        platform.push_upstream(400, &[], br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such price: 'price_1Secret'"}}"#);
        let error = StripeClient::from_platform(&platform).unwrap().get("prices/x").unwrap_err();
        let body = ApiError::from(error).body().to_string();
        assert!(!body.contains("price_1Secret") && !body.contains("No such"), "{body}");
        assert!(platform.logs.borrow().iter().any(|l| l.contains("No such price: 'price_1Secret'")));
        let odd =
            StripeError::Api { status: 400, error_type: "cus_123 leaked".into(), code: None, message: String::new() };
        assert_eq!(ApiError::from(odd).extra["stripe_error_type"], "api_error");
    }

    #[test]
    fn stripe_redaction_finds_keys_anywhere() {
        assert_eq!(
            redact("key:sk_live_abc*** and (rk_test_1) whsec_x."),
            "key:[redacted] and ([redacted]) [redacted]."
        );
        assert_eq!(
            redact("ask_for_it desk_1 No such customer: 'cus_1'"),
            "ask_for_it desk_1 No such customer: 'cus_1'"
        );
        assert_eq!(redact("é sk_1"), "é [redacted]");
    }

    #[test]
    fn stripe_missing_key_is_a_config_error() {
        let platform = FakePlatform::with_vars(&[]);
        let error = StripeClient::from_platform(&platform).err().unwrap();
        assert_eq!((error.status, error.code), (500, "config_missing"));
    }
}
