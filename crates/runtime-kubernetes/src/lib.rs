//! The kubernetes runtime: one Job per task execution, in the Go worker's
//! shape (`backend.kubernetes`, BACKENDS.md §5), followed to its end by
//! watches and a safety poll, and reattached after a worker restart.
//!
//! Pure parts (settings, names, the Job, the diagnosis, the failure
//! details) are separate from the parts that talk to the API server
//! (client, preflight, watch, logs, runtime), so the former are tested
//! without a cluster.

mod claim;
mod client;
pub mod diagnosis;
mod discover;
pub mod failure_details;
pub mod holder;
pub mod job_spec;
mod log_cursor;
mod logs;
pub mod names;
mod preflight;
mod retry;
mod runtime;
pub mod settings;
pub mod stopping;
mod watch;

pub use client::ConnectError;
pub use preflight::PreflightError;
pub use runtime::{KubernetesRuntime, StartError};
pub use settings::{KubernetesSection, Settings, SettingsError};
