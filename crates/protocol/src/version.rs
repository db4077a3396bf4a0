//! The worker's version as it announces itself: in the upgrade request of
//! every dial to the orchestrator (`X-Warp-Worker-Version`, the header the Go
//! worker sends so the server can record which build claimed an execution)
//! and as `oz-agent-worker --version` prints it, the same string in both.

/// The request header of the WebSocket upgrade that carries [`WORKER_VERSION`]
/// (the Go worker's `types.WorkerVersionHeader`). Part of the reference
/// protocol: sent to every orchestrator, extensions or not.
pub const WORKER_VERSION_HEADER: &str = "X-Warp-Worker-Version";

/// This build's version: the crate version (`Cargo.toml`), e.g. `0.1.0`.
pub const WORKER_VERSION: &str = env!("CARGO_PKG_VERSION");
