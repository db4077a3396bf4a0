#!/usr/bin/env bash
# Idempotent: installs Debian's `prometheus` package for its `promtool`, which
# tests/deploy/dashboards.rs runs (`promtool check rules`, `promtool test rules`)
# over contrib/prometheus/. Called by scripts/test.sh; a second run only
# checks. The package's own Prometheus server is kept from starting.
#
#   scripts/test-promtool.sh          install when promtool is missing
#   scripts/test-promtool.sh status   exit non-zero when promtool is missing
set -euo pipefail

have() { command -v promtool >/dev/null 2>&1; }

if [ "${1:-up}" = status ]; then
  if have; then
    promtool --version 2>&1 | head -1
    exit 0
  fi
  echo "promtool missing; run scripts/test-promtool.sh" >&2
  exit 1
fi

have && exit 0

log() { echo "test-promtool: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "must run as root to install the prometheus package (for promtool)"; exit 1; }
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
# The package's maintainer scripts would start a Prometheus server: refuse
# service starts while installing (policy-rc.d exit 101), as test-env.sh does.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# Refresh the package lists only when they do not know the package.
if ! apt-cache show --no-all-versions prometheus >/dev/null 2>&1; then
  log "package lists do not know prometheus; running apt-get update"
  apt-get update -q >&2
fi
log "installing prometheus (for promtool)"
if ! apt-get install -y -q --no-install-recommends prometheus >&2; then
  log "install failed (stale package lists?); running apt-get update and retrying"
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends prometheus >&2
fi
have || { log "promtool is still not on PATH after installing prometheus"; exit 1; }
log "$(promtool --version 2>&1 | head -1)"
