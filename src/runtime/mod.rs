//! The narrow interface between the worker core and whatever runs a task.
//!
//! Architecture invariant: nothing in this module's public surface names a
//! Docker type. The worker core builds a [`TaskSpec`] (image, mounts,
//! environment, argv) and gets back a [`TaskOutcome`]; Docker and Podman are
//! one implementation (`runtime::docker`), Kubernetes or a plain command
//! dispatcher can be others.

pub mod docker;

use crate::protocol::FailureReason;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// A task as the runtime sees it: fully resolved, nothing left to decide.
#[derive(Clone, PartialEq)]
pub struct TaskSpec {
    pub task_id: String,
    pub execution_id: Option<String>,
    pub image: String,
    /// Image filesystems mounted into the task, the agent first.
    pub sidecars: Vec<SidecarMount>,
    /// In order; later entries win for a repeated name. Values may be secret.
    pub env: Vec<(String, String)>,
    /// argv of the agent process, `argv[0]` included.
    pub command: Vec<String>,
    pub working_dir: String,
    pub binds: Vec<BindMount>,
    pub limits: ResourceLimits,
}

impl std::fmt::Debug for TaskSpec {
    // Environment values are secrets: list names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("task_id", &self.task_id)
            .field("execution_id", &self.execution_id)
            .field("image", &self.image)
            .field("sidecars", &self.sidecars)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("command", &self.command)
            .field("working_dir", &self.working_dir)
            .field("binds", &self.binds)
            .field("limits", &self.limits)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarMount {
    pub image: String,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    pub cpus: Option<u32>,
    pub memory_bytes: Option<i64>,
}

/// When a runtime fetches images from their registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Every time (the reference worker's behaviour).
    Always,
    /// Only when the image is not already present.
    IfNotPresent,
    /// Never: an absent image fails the task.
    Never,
}

/// How a task ended, from the runtime's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    Failed {
        reason: FailureReason,
        message: String,
        exit_code: Option<i64>,
    },
    /// The stop token fired and the task was stopped; the core knows why
    /// (server cancellation or shutdown) and reports accordingly.
    Stopped,
}

/// A task a dead earlier instance of this worker had claimed, found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredTask {
    pub task_id: String,
    pub outcome: TaskOutcome,
}

/// What a runtime can do. Implementations are shared across concurrent tasks.
pub trait TaskRuntime: Send + Sync + 'static {
    /// One line for start-up logs, e.g. "docker 20.10.24 (API 1.41) at unix:///var/run/docker.sock".
    fn describe(&self) -> String;

    /// Short backend name for metrics and the `oz_worker_info` label.
    fn backend_name(&self) -> &'static str;

    /// Removes what a crashed previous instance of this worker left behind,
    /// and returns how each task it was running ended, so the core can
    /// report them instead of leaving them to the server's timeout.
    fn recover_orphans(&self) -> impl Future<Output = Result<Vec<RecoveredTask>, String>> + Send;

    /// Runs one task to its end. When `stop` fires the runtime stops the task
    /// (politely, then forcibly) and returns [`TaskOutcome::Stopped`]. Cleanup
    /// happens before this returns, whatever the outcome.
    fn run(
        &self,
        spec: TaskSpec,
        stop: CancellationToken,
    ) -> impl Future<Output = TaskOutcome> + Send;
}
