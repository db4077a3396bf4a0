//! Start-up sweep: containers a crashed earlier run of this worker left
//! behind. Which ones count as ours is decided by `identity::is_orphan`.

use super::identity::{self, MANAGED_BY, MANAGED_BY_VALUE, WORKER_ID};
use super::DockerRuntime;
use crate::docker::params::{ContainerDeleteParams, ContainerListParams};

pub async fn remove(rt: &DockerRuntime) -> Result<usize, String> {
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
    let mut removed = 0;
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        if !rt.identity.is_orphan(&labels, &identity::process_alive) {
            continue;
        }
        let id = c.id.unwrap_or_default();
        let task = labels.get(identity::TASK_ID).cloned().unwrap_or_default();
        let delete = ContainerDeleteParams {
            force: Some(true),
            ..Default::default()
        };
        match rt.docker.container_delete(&id, &delete).await {
            Ok(()) => {
                tracing::info!(container = id, task_id = task, "removed orphaned container");
                removed += 1;
            }
            Err(e) => tracing::warn!(container = id, "could not remove orphaned container: {e}"),
        }
    }
    Ok(removed)
}
