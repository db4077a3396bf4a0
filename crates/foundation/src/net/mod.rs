//! The one outbound connection stack: a connector for every scheme
//! (`unix`, `http`, `https` over rustls, `ssh`), so one `hyper_util` client
//! type serves the Engine API, the OTLP push and any other HTTP client.

pub mod connector;
pub mod ssh;

pub use connector::{Connector, Timeouts};
