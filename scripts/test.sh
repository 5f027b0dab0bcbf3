#!/usr/bin/env bash
# The README's test command: start what the tests need, run lint, types and every test,
# then stop what this script started (services that were already up stay up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin

started_kafka=0
started_pg=0
started_toxiproxy=0
cleanup() {
  local rc=$?
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down || true; fi
  if [ "$started_pg" = 1 ]; then bash scripts/pg.sh down || true; fi
  if [ "$started_toxiproxy" = 1 ]; then bash scripts/toxiproxy.sh down || true; fi
  exit $rc
}
trap cleanup EXIT

echo "== lint"
$BIN/ruff check .
$BIN/ruff format --check .
echo "== type check (mypy --strict)"
$BIN/mypy

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  if ! bash scripts/kafka.sh status 2>/dev/null; then started_kafka=1; fi
  bash scripts/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if ! bash scripts/pg.sh status >/dev/null 2>&1; then started_pg=1; fi
  TEST_DATABASE_URL="$(DATABASE_URL= bash scripts/pg.sh up)"
  export TEST_DATABASE_URL
fi

# The network-fault tests' proxy, built once from its Go module. Without Go it cannot be had:
# those tests then skip, naming the reason (in CI they fail: tests/conftest.py _unavailable).
if [ -z "${TOXIPROXY_URL:-}" ]; then
  if ! bash scripts/toxiproxy.sh status >/dev/null 2>&1; then started_toxiproxy=1; fi
  if TOXIPROXY_URL="$(bash scripts/toxiproxy.sh up)"; then export TOXIPROXY_URL; fi
fi

# promtool runs the alert rules' unit tests (tests/test_deploy.py); fetched once when missing.
if [ -z "${PROMTOOL:-}" ] && PROMTOOL="$(bash scripts/promtool.sh)"; then export PROMTOOL; fi

echo "== tests"
$BIN/pytest "$@"
