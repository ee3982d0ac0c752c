#!/usr/bin/env bash
# The whole test suite: checks the formatting and clippy, builds the components, starts a
# throwaway Postgres unless DATABASE_URL names one, and runs every test against the real
# .wasm: first under the bundled host, then the end-to-end HTTP tests again under real
# `spin up` (SPIN, PATH, then ../shared/bin/spin). Arguments go to every `cargo test` run:
# cargo's before a `--`, the test harness's after it.
#
# Nothing is left out silently. Without Spin the run fails (outside CI,
# LIBERO_ALLOW_SKIPS=1 lets it end after the first pass, saying so). A test that cannot
# run here (no PgBouncer, a host-only test under Spin) fails the same way, or with that
# opt-out skips and is listed; the counts printed at the end are of tests that ran.
# `#[ignore]`d tests (the PgCat one unless PGCAT names a binary) are counted apart.
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting first: a second, and it fails before the long part does.
if ! cargo fmt --all -- --check >/dev/null; then
  echo "test.sh: the code is not formatted (rustfmt.toml): run \`cargo fmt --all\`" >&2
  exit 1
fi
cargo clippy --quiet --workspace --all-targets -- -D warnings
# The components as they ship: the code behind `cfg(target_arch = "wasm32")` (the Spin
# platform) is only compiled, and so only linted, for the wasm target.
wasm_packages=(-p libero-shared -p libero-fixture)
for crate in functions/*/; do wasm_packages+=(-p "$(basename "$crate")"); done
cargo clippy --quiet --target wasm32-wasip2 "${wasm_packages[@]}" -- -D warnings
scripts/build-wasm.sh
DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh start)}"
export DATABASE_URL

# The end-to-end suite is one test binary (tests/tests/main.rs); a part of it is chosen by
# its module paths ("stripe_webhook::"). Split our arguments into cargo's and libtest's so
# that those filters can follow them.
cargo_args=()
harness_args=()
seen_separator=0
for arg in "$@"; do
  if [ "$seen_separator" = 0 ] && [ "$arg" = "--" ]; then
    seen_separator=1
  elif [ "$seen_separator" = 0 ]; then
    cargo_args+=("$arg")
  else
    harness_args+=("$arg")
  fi
done
# suite [--ignored] MODULE...: the suite's tests in those modules.
suite() {
  local extra=() filters=()
  if [ "$1" = --ignored ]; then extra+=(--ignored); shift; fi
  for m in "$@"; do filters+=("$m::"); done
  cargo test -p libero-tests --test suite "${cargo_args[@]}" -- "${harness_args[@]}" "${extra[@]}" "${filters[@]}"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# sum LOG FIELD: the total of one figure ("passed", "ignored", ...) over a cargo test log.
sum() { { grep -E "^test result: " "$1" || true; } | { grep -Eo "[0-9]+ $2" || true; } | awk '{s += $1} END {print s + 0}'; }
# summary LOG SKIPS LABEL
summary() {
  local passed ignored skipped
  passed="$(sum "$1" passed)"
  ignored="$(sum "$1" ignored)"
  skipped=0
  if [ -f "$2" ]; then skipped="$(wc -l <"$2")"; fi
  echo "test.sh: $3: $((passed - skipped)) tests ran and passed; $skipped skipped (LIBERO_ALLOW_SKIPS=1), $ignored ignored"
  if [ "$skipped" -gt 0 ]; then sed 's/^/  skipped: /' "$2"; fi
}

# Modules whose tests hold the app to wall-clock deadlines (an upstream that hangs must
# be cut off within 2 s) run in a test process of their own after the rest, so that the
# other modules' tests are not sharing the two cores with them at that moment.
timed=(faults ai_text)
skip_timed=()
for m in "${timed[@]}"; do skip_timed+=(--skip "$m::"); done
LIBERO_SKIP_LOG="$work/host.skips" cargo test --workspace --exclude libero-fixture "${cargo_args[@]}" \
  -- "${harness_args[@]}" "${skip_timed[@]}" 2>&1 | tee "$work/host.log"
LIBERO_SKIP_LOG="$work/host.skips" suite "${timed[@]}" 2>&1 | tee -a "$work/host.log"
if [ -n "${PGCAT:-}" ]; then
  LIBERO_SKIP_LOG="$work/host.skips" suite --ignored pooler 2>&1 | tee -a "$work/host.log"
fi
# The same end-to-end tests against an adopted database: the old app's (tests/adopt)
# brought over by `libero adopt` (docs/adopt.md), users and payments already in it.
adopted_tests=(session_complete stripe_webhook stripe_checkout insights)
LIBERO_TEST_ADOPTED=1 LIBERO_SKIP_LOG="$work/host.skips" \
  suite "${adopted_tests[@]}" 2>&1 | tee -a "$work/host.log"
host_summary="$(summary "$work/host.log" "$work/host.skips" "bundled host (and ${#adopted_tests[@]} modules again on an adopted database)")"

# The end-to-end tests that run under real Spin too (response recording for the
# contract check stays on the bundled host; under Spin only the log is leak-checked), and
# `host`, whose claims that the bundled host behaves like Spin are then checked on Spin.
spin_tests=(host session_complete reminders stripe_checkout stripe_catalog stripe_webhook stripe_reconcile ai_text voice transcribe insights account jwks supabase_js pooler hostile load faults)
spin="$(scripts/find-spin.sh || true)"
if [ -z "$spin" ]; then
  echo "$host_summary"
  if [ -z "${CI:-}" ] && [ "${LIBERO_ALLOW_SKIPS:-}" = 1 ]; then
    echo "test.sh: real Spin not found (SPIN, PATH, ../shared/bin/spin): the real-Spin pass was NOT run (LIBERO_ALLOW_SKIPS=1)" >&2
    exit 0
  fi
  echo "test.sh: FAILED: real Spin not found (SPIN, PATH, ../shared/bin/spin); the end-to-end tests must also run under it" >&2
  echo "  (outside CI, LIBERO_ALLOW_SKIPS=1 runs the bundled-host pass alone)" >&2
  exit 1
fi
version="$("$spin" --version | head -n 1 | cut -d" " -f1,2)"
untimed_spin_tests=()
for m in "${spin_tests[@]}"; do
  case " ${timed[*]} " in *" $m "*) ;; *) untimed_spin_tests+=("$m") ;; esac
done
SPIN="$spin" LIBERO_RUNTIME=spin LIBERO_SKIP_LOG="$work/spin.skips" \
  suite "${untimed_spin_tests[@]}" 2>&1 | tee "$work/spin.log"
SPIN="$spin" LIBERO_RUNTIME=spin LIBERO_SKIP_LOG="$work/spin.skips" \
  suite "${timed[@]}" 2>&1 | tee -a "$work/spin.log"
if [ -n "${PGCAT:-}" ]; then
  SPIN="$spin" LIBERO_RUNTIME=spin LIBERO_SKIP_LOG="$work/spin.skips" \
    suite --ignored pooler 2>&1 | tee -a "$work/spin.log"
fi
echo "$host_summary"
summary "$work/spin.log" "$work/spin.skips" "under real Spin ($version), ${#spin_tests[@]} modules of the end-to-end suite"
