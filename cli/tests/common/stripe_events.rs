//! A fake Stripe event log (`GET /v1/events`, newest first, paged as Stripe pages it) for
//! `libero stripe reconcile`, and that command pointed at it.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[derive(Clone, Default)]
pub struct EventLog {
    /// Oldest first, as they happened.
    pub events: Arc<Mutex<Vec<Value>>>,
    /// Every page a 500 (Stripe down).
    pub failing: Arc<AtomicBool>,
    /// How long each page takes.
    pub delay: Arc<Mutex<Duration>>,
}

impl Respond for EventLog {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let delay = *self.delay.lock().unwrap();
        self.answer(request).set_delay(delay)
    }
}

impl EventLog {
    /// Serves the log at `GET /v1/events` of `stripe`.
    pub async fn mount(&self, stripe: &MockServer) {
        Mock::given(method("GET")).and(path("/v1/events")).respond_with(self.clone()).mount(stripe).await;
    }

    pub fn push(&self, event: Value) {
        self.events.lock().unwrap().push(event);
    }

    fn answer(&self, request: &Request) -> ResponseTemplate {
        if self.failing.load(Ordering::SeqCst) {
            return ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"type": "api_error", "message": "down"}}));
        }
        let q: Vec<(String, String)> = request.url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let limit: usize = get("limit").unwrap().parse().unwrap();
        let (gte, lte, lt) = (
            get("created[gte]").map_or(i64::MIN, |v| v.parse().unwrap()),
            get("created[lte]").map_or(i64::MAX, |v| v.parse().unwrap()),
            get("created[lt]").map_or(i64::MAX, |v| v.parse().unwrap()),
        );
        let listed: Vec<Value> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|e| (gte..=lte).contains(&e["created"].as_i64().unwrap()) && e["created"].as_i64().unwrap() < lt)
            .cloned()
            .collect();
        let at = |id: String| listed.iter().position(|e| e["id"] == id.as_str()).unwrap();
        let (data, more) = if let Some(id) = get("starting_after") {
            let rest = &listed[at(id) + 1..];
            (rest.iter().take(limit).cloned().collect::<Vec<_>>(), rest.len() > limit)
        } else if let Some(id) = get("ending_before") {
            let newer = &listed[..at(id)];
            let from = newer.len().saturating_sub(limit);
            (newer[from..].to_vec(), from > 0)
        } else {
            (listed.iter().take(limit).cloned().collect(), listed.len() > limit)
        };
        ResponseTemplate::new(200).set_body_json(json!({"object": "list", "has_more": more, "data": data}))
    }
}

/// `libero stripe reconcile` against `stripe` with the secret key `key`, the Spin-style
/// settings of the test's own environment removed so that only what the test gives counts.
pub fn reconcile_command(stripe: &MockServer, key: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_libero"));
    command
        .args(["stripe", "reconcile"])
        .env("STRIPE_SECRET_KEY", key)
        .env("STRIPE_API_BASE", stripe.uri())
        .env_remove("SPIN_VARIABLE_STRIPE_SECRET_KEY")
        .env_remove("SPIN_VARIABLE_DATABASE_URL");
    command
}
