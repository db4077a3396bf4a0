//! Draining: the worker stops claiming (every offer is rejected as at
//! capacity, so the orchestrator sends the task elsewhere), lets its running
//! tasks finish with no deadline, has their reports confirmed as any report
//! is, closes the socket normally and exits 0. Started by SIGQUIT (GitLab
//! Runner's graceful stop) or, with `--disconnect-after-task`, by the end of
//! the worker's one task (Buildkite's `--disconnect-after-job`). A SIGTERM
//! or SIGINT during a drain falls back to the normal shutdown (running tasks
//! stopped and reported `graceful_shutdown`).

use crate::delivery::Delivery;
use crate::tasks::TaskManager;
use crate::DELIVERY_GRACE;
use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGQUIT. Later ones are logged and change nothing
/// (the drain is already under way; SIGTERM is the way to cut it short).
/// The handler is installed when this is called (inside the tokio runtime),
/// so from then on SIGQUIT no longer has its default action (core dump).
pub fn drain_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    async move {
        quit.recv().await;
        tracing::info!("received SIGQUIT: draining");
        tokio::spawn(async move {
            while quit.recv().await.is_some() {
                tracing::info!("received SIGQUIT again: already draining (send SIGTERM to stop the running tasks now)");
            }
        });
    }
}

/// Waits, without a deadline, until no task runs; then gives their reports
/// the same bounded chance to be confirmed as a shutdown does
/// ([`DELIVERY_GRACE`]; what is still unconfirmed stays in the journal for
/// the next start) and asks the session to close the socket normally.
pub async fn finish(manager: &TaskManager, delivery: &Delivery, close: &CancellationToken) {
    manager.idle().await;
    tracing::info!("drain: every task has ended; waiting for their reports to be confirmed");
    if tokio::time::timeout(DELIVERY_GRACE, delivery.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} report(s) could not be confirmed before exit",
            delivery.len()
        );
    }
    close.cancel();
}
