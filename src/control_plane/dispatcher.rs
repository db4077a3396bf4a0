//! The in-memory side of routing: which worker connections are live (per team
//! and worker id), which connection holds which run, round-robin assignment,
//! requeue, cancellation and the worker-lost clock. Every state change goes
//! through `Store::transition`, so the durable record and the legal moves are
//! enforced in one place; this module decides *when* to move.
//!
//! Lock order: `Dispatcher::state`, then the store. Nothing here awaits while
//! holding the lock.

use crate::control_plane::model::{CreateRunRequest, RunState};
use crate::control_plane::store::{Change, RunRecord, Store, StoreError};
use crate::protocol::{
    Owner, OwnerType, ReportAck, ServerMessage, Task, TaskAssignment, TaskCancellation,
    TaskDefinition, WorkerMessage, TASK_STATE_CANCELLED,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub type ConnId = u64;
type WorkerKey = (i64, String);

#[derive(Debug, Clone)]
pub struct DispatchTimeouts {
    /// How long a claimed run may go without any connected worker of its id
    /// before it fails with `worker_lost`.
    pub worker_lost: Duration,
    /// After a worker connection rejects a run, how long before that same
    /// connection is offered it again (other connections may get it at once).
    pub reoffer_delay: Duration,
    /// After a restart, how long a run left `assigned` waits for a worker of
    /// its id to re-announce (or report on) its execution before it is
    /// offered again, with the same execution id.
    pub reannounce_grace: Duration,
}

struct Conn {
    key: WorkerKey,
    tx: mpsc::UnboundedSender<ServerMessage>,
}

/// A run in `assigned` or `claimed`.
struct Holding {
    key: WorkerKey,
    state: RunState,
    /// The connection it was sent to; `None` once that connection closed.
    conn: Option<ConnId>,
    /// Since when no connection with the run's worker id has been live.
    absent_since: Option<Instant>,
    /// An assignment sent before a restart, not known to be claimed: until
    /// this instant a worker may re-announce it; then it is offered again.
    unconfirmed_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    next_conn: ConnId,
    conns: HashMap<ConnId, Conn>,
    /// Live connections per (team, worker id), in connection order.
    by_worker: HashMap<WorkerKey, Vec<ConnId>>,
    cursor: HashMap<WorkerKey, usize>,
    held: HashMap<String, Holding>,
    /// run id → (connection, when it rejected, its reason).
    rejections: HashMap<String, Vec<(ConnId, Instant, String)>>,
}

#[derive(Debug)]
pub enum CancelError {
    NotFound,
    AlreadyFinished(RunState),
    Store(StoreError),
}

impl From<StoreError> for CancelError {
    fn from(e: StoreError) -> Self {
        CancelError::Store(e)
    }
}

pub struct Dispatcher {
    store: Arc<Store>,
    timeouts: DispatchTimeouts,
    state: Mutex<State>,
    /// Set once the control plane shuts down: connections closing from then
    /// on leave their runs as stored, for the next start to recover.
    stopping: AtomicBool,
}

impl Dispatcher {
    /// Builds the dispatcher and brings the stored runs back. Runs assigned
    /// before a restart keep their execution and wait `reannounce_grace` for
    /// a worker to re-announce or report on it (the claim may have been
    /// sent and never read); then they are offered again. Claimed runs wait
    /// for their worker to report.
    pub fn recover(
        store: Arc<Store>,
        timeouts: DispatchTimeouts,
    ) -> Result<Dispatcher, StoreError> {
        let d = Dispatcher {
            store,
            timeouts,
            state: Mutex::default(),
            stopping: AtomicBool::new(false),
        };
        {
            let mut st = d.lock();
            let now = Instant::now();
            for run in d.store.runs_in_state(RunState::Assigned)? {
                st.held.insert(
                    run.id.clone(),
                    Holding {
                        key: (run.team_id, run.spec.worker_host.clone()),
                        state: RunState::Assigned,
                        conn: None,
                        absent_since: None,
                        unconfirmed_until: Some(now + d.timeouts.reannounce_grace),
                    },
                );
            }
            for run in d.store.runs_in_state(RunState::Claimed)? {
                st.held.insert(
                    run.id.clone(),
                    Holding {
                        key: (run.team_id, run.spec.worker_host.clone()),
                        state: RunState::Claimed,
                        conn: None,
                        absent_since: Some(now),
                        unconfirmed_until: None,
                    },
                );
            }
        }
        Ok(d)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- connections ----

    pub fn register(
        &self,
        team_id: i64,
        worker_id: &str,
        tx: mpsc::UnboundedSender<ServerMessage>,
    ) -> ConnId {
        let key = (team_id, worker_id.to_string());
        let mut st = self.lock();
        st.next_conn += 1;
        let id = st.next_conn;
        st.conns.insert(
            id,
            Conn {
                key: key.clone(),
                tx,
            },
        );
        st.by_worker.entry(key.clone()).or_default().push(id);
        tracing::info!(conn = id, team_id, worker_id, "worker connected");
        // Cancellations requested while no worker of this id was connected.
        let orphans: Vec<String> = st
            .held
            .iter()
            .filter(|(_, h)| h.key == key && h.conn.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        for run_id in orphans {
            if let Ok(Some(run)) = self.store.get_run(&run_id, None) {
                if run.cancel_requested && !run.state.is_terminal() {
                    send(&st, id, cancellation(&run_id));
                }
            }
        }
        drop(st);
        self.dispatch();
        id
    }

    /// From now on, closing connections change no run: a shutdown is a
    /// restart to come, and an assignment whose claim may be in flight must
    /// stay assigned for the next start's re-announce grace.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The connection closed: runs it held but had not claimed go back to the
    /// queue; claimed runs stay claimed and wait for their worker.
    pub fn unregister(&self, conn: ConnId) {
        let mut st = self.lock();
        let Some(c) = st.conns.remove(&conn) else {
            return;
        };
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Some(list) = st.by_worker.get_mut(&c.key) {
            list.retain(|&x| x != conn);
            if list.is_empty() {
                st.by_worker.remove(&c.key);
                st.cursor.remove(&c.key);
            }
        }
        for list in st.rejections.values_mut() {
            list.retain(|(x, _, _)| *x != conn);
        }
        let mine: Vec<(String, RunState)> = st
            .held
            .iter()
            .filter(|(_, h)| h.conn == Some(conn))
            .map(|(r, h)| (r.clone(), h.state))
            .collect();
        for (run_id, state) in mine {
            match state {
                RunState::Assigned => {
                    if let Err(e) = self.requeue_or_cancel(
                        &mut st,
                        &run_id,
                        "worker connection closed before claim",
                    ) {
                        tracing::error!(run = %run_id, "{e}");
                    }
                }
                _ => {
                    if let Some(h) = st.held.get_mut(&run_id) {
                        h.conn = None;
                    }
                }
            }
        }
        tracing::info!(conn, team_id = c.key.0, worker_id = %c.key.1, "worker disconnected");
        drop(st);
        self.dispatch();
    }

    // ---- worker messages ----

    /// One frame from connection `conn`, in the order the worker sent it.
    pub fn handle(&self, conn: ConnId, msg: WorkerMessage) {
        if let Err(e) = self.handle_inner(conn, msg) {
            tracing::error!(conn, "{e}");
        }
    }

    fn handle_inner(&self, conn: ConnId, msg: WorkerMessage) -> Result<(), StoreError> {
        let mut st = self.lock();
        let Some(key) = st.conns.get(&conn).map(|c| c.key.clone()) else {
            return Ok(());
        };
        let run_id = msg.task_id().to_string();
        let kind = msg.kind();
        let is_report = msg.is_terminal();
        let named = msg.execution_id().map(str::to_string);
        // Every terminal report is acknowledged once it is recorded, or when
        // it can never be (so the worker stops re-sending it); only a report
        // that could not be stored goes unacknowledged, to come again.
        let ack = |st: &State| {
            if is_report {
                send(st, conn, report_ack(&run_id, named.as_deref()));
            }
        };
        let Some(run) = self.store.get_run(&run_id, Some(key.0))? else {
            tracing::warn!(conn, run = %run_id, kind, "message about a run this team does not have; ignored");
            ack(&st);
            return Ok(());
        };
        if run.spec.worker_host != key.1 {
            tracing::warn!(conn, run = %run_id, kind, "message about a run routed to another worker id; ignored");
            ack(&st);
            return Ok(());
        }
        if let Some(named) = named.as_deref() {
            if run.execution_id.as_deref() != Some(named) {
                tracing::warn!(
                    conn, run = %run_id, kind, execution = named,
                    expected = run.execution_id.as_deref().unwrap_or("none yet"),
                    "message names an execution that is not the run's; ignored"
                );
                ack(&st);
                return Ok(());
            }
        }
        // The run's own execution, named by the worker: a re-announce, or a
        // report carrying the assignment's execution id.
        let names_execution = named.is_some();
        if run.state.is_terminal() {
            match msg {
                WorkerMessage::TaskClaimed(_) if names_execution => {
                    // The worker still runs something the control plane has
                    // closed (e.g. failed as worker_lost): have it stop.
                    tracing::info!(conn, run = %run_id, state = %run.state, "a worker re-announced a run that already ended; asking it to stop");
                    send(&st, conn, cancellation(&run_id));
                }
                _ if is_report => {
                    tracing::debug!(conn, run = %run_id, state = %run.state, kind, "duplicate report for a run that already ended; ignored");
                    ack(&st);
                }
                _ => {
                    tracing::debug!(conn, run = %run_id, state = %run.state, kind, "message for a finished run; ignored")
                }
            }
            return Ok(());
        }
        let holder = st.held.get(&run_id).and_then(|h| h.conn);
        match msg {
            WorkerMessage::TaskClaimed(m) => match run.state {
                RunState::Claimed => {
                    tracing::debug!(conn, run = %run_id, "repeated claim of a claimed run; nothing to do");
                    self.hold(&mut st, &run_id, &key, RunState::Claimed, conn);
                }
                RunState::Assigned if holder == Some(conn) => {
                    self.claim(
                        &mut st,
                        &run,
                        &key,
                        conn,
                        format!("claimed by worker {}", m.worker_id),
                    )?;
                }
                RunState::Assigned | RunState::Queued if names_execution => {
                    self.claim(
                        &mut st,
                        &run,
                        &key,
                        conn,
                        format!(
                            "claimed by worker {} (re-announced its execution)",
                            m.worker_id
                        ),
                    )?;
                }
                _ => {
                    tracing::debug!(conn, run = %run_id, state = %run.state, "claim for a run not offered to this connection; ignored");
                }
            },
            WorkerMessage::TaskOutput(m) => {
                tracing::trace!(conn, run = %run_id, stream = ?m.stream, bytes = m.data.len(), dropped = m.dropped_bytes, "task output");
            }
            WorkerMessage::TaskRejected(m) => {
                if run.state != RunState::Assigned || holder != Some(conn) {
                    tracing::debug!(conn, run = %run_id, "rejection for a run not assigned to this connection; ignored");
                    return Ok(());
                }
                st.rejections.entry(run_id.clone()).or_default().push((
                    conn,
                    Instant::now(),
                    m.reason.clone(),
                ));
                self.requeue_or_cancel(
                    &mut st,
                    &run_id,
                    &format!("rejected by worker: {}", m.reason),
                )?;
                drop(st);
                self.dispatch();
            }
            WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_) => {
                // Any connection of the run's team and worker id may report on
                // its one execution: a worker delivers a held report after
                // reconnecting, possibly to a restarted control plane. A run
                // never offered has no execution anyone could report on.
                if run.execution_id.is_none() {
                    tracing::warn!(conn, run = %run_id, "report for a run that was never offered; ignored");
                    ack(&st);
                    return Ok(());
                }
                if run.state != RunState::Claimed {
                    self.claim(
                        &mut st,
                        &run,
                        &key,
                        conn,
                        format!(
                            "claimed by worker {} (reported before its claim was read)",
                            key.1
                        ),
                    )?;
                }
                let change = match msg {
                    WorkerMessage::TaskCompleted(m)
                        if m.task_state.as_deref() == Some(TASK_STATE_CANCELLED) =>
                    {
                        let mut c = Change::to(RunState::Cancelled, "worker reported it cancelled");
                        c.message = Some(m.message);
                        c
                    }
                    WorkerMessage::TaskCompleted(m) => {
                        let mut c = Change::to(RunState::Succeeded, "worker reported it completed");
                        c.message = Some(m.message);
                        c
                    }
                    WorkerMessage::TaskFailed(m) => {
                        let mut c = Change::to(
                            RunState::Failed,
                            format!("worker reported it failed: {}", m.failure_reason),
                        );
                        c.failure_reason = Some(m.failure_reason.to_string());
                        c.exit_code = m.exit_code;
                        c.message = Some(m.message);
                        c
                    }
                    _ => unreachable!("matched terminal messages only"),
                };
                if self
                    .store
                    .transition(&run_id, RunState::Claimed, change)?
                    .is_none()
                {
                    tracing::error!(conn, run = %run_id, "report not recorded: the run moved concurrently; the worker sends it again");
                    return Ok(());
                }
                st.held.remove(&run_id);
                st.rejections.remove(&run_id);
                ack(&st);
                drop(st);
                self.dispatch();
            }
        }
        Ok(())
    }

    /// Records `conn` as the live holder of `run_id` in `state`.
    fn hold(&self, st: &mut State, run_id: &str, key: &WorkerKey, state: RunState, conn: ConnId) {
        st.held.insert(
            run_id.to_string(),
            Holding {
                key: key.clone(),
                state,
                conn: Some(conn),
                absent_since: None,
                unconfirmed_until: None,
            },
        );
    }

    /// assigned or queued → claimed, held by `conn` from now on.
    fn claim(
        &self,
        st: &mut State,
        run: &RunRecord,
        key: &WorkerKey,
        conn: ConnId,
        note: String,
    ) -> Result<(), StoreError> {
        if self
            .store
            .transition(&run.id, run.state, Change::to(RunState::Claimed, note))?
            .is_some()
        {
            self.hold(st, &run.id, key, RunState::Claimed, conn);
            st.rejections.remove(&run.id);
        }
        Ok(())
    }

    /// assigned → queued, or → cancelled when a cancel was requested.
    fn requeue_or_cancel(&self, st: &mut State, run_id: &str, why: &str) -> Result<(), StoreError> {
        st.held.remove(run_id);
        let Some(run) = self.store.get_run(run_id, None)? else {
            return Ok(());
        };
        let change = if run.cancel_requested {
            Change::to(RunState::Cancelled, format!("cancelled ({why})"))
        } else {
            Change::to(RunState::Queued, why)
        };
        self.store.transition(run_id, RunState::Assigned, change)?;
        Ok(())
    }

    // ---- API operations ----

    pub fn create_run(
        &self,
        team_id: i64,
        spec: &CreateRunRequest,
    ) -> Result<RunRecord, StoreError> {
        let id = format!("run_{:016x}", fastrand::u64(..));
        let rec = self.store.insert_run(&id, team_id, spec)?;
        tracing::info!(run = %id, team_id, worker_host = %spec.worker_host, "run created");
        self.dispatch();
        Ok(self.store.get_run(&id, None)?.unwrap_or(rec))
    }

    /// Queued: cancelled at once. Assigned or claimed: `task_cancellation` to
    /// the holding connection (or, when it is gone, to every connection of the
    /// run's worker id, now and on reconnect); the run ends when the worker
    /// reports it.
    pub fn cancel(&self, team_id: i64, run_id: &str) -> Result<RunRecord, CancelError> {
        let st = self.lock();
        let run = self
            .store
            .get_run(run_id, Some(team_id))?
            .ok_or(CancelError::NotFound)?;
        match run.state {
            s if s.is_terminal() => Err(CancelError::AlreadyFinished(s)),
            RunState::Queued => {
                let changed = self.store.transition(
                    run_id,
                    RunState::Queued,
                    Change::to(RunState::Cancelled, "cancelled by API request while queued"),
                )?;
                Ok(changed.unwrap_or(run))
            }
            _ => {
                let holder = st.held.get(run_id).and_then(|h| h.conn);
                let targets: Vec<ConnId> = match holder {
                    Some(c) => vec![c],
                    None => st
                        .by_worker
                        .get(&(team_id, run.spec.worker_host.clone()))
                        .cloned()
                        .unwrap_or_default(),
                };
                for &c in &targets {
                    send(&st, c, cancellation(run_id));
                }
                let note = if targets.is_empty() {
                    "cancel requested; no worker with this id is connected, it is told when one connects".to_string()
                } else {
                    "cancel requested; task_cancellation sent to the worker".to_string()
                };
                Ok(self.store.request_cancel(run_id, &note)?.unwrap_or(run))
            }
        }
    }

    /// Why a run is not moving, when that is something the user can act on.
    pub fn waiting_reason(&self, run: &RunRecord) -> Option<String> {
        let st = self.lock();
        let key = (run.team_id, run.spec.worker_host.clone());
        let live = st.by_worker.get(&key).map_or(0, Vec::len);
        match run.state {
            RunState::Queued if live == 0 => Some(format!(
                "no worker with id {:?} is connected to this control plane for this team (ids are case-sensitive); the run starts when one connects",
                run.spec.worker_host
            )),
            RunState::Queued => st.rejections.get(&run.id).and_then(|r| r.last()).map(|(_, _, reason)| {
                format!("every connected worker with id {:?} rejected it recently (last reason: {reason}); it is offered again shortly", run.spec.worker_host)
            }),
            RunState::Assigned => {
                let h = st.held.get(&run.id)?;
                let until = h.unconfirmed_until?;
                Some(format!(
                    "the control plane restarted after offering it; waiting up to {}s more for worker {:?} to re-announce it, then it is offered again",
                    until.saturating_duration_since(Instant::now()).as_secs(),
                    run.spec.worker_host
                ))
            }
            RunState::Claimed => {
                let h = st.held.get(&run.id)?;
                if h.conn.is_some() {
                    return None;
                }
                Some(if live == 0 {
                    format!(
                        "the worker's connection closed; it fails with worker_lost if no worker with id {:?} reconnects within {}s",
                        run.spec.worker_host,
                        self.timeouts.worker_lost.as_secs()
                    )
                } else {
                    "the worker's connection closed; waiting for the worker to report the result after reconnecting".to_string()
                })
            }
            _ => None,
        }
    }

    // ---- assignment and time-based work ----

    /// Offers every queued run to a live connection of its worker id, in
    /// creation order, round-robin across connections sharing the id.
    pub fn dispatch(&self) {
        let mut st = self.lock();
        let queued = match self.store.runs_in_state(RunState::Queued) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let now = Instant::now();
        for run in queued {
            let key = (run.team_id, run.spec.worker_host.clone());
            let Some(conns) = st.by_worker.get(&key) else {
                continue;
            };
            let recently_rejected: Vec<ConnId> = st
                .rejections
                .get(&run.id)
                .map(|r| {
                    r.iter()
                        .filter(|(_, at, _)| now.duration_since(*at) < self.timeouts.reoffer_delay)
                        .map(|(c, _, _)| *c)
                        .collect()
                })
                .unwrap_or_default();
            let start = st.cursor.get(&key).copied().unwrap_or(0);
            let n = conns.len();
            let pick = (0..n).map(|i| (start + i) % n).find(|&i| {
                !recently_rejected.contains(&conns[i]) && !st.conns[&conns[i]].tx.is_closed()
            });
            let Some(i) = pick else { continue };
            let conn = conns[i];
            st.cursor.insert(key.clone(), (i + 1) % n);
            // One execution per run: every offer repeats it, so a worker
            // recognises a re-offer of something it already runs.
            let execution_id = run
                .execution_id
                .clone()
                .unwrap_or_else(|| format!("exec_{:016x}", fastrand::u64(..)));
            let mut change = Change::to(
                RunState::Assigned,
                format!("assigned to worker {} (execution {execution_id})", key.1),
            );
            change.execution_id = Some(execution_id.clone());
            match self.store.transition(&run.id, RunState::Queued, change) {
                Ok(Some(rec)) => {
                    self.hold(&mut st, &run.id, &key, RunState::Assigned, conn);
                    tracing::info!(run = %run.id, conn, %execution_id, "run assigned");
                    send(&st, conn, assignment(&rec, execution_id));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(run = %run.id, "{e}"),
            }
        }
    }

    /// Periodic work: re-offer runs whose rejection back-off ended, and fail
    /// claimed runs whose worker has been gone past `worker_lost`.
    pub fn sweep(&self) {
        let now = Instant::now();
        {
            let mut st = self.lock();
            let delay = self.timeouts.reoffer_delay;
            st.rejections.retain(|_, r| {
                r.retain(|(_, at, _)| now.duration_since(*at) < delay * 4);
                !r.is_empty()
            });
            let live: Vec<WorkerKey> = st.by_worker.keys().cloned().collect();
            let mut lost = Vec::new();
            let unconfirmed: Vec<String> = st
                .held
                .iter()
                .filter(|(_, h)| h.unconfirmed_until.is_some_and(|t| t <= now))
                .map(|(r, _)| r.clone())
                .collect();
            for run_id in unconfirmed {
                let why = format!(
                    "no worker re-announced it within {}s of the control plane's restart; offered again (same execution)",
                    self.timeouts.reannounce_grace.as_secs_f64()
                );
                if let Err(e) = self.requeue_or_cancel(&mut st, &run_id, &why) {
                    tracing::error!(run = %run_id, "{e}");
                }
            }
            for (run_id, h) in st.held.iter_mut() {
                if h.state != RunState::Claimed || h.conn.is_some() {
                    continue;
                }
                if live.contains(&h.key) {
                    h.absent_since = None;
                    continue;
                }
                let since = *h.absent_since.get_or_insert(now);
                if now.duration_since(since) >= self.timeouts.worker_lost {
                    lost.push(run_id.clone());
                }
            }
            for run_id in lost {
                let mut c = Change::to(
                    RunState::Failed,
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
                match self.store.transition(&run_id, RunState::Claimed, c) {
                    Ok(_) => {
                        tracing::warn!(run = %run_id, "run failed: worker_lost");
                        st.held.remove(&run_id);
                    }
                    Err(e) => tracing::error!(run = %run_id, "{e}"),
                }
            }
        }
        self.dispatch();
    }

    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }
}

fn send(st: &State, conn: ConnId, msg: ServerMessage) {
    if let Some(c) = st.conns.get(&conn) {
        // A closed channel means the connection is going away; its
        // `unregister` requeues whatever it held.
        let _ = c.tx.send(msg);
    }
}

fn report_ack(run_id: &str, execution_id: Option<&str>) -> ServerMessage {
    ServerMessage::ReportAck(ReportAck {
        task_id: run_id.to_string(),
        execution_id: execution_id.map(str::to_string),
    })
}

fn cancellation(run_id: &str) -> ServerMessage {
    ServerMessage::TaskCancellation(TaskCancellation {
        task_id: run_id.to_string(),
    })
}

fn assignment(run: &RunRecord, execution_id: String) -> ServerMessage {
    let spec = &run.spec;
    ServerMessage::TaskAssignment(Box::new(TaskAssignment {
        task_id: run.id.clone(),
        execution_id: Some(execution_id),
        task: Task {
            id: run.id.clone(),
            title: spec.title.clone().unwrap_or_default(),
            task_definition: TaskDefinition {
                prompt: spec.prompt.clone().unwrap_or_default(),
            },
            created_at: Some(run.created_at.clone()),
            updated_at: Some(run.updated_at.clone()),
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
