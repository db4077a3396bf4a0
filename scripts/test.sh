#!/usr/bin/env bash
# The project's test command (see README): brings up the test environment,
# then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
