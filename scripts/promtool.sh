#!/usr/bin/env bash
# Prints the path of a promtool (tests/test_deploy.py checks the alert rules with it).
# One on PATH wins; else Debian's `prometheus` package is downloaded once and only its
# promtool is unpacked into .cache/prometheus/ (nothing installed, no daemon started: the
# package's own install would start a Prometheus server). Needs apt-get (Debian) and root
# only the first time, for the package lists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/prometheus"
CACHED="$CACHE/promtool"

say() { printf 'promtool: %s\n' "$*" >&2; }

if command -v promtool >/dev/null; then command -v promtool; exit 0; fi
if [ -x "$CACHED" ]; then echo "$CACHED"; exit 0; fi
command -v apt-get >/dev/null || { say "not found, and no apt-get to fetch Debian's prometheus package"; exit 1; }

mkdir -p "$CACHE"
cd "$CACHE"
rm -f prometheus_*.deb
if ! apt-get download -qq prometheus >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { say "apt-get download prometheus failed; run 'apt-get update' as root, or install promtool"; exit 1; }
  say "updating the package lists to fetch Debian's prometheus package"
  apt-get update -qq >/dev/null
  apt-get download -qq prometheus >/dev/null || { say "apt-get download prometheus failed"; exit 1; }
fi
rm -rf unpacked
dpkg-deb -x prometheus_*.deb unpacked
rm -f prometheus_*.deb
[ -x unpacked/usr/bin/promtool ] || { say "the prometheus package held no usr/bin/promtool"; exit 1; }
mv unpacked/usr/bin/promtool "$CACHED"
rm -rf unpacked
say "unpacked $("$CACHED" --version 2>&1 | head -1)"
echo "$CACHED"
