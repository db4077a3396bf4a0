//! The narrow interface between the worker core and whatever runs a task.
//!
//! The core hands a runtime an [`Invocation`]: the agent's base arguments
//! (`agent run …`, without a program), the task environment, and what the
//! orchestrator asked for (image, sidecars, shape). Each runtime decides what
//! those mean to it: the Docker runtime prepends `/agent/entrypoint.sh`, picks
//! a default image and turns sidecars into volumes; the direct runtime runs
//! the host's `oz` in a workspace and ignores images; the command runtime
//! hands the whole invocation to an outside dispatcher. This is the Go
//! worker's backend seam (`internal/worker/backend.go`): `ExecuteTask`,
//! `CancelTask`, `PreservesTasksOnShutdown`, `Shutdown`.
//!
//! Architecture invariant: nothing here names a Docker (or any other
//! runtime's) type, and the worker core only ever sees `dyn Runtime`.

pub mod host;
mod invalid_setting;
pub mod live_groups;
pub mod liveness;
pub mod output;
pub mod process;
pub mod resource_limits;

pub use invalid_setting::InvalidSetting;

use futures_util::future::BoxFuture;
use oz_foundation::secret::Secret;
use oz_protocol::{FailureDetails, FailureReason, Task};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use output::{OutputSink, OutputStream};

/// Where the Go worker's Docker and Kubernetes backends mount the agent
/// sidecar (`sidecar_image`), and so where [`Invocation::sidecars`] puts it.
pub const AGENT_SIDECAR_MOUNT: &str = "/agent";

/// The default task image when neither the assignment nor the runtime names
/// one (the Go worker's `ubuntu:22.04`).
pub const DEFAULT_TASK_IMAGE: &str = "ubuntu:22.04";

/// One execution of one task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskRef {
    pub task_id: String,
    /// The orchestrator's execution id; `None` when the assignment had none.
    pub execution_id: Option<String>,
}

impl std::fmt::Display for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.execution_id {
            Some(e) => write!(f, "{} (execution {e})", self.task_id),
            None => f.write_str(&self.task_id),
        }
    }
}

/// Whether the core knows an execution already (its journal holds it, in
/// any state): [`Runtime::discover`] leaves those alone.
pub type Known<'a> = &'a (dyn Fn(&TaskRef) -> bool + Send + Sync);

/// An execution a runtime still holds for this worker id (running, or
/// ended without the core having seen it end) that the core may not know
/// of: its journal went with a lost state directory. Found at start-up by
/// [`Runtime::discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoptable {
    pub task: TaskRef,
    /// Where and how it was found, for logs (e.g. "Job oz-task-… (running;
    /// its worker process is gone)").
    pub found: String,
}

/// What the core hands a runtime: the Go worker's `TaskParams`.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub task: TaskRef,
    /// The task as the orchestrator sent it (the command runtime passes it on).
    pub spec: Task,
    /// `agent run …` without the program: each runtime prepends its own.
    pub base_args: Vec<String>,
    /// `TASK_ID`, `GIT_TERMINAL_PROMPT=0`, `GH_PROMPT_DISABLED=1`,
    /// `WARP_SERVER_ROOT_URL`, then the assignment's `env_vars`; names are
    /// unique. The operator's own entries (`-e`, a section's `environment`)
    /// belong to the runtime's settings, which apply them as the Go worker's
    /// backend of the same name does.
    pub env: Vec<(String, Secret)>,
    /// The assignment's `docker_image`, when it named one.
    pub image: Option<String>,
    /// The agent sidecar (`sidecar_image`) at [`AGENT_SIDECAR_MOUNT`] first,
    /// then `additional_sidecars`, as sent: unvalidated, because only a
    /// runtime that mounts them can say what a bad one is.
    pub sidecars: Vec<SidecarRequest>,
    pub limits: ResourceLimits,
    pub server_root_url: String,
    pub worker_id: String,
}

impl Invocation {
    /// The task environment as `(name, value)` pairs, values exposed: for the
    /// one place that hands them to the task.
    pub fn env_exposed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.expose_str()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarRequest {
    pub image: String,
    pub mount_path: String,
    pub read_write: bool,
}

/// The orchestrator's `instance_shape`, non-positive values already dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    pub cpus: Option<u32>,
    pub memory_bytes: Option<i64>,
}

/// When a runtime fetches images from their registry (Docker's
/// `--pull=always|missing|never`, Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Every time (the Go worker's Docker behaviour).
    Always,
    /// Only when the image is not already present.
    IfNotPresent,
    /// Never: an absent image fails the task.
    Never,
}

impl PullPolicy {
    /// `always`, `if-not-present` (Docker's `missing` too) or `never`;
    /// `source` names the flag or key for the error.
    pub fn parse(s: &str, source: &str) -> Result<PullPolicy, InvalidSetting> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "if-not-present" | "missing" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            other => Err(InvalidSetting::new(
                source,
                format!("unknown pull policy {other:?}; use always, if-not-present or never"),
            )),
        }
    }
}

/// Time between SIGTERM and SIGKILL when a task is stopped, unless configured.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a task failed: the reason goes on the wire as `failure_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    /// Human readable and actionable; never holds a secret.
    pub message: String,
    /// The process exit status, signals as 128+N.
    pub exit_code: Option<i64>,
    /// Structured facts for `failure_details` (the kubernetes runtime's).
    pub details: Option<Box<FailureDetails>>,
}

impl Failure {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            exit_code: None,
            details: None,
        }
    }
}

/// How a run ended, from the runtime's point of view (the Go worker's
/// `ExecuteTask` outcomes plus an explicit stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The agent exited 0: the core sends `task_completed`.
    Completed,
    Failed(Failure),
    /// The stop token fired and the task was stopped; the core knows why
    /// (server cancellation or shutdown) and reports accordingly.
    Stopped,
    /// Handed to an outside system that reports by itself (the command
    /// runtime's `dispatch_command` succeeded): nothing more is sent for it
    /// and its slot is freed. The Go worker's `Spawned` outcome; counted as
    /// `result=dispatched`.
    Spawned,
}

/// What a run gets besides its invocation.
pub struct TaskContext {
    /// Fires when the task must stop (server cancellation or worker
    /// shutdown). The runtime stops the task politely, then forcibly, and
    /// returns [`RunOutcome::Stopped`].
    pub stop: CancellationToken,
    /// Fires after `stop` when there is no time left (the worker's shutdown
    /// deadline passed): skip what remains of the grace period and kill.
    pub force: CancellationToken,
    /// Where the task's output goes while it runs (live output); a no-op
    /// sink when nobody asked for it.
    pub output: OutputSink,
}

/// Given to each runtime when it is built.
#[derive(Debug, Clone)]
pub struct RuntimeContext {
    pub worker_id: String,
    /// A private folder (0700) this runtime may keep state in across
    /// restarts of the worker (under `--state-dir`).
    pub state_dir: PathBuf,
}

/// What a runtime can do. Implementations are shared across concurrent tasks.
pub trait Runtime: Send + Sync + 'static {
    /// `docker`, `direct` or `command`: the `--backend` value, the metrics'
    /// `backend` label.
    fn name(&self) -> &'static str;

    /// One line for start-up logs, e.g. "docker 20.10.24 (API 1.41) at unix:///var/run/docker.sock".
    fn describe(&self) -> String;

    /// Whether tasks keep running when the worker shuts down (the Go
    /// worker's `PreservesTasksOnShutdown`: true for dispatching runtimes).
    /// When false the core stops every task at shutdown and reports it
    /// `graceful_shutdown`.
    fn preserves_tasks_on_shutdown(&self) -> bool {
        false
    }

    /// Whether this runtime's tasks run on without the worker (Kubernetes
    /// Jobs) and can be followed again by another instance of it. When
    /// true, the core leaves running tasks running and unreported at
    /// shutdown, and at the next start hands every execution the journal
    /// says was claimed and not finished to [`Runtime::reattach`] instead
    /// of [`Runtime::recover`].
    fn reattaches(&self) -> bool {
        false
    }

    /// Follows a task an earlier instance of this worker started to its
    /// end, as [`Runtime::run`] would have, and cleans up as `run` does.
    /// Called only when [`Runtime::reattaches`] is true.
    fn reattach(&self, task: TaskRef, _ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(async move {
            RunOutcome::Failed(Failure::new(
                FailureReason::Unknown,
                format!(
                    "the {} runtime cannot follow task {task} again after a restart",
                    self.name()
                ),
            ))
        })
    }

    /// Executions this runtime still holds for this worker id whose
    /// worker instance is gone, which the core may not know (its journal
    /// was lost with the state directory): the core records each it does
    /// not know in its journal and hands it to [`Runtime::reattach`].
    /// Executions of live instances of the same worker id are not
    /// included, nor those `known` says the core knows already (the
    /// runtime skips them before doing anything to take them over, such as
    /// claiming them). Only for runtimes that [`Runtime::reattaches`];
    /// others find nothing. Failures are the runtime's to log.
    fn discover<'a>(&'a self, _known: Known<'a>) -> BoxFuture<'a, Vec<Adoptable>> {
        Box::pin(async { Vec::new() })
    }

    /// Runs one task to its end. Whatever the outcome, everything the run
    /// created (containers, processes, workspaces) is cleaned up before
    /// this returns, unless the operator turned cleanup off.
    fn run(&self, invocation: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome>;

    /// A server cancellation for a task this runtime had dispatched
    /// ([`RunOutcome::Spawned`]); runs tasks are stopped through their
    /// token instead. Failures are the runtime's to log.
    fn cancel_dispatched(&self, _task: TaskRef) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// At start-up: the tasks a dead earlier instance of this worker had
    /// claimed and not finished (from the core's journal). The runtime finds
    /// what is left of each, stops and removes it, and says how each ended;
    /// a task without a trace ended before the runtime made anything for it.
    /// It also removes whatever else a dead instance of this worker left.
    fn recover(&self, unfinished: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>>;

    /// The worker is exiting; release what the runtime holds, within `deadline`.
    fn shutdown(&self, _deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Whether the runtime can take tasks now (the daemon answers, the
    /// dispatcher exists): readiness. `Err` says what is wrong.
    fn check(&self) -> BoxFuture<'_, Result<(), CheckError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why a runtime cannot take tasks now ([`Runtime::check`], served as the
/// reason of the worker's readiness endpoint). The message names what does
/// not answer or is missing; the cause is kept as the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The daemon or API server the runtime drives did not answer.
    /// `context` leads the message (empty when the cause's own message
    /// already names the endpoint, as a Docker error does).
    #[error("{context}{source}")]
    Unreachable {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file the runtime needs on this host is gone (`what`: e.g. "agent
    /// program").
    #[error("the {what} {} is gone: {source}", path.display())]
    Missing {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
