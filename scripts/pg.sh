#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for development, tests and CI.
#   scripts/pg.sh up | down | stop | start | url | status
# `up` prints the DATABASE_URL and stores it in .run/pg/url. If DATABASE_URL is
# already set, it is used as is and nothing is started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${PG_RUN_DIR:-$ROOT/.run/pg}"
DATA="$RUN/data"
DB_NAME="${PG_DB_NAME:-loyalty}"

say() { printf 'postgres: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

ensure_installed() {
  if pg_bindir >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] || die "PostgreSQL server binaries not found. Install Debian's package (sudo apt-get install -y postgresql) and retry."
  say "PostgreSQL server not found; installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) \
    || die "apt-get install postgresql failed; install it by hand and retry"
  pg_bindir >/dev/null || die "postgresql installed but initdb/pg_ctl not found under /usr/lib/postgresql/*/bin"
}

# initdb and postgres refuse to run as root: run them as the 'postgres' user then.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

is_running() { [ -f "$DATA/postmaster.pid" ] && as_owner "$(pg_bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

url() { echo "postgresql://postgres@127.0.0.1:$(cat "$RUN/port")/$DB_NAME"; }

start_server() {
  local bin; bin="$(pg_bindir)"
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$RUN/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $(cat "$RUN/port") -c unix_socket_directories=$RUN -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { tail -20 "$RUN/postgres.log" >&2; die "PostgreSQL did not start (log above: $RUN/postgres.log)"; }
}

cmd_up() {
  if [ -n "${DATABASE_URL:-}" ]; then echo "$DATABASE_URL"; return 0; fi
  ensure_installed
  local bin; bin="$(pg_bindir)"
  if [ -f "$RUN/port" ] && is_running; then url; return 0; fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    rm -rf "$RUN" && mkdir -p "$RUN"
    free_port > "$RUN/port"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$RUN"
    as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-locale >"$RUN/initdb.log" 2>&1 \
      || { cat "$RUN/initdb.log" >&2; die "initdb failed (see above)"; }
  fi
  start_server
  as_owner "$bin/psql" -h 127.0.0.1 -p "$(cat "$RUN/port")" -U postgres -d postgres -qAtc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1 \
    || as_owner "$bin/createdb" -h 127.0.0.1 -p "$(cat "$RUN/port")" -U postgres "$DB_NAME"
  url > "$RUN/url"
  say "ready: $(url)"
  url
}

cmd_stop() { if [ -f "$RUN/port" ] && is_running; then as_owner "$(pg_bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; say "stopped"; fi; }
cmd_start() { [ -f "$RUN/port" ] || die "no cluster yet: run 'make pg-up' first"; is_running || start_server; say "started"; }
cmd_down() { if pg_bindir >/dev/null; then cmd_stop; fi; rm -rf "$RUN"; }

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  stop) cmd_stop ;;
  start) cmd_start ;;
  url) [ -f "$RUN/url" ] && cat "$RUN/url" || die "not running: run 'make pg-up'" ;;
  status) if [ -f "$RUN/port" ] && is_running; then url; else say "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|down|stop|start|url|status" >&2; exit 2 ;;
esac
