#!/usr/bin/env bash
# The project's test command (see README): brings up the test environment
# (dockerd with a TLS port, podman, an authenticated registry, test images;
# see scripts/test-env.sh), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh up
# Paths and addresses only (OZ_TEST_*); the registry password stays in its file.
# shellcheck disable=SC1091
. "${OZ_TEST_ROOT:-/var/lib/oz-worker-test}/env"
cargo test --workspace --no-fail-fast
