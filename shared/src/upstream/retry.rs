//! The retry policy for upstream calls (OpenAI and ElevenLabs, text and speech), in one place.
//!
//! - Retried: HTTP 429, 500, 502, 503, 504, timeouts and connection errors. Other 4xx
//!   mean our request is wrong (or the key is): repeating it cannot help.
//! - At most `max_attempts` attempts (default 3) per call.
//! - Between attempts: exponential backoff with "equal jitter" (half fixed, half random),
//!   `base_ms * 2^(n-1)` capped at `max_delay_ms`, so many instances failing together do
//!   not retry in lockstep, yet every wait is at least half the nominal one.
//! - `Retry-After` (seconds) or OpenAI's `retry-after-ms` is honoured: the wait is at least
//!   what the upstream asked for. When it asks for more than `max_delay_ms`, waiting would
//!   hold the caller too long, so the call gives up at once.
//! - An overall deadline bounds the whole call (all attempts and waits, and several calls
//!   sharing one [`Retrier`]): each attempt's timeout is clipped to the time left, and a
//!   wait that would end past the deadline is not started.
//!
//! Settings are Spin variables `<prefix>_max_attempts`, `<prefix>_retry_base_ms`,
//! `<prefix>_retry_max_ms`, `<prefix>_timeout_ms` and `<prefix>_deadline_ms` (prefix
//! `openai`, `elevenlabs`, ...), each optional with the defaults below.

use std::time::Duration;

use crate::http::outbound::{OutboundError, OutboundRequest, OutboundResponse};
use crate::settings::RetrySettings;
use crate::{ApiError, Platform};

/// An attempt needs at least this much time left to be worth starting.
const MIN_ATTEMPT_MS: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Nominal wait before the second attempt; doubles for each further one.
    pub base_ms: u64,
    /// Longest wait between attempts, and the most of a `Retry-After` we honour.
    pub max_delay_ms: u64,
    /// Bounds one attempt: connect, first byte, and each gap between body chunks.
    pub attempt_timeout_ms: u64,
    /// Bounds the whole call, all attempts and waits together.
    pub deadline_ms: u64,
}

impl RetryPolicy {
    /// The policy of one upstream, from its settings (`settings::OPENAI_RETRY`).
    pub fn from_platform(platform: &dyn Platform, settings: &RetrySettings) -> Result<RetryPolicy, ApiError> {
        let policy = RetryPolicy {
            max_attempts: settings.max_attempts.parse::<u32>(platform)?.clamp(1, 10),
            base_ms: settings.retry_base_ms.parse(platform)?,
            max_delay_ms: settings.retry_max_ms.parse(platform)?,
            attempt_timeout_ms: settings.timeout_ms.parse::<u64>(platform)?.max(1),
            deadline_ms: settings.deadline_ms.parse::<u64>(platform)?.max(1),
        };
        Ok(policy)
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1), given a random
    /// number for the jitter and what the upstream asked for, or `None` to give up.
    pub fn delay_ms(&self, attempt: u32, random: u64, retry_after_ms: Option<u64>) -> Option<u64> {
        let nominal = self.base_ms.saturating_mul(1u64 << (attempt.saturating_sub(1)).min(20)).min(self.max_delay_ms);
        let half = nominal / 2;
        let jittered = half + if half == 0 { 0 } else { random % (half + 1) };
        match retry_after_ms {
            Some(asked) if asked > self.max_delay_ms => None,
            Some(asked) => Some(jittered.max(asked)),
            None => Some(jittered),
        }
    }
}

/// Whether an upstream status is worth another attempt.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// What the upstream asked us to wait, in milliseconds: `retry-after-ms` (OpenAI) or
/// `Retry-After` in (possibly fractional) seconds. HTTP-date values are not used by
/// these APIs and count as absent.
pub fn retry_after_ms(response: &OutboundResponse) -> Option<u64> {
    if let Some(ms) = response.header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return finite_ms(ms);
    }
    let secs = response.header("retry-after").and_then(|v| v.trim().parse::<f64>().ok())?;
    finite_ms(secs * 1000.0)
}

fn finite_ms(ms: f64) -> Option<u64> {
    (ms.is_finite() && ms >= 0.0).then(|| ms.ceil().min(u64::MAX as f64) as u64)
}

/// Why an upstream call produced no usable response. Carries status codes and error
/// kinds only: an upstream error body can echo a key or the user's text, so it is
/// dropped unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// A status that retrying cannot fix (400, 401, 403, 404, 422, ...).
    Rejected { status: u16 },
    /// Every attempt allowed failed with a retryable status or a transport error, or the
    /// deadline (or an over-long `Retry-After`) ended the call early.
    Unavailable { attempts: u32, last: String, retry_after_secs: Option<u64> },
}

impl UpstreamError {
    /// A short description for the operator's log (no bodies, no keys).
    pub fn summary(&self) -> String {
        match self {
            UpstreamError::Rejected { status } => format!("rejected status={status}"),
            UpstreamError::Unavailable { attempts, last, .. } => format!("unavailable attempts={attempts} last={last}"),
        }
    }
}

/// Runs upstream calls under one [`RetryPolicy`] and one deadline, which starts when the
/// retrier is made (so a second call, e.g. a re-ask after an invalid answer, gets only
/// the time that is left).
pub struct Retrier<'a> {
    platform: &'a dyn Platform,
    policy: RetryPolicy,
    deadline_at: u64,
}

impl<'a> Retrier<'a> {
    pub fn new(platform: &'a dyn Platform, policy: RetryPolicy) -> Self {
        let deadline_at = platform.monotonic_ms().saturating_add(policy.deadline_ms);
        Retrier { platform, policy, deadline_at }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Milliseconds left before the deadline.
    pub fn remaining_ms(&self) -> u64 {
        self.deadline_at.saturating_sub(self.platform.monotonic_ms())
    }

    /// Sends `request` until a response that is not a retryable failure arrives. A 2xx
    /// response is returned with its body unread (so it can be streamed); any other
    /// final status becomes [`UpstreamError::Rejected`].
    pub fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, UpstreamError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = self.remaining_ms();
            if remaining < MIN_ATTEMPT_MS {
                return Err(UpstreamError::Unavailable {
                    attempts: attempt - 1,
                    last: "deadline".into(),
                    retry_after_secs: None,
                });
            }
            let timeout = self.policy.attempt_timeout_ms.min(remaining);
            let mut this_try = request.clone();
            this_try.timeout = Duration::from_millis(timeout);

            let (last, asked_ms) = match self.platform.send(this_try) {
                Ok(response) if (200..300).contains(&response.status) => return Ok(response),
                Ok(response) => {
                    let status = response.status;
                    let asked = retry_after_ms(&response);
                    // The body is dropped unread: it is never logged or passed on, and
                    // reading it would only spend time under the deadline (a fresh
                    // instance per request has no connection worth keeping).
                    drop(response);
                    if !is_retryable_status(status) {
                        return Err(UpstreamError::Rejected { status });
                    }
                    (format!("status={status}"), asked)
                }
                // Timeouts, refused connections and cut-off bodies; not an over-large body.
                Err(error) if error.is_transient() => (kind(&error).to_string(), None),
                Err(error) => {
                    return Err(UpstreamError::Unavailable {
                        attempts: attempt,
                        last: kind(&error).to_string(),
                        retry_after_secs: None,
                    })
                }
            };
            let give_up = |retry_after_ms: Option<u64>| UpstreamError::Unavailable {
                attempts: attempt,
                last: last.clone(),
                retry_after_secs: retry_after_ms.map(|ms| ms.div_ceil(1000)),
            };
            if attempt >= self.policy.max_attempts {
                return Err(give_up(asked_ms));
            }
            let random = u64::from_le_bytes(self.platform.random_bytes(8).try_into().unwrap_or([0; 8]));
            let Some(delay) = self.policy.delay_ms(attempt, random, asked_ms) else {
                return Err(give_up(asked_ms));
            };
            // Only wait when an attempt can still follow the wait.
            if delay.saturating_add(MIN_ATTEMPT_MS) > self.remaining_ms() {
                return Err(give_up(asked_ms));
            }
            self.platform.log(&format!("upstream retry: attempt={attempt} {last} wait_ms={delay}"));
            self.platform.sleep(Duration::from_millis(delay));
        }
    }
}

/// The kind of a transport failure, without details that could hold a URL or key.
fn kind(error: &OutboundError) -> &'static str {
    match error {
        OutboundError::Timeout => "timeout",
        OutboundError::Connection(_) => "connection",
        OutboundError::Body(_) => "body",
        OutboundError::BodyTooLarge => "body_too_large",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, base_ms: 100, max_delay_ms: 1_000, attempt_timeout_ms: 500, deadline_ms: 5_000 }
    }

    fn request() -> OutboundRequest {
        OutboundRequest::new("POST", "http://upstream.test/v1/x")
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = policy();
        assert_eq!(p.delay_ms(1, 0, None), Some(50));
        assert_eq!(p.delay_ms(1, 50, None), Some(100));
        assert_eq!(p.delay_ms(2, 0, None), Some(100));
        assert_eq!(p.delay_ms(3, 0, None), Some(200));
        assert_eq!(p.delay_ms(30, u64::MAX, None).map(|d| d <= 1_000), Some(true));
        // Retry-After wins when longer; refused when over the cap.
        assert_eq!(p.delay_ms(1, 0, Some(700)), Some(700));
        assert_eq!(p.delay_ms(1, 0, Some(1_001)), None);
    }

    #[test]
    fn retries_429_honouring_retry_after_then_succeeds() {
        let platform = FakePlatform::with_vars(&[]);
        platform.push_upstream(429, &[("retry-after", "0.3")], b"{\"error\":\"sk-secret\"}");
        platform.push_upstream(200, &[], b"ok");
        let retrier = Retrier::new(&platform, policy());
        let response = retrier.send(&request()).expect("second attempt succeeds");
        assert_eq!(response.status, 200);
        assert_eq!(platform.sent.borrow().len(), 2);
        assert!(platform.slept.borrow()[0] >= Duration::from_millis(300));
        assert!(platform.logs.borrow().iter().all(|l| !l.contains("sk-secret")));
    }

    #[test]
    fn retries_503_and_transport_errors_up_to_the_limit() {
        let platform = FakePlatform::with_vars(&[]);
        platform.push_upstream(503, &[], b"");
        platform.push_upstream_error(OutboundError::Timeout);
        platform.push_upstream(502, &[], b"");
        platform.push_upstream(200, &[], b"never reached");
        let retrier = Retrier::new(&platform, policy());
        let error = retrier.send(&request()).err().expect("the call fails");
        assert!(matches!(error, UpstreamError::Unavailable { attempts: 3, .. }), "{error:?}");
        assert_eq!(platform.sent.borrow().len(), 3);
        assert_eq!(platform.slept.borrow().len(), 2);
    }

    #[test]
    fn other_4xx_is_not_retried() {
        let platform = FakePlatform::with_vars(&[]);
        platform.push_upstream(401, &[], b"{\"error\":{\"message\":\"Incorrect API key sk-...\"}}");
        let error = Retrier::new(&platform, policy()).send(&request()).err().expect("the call fails");
        assert_eq!(error, UpstreamError::Rejected { status: 401 });
        assert_eq!(platform.sent.borrow().len(), 1);
    }

    #[test]
    fn retry_after_beyond_the_cap_gives_up_with_the_hint() {
        let platform = FakePlatform::with_vars(&[]);
        platform.push_upstream(429, &[("retry-after", "30")], b"");
        let error = Retrier::new(&platform, policy()).send(&request()).err().expect("the call fails");
        assert!(matches!(error, UpstreamError::Unavailable { attempts: 1, retry_after_secs: Some(30), .. }));
        assert!(platform.slept.borrow().is_empty());
    }

    #[test]
    fn deadline_bounds_waits_and_attempt_timeouts() {
        let platform = FakePlatform::with_vars(&[]);
        let tight = RetryPolicy { deadline_ms: 400, ..policy() };
        platform.push_upstream(429, &[("retry-after-ms", "380")], b"");
        let retrier = Retrier::new(&platform, tight);
        let error = retrier.send(&request()).err().expect("the call fails");
        assert!(matches!(error, UpstreamError::Unavailable { attempts: 1, .. }));
        assert!(platform.slept.borrow().is_empty(), "no wait that ends past the deadline");
        assert_eq!(platform.sent.borrow()[0].timeout, Duration::from_millis(400));
    }

    #[test]
    fn policy_from_variables() {
        let platform = FakePlatform::with_vars(&[("openai_retry_base_ms", "5"), ("openai_deadline_ms", "2000")]);
        let p = RetryPolicy::from_platform(&platform, &crate::settings::OPENAI_RETRY).unwrap();
        assert_eq!((p.base_ms, p.deadline_ms, p.max_attempts), (5, 2_000, 3));
        let bad = FakePlatform::with_vars(&[("openai_max_attempts", "many")]);
        assert_eq!(
            RetryPolicy::from_platform(&bad, &crate::settings::OPENAI_RETRY).unwrap_err().code,
            "config_invalid"
        );
    }
}
