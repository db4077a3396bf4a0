//! The direct runtime: the agent program (`oz`) runs on the worker's own
//! host, in a private per-task workspace, as the Go worker's direct backend
//! runs it (BACKENDS.md §3), and better in these ways: every process a task
//! starts is contained (a cgroup v2 per task, or a subreaper; [`tree`]) and
//! ends with the task, a stop sends SIGTERM to all of them and SIGKILL after
//! the grace period (the Go worker SIGKILLs `oz` alone); the programs can
//! run as an unprivileged `user` with resource limits; the teardown command
//! still runs after a cancellation (and after an agent deleted its own
//! workspace), with its own time limit; and a task left running by a worker
//! that died is found and stopped at the next start (recorded under the
//! state directory).

pub mod cgroup;
pub mod config;
pub mod dotenv;
pub mod launcher;
pub mod remove;
pub mod tree;
pub mod user;

use config::Settings;
use futures_util::future::BoxFuture;
use launcher::RunAs;
use oz_foundation::secret::Secret;
use oz_protocol::FailureReason;
use oz_runtime::process::{self, exit_code};
use oz_runtime::{
    CheckError, Failure, Invocation, RunOutcome, Runtime, RuntimeContext, TaskContext, TaskRef,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tree::{Containment, Spawner, TaskProcess, TaskTree};

/// What `OZ_WORKER_BACKEND` says to setup and teardown commands.
pub const BACKEND_NAME: &str = "direct";
/// The host variables the agent inherits (the Go worker's list); nothing
/// else of the worker's environment reaches it.
pub const INHERITED_VARS: [&str; 3] = ["HOME", "TMPDIR", "PATH"];
/// Never handed to setup or teardown commands, though they otherwise get
/// the worker's whole environment (the worker also removes them from its own
/// at start: [`crate::hardening`]).
const WITHHELD_VARS: [&str; 3] = [
    oz_foundation::secret::SECRET_VARS[0],
    oz_foundation::secret::SECRET_VARS[1],
    "CREDENTIALS_DIRECTORY",
];
/// This process's own binary, as the kernel keeps it open.
const SELF_EXE: &str = "/proc/self/exe";
/// The teardown's time limit once the worker's shutdown deadline has passed.
const FORCED_TEARDOWN_LIMIT: Duration = Duration::from_secs(5);

pub struct DirectRuntime {
    settings: Settings,
    ctx: RuntimeContext,
    spawner: Spawner,
}

/// Why the direct runtime cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// A setting this host cannot honour (exit status 2, as a bad setting).
    Config(String),
    /// The host failed (a folder that cannot be made; exit status 1).
    Host(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(s) | StartError::Host(s) => f.write_str(s),
        }
    }
}

/// A task's cgroup, recorded for the whole task so the next start of the
/// worker can end whatever of it survived a worker that died.
#[derive(Debug, Serialize, Deserialize)]
struct TaskRecord {
    task_id: String,
    execution_id: Option<String>,
    cgroup: PathBuf,
    owner_pid: u32,
    owner_start: String,
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

/// Record kinds: the agent, the setup command that runs before it, and the
/// task's cgroup.
const AGENT: &str = "agent";
const SETUP: &str = "setup";
const TASK: &str = "task";

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
    ///
    /// Also resolves `user` (the worker must run as root to switch to it),
    /// and chooses how tasks are contained: a cgroup v2 per task where the
    /// worker may make one, else a subreaper; resource limits need the
    /// cgroup, so with limits set and no usable cgroup v2 it is a
    /// [`StartError::Config`] naming the keys and why.
    pub fn new(ctx: RuntimeContext, settings: Settings) -> Result<DirectRuntime, StartError> {
        use StartError::{Config, Host};
        let run_as = match &settings.user {
            None => None,
            Some(name) => {
                let u = user::resolve(name).map_err(|e| Config(e.to_string()))?;
                let me = nix::unistd::geteuid();
                if user::may_switch_user() {
                    Some(u)
                } else if me.as_raw() == u.uid {
                    // Already that user: nothing to switch (and no privilege to).
                    tracing::info!("backend.direct.user: the worker already runs as {name:?}");
                    None
                } else {
                    return Err(Config(format!(
                        "backend.direct.user: running tasks as {name:?} needs a worker running as root (this one runs as uid {me}); run the worker as root, or remove the key"
                    )));
                }
            }
        };
        let keys = settings.limits.keys();
        let containment = match cgroup::Cgroups::detect(&settings.limits) {
            Ok(c) => Containment::Cgroup(c),
            Err(why) if !keys.is_empty() => {
                return Err(Config(if why.0.starts_with("backend.direct.") {
                    why.0
                } else {
                    format!(
                        "{} need{} a cgroup v2 this worker may make task cgroups in: {why}; remove the key{}, or run the worker where it has one (as root, or under systemd with Delegate=yes)",
                        keys.join(", "),
                        if keys.len() == 1 { "s" } else { "" },
                        if keys.len() == 1 { "" } else { "s" },
                    )
                }))
            }
            Err(why) => {
                tracing::info!("direct runtime: no task cgroups ({why}); a subreaper per program keeps each task's processes together instead");
                Containment::Subreaper
            }
        };
        // The launcher is this very binary, started through /proc/self/exe
        // (resolved in the forked child, still this image), so it works even
        // after an upgrade replaced the file on disk.
        let exe = if Path::new(SELF_EXE).exists() {
            PathBuf::from(SELF_EXE)
        } else {
            std::env::current_exe().map_err(|e| {
                Host(format!(
                    "cannot find the worker's own binary (to launch tasks): {e}"
                ))
            })?
        };
        if settings.target_dir.is_none() {
            oz_foundation::dirs::create_private(&settings.workspace_root).map_err(|e| {
                Host(format!(
                    "cannot create the workspace root {}: {e}; create it, or set backend.direct.workspace_root",
                    settings.workspace_root.display()
                ))
            })?;
            if let Some(u) = &run_as {
                // The user must reach its workspaces: search permission only.
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    &settings.workspace_root,
                    std::fs::Permissions::from_mode(0o711),
                );
                tracing::debug!(user = u.name, "workspace root opened for search (0711)");
            }
        }
        oz_foundation::dirs::create_private(&ctx.state_dir)
            .map_err(|e| Host(format!("cannot create {}: {e}", ctx.state_dir.display())))?;
        tracing::info!(
            "direct runtime: tasks run as {}, contained by {}",
            run_as
                .as_ref()
                .map(|u| format!("{} (uid {})", u.name, u.uid))
                .unwrap_or_else(|| format!(
                    "the worker's own user (uid {})",
                    nix::unistd::geteuid()
                )),
            containment.describe()
        );
        if run_as.is_none() {
            if nix::unistd::geteuid().is_root() {
                tracing::warn!(
                    "direct runtime: the agent runs as root, like this worker, because backend.direct.user is not set: it can read the worker's memory (/proc/{}/mem, with the API key in it), its state directory {} (the claim journal) and every file on this host; set backend.direct.user to an unprivileged user",
                    std::process::id(),
                    ctx.state_dir.display()
                );
            } else {
                tracing::info!(
                    "direct runtime: the agent runs as this worker's user, so it can read the state directory {} (not the API key: the worker is non-dumpable and the key left its environment); set backend.direct.user to keep it out",
                    ctx.state_dir.display()
                );
            }
        }
        let spawner = Spawner {
            exe,
            containment,
            user: run_as,
            grace: settings.stop_grace_period,
        };
        Ok(DirectRuntime {
            settings,
            ctx,
            spawner,
        })
    }

    /// Gives `path` to the task's user, when there is one.
    fn give(&self, path: &Path) -> std::io::Result<()> {
        match &self.spawner.user {
            Some(u) => user::give(path, u),
            None => Ok(()),
        }
    }

    /// HOME, USER and LOGNAME of the task's user (its own home), when set.
    fn user_vars(&self) -> Vec<(String, String)> {
        match &self.spawner.user {
            Some(RunAs { name, home, .. }) => vec![
                ("HOME".into(), home.display().to_string()),
                ("USER".into(), name.clone()),
                ("LOGNAME".into(), name.clone()),
            ],
            None => vec![],
        }
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
    fn shell(
        &self,
        tree: &TaskTree,
        command: &str,
        dir: &Path,
        extra: Vec<(String, String)>,
    ) -> Command {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !WITHHELD_VARS.contains(&k.as_str()))
            .collect();
        merge(&mut env, self.user_vars());
        merge(&mut env, extra);
        let mut cmd =
            self.spawner
                .command(tree, Path::new("/bin/sh"), &["-c".into(), command.into()]);
        cmd.current_dir(dir)
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
            if let Err(e) =
                oz_foundation::dirs::create_private(&workspace).and_then(|()| self.give(&workspace))
            {
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!("cannot create the workspace {}: {e}", workspace.display()),
                ));
            }
        }
        let tree = match self.spawner.tree(&task_id) {
            Ok(t) => t,
            Err(e) => {
                if owns_workspace {
                    let _ = remove::remove_tree(&workspace);
                }
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!("cannot make the task's cgroup: {e}"),
                ));
            }
        };
        self.record_task(&inv.task, &tree);
        // In a shared target dir the global git config lives outside the checkout.
        let git_dir = if owns_workspace {
            None
        } else {
            let d = std::env::temp_dir().join(format!(
                "oz-gitconfig-{}",
                &oz_runtime::host::random_id()[..12]
            ));
            if let Err(e) = oz_foundation::dirs::create_private(&d).and_then(|()| self.give(&d)) {
                self.end_tree(&inv.task, &tree);
                return RunOutcome::Failed(Failure::new(
                    FailureReason::WorkspaceSetup,
                    format!("cannot create a git config folder {}: {e}", d.display()),
                ));
            }
            Some(d)
        };
        let git_config = git_dir.as_deref().unwrap_or(&workspace).join(".gitconfig");
        let env_file = workspace.join(format!("oz-env-{}", &oz_runtime::host::random_id()[..12]));

        let outcome = self
            .setup_and_run(
                &inv,
                &ctx,
                &tree,
                &workspace,
                owns_workspace,
                &git_config,
                &env_file,
            )
            .await;

        let _ = std::fs::remove_file(&env_file);
        self.finish(
            &task_id,
            &tree,
            &workspace,
            owns_workspace,
            &git_config,
            ctx.force.is_cancelled(),
        )
        .await;
        self.end_tree(&inv.task, &tree);
        if let Some(d) = git_dir {
            let _ = remove::remove_tree(&d);
        }
        outcome
    }

    /// Kills what is left of the task, removes its cgroup and its record.
    fn end_tree(&self, task: &TaskRef, tree: &TaskTree) {
        tree.remove();
        let _ = std::fs::remove_file(self.record_path(TASK, task));
    }

    fn record_task(&self, task: &TaskRef, tree: &TaskTree) {
        let Some(cg) = &tree.cgroup else { return };
        let owner_pid = std::process::id();
        let record = TaskRecord {
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
            cgroup: cg.path().to_path_buf(),
            owner_pid,
            owner_start: oz_runtime::host::process_start_time(owner_pid).unwrap_or_default(),
        };
        if let Err(e) = process::write_record(&self.record_path(TASK, task), &record) {
            tracing::warn!(
                task_id = task.task_id,
                "cannot record the task's cgroup under {}: {e}",
                self.ctx.state_dir.display()
            );
        }
    }

    /// The environment the setup command wrote, parsed as godotenv parses
    /// it; refused lines are named in a warning.
    fn read_env_file(&self, task_id: &str, env_file: &Path) -> Vec<(String, String)> {
        let text = match std::fs::read(env_file) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                tracing::warn!(
                    task_id,
                    "cannot read the environment file the setup command writes: {e}"
                );
                return vec![];
            }
        };
        let (vars, refused) = dotenv::parse(&text, &|name| std::env::var(name).ok());
        for r in refused {
            tracing::warn!(
                task_id,
                "the setup command's environment file ($OZ_ENVIRONMENT_FILE), line {}: {}; that line is ignored",
                r.line,
                r.why
            );
        }
        vars
    }

    #[allow(clippy::too_many_arguments)]
    async fn setup_and_run(
        &self,
        inv: &Invocation,
        ctx: &TaskContext,
        tree: &TaskTree,
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
                .and_then(|_| self.give(env_file))
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
            let cmd = self.shell(tree, setup, workspace, extra);
            let mut group = match self.spawner.spawn(tree, cmd, ctx.output.clone(), task_id) {
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
            // may be meant for the agent: it is left running, as in the Go
            // worker, and ends with the task (with a cgroup; a subreaper
            // launcher ends it with the setup command).
            let _ = std::fs::remove_file(self.record_path(SETUP, &inv.task));
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    return RunOutcome::Failed(group.group.exit_failure(
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
            merge(&mut env, self.read_env_file(task_id, env_file));
            merge(&mut env, [git_env]);
        }

        let mut agent_env: Vec<(String, String)> = INHERITED_VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        merge(&mut agent_env, self.user_vars());
        merge(&mut agent_env, env);
        let mut cmd = self
            .spawner
            .command(tree, &self.settings.oz_path, &inv.base_args);
        cmd.current_dir(workspace)
            .env_clear()
            .envs(agent_env)
            .stdin(Stdio::null());
        let mut group = match self.spawner.spawn(tree, cmd, ctx.output.clone(), task_id) {
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
        tracing::info!(task_id, pgid = group.group.pgid(), workspace = %workspace.display(), "agent started");
        let status = tokio::select! {
            s = group.wait() => s,
            _ = ctx.stop.cancelled() => {
                tracing::info!(task_id, "stopping the task (SIGTERM to all its processes, SIGKILL after {:?})", self.settings.stop_grace_period);
                let _ = group.terminate(self.settings.stop_grace_period, &ctx.force).await;
                let _ = std::fs::remove_file(self.record_path(AGENT, &inv.task));
                return RunOutcome::Stopped;
            }
        };
        // Anything the task left running goes with the agent, politely first.
        tree.end_leftovers(self.settings.stop_grace_period).await;
        let _ = std::fs::remove_file(self.record_path(AGENT, &inv.task));
        match status {
            Ok(s) if s.success() => RunOutcome::Completed,
            Ok(s) => {
                let mut failure =
                    group
                        .group
                        .exit_failure(&s, FailureReason::AgentInvocation, "the agent");
                let oom = tree.oom_kills();
                if oom > 0 {
                    failure.message.push_str(&format!(
                        "; the kernel's OOM killer killed {oom} process(es) of the task at its memory limit (backend.direct.memory = {} bytes)",
                        self.settings.limits.memory_bytes.unwrap_or_default()
                    ));
                }
                RunOutcome::Failed(failure)
            }
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
        group: &TaskProcess,
        workspace: &Path,
        owns_workspace: bool,
    ) {
        let Some(group) = process::GroupRecord::of(&inv.task, &group.group) else {
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

    /// Where the teardown command runs: the workspace, made again (empty)
    /// when the agent deleted it; for a shared target dir that is gone, the
    /// nearest folder above it that exists.
    fn teardown_dir(&self, task_id: &str, workspace: &Path, owns_workspace: bool) -> PathBuf {
        if workspace.is_dir() {
            return workspace.to_path_buf();
        }
        if owns_workspace
            && oz_foundation::dirs::create_private(workspace)
                .and_then(|()| self.give(workspace))
                .is_ok()
        {
            tracing::info!(
                task_id,
                workspace = %workspace.display(),
                "the task deleted its workspace; the teardown command runs in a new, empty one"
            );
            return workspace.to_path_buf();
        }
        let dir = workspace
            .ancestors()
            .skip(1)
            .find(|d| d.is_dir())
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        tracing::warn!(
            task_id,
            "the task's folder {} is gone; the teardown command runs in {}",
            workspace.display(),
            dir.display()
        );
        dir
    }

    /// Teardown (own time limit, whatever ended the task), then the
    /// workspace: removed unless cleanup is off or it is the shared target
    /// dir. With cleanup off neither runs, as in the Go worker.
    async fn finish(
        &self,
        task_id: &str,
        tree: &TaskTree,
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
            let dir = self.teardown_dir(task_id, workspace, owns_workspace);
            tracing::info!(task_id, "running the teardown command");
            match self.spawner.spawn(
                tree,
                self.shell(tree, teardown, &dir, extra),
                oz_runtime::OutputSink::none(),
                task_id,
            ) {
                Ok(mut g) => match tokio::time::timeout(limit, g.wait()).await {
                    Ok(Ok(s)) if s.success() => {}
                    Ok(Ok(s)) => tracing::warn!(
                        task_id,
                        "the teardown command exited with code {}{}",
                        exit_code(&s),
                        g.group
                            .last_line()
                            .map(|l| format!(
                                "; last output: {}",
                                oz_foundation::escape::escape_control(&l)
                            ))
                            .unwrap_or_default()
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
                Err(e) => tracing::warn!(
                    task_id,
                    "cannot start the teardown command (through {}): {e}",
                    self.spawner.exe.display()
                ),
            }
            tree.end_leftovers(self.settings.stop_grace_period).await;
        }
        if owns_workspace {
            if let Err(e) = remove::remove_tree(workspace) {
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
                    self.end_recorded_cgroup(&task);
                    let _ = remove::remove_tree(&record.workspace);
                }
                let _ = std::fs::remove_file(&path);
                if kind == AGENT && unfinished.contains(&task) {
                    let message = if killed {
                        "the worker running this task died (crashed or was killed); at its restart the agent was still running and it was stopped with every process of the task"
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
        // Whatever else of a dead worker's tasks survived (a background
        // process of the setup command, one that escaped with setsid).
        for (path, record) in process::read_records::<TaskRecord>(&self.ctx.state_dir, TASK) {
            if oz_runtime::host::process_alive(record.owner_pid, &record.owner_start) {
                continue;
            }
            let cg = cgroup::TaskCgroup::at(record.cgroup.clone());
            if cg.populated() {
                tracing::warn!(
                    task_id = record.task_id,
                    "stopped the processes a dead earlier run of this worker left in the task's cgroup {}",
                    record.cgroup.display()
                );
            }
            cg.kill_all();
            cg.remove();
            let _ = std::fs::remove_file(&path);
        }
        for task in unfinished {
            if resolved.iter().any(|(t, _)| *t == task) {
                continue;
            }
            if self.settings.target_dir.is_none()
                && self.settings.cleanup
                && valid_task_id(&task.task_id)
            {
                let _ = remove::remove_tree(&self.settings.workspace_root.join(&task.task_id));
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

    /// Kills a dead worker's task cgroup before its workspace goes (so
    /// nothing writes into a folder being removed).
    fn end_recorded_cgroup(&self, task: &TaskRef) {
        let path = self.record_path(TASK, task);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(r) = serde_json::from_slice::<TaskRecord>(&bytes) {
                let cg = cgroup::TaskCgroup::at(r.cgroup);
                cg.kill_all();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while cg.populated() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
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
            let killed = oz_runtime::live_groups::kill_all();
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

    fn check(&self) -> BoxFuture<'_, Result<(), CheckError>> {
        Box::pin(async move {
            match std::fs::metadata(&self.settings.oz_path) {
                Ok(_) => Ok(()),
                Err(source) => Err(CheckError::Missing {
                    what: "agent program",
                    path: self.settings.oz_path.clone(),
                    source,
                }),
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
