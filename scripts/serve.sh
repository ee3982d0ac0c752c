#!/usr/bin/env bash
# Serves the app on http://127.0.0.1:${PORT:-3000}: real `spin up` when Spin is installed,
# the bundled wasmtime host (tests/) otherwise. Starts and migrates a local Postgres
# unless SPIN_VARIABLE_DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-3000}"
scripts/build-wasm.sh
# The bench-host profile: optimized like release, without the fat LTO that the release
# profile (tuned for small .wasm) would spend minutes on for wasmtime.
cargo build --quiet --profile bench-host -p libero-tests --bin libero-host
host=target/bench-host/libero-host
if [ -z "${SPIN_VARIABLE_DATABASE_URL:-}" ]; then
  url="$(scripts/pg.sh start)"
  export SPIN_VARIABLE_DATABASE_URL="$url"
  export SPIN_VARIABLE_DB_HOST="$(echo "$url" | sed -E 's#^postgres://([^@]*@)?([^/]+)/.*#\2#')"
fi
"$host" migrate --database-url "$SPIN_VARIABLE_DATABASE_URL"
if [ -z "${SPIN_VARIABLE_SUPABASE_JWT_SECRET:-}" ]; then
  mkdir -p .local
  [ -f .local/dev-jwt-secret ] || python3 -c 'import secrets; print(secrets.token_hex(32))' > .local/dev-jwt-secret
  export SPIN_VARIABLE_SUPABASE_JWT_SECRET="$(cat .local/dev-jwt-secret)"
  echo "serve.sh: development JWT secret in .local/dev-jwt-secret" >&2
fi
if command -v spin >/dev/null 2>&1; then
  exec spin up --listen "127.0.0.1:$port"
else
  exec "$host" serve --manifest spin.toml --listen "127.0.0.1:$port"
fi
