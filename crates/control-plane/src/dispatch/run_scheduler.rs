//! Routing runs to worker connections: offers (one execution per run,
//! round-robin across connections sharing a worker id, one unclaimed offer
//! per connection, nothing more to a connection at capacity until one of
//! its tasks ends), claims and re-announces, live output, reports and their
//! acks, results reported through the API, requeue, cancellation and the
//! worker-lost clock.
//!
//! Decisions are made in memory (`index`), under one lock that is never
//! held across an await; each decision's store write is submitted under
//! that lock, so writes reach the database thread in decision order, and
//! any message that announces a change (an assignment, a report ack, a
//! cancellation) is written to the worker only once that change is stored
//! (`Outgoing::WhenStored`). A write that fails puts its run on a list the
//! sweep reloads from the database, the durable truth. The database is read
//! only for messages about runs that are no longer live, and by the API.

use crate::dispatch::index::{AtCapacity, Index, LiveRun, Offer, Receipt, WorkerKey};
use crate::dispatch::metrics::{PlaneMetrics, WorkerQueue};
use crate::dispatch::output::OutputLog;
use crate::store::time;
use crate::store::{self, Change, EndedBy, RunRecord, Store, StoreError};
use futures_util::FutureExt;
use oz_foundation::escape::Escaped;
use oz_protocol::{
    Owner, OwnerType, ReportAck, ServerMessage, Task, TaskAssignment, TaskCancellation,
    TaskDefinition, WorkerMessage, TASK_STATE_CANCELLED,
};
use oz_runs_api::model::{
    CreateRunRequest, ResultOutcome, RunResultRequest, RunState, WorkerConnection,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) use crate::dispatch::index::{ConnId, Outgoing};

/// The run scheduler's clocks (from `serve`'s flags).
#[derive(Debug, Clone)]
pub(crate) struct SchedulingTimeouts {
    /// How long a claimed run may go without any connected worker of its id
    /// before it fails with `worker_lost`.
    pub worker_lost: Duration,
    /// After a connection rejects an offer, how long before it is offered
    /// anything again when none of its tasks ended meanwhile. Doubles with
    /// each rejected probe, up to 16 times this.
    pub rejection_backoff: Duration,
    /// After a restart, how long a run left `assigned` waits for a worker of
    /// its id to re-announce (or report on) its execution before it is
    /// offered again, with the same execution id.
    pub reannounce_grace: Duration,
}

/// Why a cancellation was refused or not recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("no such run")]
    NotFound,
    #[error("the run already ended ({0})")]
    AlreadyFinished(RunState),
    /// Decided, but its store write failed (logged where it failed).
    #[error("the cancellation could not be stored; see the control plane's log")]
    NotStored,
    #[error(transparent)]
    Reloading(#[from] Reloading),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reported result was refused or not recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResultError {
    #[error("no such run")]
    NotFound,
    /// A sentence saying why the run cannot take this result now.
    #[error("{0}")]
    Conflict(String),
    /// Decided, but its store write failed (logged where it failed).
    #[error("the result could not be stored; see the control plane's log")]
    NotStored,
    #[error(transparent)]
    Reloading(#[from] Reloading),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The run's memory and the database disagree after a failed write: the
/// sweep reloads it from the database; the caller may try again.
#[derive(Debug, thiserror::Error)]
#[error("the control plane is reloading this run after a database error; try again in a second")]
pub(crate) struct Reloading;

/// What the run scheduler knows of one worker id's connections and runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerActivity {
    pub connections: Vec<WorkerConnection>,
    pub active_runs: usize,
    pub queued_runs: usize,
}

/// Places queued runs on worker connections (as kube-scheduler binds Pods
/// to Nodes) and follows each to its end: offers, claims, re-announces,
/// output, reports, results through the API, cancellation, and the
/// worker-lost clock. One per control plane; see the module documentation
/// for how its memory and the store stay in step.
pub(crate) struct RunScheduler {
    store: Arc<Store>,
    output: OutputLog,
    timeouts: SchedulingTimeouts,
    index: Mutex<Index>,
    /// Runs whose store write failed: memory may be ahead of the database,
    /// so the sweep reloads them.
    resync: Arc<Mutex<Vec<String>>>,
    /// Set once the control plane shuts down: connections closing from then
    /// on leave their runs as stored, for the next start to recover.
    stopping: AtomicBool,
    metrics: PlaneMetrics,
}

impl RunScheduler {
    /// Builds the run scheduler from the stored runs that have not ended.
    /// Runs assigned before a restart keep their execution and wait
    /// `reannounce_grace` for a worker to re-announce or report on it (the
    /// claim may have been sent and never read); then they are offered
    /// again. Claimed runs wait for their worker to report.
    pub(crate) async fn recover(
        store: Arc<Store>,
        timeouts: SchedulingTimeouts,
        output_limit: u64,
    ) -> Result<RunScheduler, StoreError> {
        let live = store.live_runs().await?;
        let paused = store.paused_workers().await?;
        let d = RunScheduler {
            output: OutputLog::new(store.clone(), output_limit),
            store,
            timeouts,
            index: Mutex::default(),
            resync: Arc::default(),
            stopping: AtomicBool::new(false),
            metrics: PlaneMetrics::new(),
        };
        {
            let mut ix = d.lock();
            for run in live {
                d.restore(&mut ix, run.seq, run.record);
            }
            for key in paused {
                ix.set_paused(&key, true);
            }
        }
        Ok(d)
    }

    /// Puts a stored run that has not ended into memory, as after a restart.
    fn restore(&self, ix: &mut Index, seq: i64, rec: RunRecord) {
        let now = Instant::now();
        let mut live = LiveRun::new(seq, rec.team_id, rec.spec, rec.created_at);
        live.execution_id = rec.execution_id;
        live.cancel_requested = rec.cancel_requested;
        match rec.state {
            RunState::Assigned => {
                live.unconfirmed_until = Some(now + self.timeouts.reannounce_grace)
            }
            RunState::Claimed => live.absent_since = Some(now),
            _ => {}
        }
        ix.insert(&rec.id, live, rec.state, None);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn output(&self) -> &OutputLog {
        &self.output
    }

    pub(crate) fn metrics(&self) -> &PlaneMetrics {
        &self.metrics
    }

    /// From now on, closing connections change no run: a shutdown is a
    /// restart to come, and an assignment whose claim may be in flight must
    /// stay assigned for the next start's re-announce grace.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Submits `id`: `from` → `change`; the receipt says whether it was
    /// stored. On failure (or when the database disagrees about `from`) the
    /// run is reloaded by the next sweep.
    fn persist(&self, id: &str, from: RunState, change: Change) -> Receipt {
        let (settle, receipt) = self.receipt(id);
        self.store.transition_then(id, from, change, move |r| {
            settle.settle(
                r,
                "the database disagrees with the run scheduler about this run; reloading it",
            )
        });
        receipt
    }

    /// A receipt for a write about run `id`, and what settles it.
    fn receipt(&self, id: &str) -> (Settle, Receipt) {
        let (tx, rx) = oneshot::channel();
        let settle = Settle {
            tx,
            resync: self.resync.clone(),
            run: id.to_string(),
        };
        (settle, rx.shared())
    }

    // ---- connections ----

    /// A worker connected; `version` is its `X-Warp-Worker-Version`.
    pub(crate) fn register(
        &self,
        team_id: i64,
        worker_id: &str,
        version: Option<String>,
        tx: mpsc::UnboundedSender<Outgoing>,
    ) -> ConnId {
        let key = WorkerKey::new(team_id, worker_id);
        self.note_worker_seen(team_id, worker_id);
        let mut ix = self.lock();
        let id = ix.add_conn(key.clone(), tx, time::now());
        if let Some(c) = ix.conn_mut(id) {
            c.version = version.clone();
        }
        tracing::info!(
            conn = id,
            team_id,
            worker_id = %Escaped(worker_id),
            version = %Escaped(version.as_deref().unwrap_or("")),
            "worker connected"
        );
        // Cancellations requested while no connection held the run.
        let orphans: Vec<String> = ix
            .runs()
            .filter(|(_, r)| r.key() == key && r.holder().is_none() && r.cancel_requested)
            .filter(|(_, r)| r.state() != RunState::Queued)
            .map(|(id, _)| id.clone())
            .collect();
        for run in orphans {
            // This connection is now the one the run's execution is
            // entrusted to: its report (which may name no execution) is
            // taken from it.
            if let Some(state) = ix.run(&run).map(LiveRun::state) {
                ix.place(&run, state, Some(id));
            }
            ix.send(id, Outgoing::Now(cancellation(&run)));
        }
        self.offer_queued(&mut ix, &key);
        id
    }

    /// The connection closed: the run it was offered but had not claimed
    /// goes back to the queue (same execution); claimed runs stay claimed
    /// and wait for their worker.
    pub(crate) fn unregister(&self, conn: ConnId) {
        let mut ix = self.lock();
        let Some((key, offered, held)) = ix.remove_conn(conn) else {
            return;
        };
        tracing::info!(conn, team_id = key.team_id, worker_id = %Escaped(&key.worker_id), "worker disconnected");
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        self.note_worker_seen(key.team_id, &key.worker_id);
        for run in offered {
            self.requeue_or_cancel(&mut ix, &run, "worker connection closed before claim");
        }
        for run in held {
            if let Some(r) = ix.run_mut(&run) {
                r.absent_since = None;
            }
        }
        self.offer_queued(&mut ix, &key);
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.lock().conn_count()
    }

    /// Records the worker id as seen now (for the list of known workers);
    /// a failure only costs that.
    fn note_worker_seen(&self, team_id: i64, worker_id: &str) {
        let id = worker_id.to_string();
        self.store.worker_seen_then(team_id, worker_id, move |r| {
            if let Err(e) = r {
                tracing::warn!(worker_id = %Escaped(&id), "cannot record the worker id as seen: {e}");
            }
        });
    }

    /// Every team's worker ids that have live connections or runs, with
    /// what waits for each (for the metrics page), by team and id.
    pub(crate) fn queues(&self) -> Vec<WorkerQueue> {
        fn of<'a>(
            out: &'a mut std::collections::BTreeMap<WorkerKey, WorkerQueue>,
            key: &WorkerKey,
        ) -> &'a mut WorkerQueue {
            out.entry(key.clone()).or_insert_with(|| WorkerQueue {
                team_id: key.team_id,
                worker_id: key.worker_id.clone(),
                queued: 0,
                active: 0,
                connections: 0,
                oldest_queued: None,
            })
        }
        let now = Instant::now();
        let ix = self.lock();
        let mut out = std::collections::BTreeMap::new();
        for (_, c) in ix.conns() {
            of(&mut out, &c.key).connections += 1;
        }
        for (_, r) in ix.runs() {
            let q = of(&mut out, &r.key());
            if r.state() == RunState::Queued {
                q.queued += 1;
                let waited = now.saturating_duration_since(r.queued_since);
                q.oldest_queued = Some(q.oldest_queued.map_or(waited, |o| o.max(waited)));
            } else {
                q.active += 1;
            }
        }
        out.into_values().collect()
    }

    /// Each worker id of `team_id` that has live connections or runs, with
    /// its connections and run counts.
    pub(crate) fn workers(
        &self,
        team_id: i64,
    ) -> std::collections::BTreeMap<String, WorkerActivity> {
        let ix = self.lock();
        let mut out: std::collections::BTreeMap<String, WorkerActivity> = Default::default();
        for (_, c) in ix.conns().filter(|(_, c)| c.key.team_id == team_id) {
            out.entry(c.key.worker_id.clone())
                .or_default()
                .connections
                .push(WorkerConnection {
                    connected_at: c.connected_at.clone(),
                    active_runs: c.held() + c.offered(),
                    at_capacity: c.at_capacity.as_ref().map(|a| a.reason.clone()),
                    draining: c.draining,
                    version: c.version.clone(),
                });
        }
        for (_, r) in ix.runs().filter(|(_, r)| r.team_id == team_id) {
            let w = out.entry(r.spec.worker_host.clone()).or_default();
            if r.state() == RunState::Queued {
                w.queued_runs += 1;
            } else {
                w.active_runs += 1;
            }
        }
        for w in out.values_mut() {
            w.connections
                .sort_by(|a, b| a.connected_at.cmp(&b.connected_at));
        }
        out
    }

    // ---- worker messages ----

    /// One frame from connection `conn`, in the order the worker sent it.
    pub(crate) async fn handle(&self, conn: ConnId, msg: WorkerMessage) {
        let key = match self.lock().conn(conn) {
            Some(c) => c.key.clone(),
            None => return,
        };
        if let WorkerMessage::WorkerState(state) = &msg {
            let mut ix = self.lock();
            if let Some(c) = ix.conn_mut(conn) {
                if c.draining != state.draining {
                    tracing::info!(conn, worker_id = %key.worker_id, draining = state.draining, "worker state");
                }
                c.draining = state.draining;
            }
            // A connection that stopped draining may take runs again.
            self.offer_queued(&mut ix, &key);
            return;
        }
        if self.handle_live(conn, &key, &msg) {
            return;
        }
        // Not a live run: it ended, or it is not this worker's to speak of.
        match self.store.get_run(msg.task_id(), Some(key.team_id)).await {
            Ok(rec) => self.handle_not_live(conn, &key, &msg, rec),
            // Unacknowledged: the worker sends it again later.
            Err(e) => tracing::error!(conn, run = %Escaped(msg.task_id()), "{e}"),
        }
    }

    /// Acks a terminal report (no-op for other messages): sent at once, or
    /// once `stored` says the report is recorded.
    fn ack(&self, ix: &Index, conn: ConnId, msg: &WorkerMessage, stored: Option<Receipt>) {
        if !msg.is_terminal() {
            return;
        }
        let ack = ServerMessage::ReportAck(ReportAck {
            task_id: msg.task_id().to_string(),
            execution_id: msg.execution_id().map(str::to_string),
        });
        ix.send(
            conn,
            match stored {
                Some(rx) => Outgoing::WhenStored(rx, ack),
                None => Outgoing::Now(ack),
            },
        );
    }

    /// Decides a message about a live run; `false` when the run is not live.
    fn handle_live(&self, conn: ConnId, key: &WorkerKey, msg: &WorkerMessage) -> bool {
        let mut ix = self.lock();
        let run_id = msg.task_id();
        let kind = msg.kind();
        let Some(run) = ix.run(run_id) else {
            return false;
        };
        if run.team_id != key.team_id {
            return false; // answered like an unknown run, from the store
        }
        if run.spec.worker_host != key.worker_id {
            tracing::warn!(
                conn,
                run = %Escaped(run_id),
                kind,
                "message about a run routed to another worker id; ignored"
            );
            self.ack(&ix, conn, msg, None);
            return true;
        }
        if let Some(named) = msg.execution_id() {
            if run.execution_id.as_deref() != Some(named) {
                tracing::warn!(
                    conn,
                    run = %Escaped(run_id),
                    kind,
                    execution = %Escaped(named),
                    expected = run.execution_id.as_deref().unwrap_or("none yet"),
                    "message names an execution that is not the run's; ignored"
                );
                self.ack(&ix, conn, msg, None);
                return true;
            }
        }
        // The run's own execution, named by the worker: a re-announce, or a
        // report carrying the assignment's execution id.
        let names_execution = msg.execution_id().is_some();
        let (state, holder) = (run.state(), run.holder());
        let cancel_requested = run.cancel_requested;
        // A report or output that names no execution (the reference protocol
        // allows that) speaks for whichever execution the connection holds:
        // only the connection the run was assigned to may send it. Another
        // connection of the same worker id (another process with the team's
        // key) must not end or write into a run it was never given.
        let reports_or_writes = msg.is_terminal() || matches!(msg, WorkerMessage::TaskOutput(_));
        if reports_or_writes && !names_execution && holder != Some(conn) {
            tracing::warn!(
                conn,
                run = %Escaped(run_id),
                kind,
                holder = ?holder,
                "report or output naming no execution from a connection the run was not assigned to; ignored"
            );
            return true;
        }
        match msg {
            WorkerMessage::TaskClaimed(m) => match state {
                RunState::Claimed => {
                    tracing::debug!(
                        conn,
                        run = %Escaped(run_id),
                        "repeated claim of a claimed run; nothing to do"
                    );
                    if holder != Some(conn) {
                        // The worker is back on a new connection: cancels go there.
                        ix.place(run_id, RunState::Claimed, Some(conn));
                        self.note_claim(&mut ix, conn);
                        if cancel_requested {
                            // The earlier connection may have closed before
                            // the cancellation reached the worker.
                            ix.send(conn, Outgoing::Now(cancellation(run_id)));
                        }
                    }
                }
                RunState::Assigned if holder == Some(conn) => {
                    let note = format!("claimed by worker {}", m.worker_id);
                    self.claim(&mut ix, run_id, state, conn, note);
                }
                RunState::Assigned | RunState::Queued if names_execution => {
                    let note = format!(
                        "claimed by worker {} (re-announced its execution)",
                        m.worker_id
                    );
                    self.claim(&mut ix, run_id, state, conn, note);
                }
                _ => {
                    tracing::debug!(conn, run = %Escaped(run_id), %state, "claim for a run not offered to this connection; ignored")
                }
            },
            WorkerMessage::TaskOutput(m) => {
                tracing::trace!(conn, run = %Escaped(run_id), stream = ?m.stream, bytes = m.data.len(), dropped = m.dropped_bytes, "task output");
                self.output
                    .append(run_id, m.stream, m.data.clone(), m.dropped_bytes);
            }
            WorkerMessage::TaskRejected(m) if names_execution => {
                // A release (task-reannounce): an assignment the worker got
                // on an earlier connection and could not claim. Only a run
                // still waiting for a re-announce after a restart (assigned,
                // no connection holds it) is offered again; any other state
                // means the run has moved on since.
                if state == RunState::Assigned && holder.is_none() {
                    tracing::info!(
                        conn,
                        run = run_id,
                        "the worker released an assignment it never claimed; offering it again"
                    );
                    self.requeue_or_cancel(
                        &mut ix,
                        run_id,
                        &format!(
                            "released unclaimed by worker {}: {}",
                            key.worker_id, m.reason
                        ),
                    );
                } else {
                    tracing::debug!(conn, run = run_id, %state, "release of an assignment that has moved on; ignored");
                }
            }
            WorkerMessage::TaskRejected(m) => {
                if state != RunState::Assigned || holder != Some(conn) {
                    tracing::debug!(
                        conn,
                        run = %Escaped(run_id),
                        "rejection for a run not offered to this connection; ignored"
                    );
                    return true;
                }
                self.note_rejection(&mut ix, conn, &m.reason);
                self.requeue_or_cancel(
                    &mut ix,
                    run_id,
                    &format!("rejected by worker: {}", m.reason),
                );
            }
            WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_) => {
                self.report(&mut ix, conn, key, msg);
            }
            // Handled before any run is looked up.
            WorkerMessage::WorkerState(_) => {}
        }
        true
    }

    /// A terminal report about a live run. Any connection of the run's team
    /// and worker id may report on its one execution: a worker delivers a
    /// held report after reconnecting, possibly to a restarted control
    /// plane. A run never offered has no execution anyone could report on.
    fn report(&self, ix: &mut Index, conn: ConnId, key: &WorkerKey, msg: &WorkerMessage) {
        let run_id = msg.task_id();
        let Some(run) = ix.run(run_id) else { return };
        if run.execution_id.is_none() {
            tracing::warn!(
                conn,
                run = %Escaped(run_id),
                "report for a run that was never offered; ignored"
            );
            self.ack(ix, conn, msg, None);
            return;
        }
        let state = run.state();
        if state != RunState::Claimed {
            let note = format!(
                "claimed by worker {} (reported before its claim was read)",
                key.worker_id
            );
            self.claim(ix, run_id, state, conn, note);
        }
        let change = match msg {
            WorkerMessage::TaskCompleted(m)
                if m.task_state.as_deref() == Some(TASK_STATE_CANCELLED) =>
            {
                Change {
                    message: Some(m.message.clone()),
                    ..Change::end(
                        RunState::Cancelled,
                        EndedBy::Worker,
                        "worker reported it cancelled",
                    )
                }
            }
            WorkerMessage::TaskCompleted(m) => Change {
                message: Some(m.message.clone()),
                ..Change::end(
                    RunState::Succeeded,
                    EndedBy::Worker,
                    "worker reported it completed",
                )
            },
            WorkerMessage::TaskFailed(m) => Change {
                failure_reason: Some(m.failure_reason.to_string()),
                exit_code: m.exit_code,
                message: Some(m.message.clone()),
                ..Change::end(
                    RunState::Failed,
                    EndedBy::Worker,
                    format!("worker reported it failed: {}", m.failure_reason),
                )
            },
            _ => unreachable!("only terminal reports come here"),
        };
        let held_here = ix.run(run_id).and_then(|r| r.holder()) == Some(conn);
        ix.remove(run_id);
        if !held_here {
            // A task of this worker that this connection did not hold (it
            // ran under an earlier connection) ended: one more free slot
            // than this connection's holdings show.
            if let Some(c) = ix.conn_mut(conn).and_then(|c| c.at_capacity.as_mut()) {
                c.limit += 1;
            }
        }
        let stored = self.persist(run_id, RunState::Claimed, change);
        self.output.ended_on(run_id, conn);
        self.ack(ix, conn, msg, Some(stored));
        self.offer_queued(ix, key);
    }

    /// A message about a run that is not live (`rec` is what the store
    /// has, for this team).
    fn handle_not_live(
        &self,
        conn: ConnId,
        key: &WorkerKey,
        msg: &WorkerMessage,
        rec: Option<RunRecord>,
    ) {
        let ix = self.lock();
        let (run_id, kind) = (msg.task_id(), msg.kind());
        // Every report is acked unless it could not be stored, so the worker
        // stops re-sending what can never be recorded.
        let Some(rec) = rec else {
            tracing::warn!(
                conn,
                run = %Escaped(run_id),
                kind,
                "message about a run this team does not have; ignored"
            );
            self.ack(&ix, conn, msg, None);
            return;
        };
        if rec.spec.worker_host != key.worker_id {
            tracing::warn!(
                conn,
                run = %Escaped(run_id),
                kind,
                "message about a run routed to another worker id; ignored"
            );
            self.ack(&ix, conn, msg, None);
            return;
        }
        if let Some(named) = msg.execution_id() {
            if rec.execution_id.as_deref() != Some(named) {
                tracing::warn!(
                    conn,
                    run = %Escaped(run_id),
                    kind,
                    execution = %Escaped(named),
                    "message names an execution that is not the run's; ignored"
                );
                self.ack(&ix, conn, msg, None);
                return;
            }
        }
        if !rec.state.is_terminal() {
            // Stored as live but not in memory: a failed write left them
            // apart. Reload it; the worker sends this again later.
            tracing::error!(
                conn,
                run = %Escaped(run_id),
                "a live run missing from the run scheduler's memory; reloading it"
            );
            self.resync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(run_id.to_string());
            return;
        }
        match msg {
            WorkerMessage::TaskClaimed(_)
                if rec.ended_by.as_deref() == Some(EndedBy::Api.as_str()) =>
            {
                // An outside system reported its end (the command runtime's
                // dispatched tasks): the worker's record of the dispatch is
                // its own business; there is nothing to stop.
                tracing::debug!(conn, run = %Escaped(run_id), state = %rec.state, "a worker re-announced a run whose result came through the API; ignored");
            }
            WorkerMessage::TaskOutput(m) => {
                // Output is sent at a lower priority than reports: the
                // last of it may follow the run's end, so it is taken until
                // the run's output settles (at most `output::SETTLE_MAX`
                // after the end), from the execution's own connection or
                // naming its execution. Later output is refused, not stored.
                if self
                    .output
                    .accepts_late(run_id, conn, msg.execution_id().is_some())
                {
                    self.output
                        .append(run_id, m.stream, m.data.clone(), m.dropped_bytes);
                } else {
                    tracing::info!(conn, run = %Escaped(run_id), state = %rec.state, "output for a run that has ended; refused");
                }
            }
            WorkerMessage::TaskClaimed(_) if msg.execution_id().is_some() => {
                // The worker still runs something the control plane has
                // closed (e.g. failed as worker_lost): have it stop.
                tracing::info!(conn, run = %Escaped(run_id), state = %rec.state, "a worker re-announced a run that already ended; asking it to stop");
                ix.send(conn, Outgoing::Now(cancellation(run_id)));
            }
            _ if msg.is_terminal() => {
                tracing::debug!(conn, run = %Escaped(run_id), state = %rec.state, kind, "duplicate report for a run that already ended; ignored");
                self.ack(&ix, conn, msg, None);
            }
            _ => {
                tracing::debug!(conn, run = %Escaped(run_id), state = %rec.state, kind, "message for a finished run; ignored")
            }
        }
    }

    /// assigned or queued → claimed, held by `conn` from now on.
    fn claim(&self, ix: &mut Index, run_id: &str, from: RunState, conn: ConnId, note: String) {
        let key = ix.run(run_id).map(LiveRun::key);
        if let Some(r) = ix.run(run_id) {
            self.metrics.claimed_after(r.queued_since.elapsed());
        }
        ix.place(run_id, RunState::Claimed, Some(conn));
        if let Some(r) = ix.run_mut(run_id) {
            r.unconfirmed_until = None;
            r.absent_since = None;
        }
        self.note_claim(ix, conn);
        // Nothing waits on this write: a failure reloads the run.
        drop(self.persist(run_id, from, Change::to(RunState::Claimed, note)));
        if let Some(key) = key {
            // The connection's one offer is settled: it may take the next.
            self.offer_queued(ix, &key);
        }
    }

    /// A claim shows the connection had room: if it now holds more than its
    /// learnt capacity, learn the larger one.
    fn note_claim(&self, ix: &mut Index, conn: ConnId) {
        if let Some(c) = ix.conn_mut(conn) {
            let held = c.held();
            if let Some(cap) = c.at_capacity.as_mut() {
                if held > cap.limit {
                    cap.limit = held;
                    cap.backoff = self.timeouts.rejection_backoff;
                }
            }
        }
    }

    /// The connection refused an offer: it gets nothing more until it holds
    /// fewer runs than now, or the back-off passed (doubling when this
    /// rejection answered such a probe).
    fn note_rejection(&self, ix: &mut Index, conn: ConnId, reason: &str) {
        let now = Instant::now();
        let initial = self.timeouts.rejection_backoff;
        if let Some(c) = ix.conn_mut(conn) {
            let backoff = match &c.at_capacity {
                Some(prev) if now.duration_since(prev.since) >= prev.backoff => {
                    (prev.backoff * 2).min(initial * 16)
                }
                Some(prev) => prev.backoff,
                None => initial,
            };
            c.at_capacity = Some(AtCapacity {
                since: now,
                limit: c.held(),
                backoff,
                reason: reason.to_string(),
            });
        }
    }

    /// assigned → queued (same execution), or → cancelled when a cancel was
    /// requested.
    fn requeue_or_cancel(&self, ix: &mut Index, run_id: &str, why: &str) {
        let Some(run) = ix.run(run_id) else { return };
        let key = run.key();
        let change = if run.cancel_requested {
            ix.remove(run_id);
            self.output.ended(run_id);
            Change::end(
                RunState::Cancelled,
                EndedBy::ControlPlane,
                format!("cancelled ({why})"),
            )
        } else {
            ix.place(run_id, RunState::Queued, None);
            if let Some(r) = ix.run_mut(run_id) {
                r.unconfirmed_until = None;
            }
            Change::to(RunState::Queued, why)
        };
        drop(self.persist(run_id, RunState::Assigned, change));
        self.offer_queued(ix, &key);
    }

    // ---- API operations ----

    /// Pauses or resumes worker id `worker_id` of `team_id`: while paused
    /// none of its connections is offered a run (what they hold runs on);
    /// a resume offers its queued runs at once. Stored, so it survives a
    /// restart. `Ok(false)`: no worker ever connected with this id.
    pub(crate) async fn set_paused(
        &self,
        team_id: i64,
        worker_id: &str,
        paused: bool,
    ) -> Result<bool, StoreError> {
        let key = WorkerKey::new(team_id, worker_id);
        let live = self.lock().has_live(&key);
        if !self
            .store
            .set_worker_paused(team_id, worker_id, paused, live)
            .await?
        {
            return Ok(false);
        }
        let mut ix = self.lock();
        if ix.set_paused(&key, paused) {
            tracing::info!(
                team_id,
                worker_id,
                paused,
                "worker id {}",
                if paused { "paused" } else { "resumed" }
            );
        }
        if !paused {
            self.offer_queued(&mut ix, &key);
        }
        Ok(true)
    }

    /// Whether an operator paused this worker id.
    pub(crate) fn is_paused(&self, team_id: i64, worker_id: &str) -> bool {
        self.lock().is_paused(&WorkerKey::new(team_id, worker_id))
    }

    /// A fresh run id.
    pub(crate) fn new_run_id() -> String {
        format!("run_{:016x}", fastrand::u64(..))
    }

    /// Stores a new run (durably), then queues it.
    pub(crate) async fn create_run(
        &self,
        team_id: i64,
        spec: &CreateRunRequest,
    ) -> Result<RunRecord, StoreError> {
        let id = Self::new_run_id();
        let stored = self.store.insert_run(&id, team_id, spec).await?;
        tracing::info!(run = %id, team_id, worker_host = %Escaped(&spec.worker_host), "run created");
        Ok(self.enqueue(stored))
    }

    /// Queues a run that was just stored (by `create_run`, or by a
    /// schedule's slot).
    pub(crate) fn enqueue(&self, stored: store::LiveRun) -> RunRecord {
        let rec = stored.record;
        let mut ix = self.lock();
        let live = LiveRun::new(
            stored.seq,
            rec.team_id,
            rec.spec.clone(),
            rec.created_at.clone(),
        );
        let key = live.key();
        ix.insert(&rec.id, live, RunState::Queued, None);
        self.offer_queued(&mut ix, &key);
        rec
    }

    /// Ends a claimed run as an outside system reports it (the command
    /// runtime hands tasks to systems that report by themselves). The same
    /// outcome reported again through the API is answered with the run and
    /// changes nothing; any other report about a run that is not claimed is
    /// refused. Answers once the change is stored.
    pub(crate) async fn report_result(
        &self,
        team_id: i64,
        run_id: &str,
        req: &RunResultRequest,
    ) -> Result<RunRecord, ResultError> {
        let to = req.outcome.state();
        let stored = {
            let mut ix = self.lock();
            match ix.run(run_id).filter(|r| r.team_id == team_id) {
                None => None,
                Some(run) if run.state() != RunState::Claimed => {
                    return Err(ResultError::Conflict(format!(
                        "run {run_id} is {}: only a claimed run (one a worker took and handed on) can take a result; cancel it instead",
                        run.state()
                    )));
                }
                Some(run) => {
                    if let Some(named) = &req.execution_id {
                        if run.execution_id.as_ref() != Some(named) {
                            return Err(ResultError::Conflict(format!(
                                "the result names execution {named:?} but run {run_id} runs {:?}",
                                run.execution_id.as_deref().unwrap_or("none")
                            )));
                        }
                    }
                    let key = run.key();
                    let mut change = Change::end(
                        to,
                        EndedBy::Api,
                        format!("result reported through the API: {}", to.as_str()),
                    );
                    if req.outcome == ResultOutcome::Failed {
                        let reason = req
                            .failure_reason
                            .clone()
                            .filter(|r| !r.trim().is_empty())
                            .unwrap_or_else(|| "unknown".into());
                        change.note = format!("result reported through the API: failed ({reason})");
                        change.failure_reason = Some(reason);
                    }
                    change.exit_code = req.exit_code;
                    change.message = req.message.clone();
                    ix.remove(run_id);
                    let receipt = self.persist(run_id, RunState::Claimed, change);
                    self.output.ended(run_id);
                    tracing::info!(
                        run = %Escaped(run_id),
                        outcome = to.as_str(),
                        "result reported through the API"
                    );
                    self.offer_queued(&mut ix, &key);
                    Some(receipt)
                }
            }
        };
        let changed_now = stored.is_some();
        if let Some(receipt) = stored {
            if !receipt.await.unwrap_or(false) {
                return Err(ResultError::NotStored);
            }
        }
        let rec = self
            .store
            .get_run(run_id, Some(team_id))
            .await?
            .ok_or(ResultError::NotFound)?;
        if changed_now {
            return Ok(rec);
        }
        if !rec.state.is_terminal() {
            self.resync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(run_id.to_string());
            return Err(Reloading.into());
        }
        let same = rec.state == to && rec.ended_by.as_deref() == Some(EndedBy::Api.as_str());
        if same {
            Ok(rec)
        } else {
            Err(ResultError::Conflict(format!(
                "run {run_id} already ended ({}, reported by {}); a different result cannot replace it",
                rec.state,
                rec.ended_by.as_deref().unwrap_or("the control plane")
            )))
        }
    }

    /// Queued: cancelled at once. Assigned or claimed: `task_cancellation` to
    /// the holding connection (or, when it is gone, to every connection of the
    /// run's worker id, now and on reconnect); the run ends when the worker
    /// reports it. Answers once the change is stored.
    pub(crate) async fn cancel(
        &self,
        team_id: i64,
        run_id: &str,
    ) -> Result<RunRecord, CancelError> {
        let stored = {
            let mut ix = self.lock();
            match ix.run(run_id).filter(|r| r.team_id == team_id) {
                None => None,
                Some(run) if run.state() == RunState::Queued => {
                    ix.remove(run_id);
                    self.output.ended(run_id);
                    Some(self.persist(
                        run_id,
                        RunState::Queued,
                        Change::end(
                            RunState::Cancelled,
                            EndedBy::ControlPlane,
                            "cancelled by API request while queued",
                        ),
                    ))
                }
                Some(run) if run.cancel_requested => {
                    // Idempotent: one history entry and one task_cancellation
                    // however many times it is asked (a worker that moves to
                    // a new connection is told again when it re-announces).
                    tracing::debug!(
                        run = run_id,
                        "cancel already requested; nothing more to send"
                    );
                    Some(run.cancel_stored.clone().unwrap_or_else(|| {
                        // Requested before a restart: stored long ago.
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(true);
                        rx.shared()
                    }))
                }
                Some(run) => {
                    let targets: Vec<ConnId> = match run.holder() {
                        Some(c) => vec![c],
                        None => ix.conns_of(&run.key()).to_vec(),
                    };
                    let note = if targets.is_empty() {
                        "cancel requested; no worker with this id is connected, it is told when one connects"
                    } else {
                        "cancel requested; task_cancellation sent to the worker"
                    };
                    let (settle, receipt) = self.receipt(run_id);
                    if let Some(r) = ix.run_mut(run_id) {
                        r.cancel_requested = true;
                        r.cancel_stored = Some(receipt.clone());
                    }
                    self.store.request_cancel_then(run_id, note, move |r| {
                        settle.settle(r, "the run vanished from the database")
                    });
                    for c in targets {
                        ix.send(
                            c,
                            Outgoing::WhenStored(receipt.clone(), cancellation(run_id)),
                        );
                    }
                    Some(receipt)
                }
            }
        };
        match stored {
            Some(receipt) => {
                if !receipt.await.unwrap_or(false) {
                    return Err(CancelError::NotStored);
                }
            }
            None => {
                // Not live: ended, unknown, or (after a failed write) only
                // in the database.
                let rec = self
                    .store
                    .get_run(run_id, Some(team_id))
                    .await?
                    .ok_or(CancelError::NotFound)?;
                if rec.state.is_terminal() {
                    return Err(CancelError::AlreadyFinished(rec.state));
                }
                self.resync
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(run_id.to_string());
                return Err(Reloading.into());
            }
        }
        self.store
            .get_run(run_id, Some(team_id))
            .await?
            .ok_or(CancelError::NotFound)
    }

    /// Why a run is not moving, when that is something the user can act on.
    pub(crate) fn waiting_reason(&self, run: &RunRecord) -> Option<String> {
        let ix = self.lock();
        let live = ix.run(&run.id)?;
        let key = live.key();
        let conns = ix.conns_of(&key);
        match live.state() {
            RunState::Queued if ix.is_paused(&key) => Some(format!(
                "worker id {:?} is paused: it is offered no run until resumed (`oz-agent-worker workers resume {}`, or Resume in the UI)",
                run.spec.worker_host, run.spec.worker_host
            )),
            RunState::Queued if conns.is_empty() => Some(format!(
                "no worker with id {:?} is connected to this control plane for this team (ids are case-sensitive); the run starts when one connects",
                run.spec.worker_host
            )),
            RunState::Queued => {
                let draining = conns
                    .iter()
                    .filter(|&&c| ix.conn(c).is_some_and(|c| c.draining))
                    .count();
                if draining == conns.len() {
                    return Some(format!(
                        "every connected worker with id {:?} is draining (finishing its tasks before it exits); the run starts when a worker with this id that is not draining connects",
                        run.spec.worker_host
                    ));
                }
                let full: Vec<&AtCapacity> = conns
                    .iter()
                    .filter_map(|&c| ix.conn(c)?.at_capacity.as_ref())
                    .collect();
                (full.len() == conns.len()).then(|| {
                    format!(
                        "every connected worker with id {:?} is at capacity (last rejection: {}); the run is offered when one of their tasks ends",
                        run.spec.worker_host,
                        full.iter().max_by_key(|c| c.since).map_or("", |c| c.reason.as_str())
                    )
                })
            }
            RunState::Assigned => {
                let until = live.unconfirmed_until?;
                Some(format!(
                    "the control plane restarted after offering it; waiting up to {}s more for worker {:?} to re-announce it, then it is offered again",
                    until.saturating_duration_since(Instant::now()).as_secs(),
                    run.spec.worker_host
                ))
            }
            RunState::Claimed if live.holder().is_none() => Some(if conns.is_empty() {
                format!(
                    "the worker's connection closed; it fails with worker_lost if no worker with id {:?} reconnects within {}s",
                    run.spec.worker_host,
                    self.timeouts.worker_lost.as_secs()
                )
            } else {
                "the worker's connection closed; waiting for the worker to report the result after reconnecting".to_string()
            }),
            _ => None,
        }
    }

    // ---- assignment and time-based work ----

    /// Offers `key`'s queued runs, oldest first, to its connections that
    /// can take one, in turn. Each run keeps one execution id for every
    /// offer; the assignment is stored before it is sent.
    fn offer_queued(&self, ix: &mut Index, key: &WorkerKey) {
        let now = Instant::now();
        while let Some(Offer { conn, run_id }) = ix.next_offer(key, now) {
            let Some(run) = ix.run_mut(&run_id) else {
                break;
            };
            let execution_id = run
                .execution_id
                .get_or_insert_with(|| format!("exec_{:016x}", fastrand::u64(..)))
                .clone();
            let msg = assignment(&run_id, run, &execution_id);
            ix.place(&run_id, RunState::Assigned, Some(conn));
            let mut change = Change::to(
                RunState::Assigned,
                format!(
                    "assigned to worker {} (execution {execution_id})",
                    key.worker_id
                ),
            );
            change.execution_id = Some(execution_id.clone());
            let stored = self.persist(&run_id, RunState::Queued, change);
            tracing::info!(run = %run_id, conn, %execution_id, "run assigned");
            ix.send(conn, Outgoing::WhenStored(stored, msg));
        }
    }

    /// Periodic work: reload runs a failed write left uncertain; fail
    /// claimed runs whose worker has been gone past `worker_lost`; offer
    /// again runs no worker re-announced after a restart; offer to
    /// connections whose back-off ended.
    pub(crate) async fn sweep(&self) {
        let uncertain: Vec<String> =
            std::mem::take(&mut *self.resync.lock().unwrap_or_else(|p| p.into_inner()));
        for run_id in uncertain {
            match self.store.get_live_run(&run_id).await {
                Ok(live) => {
                    let mut ix = self.lock();
                    ix.remove(&run_id);
                    if let Some(live) = live {
                        self.restore(&mut ix, live.seq, live.record);
                    }
                }
                Err(e) => {
                    tracing::error!(run = %run_id, "cannot reload the run: {e}");
                    self.resync
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(run_id);
                }
            }
        }
        let now = Instant::now();
        let mut ix = self.lock();
        let mut lost = Vec::new();
        let mut unconfirmed = Vec::new();
        let live_keys: std::collections::HashSet<WorkerKey> = ix
            .runs()
            .map(|(_, r)| r.key())
            .filter(|k| ix.has_live(k))
            .collect();
        for (run_id, r) in ix.runs_mut() {
            if r.unconfirmed_until.is_some_and(|t| t <= now) {
                unconfirmed.push(run_id.clone());
            }
            if r.state() != RunState::Claimed || r.holder().is_some() {
                continue;
            }
            if live_keys.contains(&r.key()) {
                r.absent_since = None;
                continue;
            }
            let since = *r.absent_since.get_or_insert(now);
            if now.duration_since(since) >= self.timeouts.worker_lost {
                lost.push(run_id.clone());
            }
        }
        for run_id in unconfirmed {
            let why = format!(
                "no worker re-announced it within {}s of the control plane's restart; offered again (same execution)",
                self.timeouts.reannounce_grace.as_secs_f64()
            );
            self.requeue_or_cancel(&mut ix, &run_id, &why);
        }
        for run_id in lost {
            let mut c = Change::end(
                RunState::Failed,
                EndedBy::ControlPlane,
                format!(
                    "no worker with this id reported back within {}s of losing its connection",
                    self.timeouts.worker_lost.as_secs_f64()
                ),
            );
            c.failure_reason = Some("worker_lost".into());
            c.message = Some(
                "the worker running this run disconnected and did not come back to report its result"
                    .into(),
            );
            tracing::warn!(run = %run_id, "run failed: worker_lost");
            ix.remove(&run_id);
            self.output.ended(&run_id);
            drop(self.persist(&run_id, RunState::Claimed, c));
        }
        for key in ix.queued_keys() {
            self.offer_queued(&mut ix, &key);
        }
        drop(ix);
        self.output.prune();
    }
}

/// Settles one receipt, on the database thread.
struct Settle {
    tx: oneshot::Sender<bool>,
    resync: Arc<Mutex<Vec<String>>>,
    run: String,
}

impl Settle {
    /// `Ok(true)`: stored. `Ok(false)`: it did not apply, `why` says how
    /// memory and database differ. Either failure reloads the run at the
    /// next sweep.
    fn settle(self, result: Result<bool, StoreError>, why: &str) {
        let run = self.run;
        let stored = match result {
            Ok(true) => true,
            Ok(false) => {
                tracing::error!(run, "{why}");
                false
            }
            Err(e) => {
                tracing::error!(
                    run,
                    "could not store a change of this run: {e}; reloading it"
                );
                false
            }
        };
        if !stored {
            self.resync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(run);
        }
        let _ = self.tx.send(stored);
    }
}

fn cancellation(run_id: &str) -> ServerMessage {
    ServerMessage::TaskCancellation(TaskCancellation {
        task_id: run_id.to_string(),
    })
}

fn assignment(run_id: &str, run: &LiveRun, execution_id: &str) -> ServerMessage {
    let spec = &run.spec;
    ServerMessage::TaskAssignment(Box::new(TaskAssignment {
        task_id: run_id.to_string(),
        execution_id: Some(execution_id.to_string()),
        task: Task {
            id: run_id.to_string(),
            title: spec.title.clone().unwrap_or_default(),
            task_definition: TaskDefinition {
                prompt: spec.prompt.clone().unwrap_or_default(),
            },
            created_at: Some(run.created_at.clone()),
            updated_at: Some(time::now()),
            owner: Some(Owner {
                kind: OwnerType::Team,
                id: run.team_id,
            }),
            agent_config_snapshot: spec.agent_config.clone(),
            agent_conversation_id: spec.agent_conversation_id.clone(),
        },
        docker_image: spec.docker_image.clone(),
        sidecar_image: spec.sidecar_image.clone(),
        env_vars: spec.env_vars.clone(),
        additional_sidecars: spec.additional_sidecars.clone(),
        additional_oz_args: spec.additional_oz_args.clone(),
        instance_shape: spec.instance_shape.clone(),
    }))
}
