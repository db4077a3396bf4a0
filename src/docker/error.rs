//! The one error type of the Docker layer.

/// Carries the operation, the endpoint, the HTTP status and the daemon's
/// message. Never holds a credential.
#[derive(Debug)]
pub struct DockerError {
    // Filled in by the transport work.
}

impl std::fmt::Display for DockerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("docker error")
    }
}

impl std::error::Error for DockerError {}
