//! The task container: create with the contract's settings, refuse musl
//! images before the agent starts (see `libc_check`), run to the end (or stop it: SIGTERM, a
//! grace period, SIGKILL), and classify how it ended.

use super::failure::Fail;
use super::images::ImageInfo;
use super::DockerRuntime;
use crate::docker::models::*;
use crate::docker::params::*;
use crate::protocol::FailureReason;
use crate::runtime::TaskSpec;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// The most output logged for a failed task.
const LOG_TAIL_LINES: u64 = 200;
const LOG_LIMIT_BYTES: usize = 64 * 1024;

pub async fn run(
    rt: &DockerRuntime,
    spec: &TaskSpec,
    image: &ImageInfo,
    sidecar_volumes: &[String],
    stop: &CancellationToken,
    created: &mut Option<String>,
) -> Result<(), Fail> {
    let d = &rt.docker;
    let body = create_body(rt, spec, image, sidecar_volumes);
    let name = format!(
        "oz-task-{}-{}",
        sanitize(&spec.task_id),
        &super::identity::random_id()[..8]
    );
    let params = ContainerCreateParams {
        name: Some(name),
        ..Default::default()
    };
    let response = d.container_create(&params, &body).await.map_err(|e| {
        Fail::new(
            FailureReason::ContainerCreate,
            format!("creating the task container from {}: {e}", image.reference),
        )
    })?;
    let id = response.id.unwrap_or_default();
    *created = Some(id.clone());
    for w in response.warnings.unwrap_or_default() {
        tracing::warn!(task_id = spec.task_id, "daemon warning on create: {w}");
    }

    super::libc_check::refuse_musl(
        d,
        &id,
        spec.command.first().map(String::as_str),
        &rt.arch,
        &image.reference,
    )
    .await?;
    if stop.is_cancelled() {
        return Err(Fail::Stopped);
    }

    d.container_start(&id, &Default::default())
        .await
        .map_err(|e| {
            Fail::new(
                FailureReason::ContainerStart,
                format!("starting the task container: {e}"),
            )
        })?;
    tracing::info!(
        task_id = spec.task_id,
        container = id,
        "task container started"
    );

    let wait_params = ContainerWaitParams {
        condition: Some(ContainerWaitCondition::NotRunning),
    };
    let waited = tokio::select! {
        w = d.container_wait(&id, &wait_params) => w,
        _ = stop.cancelled() => {
            stop_container(rt, &id, &spec.task_id).await;
            return Err(Fail::Stopped);
        }
    };
    let code = match waited {
        Ok(w) => w.status_code.unwrap_or(-1),
        Err(e) => {
            return Err(Fail::new(
                FailureReason::ContainerWait,
                format!("waiting for the task container: {e}"),
            ));
        }
    };
    let reported_oom = d
        .container_inspect(&id, &Default::default())
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    // Podman on cgroup v1 never reports OOM kills (no OOMKilled, no oom
    // event): a SIGKILL exit under a memory limit we set, that we did not
    // send, is the kernel's OOM killer there. Docker always reports it.
    let inferred_oom = rt.is_podman && code == 137 && spec.limits.memory_bytes.is_some();
    let oom = reported_oom || inferred_oom;
    if code == 0 && !oom {
        // Successful output is only read when someone asked to see it.
        if tracing::enabled!(target: TASK_OUTPUT, tracing::Level::DEBUG) {
            log_output(rt, &id, &spec.task_id, false).await;
        }
        return Ok(());
    }
    let tail = log_output(rt, &id, &spec.task_id, true).await;
    let last = tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| truncate(l.trim(), 300));
    let detail = last
        .map(|l| format!("; last output: {l}"))
        .unwrap_or_default();
    let (reason, message) = if oom {
        let limit = spec
            .limits
            .memory_bytes
            .map(|b| format!(" of {} GiB", b >> 30))
            .unwrap_or_default();
        (
            FailureReason::ContainerOom,
            format!("the task ran out of memory and was killed (exit code {code}, memory limit{limit}){detail}"),
        )
    } else {
        (
            FailureReason::ContainerExit,
            format!("the agent exited with code {code}{detail}"),
        )
    };
    Err(Fail::Failed {
        reason,
        message,
        exit_code: Some(code),
    })
}

fn create_body(
    rt: &DockerRuntime,
    spec: &TaskSpec,
    image: &ImageInfo,
    volumes: &[String],
) -> ContainerCreateBody {
    let mut binds: Vec<String> = spec
        .sidecars
        .iter()
        .zip(volumes)
        .map(|(s, v)| {
            format!(
                "{v}:{}:{}",
                s.mount_path,
                if s.read_only { "ro" } else { "rw" }
            )
        })
        .collect();
    binds.extend(spec.binds.iter().map(|b| {
        format!(
            "{}:{}:{}",
            b.source,
            b.target,
            if b.read_only { "ro" } else { "rw" }
        )
    }));
    let (entrypoint, cmd) = match spec.command.split_first() {
        Some((first, rest)) => (Some(vec![first.clone()]), Some(rest.to_vec())),
        None => (None, None),
    };
    ContainerCreateBody {
        image: Some(image.id.clone()),
        entrypoint,
        cmd,
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(spec.working_dir.clone()),
        labels: Some(
            rt.identity
                .labels("task", Some((&spec.task_id, spec.execution_id.as_deref()))),
        ),
        tty: Some(false),
        host_config: Some(HostConfig {
            binds: Some(binds),
            nano_cpus: spec.limits.cpus.map(|c| i64::from(c) * 1_000_000_000),
            memory: spec.limits.memory_bytes,
            memory_swap: spec.limits.memory_bytes,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SIGTERM, then SIGKILL after the grace period if it is still running.
async fn stop_container(rt: &DockerRuntime, id: &str, task_id: &str) {
    let d = &rt.docker;
    let grace = rt.settings.stop_grace_period;
    tracing::info!(
        task_id,
        container = id,
        "stopping the task container (SIGTERM, SIGKILL after {grace:?})"
    );
    let _ = d
        .container_kill(
            id,
            &ContainerKillParams {
                signal: Some("SIGTERM".into()),
            },
        )
        .await;
    let wait_params = ContainerWaitParams {
        condition: Some(ContainerWaitCondition::NotRunning),
    };
    if tokio::time::timeout(grace, d.container_wait(id, &wait_params))
        .await
        .is_err()
    {
        tracing::info!(
            task_id,
            container = id,
            "still running after {grace:?}: SIGKILL"
        );
        let _ = d
            .container_kill(
                id,
                &ContainerKillParams {
                    signal: Some("SIGKILL".into()),
                },
            )
            .await;
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            d.container_wait(id, &wait_params),
        )
        .await;
    }
}

/// Log target of task output lines, so operators can turn them on alone
/// (`OZ_LOG=info,task_output=debug`).
pub const TASK_OUTPUT: &str = "task_output";

/// Logs the tail of the container's output (bounded): at warn level for a
/// failed task, at debug level otherwise. Returns it.
async fn log_output(rt: &DockerRuntime, id: &str, task_id: &str, failed: bool) -> String {
    let params = crate::docker::LogsOptions {
        tail: Some(LOG_TAIL_LINES),
        ..Default::default()
    };
    let mut out = Vec::new();
    match rt.docker.logs(id, &params).await {
        Ok(mut stream) => {
            while let Some(Ok(chunk)) = stream.next().await {
                out.extend_from_slice(&chunk.data);
                if out.len() > LOG_LIMIT_BYTES {
                    out.drain(..out.len() - LOG_LIMIT_BYTES);
                }
            }
        }
        Err(e) => tracing::warn!(task_id, "could not read the task container's output: {e}"),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    for line in text.lines() {
        if failed {
            tracing::warn!(target: TASK_OUTPUT, task_id, "task output: {line}");
        } else {
            tracing::debug!(target: TASK_OUTPUT, task_id, "task output: {line}");
        }
    }
    text
}

/// Marks a container kept by `--no-cleanup` (its task is done and reported)
/// so the start-up sweep of a later run does not take it for an orphan.
pub async fn keep(rt: &DockerRuntime, id: &str, task_id: &str) {
    let name = match rt.docker.container_inspect(id, &Default::default()).await {
        Ok(c) => c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        Err(e) => {
            tracing::warn!(
                task_id,
                container = id,
                "could not inspect the kept container: {e}"
            );
            return;
        }
    };
    let params = ContainerRenameParams {
        name: format!("{name}{}", super::orphans::KEPT_SUFFIX),
    };
    if let Err(e) = rt.docker.container_rename(id, &params).await {
        tracing::warn!(
            task_id,
            container = id,
            "could not mark the kept container: {e}"
        );
    }
}

pub async fn remove(rt: &DockerRuntime, id: &str, task_id: &str) {
    let params = ContainerDeleteParams {
        force: Some(true),
        v: Some(false),
        ..Default::default()
    };
    match rt.docker.container_delete(id, &params).await {
        Ok(()) => tracing::debug!(task_id, container = id, "removed the task container"),
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
        Err(e) => tracing::warn!(
            task_id,
            container = id,
            "could not remove the task container: {e}"
        ),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
