# Container image for the worker. It talks to the host's daemon through a
# mounted socket (or DOCKER_HOST/TLS), so it needs no Docker inside itself:
#   docker run -d -v /var/run/docker.sock:/var/run/docker.sock \
#     -e WARP_API_KEY oz-agent-worker --worker-id prod-runner-1
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin oz-agent-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/oz-agent-worker /usr/local/bin/oz-agent-worker
ENTRYPOINT ["/usr/local/bin/oz-agent-worker"]
