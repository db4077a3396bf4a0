//! A test Kubernetes API server for the kubernetes runtime's tests, and the
//! validator of Kubernetes objects against the schemas vendored under
//! `api-specs/kubernetes/` (see the crate's README for what it proves and
//! what needs a real cluster).

pub mod schema;
