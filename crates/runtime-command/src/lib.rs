//! The command runtime: hands each task to an outside system through an
//! operator's `dispatch_command`, as the Go worker's command backend does
//! (BACKENDS.md §4). The command gets the versioned [`DispatchPayload`] as
//! JSON on stdin; exit 0 within `dispatch_timeout` means dispatched: the
//! outside system runs the agent and reports by itself, the worker sends
//! nothing more and frees the slot. A non-zero exit fails the task
//! (`dispatch_command`), a timeout kills the command's process group and
//! fails it (`dispatch_timeout`). A server cancellation of a dispatched task
//! runs `cancel_command`. Dispatched tasks survive a worker shutdown and a
//! restart (the core's journal keeps them). A dispatch command still running
//! when its worker died is stopped (its process group) at the next start.

pub mod config;
pub mod payload;

use config::Settings;
use futures_util::future::BoxFuture;
use oz_protocol::FailureReason;
use oz_runtime::process::{self, exit_code};
use oz_runtime::{
    Failure, Invocation, RunOutcome, Runtime, RuntimeContext, TaskContext, TaskRef,
    DEFAULT_TASK_IMAGE,
};
use payload::DispatchPayload;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What `OZ_WORKER_BACKEND` says to the commands.
pub const BACKEND_NAME: &str = "command";
/// How long `cancel_command` may run (the Go worker's 10 s).
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// The worker's own credential for the orchestrator: not handed to the
/// commands unless the operator lists it in `environment` (or `-e`).
const WITHHELD_VARS: [&str; 3] = ["WARP_API_KEY", "WARP_API_KEY_FILE", "CREDENTIALS_DIRECTORY"];
/// Record kind of a running dispatch command (see [`process::GroupRecord`]).
const DISPATCH: &str = "dispatch";

/// Why the command runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its state folder (under the worker's state dir) cannot be made 0700.
    #[error("cannot create {}: {source}", path.display())]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct CommandRuntime {
    settings: Settings,
    ctx: RuntimeContext,
}

impl CommandRuntime {
    /// Creates the runtime's state folder (0700), where running dispatch
    /// commands are recorded.
    pub fn new(ctx: RuntimeContext, settings: Settings) -> Result<CommandRuntime, StartError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctx.state_dir)
            .and_then(|_| {
                std::fs::set_permissions(&ctx.state_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| StartError::StateDir {
                path: ctx.state_dir.clone(),
                source,
            })?;
        Ok(CommandRuntime { settings, ctx })
    }

    /// `sh -c command` with the worker's environment (less the API key),
    /// the configured entries, then the fixed `OZ_*` variables (which win).
    /// The task's own environment never reaches the command's environment
    /// or argv.
    fn shell(&self, command: &str, fixed: Vec<(String, String)>) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(command);
        for var in WITHHELD_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(
            self.settings
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_str().to_string())),
        )
        .envs(fixed);
        cmd
    }

    fn ids(task: &TaskRef) -> Vec<(String, String)> {
        vec![
            ("OZ_RUN_ID".into(), task.task_id.clone()),
            (
                "OZ_EXECUTION_ID".into(),
                task.execution_id.clone().unwrap_or_default(),
            ),
            ("OZ_WORKER_BACKEND".into(), BACKEND_NAME.into()),
        ]
    }

    async fn dispatch(&self, inv: Invocation, ctx: TaskContext) -> RunOutcome {
        let task_id = inv.task.task_id.clone();
        let image = inv
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_TASK_IMAGE.to_string());
        let body =
            serde_json::to_vec(&DispatchPayload::new(&inv, &image)).expect("payload serializes");
        let mut fixed = Self::ids(&inv.task);
        fixed.push(("OZ_SERVER_ROOT_URL".into(), inv.server_root_url.clone()));
        fixed.push(("OZ_DOCKER_IMAGE".into(), image));
        let mut cmd = self.shell(&self.settings.dispatch_command, fixed);
        cmd.stdin(Stdio::piped());
        let mut group = match process::spawn(cmd, ctx.output.clone(), Some(&task_id)) {
            Ok(g) => g,
            Err(e) => {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::DispatchCommand,
                    format!("cannot start the dispatch command with /bin/sh: {e}"),
                ))
            }
        };
        if let Some(mut stdin) = group.take_stdin() {
            // A command that does not read its stdin is not an error.
            tokio::spawn(async move {
                let _ = stdin.write_all(&body).await;
                let _ = stdin.shutdown().await;
            });
        }
        tracing::info!(task_id, pgid = group.pgid(), "running the dispatch command");
        let record = process::record_path(&self.ctx.state_dir, DISPATCH, &inv.task);
        if let Some(r) = process::GroupRecord::of(&inv.task, &group) {
            if let Err(e) = process::write_record(&record, &r) {
                tracing::warn!(
                    task_id,
                    "cannot record the dispatch command's process group under {}: {e}",
                    self.ctx.state_dir.display()
                );
            }
        }
        let limit = self.settings.dispatch_timeout;
        let status = tokio::select! {
            s = tokio::time::timeout(limit, group.wait()) => s,
            _ = ctx.stop.cancelled() => {
                let _ = group.terminate(Duration::ZERO, &ctx.force).await;
                let _ = std::fs::remove_file(&record);
                // The dispatch may have reached the outside system before it
                // was killed: like the Go worker, every cancellation of a
                // task runs the cancel hook (as a restart does for a dispatch
                // a dead worker left).
                self.cancel(inv.task.clone()).await;
                return RunOutcome::Stopped;
            }
        };
        if status.is_err() {
            let _ = group.terminate(Duration::ZERO, &ctx.force).await;
        }
        let _ = std::fs::remove_file(&record);
        match status {
            Err(_) => RunOutcome::Failed(Failure::new(
                FailureReason::DispatchTimeout,
                format!("the dispatch command did not finish within {limit:?} (dispatch_timeout); its process group was killed"),
            )),
            Ok(Ok(s)) if s.success() => {
                // Whatever it started in the background is the outside system's.
                RunOutcome::Spawned
            }
            Ok(Ok(s)) => RunOutcome::Failed(group.exit_failure(
                &s,
                FailureReason::DispatchCommand,
                "the dispatch command",
            )),
            Ok(Err(e)) => RunOutcome::Failed(Failure::new(
                FailureReason::DispatchCommand,
                format!("waiting for the dispatch command: {e}"),
            )),
        }
    }

    async fn cancel(&self, task: TaskRef) {
        let Some(command) = &self.settings.cancel_command else {
            tracing::info!(
                task_id = task.task_id,
                "no cancel_command configured; the dispatched task is left to its system"
            );
            return;
        };
        let mut cmd = self.shell(command, Self::ids(&task));
        cmd.stdin(Stdio::null());
        tracing::info!(task_id = task.task_id, "running the cancel command");
        match process::spawn(cmd, oz_runtime::OutputSink::none(), Some(&task.task_id)) {
            Ok(mut g) => match tokio::time::timeout(CANCEL_TIMEOUT, g.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::warn!(
                    task_id = task.task_id,
                    "the cancel command exited with code {}",
                    exit_code(&s)
                ),
                Ok(Err(e)) => tracing::warn!(
                    task_id = task.task_id,
                    "waiting for the cancel command: {e}"
                ),
                Err(_) => {
                    tracing::warn!(
                        task_id = task.task_id,
                        "the cancel command did not finish within {CANCEL_TIMEOUT:?}; killed"
                    );
                    let _ = g
                        .terminate(Duration::ZERO, &tokio_util::sync::CancellationToken::new())
                        .await;
                }
            },
            Err(e) => tracing::warn!(
                task_id = task.task_id,
                "cannot start the cancel command: {e}"
            ),
        }
    }
}

impl Runtime for CommandRuntime {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The stop's deadline has come: whatever this worker still waits on
    /// (an agent, a setup or teardown command, a dispatch) is SIGKILLed
    /// with its whole process group, so nothing outlives the worker.
    fn shutdown(&self, _deadline: std::time::Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let killed = oz_runtime::live_groups::kill_all();
            if killed > 0 {
                tracing::warn!(
                    "{killed} process group(s) still running at the end of the stop were killed"
                );
            }
        })
    }

    fn describe(&self) -> String {
        format!(
            "command: dispatch with `{}` (timeout {:?})",
            self.settings.dispatch_command, self.settings.dispatch_timeout
        )
    }

    /// Dispatched tasks belong to the outside system: a shutdown leaves them.
    fn preserves_tasks_on_shutdown(&self) -> bool {
        true
    }

    fn run(&self, invocation: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.dispatch(invocation, ctx))
    }

    fn cancel_dispatched(&self, task: TaskRef) -> BoxFuture<'_, ()> {
        Box::pin(self.cancel(task))
    }

    /// A dispatch interrupted by the worker's death may or may not have
    /// reached the outside system: what is left of the dispatch command is
    /// stopped, the task is cancelled there (when a cancel command exists)
    /// and reported failed, so the agent never runs unreported. Dispatch
    /// commands of live siblings sharing the worker id are left alone.
    fn recover(&self, unfinished: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
        Box::pin(async move {
            for (path, record) in
                process::read_records::<process::GroupRecord>(&self.ctx.state_dir, DISPATCH)
            {
                if record.owner_alive() {
                    continue;
                }
                if record.kill_if_alive() {
                    tracing::warn!(
                        task_id = record.task_id,
                        pgid = record.pid,
                        "stopped a dispatch command left running by a dead earlier run of this worker"
                    );
                }
                let _ = std::fs::remove_file(&path);
            }
            let mut out = Vec::new();
            for task in unfinished {
                self.cancel(task.clone()).await;
                out.push((
                    task,
                    RunOutcome::Failed(Failure::new(
                        FailureReason::DispatchCommand,
                        "the worker died while the dispatch command ran, so whether the task was dispatched is unknown; \
                         the dispatch command was stopped and the cancel command run for it at the worker's restart",
                    )),
                ));
            }
            out
        })
    }
}
