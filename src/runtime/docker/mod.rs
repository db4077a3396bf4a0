//! The Docker/Podman runtime: the container contract of PROTOCOL.md over the
//! Engine API. Phases live in their own modules (images, sidecar volumes,
//! the task container, orphans); this file sequences them and guarantees
//! cleanup whatever happens.

mod failure;
pub mod identity;
mod images;
pub mod libc_check;
mod orphans;
mod sidecar_name;
mod sidecars;
pub mod tar;
mod task_container;
pub mod volume_spec;

use crate::docker::Docker;
use crate::runtime::PullPolicy;
use crate::runtime::{TaskOutcome, TaskRuntime, TaskSpec};
use failure::Fail;
use identity::ProcessIdentity;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use sidecar_name::sidecar_volume_name;

#[derive(Debug, Clone)]
pub struct Settings {
    pub cleanup: bool,
    pub pull_policy: PullPolicy,
    pub stop_grace_period: Duration,
}

pub struct DockerRuntime {
    docker: Docker,
    identity: ProcessIdentity,
    settings: Settings,
    /// The daemon's platform as Go names it (`linux`, `amd64`).
    os: String,
    arch: String,
    engine: String,
    is_podman: bool,
    sidecars: sidecars::SidecarVolumes,
}

impl DockerRuntime {
    /// Resolves the daemon as the Docker CLI would (DOCKER_HOST, contexts,
    /// default socket), negotiates the API version and checks the platform.
    pub async fn from_environment(worker_id: &str, settings: Settings) -> Result<Self, String> {
        let docker = Docker::connect(&crate::transport::endpoint::EnvSnapshot::from_process())
            .await
            .map_err(|e| e.to_string())?;
        Self::new(docker, worker_id, settings).await
    }

    pub async fn new(docker: Docker, worker_id: &str, settings: Settings) -> Result<Self, String> {
        let platform = docker.platform().clone();
        let (os, arch) = (platform.os.clone(), platform.arch.clone());
        if os != "linux" || !(arch == "amd64" || arch == "arm64") {
            return Err(format!(
                "the Docker daemon at {} runs {os}/{arch}; tasks need a linux/amd64 or linux/arm64 daemon",
                docker.endpoint().host
            ));
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
        let is_podman = docker.engine().kind == crate::transport::negotiate::EngineKind::Podman;
        Ok(DockerRuntime {
            docker,
            identity: ProcessIdentity::current(worker_id),
            settings,
            os,
            arch,
            engine,
            is_podman,
            sidecars: sidecars::SidecarVolumes::default(),
        })
    }

    pub fn identity(&self) -> &ProcessIdentity {
        &self.identity
    }

    fn platform(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }

    async fn run_phases(
        &self,
        spec: &TaskSpec,
        stop: &CancellationToken,
        created: &mut Option<String>,
    ) -> Result<(), Fail> {
        let image = failure::until_stopped(stop, images::ensure(self, &spec.image)).await?;
        let mut volumes = Vec::with_capacity(spec.sidecars.len());
        for sidecar in &spec.sidecars {
            // Not raced against `stop`: filling creates helper containers that
            // must be removed, so it runs to its (bounded) end.
            volumes.push(self.sidecars.ensure(self, &sidecar.image).await?);
            if stop.is_cancelled() {
                return Err(Fail::Stopped);
            }
        }
        task_container::run(self, spec, &image, &volumes, stop, created).await
    }
}

impl TaskRuntime for DockerRuntime {
    fn describe(&self) -> String {
        self.engine.clone()
    }

    fn backend_name(&self) -> &'static str {
        "docker"
    }

    async fn recover_orphans(&self) -> Result<Vec<crate::runtime::RecoveredTask>, String> {
        orphans::recover(self).await
    }

    async fn run(&self, spec: TaskSpec, stop: CancellationToken) -> TaskOutcome {
        let mut created = None;
        let result = self.run_phases(&spec, &stop, &mut created).await;
        // Cleanup runs whatever the outcome and is not tied to `stop`: a
        // cancelled task still has its container removed.
        if let Some(id) = created {
            if self.settings.cleanup {
                task_container::remove(self, &id, &spec.task_id).await;
            } else {
                tracing::info!(
                    task_id = spec.task_id,
                    container = id,
                    "keeping the task container (--no-cleanup)"
                );
                task_container::keep(self, &id, &spec.task_id).await;
            }
        }
        match result {
            Ok(()) => TaskOutcome::Succeeded,
            Err(Fail::Stopped) => TaskOutcome::Stopped,
            Err(Fail::Failed {
                reason,
                message,
                exit_code,
            }) => TaskOutcome::Failed {
                reason,
                message,
                exit_code,
            },
        }
    }
}
