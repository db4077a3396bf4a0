//! The Engine API client against real daemons of the matrix, contexts
//! written by the Docker CLI and a scripted daemon: attach, TLS through
//! contexts, the full scenario, failures, negotiation and endpoint
//! resolution. One test binary.

mod attach;
mod context_tls;
mod daemons;
mod failures;
mod fake_daemon;
mod resolve;
