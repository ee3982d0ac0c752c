//! Reconciliation: heals webhook deliveries that were lost (a wrong signing secret, an
//! outage longer than Stripe's retries, an endpoint made after the purchase) from
//! Stripe's own event log, `GET /v1/events` (30 days). Used by the `stripe-reconcile`
//! endpoint and by `libero stripe reconcile`; see docs/stripe.md.
//!
//! * Events come from Stripe's API with our key, never from a request body, and each goes
//!   through [`events::apply`], the webhook's own exactly-once path: an event the webhook
//!   (or a concurrent reconciler) applied is recorded once, whoever comes first.
//! * The cursor (`stripe_reconcile_state`) is the newest event below which every event was
//!   applied or recorded. A run walks forward from it with `ending_before` (Stripe lists
//!   newest first; each page is handled oldest first, as the events happened), and first
//!   re-lists an overlap window below it (`created[gte]`), for events that became visible
//!   in the list after the cursor passed them. With no cursor yet, the walk starts at the
//!   newest event older than the look-back window.
//! * The cursor moves only when the whole run succeeded: a Stripe or database error
//!   answers 502/503 and leaves it where it was (what was applied stays applied, and is a
//!   duplicate next time).
//! * Each run is bounded (events seen, wall time) and says whether there is `more`.
//! * Subscriptions whose stored read is older than a bound are re-read from Stripe, per
//!   customer, with the webhook's stamped-read rule (a later read always wins). This also
//!   heals a plan whose `customer.subscription.*` events were all lost.

use serde_json::{json, Value};

use super::client::StripeClient;
use super::events::{self, Event, Subscription};
use super::is_object_id;
use crate::db::{self, SqlParam};
use crate::{ApiError, Platform};

/// The event types the webhook acts on (its `enabled_events`); the reconciler lists only
/// these.
pub const HANDLED_TYPES: [&str; 19] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.paid",
    "invoice.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "customer.deleted",
    "price.created",
    "price.updated",
    "price.deleted",
    "product.updated",
    "product.deleted",
];

/// Events per page: a page of 100 checkout events can pass the client's 1 MiB answer limit.
const PAGE: usize = 40;

/// What one run may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Events looked at (applied, duplicates and ignored alike).
    pub max_events: usize,
    /// Wall time; checked before each Stripe call, so a run ends within about one call
    /// (at most ~20 s with the client's retry) of it.
    pub max_millis: u64,
    /// How far below the cursor each run looks again, for events listed late.
    pub overlap_secs: i64,
    /// Where the first run starts (Stripe keeps 30 days).
    pub lookback_secs: i64,
    /// Re-read a customer's subscriptions when the stored read is older than this.
    pub subscription_max_age_secs: i64,
    /// Customers re-read per run.
    pub max_customers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 200,
            max_millis: 20_000,
            overlap_secs: 600,
            lookback_secs: 30 * 24 * 3600,
            subscription_max_age_secs: 24 * 3600,
            max_customers: 20,
        }
    }
}

impl Limits {
    /// The endpoint's optional body, `{"max_events": 1..=1000, "max_seconds": 1..=60}`
    /// (an empty body takes the defaults). Anything else is a 400 and runs nothing.
    pub fn from_body(body: &[u8]) -> Result<Limits, ApiError> {
        let mut limits = Limits::default();
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(limits);
        }
        let invalid = |message: &str| ApiError::bad_request("invalid_body", message.to_string());
        let value: Value = serde_json::from_slice(body).map_err(|_| invalid("The body must be a JSON object."))?;
        let fields = value.as_object().ok_or_else(|| invalid("The body must be a JSON object."))?;
        for (key, field) in fields {
            let (min, max) = match key.as_str() {
                "max_events" => (1, 1000),
                "max_seconds" => (1, 60),
                _ => {
                    return Err(invalid(&format!(
                        "Unknown field `{key}`: only max_events and max_seconds are accepted."
                    )))
                }
            };
            let n = crate::validate::integer(field)
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| invalid(&format!("Field `{key}` must be an integer from {min} to {max}.")))?;
            match key.as_str() {
                "max_events" => limits.max_events = n as usize,
                _ => limits.max_millis = n as u64 * 1000,
            }
        }
        Ok(limits)
    }
}

/// What a run did: the endpoint's answer and the command's summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub seen: usize,
    pub applied: usize,
    pub duplicate: usize,
    /// Recorded with no effect (not our order, an unknown user, a stale read, ...).
    pub ignored: usize,
    pub customers_checked: usize,
    pub subscriptions_written: usize,
    /// The stored cursor after the run: `(event id, created)`.
    pub cursor: Option<(String, i64)>,
    /// Stopped by a limit: call again.
    pub more: bool,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "seen": self.seen,
            "applied": self.applied,
            "duplicate": self.duplicate,
            "ignored": self.ignored,
            "subscriptions": {"customers_checked": self.customers_checked, "written": self.subscriptions_written},
            "cursor": self.cursor.as_ref().map(|(id, created)| json!({"event_id": id, "created": created})),
            "more": self.more,
        })
    }
}

struct Run<'a> {
    platform: &'a dyn Platform,
    stripe: StripeClient<'a>,
    limits: Limits,
    deadline: u64,
    report: Report,
}

/// One bounded run. `Err` (502 for Stripe, 503 for the database) leaves the cursor as it was.
pub fn run(platform: &dyn Platform, limits: Limits) -> Result<Report, ApiError> {
    let stripe = StripeClient::from_platform(platform)?;
    let deadline = platform.monotonic_ms().saturating_add(limits.max_millis);
    let mut run = Run { platform, stripe, limits, deadline, report: Report::default() };

    let stored = db::query_json(platform, "select public.stripe_reconcile_cursor()", &[])
        .map_err(|e| db::report(platform, "stripe_reconcile_cursor", e))?;
    let mut cursor = match (stored["anchor_event_id"].as_str(), stored["anchor_created"].as_i64()) {
        (Some(id), Some(created)) => Some((id.to_string(), created)),
        _ => None,
    };
    if let Some((_, created)) = &cursor {
        run.overlap(*created)?;
    } else {
        cursor = run.seed()?;
    }
    if let Some(anchor) = cursor.take() {
        cursor = Some(run.forward(anchor)?);
    }
    run.subscriptions()?;

    let report_json = run.report.to_json();
    let (id, created) = match &cursor {
        Some((id, created)) => (SqlParam::Text(id.clone()), SqlParam::Int64(*created)),
        None => (SqlParam::Null, SqlParam::Null),
    };
    let stored = db::query_json(
        platform,
        "select public.stripe_reconcile_advance($1::text, $2::int8, $3::jsonb)",
        &[id, created, SqlParam::Jsonb(report_json.to_string().into_bytes())],
    )
    .map_err(|e| db::report(platform, "stripe_reconcile_advance", e))?;
    run.report.cursor = match (stored["anchor_event_id"].as_str(), stored["anchor_created"].as_i64()) {
        (Some(id), Some(created)) => Some((id.to_string(), created)),
        _ => None,
    };
    let r = &run.report;
    platform.log(&format!(
        "stripe reconcile: seen {} applied {} duplicate {} ignored {} customers {} more {}",
        r.seen, r.applied, r.duplicate, r.ignored, r.customers_checked, r.more
    ));
    Ok(run.report)
}

fn types_query() -> String {
    HANDLED_TYPES.iter().map(|t| format!("&types%5B%5D={t}")).collect()
}

impl Run<'_> {
    fn out_of_time(&self) -> bool {
        self.platform.monotonic_ms() >= self.deadline
    }

    fn room(&self) -> usize {
        self.limits.max_events.saturating_sub(self.report.seen)
    }

    /// `GET /v1/events?…` for the handled types: (events newest first, has_more).
    fn list(&self, query: &str) -> Result<(Vec<Value>, bool), ApiError> {
        let page = self.stripe.get(&format!("events?{query}{}", types_query()))?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        Ok((data, page["has_more"].as_bool() == Some(true)))
    }

    /// Events in `[anchor_created - overlap, anchor_created]` the database has not
    /// recorded: listed late, or failed while the cursor moved past them.
    fn overlap(&mut self, anchor_created: i64) -> Result<(), ApiError> {
        let from = anchor_created - self.limits.overlap_secs;
        let mut after: Option<String> = None;
        loop {
            if self.out_of_time() || self.room() == 0 {
                self.report.more = true;
                return Ok(());
            }
            let mut query = format!("limit={PAGE}&created%5Bgte%5D={from}&created%5Blte%5D={anchor_created}");
            if let Some(id) = &after {
                query.push_str(&format!("&starting_after={id}"));
            }
            let (page, has_more) = self.list(&query)?;
            after = page.last().and_then(|e| e["id"].as_str()).map(str::to_string);
            // Oldest first, as they happened.
            let page: Vec<Value> = page.into_iter().rev().collect();
            if self.handle(&page)? < page.len() {
                self.report.more = true;
                return Ok(());
            }
            if !has_more || after.is_none() {
                return Ok(());
            }
        }
    }

    /// The first run: the newest event older than the look-back window is the anchor, so
    /// the walk starts at the window. An account with no event that old has its whole log
    /// inside the window: it is read newest first to its oldest event, which is handled
    /// and becomes the anchor.
    fn seed(&mut self) -> Result<Option<(String, i64)>, ApiError> {
        let start = self.platform.now_unix_ms().div_euclid(1000) - self.limits.lookback_secs;
        let (before, _) = self.list(&format!("limit=1&created%5Blt%5D={start}"))?;
        if let Some(anchor) = before.first().and_then(anchor_of) {
            return Ok(Some(anchor));
        }
        let mut after: Option<String> = None;
        let mut oldest: Option<Value> = None;
        loop {
            if self.out_of_time() {
                self.report.more = true;
                return Ok(None);
            }
            let mut query = format!("limit={PAGE}&created%5Bgte%5D={start}");
            if let Some(id) = &after {
                query.push_str(&format!("&starting_after={id}"));
            }
            let (page, has_more) = self.list(&query)?;
            if let Some(last) = page.last() {
                after = last["id"].as_str().map(str::to_string);
                oldest = Some(last.clone());
            }
            if !has_more || after.is_none() {
                break;
            }
        }
        let Some(oldest) = oldest else { return Ok(None) };
        self.handle(std::slice::from_ref(&oldest))?;
        Ok(anchor_of(&oldest))
    }

    /// Walks forward from `anchor` (`ending_before`), each page oldest first, until the
    /// log is read or a limit stops it. Returns the new anchor: the newest event handled.
    fn forward(&mut self, mut anchor: (String, i64)) -> Result<(String, i64), ApiError> {
        loop {
            let room = self.room();
            if self.out_of_time() || room == 0 {
                self.report.more = true;
                return Ok(anchor);
            }
            let (page, has_more) = self.list(&format!("limit={}&ending_before={}", room.min(PAGE), anchor.0))?;
            let page: Vec<Value> = page.into_iter().rev().collect();
            let handled = self.handle(&page)?;
            // Only past what was handled: the rest of the page comes again next run.
            if let Some(newest) = page[..handled].iter().rev().find_map(anchor_of) {
                anchor = newest;
            }
            if handled < page.len() {
                self.report.more = true;
                return Ok(anchor);
            }
            if !has_more || page.is_empty() {
                return Ok(anchor);
            }
        }
    }

    /// Applies the events of a page (oldest first) that the database has not recorded,
    /// until the time runs out. Returns how many (from the start of the page) were handled.
    fn handle(&mut self, page: &[Value]) -> Result<usize, ApiError> {
        if page.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = page.iter().filter_map(|e| e["id"].as_str()).collect();
        let known = db::query_json(
            self.platform,
            "select public.stripe_events_known($1::jsonb)",
            &[SqlParam::Jsonb(json!(ids).to_string().into_bytes())],
        )
        .map_err(|e| db::report(self.platform, "stripe_events_known", e))?;
        let known: Vec<&str> =
            known.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for (handled, value) in page.iter().enumerate() {
            if handled > 0 && self.out_of_time() {
                return Ok(handled);
            }
            self.report.seen += 1;
            if value["id"].as_str().is_some_and(|id| known.contains(&id)) {
                self.report.duplicate += 1;
                continue;
            }
            // The body is Stripe's API answer to our key: it is trusted as the webhook
            // trusts a verified signature. One Stripe would not send is skipped.
            let Ok(event) = Event::parse(&serde_json::to_vec(value).unwrap_or_default()) else {
                self.report.ignored += 1;
                continue;
            };
            let outcome = events::apply(self.platform, &event)?;
            match outcome["outcome"].as_str() {
                Some("applied") => self.report.applied += 1,
                Some("duplicate") => self.report.duplicate += 1,
                _ => self.report.ignored += 1,
            }
        }
        Ok(page.len())
    }

    /// Customers whose subscriptions were last read longer ago than the bound: their
    /// subscriptions are listed from Stripe and stored with the read's start time.
    fn subscriptions(&mut self) -> Result<(), ApiError> {
        if self.limits.max_customers == 0 {
            return Ok(());
        }
        let stale = db::query_json(
            self.platform,
            "select public.stripe_reconcile_stale_customers($1::int8, $2::int4)",
            &[
                SqlParam::Int64(self.limits.subscription_max_age_secs),
                SqlParam::Int32(self.limits.max_customers as i32 + 1),
            ],
        )
        .map_err(|e| db::report(self.platform, "stripe_reconcile_stale_customers", e))?;
        let customers: Vec<String> = stale
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).filter(|c| is_object_id(c)).map(str::to_string).collect())
            .unwrap_or_default();
        for (i, customer) in customers.iter().enumerate() {
            if i == self.limits.max_customers || self.out_of_time() {
                self.report.more = true;
                return Ok(());
            }
            let read_at_ms = self.platform.now_unix_ms();
            let list = match self.stripe.get(&format!("subscriptions?customer={customer}&status=all&limit=100")) {
                Ok(list) => list,
                // Deleted in Stripe: stamped with nothing to store, so it is not asked again.
                Err(error) if error.is_missing() => json!({"data": []}),
                Err(error) => return Err(error.into()),
            };
            let subscriptions: Vec<Value> = list["data"]
                .as_array()
                .map(|a| a.iter().filter_map(Subscription::parse).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.customer == *customer)
                .map(|s| {
                    json!({
                        "subscription_id": s.id,
                        "status": s.status,
                        "price_id": s.price_id,
                        "current_period_start": s.current_period_start,
                        "current_period_end": s.current_period_end,
                        "cancel_at_period_end": s.cancel_at_period_end,
                    })
                })
                .collect();
            let stored = db::query_json(
                self.platform,
                "select public.stripe_store_customer_subscriptions($1::text, $2::jsonb, $3::int8)",
                &[
                    SqlParam::Text(customer.clone()),
                    SqlParam::Jsonb(Value::from(subscriptions).to_string().into_bytes()),
                    SqlParam::Int64(read_at_ms),
                ],
            )
            .map_err(|e| db::report(self.platform, "stripe_store_customer_subscriptions", e))?;
            self.report.customers_checked += 1;
            self.report.subscriptions_written += stored["written"].as_u64().unwrap_or(0) as usize;
        }
        Ok(())
    }
}

/// An event's id and `created`, when both are what Stripe sends.
fn anchor_of(event: &Value) -> Option<(String, i64)> {
    let id = event["id"].as_str().filter(|id| id.starts_with("evt_") && is_object_id(id))?;
    Some((id.to_string(), event["created"].as_i64()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::events::{effect_of, Effect};

    #[test]
    fn stripe_reconcile_lists_only_types_the_webhook_acts_on() {
        for t in HANDLED_TYPES {
            let event = Event { id: "evt_1".into(), event_type: t.into(), created: 1, object: json!({"id": "x_1"}) };
            assert_ne!(effect_of(&event), Effect::Nothing("unhandled_type"), "{t}");
        }
        // Stripe's `types[]` takes at most 20.
        assert!(HANDLED_TYPES.len() <= 20);
        assert!(types_query().starts_with("&types%5B%5D=checkout.session.completed&"));
    }

    #[test]
    fn stripe_reconcile_limits_come_from_a_small_body() {
        assert_eq!(Limits::from_body(b"").unwrap(), Limits::default());
        let limits = Limits::from_body(br#"{"max_events": 5, "max_seconds": 2}"#).unwrap();
        assert_eq!((limits.max_events, limits.max_millis), (5, 2000));
        // JSON Schema's integers, as openapi.yaml says them, include 830.0.
        let limits = Limits::from_body(br#"{"max_events": 830.0, "max_seconds": 39.0}"#).unwrap();
        assert_eq!((limits.max_events, limits.max_millis), (830, 39_000));
        for bad in [
            &br#"{"max_events": 0}"#[..],
            br#"{"max_events": 1001}"#,
            br#"{"max_seconds": 1.5}"#,
            br#"{"cursor": "evt_1"}"#,
            b"[]",
            b"{",
        ] {
            assert_eq!(Limits::from_body(bad).unwrap_err().status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stripe_reconcile_anchor_needs_an_event_id_and_time() {
        assert_eq!(anchor_of(&json!({"id": "evt_1", "created": 5})), Some(("evt_1".into(), 5)));
        assert_eq!(anchor_of(&json!({"id": "evt_1/../x", "created": 5})), None);
        assert_eq!(anchor_of(&json!({"id": "evt_1"})), None);
    }
}
