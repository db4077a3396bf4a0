//! How a phase ends early: stopped on request, or failed with a reason.

use oz_protocol::FailureReason;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub enum Fail {
    Stopped,
    Failed {
        reason: FailureReason,
        message: String,
        exit_code: Option<i64>,
    },
}

impl Fail {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Fail::Failed {
            reason,
            message: message.into(),
            exit_code: None,
        }
    }
}

/// Runs a phase unless `stop` fires first. Only for phases that create
/// nothing on the daemon (inspect, pull), since the phase is dropped midway.
pub async fn until_stopped<T>(
    stop: &CancellationToken,
    phase: impl std::future::Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Fail::Stopped),
        r = phase => r,
    }
}
