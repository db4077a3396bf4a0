#!/usr/bin/env bash
# Idempotent: installs Debian's Chromium and ChromeDriver for the management
# UI's browser test (tests/control_plane/ui_browser.rs), when missing.
# Called by scripts/test.sh; safe to run again (a second run only checks).
#
#   scripts/test-browser.sh          install what is missing
#   scripts/test-browser.sh status   exit non-zero when either is missing
set -euo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if [ "${1:-up}" = status ]; then
  if have; then
    echo "chromium: $(chromium --version 2>/dev/null); chromedriver: $(chromedriver --version 2>/dev/null)"
    exit 0
  fi
  echo "chromium or chromedriver missing; run scripts/test-browser.sh" >&2
  exit 1
fi

have && exit 0

log() { echo "test-browser: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "must run as root to install chromium and chromium-driver"; exit 1; }
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
# Refresh the package lists only when they do not know the packages.
if ! apt-cache show --no-all-versions chromium chromium-driver >/dev/null 2>&1; then
  log "package lists do not know chromium; running apt-get update"
  apt-get update -q >&2
fi
log "installing chromium chromium-driver"
if ! apt-get install -y -q --no-install-recommends chromium chromium-driver >&2; then
  log "install failed (stale package lists?); running apt-get update and retrying"
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends chromium chromium-driver >&2
fi
have || { log "chromium and chromedriver are still not on PATH after installing"; exit 1; }
log "$(chromium --version 2>/dev/null)"
