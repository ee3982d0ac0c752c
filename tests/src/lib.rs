//! Test support for the Libero Spin application.
//!
//! * [`host`]: a native host that serves `spin.toml` the way `spin up` does (used by the
//!   end-to-end tests and as the local server where Spin is not installed).
//! * [`db`]: Postgres for tests and for the local server: the migration runner and
//!   fresh per-test databases cloned from a migrated template.
//! * [`testing`]: helpers for end-to-end tests (`TestApp`).
//! * [`spin`]: real `spin up` as the runtime under those tests (`LIBERO_RUNTIME=spin`).
//! * [`contract`]: responses against `openapi.yaml`, and the secret-leak check.

pub mod contract;
pub mod db;
pub mod host;
pub mod spin;
pub mod testing;

use std::path::PathBuf;

/// The repository root (the workspace that holds `spin.toml`, `migrations/`, `target/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
