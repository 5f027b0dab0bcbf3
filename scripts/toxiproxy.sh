#!/usr/bin/env bash
# Toxiproxy, Shopify's TCP fault proxy, for the network-fault tests (docs/proof.md).
#   scripts/toxiproxy.sh install | up | down | status | url
# `install` builds it once from its Go module into .cache/toxiproxy/<version>/ (the Go
# caches live there too, so nothing lands outside the project). `up` installs if needed,
# starts the server on 127.0.0.1 (TOXIPROXY_PORT, or a free port), prints its API URL and
# stores it in .run/toxiproxy/url; pidfile and log live beside it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The newest version the Go module proxy served here (`go list -m -versions`).
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
TOXIPROXY_START_TIMEOUT="${TOXIPROXY_START_TIMEOUT:-20}"
CACHE="$ROOT/.cache/toxiproxy"
BIN="$CACHE/$TOXIPROXY_VERSION/bin/toxiproxy-server"
RUN="${TOXIPROXY_RUN_DIR:-$ROOT/.run/toxiproxy}"
PIDFILE="$RUN/toxiproxy.pid"
LOG="$RUN/toxiproxy.log"

say() { printf 'toxiproxy: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

cmd_install() {
  if [ -x "$BIN" ]; then return 0; fi
  command -v go >/dev/null || die "go not found; Toxiproxy is built from its Go module: install Go 1.17+ (Debian: apt-get install -y golang-go) and retry"
  say "building github.com/Shopify/toxiproxy/v2 $TOXIPROXY_VERSION into $CACHE/$TOXIPROXY_VERSION (once)"
  local gobin="$CACHE/$TOXIPROXY_VERSION/bin.tmp"
  rm -rf "$gobin" && mkdir -p "$CACHE"
  # GOTOOLCHAIN=local: the module asks for Go 1.17, so this Go builds it; never fetch another.
  # -modcacherw: the module cache stays deletable with rm -rf, like the rest of .cache/.
  if ! GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" \
      GOBIN="$gobin" GOTOOLCHAIN=local GOFLAGS=-modcacherw \
      go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >"$CACHE/install.log" 2>&1; then
    tail -20 "$CACHE/install.log" >&2 || true
    die "go install of Toxiproxy $TOXIPROXY_VERSION failed (log: $CACHE/install.log). Check access to the Go module proxy and retry."
  fi
  mkdir -p "$(dirname "$BIN")"
  mv "$gobin/server" "$BIN"
  rm -rf "$gobin" "$CACHE/go/build"  # the build cache (~140 MB) is not needed to run it
  say "installed $BIN"
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

url() { echo "http://127.0.0.1:$(cat "$RUN/port")"; }

answers() { python3 - "$(url)/version" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except OSError:
    sys.exit(1)
PY
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

cmd_up() {
  cmd_install
  if is_running && answers; then url; return 0; fi
  if is_running; then say "a toxiproxy process exists but does not answer; restarting it"; cmd_down; fi
  rm -rf "$RUN" && mkdir -p "$RUN"
  echo "${TOXIPROXY_PORT:-$(free_port)}" > "$RUN/port"
  nohup setsid "$BIN" -host 127.0.0.1 -port "$(cat "$RUN/port")" >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  local started=$SECONDS
  until answers; do
    if ! is_running; then
      tail -20 "$LOG" >&2 || true
      die "toxiproxy exited during start-up (log above: $LOG); if the port was taken, set TOXIPROXY_PORT to a free one"
    fi
    if (( SECONDS - started > TOXIPROXY_START_TIMEOUT )); then
      cmd_down
      die "toxiproxy did not answer within ${TOXIPROXY_START_TIMEOUT}s (raise TOXIPROXY_START_TIMEOUT on a slow machine)"
    fi
    sleep 0.2
  done
  url > "$RUN/url"
  say "ready: $(url) (pid $(cat "$PIDFILE"), log $LOG)"
  url
}

cmd_down() {
  if is_running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    say "stopped (pid $pid)"
  fi
  rm -rf "$RUN"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) if is_running && answers; then url; else say "not running"; exit 1; fi ;;
  url) [ -f "$RUN/url" ] && cat "$RUN/url" || die "not running: run 'make toxiproxy-up'" ;;
  *) echo "usage: $0 install|up|down|status|url" >&2; exit 2 ;;
esac
