//! Whether the kernel's OOM killer ended a task container.
//!
//! `State.OOMKilled` is not enough on its own. dockerd 20.10 sets it only
//! when containerd's OOM event reaches it before the exit event; the two
//! come from different goroutines in the shim and cross on a loaded
//! machine, and then the flag stays false for good although the daemon
//! still logs an `oom` event for the container (moby's
//! `daemon/monitor.go`). Podman on cgroup v1 reports neither.

use futures_util::StreamExt;
use oz_docker_engine::params::SystemEventsParams;
use oz_docker_engine::Docker;
use std::time::Duration;

/// How long a SIGKILL exit under a memory limit is looked at before it is
/// taken for a plain kill: the OOM event trails the exit by milliseconds
/// normally, by up to a second or so under load.
const OOM_EVENT_GRACE: Duration = Duration::from_secs(3);
const OOM_EVENT_POLL: Duration = Duration::from_millis(200);

/// Whether the daemon has logged an `oom` event for container `id` (full
/// id or name), polling for up to [`OOM_EVENT_GRACE`]. `false` when the
/// events endpoint fails: the caller then reports what inspect said.
pub async fn oom_event_logged(d: &Docker, id: &str) -> bool {
    let filters = serde_json::json!({"container": [id], "event": ["oom"]}).to_string();
    let deadline = tokio::time::Instant::now() + OOM_EVENT_GRACE;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let params = SystemEventsParams {
            since: Some("0".into()),
            // A past `until` makes the daemon answer from its event log and
            // end the stream instead of following it.
            until: Some(format!("{}.{:09}", now.as_secs(), now.subsec_nanos())),
            filters: Some(filters.clone()),
        };
        let Ok(mut events) = d.system_events(&params).await else {
            return false;
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(e) if e.action.as_deref() == Some("oom") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        if tokio::time::Instant::now() + OOM_EVENT_POLL > deadline {
            return false;
        }
        tokio::time::sleep(OOM_EVENT_POLL).await;
    }
}
