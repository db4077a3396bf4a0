#!/usr/bin/env bash
# The project's test command (see README): brings up the test environment
# (dockerd with a TLS port, podman, an authenticated registry, test images,
# the daemon matrix; see scripts/test-env.sh; Chromium for the UI test,
# scripts/test-browser.sh; promtool for the alerting rules,
# scripts/test-promtool.sh), runs the whole suite, and
# writes the README's daemon matrix table from the results
# (scripts/matrix-table.py). Its exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/test-env.sh up
# Debian's Chromium and ChromeDriver for the management UI's browser test.
scripts/test-browser.sh
# Debian's prometheus package for promtool (tests/dashboards.rs).
scripts/test-promtool.sh
# Paths and addresses only (OZ_TEST_*); the registry password stays in its file.
# shellcheck disable=SC1091
. "${OZ_TEST_ROOT:-/var/lib/oz-worker-test}/env"
# The metrics tests check our exposition with the Prometheus client's own
# parsers and OTLP pushes with the OpenTelemetry protobuf definitions, from
# PyPI, in a venv of their own (idempotent).
venv=${OZ_TEST_ROOT:-/var/lib/oz-worker-test}/otlp-venv
if ! "$venv/bin/python" -c 'import prometheus_client, opentelemetry.proto' 2>/dev/null; then
  python3 -c 'import venv, ensurepip' 2>/dev/null ||
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv; }
  python3 -m venv "$venv" && "$venv/bin/pip" install -q opentelemetry-proto prometheus-client
fi
export OZ_TEST_TELEMETRY_PYTHON=$venv/bin/python
mkdir -p target
log=target/test-run.log
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
python3 scripts/matrix-table.py "$log" README.md ||
  echo "[test] could not write the daemon matrix table (see above)" >&2
echo "[test] scripts/test.sh took $((SECONDS - started))s (exit status $status)" >&2
exit "$status"
