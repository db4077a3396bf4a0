//! Helpers only the benches use (`use oz_test_support::bench as support;`):
//! the Engine API spoken raw (the baselines), the embedded control plane,
//! statistics and the report each bench writes. The worker binary
//! ([`crate::worker::WorkerProcess`]) and the scripted orchestrator
//! ([`crate::scripted_server::ScriptedServer`]) are the tests' harnesses.
#![allow(dead_code)]

pub mod engine;
pub mod images;
pub mod plane;
pub mod report;
pub mod setup;
pub mod stats;
