//! Start-up step: executions the runtime still holds for this worker id
//! that the journal does not know (it was lost with the state directory,
//! e.g. a replaced Kubernetes Pod's emptyDir), found by
//! [`Runtime::discover`], are recorded in the journal as claimed and then
//! followed again exactly as journalled ones are: watched to their end and
//! reported once, never run again.
//!
//! The journal wins: an execution it knows in any state (claimed and being
//! followed already, finished with its report stored, dispatched) is left
//! as the journal has it, and so is a second execution of a task id the
//! journal holds as claimed (one execution of a task at a time).

use crate::journal::{ExecutionState, Journal};
use crate::tasks::TaskManager;
use oz_runtime::{Adoptable, Runtime, TaskRef};
use std::sync::Arc;

/// The discovered executions the journal does not know, in the order
/// found, each once.
pub fn unknown_to(journal: &Journal, found: Vec<Adoptable>) -> Vec<Adoptable> {
    let held = journal.held();
    let mut out: Vec<Adoptable> = Vec::new();
    for a in found {
        if journal.get(&a.task).is_some() {
            tracing::debug!(
                task_id = a.task.task_id,
                "the journal knows this execution already: {}",
                a.found
            );
            continue;
        }
        let busy = held
            .iter()
            .any(|(t, s)| t.task_id == a.task.task_id && *s == ExecutionState::Claimed)
            || out.iter().any(|o| o.task.task_id == a.task.task_id);
        if busy {
            tracing::warn!(
                task_id = a.task.task_id,
                execution_id = a.task.execution_id.as_deref().unwrap_or(""),
                "not taking over {}: another execution of the task is held already",
                a.found
            );
            continue;
        }
        out.push(a);
    }
    out
}

/// Asks the runtime for executions of dead instances of this worker id,
/// records each the journal does not know as claimed, and hands it to
/// [`TaskManager::reattach`]. Returns those taken over. One that cannot be
/// recorded is not taken over (as a claim that cannot be recorded is
/// refused): its Job runs on, and a later start may take it.
pub async fn recover_runtime_executions(
    runtime: &dyn Runtime,
    journal: &Journal,
    manager: &Arc<TaskManager>,
) -> Vec<TaskRef> {
    if !runtime.reattaches() {
        return Vec::new();
    }
    let known = |t: &TaskRef| journal.get(t).is_some();
    let found = runtime.discover(&known).await;
    let mut taken = Vec::new();
    for a in unknown_to(journal, found) {
        if let Err(e) = journal.claimed(&a.task) {
            tracing::error!(
                task_id = a.task.task_id,
                "cannot record in the journal the execution left by a dead instance of this worker ({}): {e}; \
                 not taking it over",
                a.found
            );
            continue;
        }
        tracing::info!(
            task_id = a.task.task_id,
            execution_id = a.task.execution_id.as_deref().unwrap_or(""),
            "taking over an execution a dead instance of this worker left, unknown to the journal: {}",
            a.found
        );
        manager.reattach(a.task.clone());
        taken.push(a.task);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_protocol::{TaskCompleted, WorkerMessage};

    fn task(t: &str, e: &str) -> TaskRef {
        TaskRef {
            task_id: t.into(),
            execution_id: Some(e.into()),
        }
    }

    fn found(t: &str, e: &str) -> Adoptable {
        Adoptable {
            task: task(t, e),
            found: format!("Job of {t}"),
        }
    }

    #[test]
    fn the_journal_wins_and_each_task_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w").unwrap();
        j.claimed(&task("following", "e1")).unwrap();
        j.claimed(&task("reported", "e1")).unwrap();
        j.finished(
            &task("reported", "e1"),
            &WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: "reported".into(),
                message: "done".into(),
                task_state: None,
                execution_id: Some("e1".into()),
            }),
        )
        .unwrap();
        let kept = unknown_to(
            &j,
            vec![
                found("following", "e1"),
                found("reported", "e1"),
                // Another execution of a task the journal follows.
                found("following", "e0"),
                found("orphan", "e1"),
                found("orphan", "e2"),
                found("other", "e1"),
            ],
        );
        let kept: Vec<TaskRef> = kept.into_iter().map(|a| a.task).collect();
        assert_eq!(kept, [task("orphan", "e1"), task("other", "e1")]);
    }
}
