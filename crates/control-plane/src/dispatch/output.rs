//! Live output of runs: what workers send in `task_output` frames
//! (docs/PROTOCOL.md, `task-output`), kept per run within a limit and handed
//! to readers as it arrives.
//!
//! A frame only joins a small per-run buffer in memory; one database job at
//! a time per run writes it, and that job takes everything that arrived
//! until it runs, so a chatty task costs one write per commit rather than
//! one per frame. The buffer never holds more than the limit: beyond it the
//! oldest bytes are counted as lost, and readers are told (the store keeps
//! only the last `limit` bytes anyway). Readers read the database and wait
//! on a per-run [`Progress`] watch that says how far the stored output
//! reaches and whether it is final.
//!
//! A worker sends output on a lower-priority queue than its reports, so a
//! run's last output can arrive just after its terminal report. A run's
//! output is therefore final (`settled`) only once the run has ended and no
//! output arrived for [`SETTLE_QUIET`] (at most [`SETTLE_MAX`] after the
//! end). Output arriving later still is stored, for later reads.

use crate::store::{NewChunk, OutputTotals, Store, StoreError};
use oz_protocol::OutputStream;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// After a run ended, its output is final once none arrived for this long.
pub(crate) const SETTLE_QUIET: Duration = Duration::from_millis(300);
/// … or this long after the end, whatever still trickles in.
pub const SETTLE_MAX: Duration = Duration::from_secs(3);
/// Consecutive frames of one stream are merged up to this size before
/// they are stored (fewer, larger rows).
const MERGE_UP_TO: usize = 64 * 1024;
/// Default bytes kept per run (`--output-limit`).
pub(crate) const DEFAULT_LIMIT: u64 = 4 * 1024 * 1024;

/// How far a run's stored output reaches, and whether more may come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The end offset of what is stored (bytes).
    pub stored_end: u64,
    /// The run ended and its output is final.
    pub settled: bool,
}

#[derive(Clone)]
pub(crate) struct OutputLog(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    limit: u64,
    runs: Mutex<HashMap<String, RunOutput>>,
    rt: tokio::runtime::Handle,
}

struct RunOutput {
    pending: VecDeque<NewChunk>,
    pending_bytes: u64,
    /// Bytes dropped from `pending` to keep it within the limit.
    lost: u64,
    /// A write job of this run is queued or running.
    flushing: bool,
    progress: watch::Sender<Progress>,
    ended_at: Option<Instant>,
    /// The worker connection whose report ended the run: late output that
    /// names no execution is taken from it only.
    ended_conn: Option<u64>,
    last_input: Option<Instant>,
}

impl RunOutput {
    fn new() -> RunOutput {
        RunOutput {
            pending: VecDeque::new(),
            pending_bytes: 0,
            lost: 0,
            flushing: false,
            progress: watch::Sender::new(Progress::default()),
            ended_at: None,
            ended_conn: None,
            last_input: None,
        }
    }
}

impl OutputLog {
    /// Keeps `limit` bytes per run. Must be called inside a tokio runtime
    /// (settling runs on it).
    pub(crate) fn new(store: Arc<Store>, limit: u64) -> OutputLog {
        OutputLog(Arc::new(Inner {
            store,
            limit: limit.max(1),
            runs: Mutex::default(),
            rt: tokio::runtime::Handle::current(),
        }))
    }

    /// Bytes kept per run.
    pub(crate) fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Output of run `run_id` (already checked to be the run's worker's),
    /// in the order received. Never blocks on the database.
    pub(crate) fn append(
        &self,
        run_id: &str,
        stream: OutputStream,
        data: String,
        dropped_bytes: u64,
    ) {
        if data.is_empty() && dropped_bytes == 0 {
            return;
        }
        let start = {
            let mut runs = self.0.lock();
            let r = runs
                .entry(run_id.to_string())
                .or_insert_with(RunOutput::new);
            r.last_input = Some(Instant::now());
            r.pending_bytes += data.len() as u64;
            match r.pending.back_mut() {
                Some(last)
                    if last.stream == stream
                        && dropped_bytes == 0
                        && last.data.len() + data.len() <= MERGE_UP_TO =>
                {
                    last.data.push_str(&data)
                }
                _ => r.pending.push_back(NewChunk {
                    stream,
                    data,
                    dropped_before: dropped_bytes,
                }),
            }
            while r.pending_bytes > self.0.limit && r.pending.len() > 1 {
                let gone = r.pending.pop_front().expect("more than one");
                r.pending_bytes -= gone.data.len() as u64;
                r.lost += gone.data.len() as u64;
                // The worker's count stays in the totals.
                if let Some(next) = r.pending.front_mut() {
                    next.dropped_before += gone.dropped_before;
                }
            }
            !std::mem::replace(&mut r.flushing, true)
        };
        if start {
            self.flush(run_id);
        }
    }

    /// The run ended: its output becomes final once it has been quiet for
    /// [`SETTLE_QUIET`] (at most [`SETTLE_MAX`] from now). Idempotent.
    pub(crate) fn ended(&self, run_id: &str) {
        self.end(run_id, None)
    }

    /// [`OutputLog::ended`], by the report of worker connection `conn`.
    pub(crate) fn ended_on(&self, run_id: &str, conn: u64) {
        self.end(run_id, Some(conn))
    }

    /// Whether output for run `run_id`, which has ended, is still taken:
    /// only until its output settles (the worker's output queue may trail
    /// its report by that much), and, when the frame names no execution
    /// (`names_execution` false; the caller has checked a named one), only
    /// from the connection whose report ended it. Output after that is
    /// refused: an ended run's output is final.
    pub(crate) fn accepts_late(&self, run_id: &str, conn: u64, names_execution: bool) -> bool {
        let runs = self.0.lock();
        let Some(r) = runs.get(run_id) else {
            return false;
        };
        r.ended_at.is_some()
            && !r.progress.borrow().settled
            && (names_execution || r.ended_conn == Some(conn))
    }

    fn end(&self, run_id: &str, conn: Option<u64>) {
        {
            let mut runs = self.0.lock();
            let r = runs
                .entry(run_id.to_string())
                .or_insert_with(RunOutput::new);
            if r.ended_at.is_some() {
                return;
            }
            r.ended_at = Some(Instant::now());
            r.ended_conn = conn;
        }
        let log = self.clone();
        let run_id = run_id.to_string();
        self.0.rt.spawn(async move { log.settle(&run_id).await });
    }

    async fn settle(&self, run_id: &str) {
        loop {
            let wake = {
                let mut runs = self.0.lock();
                let Some(r) = runs.get_mut(run_id) else {
                    return;
                };
                let Some(ended) = r.ended_at else { return };
                let now = Instant::now();
                let quiet_from = r.last_input.map_or(ended, |t| t.max(ended));
                let due = (quiet_from + SETTLE_QUIET).min(ended + SETTLE_MAX);
                if now >= due && !r.flushing {
                    r.progress.send_modify(|p| p.settled = true);
                    return;
                }
                // Still writing: look again shortly.
                due.max(now + Duration::from_millis(10))
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    /// Watches run `run_id`'s output. The value starts unsettled for a run
    /// this log has not seen end: a reader that finds the run ended in the
    /// database calls [`OutputLog::ended`].
    pub(crate) fn subscribe(&self, run_id: &str) -> watch::Receiver<Progress> {
        self.0
            .lock()
            .entry(run_id.to_string())
            .or_insert_with(RunOutput::new)
            .progress
            .subscribe()
    }

    /// Forgets runs with nothing pending, no reader and no settling to do.
    pub(crate) fn prune(&self) {
        self.0.lock().retain(|_, r| {
            r.flushing
                || !r.pending.is_empty()
                || r.progress.receiver_count() > 0
                || (r.ended_at.is_some() && !r.progress.borrow().settled)
        });
    }

    fn flush(&self, run_id: &str) {
        let (take_log, done_log) = (self.clone(), self.clone());
        let (take_id, done_id) = (run_id.to_string(), run_id.to_string());
        self.0.store.append_output_then(
            run_id,
            self.0.limit,
            move || take_log.take(&take_id),
            move |result| done_log.flushed(&done_id, result),
        );
    }

    /// On the database thread, when the write job runs.
    fn take(&self, run_id: &str) -> (Vec<NewChunk>, u64) {
        let mut runs = self.0.lock();
        let Some(r) = runs.get_mut(run_id) else {
            return (Vec::new(), 0);
        };
        r.pending_bytes = 0;
        (
            std::mem::take(&mut r.pending).into(),
            std::mem::take(&mut r.lost),
        )
    }

    /// On the database thread, once the write is committed (or failed).
    fn flushed(&self, run_id: &str, result: Result<OutputTotals, StoreError>) {
        let again = {
            let mut runs = self.0.lock();
            let Some(r) = runs.get_mut(run_id) else {
                return;
            };
            match result {
                Ok(t) => {
                    r.progress.send_modify(|p| p.stored_end = t.end);
                }
                Err(e) => {
                    tracing::error!(run = %oz_foundation::escape::Escaped(run_id), "could not store the run's output: {e}")
                }
            }
            if r.pending.is_empty() && r.lost == 0 {
                r.flushing = false;
                false
            } else {
                true
            }
        };
        if again {
            self.flush(run_id);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunOutput>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
