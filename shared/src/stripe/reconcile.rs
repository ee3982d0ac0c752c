//! Reconciliation: heals webhook deliveries that were lost (a wrong signing secret, an
//! outage longer than Stripe's retries, an endpoint made after the purchase) from
//! Stripe's own event log, `GET /v1/events` (30 days). Used by the `stripe-reconcile`
//! endpoint and by `libero stripe reconcile`; see docs/stripe.md.
//!
//! * Events come from Stripe's API with our key, never from a request body, and each goes
//!   through [`events::apply`], the webhook's own exactly-once path: an event the webhook
//!   (or a concurrent reconciler) applied is recorded once, whoever comes first.
//! * Two positions in the log are stored (`stripe_reconcile_state`), after every page, so
//!   a run cut short by its budget, a rate limit or a killed process keeps what it did:
//!   - the head, the newest event handled. Each run first reads forward from it
//!     (`ending_before`, newest first, each page handled oldest first), so new events
//!     never wait behind events that were handled before;
//!   - the settled position: every event listed before it was handled, and it was older
//!     than the overlap window when it was read, so Stripe can no longer list an event
//!     below it. Events between the two are read once more when they have settled (for
//!     those Stripe listed late); a backlog read when already settled is read once.
//! * The first run starts at the start of the look-back window, a time: it finds the
//!   oldest page of events in the window with `created[...]` filters (one request on a
//!   quiet account, a few on a busy one) instead of paging the whole window first.
//! * Events the database already recorded cost nothing against a run's `max_events`; each
//!   run handles at least one page, so every run makes progress or shows there is nothing
//!   left (`more: false`).
//! * A Stripe rate limit (429, after the client's retry) ends the run early with
//!   `more: true` and `rate_limited: true`, its progress kept; other Stripe errors answer
//!   502 (the database 503), also with the progress of the pages before kept.
//! * Subscriptions whose stored read is older than a bound are re-read from Stripe, per
//!   customer, with the webhook's stamped-read rule (a later read always wins). This also
//!   heals a plan whose `customer.subscription.*` events were all lost.

use serde_json::{json, Value};

use super::client::{StripeClient, StripeError};
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

/// Events per page: Stripe's largest.
const PAGE: usize = 100;

/// A page of 100 events with Checkout Sessions in them can pass the client's 1 MiB limit
/// for one object.
const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The first window the oldest-page search tries when the rest of the log is more than a
/// page: an hour, widened fourfold while empty and narrowed eightfold while too full.
const FIRST_WINDOW_SECS: i64 = 3600;

/// What one run may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// New events handled (applied or recorded without effect). Events the database has
    /// recorded already do not count, so they can never use up a run.
    pub max_events: usize,
    /// Wall time; checked before each Stripe call after the first, so a run ends within
    /// about one call (at most ~20 s with the client's retry) of it.
    pub max_millis: u64,
    /// How long after its `created` Stripe may still list an event late: a position is
    /// settled once it is older than this.
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

/// A place in Stripe's event log: just after an event, or (no event id) a time before
/// which everything was handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub event_id: Option<String>,
    pub created: i64,
}

impl Position {
    fn to_json(&self) -> Value {
        json!({"event_id": self.event_id, "created": self.created})
    }
}

/// What a run did: the endpoint's answer and the command's summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Events looked at: new ones and those recorded already.
    pub seen: usize,
    pub applied: usize,
    pub duplicate: usize,
    /// Recorded with no effect (not our order, an unknown user, a stale read, ...).
    pub ignored: usize,
    pub customers_checked: usize,
    pub subscriptions_written: usize,
    /// Stripe requests made.
    pub requests: usize,
    /// The head after the run: `(event id, created)`.
    pub cursor: Option<(String, i64)>,
    /// The settled position after the run.
    pub settled: Option<Position>,
    /// Stopped by a limit or a rate limit: call again.
    pub more: bool,
    /// Stripe answered 429 (after a retry): the run stopped early, its progress kept.
    pub rate_limited: bool,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "seen": self.seen,
            "applied": self.applied,
            "duplicate": self.duplicate,
            "ignored": self.ignored,
            "subscriptions": {"customers_checked": self.customers_checked, "written": self.subscriptions_written},
            "requests": self.requests,
            "cursor": self.cursor.as_ref().map(|(id, created)| json!({"event_id": id, "created": created})),
            "settled": self.settled.as_ref().map(Position::to_json),
            "more": self.more,
            "rate_limited": self.rate_limited,
        })
    }
}

struct Run<'a> {
    platform: &'a dyn Platform,
    stripe: StripeClient<'a>,
    limits: Limits,
    deadline: u64,
    /// The run's start (seconds).
    now: i64,
    /// Events created before this (Stripe's clock, seconds) are settled.
    settled_before: i64,
    head: Option<Position>,
    settled: Position,
    /// New events handled (what `max_events` bounds).
    work: usize,
    report: Report,
}

/// The stored positions: (head, settled).
fn positions(stored: &Value) -> (Option<Position>, Option<Position>) {
    let head = match (stored["anchor_event_id"].as_str(), stored["anchor_created"].as_i64()) {
        (Some(id), Some(created)) => Some(Position { event_id: Some(id.to_string()), created }),
        _ => None,
    };
    let settled = stored["settled_created"]
        .as_i64()
        .map(|created| Position { event_id: stored["settled_event_id"].as_str().map(str::to_string), created });
    (head, settled)
}

/// One bounded run. `Err` (502 for Stripe, 503 for the database) keeps the positions
/// stored by the pages before it.
pub fn run(platform: &dyn Platform, limits: Limits) -> Result<Report, ApiError> {
    let stripe = StripeClient::from_platform(platform)?;
    let deadline = platform.monotonic_ms().saturating_add(limits.max_millis);
    let now = platform.now_unix_ms().div_euclid(1000);
    let stored = db::query_json(platform, "select public.stripe_reconcile_cursor()", &[])
        .map_err(|e| db::report(platform, "stripe_reconcile_cursor", e))?;
    let (head, settled) = positions(&stored);
    let settled =
        settled.or_else(|| head.clone()).unwrap_or(Position { event_id: None, created: now - limits.lookback_secs });
    let mut run = Run {
        platform,
        stripe,
        now,
        settled_before: now - limits.overlap_secs,
        limits,
        deadline,
        head,
        settled,
        work: 0,
        report: Report::default(),
    };

    match run.walk() {
        Ok(()) => run.subscriptions()?,
        Err(_) if run.report.rate_limited => run.report.more = true,
        Err(error) => return Err(error),
    }

    let stored = run.save(true)?;
    let (head, settled) = positions(&stored);
    run.report.cursor = head.and_then(|p| Some((p.event_id?, p.created)));
    run.report.settled = settled;
    let r = &run.report;
    platform.log(&format!(
        "stripe reconcile: seen {} applied {} duplicate {} ignored {} customers {} requests {} more {}{}",
        r.seen,
        r.applied,
        r.duplicate,
        r.ignored,
        r.customers_checked,
        r.requests,
        r.more,
        if r.rate_limited { " (rate limited)" } else { "" }
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

    /// Whether another Stripe call fits: the first of a run always does, so each run
    /// makes progress however small its budget.
    fn may_call(&self) -> bool {
        self.report.requests == 0 || self.platform.monotonic_ms() < self.deadline
    }

    /// Stores the positions (and, at the end of the run, the report): one statement.
    fn save(&self, with_report: bool) -> Result<Value, ApiError> {
        let (head_id, head_created) = match &self.head {
            Some(Position { event_id: Some(id), created }) => (SqlParam::Text(id.clone()), SqlParam::Int64(*created)),
            _ => (SqlParam::Null, SqlParam::Null),
        };
        let settled_id = self.settled.event_id.clone().map_or(SqlParam::Null, SqlParam::Text);
        let report =
            if with_report { SqlParam::Jsonb(self.report.to_json().to_string().into_bytes()) } else { SqlParam::Null };
        db::query_json(
            self.platform,
            "select public.stripe_reconcile_save($1::text, $2::int8, $3::text, $4::int8, $5::jsonb)",
            &[head_id, head_created, settled_id, SqlParam::Int64(self.settled.created), report],
        )
        .map_err(|e| db::report(self.platform, "stripe_reconcile_save", e))
    }

    /// `GET /v1/events?…` for the handled types: (events newest first, has_more).
    fn list(&mut self, query: &str) -> Result<(Vec<Value>, bool), ApiError> {
        self.list_stripe(query).map_err(ApiError::from)
    }

    fn list_stripe(&mut self, query: &str) -> Result<(Vec<Value>, bool), StripeError> {
        self.report.requests += 1;
        let page = self.stripe.get_large(&format!("events?{query}{}", types_query()), PAGE_BYTES).inspect_err(|e| {
            if e.is_rate_limited() {
                self.report.rate_limited = true;
            }
        })?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        Ok((data, page["has_more"].as_bool() == Some(true)))
    }

    /// The page of events just after `from`, oldest first, and whether more follow it.
    fn next_page(&mut self, from: &Position) -> Result<(Vec<Value>, bool), ApiError> {
        if let Some(id) = &from.event_id {
            match self.list_stripe(&format!("limit={PAGE}&ending_before={id}")) {
                Ok((page, has_more)) => return Ok((page.into_iter().rev().collect(), has_more)),
                // An event past Stripe's retention can no longer be a cursor: go on from
                // its time (what was handled there is skipped as recorded).
                Err(error) if error.is_missing() => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.oldest_page(from.created)
    }

    /// The oldest page of events created at `from` or later, oldest first. Stripe lists
    /// newest first only, so a window is narrowed with `created[...]` until one page holds
    /// all of it, instead of paging through everything newer first.
    fn oldest_page(&mut self, from: i64) -> Result<(Vec<Value>, bool), ApiError> {
        let (page, has_more) = self.list(&format!("limit={PAGE}&created%5Bgte%5D={from}"))?;
        if !has_more {
            return Ok((page.into_iter().rev().collect(), false));
        }
        let (mut lo, mut width) = (from, FIRST_WINDOW_SECS);
        loop {
            let window = format!("limit={PAGE}&created%5Bgte%5D={lo}&created%5Blt%5D={}", lo + width);
            let (page, full) = self.list(&window)?;
            if page.is_empty() {
                if lo > self.now + 86_400 {
                    return Ok((Vec::new(), false));
                }
                lo += width;
                width = width.saturating_mul(4);
                continue;
            }
            if !full {
                return Ok((page.into_iter().rev().collect(), true));
            }
            if width > 1 {
                width = (width / 8).max(1);
                continue;
            }
            // More than a page within one second: page down to its oldest events.
            let mut page = page;
            loop {
                let Some(last) = page.last().and_then(|e| e["id"].as_str()).map(str::to_string) else {
                    return Ok((Vec::new(), true));
                };
                let (older, more) = self.list(&format!("{window}&starting_after={last}"))?;
                if older.is_empty() {
                    return Ok((page.into_iter().rev().collect(), true));
                }
                page = older;
                if !more {
                    return Ok((page.into_iter().rev().collect(), true));
                }
            }
        }
    }

    /// New events from the head, then the events between the settled position and the
    /// head that have settled since. Positions are stored after each page.
    fn walk(&mut self) -> Result<(), ApiError> {
        loop {
            if !self.may_call() {
                self.report.more = true;
                return Ok(());
            }
            let from = self.head.clone().unwrap_or_else(|| self.settled.clone());
            let (page, has_more) = self.next_page(&from)?;
            // Settled moves with the head while nothing unsettled lies between them.
            let mut together = self.head.as_ref().is_none_or(|head| head.event_id == self.settled.event_id);
            let handled = self.handle(&page)?;
            for event in &page[..handled] {
                let Some(position) = position_of(event) else { continue };
                if together && position.created < self.settled_before {
                    self.settled = position.clone();
                } else {
                    together = false;
                }
                self.head = Some(position);
            }
            if self.head.is_none() && page.is_empty() {
                // Nothing in the window yet: the part of it that has settled is done.
                self.settled.created = self.settled.created.max(self.settled_before);
            }
            self.save(false)?;
            if handled < page.len() {
                self.report.more = true;
                return Ok(());
            }
            if !has_more || page.is_empty() {
                break;
            }
        }
        loop {
            let Some(head) = self.head.clone() else { return Ok(()) };
            if head.event_id == self.settled.event_id {
                return Ok(());
            }
            if !self.may_call() {
                self.report.more = true;
                return Ok(());
            }
            let from = self.settled.clone();
            let (page, has_more) = self.next_page(&from)?;
            // Up to the head and only what has settled: the rest is read when it has.
            let mut due = 0;
            for event in &page {
                let Some(position) = position_of(event) else { break };
                if position.created >= self.settled_before || position.created > head.created {
                    break;
                }
                due += 1;
                if position.event_id == head.event_id {
                    break;
                }
            }
            let handled = self.handle(&page[..due])?;
            if let Some(position) = page[..handled].iter().rev().find_map(position_of) {
                self.settled = position;
            }
            self.save(false)?;
            if handled < due {
                self.report.more = true;
                return Ok(());
            }
            if due < page.len() || !has_more {
                return Ok(());
            }
        }
    }

    /// Applies the events of a page (oldest first) that the database has not recorded,
    /// until the run's budget is spent. Returns how many (from the start of the page)
    /// were handled.
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
            if value["id"].as_str().is_some_and(|id| known.contains(&id)) {
                // Recorded already: free, whatever the budget.
                self.report.seen += 1;
                self.report.duplicate += 1;
                continue;
            }
            let progressed = self.report.seen > 0;
            if self.work >= self.limits.max_events || (progressed && self.out_of_time()) {
                return Ok(handled);
            }
            self.report.seen += 1;
            self.work += 1;
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
            self.report.requests += 1;
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

/// An event's place in the log, when its id and `created` are what Stripe sends.
fn position_of(event: &Value) -> Option<Position> {
    let id = event["id"].as_str().filter(|id| id.starts_with("evt_") && is_object_id(id))?;
    Some(Position { event_id: Some(id.to_string()), created: event["created"].as_i64()? })
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
        let at = |id: &str| Some(Position { event_id: Some(id.into()), created: 5 });
        assert_eq!(position_of(&json!({"id": "evt_1", "created": 5})), at("evt_1"));
        assert_eq!(position_of(&json!({"id": "evt_1/../x", "created": 5})), None);
        assert_eq!(position_of(&json!({"id": "evt_1"})), None);
    }
}
