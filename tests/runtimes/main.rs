//! The host runtimes end to end with the worker binary: direct and command
//! (the kubernetes runtime's test is tests/kubernetes/). One test
//! binary.

mod command;
mod direct;
