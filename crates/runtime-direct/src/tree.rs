//! How the direct runtime keeps every process of a task together and ends
//! them with it: a cgroup v2 per task where the worker may make one
//! ([`super::cgroup`]), otherwise the launcher as the tree's subreaper
//! ([`super::launcher`]). Each program (setup, agent, teardown) starts
//! through the launcher, which also sets the OOM score and the user.
//!
//! | | cgroup | subreaper |
//! |---|---|---|
//! | a stop | SIGTERM to every process in the cgroup, `cgroup.kill` after the grace | SIGTERM to the launcher, which sends it to every descendant and SIGKILLs them after the grace |
//! | the program exits | what it left running gets SIGTERM, then SIGKILL after the grace (after the agent and the teardown; the setup command's background processes are left for the agent) | the launcher ends the rest of its tree the same way (so a setup command's background processes end with it) |
//! | the worker is killed | the cgroup (recorded in the state dir) is killed at the next start | the kernel's parent-death signal makes each launcher kill its tree at once |
//! | resource limits | `cpu.max`, `memory.max`, `memory.swap.max`, `pids.max` | refused at start-up |

use super::cgroup::{Cgroups, TaskCgroup};
use super::launcher::{Launch, RunAs, TASK_OOM_SCORE_ADJ};
use nix::sys::signal::Signal;
use oz_runtime::process::{self, Group};
use oz_runtime::OutputSink;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long past the grace the worker waits for a subreaper launcher to
/// finish ending its tree before it kills the tree at once itself.
const REAPER_MARGIN: Duration = Duration::from_secs(5);

/// How tasks are contained on this host (chosen at start-up).
#[derive(Debug, Clone)]
pub enum Containment {
    Cgroup(Cgroups),
    Subreaper,
}

impl Containment {
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup(c) => {
                format!("a cgroup v2 per task under {}", c.parent().display())
            }
            Containment::Subreaper => {
                "a subreaper launcher per program (no writable cgroup v2)".into()
            }
        }
    }
}

/// Starts a task's programs through the launcher.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// This worker's own binary (the launcher).
    pub exe: PathBuf,
    pub containment: Containment,
    pub user: Option<RunAs>,
    pub grace: Duration,
}

/// One task's container of processes.
#[derive(Debug, Clone, Default)]
pub struct TaskTree {
    pub cgroup: Option<Arc<TaskCgroup>>,
}

/// A running program of a task.
pub struct TaskProcess {
    pub group: Group,
    cgroup: Option<Arc<TaskCgroup>>,
    grace: Duration,
}

impl Spawner {
    /// A new tree for `task_id`: in cgroup mode, a new cgroup with the limits.
    pub fn tree(&self, task_id: &str) -> std::io::Result<TaskTree> {
        match &self.containment {
            Containment::Cgroup(c) => Ok(TaskTree {
                cgroup: Some(Arc::new(c.create(task_id)?)),
            }),
            Containment::Subreaper => Ok(TaskTree::default()),
        }
    }

    /// `program args…` started through the launcher for `tree`.
    pub fn command(&self, tree: &TaskTree, program: &Path, args: &[String]) -> Command {
        let launch = Launch {
            cgroup_procs: tree.cgroup.as_ref().map(|c| c.procs_file()),
            oom_score_adj: Some(TASK_OOM_SCORE_ADJ),
            user: self.user.clone(),
            reap: tree.cgroup.is_none().then_some(self.grace),
        };
        let mut cmd = Command::new(&self.exe);
        cmd.args(launch.args(program, args));
        cmd
    }

    /// Spawns `cmd` (from [`Spawner::command`]) with output captured.
    pub fn spawn(
        &self,
        tree: &TaskTree,
        cmd: Command,
        sink: OutputSink,
        task_id: &str,
    ) -> std::io::Result<TaskProcess> {
        Ok(TaskProcess {
            group: process::spawn(cmd, sink, Some(task_id))?,
            cgroup: tree.cgroup.clone(),
            grace: self.grace,
        })
    }
}

impl TaskTree {
    /// Ends whatever still runs in the tree (SIGTERM, SIGKILL after
    /// `grace`): after the agent and after the teardown. A no-op with the
    /// subreaper, whose launcher has done it.
    pub async fn end_leftovers(&self, grace: Duration) {
        if let Some(cg) = &self.cgroup {
            if cg.populated() {
                tracing::info!(cgroup = %cg.path().display(), "ending processes the task left running (SIGTERM, SIGKILL after {grace:?})");
                cg.stop_all(grace, &CancellationToken::new()).await;
            }
        }
    }

    /// Kills all and removes the cgroup.
    pub fn remove(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
            cg.remove();
        }
    }

    /// Processes the kernel's OOM killer killed in this task so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.oom_kills())
    }
}

impl TaskProcess {
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.group.wait().await
    }

    /// Stops everything of the task: SIGTERM to all its processes, SIGKILL
    /// after `grace` (at once when `force` fires); then waits for the
    /// program.
    pub async fn terminate(
        &mut self,
        grace: Duration,
        force: &CancellationToken,
    ) -> std::io::Result<ExitStatus> {
        match self.cgroup.clone() {
            Some(cg) => {
                cg.stop_all(grace, force).await;
                // The launcher may still be joining (it was just spawned):
                // the group catches it.
                self.group.terminate(Duration::ZERO, force).await
            }
            None => {
                // The launcher forwards SIGTERM to its whole tree and kills
                // it after its grace; SIGUSR1 kills it at once.
                let limit = if grace.is_zero() {
                    self.group.signal_leader(Signal::SIGUSR1);
                    REAPER_MARGIN
                } else {
                    self.group.signal_leader(Signal::SIGTERM);
                    grace.max(self.grace) + REAPER_MARGIN
                };
                let done = tokio::select! {
                    r = tokio::time::timeout(limit, self.group.wait()) => r.ok(),
                    _ = force.cancelled() => None,
                };
                match done {
                    Some(r) => r,
                    None => {
                        // Kill the tree now (the launcher does it on SIGUSR1).
                        self.group.signal_leader(Signal::SIGUSR1);
                        match tokio::time::timeout(REAPER_MARGIN, self.group.wait()).await {
                            Ok(r) => r,
                            Err(_) => {
                                self.group
                                    .terminate(Duration::ZERO, &CancellationToken::new())
                                    .await
                            }
                        }
                    }
                }
            }
        }
    }
}
