//! Start-up sweep: containers a dead earlier instance of this worker left
//! behind (which ones count is decided by `identity::is_orphan`). Task
//! containers are not just removed: how their task ended is read first, so
//! the worker can report it. A task that finished while its worker was down
//! is reported with its real result; one still running is stopped and
//! reported failed.
//!
//! Containers kept on purpose (`--no-cleanup`) are renamed with the
//! `-kept` suffix once their task is reported, and the sweep leaves them.

use super::identity::{self, MANAGED_BY, MANAGED_BY_VALUE, ROLE, TASK_ID, WORKER_ID};
use super::DockerRuntime;
use crate::docker::params::{ContainerDeleteParams, ContainerListParams};
use crate::protocol::FailureReason;
use crate::runtime::{RecoveredTask, TaskOutcome};

pub const KEPT_SUFFIX: &str = "-kept";

pub async fn recover(rt: &DockerRuntime) -> Result<Vec<RecoveredTask>, String> {
    let filters = serde_json::json!({
        "label": [format!("{MANAGED_BY}={MANAGED_BY_VALUE}"), format!("{WORKER_ID}={}", rt.identity.worker_id)]
    });
    let params = ContainerListParams {
        all: Some(true),
        filters: Some(filters.to_string()),
        ..Default::default()
    };
    let containers = rt
        .docker
        .container_list(&params)
        .await
        .map_err(|e| e.to_string())?;
    let mut recovered = Vec::new();
    for c in containers {
        let labels = c.labels.clone().unwrap_or_default();
        let kept = c.names.iter().flatten().any(|n| n.ends_with(KEPT_SUFFIX));
        if kept || !rt.identity.is_orphan(&labels, &identity::process_alive) {
            continue;
        }
        let id = c.id.clone().unwrap_or_default();
        let task_id = labels.get(TASK_ID).cloned();
        let is_task = labels.get(ROLE).map(String::as_str) == Some("task");
        // Read how it ended before removing it; a running one is stopped by the removal.
        let outcome = if is_task {
            Some(outcome_of(rt, &id).await)
        } else {
            None
        };
        let delete = ContainerDeleteParams {
            force: Some(true),
            ..Default::default()
        };
        match rt.docker.container_delete(&id, &delete).await {
            Ok(()) => {
                tracing::info!(
                    container = id,
                    task_id = task_id.as_deref().unwrap_or(""),
                    "removed orphaned container"
                );
                // Only the process whose removal succeeded reports the task,
                // so two workers restarting together do not both report it.
                if let (Some(task_id), Some(outcome)) = (task_id, outcome) {
                    recovered.push(RecoveredTask { task_id, outcome });
                }
            }
            Err(e) => tracing::warn!(container = id, "could not remove orphaned container: {e}"),
        }
    }
    Ok(recovered)
}

async fn outcome_of(rt: &DockerRuntime, id: &str) -> TaskOutcome {
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
        TaskOutcome::Failed {
            reason: FailureReason::Unknown,
            message: "the worker running this task died (crashed or was killed); at its restart the task's \
                      container was still running and has been stopped and removed"
                .into(),
            exit_code: None,
        }
    } else if never_started {
        TaskOutcome::Failed {
            reason: FailureReason::Unknown,
            message: "the worker preparing this task died before the agent started; the task's container was removed at its restart".into(),
            exit_code: None,
        }
    } else if code == 0 && !oom {
        TaskOutcome::Succeeded
    } else if oom {
        TaskOutcome::Failed {
            reason: FailureReason::ContainerOom,
            message: format!("the task ran out of memory (exit code {code}) while its worker was down; reported at the worker's restart"),
            exit_code: Some(code),
        }
    } else {
        TaskOutcome::Failed {
            reason: FailureReason::ContainerExit,
            message: format!("the agent exited with code {code} while its worker was down; reported at the worker's restart"),
            exit_code: Some(code),
        }
    }
}
