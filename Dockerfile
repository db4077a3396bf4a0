# The worker's container image. It talks to the host's daemon through the
# mounted socket (or DOCKER_HOST: tcp:// with TLS, or ssh://), so it holds no
# Docker of its own:
#
#   docker run -d --name oz-agent-worker \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -e WARP_API_KEY oz-agent-worker --worker-id prod-runner-1
#
# It runs as uid/gid 10001 (user `oz`, as the Go worker's image), so the
# socket's group must be added; never as root. Undelivered reports are kept
# under /home/oz/.local/state/oz-agent-worker: mount a volume there to keep
# them across container restarts.
#
# Base images are build arguments (a mirror, a pinned digest, or images
# built locally: scripts/container-image.sh builds both from Debian
# packages). The runtime's glibc must be at least the build image's.
# Works with BuildKit and with the classic builder.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# Marks this stage's images, so a cache cleanup can tell them apart.
LABEL dev.oz.build-stage=oz-agent-worker
WORKDIR /src
# The dependencies first, in a layer of their own that only the manifests
# and Cargo.lock decide: a source change recompiles the workspace's own
# crates alone. Cargo needs every target the manifests name, so those get
# stubs (the benches' names read from Cargo.toml, so editing a bench does
# not void the cache). One COPY per workspace crate: a glob would flatten
# the paths.
COPY Cargo.toml Cargo.lock ./
COPY xtask/Cargo.toml xtask/Cargo.toml
COPY crates/control-plane/Cargo.toml crates/control-plane/Cargo.toml
COPY crates/docker-engine/Cargo.toml crates/docker-engine/Cargo.toml
COPY crates/foundation/Cargo.toml crates/foundation/Cargo.toml
COPY crates/protocol/Cargo.toml crates/protocol/Cargo.toml
COPY crates/runs-api/Cargo.toml crates/runs-api/Cargo.toml
COPY crates/runtime/Cargo.toml crates/runtime/Cargo.toml
COPY crates/runtime-command/Cargo.toml crates/runtime-command/Cargo.toml
COPY crates/runtime-direct/Cargo.toml crates/runtime-direct/Cargo.toml
COPY crates/runtime-docker/Cargo.toml crates/runtime-docker/Cargo.toml
COPY crates/runtime-kubernetes/Cargo.toml crates/runtime-kubernetes/Cargo.toml
COPY crates/telemetry/Cargo.toml crates/telemetry/Cargo.toml
COPY crates/test-apiserver/Cargo.toml crates/test-apiserver/Cargo.toml
COPY crates/test-support/Cargo.toml crates/test-support/Cargo.toml
COPY crates/worker/Cargo.toml crates/worker/Cargo.toml
RUN mkdir -p src xtask/src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > xtask/src/main.rs \
    && for c in crates/*/; do mkdir -p "$c/src" && touch "$c/src/lib.rs"; done \
    && echo 'fn main() {}' > crates/test-apiserver/src/main.rs \
    && for b in $(awk '/^\[\[bench\]\]/ { inbench = 1 } inbench && /^name *=/ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); print; inbench = 0 }' Cargo.toml); do \
        echo 'fn main() {}' > "benches/$b.rs"; \
    done \
    && cargo build --release --locked --bin oz-agent-worker
COPY . .
# Newer than the stubs, so cargo rebuilds the workspace's crates; then prove
# it is the real binary, not the stub.
RUN touch src/main.rs crates/*/src/lib.rs \
    && cargo build --release --locked --bin oz-agent-worker \
    && target/release/oz-agent-worker --version

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates openssh-client \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 oz \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/oz \
        --shell /usr/sbin/nologin oz \
    && mkdir /app \
    && ln -s /usr/local/bin/oz-agent-worker /app/oz-agent-worker
COPY --from=build /src/target/release/oz-agent-worker /usr/local/bin/oz-agent-worker
LABEL org.opencontainers.image.title=oz-agent-worker \
      org.opencontainers.image.description="Self-hosted worker for Oz cloud coding agents" \
      org.opencontainers.image.licenses=Apache-2.0
USER 10001:10001
# /app/oz-agent-worker as in the Go worker's image.
WORKDIR /app
# The worker's /healthz and /readyz (--health-listen). The HEALTHCHECK
# probes whatever OZ_HEALTH_LISTEN says, so move the port with
# `-e OZ_HEALTH_LISTEN=...` (two workers on `--network host` need one port
# each), not with --health-listen, which the health check cannot see.
ENV OZ_HEALTH_LISTEN=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["oz-agent-worker", "probe"]
# As PID 1 the worker runs itself as a child and reaps orphaned processes
# (as `docker run --init` would); --init works too.
ENTRYPOINT ["/usr/local/bin/oz-agent-worker"]
