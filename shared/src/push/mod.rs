//! Reminders by Web Push: the browsers' subscriptions, and the scheduled run that sends
//! each due reminder, VAPID-signed ([`vapid`]) and encrypted for the browser alone
//! ([`encrypt`]). When a reminder is due (the user's preferences, their zone, a session
//! today) is decided in SQL, `push_claim_due` in the migrations; so is the claim that
//! keeps it to one reminder per device and local day.

pub mod encrypt;
pub mod vapid;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use crate::db::{self, SqlParam};
use crate::http::outbound::OutboundRequest;
use crate::http::ApiError;
use crate::{settings, Platform};

/// The push services browsers use (host, and whether its subdomains count): Chrome and
/// Android (FCM), Firefox (Mozilla autopush), Safari (Apple), Edge on Windows (WNS). A
/// subscription naming anything else is refused: the server would be sending requests
/// wherever a user pointed it.
const PUSH_SERVICES: &[(&str, bool)] = &[
    ("fcm.googleapis.com", false),
    ("push.services.mozilla.com", true),
    ("push.apple.com", true),
    ("notify.windows.com", true),
];

/// How long a push service keeps an undelivered reminder (seconds): one sent in the
/// morning is no use the next day.
const TTL_SECS: u64 = 4 * 3600;
/// One push service request, connect to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries claimed at once: small, so a run that reaches its time budget has few
/// claims to hand back.
const CLAIM_BATCH: i64 = 10;
/// The longest `Retry-After` honoured; a longer one is taken as this.
const MAX_RETRY_AFTER_SECS: i64 = 24 * 3600;
/// After a 5xx or no answer: longer than one run, so the next run retries, not this one.
const RETRY_LATER_SECS: i64 = 120;

/// The reminder's words: the one place they are written.
pub fn reminder_text(streak: i64) -> (String, String) {
    let body = if streak >= 1 {
        format!("Day {} of your streak \u{2014} ten quiet minutes?", streak + 1)
    } else {
        "A few quiet minutes for yourself today?".to_string()
    };
    ("Time to practise".to_string(), body)
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// Sent by some browsers; not used.
    #[serde(rename = "expirationTime", default)]
    pub expiration_time: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

/// A subscription whose endpoint and keys were checked.
pub struct Subscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl Subscription {
    pub fn parse(platform: &dyn Platform, body: SubscriptionBody) -> Result<Subscription, ApiError> {
        check_endpoint(platform, &body.endpoint)?;
        let key = URL_SAFE_NO_PAD.decode(body.keys.p256dh.trim_end_matches('=')).ok();
        if key.as_deref().and_then(|k| p256::PublicKey::from_sec1_bytes(k).ok().filter(|_| k.len() == 65)).is_none() {
            return Err(ApiError::bad_request(
                "invalid_subscription",
                "Field `keys.p256dh` must be the browser's P-256 public key (65 bytes, base64url).",
            ));
        }
        let auth = URL_SAFE_NO_PAD.decode(body.keys.auth.trim_end_matches('=')).ok();
        if auth.map(|a| a.len()) != Some(16) {
            return Err(ApiError::bad_request(
                "invalid_subscription",
                "Field `keys.auth` must be the subscription's 16-byte auth secret (base64url).",
            ));
        }
        Ok(Subscription {
            endpoint: body.endpoint,
            p256dh: body.keys.p256dh.trim_end_matches('=').to_string(),
            auth: body.keys.auth.trim_end_matches('=').to_string(),
        })
    }
}

/// The endpoint's origin (`https://host[:port]`) if the server may send to it: https, a
/// host name (never an address) of a known push service, no user name; or exactly the
/// operator's `push_extra_origin` (tests point it at a fake push service).
pub fn check_endpoint(platform: &dyn Platform, endpoint: &str) -> Result<String, ApiError> {
    let refuse = |why: &str| {
        ApiError::bad_request(
            "push_endpoint_not_allowed",
            format!("Field `endpoint`: {why}; subscribe with the browser's push service."),
        )
    };
    if endpoint.len() > 2048 || endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("not a URL"));
    }
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| refuse("not a URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let origin = format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase());
    if let Some(extra) = settings::PUSH_EXTRA_ORIGIN.value(platform) {
        if origin == extra.trim_end_matches('/').to_ascii_lowercase() {
            return Ok(origin);
        }
    }
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(refuse("only https push services are allowed"));
    }
    if authority.contains('@') {
        return Err(refuse("a user name is not allowed"));
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
    .to_ascii_lowercase();
    let is_name = host.contains('.')
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !host.rsplit('.').next().unwrap_or("").bytes().all(|b| b.is_ascii_digit());
    if !is_name {
        return Err(refuse("the host must be a push service's name, not an address"));
    }
    let known = PUSH_SERVICES.iter().any(|(service, subdomains)| {
        host == *service || (*subdomains && host.strip_suffix(service).is_some_and(|head| head.ends_with('.')))
    });
    if !known {
        return Err(refuse("not a known push service"));
    }
    Ok(origin)
}

/// Stores the subscription for the user (a browser already stored for someone else moves
/// to this user). Answers the outcome and how many devices the user has.
pub fn subscribe(platform: &dyn Platform, user_id: &str, subscription: &Subscription) -> Result<Value, ApiError> {
    let answer = db::query_json(
        platform,
        "select public.push_subscribe($1::uuid, $2, $3, $4)",
        &[
            SqlParam::Uuid(user_id.to_string()),
            SqlParam::Text(subscription.endpoint.clone()),
            SqlParam::Text(subscription.p256dh.clone()),
            SqlParam::Text(subscription.auth.clone()),
        ],
    )
    .map_err(|e| db::report(platform, "push_subscribe", e))?;
    if answer["outcome"] == "user_not_found" {
        return Err(ApiError::user_not_found());
    }
    Ok(answer)
}

/// Removes the user's subscription for `endpoint`; whether there was one.
pub fn unsubscribe(platform: &dyn Platform, user_id: &str, endpoint: &str) -> Result<bool, ApiError> {
    let answer = db::query_json(
        platform,
        "select public.push_unsubscribe($1::uuid, $2)",
        &[SqlParam::Uuid(user_id.to_string()), SqlParam::Text(endpoint.to_string())],
    )
    .map_err(|e| db::report(platform, "push_unsubscribe", e))?;
    Ok(answer["removed"] == true)
}

/// One run's bounds: `{"max_deliveries": 1..=1000, "max_seconds": 1..=60}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_deliveries: i64,
    pub max_millis: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_deliveries: 200, max_millis: 20_000 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "optional_integer")]
    max_deliveries: Option<i64>,
    #[serde(default, deserialize_with = "optional_integer")]
    max_seconds: Option<i64>,
}

fn optional_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    crate::validate::integer(deserializer).map(Some)
}

impl Limits {
    pub fn from_body(body: &[u8]) -> Result<Limits, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Limits::default());
        }
        let parsed: LimitsBody = serde_json::from_slice(body).map_err(|_| {
            ApiError::bad_request(
                "invalid_body",
                "The body must be {\"max_deliveries\": 1..1000, \"max_seconds\": 1..60}, or empty.",
            )
        })?;
        let mut limits = Limits::default();
        if let Some(n) = parsed.max_deliveries {
            limits.max_deliveries = crate::validate::in_range("max_deliveries", n, 1, 1000)?;
        }
        if let Some(n) = parsed.max_seconds {
            limits.max_millis = crate::validate::in_range("max_seconds", n, 1, 60)? as u64 * 1000;
        }
        Ok(limits)
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub sent: u32,
    pub gone: u32,
    pub retry: u32,
    pub failed: u32,
    /// Due deliveries are left for the next run.
    pub more: bool,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({"sent": self.sent, "gone": self.gone, "retry": self.retry, "failed": self.failed, "more": self.more})
    }
}

struct Claimed {
    subscription_id: String,
    endpoint: String,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
    streak: i64,
    local_day: String,
}

/// What a push service's answer means for the delivery.
enum Outcome {
    Sent,
    Gone,
    Retry { after_secs: Option<i64> },
    Failed,
}

/// Sends the reminders that are due now, within `limits`.
pub fn send_due(platform: &dyn Platform, limits: Limits) -> Result<Report, ApiError> {
    let key = settings::VAPID_PRIVATE_KEY.require(platform).and_then(|k| {
        vapid::VapidKey::from_private(&k).ok_or_else(|| {
            ApiError::internal("vapid_private_key is not a P-256 private key (base64url); see `libero push keys`.")
        })
    })?;
    let subject = settings::VAPID_SUBJECT.require(platform)?;
    let started = platform.monotonic_ms();
    let out_of_time = || platform.monotonic_ms().saturating_sub(started) >= limits.max_millis;
    let mut report = Report::default();
    let mut attempted: i64 = 0;
    // Whether due deliveries may be left; a run stopped by its limits says yes and the
    // next run finds out.
    let mut more = true;
    while more {
        let remaining = limits.max_deliveries - attempted;
        if remaining <= 0 || out_of_time() {
            break;
        }
        let (claimed, left) = claim(platform, CLAIM_BATCH.min(remaining))?;
        more = left;
        let mut deliveries = claimed.into_iter();
        for delivery in deliveries.by_ref() {
            attempted += 1;
            let outcome = deliver(platform, &key, &subject, &delivery);
            record(platform, &delivery, &outcome)?;
            match outcome {
                Outcome::Sent => report.sent += 1,
                Outcome::Gone => report.gone += 1,
                Outcome::Retry { .. } => report.retry += 1,
                Outcome::Failed => report.failed += 1,
            }
            if out_of_time() {
                break;
            }
        }
        // Out of time with claims in hand: they go back, for the next run to send.
        for delivery in deliveries {
            record(platform, &delivery, &Outcome::Retry { after_secs: None })?;
            more = true;
        }
    }
    report.more = more;
    Ok(report)
}

fn claim(platform: &dyn Platform, batch: i64) -> Result<(Vec<Claimed>, bool), ApiError> {
    let now_ms = platform.now_unix_ms();
    let answer = db::query_json(
        platform,
        "select public.push_claim_due(to_timestamp($1::bigint / 1000.0), $2::integer)",
        &[SqlParam::Int64(now_ms), SqlParam::Int32(batch as i32)],
    )
    .map_err(|e| db::report(platform, "push_claim_due", e))?;
    let decode = |v: &Value| URL_SAFE_NO_PAD.decode(v.as_str().unwrap_or("")).unwrap_or_default();
    let claimed = answer["claimed"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| Claimed {
                    subscription_id: row["subscription_id"].as_str().unwrap_or("").to_string(),
                    endpoint: row["endpoint"].as_str().unwrap_or("").to_string(),
                    p256dh: decode(&row["p256dh"]),
                    auth: decode(&row["auth"]),
                    streak: row["streak"].as_i64().unwrap_or(0),
                    local_day: row["local_day"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((claimed, answer["more"] == true))
}

fn deliver(platform: &dyn Platform, key: &vapid::VapidKey, subject: &str, delivery: &Claimed) -> Outcome {
    // A subscription stored before a change of the allowlist is checked again here.
    let Ok(origin) = check_endpoint(platform, &delivery.endpoint) else {
        return Outcome::Gone;
    };
    let (title, body) = reminder_text(delivery.streak);
    let message = json!({"title": title, "body": body, "tag": "libero-reminder", "url": "/"}).to_string();
    let Some(ephemeral) = (0..4).find_map(|_| p256::SecretKey::from_slice(&platform.random_bytes(32)).ok()) else {
        return Outcome::Retry { after_secs: None };
    };
    let salt: [u8; 16] = platform.random_bytes(16).try_into().unwrap_or([0; 16]);
    let Ok(payload) = encrypt::encrypt(message.as_bytes(), &delivery.p256dh, &delivery.auth, &ephemeral, &salt) else {
        // Keys that cannot be used will not get better: the browser must subscribe again.
        return Outcome::Gone;
    };
    let now_unix = platform.now_unix_ms().div_euclid(1000);
    let mut request = OutboundRequest::new("POST", delivery.endpoint.clone())
        .header("authorization", key.authorization(&origin, subject, now_unix))
        .header("ttl", TTL_SECS.to_string())
        .header("urgency", "normal")
        .header("content-encoding", "aes128gcm")
        .header("content-type", "application/octet-stream")
        .header("content-length", payload.len().to_string())
        .timeout(SEND_TIMEOUT);
    request.body = payload;
    match platform.send(request) {
        Ok(response) if (200..300).contains(&response.status) => Outcome::Sent,
        Ok(response) if matches!(response.status, 404 | 410) => Outcome::Gone,
        Ok(response) if response.status == 429 => Outcome::Retry {
            after_secs: Some(
                response
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap_or(60)
                    .clamp(1, MAX_RETRY_AFTER_SECS),
            ),
        },
        Ok(response) if response.status >= 500 => Outcome::Retry { after_secs: Some(RETRY_LATER_SECS) },
        Ok(response) => {
            platform.log(&format!("push: the push service refused a reminder with {}", response.status));
            Outcome::Failed
        }
        Err(_) => Outcome::Retry { after_secs: Some(RETRY_LATER_SECS) },
    }
}

fn record(platform: &dyn Platform, delivery: &Claimed, outcome: &Outcome) -> Result<(), ApiError> {
    let (result, after) = match outcome {
        Outcome::Sent => ("sent", None),
        Outcome::Gone => ("gone", None),
        Outcome::Retry { after_secs } => ("retry", *after_secs),
        Outcome::Failed => ("failed", None),
    };
    let retry_at_ms = after.map(|secs| platform.now_unix_ms() + secs * 1000);
    db::query_json(
        platform,
        "select public.push_record($1::uuid, $2::text::date, $3, case when $4::bigint is null then null \
         else to_timestamp($4::bigint / 1000.0) end)",
        &[
            SqlParam::Uuid(delivery.subscription_id.clone()),
            SqlParam::Text(delivery.local_day.clone()),
            SqlParam::Text(result.to_string()),
            retry_at_ms.map_or(SqlParam::Null, SqlParam::Int64),
        ],
    )
    .map_err(|e| db::report(platform, "push_record", e))?;
    Ok(())
}
