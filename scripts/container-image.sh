#!/usr/bin/env bash
# Builds the worker's container image from the Dockerfile on a machine where
# no base image can be pulled: the two base images the Dockerfile takes as
# build arguments are built here from Debian packages
# (scripts/debian-image.sh), then `docker build --build-arg RUST_IMAGE=…
# --build-arg RUNTIME_IMAGE=…`.
#
#   scripts/container-image.sh [build] [TAG]   base images, then the image
#                                              (TAG default oz-agent-worker:local)
#   scripts/container-image.sh bases           only the base images
#
# Base images, from Debian unstable (its rustc is new enough for the crate's
# rust-version, and the runtime's glibc must be at least the build's):
#   oz-test/base-rust:sid      minbase + rustc cargo gcc libc6-dev ca-certificates
#   oz-test/base-runtime:sid   minbase, slim (as debian:*-slim)
# DOCKER_HOST picks the daemon (default the test dockerd's unix socket).
#
# The classic builder is used (DOCKER_BUILDKIT=0: the machine's Docker CLI
# has no buildx). Its layer cache keeps the compiled dependencies (the
# Dockerfile builds them in a layer of their own, keyed by Cargo.toml and
# Cargo.lock), so after a source change only the workspace's crates are compiled. The
# build stage is tagged oz-agent-worker-build:cache so that it is not a
# dangling image; earlier build stages and images of this Dockerfile left
# dangling by a rebuild are removed (only those: they carry its labels).
set -euo pipefail
cd "$(dirname "$0")/.."

RUST_BASE=oz-test/base-rust:sid
RUNTIME_BASE=oz-test/base-runtime:sid
BUILD_CACHE_TAG=oz-agent-worker-build:cache
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}

log() { printf '[container-image] %s\n' "$*" >&2; }
die() {
  printf '[container-image] ERROR: %s\n' "$*" >&2
  exit 1
}

bases() {
  case $DOCKER_HOST in
  unix://*) ;;
  *) die "DOCKER_HOST=$DOCKER_HOST: the base images are imported over a unix socket" ;;
  esac
  local sock=${DOCKER_HOST#unix://}
  # --host-cas: cargo fetches crates over TLS, through whatever egress proxy
  # this machine trusts.
  scripts/debian-image.sh build --socket "$sock" --host-cas sid "$RUST_BASE" \
    rustc cargo gcc libc6-dev ca-certificates
  scripts/debian-image.sh build --socket "$sock" --slim --change 'CMD ["bash"]' sid "$RUNTIME_BASE"
}

build() {
  local tag=${1:-oz-agent-worker:local} started=$SECONDS
  bases
  local -a args=(--build-arg "RUST_IMAGE=$RUST_BASE" --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE")
  log "docker build (the build stage) -> $BUILD_CACHE_TAG"
  DOCKER_BUILDKIT=0 docker build --force-rm --target build -t "$BUILD_CACHE_TAG" "${args[@]}" . >&2
  log "docker build -> $tag"
  DOCKER_BUILDKIT=0 docker build --force-rm -t "$tag" "${args[@]}" . >&2
  docker image prune -f --filter label=dev.oz.build-stage=oz-agent-worker >/dev/null
  docker image prune -f --filter label=org.opencontainers.image.title=oz-agent-worker >/dev/null
  log "$tag built in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$tag" |
    awk '{ printf "%.1f MB", $1 / 1e6 }'))"
  docker image inspect -f '{{.Id}}' "$tag"
}

case "${1:-build}" in
build) build "${2:-}" ;;
bases) bases ;;
-h | --help | help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
*) build "$1" ;;
esac
