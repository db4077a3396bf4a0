//! Host processes for the runtimes that run programs on the worker's own
//! host (direct, command): each in its own process group, so a stop reaches
//! everything the program started; SIGTERM first, SIGKILL after a grace
//! period; exit statuses as the shell reports them (signals as 128+N);
//! output captured without ever blocking the program; and records on disk
//! so a group left running by a worker that died is stopped at its next
//! start.

use crate::{host, OutputSink, OutputStream, TaskRef};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Log target of task output lines, so operators can turn them on alone
/// (`OZ_LOG=info,task_output=debug`).
pub const TASK_OUTPUT: &str = "task_output";

/// The most output kept for a failure message.
const TAIL_BYTES: usize = 16 * 1024;

/// The exit status as a shell reports it: the code, or 128 + the signal.
pub fn exit_code(status: &ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(sig)) => 128 + i64::from(sig),
        _ => -1,
    }
}

/// A child running as the leader of its own process group.
pub struct Group {
    child: Child,
    pgid: Pid,
    tail: Arc<Mutex<VecDeque<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Spawns `cmd` in a new process group with stdout and stderr captured:
/// forwarded to `sink`, logged at debug level under [`TASK_OUTPUT`] when
/// `task_id` is given, and the last few KiB kept for [`Group::tail`].
pub fn spawn(mut cmd: Command, sink: OutputSink, task_id: Option<&str>) -> std::io::Result<Group> {
    cmd.process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the child exited at once"))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            out,
            OutputStream::Stdout,
            sink.clone(),
            tail.clone(),
            task_id.map(str::to_string),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            err,
            OutputStream::Stderr,
            sink,
            tail.clone(),
            task_id.map(str::to_string),
        )));
    }
    crate::live_groups::register(pid);
    Ok(Group {
        child,
        pgid: Pid::from_raw(pid as i32),
        tail,
        readers,
    })
}

impl Drop for Group {
    fn drop(&mut self) {
        crate::live_groups::forget(self.pgid());
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: OutputSink,
    tail: Arc<Mutex<VecDeque<u8>>>,
    task_id: Option<String>,
) {
    let mut buf = vec![0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        sink.write(stream, data);
        {
            let mut t = tail.lock().unwrap();
            t.extend(data);
            let excess = t.len().saturating_sub(TAIL_BYTES);
            t.drain(..excess);
        }
        if let Some(task_id) = &task_id {
            if tracing::enabled!(target: TASK_OUTPUT, tracing::Level::DEBUG) {
                for &b in data {
                    if b == b'\n' {
                        tracing::debug!(
                            target: TASK_OUTPUT,
                            task_id,
                            "task output: {}",
                            oz_foundation::escape::escape_control(&String::from_utf8_lossy(&line))
                        );
                        line.clear();
                    } else if line.len() < 4096 {
                        line.push(b);
                    }
                }
            }
        }
    }
}

impl Group {
    /// The process group id (= the leader's pid).
    pub fn pgid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// Gives the child's stdin to the caller (when it was piped).
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for the leader to exit and its output to be read to the end
    /// (bounded: a grandchild holding the pipes open does not hold us).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        Ok(status)
    }

    /// Sends `signal` to the whole group; a group that is gone is not an error.
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(self.pgid, signal);
    }

    /// Sends `signal` to the leader alone.
    pub fn signal_leader(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(self.pgid, signal);
    }

    /// SIGTERM to the group, then SIGKILL after `grace` (or at once when
    /// `force` fires) if the leader has not exited; then waits for it.
    pub async fn terminate(
        &mut self,
        grace: Duration,
        force: &CancellationToken,
    ) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let exited = tokio::select! {
            r = tokio::time::timeout(grace, self.child.wait()) => r.ok(),
            _ = force.cancelled() => None,
        };
        let status = match exited {
            Some(r) => r?,
            None => {
                self.signal(Signal::SIGKILL);
                self.child.wait().await?
            }
        };
        // Whatever the leader left behind in its group goes with it.
        self.signal(Signal::SIGKILL);
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        Ok(status)
    }

    /// The last few KiB of output, lossily decoded.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap();
        let (a, b) = t.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// The failure for a non-zero exit of the `what` (e.g. "the agent"):
    /// its shell-style code and its last output line, escaped.
    pub fn exit_failure(
        &self,
        status: &ExitStatus,
        reason: oz_protocol::FailureReason,
        what: &str,
    ) -> crate::Failure {
        let code = exit_code(status);
        let last = self
            .last_line()
            .map(|l| {
                format!(
                    "; last output: {}",
                    oz_foundation::escape::escape_control(&l)
                )
            })
            .unwrap_or_default();
        crate::Failure {
            reason,
            message: format!("{what} exited with code {code}{last}"),
            exit_code: Some(code),
            details: None,
        }
    }

    /// The last non-empty output line, shortened, for a failure message.
    pub fn last_line(&self) -> Option<String> {
        let tail = self.tail();
        let line = tail.lines().rev().find(|l| !l.trim().is_empty())?.trim();
        let mut s: String = line.chars().take(300).collect();
        if line.chars().count() > 300 {
            s.push('…');
        }
        Some(s)
    }
}

/// Kills the process group `pgid` if its leader `pid` is still the process
/// that started at `start` (so a recycled pid is never signalled).
pub fn kill_group_if_alive(pid: u32, start: &str) -> bool {
    if !crate::host::process_alive(pid, start) {
        return false;
    }
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    true
}

/// A task's process group on disk (a JSON file in a runtime's state
/// folder), so the next start of the worker can stop it if this worker dies
/// while it runs. It names its owner, the worker process that started it:
/// only a record whose owner is gone is acted on, so the start of a
/// sibling sharing the worker id and state directory never touches a live
/// worker's processes. Pids are paired with start times, so a recycled pid
/// is never mistaken for the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub task_id: String,
    pub execution_id: Option<String>,
    /// The group's leader (= the process group id).
    pub pid: u32,
    /// The leader's start time (clock ticks since boot).
    pub start: String,
    pub owner_pid: u32,
    pub owner_start: String,
    /// The owner's liveness socket and namespaces (`runtime::liveness`);
    /// empty in records written before they existed.
    #[serde(default)]
    pub owner_beacon: String,
    #[serde(default)]
    pub owner_net_namespace: String,
    #[serde(default)]
    pub owner_pid_namespace: String,
}

impl GroupRecord {
    /// The record of `group`, run for `task` by this process; `None` when
    /// the leader already exited.
    pub fn of(task: &TaskRef, group: &Group) -> Option<GroupRecord> {
        let owner_pid = std::process::id();
        Some(GroupRecord {
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
            pid: group.pgid(),
            start: host::process_start_time(group.pgid())?,
            owner_pid,
            owner_start: host::process_start_time(owner_pid).unwrap_or_default(),
            owner_beacon: crate::liveness::beacon().to_string(),
            owner_net_namespace: crate::liveness::net_namespace(),
            owner_pid_namespace: crate::liveness::pid_namespace(),
        })
    }

    pub fn task(&self) -> TaskRef {
        TaskRef {
            task_id: self.task_id.clone(),
            execution_id: self.execution_id.clone(),
        }
    }

    /// Whether the worker process that wrote the record still runs, or
    /// might (it cannot be checked from this process's namespaces): only a
    /// provably dead owner's processes are acted on.
    pub fn owner_alive(&self) -> bool {
        use crate::liveness::{judge_here, OwnerMarks, Verdict};
        let marks = OwnerMarks {
            pid: Some(self.owner_pid),
            pid_start: &self.owner_start,
            beacon: &self.owner_beacon,
            net_namespace: &self.owner_net_namespace,
            pid_namespace: &self.owner_pid_namespace,
        };
        !matches!(judge_here(&marks), Verdict::Dead(_))
    }

    /// SIGKILLs the recorded group if its leader still runs; whether it did.
    pub fn kill_if_alive(&self) -> bool {
        kill_group_if_alive(self.pid, &self.start)
    }
}

/// Where a runtime keeps the record of `task`'s `kind` of process
/// (e.g. `agent`, `dispatch`): `<dir>/<kind>-<task id>-<execution id>.json`,
/// ids reduced to characters safe in a file name.
pub fn record_path(dir: &Path, kind: &str, task: &TaskRef) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let exec = task.execution_id.as_deref().unwrap_or("none");
    dir.join(format!(
        "{kind}-{}-{}.json",
        safe(&task.task_id),
        safe(exec)
    ))
}

/// Writes `record` to `path` whole (through a temporary file and a rename).
pub fn write_record<T: Serialize>(path: &Path, record: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(record).expect("records serialize"))?;
    std::fs::rename(&tmp, path)
}

/// Every `<kind>-*.json` record in `dir` with its path; unreadable ones
/// (a crash mid-write) are removed.
pub fn read_records<T: DeserializeOwned>(dir: &Path, kind: &str) -> Vec<(PathBuf, T)> {
    let prefix = format!("{kind}-");
    let paths = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut out = Vec::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(&prefix) || !name.ends_with(".json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push((path, r)),
            Err(e) => {
                tracing::warn!("removing the unreadable record {}: {e}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pids of running (not zombie) processes in group `pgid`.
    fn live_members(pgid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .collect()
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).stdin(Stdio::null());
        c
    }

    #[tokio::test]
    async fn exit_codes_are_shell_style_and_output_is_kept() {
        let mut g = spawn(
            sh("echo hello; echo oops >&2; exit 3"),
            OutputSink::none(),
            None,
        )
        .unwrap();
        let status = g.wait().await.unwrap();
        assert_eq!(exit_code(&status), 3);
        assert!(g.tail().contains("hello") && g.tail().contains("oops"));
        assert_eq!(g.last_line().as_deref(), Some("oops"));
    }

    #[tokio::test]
    async fn terminate_reaches_the_whole_group_and_kills_after_the_grace() {
        // The leader ignores TERM; its grandchild is in the same group.
        let (sink, reader) = OutputSink::channel();
        let mut g = spawn(
            sh("trap '' TERM; sleep 300 & echo started; wait"),
            sink,
            None,
        )
        .unwrap();
        let chunk = reader.next().await.unwrap();
        assert_eq!(chunk.data, b"started\n");
        let start = std::time::Instant::now();
        let status = g
            .terminate(Duration::from_millis(300), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(exit_code(&status), 128 + 9, "SIGKILL after the grace");
        assert!(start.elapsed() >= Duration::from_millis(300));
        // Nothing of the group is left running (the orphaned `sleep` may
        // stay a zombie until init reaps it; the kernel kills it at once).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !live_members(g.pgid()).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} still running",
                live_members(g.pgid())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_polite_program_exits_on_sigterm() {
        let (sink, reader) = OutputSink::channel();
        let mut g = spawn(
            sh("trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done"),
            sink,
            None,
        )
        .unwrap();
        assert_eq!(reader.next().await.unwrap().data, b"up\n");
        let status = g
            .terminate(Duration::from_secs(30), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(exit_code(&status), 0);
    }
}
