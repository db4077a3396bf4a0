//! The control plane in process (no binary): offers at capacity, the
//! management UI over HTTP and the worker protocol against scripted worker
//! peers. One test binary; tests that run `serve` as a process are in
//! tests/control_plane/.

mod capacity;
mod ui;
mod worker_protocol;
