//! The direct runtime: the agent program (`oz`) runs on the worker's own
//! host, in a private per-task workspace, as the Go worker's direct backend
//! runs it (BACKENDS.md §3), and better in three ways: the agent runs in its
//! own process group and a stop sends SIGTERM to the whole group and SIGKILL
//! after the grace period (the Go worker SIGKILLs `oz` alone); the teardown
//! command still runs after a cancellation, with its own time limit; and an
//! agent left running by a worker that died is found and stopped at the next
//! start (its process group is recorded under the state directory).

pub mod config;

use crate::protocol::FailureReason;
use crate::runtime::process::{self, exit_code};
use crate::runtime::{
    Failure, Invocation, RunOutcome, Runtime, RuntimeContext, TaskContext, TaskRef,
};
use crate::secret::Secret;
use config::Settings;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// What `OZ_WORKER_BACKEND` says to setup and teardown commands.
pub const BACKEND_NAME: &str = "direct";
/// The host variables the agent inherits (the Go worker's list); nothing
/// else of the worker's environment reaches it.
pub const INHERITED_VARS: [&str; 3] = ["HOME", "TMPDIR", "PATH"];
/// Never handed to setup or teardown commands, though they otherwise get
/// the worker's whole environment.
const WITHHELD_VARS: [&str; 3] = ["WARP_API_KEY", "WARP_API_KEY_FILE", "CREDENTIALS_DIRECTORY"];
/// The teardown's time limit once the worker's shutdown deadline has passed.
const FORCED_TEARDOWN_LIMIT: Duration = Duration::from_secs(5);

pub struct DirectRuntime {
    settings: Settings,
    ctx: RuntimeContext,
}

/// A running agent or setup command, recorded so a later start can stop it
/// if this worker dies (see [`process::GroupRecord`]).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    group: process::GroupRecord,
    workspace: PathBuf,
    /// Removed with the task unless the workspace is the shared target dir.
    owns_workspace: bool,
}

/// Record kinds: the agent, and the setup command that runs before it.
const AGENT: &str = "agent";
const SETUP: &str = "setup";

/// Whether a task id can name a folder: one safe path component (the Go
/// worker's `validateTaskIDForPath`).
pub fn valid_task_id(id: &str) -> bool {
    !(id.is_empty()
        || id == "."
        || id == ".."
        || id.contains('/')
        || id.contains('\\')
        || id.contains('\0'))
}

/// Later entries win; a name keeps its first position (the Go worker's
/// `mergeEnvVars`).
fn merge(base: &mut Vec<(String, String)>, over: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in over {
        match base.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => base.push((k, v)),
        }
    }
}

fn exposed(env: &[(String, Secret)]) -> impl Iterator<Item = (String, String)> + '_ {
    env.iter()
        .map(|(k, v)| (k.clone(), v.expose_str().to_string()))
}

/// The config folder a third-party harness keeps its state in, moved into
/// the workspace so concurrent tasks do not share it (the Go worker's
/// `harnessConfigs`).
fn harness_env(inv: &Invocation, workspace: &Path) -> Option<(String, String)> {
    let harness = inv
        .spec
        .agent_config_snapshot
        .as_ref()?
        .harness
        .as_ref()?
        .kind
        .as_deref()?
        .trim();
    let (var, dir) = match harness {
        "claude" => ("CLAUDE_CONFIG_DIR", ".claude"),
        "codex" => ("CODEX_HOME", ".codex"),
        _ => return None,
    };
    Some((var.into(), workspace.join(dir).display().to_string()))
}

impl DirectRuntime {
    /// Creates the workspace root (0700) unless every task runs in the
    /// target dir, and the runtime's state folder.
    pub fn new(ctx: RuntimeContext, settings: Settings) -> Result<DirectRuntime, String> {
        if settings.target_dir.is_none() {
            crate::dirs::create_private(&settings.workspace_root).map_err(|e| {
                format!(
                    "cannot create the workspace root {}: {e}; create it, or set backend.direct.workspace_root",
                    settings.workspace_root.display()
                )
            })?;
        }
        crate::dirs::create_private(&ctx.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", ctx.state_dir.display()))?;
        Ok(DirectRuntime { settings, ctx })
    }

    fn record_path(&self, kind: &str, task: &TaskRef) -> PathBuf {
        process::record_path(&self.ctx.state_dir, kind, task)
    }

    fn oz_vars(&self, task_id: &str, workspace: &Path) -> Vec<(String, String)> {
        vec![
            ("OZ_WORKSPACE_ROOT".into(), workspace.display().to_string()),
            ("OZ_WORKER_BACKEND".into(), BACKEND_NAME.into()),
            ("OZ_RUN_ID".into(), task_id.into()),
        ]
    }

    /// Setup and teardown commands get the worker's whole environment (minus
    /// the orchestrator key) plus `extra`.
    fn shell(&self, command: &str, dir: &Path, extra: Vec<(String, String)>) -> Command {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !WITHHELD_VARS.contains(&k.as_str()))
            .collect();
        merge(&mut env, extra);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null());
        cmd
    }

    async fn run_task(&self, inv: Invocation, ctx: TaskContext) -> RunOutcome {
        let task_id = inv.task.task_id.clone();
        if !valid_task_id(&task_id) {
            return RunOutcome::Failed(Failure::new(
                FailureReason::WorkspaceSetup,
                format!("task id {task_id:?} cannot name a workspace folder (it must be one path component: not empty, '.', '..', and without '/' or '\\\\')"),
            ));
        }
        let (workspace, owns_workspace) = match &self.settings.target_dir {
            Some(dir) => (dir.clone(), false),
            None => (self.settings.workspace_root.join(&task_id), true),
        };
        if owns_workspace {
            if let Err(e) = crate::dirs::create_private(&workspace) {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!("cannot create the workspace {}: {e}", workspace.display()),
                ));
            }
        }
        // In a shared target dir the global git config lives outside the checkout.
        let git_dir = if owns_workspace {
            None
        } else {
            let d = std::env::temp_dir().join(format!(
                "oz-gitconfig-{}",
                &crate::runtime::host::random_id()[..12]
            ));
            if let Err(e) = crate::dirs::create_private(&d) {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!("cannot create a git config folder {}: {e}", d.display()),
                ));
            }
            Some(d)
        };
        let git_config = git_dir.as_deref().unwrap_or(&workspace).join(".gitconfig");
        let env_file = workspace.join(format!(
            "oz-env-{}",
            &crate::runtime::host::random_id()[..12]
        ));

        let outcome = self
            .setup_and_run(
                &inv,
                &ctx,
                &workspace,
                owns_workspace,
                &git_config,
                &env_file,
            )
            .await;

        let _ = std::fs::remove_file(&env_file);
        self.finish(
            &task_id,
            &workspace,
            owns_workspace,
            &git_config,
            ctx.force.is_cancelled(),
        )
        .await;
        if let Some(d) = git_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        outcome
    }

    async fn setup_and_run(
        &self,
        inv: &Invocation,
        ctx: &TaskContext,
        workspace: &Path,
        owns_workspace: bool,
        git_config: &Path,
        env_file: &Path,
    ) -> RunOutcome {
        let task_id = &inv.task.task_id;
        {
            use std::os::unix::fs::OpenOptionsExt;
            if let Err(e) = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(env_file)
            {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!(
                        "cannot create the environment file {}: {e}",
                        env_file.display()
                    ),
                ));
            }
        }
        let git_env = (
            "GIT_CONFIG_GLOBAL".to_string(),
            git_config.display().to_string(),
        );
        let mut env: Vec<(String, String)> = exposed(&inv.env).collect();
        merge(&mut env, exposed(&self.settings.env));
        merge(&mut env, harness_env(inv, workspace));
        merge(&mut env, [git_env.clone()]);

        if let Some(setup) = &self.settings.setup_command {
            let mut extra = env.clone();
            merge(&mut extra, self.oz_vars(task_id, workspace));
            merge(
                &mut extra,
                [(
                    "OZ_ENVIRONMENT_FILE".to_string(),
                    env_file.display().to_string(),
                )],
            );
            tracing::info!(task_id, "running the setup command");
            let cmd = self.shell(setup, workspace, extra);
            let mut group = match process::spawn(cmd, ctx.output.clone(), Some(task_id)) {
                Ok(g) => g,
                Err(e) => {
                    return RunOutcome::Failed(Failure::new(
                        FailureReason::SetupCommand,
                        format!("cannot start the setup command with /bin/sh: {e}"),
                    ))
                }
            };
            self.record(SETUP, inv, &group, workspace, owns_workspace);
            let status = tokio::select! {
                s = group.wait() => s,
                _ = ctx.stop.cancelled() => {
                    let _ = group.terminate(self.settings.stop_grace_period, &ctx.force).await;
                    let _ = std::fs::remove_file(self.record_path(SETUP, &inv.task));
                    return RunOutcome::Stopped;
                }
            };
            // What it started in the background (a proxy, a cache daemon)
            // may be meant for the agent: it is left running, as in the Go worker.
            let _ = std::fs::remove_file(self.record_path(SETUP, &inv.task));
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    return RunOutcome::Failed(group.exit_failure(
                        &s,
                        FailureReason::SetupCommand,
                        "the setup command",
                    ));
                }
                Err(e) => {
                    return RunOutcome::Failed(Failure::new(
                        FailureReason::SetupCommand,
                        format!("waiting for the setup command: {e}"),
                    ))
                }
            }
            match dotenvy::from_path_iter(env_file) {
                Ok(iter) => {
                    let vars: Vec<(String, String)> = iter.filter_map(Result::ok).collect();
                    merge(&mut env, vars);
                }
                Err(e) => tracing::warn!(
                    task_id,
                    "cannot read the environment file the setup command writes: {e}"
                ),
            }
            merge(&mut env, [git_env]);
        }

        let mut agent_env: Vec<(String, String)> = INHERITED_VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        merge(&mut agent_env, env);
        let mut cmd = Command::new(&self.settings.oz_path);
        cmd.args(&inv.base_args)
            .current_dir(workspace)
            .env_clear()
            .envs(agent_env)
            .stdin(Stdio::null());
        let mut group = match process::spawn(cmd, ctx.output.clone(), Some(task_id)) {
            Ok(g) => g,
            Err(e) => {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::AgentInvocation,
                    format!(
                        "cannot start the agent {}: {e}",
                        self.settings.oz_path.display()
                    ),
                ))
            }
        };
        self.record(AGENT, inv, &group, workspace, owns_workspace);
        tracing::info!(task_id, pgid = group.pgid(), workspace = %workspace.display(), "agent started");
        let status = tokio::select! {
            s = group.wait() => s,
            _ = ctx.stop.cancelled() => {
                tracing::info!(task_id, "stopping the agent (SIGTERM to its process group, SIGKILL after {:?})", self.settings.stop_grace_period);
                let _ = group.terminate(self.settings.stop_grace_period, &ctx.force).await;
                let _ = std::fs::remove_file(self.record_path(AGENT, &inv.task));
                return RunOutcome::Stopped;
            }
        };
        // Anything the agent left running in its group goes with it.
        group.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(self.record_path(AGENT, &inv.task));
        match status {
            Ok(s) if s.success() => RunOutcome::Completed,
            Ok(s) => RunOutcome::Failed(group.exit_failure(
                &s,
                FailureReason::AgentInvocation,
                "the agent",
            )),
            Err(e) => RunOutcome::Failed(Failure::new(
                FailureReason::AgentInvocation,
                format!("waiting for the agent: {e}"),
            )),
        }
    }

    fn record(
        &self,
        kind: &str,
        inv: &Invocation,
        group: &process::Group,
        workspace: &Path,
        owns_workspace: bool,
    ) {
        let Some(group) = process::GroupRecord::of(&inv.task, group) else {
            return;
        };
        let record = Record {
            group,
            workspace: workspace.to_path_buf(),
            owns_workspace,
        };
        if let Err(e) = process::write_record(&self.record_path(kind, &inv.task), &record) {
            tracing::warn!(
                task_id = inv.task.task_id,
                "cannot record the {kind} process group under {}: {e}",
                self.ctx.state_dir.display()
            );
        }
    }

    /// Teardown (own time limit, whatever ended the task), then the
    /// workspace: removed unless cleanup is off or it is the shared target
    /// dir. With cleanup off neither runs, as in the Go worker.
    async fn finish(
        &self,
        task_id: &str,
        workspace: &Path,
        owns_workspace: bool,
        git_config: &Path,
        forced: bool,
    ) {
        if owns_workspace && !self.settings.cleanup {
            tracing::info!(task_id, workspace = %workspace.display(), "keeping the workspace (cleanup is off)");
            return;
        }
        if let Some(teardown) = &self.settings.teardown_command {
            let limit = if forced {
                FORCED_TEARDOWN_LIMIT.min(self.settings.teardown_timeout)
            } else {
                self.settings.teardown_timeout
            };
            let mut extra = self.oz_vars(task_id, workspace);
            merge(
                &mut extra,
                [(
                    "GIT_CONFIG_GLOBAL".to_string(),
                    git_config.display().to_string(),
                )],
            );
            tracing::info!(task_id, "running the teardown command");
            match process::spawn(
                self.shell(teardown, workspace, extra),
                crate::runtime::OutputSink::none(),
                Some(task_id),
            ) {
                Ok(mut g) => match tokio::time::timeout(limit, g.wait()).await {
                    Ok(Ok(s)) if s.success() => {}
                    Ok(Ok(s)) => tracing::warn!(
                        task_id,
                        "the teardown command exited with code {}",
                        exit_code(&s)
                    ),
                    Ok(Err(e)) => tracing::warn!(task_id, "waiting for the teardown command: {e}"),
                    Err(_) => {
                        tracing::warn!(
                            task_id,
                            "the teardown command did not finish within {limit:?}; killed"
                        );
                        let _ = g
                            .terminate(Duration::ZERO, &tokio_util::sync::CancellationToken::new())
                            .await;
                    }
                },
                Err(e) => tracing::warn!(task_id, "cannot start the teardown command: {e}"),
            }
        }
        if owns_workspace {
            if let Err(e) = std::fs::remove_dir_all(workspace) {
                tracing::warn!(
                    task_id,
                    "cannot remove the workspace {}: {e}",
                    workspace.display()
                );
            }
        }
    }

    async fn recover_tasks(&self, unfinished: Vec<TaskRef>) -> Vec<(TaskRef, RunOutcome)> {
        let mut resolved = Vec::new();
        for kind in [SETUP, AGENT] {
            for (path, record) in process::read_records::<Record>(&self.ctx.state_dir, kind) {
                if record.group.owner_alive() {
                    continue; // a live sibling's
                }
                let task = record.group.task();
                let killed = record.group.kill_if_alive();
                if killed {
                    tracing::warn!(
                        task_id = task.task_id,
                        pgid = record.group.pid,
                        "stopped {} left running by a dead earlier run of this worker",
                        if kind == AGENT {
                            "an agent"
                        } else {
                            "a setup command"
                        }
                    );
                }
                if record.owns_workspace && self.settings.cleanup {
                    let _ = std::fs::remove_dir_all(&record.workspace);
                }
                let _ = std::fs::remove_file(&path);
                if kind == AGENT && unfinished.contains(&task) {
                    let message = if killed {
                        "the worker running this task died (crashed or was killed); at its restart the agent was still running and its process group was stopped"
                    } else {
                        "the worker running this task died (crashed or was killed) and the agent ended while it was down; its exit status is unknown"
                    };
                    resolved.push((
                        task,
                        RunOutcome::Failed(Failure::new(FailureReason::Unknown, message)),
                    ));
                }
            }
        }
        for task in unfinished {
            if resolved.iter().any(|(t, _)| *t == task) {
                continue;
            }
            if self.settings.target_dir.is_none()
                && self.settings.cleanup
                && valid_task_id(&task.task_id)
            {
                let _ = std::fs::remove_dir_all(self.settings.workspace_root.join(&task.task_id));
            }
            resolved.push((
                task,
                RunOutcome::Failed(Failure::new(
                    FailureReason::Unknown,
                    "the worker died before the agent started (while it prepared the workspace or ran the setup command); the agent did not run",
                )),
            ));
        }
        resolved
    }
}

impl Runtime for DirectRuntime {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The stop's deadline has come: whatever this worker still waits on
    /// (an agent, a setup or teardown command, a dispatch) is SIGKILLed
    /// with its whole process group, so nothing outlives the worker.
    fn shutdown(&self, _deadline: std::time::Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let killed = crate::runtime::live_groups::kill_all();
            if killed > 0 {
                tracing::warn!(
                    "{killed} process group(s) still running at the end of the stop were killed"
                );
            }
        })
    }

    fn describe(&self) -> String {
        match &self.settings.target_dir {
            Some(d) => format!(
                "direct: {} in the shared folder {}",
                self.settings.oz_path.display(),
                d.display()
            ),
            None => format!(
                "direct: {} in per-task workspaces under {}",
                self.settings.oz_path.display(),
                self.settings.workspace_root.display()
            ),
        }
    }

    fn run(&self, invocation: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.run_task(invocation, ctx))
    }

    fn recover(&self, unfinished: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
        Box::pin(self.recover_tasks(unfinished))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match std::fs::metadata(&self.settings.oz_path) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the agent program {} is gone: {e}",
                    self.settings.oz_path.display()
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_must_be_one_path_component() {
        // The Go worker's validateTaskIDForPath, plus NUL (which no path may hold).
        for (id, ok) in [
            ("run-1", true),
            ("a.b", true),
            ("...", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("/abs", false),
            ("a\\b", false),
            ("a\0b", false),
        ] {
            assert_eq!(valid_task_id(id), ok, "{id:?}");
        }
    }

    #[test]
    fn merge_keeps_first_position_and_last_value() {
        let mut base = vec![("A".to_string(), "1".to_string()), ("B".into(), "2".into())];
        merge(
            &mut base,
            [("A".to_string(), "x".to_string()), ("C".into(), "3".into())],
        );
        assert_eq!(
            base,
            [
                ("A".into(), "x".into()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into())
            ]
        );
    }
}
