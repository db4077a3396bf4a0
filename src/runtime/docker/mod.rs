//! The Docker/Podman runtime (Engine API).

use crate::runtime::{TaskOutcome, TaskRuntime, TaskSpec};
use crate::worker::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

pub struct DockerRuntime {}

impl DockerRuntime {
    pub async fn from_environment(_config: &WorkerConfig) -> Result<Self, String> {
        Err("the Docker runtime is not wired up yet".into())
    }
}

impl TaskRuntime for DockerRuntime {
    fn describe(&self) -> String {
        "docker".into()
    }
    fn backend_name(&self) -> &'static str {
        "docker"
    }
    async fn remove_orphans(&self) -> Result<usize, String> {
        Ok(0)
    }
    async fn run(&self, _spec: TaskSpec, _stop: CancellationToken) -> TaskOutcome {
        TaskOutcome::Stopped
    }
}
