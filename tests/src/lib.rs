//! End-to-end test support for the Libero Spin application.
//!
//! * [`host`]: the bundled runtime (`libero-host`, in `host/`), re-exported.
//! * [`db`]: fresh per-test databases cloned from a template migrated with the
//!   operator's runner (`libero-cli`, in `cli/`).
//! * [`testing`]: helpers for end-to-end tests (`TestApp`).
//! * [`spin`]: real `spin up` as the runtime under those tests (`LIBERO_RUNTIME=spin`).
//! * [`cluster`]: a Postgres cluster of a test's own (to crash, or with default durability).
//! * [`contract`]: responses against `openapi.yaml`, and the secret-leak check.
//! * [`sql`]: what the tests of the database on its own share (a user, a Supabase role).

pub mod cluster;
pub mod contract;
pub mod db;
pub use libero_host as host;
pub mod spin;
pub mod sql;
pub mod testing;

use std::path::PathBuf;

/// The repository root (the workspace that holds `spin.toml`, `migrations/`, `target/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The fixture component (`tests/fixture`, built by `scripts/build-wasm.sh`), for tests
/// and the benchmark that write manifests of their own around it.
pub fn fixture_wasm() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip2/release/libero_fixture.wasm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-wasm.sh (or cargo build --target wasm32-wasip2 --release -p libero-fixture)",
        path.display()
    );
    path
}
