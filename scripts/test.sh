#!/usr/bin/env bash
# The whole test suite: builds the components, starts a throwaway Postgres unless
# DATABASE_URL names one, and runs every test against the real .wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL="$(scripts/pg.sh start)"
  export DATABASE_URL
fi
cargo test --workspace --exclude libero-fixture "$@"
