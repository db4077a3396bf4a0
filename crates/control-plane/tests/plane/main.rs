//! The control plane in process (no binary): offers at capacity, live
//! output, delivery across restarts, the management UI over HTTP and the
//! worker protocol against scripted worker peers. One test binary.

mod capacity;
mod output;
mod restarts;
mod ui;
mod worker_protocol;
