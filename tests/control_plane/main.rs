//! The control plane through the binary: `serve` and the CLI's client
//! commands against a real worker, TLS, the management UI in a browser,
//! paging, schedules, results and abuse. One test binary (see README,
//! "Tests"); tests the plane alone, without the binary, are in
//! crates/control-plane/tests/plane/.

mod abuse;
mod cli;
mod output;
mod output_e2e;
mod paging;
mod restarts;
mod results;
mod schedules;
mod tls;
mod ui_browser;
mod worker_pause;
