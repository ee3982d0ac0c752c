#!/usr/bin/env bash
# The contract, tested from outside: Schemathesis (pinned in
# tests/schemathesis/requirements.txt) generates requests from openapi.yaml, valid and
# invalid, and checks every answer against the document with all its checks (status,
# content type, headers, body schema, each server-sent event, invalid input refused, valid
# input accepted, unsupported methods, auth).
#
# Three deployments, each on a fresh migrated database (scripts/pg.sh's cluster, or the one
# DATABASE_URL names) with a signed-in user's token:
#   down          Stripe, OpenAI and ElevenLabs configured, all on a closed loopback port
#                 (127.0.0.1:9): every upstream call fails at once, nothing leaves the
#                 machine, and the answers are the documented 502/503s and fallbacks;
#                 served by real `spin up` (scripts/find-spin.sh).
#   up            every upstream answers (tests/schemathesis/fake_upstreams.py plays OpenAI,
#                 ElevenLabs and Stripe: streamed chat, scripts, speech, transcriptions, a
#                 catalog made by `libero stripe sync`, Checkout and portal sessions), so
#                 the success answers users get most are held to the document too;
#                 served by real `spin up`.
#   unconfigured  no OpenAI or ElevenLabs key (the local fallbacks, the fixed chat reply
#                 streamed as events, the "no provider" 503s); served by the bundled host.
# Without Spin all use the bundled host, saying so; with CI set a missing Spin fails.
# Each gets a run with a fixed seed and one with a
# random seed (printed; CONTRACT_SEED=<n> replays it), CONTRACT_SECONDS (default 180)
# shared out between the six; CONTRACT_ST_ARGS adds Schemathesis options (for instance
# `--include-path /chatgpt-chat` to look at one endpoint), CONTRACT_ONLY=up runs just the
# deployments it names. Any failure not accepted in tests/schemathesis/baseline.yaml
# (each entry with its reason; applied by tests/schemathesis/hooks.py) fails the script.
#
# Builds only the operator CLI (migrations) and, if missing, the bundled host: run
# scripts/build-wasm.sh first (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
here=tests/schemathesis
seconds="${CONTRACT_SECONDS:-180}"
fixed_seed=18
random_seed="${CONTRACT_SEED:-$(python3 -c 'import secrets; print(secrets.randbelow(2**31))')}"

for wasm in $(sed -n 's/^source = "\(.*\)"$/\1/p' spin.toml); do
  [ -f "$wasm" ] || { echo "contract.sh: $wasm is missing: run scripts/build-wasm.sh first" >&2; exit 1; }
done

# The tester, in a venv of its own, made again when the pins change.
venv=.local/schemathesis
stamp="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$stamp" > "$venv/.pins"
fi

work="$(mktemp -d)"
app_pid=""
databases=()
admin_url="${DATABASE_URL:-$(scripts/pg.sh start)}"
stop_app() {
  if [ -n "$app_pid" ]; then
    kill "$app_pid" 2>/dev/null || true
    wait "$app_pid" 2>/dev/null || true
    app_pid=""
  fi
}
fake_pid=""
cleanup() {
  stop_app
  if [ -n "$fake_pid" ]; then kill "$fake_pid" 2>/dev/null || true; fi
  for db in "${databases[@]}"; do
    psql -q "$admin_url" -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
random_hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }

# The answering upstreams of the `up` deployment, on a free loopback port.
"$venv/bin/python" "$here/fake_upstreams.py" "$work/fake.port" &
fake_pid=$!
for _ in $(seq 1 100); do [ -s "$work/fake.port" ] && break; sleep 0.1; done
[ -s "$work/fake.port" ] || { echo "contract.sh: the fake upstreams did not start" >&2; exit 1; }
fake="http://127.0.0.1:$(cat "$work/fake.port")"

# One migrated database; each deployment gets a copy.
template="contract_tpl_$$_$(random_hex 4)"
databases+=("$template")
psql -q "$admin_url" -c "create database $template" >/dev/null
cargo run --quiet -p libero-cli --bin libero -- migrate --database-url "${admin_url%/*}/$template" >/dev/null

jwt_secret="$(random_hex 32)"
user_id="$(python3 -c 'import uuid; print(uuid.uuid4())')"
# sign CLAIMS_JSON: an HS256 token with the secret, valid for an hour from now.
sign() {
  python3 - "$jwt_secret" "$1" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret, claims = sys.argv[1], json.loads(sys.argv[2])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
claims.update(iat=int(time.time()), exp=int(time.time()) + 3600)
signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
print(signing_input + "." + b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()))
EOF
}
# The signed-in user's token for every operation; the service role's for the operator's
# endpoints (tests/schemathesis/schemathesis.toml).
CONTRACT_USER_TOKEN="$(sign "{\"sub\": \"$user_id\", \"aud\": \"authenticated\", \"role\": \"authenticated\", \"email\": \"contract@test.local\"}")"
CONTRACT_SERVICE_TOKEN="$(sign '{"iss": "supabase", "role": "service_role"}')"
export CONTRACT_USER_TOKEN CONTRACT_SERVICE_TOKEN

spin="$(scripts/find-spin.sh || true)"
if [ -z "$spin" ] && [ -n "${CI:-}" ]; then
  echo "contract.sh: real Spin not found (SPIN, PATH, ../shared/bin/spin), and CI is set: the down and up deployments must be served by Spin" >&2
  exit 1
fi
if [ -z "$spin" ]; then
  echo "contract.sh: real Spin not found: the down deployment is served by the bundled host instead" >&2
fi
host_bin=""
find_host() {
  # The test suite's build of the bundled host when there is one (compiled components
  # are cached in target/libero-host-cache), else the benchmark's optimized build.
  for candidate in target/bench-host/libero-host target/debug/libero-host; do
    if [ -x "$candidate" ]; then host_bin="$candidate"; return; fi
  done
  cargo build --quiet --profile bench-host -p libero-host --bin libero-host
  host_bin=target/bench-host/libero-host
}

# One request to each component before the clock starts: the bundled host compiles a
# component on its first request (Spin compiles them all before it serves).
warm_up() {
  python3 - "$port" $(sed -n 's/^route = "\(\/[a-z-]*\)\(\/\.\.\.\)\{0,1\}"$/\1/p' spin.toml | grep -v '^/functions' | sort -u) <<'EOF'
import sys, urllib.request
port, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="OPTIONS")
    try:
        urllib.request.urlopen(request, timeout=300).close()
    except Exception as error:
        print(f"contract.sh: warming up {path}: {error}", file=sys.stderr)
EOF
}

# start_app NAME RUNTIME: a fresh database with the user, the deployment's variables, and
# the app on a free port ($port).
start_app() {
  local name="$1" runtime="$2" db="contract_${1}_$$_$(random_hex 4)"
  stripe_key="sk_test_contract_$(random_hex 8)"
  databases+=("$db")
  psql -q "$admin_url" -c "create database $db template $template" >/dev/null
  local db_url="${admin_url%/*}/$db"
  # The user: with tokens, as a purchase gives them, so paid calls get past the price;
  # a former subscriber, so the portal goes as far as Stripe.
  psql -q "$db_url" -v ON_ERROR_STOP=1 >/dev/null <<SQL
insert into auth.users (id, email) values ('$user_id', 'contract@test.local');
insert into public.stripe_customers (user_id, customer_id) values ('$user_id', 'cus_contract');
insert into public.stripe_subscriptions (subscription_id, customer_id, user_id, status, stripe_updated_at)
values ('sub_contract', 'cus_contract', '$user_id', 'canceled', now());
with p as (update public.user_profiles set tokens = tokens + 1000000 where id = '$user_id' returning tokens)
insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
select '$user_id', 1000000, 'purchase', 'contract-grant', p.tokens from p;
SQL
  if [ "$name" = up ]; then
    # The catalog as an operator makes it: products, prices and the portal at the fake
    # Stripe, their ids stored where checkout reads them.
    STRIPE_SECRET_KEY="$stripe_key" cargo run --quiet -p libero-cli --bin libero -- \
      stripe sync --database-url "$db_url" --api-base "$fake" >"$work/sync.log" 2>&1 ||
      { cat "$work/sync.log" >&2; echo "contract.sh: libero stripe sync failed" >&2; exit 1; }
  fi
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  (
    while IFS= read -r var; do unset "$var"; done < <(env | grep -o '^SPIN_VARIABLE_[A-Z0-9_]*' || true)
    upstream=http://127.0.0.1:9  # closed: every call fails at once
    if [ "$name" = up ]; then upstream="$fake"; fi
    export SPIN_VARIABLE_DATABASE_URL="$db_url"
    export SPIN_VARIABLE_DB_HOST="$(echo "$admin_url" | sed -E 's#^postgres://([^@]*@)?([^/]+)/.*#\2#')"
    export SPIN_VARIABLE_SUPABASE_JWT_SECRET="$jwt_secret"
    export SPIN_VARIABLE_STRIPE_SECRET_KEY="$stripe_key"
    export SPIN_VARIABLE_STRIPE_WEBHOOK_SECRETS="whsec_$(random_hex 16)"
    export SPIN_VARIABLE_STRIPE_API_BASE="$upstream"
    if [ "$name" != up ]; then
      # Two products with a price, two without (what a product not for sale answers).
      # `up` sells what `libero stripe sync` stored instead.
      export SPIN_VARIABLE_STRIPE_PRICE_MYSTIC_SUBSCRIPTION=price_contract_mystic
      export SPIN_VARIABLE_STRIPE_PRICE_TOKENS_SMALL=price_contract_small
    fi
    export SPIN_VARIABLE_OPENAI_BASE_URL="$upstream"
    # Reminders on: a VAPID key pair (any 32 bytes below the curve order) and a subject.
    export SPIN_VARIABLE_VAPID_PRIVATE_KEY="$(python3 -c 'import base64; print(base64.urlsafe_b64encode(bytes([7] * 32)).decode().rstrip("="))')"
    export SPIN_VARIABLE_VAPID_SUBJECT="mailto:contract@test.local"
    export SPIN_VARIABLE_ELEVENLABS_BASE_URL="$upstream"
    # One attempt: a refused connection is final, no backoff between retries.
    export SPIN_VARIABLE_OPENAI_MAX_ATTEMPTS=1 SPIN_VARIABLE_ELEVENLABS_MAX_ATTEMPTS=1
    # Enough AI quota for the generated requests to reach the upstream calls (the 429s
    # have their own end-to-end tests).
    export SPIN_VARIABLE_AI_QUOTA_FREE_PER_HOUR=1000000
    if [ "$name" != unconfigured ]; then
      export SPIN_VARIABLE_OPENAI_API_KEY="sk-contract-$(random_hex 8)"
      export SPIN_VARIABLE_ELEVENLABS_API_KEY="contract-$(random_hex 8)"
    fi
    if [ "$runtime" = spin ]; then
      exec "$spin" up --from spin.toml --listen "127.0.0.1:$port" --state-dir "$work/spin-$name"
    else
      exec "$host_bin" serve --manifest spin.toml --listen "127.0.0.1:$port"
    fi
  ) >"$work/$name.log" 2>&1 &
  app_pid=$!
  for _ in $(seq 1 1800); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      warm_up
      return
    fi
    if ! kill -0 "$app_pid" 2>/dev/null; then
      cat "$work/$name.log" >&2
      echo "contract.sh: the app ($name) exited before serving" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "contract.sh: the app ($name) did not serve within 180 s" >&2
  exit 1
}

# st_run NAME SEED SECONDS [EXTRA SCHEMATHESIS OPTIONS]
st_run() {
  CONTRACT_BASELINE_LOG="$work/baseline.log" SCHEMATHESIS_HOOKS="$here/hooks.py" \
    "$venv/bin/st" --config-file "$here/schemathesis.toml" run openapi.yaml \
    --url "http://127.0.0.1:$port" \
    --checks all \
    --seed "$2" --max-time "$3" \
    --generation-database none \
    --report ndjson --report-ndjson-path "$work/$1-$2.ndjson" \
    --no-color ${CONTRACT_ST_ARGS:-} ${4:-}
}

failed=()
deployments=(${CONTRACT_ONLY:-down up unconfigured})
runs=$(( ${#deployments[@]} * 2 ))
share=$(( (seconds + runs - 1) / runs ))
for deployment in "${deployments[@]}"; do
  runtime=host
  if [ -n "$spin" ] && [ "$deployment" != unconfigured ]; then runtime=spin; fi
  if [ "$runtime" = host ]; then
    [ -n "$host_bin" ] || find_host
    label="the bundled host ($host_bin)"
  else
    label="$("$spin" --version | head -n 1 | cut -d" " -f1,2)"
  fi
  start_app "$deployment" "$runtime"
  for seed in "$fixed_seed" "$random_seed"; do
    echo "contract.sh: $deployment, served by $label; seed $seed; ${share}s"
    # Where Stripe answers, a generated DELETE /account would erase the contract's user
    # halfway and leave every later request a 404: that path has its own end-to-end tests
    # (tests/tests/account.rs); the other deployments still test its refusals.
    skip=""
    if [ "$deployment" = up ]; then skip="--exclude-path /account"; fi
    st_run "$deployment" "$seed" "$share" "$skip" || failed+=("$deployment, seed $seed")
  done
  stop_app
done

if [ "${#failed[@]}" -eq 0 ]; then
  echo "contract.sh: no failures beyond the accepted exceptions (seeds $fixed_seed and $random_seed)"
  "$venv/bin/python" "$here/summary.py" passed "$work/baseline.log" "$work"/*.ndjson
else
  "$venv/bin/python" "$here/summary.py" failed "$work/baseline.log" "$work"/*.ndjson
  for deployment in "${deployments[@]}"; do
    echo "contract.sh: the app's log ($deployment), last lines:" >&2
    tail -n 10 "$work/$deployment.log" >&2
  done
  printf 'contract.sh: FAILED (%s): the answers above break openapi.yaml; fix the code or the document\n' "$(IFS=';'; echo "${failed[*]}")" >&2
  echo "  (or, only if a JSON Schema cannot say it, accept it in $here/baseline.yaml with the reason)" >&2
  exit 1
fi
