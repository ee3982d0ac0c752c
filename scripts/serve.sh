#!/usr/bin/env bash
# Serves the app on http://127.0.0.1:${PORT:-3000}: real `spin up` when Spin is found
# (SPIN, PATH, then ../shared/bin/spin), the bundled host (`host/`, `libero-host`)
# otherwise. Starts a local Postgres unless SPIN_VARIABLE_DATABASE_URL is set, and applies
# the migrations with the operator CLI (`cli/`, `libero migrate`).
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-3000}"
scripts/build-wasm.sh
# The CLI has no wasmtime in it: it builds in about a minute.
cargo build --quiet --release -p libero-cli --bin libero
if [ -z "${SPIN_VARIABLE_DATABASE_URL:-}" ]; then
  url="$(scripts/pg.sh start)"
  export SPIN_VARIABLE_DATABASE_URL="$url"
  export SPIN_VARIABLE_DB_HOST="$(echo "$url" | sed -E 's#^postgres://([^@]*@)?([^/]+)/.*#\2#')"
fi
target/release/libero migrate --database-url "$SPIN_VARIABLE_DATABASE_URL"
if [ -z "${SPIN_VARIABLE_SUPABASE_JWT_SECRET:-}" ]; then
  mkdir -p .local
  [ -f .local/dev-jwt-secret ] || python3 -c 'import secrets; print(secrets.token_hex(32))' > .local/dev-jwt-secret
  export SPIN_VARIABLE_SUPABASE_JWT_SECRET="$(cat .local/dev-jwt-secret)"
  echo "serve.sh: development JWT secret in .local/dev-jwt-secret" >&2
fi
if spin="$(scripts/find-spin.sh)"; then
  echo "serve.sh: serving with $("$spin" --version | head -n 1 | cut -d" " -f1,2) ($spin)" >&2
  # Every setting in a runtime config (written afresh from SPIN_VARIABLE_* on each start):
  # Spin then answers reads from memory, not from its environment provider
  # (docs/deploy.md, "Settings from a runtime config").
  mkdir -p .local
  target/release/libero runtime-config --out .local/runtime-config.toml
  exec "$spin" up --listen "127.0.0.1:$port" --runtime-config-file .local/runtime-config.toml
fi
# No Spin: the bundled host, optimized like release but without the release profile's
# fat LTO (tuned for small .wasm), which would take minutes over wasmtime.
echo "serve.sh: Spin not found (SPIN, PATH, ../shared/bin/spin): serving with the bundled host" >&2
cargo build --quiet --profile bench-host -p libero-host --bin libero-host
exec target/bench-host/libero-host serve --manifest spin.toml --listen "127.0.0.1:$port"
