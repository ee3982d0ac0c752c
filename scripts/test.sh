#!/usr/bin/env bash
# The whole test suite: checks the formatting, builds the components, starts a throwaway
# Postgres unless DATABASE_URL names one, and runs every test against the real .wasm:
# first under the bundled host, then the end-to-end HTTP tests again under real
# `spin up` when Spin is found (SPIN, PATH, then ../shared/bin/spin). Arguments go to
# both `cargo test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting first: a second, and it fails before the long part does.
if ! cargo fmt --all -- --check >/dev/null; then
  echo "test.sh: the code is not formatted (rustfmt.toml): run \`cargo fmt --all\`" >&2
  exit 1
fi
scripts/build-wasm.sh
DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh start)}"
export DATABASE_URL
cargo test --workspace --exclude libero-fixture "$@"

# The same end-to-end tests against an adopted database: the old app's (tests/adopt)
# brought over by `libero adopt` (docs/adopt.md), users and payments already in it.
adopted_tests=(session_complete stripe_webhook stripe_checkout insights)
targets=()
for t in "${adopted_tests[@]}"; do targets+=(--test "$t"); done
LIBERO_TEST_ADOPTED=1 cargo test -p libero-tests "${targets[@]}" "$@"

# The end-to-end tests that run under real Spin too. Fault injection and response
# recording stay on the bundled host (tests/tests/faults.rs, the contract check).
spin_tests=(session_complete reminders stripe_checkout stripe_catalog stripe_webhook stripe_reconcile ai_text voice transcribe insights account jwks supabase_js pooler hostile load)
spin="$(scripts/find-spin.sh || true)"
if [ -z "$spin" ]; then
  echo "test.sh: real Spin not found (SPIN, PATH, ../shared/bin/spin): the real-Spin pass is skipped" >&2
  exit 0
fi
version="$("$spin" --version | head -n 1 | cut -d" " -f1,2)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
targets=()
for t in "${spin_tests[@]}"; do targets+=(--test "$t"); done
SPIN="$spin" LIBERO_RUNTIME=spin cargo test -p libero-tests "${targets[@]}" "$@" 2>&1 | tee "$log"
passed="$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')"
echo "test.sh: under real Spin ($version): $passed tests passed in ${#spin_tests[@]} end-to-end test binaries"
