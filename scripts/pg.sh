#!/usr/bin/env bash
# A throwaway Postgres for development and tests, under .local/pg (git-ignored).
#   scripts/pg.sh start   start it (creating it the first time) and print its URL
#   scripts/pg.sh stop    stop it
#   scripts/pg.sh remove  stop it and delete its data
#   scripts/pg.sh url     print its URL
# Postgres refuses to run as root, so as root the cluster runs as the `postgres` user
# (created with Debian's postgresql package, installed here when missing). That user
# may not be able to enter the clone (root's home is 0700), so as root the data
# directory lives under /var/tmp/libero-pg/, one per clone; .local/pg keeps its URL.
# The `postgres` role has a random password (`password` beside the data, and in the URL):
# TCP logins need it (scram-sha-256), so the tests' check that no response or log line
# carries the database password has one to look for. The local socket stays `trust`.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.local/pg"
if [ "$(id -u)" -eq 0 ]; then
  state="/var/tmp/libero-pg/$(printf '%s' "$root" | sha256sum | cut -c1-16)"
else
  state="$dir"
fi
data="$state/data"
# The URL lives beside the data (a clone deleted and made again at the same path finds
# its still-running cluster) and is copied to .local/pg/url, where the tests look.
url_file="$state/url"
password_file="$state/password"
publish_url() {
  mkdir -p "$dir"
  # Copied by rename: a concurrent reader never sees a half-written file.
  [ "$url_file" = "$dir/url" ] || { cp "$url_file" "$dir/url.$$" && mv -f "$dir/url.$$" "$dir/url"; }
  cat "$url_file"
}

find_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_postgres() {
  echo "pg.sh: Postgres binaries not found; installing Debian's postgresql" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "pg.sh: run as root once, or install postgresql" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

password() {
  if [ ! -s "$password_file" ]; then
    mkdir -p "$state"
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' > "$password_file")
  fi
  cat "$password_file"
}

# Sets the role's password over the socket (on stdin: in no process list) and writes the
# URL with it. A cluster made before passwords keeps `trust` on TCP, which accepts it.
set_password_and_url() {
  local port="$1" pw
  pw="$(password)"
  printf "ALTER ROLE postgres PASSWORD '%s';\n" "$pw" |
    (cd / && as_owner "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$data" -p "$port" -U postgres -d postgres) >/dev/null
  echo "postgres://postgres:$pw@127.0.0.1:$port/postgres" > "$url_file.$$" && mv -f "$url_file.$$" "$url_file"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  bindir="$(find_bindir)"
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then install_postgres; bindir="$(find_bindir)"; fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$dir"
  # Already running (this clone, or an earlier clone at the same path): its port is
  # line 4 of postmaster.pid.
  if [ -f "$data/postmaster.pid" ]; then
    running_port="$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)"
    if [ -n "$running_port" ] && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$running_port" 2>/dev/null; then
      set_password_and_url "$running_port"
      publish_url; return
    fi
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"; mkdir -p "$data"
    if [ "$(id -u)" -eq 0 ]; then chmod 755 /var/tmp/libero-pg "$(dirname "$data")"; chown postgres "$data"; fi
    as_owner "$bindir/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C >/dev/null
  fi
  port="$(free_port)"
  [ "$(id -u)" -eq 0 ] && chown -R postgres "$data"
  # A throwaway cluster: durability traded for speed; many test databases at once.
  as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=1000 \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB" >/dev/null
  set_password_and_url "$port"
  publish_url
}

stop() {
  bindir="$(find_bindir)"
  [ -f "$data/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null || true
  rm -f "$url_file" "$dir/url"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  remove) stop; rm -rf "$data" "$url_file" "$password_file"; rmdir "$state" 2>/dev/null || true ;;
  url) if [ -f "$url_file" ]; then publish_url; else echo "pg.sh: not started (scripts/pg.sh start)" >&2; exit 1; fi ;;
  *) echo "usage: $0 start|stop|remove|url" >&2; exit 2 ;;
esac
