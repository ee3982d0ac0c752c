//! The whole test suite as one binary: each file beside this one is a module, so wasmtime,
//! the host and the fakes are linked once rather than once per file. Run one part with a
//! filter on its module path: `cargo test -p libero-tests --test suite -- stripe_webhook::`.
#![recursion_limit = "256"]

mod account;
mod ai_text;
mod analytics;
mod body_fuzz;
mod column_rules;
mod components;
mod database;
mod db_password;
mod faults;
mod host;
mod hostile;
mod insights;
mod jwks;
mod load;
mod migrations;
mod pooler;
mod reminders;
mod scripts;
mod session_complete;
mod settings;
mod statements;
mod stripe_catalog;
mod stripe_checkout;
mod stripe_reconcile;
mod stripe_webhook;
mod supabase_js;
mod transcribe;
mod voice;

mod pooler_support;
mod speech_support;
mod stripe_support;
