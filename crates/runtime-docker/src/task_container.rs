//! The task container: create with the contract's settings, refuse musl
//! images before the agent starts (see `libc_check`), run to the end (or stop it: SIGTERM, a
//! grace period, SIGKILL), and classify how it ended.

use super::failure::Fail;
use super::images::ImageInfo;
use super::spec::ContainerSpec;
use super::DockerRuntime;
use futures_util::StreamExt;
use oz_docker_engine::models::*;
use oz_docker_engine::params::*;
use oz_protocol::FailureReason;
use tokio_util::sync::CancellationToken;

/// The most output logged for a failed task.
const LOG_TAIL_LINES: u64 = 200;
const LOG_LIMIT_BYTES: usize = 64 * 1024;

pub async fn run(
    rt: &DockerRuntime,
    spec: &ContainerSpec,
    image: &ImageInfo,
    sidecar_volumes: &[super::SidecarSource],
    (stop, force): (&CancellationToken, &CancellationToken),
    output: &oz_runtime::OutputSink,
    created: &mut Option<String>,
) -> Result<(), Fail> {
    let d = &rt.docker;
    let body = create_body(rt, spec, image, sidecar_volumes);
    let name = format!(
        "oz-task-{}-{}",
        sanitize(&spec.task.task_id),
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
    let id = response.id;
    *created = Some(id.clone());
    for w in response.warnings {
        tracing::warn!(task_id = spec.task.task_id, "daemon warning on create: {w}");
    }

    let program = spec.command.first().map(String::as_str);
    let sources: Vec<String> = sidecar_volumes
        .iter()
        .map(|s| match s {
            super::SidecarSource::Volume(v) => format!("volume:{v}"),
            super::SidecarSource::Image(i) => format!("image:{i}"),
        })
        .collect();
    let checked = super::libc_check::PassedChecks::key(&image.id, program, &sources);
    if !rt.libc_passed.contains(&checked) {
        super::libc_check::refuse_musl(d, &id, program, &rt.arch, &image.reference).await?;
        // Without an id the image is not known by content: check it each time.
        if !image.id.is_empty() {
            rt.libc_passed.insert(checked);
        }
    }
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
        task_id = spec.task.task_id,
        container = id,
        "task container started"
    );

    let follower = output
        .is_wanted()
        .then(|| follow_output(d.clone(), id.clone(), output.clone()));
    let exit = tokio::select! {
        w = super::outage::wait_exit(rt, &id, &spec.task.task_id) => w,
        _ = stop.cancelled() => {
            stop_container(rt, &id, &spec.task.task_id, force).await;
            Err(Fail::Stopped)
        }
    };
    if let Some(f) = follower {
        // The stream ends with the container; do not wait on a stuck one.
        let abort = f.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(2), f)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let exit = exit?;
    let code = exit.code;
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
    let inferred_oom = rt.is_podman && code == 137 && spec.resources.memory.is_some();
    // A Docker OOM kill whose event crossed the exit (see `oom`).
    let logged_oom = !reported_oom
        && !rt.is_podman
        && code == 137
        && spec.resources.memory.is_some()
        && super::oom::oom_event_logged(d, &id).await;
    let oom = reported_oom || inferred_oom || logged_oom;
    // A signal exit we did not cause, with the daemon gone right after it:
    // the daemon stopped and took the container down (dockerd stops every
    // container on its way out). Without live-restore, a daemon restarted
    // while a container ran also kills it (137).
    if code > 128 && !oom && (exit.outage || !super::outage::daemon_stays_up(d).await) {
        let how = if exit.outage {
            "was restarted (or crashed) while the task ran"
        } else {
            "stopped while the task ran"
        };
        return Err(Fail::Failed {
            reason: FailureReason::ContainerExit,
            message: format!(
                "the Docker daemon at {} {how} and killed the task's container (exit code {code}); the agent did not finish",
                d.endpoint().host
            ),
            exit_code: Some(code),
        });
    }
    if code == 0 && !oom {
        // Successful output is only read when someone asked to see it.
        if tracing::enabled!(target: TASK_OUTPUT, tracing::Level::DEBUG) {
            log_output(rt, &id, &spec.task.task_id, false).await;
        }
        return Ok(());
    }
    let tail = log_output(rt, &id, &spec.task.task_id, true).await;
    let last = tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| truncate(&oz_foundation::escape::escape_control(l.trim()), 300));
    let detail = last
        .map(|l| format!("; last output: {l}"))
        .unwrap_or_default();
    let (reason, message) = if oom {
        let limit = spec
            .resources
            .memory
            .map(|b| format!(" of {}", super::resources::format_bytes(b)))
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
    spec: &ContainerSpec,
    image: &ImageInfo,
    volumes: &[super::SidecarSource],
) -> ContainerCreateBody {
    use super::SidecarSource;
    let mut binds: Vec<String> = Vec::new();
    let mut mounts: Vec<Mount> = Vec::new();
    for (s, source) in spec.sidecars.iter().zip(volumes) {
        match source {
            SidecarSource::Volume(v) => binds.push(format!(
                "{v}:{}:{}",
                s.mount_path,
                if s.read_only { "ro" } else { "rw" }
            )),
            // Only ever built for daemons with API >= 1.48 (SidecarMode).
            SidecarSource::Image(id) => mounts.push(Mount {
                r#type: Some(MountType::Image),
                source: Some(id.clone()),
                target: Some(s.mount_path.clone()),
                read_only: Some(true),
                ..Default::default()
            }),
        }
    }
    binds.extend(spec.binds.iter().cloned());
    let (entrypoint, cmd) = match spec.command.split_first() {
        Some((first, rest)) => (Some(vec![first.clone()]), Some(rest.to_vec())),
        None => (None, None),
    };
    ContainerCreateBody {
        image: Some(image.id.clone()),
        entrypoint,
        cmd,
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose_str()))
                .collect(),
        ),
        working_dir: Some(spec.working_dir.clone()),
        labels: Some(rt.identity.labels(
            "task",
            Some((&spec.task.task_id, spec.task.execution_id.as_deref())),
        )),
        tty: Some(TASK_TTY),
        host_config: Some(HostConfig {
            binds: Some(binds),
            mounts: (!mounts.is_empty()).then_some(mounts),
            nano_cpus: spec.resources.nano_cpus,
            memory: spec.resources.memory,
            memory_swap: spec.resources.memory_swap,
            pids_limit: spec.resources.pids_limit,
            oom_score_adj: Some(rt.settings.oom_score_adj),
            // Unset for the default bridge: the daemon's own default, as before.
            network_mode: (rt.settings.network.mode != super::network::NetworkMode::Bridge)
                .then(|| rt.settings.network.mode.host_config_value()),
            dns: (!rt.settings.network.dns.is_empty()).then(|| {
                rt.settings
                    .network
                    .dns
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect()
            }),
            dns_search: (!rt.settings.network.dns_search.is_empty())
                .then(|| rt.settings.network.dns_search.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SIGTERM, then SIGKILL after the grace period (or at once when `force`
/// fires) if it is still running.
async fn stop_container(rt: &DockerRuntime, id: &str, task_id: &str, force: &CancellationToken) {
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
    let exited = tokio::select! {
        r = tokio::time::timeout(grace, d.container_wait(id, &wait_params)) => r.is_ok(),
        _ = force.cancelled() => false,
    };
    if !exited {
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

/// Streams the container's output into the live-output sink until the
/// container stops (the daemon ends the stream then).
fn follow_output(
    d: oz_docker_engine::Docker,
    id: String,
    sink: oz_runtime::OutputSink,
) -> tokio::task::JoinHandle<()> {
    use oz_docker_engine::stream::LogSource;
    use oz_runtime::OutputStream;
    let follow = async move {
        let params = oz_docker_engine::LogsOptions {
            follow: true,
            tty: Some(TASK_TTY),
            ..Default::default()
        };
        let mut stream = match d.logs(&id, &params).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = id, "cannot follow the task's output: {e}");
                return;
            }
        };
        while let Some(Ok(chunk)) = stream.next().await {
            let to = match chunk.source {
                LogSource::Stderr => OutputStream::Stderr,
                _ => OutputStream::Stdout,
            };
            sink.write(to, &chunk.data);
        }
    };
    tokio::spawn(tracing::Instrument::in_current_span(follow))
}

/// Task containers have no TTY: their output is multiplexed stdout and
/// stderr (so the log reads need not ask).
const TASK_TTY: bool = false;

/// Log target of task output lines, so operators can turn them on alone
/// (`OZ_LOG=info,task_output=debug`).
pub const TASK_OUTPUT: &str = "task_output";

/// Logs the tail of the container's output (bounded): at warn level for a
/// failed task, at debug level otherwise. Returns it.
async fn log_output(rt: &DockerRuntime, id: &str, task_id: &str, failed: bool) -> String {
    let params = oz_docker_engine::LogsOptions {
        tail: Some(LOG_TAIL_LINES),
        tty: Some(TASK_TTY),
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
            tracing::warn!(target: TASK_OUTPUT, task_id, "task output: {}", oz_foundation::escape::escape_control(line));
        } else {
            tracing::debug!(target: TASK_OUTPUT, task_id, "task output: {}", oz_foundation::escape::escape_control(line));
        }
    }
    text
}

/// Marks a container kept by `--no-cleanup` (its task is done and reported)
/// so the start-up sweep of a later run does not take it for an orphan.
pub async fn keep(rt: &DockerRuntime, id: &str, task_id: &str) {
    let name = match rt.docker.container_inspect(id, &Default::default()).await {
        Ok(c) => c.name.trim_start_matches('/').to_string(),
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
    super::outage::remove(&rt.docker, id, task_id).await
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
