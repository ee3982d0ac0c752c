//! Reconciliation at volume (`scripts/bench.sh --only reconcile`, and a section of the
//! full run): a busy account's 30-day event log in the stateful fake of Stripe's events
//! list (tests/tests/stripe_support), with Stripe's page size and a page latency, and the
//! `stripe-reconcile` endpoint called as the cron job calls it (default budget, again while
//! `more`) until every purchase whose delivery was lost is credited. It reports the runs,
//! the wall time and the Stripe requests, against the fewest requests Stripe's API allows
//! (every listed event read once, 100 a page).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::stripe_support;
use libero_tests::db;
use libero_tests::testing::sign_hs256;

const EVENTS: usize = 50_000;
/// One event in ten is of a type the webhook handles (and so listed with `types[]`).
const HANDLED_EVERY: usize = 10;
const PURCHASES: usize = 300;
/// One purchase in ten lost its delivery.
const LOST_EVERY: usize = 10;
/// The fake's answer time for each page: an assumption for a 100-event page of Stripe's
/// events list, not a measured figure.
const PAGE_LATENCY: Duration = Duration::from_millis(400);

const HANDLED_KINDS: [&str; 4] = ["price.updated", "customer.subscription.updated", "invoice.paid", "product.updated"];
const OTHER_KINDS: [&str; 6] = [
    "payment_intent.created",
    "payment_intent.succeeded",
    "charge.succeeded",
    "customer.updated",
    "balance.available",
    "invoice.finalized",
];

struct RunFigures {
    seen: u64,
    applied: u64,
    requests: u64,
    rate_limited: bool,
    millis: u128,
}

/// Runs the measurement on a fresh database at `admin`; returns its Markdown section.
pub async fn measure(admin: &str) -> Result<String> {
    let say = |line: &str| eprintln!("bench: reconcile: {line}");
    let db = db::fresh_database_on(admin).await.context("reconcile database")?;
    let stripe = stripe_support::fake_stripe().await;
    let log = stripe_support::serve_event_log(&stripe).await;
    let vars = crate::base_variables(&db, &stripe.uri());
    let app = crate::start_app(libero_tests::repo_root().join("spin.toml"), &vars).await?;
    let base = format!("http://{}", app.addr);
    let client = reqwest::Client::new();

    say(&format!("building a 30-day log of {EVENTS} events"));
    let users: Vec<Uuid> = (0..PURCHASES).map(|_| Uuid::new_v4()).collect();
    db.client()
        .await
        .execute(
            "INSERT INTO auth.users (id, email) SELECT u, u::text || '@bench.local' FROM unnest($1::uuid[]) u",
            &[&users],
        )
        .await?;
    let now = chrono::Utc::now().timestamp();
    let span = stripe_support::RETENTION_SECS - 7200;
    let handled_slots = EVENTS / HANDLED_EVERY;
    let purchase_every = handled_slots / PURCHASES;
    let (mut all, mut recorded, mut delivered, mut lost) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut purchases = 0;
    for i in 0..EVENTS {
        let created = now - span + (i as i64) * span / EVENTS as i64;
        let slot = i / HANDLED_EVERY;
        let mut event = if !i.is_multiple_of(HANDLED_EVERY) {
            stripe_support::event(OTHER_KINDS[i % OTHER_KINDS.len()], json!({"id": format!("obj_{i}")}))
        } else if slot.is_multiple_of(purchase_every) && purchases < PURCHASES {
            let user = users[purchases];
            purchases += 1;
            let session = stripe_support::checkout_session(user, "tokens-small", "payment", "paid");
            stripe_support::event("checkout.session.completed", session)
        } else {
            stripe_support::event(HANDLED_KINDS[slot % HANDLED_KINDS.len()], json!({"id": format!("obj_{i}")}))
        };
        event["created"] = json!(created);
        match event["type"].as_str() {
            Some("checkout.session.completed") if purchases.is_multiple_of(LOST_EVERY) => {
                lost.push(users[purchases - 1])
            }
            Some("checkout.session.completed") => delivered.push(event.clone()),
            Some(kind) if HANDLED_KINDS.contains(&kind) => recorded.push(event.clone()),
            _ => {}
        }
        all.push(event);
    }
    let listed = recorded.len() + delivered.len() + lost.len();
    log.extend(all);
    // What the webhook handled when it was delivered: the other handled events recorded in
    // one statement, the purchases delivered through the webhook itself.
    let ids: Vec<String> = recorded.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let types: Vec<String> = recorded.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    let created: Vec<i64> = recorded.iter().map(|e| e["created"].as_i64().unwrap()).collect();
    db.client()
        .await
        .execute(
            "INSERT INTO public.stripe_events (event_id, type, created, outcome)
             SELECT id, t, to_timestamp(c), 'applied' FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(id, t, c)",
            &[&ids, &types, &created],
        )
        .await?;
    say(&format!("delivering {} purchases through the webhook ({} lost)", delivered.len(), lost.len()));
    let webhook = format!("{base}/functions/v1/stripe-webhook");
    for event in &delivered {
        let (status, answer) = stripe_support::deliver_to(&client, &webhook, event).await;
        ensure!(status == 200, "delivery answered {status}: {answer}");
    }

    log.set_delay(PAGE_LATENCY);
    let token = sign_hs256(
        crate::JWT_SECRET,
        &json!({"iss": "supabase", "ref": "bench", "role": "service_role", "iat": now, "exp": now + 7200}),
    );
    let reconcile = || async {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/functions/v1/stripe-reconcile"))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .context("reconcile request")?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status == 200, "reconcile answered {status}: {answer}");
        let n = |k: &str| answer[k].as_u64().unwrap_or(0);
        anyhow::Ok((
            RunFigures {
                seen: n("seen"),
                applied: n("applied"),
                requests: n("requests"),
                rate_limited: answer["rate_limited"] == true,
                millis: started.elapsed().as_millis(),
            },
            answer["more"] == true,
        ))
    };

    say("reconciling as the cron job does: the default budget, again while `more`");
    let started = Instant::now();
    let mut runs: Vec<RunFigures> = Vec::new();
    loop {
        // One rate limit (429 to a request and to its retry) after the first run.
        if runs.len() == 1 {
            log.rate_limit_next.store(2, std::sync::atomic::Ordering::SeqCst);
        }
        let (figures, more) = reconcile().await?;
        say(&format!(
            "run {}: seen {} applied {} requests {} in {} ms{}",
            runs.len() + 1,
            figures.seen,
            figures.applied,
            figures.requests,
            figures.millis,
            if figures.rate_limited { " (rate limited)" } else { "" }
        ));
        runs.push(figures);
        if !more {
            break;
        }
        ensure!(runs.len() < 100, "no end after 100 runs");
    }
    let wall = started.elapsed();
    let lists = log.lists.load(std::sync::atomic::Ordering::SeqCst);
    let rate_limited = log.rate_limited.load(std::sync::atomic::Ordering::SeqCst);

    let check = db.client().await;
    let credited: i64 = check
        .query_one("SELECT count(*) FROM public.user_profiles WHERE id = ANY($1) AND tokens = 110", &[&lost])
        .await?
        .get(0);
    let purchases_in_ledger: i64 =
        check.query_one("SELECT count(*) FROM public.token_ledger WHERE reason = 'purchase'", &[]).await?.get(0);
    let inconsistent: i64 = check
        .query_one(
            "SELECT count(*) FROM public.user_profiles p
              WHERE p.tokens <> coalesce((SELECT sum(delta) FROM public.token_ledger l WHERE l.user_id = p.id), 0)",
            &[],
        )
        .await?
        .get(0);
    ensure!(credited == lost.len() as i64, "{credited} of {} lost purchases credited", lost.len());
    ensure!(purchases_in_ledger == PURCHASES as i64, "{purchases_in_ledger} purchases in the ledger");
    ensure!(inconsistent == 0, "{inconsistent} users whose tokens are not the sum of their ledger");

    let (steady, _) = reconcile().await?;
    app.shutdown().await;

    let minimum = listed.div_ceil(100);
    let mut out = String::new();
    writeln!(out, "### Reconciliation at volume")?;
    writeln!(out)?;
    writeln!(
        out,
        "A 30-day log of {EVENTS} events in the fake Stripe events list: {} of types the webhook does not \
         handle, {} handled ones it was delivered, {PURCHASES} token purchases of which {} lost their delivery. \
         Pages of 100, {} ms per page (an assumed latency). The endpoint is called as the cron job calls it \
         (default budget: 200 new events, 20 s), again while `more`; after the first run Stripe answers 429 to \
         a request and to its retry.",
        EVENTS - listed,
        recorded.len() + delivered.len(),
        lost.len(),
        PAGE_LATENCY.as_millis()
    )?;
    writeln!(out)?;
    writeln!(out, "| | |")?;
    writeln!(out, "|---|---|")?;
    writeln!(out, "| runs until every lost purchase was credited | {} |", runs.len())?;
    writeln!(out, "| wall time | {:.1} s |", wall.as_secs_f64())?;
    writeln!(
        out,
        "| Stripe list requests | {lists} (the fewest possible: {minimum}, {listed} listed events at 100 a page) |"
    )?;
    writeln!(out, "| 429 answers | {rate_limited}: the run ended early with `more`, the next carried on |")?;
    let per_run: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} seen/{} applied/{} req/{:.1} s{}",
                r.seen,
                r.applied,
                r.requests,
                r.millis as f64 / 1000.0,
                if r.rate_limited { " (429)" } else { "" }
            )
        })
        .collect();
    writeln!(out, "| per run | {} |", per_run.join("; "))?;
    writeln!(
        out,
        "| lost purchases credited | {credited} of {}, once each ({purchases_in_ledger} purchases in the ledger); \
         tokens = sum(ledger) for every user |",
        lost.len()
    )?;
    writeln!(
        out,
        "| a further run, nothing new | {} request(s), {:.1} s |",
        steady.requests,
        steady.millis as f64 / 1000.0
    )?;
    Ok(out)
}
