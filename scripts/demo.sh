#!/usr/bin/env bash
# `make demo`: start the local broker if needed, run scripts/demo.py, stop what we started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started_kafka=0
cleanup() { local rc=$?; if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down || true; fi; exit $rc; }
trap cleanup EXIT
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  if ! bash scripts/kafka.sh status 2>/dev/null; then started_kafka=1; fi
  bash scripts/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
.venv/bin/python scripts/demo.py
