#!/usr/bin/env bash
# Regenerates link/idle-symbols.txt: the functions an idle worker runs, which
# build.rs hands to LLD as --symbol-ordering-file so that they share a few
# 64 KiB code blocks (BENCHMARKS.md, "Idle RSS"). Run it after dependency
# updates (the file names symbols with their hashes; names that no longer
# exist are ignored, so a stale file only loses the saving). Its first line
# is a stamp of what the names depend on (scripts/idle-symbol-stamp.sh):
# build.rs warns when Cargo.lock or rustc no longer match it.
#
#   cargo build --release && scripts/idle-symbol-order.sh [BINARY]
#
# The worker (BINARY, default target/release/oz-agent-worker) runs under
# callgrind against a `serve` of the same binary on a free loopback port and
# the Docker daemon at DOCKER_HOST (default unix:///var/run/docker.sock),
# from start until 5 s after it connected; every function callgrind saw that
# the executable defines is kept, in the order first seen.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/release/oz-agent-worker}")
out=$root/link/idle-symbols.txt
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends valgrind
fi
work=$(mktemp -d)
cleanup() {
    [ -n "${worker:-}" ] && kill "$worker" 2>/dev/null || true
    [ -n "${serve:-}" ] && kill "$serve" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export XDG_DATA_HOME=$work/data
"$bin" serve --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
serve=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done
key=$("$bin" api-keys create --team idle-symbols 2>>"$work/serve.log" | tail -1)
env -u OZ_LOG WARP_API_KEY="$key" DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}" \
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.out" "$bin" \
    --worker-id idle-symbols \
    --web-socket-url "ws://127.0.0.1:$port/api/v1/selfhosted/worker/ws" \
    --server-root-url "http://127.0.0.1:$port" --state-dir "$work/state" \
    >"$work/worker.log" 2>&1 &
worker=$!
for _ in $(seq 1200); do
    grep -q "connected to the orchestrator" "$work/worker.log" && break
    kill -0 "$worker" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "connected to the orchestrator" "$work/worker.log"; then
    echo "the worker did not connect; its log:" >&2
    cat "$work/worker.log" >&2
    exit 1
fi
sleep 5
callgrind_control -d "$worker" >/dev/null
sleep 2
kill -TERM "$worker"
wait "$worker" 2>/dev/null || true
worker=
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/defined"
cat "$work"/cg.out* | grep -oP '^c?fn=\(\d+\) \K.+' | awk '!seen[$0]++' \
    | grep -Fxf "$work/defined" >"$work/order"
[ -s "$work/order" ] || { echo "no function of $bin in the profile" >&2; exit 1; }
{ "$root/scripts/idle-symbol-stamp.sh"; cat "$work/order"; } >"$work/stamped"
mv "$work/stamped" "$out"
echo "$(wc -l <"$work/order") functions written to $out"
