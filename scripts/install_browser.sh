#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/browser.py drives it with Playwright; we never run
# `playwright install`, so no browser is downloaded from anywhere but the Debian archive).
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (or sudo) and apt.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi

fail() { echo "install_browser.sh: $*" >&2; exit 1; }
command -v apt-get >/dev/null || fail "apt-get not found: install chromium with your system's package manager (tests expect $CHROMIUM)"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  fail "must run as root (or with sudo available) to install chromium with apt"
fi

log=$(mktemp -t install-browser.XXXXXX.log)
echo "installing Debian chromium with apt (about 40 s; log: $log)"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "apt-get update failed (see above)"; }
"${as_root[@]}" apt-get install -y -qq chromium >>"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "apt-get install chromium failed (see above)"; }
[ -x "$CHROMIUM" ] || fail "apt installed chromium but $CHROMIUM is missing"
version=$("$CHROMIUM" --version 2>/dev/null) || fail "$CHROMIUM was installed but does not run (see $log)"
echo "installed: $version"
