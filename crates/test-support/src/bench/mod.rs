//! Helpers shared by the benches; each bench does `mod support;` and uses
//! what it needs. They live beside the tests' helpers in this crate; the boundaries
//! they cross have their own small helpers here: the Engine API spoken raw
//! (the baselines), the worker binary, the embedded control plane, a
//! scripted orchestrator, statistics and the report each bench writes.
#![allow(dead_code)]

pub mod engine;
pub mod images;
pub mod orchestrator;
pub mod plane;
pub mod report;
pub mod setup;
pub mod stats;
pub mod worker;
