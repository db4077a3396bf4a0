//! Start-up sweep: containers a dead earlier instance of this worker left
//! behind (which ones count is decided by `identity::is_orphan`), and the
//! fate of the executions the core's journal says were claimed and never
//! finished.
//!
//! For each unfinished execution, its task container is read before it is
//! removed, so the worker can report the real result: a task that finished
//! while its worker was down is reported as it ended; one still running is
//! stopped and reported failed; one without a container never got that far.
//! Every other container of a dead instance is removed without a report:
//! its task was already reported (the journal says so), so reporting it
//! again would send a second, different terminal report for one run.
//!
//! Containers kept on purpose (`--no-cleanup`) are renamed with the
//! `-kept` suffix once their task is reported, and the sweep leaves them.

use super::identity::{self, EXECUTION_ID, MANAGED_BY, MANAGED_BY_VALUE, ROLE, TASK_ID, WORKER_ID};
use super::DockerRuntime;
use oz_docker_engine::params::{ContainerDeleteParams, ContainerListParams};
use oz_protocol::FailureReason;
use oz_runtime::{Failure, RunOutcome, TaskRef};

pub const KEPT_SUFFIX: &str = "-kept";

pub async fn recover(
    rt: &DockerRuntime,
    unfinished: &[TaskRef],
) -> Result<Vec<(TaskRef, RunOutcome)>, oz_docker_engine::DockerError> {
    let filters = serde_json::json!({
        "label": [format!("{MANAGED_BY}={MANAGED_BY_VALUE}"), format!("{WORKER_ID}={}", rt.identity.worker_id)]
    });
    let params = ContainerListParams {
        all: Some(true),
        filters: Some(filters.to_string()),
        ..Default::default()
    };
    let containers = rt.docker.container_list(&params).await?;
    let mut resolved = Vec::new();
    for c in containers {
        // The list is filtered by our labels, so a container without any
        // is not ours (a daemon that ignored the filter): leave it alone.
        let Some(labels) = &c.labels else {
            continue;
        };
        let kept = c.names.iter().flatten().any(|n| n.ends_with(KEPT_SUFFIX));
        if kept || !rt.identity.is_orphan(labels, &identity::process_alive) {
            continue;
        }
        let id = c.id.clone();
        let is_task = labels.get(ROLE).map(String::as_str) == Some("task");
        let task = labels.get(TASK_ID).map(|task_id| TaskRef {
            task_id: task_id.clone(),
            execution_id: labels.get(EXECUTION_ID).filter(|e| !e.is_empty()).cloned(),
        });
        let pending = task.as_ref().filter(|t| {
            is_task && unfinished.contains(t) && !resolved.iter().any(|(r, _)| r == *t)
        });
        // Read how it ended before removing it; a running one is stopped by the removal.
        let outcome = match pending {
            Some(_) => Some(outcome_of(rt, &id).await),
            None => None,
        };
        let delete = ContainerDeleteParams {
            force: Some(true),
            ..Default::default()
        };
        match rt.docker.container_delete(&id, &delete).await {
            Ok(()) => {
                tracing::info!(
                    container = id,
                    task_id = task.as_ref().map(|t| t.task_id.as_str()).unwrap_or(""),
                    reported = outcome.is_none(),
                    "removed a container left by a dead earlier run of this worker"
                );
                if let (Some(task), Some(outcome)) = (pending, outcome) {
                    resolved.push((task.clone(), outcome));
                }
            }
            Err(e) => tracing::warn!(container = id, "could not remove orphaned container: {e}"),
        }
    }
    for task in unfinished {
        if !resolved.iter().any(|(t, _)| t == task) {
            resolved.push((
                task.clone(),
                RunOutcome::Failed(Failure::new(
                    FailureReason::Unknown,
                    "the worker died before this task's container existed (while it pulled images or prepared \
                     sidecars); the task did not run. Its helpers were cleaned up at the worker's restart",
                )),
            ));
        }
    }
    Ok(resolved)
}

async fn outcome_of(rt: &DockerRuntime, id: &str) -> RunOutcome {
    let state = rt
        .docker
        .container_inspect(id, &Default::default())
        .await
        .ok()
        .and_then(|c| c.state);
    let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let code = state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    let never_started = state
        .as_ref()
        .and_then(|s| s.started_at.as_deref())
        .is_none_or(|t| t.starts_with("0001-"));
    if running {
        RunOutcome::Failed(Failure::new(
            FailureReason::Unknown,
            "the worker running this task died (crashed or was killed); at its restart the task's \
             container was still running and has been stopped and removed",
        ))
    } else if never_started {
        RunOutcome::Failed(Failure::new(
            FailureReason::Unknown,
            "the worker preparing this task died before the agent started; the task's container was removed at its restart",
        ))
    } else if code == 0 && !oom {
        RunOutcome::Completed
    } else if oom {
        RunOutcome::Failed(Failure {
            reason: FailureReason::ContainerOom,
            message: format!("the task ran out of memory (exit code {code}) while its worker was down; reported at the worker's restart"),
            exit_code: Some(code),
            details: None,
        })
    } else {
        RunOutcome::Failed(Failure {
            reason: FailureReason::ContainerExit,
            message: format!("the agent exited with code {code} while its worker was down; reported at the worker's restart"),
            exit_code: Some(code),
            details: None,
        })
    }
}
