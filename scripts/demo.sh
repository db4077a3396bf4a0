#!/usr/bin/env bash
# The main job (see README): a local control plane, a worker and one demo
# task, end to end, on this machine. Brings up what is missing: a Docker
# daemon if none is reachable, and the demo images (a busybox task image and
# a demo agent sidecar whose /entrypoint.sh says what it was given).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building oz-agent-worker"
cargo build --quiet --bin oz-agent-worker
BIN=$PWD/target/debug/oz-agent-worker

say "finding a Docker daemon (oz-agent-worker check)"
if ! "$BIN" check; then
  echo "no daemon reachable: starting the project's own (scripts/test-env.sh up)"
  scripts/test-env.sh up
  export DOCKER_HOST=unix:///var/run/docker.sock
  "$BIN" check
fi

host=${DOCKER_HOST:-unix:///var/run/docker.sock}
case $host in
unix://*) scripts/test-env.sh demo-images "${host#unix://}" ;;
*) echo "DOCKER_HOST=$host is not a unix socket: load oz-test/busybox:latest and oz-test/agent-sidecar:latest into it yourself" ;;
esac

WORK=$(mktemp -d)
cleanup() {
  [ -n "${WORKER_PID:-}" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
  [ -n "${PLANE_PID:-}" ] && kill "$PLANE_PID" 2>/dev/null && wait "$PLANE_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER=http://127.0.0.1:$PORT

say "starting the control plane on $SERVER (state in $WORK)"
WARP_API_KEY=$("$BIN" api-keys create --team demo --data-dir "$WORK" 2>/dev/null)
export WARP_API_KEY
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK" 2>"$WORK/plane.log" &
PLANE_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "$SERVER/" && break; sleep 0.1; done

say "starting a worker with id demo-worker"
# No metrics collector runs here: without this the worker would try to push
# OTLP to localhost:4318 and say so.
OTEL_METRICS_EXPORTER=none OZ_LOG=info,task_output=debug "$BIN" --worker-id demo-worker \
  --web-socket-url "ws://127.0.0.1:$PORT/api/v1/selfhosted/worker/ws" \
  --server-root-url "$SERVER" --pull-policy if-not-present 2>"$WORK/worker.log" &
WORKER_PID=$!
for _ in $(seq 100); do grep -q "connected to the orchestrator" "$WORK/worker.log" && break; sleep 0.1; done

say "running a demo task on demo-worker (oz-agent-worker run --wait)"
status=0
"$BIN" run --server "$SERVER" --host demo-worker \
  --image oz-test/busybox:latest --sidecar oz-test/agent-sidecar:latest \
  --prompt "Say hello from a self-hosted worker" --wait || status=$?

say "the agent's output (from the worker's log)"
sed -n 's/.*task output: \(.*\) task_id=.*/\1/p' "$WORK/worker.log"

say "the worker's log"
cat "$WORK/worker.log"
exit $status
