//! The kubernetes runtime through the worker binary, against the test
//! Kubernetes API server (crates/test-apiserver). One test binary; the
//! deploy manifests are rendered and validated in tests/deploy/.

mod runtime;
