//! Daemon faults during a task: the connection to the daemon breaks (the
//! daemon crashed, was killed or restarted), or the daemon stops and takes
//! the task's container down with it.
//!
//! A broken wait is retried (backing off, for at most [`OUTAGE_LIMIT`]) and
//! goes on waiting on the same container, so when the daemon returns the
//! task is reported with the container's real exit status. An exit caused by
//! the daemon stopping is reported as such, not as the agent's own failure.
//! A removal that fails because the daemon is away is retried in the
//! background until it succeeds (a later start sweeps what a dead worker
//! could not remove).

use super::failure::Fail;
use super::DockerRuntime;
use oz_docker_engine::error::ErrorKind;
use oz_docker_engine::params::{ContainerDeleteParams, ContainerWaitParams};
use oz_docker_engine::{models::ContainerWaitCondition, Docker, DockerError};
use oz_foundation::backoff::ExponentialBackoff;
use oz_protocol::FailureReason;
use std::time::{Duration, Instant};

/// The longest the runtime waits for an unreachable daemon to come back
/// before it gives up on a task.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Whether the error means the daemon could not be reached (as opposed to
/// an answer the daemon gave).
pub fn is_unreachable(e: &DockerError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Protocol
    )
}

fn is_not_found(e: &DockerError) -> bool {
    e.status().map(|s| s.as_u16()) == Some(404)
}

/// How the task container ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub code: i64,
    /// The daemon was unreachable at some point during the wait.
    pub outage: bool,
}

/// Waits for the container to stop running, through daemon outages.
pub async fn wait_exit(rt: &DockerRuntime, id: &str, task_id: &str) -> Result<Exit, Fail> {
    let d = &rt.docker;
    let params = ContainerWaitParams {
        condition: Some(ContainerWaitCondition::NotRunning),
    };
    let mut outage: Option<Instant> = None;
    let mut delays = ExponentialBackoff::new(FIRST_RETRY, LAST_RETRY, 0.0);
    loop {
        match d.container_wait(id, &params).await {
            Ok(w) => {
                return Ok(Exit {
                    code: w.status_code,
                    outage: outage.is_some(),
                })
            }
            Err(e) if is_not_found(&e) => {
                return Err(Fail::new(
                    FailureReason::ContainerWait,
                    "the task's container disappeared while the task ran (removed by someone else, or by the daemon after a restart)",
                ))
            }
            Err(e) if is_unreachable(&e) => {}
            Err(e) => {
                return Err(Fail::new(
                    FailureReason::ContainerWait,
                    format!("waiting for the task container: {e}"),
                ))
            }
        }
        // The daemon is away: keep trying, then read the container's state.
        let since = *outage.get_or_insert_with(|| {
            tracing::warn!(
                task_id,
                container = id,
                "lost the connection to the Docker daemon while the task runs; retrying for up to {OUTAGE_LIMIT:?}"
            );
            Instant::now()
        });
        loop {
            if since.elapsed() > OUTAGE_LIMIT {
                return Err(Fail::new(
                    FailureReason::ContainerWait,
                    format!(
                        "the Docker daemon at {} was unreachable for more than {OUTAGE_LIMIT:?} while the task ran; its result is unknown",
                        d.endpoint().host
                    ),
                ));
            }
            tokio::time::sleep(delays.next_delay()).await;
            match d.container_inspect(id, &Default::default()).await {
                Ok(c) => {
                    tracing::info!(
                        task_id,
                        container = id,
                        "the Docker daemon is reachable again"
                    );
                    // Without a state (no engine here omits it) the exit is
                    // unknown: -1, as for a state without an exit code.
                    let (running, exit_code) = match c.state {
                        Some(state) => (state.running == Some(true), state.exit_code),
                        None => (false, None),
                    };
                    if running {
                        break; // wait on it again
                    }
                    return Ok(Exit {
                        code: exit_code.unwrap_or(-1),
                        outage: true,
                    });
                }
                Err(e) if is_not_found(&e) => {
                    return Err(Fail::new(
                        FailureReason::ContainerWait,
                        "the task's container was gone when the Docker daemon came back",
                    ))
                }
                Err(_) => continue,
            }
        }
    }
}

/// Whether the daemon keeps answering for a few seconds. A daemon that is
/// shutting down answers the wait for the containers it stops and goes
/// away moments later, so one successful ping proves nothing.
pub async fn daemon_stays_up(d: &Docker) -> bool {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let up = tokio::time::timeout(Duration::from_secs(1), d.system_ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if !up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// Removes the container; when the daemon is away, keeps trying in the
/// background until it succeeds, so the task's report is not held up.
pub async fn remove(d: &Docker, id: &str, task_id: &str) {
    let params = ContainerDeleteParams {
        force: Some(true),
        v: Some(false),
        ..Default::default()
    };
    match d.container_delete(id, &params).await {
        Ok(()) => tracing::debug!(task_id, container = id, "removed the task container"),
        Err(e) if is_not_found(&e) => {}
        Err(e) if is_unreachable(&e) => {
            tracing::warn!(
                task_id,
                container = id,
                "cannot remove the task container now (the daemon is unreachable); retrying in the background"
            );
            let (d, id, task_id) = (d.clone(), id.to_string(), task_id.to_string());
            let retry = async move {
                let mut delays = ExponentialBackoff::new(FIRST_RETRY, Duration::from_secs(30), 0.0);
                loop {
                    tokio::time::sleep(delays.next_delay()).await;
                    match d.container_delete(&id, &params).await {
                        Ok(()) => {
                            tracing::info!(
                                task_id,
                                container = id,
                                "removed the task container after the daemon came back"
                            );
                            return;
                        }
                        Err(e) if is_not_found(&e) => return,
                        Err(e) if is_unreachable(&e) => continue,
                        Err(e) => {
                            tracing::warn!(
                                task_id,
                                container = id,
                                "could not remove the task container: {e}"
                            );
                            return;
                        }
                    }
                }
            };
            tokio::spawn(tracing::Instrument::in_current_span(retry));
        }
        Err(e) => tracing::warn!(
            task_id,
            container = id,
            "could not remove the task container: {e}"
        ),
    }
}
