//! The claim journal: what this worker has promised the orchestrator, on
//! disk, so that a crash, a kill or a restart loses nothing and runs nothing
//! twice.
//!
//! Every claimed execution is recorded (and synced) before `task_claimed` is
//! sent; its terminal report is recorded (and synced) before it is sent;
//! confirmed delivery, dispatch to an outside system and abandoned claims are
//! recorded too. At start-up a worker takes over the journals of dead earlier
//! instances with the same worker id and state directory: executions they
//! claimed and never finished are resolved by the runtime, their undelivered
//! reports are delivered, their dispatched tasks stay known (so a later
//! cancellation still reaches the dispatcher), and their recently finished
//! executions keep answering re-sent assignments.
//!
//! Layout: `<state-dir>/<worker id>/journal-<instance>.jsonl`, one JSON record
//! per line, directory 0700 and files 0600 (reports may quote task output).
//! Each live process holds an exclusive lock on its own file; a file whose
//! lock can be taken belongs to a dead process. The file is rewritten
//! compactly when it has grown well past what it describes, and finished
//! executions are remembered for [`RETAIN_FINISHED`] entries or
//! [`RETAIN_FINISHED_FOR`], whichever is fewer, so nothing grows without
//! bound.

use oz_protocol::WorkerMessage;
use oz_runtime::TaskRef;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most delivered executions remembered for de-duplication.
pub const RETAIN_FINISHED: usize = 512;
/// How long a delivered execution is remembered for de-duplication.
pub const RETAIN_FINISHED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most dispatched executions remembered (so a cancellation still reaches
/// their dispatcher); the oldest are forgotten first.
pub const RETAIN_DISPATCHED: usize = 10_000;
/// How long a dispatched execution is remembered.
pub const RETAIN_DISPATCHED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where an execution stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionState {
    /// Claimed (or about to be): the runtime may be running it.
    Claimed,
    /// Handed to an outside system that reports by itself.
    Dispatched,
    /// Ended; the report is pending until `delivered`.
    Finished {
        report: WorkerMessage,
        delivered: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub state: ExecutionState,
    /// Unix seconds of the last change.
    pub at: u64,
}

/// What a new instance inherits from dead ones.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Claimed and never finished: the runtime must say how they ended.
    pub unfinished: Vec<TaskRef>,
    /// Finished, report not yet confirmed delivered (oldest first).
    pub undelivered: Vec<(TaskRef, WorkerMessage)>,
    /// Dispatched to an outside system.
    pub dispatched: Vec<TaskRef>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Claimed {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<String>,
        at: u64,
    },
    Dispatched {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<String>,
        at: u64,
    },
    Finished {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<String>,
        at: u64,
        report: WorkerMessage,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delivered: bool,
    },
    Delivered {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<String>,
        at: u64,
    },
    /// The claim was never sent, or a dispatched task was cancelled: the
    /// execution is no longer this worker's.
    Forgotten {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<String>,
    },
}

impl Record {
    fn task(&self) -> TaskRef {
        let (task_id, execution_id) = match self {
            Record::Claimed {
                task_id,
                execution_id,
                ..
            }
            | Record::Dispatched {
                task_id,
                execution_id,
                ..
            }
            | Record::Finished {
                task_id,
                execution_id,
                ..
            }
            | Record::Delivered {
                task_id,
                execution_id,
                ..
            }
            | Record::Forgotten {
                task_id,
                execution_id,
            } => (task_id, execution_id),
        };
        TaskRef {
            task_id: task_id.clone(),
            execution_id: execution_id.clone(),
        }
    }

    fn of(task: &TaskRef, entry: &Entry) -> Record {
        let (task_id, execution_id, at) =
            (task.task_id.clone(), task.execution_id.clone(), entry.at);
        match &entry.state {
            ExecutionState::Claimed => Record::Claimed {
                task_id,
                execution_id,
                at,
            },
            ExecutionState::Dispatched => Record::Dispatched {
                task_id,
                execution_id,
                at,
            },
            ExecutionState::Finished { report, delivered } => Record::Finished {
                task_id,
                execution_id,
                at,
                report: report.clone(),
                delivered: *delivered,
            },
        }
    }
}

/// Applies one record to an in-memory view; records replay in file order.
fn apply(entries: &mut HashMap<TaskRef, Entry>, order: &mut VecDeque<TaskRef>, record: Record) {
    let task = record.task();
    match record {
        Record::Claimed { at, .. } => {
            entries.insert(
                task,
                Entry {
                    state: ExecutionState::Claimed,
                    at,
                },
            );
        }
        Record::Dispatched { at, .. } => {
            entries.insert(
                task,
                Entry {
                    state: ExecutionState::Dispatched,
                    at,
                },
            );
        }
        Record::Finished {
            at,
            report,
            delivered,
            ..
        } => {
            entries.insert(
                task.clone(),
                Entry {
                    state: ExecutionState::Finished { report, delivered },
                    at,
                },
            );
            order.retain(|t| *t != task);
            order.push_back(task);
        }
        Record::Delivered { at, .. } => {
            if let Some(Entry {
                state: ExecutionState::Finished { delivered, .. },
                at: when,
            }) = entries.get_mut(&task)
            {
                *delivered = true;
                *when = at;
            }
        }
        Record::Forgotten { .. } => {
            entries.remove(&task);
            order.retain(|t| *t != task);
        }
    }
}

struct Inner {
    file: File,
    path: PathBuf,
    /// Records in the file since it was last written whole.
    lines: usize,
    entries: HashMap<TaskRef, Entry>,
    /// Finished executions, oldest first, for retention.
    finished: VecDeque<TaskRef>,
}

/// This process's journal. All methods are synchronous and short: one
/// appended line, synced when the record is a promise (claimed, finished,
/// dispatched).
pub struct Journal {
    inner: Mutex<Inner>,
    dir: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

/// The folder of one worker id under the state directory.
pub fn worker_dir(state_dir: &Path, worker_id: &str) -> PathBuf {
    let safe: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(safe)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Reads a journal file; a torn last line (a crash mid-write) is skipped.
fn read_records(path: &Path) -> std::io::Result<Vec<Record>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(
                "skipping unreadable line {} of {}: {e}",
                n + 1,
                path.display()
            ),
        }
    }
    Ok(out)
}

/// Executions that dead instances of `worker_id` claimed and never finished,
/// read without taking anything over (`oz-agent-worker cleanup` asks before
/// removing their containers, which their next start would read). Live
/// instances' journals are skipped. Each dead file is locked only while it
/// is read; a worker starting at that moment leaves it for its next start.
pub fn unfinished_in_dead_journals(
    state_dir: &Path,
    worker_id: &str,
) -> std::io::Result<Vec<TaskRef>> {
    let dir = worker_dir(state_dir, worker_id);
    let listing = match std::fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = HashMap::new();
    let mut finished = VecDeque::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("journal-") && name.ends_with(".jsonl")) {
            continue;
        }
        let p = entry.path();
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&p) else {
            continue;
        };
        if f.try_lock().is_err() {
            continue; // a live instance's
        }
        for r in read_records(&p)? {
            apply(&mut entries, &mut finished, r);
        }
    }
    let mut out: Vec<TaskRef> = entries
        .into_iter()
        .filter(|(_, e)| matches!(e.state, ExecutionState::Claimed))
        .map(|(t, _)| t)
        .collect();
    out.sort();
    Ok(out)
}

impl Journal {
    /// Opens this process's journal under `state_dir` for `worker_id` and
    /// takes over the journals of dead earlier instances (and the saved
    /// reports of versions before the journal existed).
    ///
    /// Errors: the state directory cannot be created or written; the worker
    /// must not claim anything it cannot record.
    pub fn open(state_dir: &Path, worker_id: &str) -> std::io::Result<(Journal, Inherited)> {
        let dir = worker_dir(state_dir, worker_id);
        oz_foundation::dirs::create_private(&dir)?;
        let instance = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        // Locked before it gets a name other processes look at, so nobody
        // mistakes a starting instance's journal for a dead one's.
        let tmp = dir.join(format!(".journal-{instance}.tmp"));
        let file = private_file(&tmp)?;
        file.try_lock()
            .map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", tmp.display())))?;
        let path = dir.join(format!("journal-{instance}.jsonl"));
        std::fs::rename(&tmp, &path)?;
        sync_dir(&dir);

        let mut entries = HashMap::new();
        let mut finished = VecDeque::new();
        let mut taken = Vec::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if p == path {
                continue;
            }
            if name.starts_with("journal-") && name.ends_with(".jsonl") {
                let Ok(f) = OpenOptions::new().read(true).write(true).open(&p) else {
                    continue;
                };
                if f.try_lock().is_err() {
                    continue; // a live instance's
                }
                match read_records(&p) {
                    Ok(records) => {
                        for r in records {
                            apply(&mut entries, &mut finished, r);
                        }
                        // Keep the lock until our own file holds the records.
                        taken.push((p, f));
                    }
                    Err(e) => tracing::warn!("cannot read {}: {e}", p.display()),
                }
            } else if name.starts_with("pending-") && name.ends_with(".json") {
                legacy_pending(&dir, &p, &mut entries, &mut finished);
            }
        }

        let journal = Journal {
            inner: Mutex::new(Inner {
                file,
                path,
                lines: 0,
                entries,
                finished,
            }),
            dir: dir.clone(),
        };
        {
            let mut inner = journal.inner.lock().unwrap();
            prune(&mut inner);
            // Our own file now describes everything inherited; then the dead
            // files can go.
            rewrite(&mut inner)?;
        }
        for (p, _lock) in taken {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!("cannot remove {}: {e}", p.display());
            }
        }
        sync_dir(&dir);

        let inherited = {
            let inner = journal.inner.lock().unwrap();
            let mut inherited = Inherited::default();
            let mut unfinished: Vec<(&TaskRef, &Entry)> = inner
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.state, ExecutionState::Claimed))
                .collect();
            unfinished.sort_by_key(|(t, e)| (e.at, (*t).clone()));
            inherited.unfinished = unfinished.into_iter().map(|(t, _)| t.clone()).collect();
            let mut dispatched: Vec<&TaskRef> = inner
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.state, ExecutionState::Dispatched))
                .map(|(t, _)| t)
                .collect();
            dispatched.sort();
            inherited.dispatched = dispatched.into_iter().cloned().collect();
            for t in &inner.finished {
                if let Some(Entry {
                    state:
                        ExecutionState::Finished {
                            report,
                            delivered: false,
                        },
                    ..
                }) = inner.entries.get(t)
                {
                    inherited.undelivered.push((t.clone(), report.clone()));
                }
            }
            inherited
        };
        Ok((journal, inherited))
    }

    /// The execution is about to be claimed. Synced before returning.
    pub fn claimed(&self, task: &TaskRef) -> std::io::Result<()> {
        self.set(task, ExecutionState::Claimed, true)
    }

    /// The runtime handed the execution to an outside system. Synced.
    pub fn dispatched(&self, task: &TaskRef) -> std::io::Result<()> {
        self.set(task, ExecutionState::Dispatched, true)
    }

    /// The execution ended with `report`, not yet delivered. Synced.
    pub fn finished(&self, task: &TaskRef, report: &WorkerMessage) -> std::io::Result<()> {
        self.set(
            task,
            ExecutionState::Finished {
                report: report.clone(),
                delivered: false,
            },
            true,
        )
    }

    /// The orchestrator confirmed the report. Not synced: losing this record
    /// only means the report is sent once more, which the server ignores.
    pub fn delivered(&self, task: &TaskRef) {
        let mut inner = self.inner.lock().unwrap();
        let at = now();
        let Some(Entry {
            state: ExecutionState::Finished { delivered, .. },
            at: when,
        }) = inner.entries.get_mut(task)
        else {
            return;
        };
        if *delivered {
            return;
        }
        *delivered = true;
        *when = at;
        let record = Record::Delivered {
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
            at,
        };
        if let Err(e) = append(&mut inner, &record, false) {
            tracing::warn!("cannot write the journal: {e}");
        }
        settle(&mut inner);
    }

    /// The execution is no longer this worker's (a claim that was never
    /// sent, a dispatched task that was cancelled).
    pub fn forget(&self, task: &TaskRef) {
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.remove(task).is_none() {
            return;
        }
        inner.finished.retain(|t| t != task);
        let record = Record::Forgotten {
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
        };
        if let Err(e) = append(&mut inner, &record, false) {
            tracing::warn!("cannot write the journal: {e}");
        }
        settle(&mut inner);
    }

    /// What the journal knows of an execution.
    pub fn get(&self, task: &TaskRef) -> Option<Entry> {
        self.inner.lock().unwrap().entries.get(task).cloned()
    }

    /// Executions claimed or dispatched and not finished.
    pub fn held(&self) -> Vec<(TaskRef, ExecutionState)> {
        let inner = self.inner.lock().unwrap();
        let mut held: Vec<(TaskRef, ExecutionState)> = inner
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e.state,
                    ExecutionState::Claimed | ExecutionState::Dispatched
                )
            })
            .map(|(t, e)| (t.clone(), e.state.clone()))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        held
    }

    /// Dispatched executions of `task_id` (any execution).
    pub fn dispatched_of(&self, task_id: &str) -> Vec<TaskRef> {
        let inner = self.inner.lock().unwrap();
        inner
            .entries
            .iter()
            .filter(|(t, e)| t.task_id == task_id && matches!(e.state, ExecutionState::Dispatched))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Makes every later write fail, as a full or read-only disk would.
    #[cfg(test)]
    pub fn break_writes_for_test(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.file = File::open(&inner.path).unwrap();
    }

    /// Records in the file (for tests of compaction).
    pub fn file_records(&self) -> usize {
        self.inner.lock().unwrap().lines
    }

    /// Executions the journal describes (for tests of retention).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self, task: &TaskRef, state: ExecutionState, sync: bool) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let entry = Entry { state, at: now() };
        let record = Record::of(task, &entry);
        append(&mut inner, &record, sync)?;
        if matches!(entry.state, ExecutionState::Finished { .. }) {
            inner.finished.retain(|t| t != task);
            inner.finished.push_back(task.clone());
        }
        inner.entries.insert(task.clone(), entry);
        settle(&mut inner);
        Ok(())
    }
}

fn append(inner: &mut Inner, record: &Record, sync: bool) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).expect("journal records serialize");
    line.push(b'\n');
    inner.file.write_all(&line)?;
    if sync {
        inner.file.sync_data()?;
    }
    inner.lines += 1;
    Ok(())
}

/// After a change is applied in memory: forgets what is past retention and
/// rewrites the file once it is mostly history.
fn settle(inner: &mut Inner) {
    prune(inner);
    if inner.lines > 256 && inner.lines > 4 * inner.entries.len() {
        if let Err(e) = rewrite(inner) {
            tracing::warn!("cannot compact the journal {}: {e}", inner.path.display());
        }
    }
}

/// Replaces the file with one record per entry (atomically: a new locked
/// file renamed over the old one).
fn rewrite(inner: &mut Inner) -> std::io::Result<()> {
    let dir = inner
        .path
        .parent()
        .expect("journal has a folder")
        .to_path_buf();
    let tmp = dir.join(format!(
        ".{}.tmp",
        inner.path.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut file = private_file(&tmp)?;
    file.try_lock()
        .map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", tmp.display())))?;
    let mut buf = Vec::new();
    let mut n = 0;
    // Unfinished first (any order), then finished oldest first, so a
    // replay rebuilds the same retention order.
    for (t, e) in inner
        .entries
        .iter()
        .filter(|(_, e)| !matches!(e.state, ExecutionState::Finished { .. }))
    {
        serde_json::to_writer(&mut buf, &Record::of(t, e)).expect("serializes");
        buf.push(b'\n');
        n += 1;
    }
    for t in &inner.finished {
        if let Some(e) = inner.entries.get(t) {
            serde_json::to_writer(&mut buf, &Record::of(t, e)).expect("serializes");
            buf.push(b'\n');
            n += 1;
        }
    }
    file.write_all(&buf)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &inner.path)?;
    sync_dir(&dir);
    inner.file = file;
    inner.lines = n;
    Ok(())
}

/// Forgets delivered and dispatched executions beyond the retention bounds.
fn prune(inner: &mut Inner) {
    prune_dispatched(inner);
    prune_delivered(inner);
}

fn prune_dispatched(inner: &mut Inner) {
    let horizon = now().saturating_sub(RETAIN_DISPATCHED_FOR.as_secs());
    let mut dispatched: Vec<(u64, TaskRef)> = inner
        .entries
        .iter()
        .filter(|(_, e)| matches!(e.state, ExecutionState::Dispatched))
        .map(|(t, e)| (e.at, t.clone()))
        .collect();
    if dispatched.len() <= RETAIN_DISPATCHED && dispatched.iter().all(|(at, _)| *at >= horizon) {
        return;
    }
    dispatched.sort();
    let excess = dispatched.len().saturating_sub(RETAIN_DISPATCHED);
    for (i, (at, task)) in dispatched.into_iter().enumerate() {
        if i < excess || at < horizon {
            tracing::info!(
                task_id = task.task_id,
                execution_id = task.execution_id.as_deref().unwrap_or(""),
                "forgetting a task dispatched long ago: a cancellation will no longer reach its dispatcher"
            );
            inner.entries.remove(&task);
        }
    }
}

fn prune_delivered(inner: &mut Inner) {
    let horizon = now().saturating_sub(RETAIN_FINISHED_FOR.as_secs());
    loop {
        let delivered: usize = inner
            .finished
            .iter()
            .filter(|t| {
                matches!(
                    inner.entries.get(*t),
                    Some(Entry {
                        state: ExecutionState::Finished {
                            delivered: true,
                            ..
                        },
                        ..
                    })
                )
            })
            .count();
        let Some(oldest) = inner.finished.iter().find(|t| {
            matches!(
                inner.entries.get(*t),
                Some(Entry {
                    state: ExecutionState::Finished {
                        delivered: true,
                        ..
                    },
                    ..
                })
            )
        }) else {
            return;
        };
        let at = inner.entries[oldest].at;
        if delivered <= RETAIN_FINISHED && at >= horizon {
            return;
        }
        let oldest = oldest.clone();
        inner.entries.remove(&oldest);
        inner.finished.retain(|t| *t != oldest);
    }
}

/// Reports saved by versions before the journal (`pending-*.json`, a JSON
/// list of terminal messages): taken over like a dead instance's journal.
fn legacy_pending(
    dir: &Path,
    path: &Path,
    entries: &mut HashMap<TaskRef, Entry>,
    finished: &mut VecDeque<TaskRef>,
) {
    let claimed = dir.join(format!(
        ".legacy-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    if std::fs::rename(path, &claimed).is_err() {
        return; // another starting instance took it
    }
    match std::fs::read(&claimed).map(|b| serde_json::from_slice::<Vec<WorkerMessage>>(&b)) {
        Ok(Ok(messages)) => {
            for m in messages.into_iter().filter(WorkerMessage::is_terminal) {
                let task = TaskRef {
                    task_id: m.task_id().to_string(),
                    execution_id: m.execution_id().map(str::to_string),
                };
                apply(
                    entries,
                    finished,
                    Record::Finished {
                        task_id: task.task_id,
                        execution_id: task.execution_id,
                        at: now(),
                        report: m,
                        delivered: false,
                    },
                );
            }
        }
        _ => tracing::warn!("ignoring unreadable saved reports {}", path.display()),
    }
    let _ = std::fs::remove_file(&claimed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_protocol::{FailureReason, TaskFailed};

    fn task(id: &str) -> TaskRef {
        TaskRef {
            task_id: id.into(),
            execution_id: Some(format!("exec-{id}")),
        }
    }

    fn report(id: &str) -> WorkerMessage {
        WorkerMessage::TaskFailed(TaskFailed {
            task_id: id.into(),
            message: "m".into(),
            failure_reason: FailureReason::GracefulShutdown,
            exit_code: None,
            execution_id: Some(format!("exec-{id}")),
            failure_details: None,
        })
    }

    /// Opens the journal in a child-free way that simulates the process
    /// dying: the file lock is released by dropping the journal.
    fn reopen(dir: &Path, j: Journal) -> (Journal, Inherited) {
        drop(j);
        Journal::open(dir, "w/1").unwrap()
    }

    #[test]
    fn a_dead_instances_promises_are_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let (j, inherited) = Journal::open(dir.path(), "w/1").unwrap();
        assert!(inherited.unfinished.is_empty());
        j.claimed(&task("a")).unwrap();
        j.claimed(&task("b")).unwrap();
        j.finished(&task("b"), &report("b")).unwrap();
        j.claimed(&task("c")).unwrap();
        j.finished(&task("c"), &report("c")).unwrap();
        j.delivered(&task("c"));
        j.claimed(&task("d")).unwrap();
        j.dispatched(&task("d")).unwrap();
        j.claimed(&task("e")).unwrap();
        j.forget(&task("e"));

        let (j2, inherited) = reopen(dir.path(), j);
        assert_eq!(inherited.unfinished, vec![task("a")]);
        assert_eq!(inherited.undelivered, vec![(task("b"), report("b"))]);
        assert_eq!(inherited.dispatched, vec![task("d")]);
        assert!(matches!(
            j2.get(&task("c")).unwrap().state,
            ExecutionState::Finished {
                delivered: true,
                ..
            }
        ));
        assert_eq!(j2.get(&task("e")), None);
        // Exactly one journal file is left: the dead one was merged and removed.
        let files: Vec<_> = std::fs::read_dir(worker_dir(dir.path(), "w/1"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn a_live_instances_journal_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Journal::open(dir.path(), "w/1").unwrap();
        a.claimed(&task("x")).unwrap();
        let (b, inherited) = Journal::open(dir.path(), "w/1").unwrap();
        assert!(
            inherited.unfinished.is_empty(),
            "a is alive (holds its lock)"
        );
        assert_eq!(b.get(&task("x")), None);
        let (_c, inherited) = reopen(dir.path(), a);
        assert_eq!(inherited.unfinished, vec![task("x")]);
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w").unwrap();
        j.claimed(&task("a")).unwrap();
        let wd = worker_dir(dir.path(), "w");
        assert_eq!(
            std::fs::metadata(&wd).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in std::fs::read_dir(&wd).unwrap().flatten() {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn nothing_grows_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w/1").unwrap();
        for i in 0..(RETAIN_FINISHED + 300) {
            let t = task(&i.to_string());
            j.claimed(&t).unwrap();
            j.finished(&t, &report(&i.to_string())).unwrap();
            j.delivered(&t);
        }
        assert_eq!(j.len(), RETAIN_FINISHED);
        assert!(
            j.file_records() <= 4 * RETAIN_FINISHED + 3,
            "{} records",
            j.file_records()
        );
        // The newest are the ones kept.
        assert!(j.get(&task(&(RETAIN_FINISHED + 299).to_string())).is_some());
        assert!(j.get(&task("0")).is_none());
        // Undelivered reports are never pruned.
        let keep = task("keep");
        j.claimed(&keep).unwrap();
        j.finished(&keep, &report("keep")).unwrap();
        for i in 0..(RETAIN_FINISHED + 10) {
            let t = task(&format!("n{i}"));
            j.claimed(&t).unwrap();
            j.finished(&t, &report("n")).unwrap();
            j.delivered(&t);
        }
        let (_j, inherited) = reopen(dir.path(), j);
        assert_eq!(inherited.undelivered.len(), 1);
        assert_eq!(inherited.undelivered[0].0, keep);
    }

    #[test]
    fn dispatched_executions_are_bounded_too() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w").unwrap();
        {
            let mut inner = j.inner.lock().unwrap();
            let old = now() - RETAIN_DISPATCHED_FOR.as_secs() - 10;
            for i in 0..(RETAIN_DISPATCHED + 5) {
                let at = if i == 0 { old } else { now() };
                inner.entries.insert(
                    task(&format!("d{i}")),
                    Entry {
                        state: ExecutionState::Dispatched,
                        at,
                    },
                );
            }
            prune(&mut inner);
        }
        assert_eq!(j.len(), RETAIN_DISPATCHED);
        assert!(j.get(&task("d0")).is_none(), "older than the horizon");
        assert!(j
            .get(&task(&format!("d{}", RETAIN_DISPATCHED + 4)))
            .is_some());
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w").unwrap();
        j.claimed(&task("a")).unwrap();
        let path = j.inner.lock().unwrap().path.clone();
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"op\":\"finished\",\"task_id\":\"a\",\"rep")
            .unwrap();
        let (_j, inherited) = Journal::open(dir.path(), "w").unwrap();
        assert_eq!(inherited.unfinished, vec![task("a")]);
    }

    #[test]
    fn saved_reports_of_older_versions_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let wd = worker_dir(dir.path(), "w");
        std::fs::create_dir_all(&wd).unwrap();
        std::fs::write(
            wd.join("pending-123-abc.json"),
            serde_json::to_vec(&vec![report("old")]).unwrap(),
        )
        .unwrap();
        let (_j, inherited) = Journal::open(dir.path(), "w").unwrap();
        assert_eq!(inherited.undelivered, vec![(task("old"), report("old"))]);
        assert!(!wd.join("pending-123-abc.json").exists());
    }
}
