//! Draining (the binary's SIGQUIT starts it): the worker stops claiming (every offer is rejected as at
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
