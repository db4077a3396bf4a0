//! The start-up step: what dead earlier instances of this worker left in
//! their journals is taken over before the first connection. Reports not
//! yet confirmed are sent again; executions claimed and never finished are
//! followed again on a runtime whose tasks outlive the worker
//! ([`Runtime::reattaches`]) or else resolved by the runtime
//! ([`Runtime::recover`]) and reported; on a runtime that reattaches, the
//! executions it still runs for dead instances of this worker id that the
//! journal does not know are taken over too
//! ([`crate::runtime_recovery`]); dispatched ones stay known, so a
//! cancellation still reaches their dispatcher.

use crate::journal::{Inherited, Journal};
use crate::outbox::Outbox;
use crate::runtime_recovery::recover_runtime_executions;
use crate::tasks::TaskManager;
use oz_runtime::{Failure, RunOutcome, Runtime, TaskRef};
use std::sync::Arc;

/// Takes over `inherited` (see the module documentation). Everything it
/// reports goes out on the first connection, like any other report.
pub async fn take_over(
    inherited: Inherited,
    runtime: &dyn Runtime,
    journal: &Journal,
    manager: &Arc<TaskManager>,
    outbox: &Outbox,
) {
    resend_undelivered(inherited.undelivered, outbox);
    let unfinished = if runtime.reattaches() {
        reattach_unfinished(inherited.unfinished, manager);
        // Then what the runtime still runs for dead instances of this
        // worker id that the journal does not know (it was lost with the
        // state dir).
        recover_runtime_executions(runtime, journal, manager).await;
        Vec::new()
    } else {
        inherited.unfinished
    };
    // Called with nothing to resolve too: the runtime also removes
    // whatever else a dead instance of this worker left.
    resolve_unfinished(unfinished, runtime, manager).await;
    if !inherited.dispatched.is_empty() {
        tracing::info!(
            "{} task(s) dispatched by an earlier run of this worker are still known; a cancellation reaches their dispatcher",
            inherited.dispatched.len()
        );
    }
}

/// Reports an earlier instance wrote and never saw confirmed.
fn resend_undelivered(undelivered: Vec<(TaskRef, oz_protocol::WorkerMessage)>, outbox: &Outbox) {
    for (task, report) in undelivered {
        tracing::info!(
            task_id = task.task_id,
            "delivering a report left undelivered by an earlier run of this worker"
        );
        outbox.report_again(task, report);
    }
}

/// On a runtime whose tasks outlive the worker: each execution an earlier
/// instance claimed is followed again, holding a slot, and reported when it
/// ends ([`TaskManager::reattach`]).
fn reattach_unfinished(unfinished: Vec<TaskRef>, manager: &Arc<TaskManager>) {
    for task in unfinished {
        manager.reattach(task);
    }
}

/// The runtime says how each execution ended (stopping and removing what
/// is left of it, and whatever else dead instances left); one it found
/// nothing of is reported failed.
async fn resolve_unfinished(
    unfinished: Vec<TaskRef>,
    runtime: &dyn Runtime,
    manager: &Arc<TaskManager>,
) {
    let mut resolved = runtime.recover(unfinished.clone()).await;
    for task in unfinished {
        if !resolved.iter().any(|(t, _)| *t == task) {
            resolved.push((
                task,
                RunOutcome::Failed(Failure::new(
                    oz_protocol::FailureReason::Unknown,
                    "the worker died while it held this task and the runtime found nothing of it at the restart",
                )),
            ));
        }
    }
    for (task, outcome) in resolved {
        manager.report_recovered(task, outcome);
    }
}
