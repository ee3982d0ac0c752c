#!/usr/bin/env bash
# The benchmark: builds the components and an optimized host, starts the throwaway
# Postgres unless DATABASE_URL names one, measures, prints the table and writes
# BENCHMARKS.md. Flags go to the benchmark: --quick (short runs), --skip-big (no
# 1,000,000-row growth load), --out <file> (default BENCHMARKS.md; - for none).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh start)}"
export DATABASE_URL
export LIBERO_BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
# Optimized, but without the workspace release profile's fat LTO (tuned for small .wasm).
cargo bench --quiet -p libero-tests --profile bench-host --bench libero-bench -- "$@"
