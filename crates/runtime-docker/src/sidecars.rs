//! Sidecar filesystems in named volumes.
//!
//! Filling needs no shell or tar inside the sidecar image: a container created
//! from the image (never started) is exported, and the tar stream goes
//! straight into `PUT /containers/{id}/archive` of a second created container
//! that mounts the volume. Nothing is held in memory.
//!
//! Two guards keep a half-filled volume from ever being mounted:
//! - the fill container has a fixed name derived from the volume, and the
//!   daemon allows one container per name, so across every worker sharing the
//!   daemon at most one fill runs per volume (the others wait for it);
//! - a marker file, `.oz-sidecar-ready`, is written last; a volume without it
//!   is (re)filled, never used. A fill interrupted by a crash leaves no marker.
//!
//! Helper containers are removed on every path, failure included; a crash
//! leaves them labelled, and the next start of that worker removes them.

use super::failure::Fail;
use super::images::{self, ImageInfo};
use super::{sidecar_volume_name, tar, DockerRuntime};
use futures_util::StreamExt;
use oz_docker_engine::models::{ContainerCreateBody, HostConfig, VolumeCreateOptions};
use oz_docker_engine::params::ContainerCreateParams;
use oz_protocol::FailureReason;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const READY_MARKER: &str = ".oz-sidecar-ready";
const FILL_MOUNT: &str = "/oz-fill";
/// A fill lock older than this is presumed abandoned by a worker on another host.
const STALE_FILL: Duration = Duration::from_secs(15 * 60);
const WAIT_FOR_OTHER_FILL: Duration = Duration::from_secs(20 * 60);

#[derive(Default)]
pub struct SidecarVolumes {
    /// Volumes verified complete by this process; they never become incomplete.
    ready: Mutex<HashSet<String>>,
    /// One in-process lock per volume so concurrent tasks queue here instead
    /// of on the daemon.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SidecarVolumes {
    /// The name of a complete volume holding `image`'s filesystem.
    /// `fill_with` is the image of the fill container that mounts the volume
    /// while it is written: the task's image, already present, because a
    /// container of the (often large) sidecar image costs a copy of its whole
    /// filesystem on storage drivers such as vfs (≈ 150 ms for 200 MB on
    /// Docker 28, measured by benches/cold_start).
    pub async fn ensure(
        &self,
        rt: &DockerRuntime,
        image: &str,
        fill_with: &ImageInfo,
    ) -> Result<String, Fail> {
        let info = images::ensure(rt, image).await.map_err(|f| match f {
            Fail::Failed {
                reason,
                message,
                exit_code,
            } if reason == FailureReason::ImagePull || reason == FailureReason::InvalidImage => {
                Fail::Failed {
                    reason,
                    message: format!("sidecar image: {message}"),
                    exit_code,
                }
            }
            other => other,
        })?;
        let volume = sidecar_volume_name(&info.parsed.familiar_name(), &info.id);
        if self.ready.lock().unwrap().contains(&volume) {
            return Ok(volume);
        }
        let lock = self
            .locks
            .lock()
            .unwrap()
            .entry(volume.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if self.ready.lock().unwrap().contains(&volume) {
            return Ok(volume);
        }
        fill(rt, &info, &volume, fill_with)
            .await
            .map_err(|message| {
                Fail::new(
                    FailureReason::SidecarPrep,
                    format!("preparing sidecar {image} in volume {volume}: {message}"),
                )
            })?;
        self.ready.lock().unwrap().insert(volume.clone());
        Ok(volume)
    }
}

async fn fill(
    rt: &DockerRuntime,
    image: &ImageInfo,
    volume: &str,
    fill_with: &ImageInfo,
) -> Result<(), FillError> {
    let d = &rt.docker;
    let labels = rt.identity.labels("sidecar-volume", None);
    d.volume_create(&VolumeCreateOptions {
        name: Some(volume.into()),
        labels: Some(labels),
        ..Default::default()
    })
    .await
    .map(drop)
    .or_else(|e| {
        // Docker's create is idempotent; Podman 4 answers a concurrent create
        // of the same name with 500 "volume already exists". Either way the
        // volume is there, and the fill lock below decides who fills it.
        if e.status().map(|s| s.as_u16()) == Some(409) || e.message().contains("already exists") {
            Ok(())
        } else {
            Err(FillError::at("creating the volume")(e))
        }
    })?;

    let lock_name = format!("oz-fill-{volume}");
    let fill_id = acquire_fill_lock(rt, fill_with, volume, &lock_name).await?;
    let result = fill_locked(rt, image, &fill_id).await;
    remove_quietly(rt, &fill_id).await;
    result
}

/// Creates the named fill container (of `fill_with`), waiting while another
/// worker holds it.
async fn acquire_fill_lock(
    rt: &DockerRuntime,
    fill_with: &ImageInfo,
    volume: &str,
    name: &str,
) -> Result<String, FillError> {
    let started = Instant::now();
    loop {
        let body = helper_body(
            rt,
            fill_with,
            "sidecar-fill",
            Some(format!("{volume}:{FILL_MOUNT}")),
        );
        let params = ContainerCreateParams {
            name: Some(name.into()),
            ..Default::default()
        };
        match rt.docker.container_create(&params, &body).await {
            Ok(created) => return Ok(created.id),
            Err(e) if is_name_conflict(&e) => {
                if started.elapsed() > WAIT_FOR_OTHER_FILL {
                    return Err(FillError::Busy(WAIT_FOR_OTHER_FILL));
                }
                if lock_is_abandoned(rt, name).await {
                    tracing::warn!(
                        volume,
                        "removing an abandoned sidecar fill container {name}"
                    );
                    remove_quietly(rt, name).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Err(e) => return Err(FillError::at("creating the fill container")(e)),
        }
    }
}

/// Docker answers a taken name with 409; Podman 4 with 500 "already in use".
fn is_name_conflict(e: &oz_docker_engine::DockerError) -> bool {
    e.status().map(|s| s.as_u16()) == Some(409) || e.message().contains("already in use")
}

async fn lock_is_abandoned(rt: &DockerRuntime, name: &str) -> bool {
    let Ok(c) = rt.docker.container_inspect(name, &Default::default()).await else {
        return false;
    };
    // Without labels no worker made it, so no owner can have died: only
    // its age below can say it is abandoned.
    let owner_died = match c.config.and_then(|c| c.labels) {
        Some(labels) => rt
            .identity
            .is_orphan(&labels, &super::identity::process_alive),
        None => false,
    };
    if owner_died {
        return true;
    }
    let created = c.created.as_deref().and_then(parse_rfc3339_secs);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    created.is_some_and(|t| now.saturating_sub(t) > STALE_FILL.as_secs())
}

async fn fill_locked(
    rt: &DockerRuntime,
    image: &ImageInfo,
    fill_id: &str,
) -> Result<(), FillError> {
    let d = &rt.docker;
    let marker = format!("{FILL_MOUNT}/{READY_MARKER}");
    if d.container_archive_info(
        fill_id,
        &oz_docker_engine::params::ContainerArchiveInfoParams {
            path: marker.clone(),
        },
    )
    .await
    .is_ok()
    {
        return Ok(()); // filled earlier, by us or another worker
    }
    tracing::info!(
        image = image.reference,
        "copying sidecar filesystem into its volume"
    );
    let source = d
        .container_create(
            &Default::default(),
            &helper_body(rt, image, "sidecar-export", None),
        )
        .await
        .map_err(FillError::at("creating the export container"))?
        .id;
    let copied = async {
        let export = d
            .container_export(&source)
            .await
            .map_err(FillError::at("exporting the image filesystem"))?;
        let body = export
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        let params = oz_docker_engine::params::PutContainerArchiveParams {
            path: FILL_MOUNT.into(),
            ..Default::default()
        };
        d.put_container_archive(fill_id, &params, body)
            .await
            .map_err(FillError::at("writing into the volume"))
    }
    .await;
    if let Err(e) = copied {
        remove_quietly(rt, &source).await;
        return Err(e);
    }
    let ready = tar::single_file(READY_MARKER, image.id.as_bytes(), 0o644);
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(ready)) }).boxed();
    let params = oz_docker_engine::params::PutContainerArchiveParams {
        path: FILL_MOUNT.into(),
        ..Default::default()
    };
    // The export container is done with: removed while the marker is written.
    let (marked, ()) = tokio::join!(
        d.put_container_archive(fill_id, &params, body),
        remove_quietly(rt, &source)
    );
    marked.map_err(FillError::at("marking the volume complete"))
}

/// Why a sidecar volume could not be filled; the task fails with
/// `SidecarPrep` and this as the end of its message.
#[derive(Debug, thiserror::Error)]
enum FillError {
    /// A call to the daemon failed while `step` (e.g. "creating the volume").
    #[error("{step}: {source}")]
    Daemon {
        step: &'static str,
        #[source]
        source: oz_docker_engine::DockerError,
    },
    /// Another worker has held the volume's fill lock for longer than we wait.
    #[error("another worker has been filling it for over {0:?}")]
    Busy(Duration),
}

impl FillError {
    fn at(step: &'static str) -> impl FnOnce(oz_docker_engine::DockerError) -> FillError {
        move |source| FillError::Daemon { step, source }
    }
}

/// A container that is created but never started: only its filesystem or
/// mounts are used. Sidecar images often have no command, so give one.
fn helper_body(
    rt: &DockerRuntime,
    image: &ImageInfo,
    role: &str,
    bind: Option<String>,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.id.clone()),
        cmd: Some(vec!["/oz-helper-never-started".into()]),
        labels: Some(rt.identity.labels(role, None)),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            binds: bind.map(|b| vec![b]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn remove_quietly(rt: &DockerRuntime, id: &str) {
    let params = oz_docker_engine::params::ContainerDeleteParams {
        force: Some(true),
        ..Default::default()
    };
    if let Err(e) = rt.docker.container_delete(id, &params).await {
        if e.status().map(|s| s.as_u16()) != Some(404) {
            tracing::warn!(container = id, "could not remove helper container: {e}");
        }
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as Docker writes
/// them (`2024-05-01T12:34:56.123456789Z`); None when it is not one.
fn parse_rfc3339_secs(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + se).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(
            super::parse_rfc3339_secs("1970-01-02T00:00:01Z"),
            Some(86401)
        );
        assert_eq!(
            super::parse_rfc3339_secs("2024-03-01T12:00:00.123456789Z"),
            Some(1709294400)
        );
        assert_eq!(super::parse_rfc3339_secs("garbage"), None);
    }
}
