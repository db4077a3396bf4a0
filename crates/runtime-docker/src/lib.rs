//! The Docker/Podman runtime: the container contract of docs/PROTOCOL.md over the
//! Engine API. Phases live in their own modules (images, sidecar volumes,
//! the task container, orphans); this file sequences them and guarantees
//! cleanup whatever happens.

pub mod config;
mod failure;
pub mod glob;
pub mod identity;
pub mod image_policy;
mod images;
pub mod libc_check;
pub mod network;
pub mod oom;
pub mod orphans;
mod outage;
pub mod resources;
mod sidecar_name;
mod sidecars;
pub mod spec;
pub mod startup;
pub mod tar;
mod task_container;
pub mod volume_spec;

use failure::Fail;
use futures_util::future::BoxFuture;
use identity::WorkerIdentity;
use oz_docker_engine::Docker;
use oz_runtime::{CheckError, Invocation, RunOutcome, Runtime, TaskContext, TaskRef};
use spec::ContainerSpec;
use tokio_util::sync::CancellationToken;

pub use config::Settings;
pub use oz_runtime::InvalidSetting;
pub use sidecar_name::sidecar_volume_name;

/// The first Engine API version with image mounts (`HostConfig.Mounts`
/// `Type: image`, Docker 28).
pub const IMAGE_MOUNT_API: oz_docker_engine::transport::negotiate::ApiVersion =
    oz_docker_engine::transport::negotiate::ApiVersion::new(1, 48);

/// How read-only sidecars reach the task container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// Docker with API ≥ 1.48: the image's filesystem mounted directly, no copy.
    ImageMount,
    /// Older daemons and Podman: copied once into a named volume.
    VolumeCopy,
}

impl SidecarMode {
    /// Image mounts need Docker's API 1.48; Podman's compatible API (1.41)
    /// and older Docker daemons get volume copies. Read-write sidecars are
    /// always copies (an image mount is read-only).
    pub fn for_daemon(
        kind: oz_docker_engine::transport::negotiate::EngineKind,
        api: oz_docker_engine::transport::negotiate::ApiVersion,
    ) -> SidecarMode {
        if kind == oz_docker_engine::transport::negotiate::EngineKind::Docker
            && api >= IMAGE_MOUNT_API
        {
            SidecarMode::ImageMount
        } else {
            SidecarMode::VolumeCopy
        }
    }

    /// One line for `check` and the start-up log.
    pub fn describe(self, api: oz_docker_engine::transport::negotiate::ApiVersion) -> String {
        match self {
            SidecarMode::ImageMount => format!(
                "read-only sidecars are image mounts (API {api} >= {IMAGE_MOUNT_API}: no copy); read-write ones are copied into volumes"
            ),
            SidecarMode::VolumeCopy => format!(
                "sidecars are copied once into named volumes (image mounts need Docker with API {IMAGE_MOUNT_API}; this daemon has {api})"
            ),
        }
    }
}

/// Where one sidecar's filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidecarSource {
    /// A filled named volume.
    Volume(String),
    /// An image id, mounted read-only.
    Image(String),
}

pub struct DockerRuntime {
    docker: Docker,
    identity: WorkerIdentity,
    settings: Settings,
    /// The daemon's platform as Go names it (`linux`, `amd64`).
    os: String,
    arch: String,
    engine: String,
    is_podman: bool,
    sidecar_mode: SidecarMode,
    sidecars: sidecars::SidecarVolumes,
    libc_passed: libc_check::PassedChecks,
}

/// Why the Docker runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The daemon could not be resolved, reached or negotiated with; the
    /// Docker error names the endpoint and what to check.
    #[error("{0}")]
    Connect(#[source] oz_docker_engine::DockerError),
    /// The daemon runs a platform tasks cannot use.
    #[error("the Docker daemon at {host} runs {os}/{arch}; tasks need a linux/amd64 or linux/arm64 daemon")]
    Platform {
        host: String,
        os: String,
        arch: String,
    },
}

impl DockerRuntime {
    /// Resolves the daemon as the Docker CLI would (DOCKER_HOST, contexts,
    /// default socket), negotiates the API version and checks the platform.
    pub async fn from_environment(
        ctx: &oz_runtime::RuntimeContext,
        settings: Settings,
    ) -> Result<Self, StartError> {
        let docker =
            Docker::connect(&oz_docker_engine::transport::endpoint::EnvSnapshot::from_process())
                .await
                .map_err(StartError::Connect)?;
        Self::new(docker, &ctx.worker_id, settings).await
    }

    /// A runtime on a connected daemon; refuses a daemon that cannot run
    /// linux/amd64 or linux/arm64 tasks.
    pub async fn new(
        docker: Docker,
        worker_id: &str,
        settings: Settings,
    ) -> Result<Self, StartError> {
        let platform = docker.platform().clone();
        let (os, arch) = (platform.os.clone(), platform.arch.clone());
        if os != "linux" || !(arch == "amd64" || arch == "arm64") {
            return Err(StartError::Platform {
                host: docker.endpoint().host.to_string(),
                os,
                arch,
            });
        }
        let engine = format!(
            "{} {} (API {}, {}) at {} ({})",
            docker.engine().kind,
            docker.engine().version,
            docker.api_version(),
            platform,
            docker.endpoint().host,
            docker.endpoint().source
        );
        let is_podman =
            docker.engine().kind == oz_docker_engine::transport::negotiate::EngineKind::Podman;
        let sidecar_mode = SidecarMode::for_daemon(docker.engine().kind, docker.api_version());
        tracing::info!("{}", sidecar_mode.describe(docker.api_version()));
        Ok(DockerRuntime {
            docker,
            identity: WorkerIdentity::current(worker_id),
            settings,
            os,
            arch,
            engine,
            is_podman,
            sidecar_mode,
            sidecars: sidecars::SidecarVolumes::default(),
            libc_passed: libc_check::PassedChecks::default(),
        })
    }

    pub fn sidecar_mode(&self) -> SidecarMode {
        self.sidecar_mode
    }

    pub fn identity(&self) -> &WorkerIdentity {
        &self.identity
    }

    fn platform(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }

    async fn run_phases(
        &self,
        spec: &ContainerSpec,
        stop: &CancellationToken,
        force: &CancellationToken,
        output: &oz_runtime::OutputSink,
        created: &mut Option<String>,
    ) -> Result<(), Fail> {
        let image = failure::until_stopped(stop, images::ensure(self, &spec.image)).await?;
        let mut volumes = Vec::with_capacity(spec.sidecars.len());
        for sidecar in &spec.sidecars {
            if self.sidecar_mode == SidecarMode::ImageMount && sidecar.read_only {
                // Mounted straight from the image: nothing to copy.
                let info =
                    failure::until_stopped(stop, images::ensure(self, &sidecar.image)).await?;
                volumes.push(SidecarSource::Image(info.id));
                continue;
            }
            // Not raced against `stop`: filling creates helper containers that
            // must be removed, so it runs to its (bounded) end.
            volumes.push(SidecarSource::Volume(
                self.sidecars.ensure(self, &sidecar.image, &image).await?,
            ));
            if stop.is_cancelled() {
                return Err(Fail::Stopped);
            }
        }
        task_container::run(self, spec, &image, &volumes, (stop, force), output, created).await
    }
}

impl DockerRuntime {
    async fn run_task(&self, inv: Invocation, ctx: TaskContext) -> RunOutcome {
        let spec = match spec::build(&inv, &self.settings) {
            Ok(s) => s,
            Err(f) => return RunOutcome::Failed(f),
        };
        let mut created = None;
        let result = self
            .run_phases(&spec, &ctx.stop, &ctx.force, &ctx.output, &mut created)
            .await;
        // Cleanup runs whatever the outcome and is not tied to `stop`: a
        // cancelled task still has its container removed.
        if let Some(id) = created {
            if self.settings.cleanup {
                task_container::remove(self, &id, &spec.task.task_id).await;
            } else {
                tracing::info!(
                    task_id = spec.task.task_id,
                    container = id,
                    "keeping the task container (--no-cleanup)"
                );
                task_container::keep(self, &id, &spec.task.task_id).await;
            }
        }
        match result {
            Ok(()) => RunOutcome::Completed,
            Err(Fail::Stopped) => RunOutcome::Stopped,
            Err(Fail::Failed {
                reason,
                message,
                exit_code,
            }) => RunOutcome::Failed(oz_runtime::Failure {
                reason,
                message,
                exit_code,
                details: None,
            }),
        }
    }
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn describe(&self) -> String {
        self.engine.clone()
    }

    fn run(&self, invocation: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.run_task(invocation, ctx))
    }

    fn recover(&self, unfinished: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
        Box::pin(async move {
            match orphans::recover(self, &unfinished).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("could not look for containers left by an earlier run: {e}");
                    Vec::new()
                }
            }
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), CheckError>> {
        Box::pin(async move {
            self.docker
                .system_ping()
                .await
                .map(|_| ())
                .map_err(|e| CheckError::Unreachable {
                    context: "",
                    source: Box::new(e),
                })
        })
    }
}
