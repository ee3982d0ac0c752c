#!/usr/bin/env bash
# The whole test suite: builds the components, starts a throwaway Postgres unless
# DATABASE_URL names one, and runs every test against the real .wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh start)}"
export DATABASE_URL
cargo test --workspace --exclude libero-fixture "$@"
