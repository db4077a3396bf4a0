//! The Docker Engine API: generated bindings plus the hand-written surface
//! (client, errors, streams) they call into. Sockets and TLS live in
//! `crate::transport`; this module only speaks HTTP requests and Docker types.

pub mod client;
pub mod credentials;
/// The one error type of Engine API calls, owned by the transport (which
/// raises most of them) and used by the bindings.
pub use crate::transport::error;
pub mod generated;
#[cfg(test)]
mod models_tests;
/// The image reference grammar lives in the leaf [`oz_foundation::image_reference`]
/// (the control plane checks references with it too).
pub use oz_foundation::image_reference as reference;
pub mod request;
pub mod stream;
pub mod transport;

pub use client::{Attached, ConnectOptions, DaemonVersion, Docker, ExecStartOutcome, LogsOptions};
pub use error::DockerError;
pub use generated::{models, params};
