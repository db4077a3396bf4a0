//! Task lifecycle: record and claim before any work, reject at capacity,
//! answer re-sent assignments from the journal, run through the runtime, and
//! turn every outcome into exactly one terminal report per execution.
//! Cancellation and shutdown both stop tasks through the same token; the
//! recorded cause decides how the stop is reported.

use crate::config::WorkerConfig;
use crate::connection::Link;
use crate::event::{Event, Events};
use crate::invocation;
use crate::journal::{ExecutionState, Journal};
use crate::metrics::{Metrics, TaskResult};
use crate::outbox::Outbox;
use oz_foundation::escape::Escaped;
use oz_protocol::*;
use oz_runtime::{Failure, OutputSink, RunOutcome, Runtime, TaskContext, TaskRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// After the shutdown deadline, how long force-stopped tasks get to finish
/// their cleanup before the core reports them itself (part of
/// `worker::STOP_TAIL`).
pub const FORCE_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a finished task's last live output may hold its report back
/// while the link is slow; what is still unsent then is dropped and counted.
const OUTPUT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The rejection reason the Go worker sends when it is full ("worker at
/// maximum concurrency"); a draining worker sends it for every offer, so an
/// orchestrator that knows only the reference protocol sends the task
/// elsewhere, as it would for a full worker.
pub const AT_CAPACITY_REASON: &str = "worker at maximum concurrency";
/// How long a finished task's report waits for a connection to come back
/// (the report could not go out meanwhile anyway), so its buffered last
/// output still goes out before it. Past this, or at shutdown, the output
/// left is dropped.
const OUTPUT_RECONNECT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Cancelled,
    Shutdown,
    /// The task ran past `task_timeout` (the limit it ran past).
    Timeout(Duration),
}

/// One execution's place among the running tasks: held in the manager's
/// map while it runs, and a clone of it by the task's own future. Every
/// field is shared, so the manager stops, forces or settles the task
/// through the same slot the run watches.
#[derive(Clone)]
struct Slot {
    task: TaskRef,
    /// A cancellation, a shutdown or the task deadline: stop gracefully.
    stop: CancellationToken,
    /// The shutdown deadline passed: stop now, skip the grace period.
    force: CancellationToken,
    /// Why `stop` fired, first cause wins; decides the report.
    cause: Arc<Mutex<Option<StopCause>>>,
    /// Set when the core reported the task itself (the runtime did not
    /// return in time at shutdown): a later outcome is not reported again.
    reported: Arc<AtomicBool>,
    /// Set at shutdown when the runtime's tasks run on without the worker:
    /// whatever the run returns now is left to the next start to report.
    detached: Arc<AtomicBool>,
}

pub struct TaskManager {
    runtime: Arc<dyn Runtime>,
    config: Arc<WorkerConfig>,
    journal: Arc<Journal>,
    /// Everything sent to the orchestrator goes out here.
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    /// By task id: one execution of a task at a time.
    running: Mutex<HashMap<String, Slot>>,
    accepting: AtomicBool,
    /// Set by [`TaskManager::start_drain`]: every offer is rejected as at
    /// capacity; running tasks go on.
    draining: AtomicBool,
    /// `--disconnect-after-task`: set once a task was claimed; no other is.
    claimed_one: AtomicBool,
    finished: Notify,
    /// Cancelled when shutdown starts: nothing waits for a reconnection then.
    stopping: CancellationToken,
    /// Assignments received on a connection that closed before their claim
    /// could be written (task-reannounce connections only): the next
    /// connection releases them, see [`TaskManager::release_unclaimed`].
    unclaimed: Mutex<Vec<TaskRef>>,
    /// Dispatched executions whose cancellation is under way: a repeated
    /// `task_cancellation` runs nothing more.
    cancelling: Mutex<std::collections::HashSet<TaskRef>>,
    /// The way into this manager's event loop ([`Self::serve_events`]).
    events: Events,
}

/// A run's end on its way to the report step, carried by
/// [`Event::Finished`].
pub struct RunEnded {
    slot: Slot,
    outcome: RunOutcome,
    /// When the run was claimed (or followed again): its duration's start.
    started: std::time::Instant,
}

impl TaskManager {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        config: Arc<WorkerConfig>,
        journal: Arc<Journal>,
        outbox: Arc<Outbox>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (events, inbox) = mpsc::unbounded_channel();
        let manager = Arc::new(TaskManager {
            runtime,
            config,
            journal,
            outbox,
            metrics,
            running: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            claimed_one: AtomicBool::new(false),
            finished: Notify::new(),
            stopping: CancellationToken::new(),
            unclaimed: Mutex::new(Vec::new()),
            cancelling: Mutex::new(Default::default()),
            events,
        });
        tokio::spawn(Self::serve_events(Arc::downgrade(&manager), inbox));
        manager
    }

    /// The way in for connections: events sent here reach the manager's
    /// one loop, in order.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// Tasks running now.
    pub fn active(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    /// Queues the report of an execution that ended while no instance of
    /// this worker was watching it (found at start-up).
    pub fn report_recovered(&self, task: TaskRef, outcome: RunOutcome) {
        if outcome == RunOutcome::Spawned {
            if let Err(e) = self.journal.dispatched(&task) {
                tracing::error!(task_id = task.task_id, "cannot record the dispatch: {e}");
            }
            return;
        }
        let outcome = match outcome {
            RunOutcome::Stopped => RunOutcome::Failed(Failure::new(
                FailureReason::Unknown,
                "the worker running this task died; its remains were stopped at the worker's restart",
            )),
            other => other,
        };
        tracing::info!(
            task_id = task.task_id,
            execution_id = task.execution_id.as_deref().unwrap_or(""),
            "reporting a task left unfinished by an earlier run of this worker"
        );
        let msg = report(&task, outcome, None);
        self.metrics
            .finished(result_of(&msg), Duration::ZERO, failure_of(&msg));
        self.outbox.report(task, msg);
    }

    fn claim_message(&self, task: &TaskRef, link: &Link) -> WorkerMessage {
        WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: task.task_id.clone(),
            worker_id: self.config.worker_id.clone(),
            // Only a server that offered task-reannounce hears of executions.
            execution_id: if link.extensions().task_reannounce {
                task.execution_id.clone()
            } else {
                None
            },
        })
    }

    /// An assignment from `link`, through its named steps: dedupe and
    /// journal ([`Self::dedupe`]), capacity ([`Self::capacity`]), a slot
    /// ([`Self::take_slot`]); then, in the task's own future, claim
    /// ([`Self::claim`]), run ([`Self::run`]) and report ([`Self::report`]).
    fn assign(self: &Arc<Self>, a: TaskAssignment, link: &Link) {
        let task = TaskRef {
            task_id: a.task_id.clone(),
            execution_id: a.execution_id.clone(),
        };
        // Offered again: nothing is left to release.
        self.unclaimed
            .lock()
            .unwrap()
            .retain(|t| t.task_id != task.task_id);
        let slot = {
            let mut running = self.running.lock().unwrap();
            if !self.dedupe(&task, &running, link) {
                return;
            }
            if let Some((kind, reason)) = self.capacity(&task, &running) {
                self.reject(&task, kind, reason, link);
                return;
            }
            self.take_slot(task.clone(), &mut running)
        };
        // Every line logged about this task, here and in the runtime, carries
        // its task and execution ids.
        let span = task_span(&task);
        let this = self.clone();
        let link = link.clone();
        let steps = async move {
            if !this.claim(&slot, &link).await {
                return;
            }
            let claimed_at = std::time::Instant::now();
            let outcome = this.run(a, &slot, &link).await;
            this.ended(slot, outcome, claimed_at);
        };
        tokio::spawn(tracing::Instrument::instrument(steps, span));
    }

    /// Step 1, dedupe and journal: whether `task` is new here. An execution
    /// running now, already finished (answered with its stored report),
    /// dispatched or still being recovered is not run again; a server that
    /// may have lost our claim (task-reannounce) hears it again.
    fn dedupe(&self, task: &TaskRef, running: &HashMap<String, Slot>, link: &Link) -> bool {
        let execution_id = task.execution_id.as_deref().unwrap_or("");
        if let Some(r) = running.get(&task.task_id) {
            if r.task == *task && link.extensions().task_reannounce {
                // The server may have lost our claim (it restarted): repeat it.
                self.outbox.post(link, self.claim_message(task, link));
            }
            tracing::info!(
                task_id = task.task_id,
                execution_id,
                "ignoring a repeated assignment for a task this worker is running"
            );
            return false;
        }
        match self.journal.get(task).map(|e| e.state) {
            Some(ExecutionState::Finished { report, .. }) => {
                tracing::info!(
                    task_id = task.task_id,
                    execution_id,
                    "this execution already ran here: answering with its stored {} instead of running it again",
                    report.kind()
                );
                self.outbox.report_again(task.clone(), report);
                false
            }
            Some(ExecutionState::Dispatched) => {
                if link.extensions().task_reannounce {
                    self.outbox.post(link, self.claim_message(task, link));
                }
                tracing::info!(
                    task_id = task.task_id,
                    execution_id,
                    "ignoring an assignment for an execution already dispatched"
                );
                false
            }
            Some(ExecutionState::Claimed) => {
                tracing::info!(
                    task_id = task.task_id,
                    execution_id,
                    "ignoring an assignment for an execution still being recovered"
                );
                false
            }
            None => true,
        }
    }

    /// Step 2, capacity: why this worker cannot take `task` now (the metric
    /// label and the rejection reason), or `None` when it can. A shutdown,
    /// a drain (SIGQUIT or `--disconnect-after-task`) and
    /// `max_concurrent_tasks` refuse.
    fn capacity(
        &self,
        task: &TaskRef,
        running: &HashMap<String, Slot>,
    ) -> Option<(&'static str, String)> {
        let one_only = self.config.disconnect_after_task
            && (self.claimed_one.load(Ordering::SeqCst) || !running.is_empty());
        if !self.accepting.load(Ordering::SeqCst) {
            Some(("shutting_down", "worker is shutting down".to_string()))
        } else if self.draining.load(Ordering::SeqCst) || one_only {
            tracing::info!(
                task_id = task.task_id,
                "draining ({}): rejecting the task as at capacity so the orchestrator offers it elsewhere",
                if one_only { "--disconnect-after-task" } else { "SIGQUIT" }
            );
            Some((
                crate::metrics::REJECT_AT_CAPACITY,
                AT_CAPACITY_REASON.to_string(),
            ))
        } else {
            match self.config.max_concurrent_tasks {
                Some(max) if running.len() >= max as usize => Some((
                    "at_capacity",
                    format!("at capacity: {} of {max} tasks running", running.len()),
                )),
                _ => None,
            }
        }
    }

    /// Refuses `task` on `link` with `reason`, counted under `kind`.
    fn reject(&self, task: &TaskRef, kind: &'static str, reason: String, link: &Link) {
        tracing::info!(
            task_id = task.task_id,
            execution_id = task.execution_id.as_deref().unwrap_or(""),
            "rejecting task: {}",
            Escaped(&reason)
        );
        self.metrics.rejected(kind);
        self.outbox.post(
            link,
            WorkerMessage::TaskRejected(TaskRejected {
                task_id: task.task_id.clone(),
                reason,
                execution_id: None,
            }),
        );
    }

    /// Holds a slot for `task` (under the `running` lock, so capacity and
    /// the slot are decided together) and returns the run's copy of it.
    fn take_slot(&self, task: TaskRef, running: &mut HashMap<String, Slot>) -> Slot {
        let slot = Slot {
            task,
            stop: CancellationToken::new(),
            force: CancellationToken::new(),
            cause: Arc::new(Mutex::new(None)),
            reported: Arc::new(AtomicBool::new(false)),
            detached: Arc::new(AtomicBool::new(false)),
        };
        running.insert(slot.task.task_id.clone(), slot.clone());
        self.metrics.set_active(running.len());
        slot
    }

    /// Step 3, claim: records the claim in the journal (synced), then writes
    /// `task_claimed` on `link`. False, with the slot freed, when either
    /// fails: a claim that cannot be recorded is rejected (it could not be
    /// honoured after a crash); one that cannot be written is forgotten (the
    /// server re-queues the task; running it anyway could run it twice) and,
    /// on a task-reannounce connection, released by the next connection.
    async fn claim(&self, slot: &Slot, link: &Link) -> bool {
        let task = &slot.task;
        if let Err(e) = self.journal.claimed(task) {
            tracing::error!(
                task_id = task.task_id,
                "cannot record the claim in the journal under {}: {e}; rejecting the task",
                self.config.state_dir.display()
            );
            self.metrics.rejected("journal");
            self.outbox
                .send(
                    link,
                    WorkerMessage::TaskRejected(TaskRejected {
                        task_id: task.task_id.clone(),
                        reason: "the worker cannot write its state directory".into(),
                        execution_id: None,
                    }),
                )
                .await;
            self.finish(&task.task_id);
            return false;
        }
        if !self.outbox.send(link, self.claim_message(task, link)).await {
            // A server that restarted meanwhile cannot know the claim never
            // came (it waits for a re-announce): tell the next connection.
            self.journal.forget(task);
            if link.extensions().task_reannounce && task.execution_id.is_some() {
                tracing::warn!(
                    task_id = task.task_id,
                    "the claim could not be sent (connection lost); the next connection releases the task so the server offers it again at once"
                );
                self.unclaimed.lock().unwrap().push(task.clone());
            } else {
                tracing::warn!(
                    task_id = task.task_id,
                    "the claim could not be sent (connection lost); leaving the task to the server"
                );
            }
            self.finish(&task.task_id);
            return false;
        }
        self.metrics.claimed();
        self.claimed_one.store(true, Ordering::SeqCst);
        tracing::info!(
            task_id = task.task_id,
            execution_id = task.execution_id.as_deref().unwrap_or(""),
            "claimed task"
        );
        true
    }

    /// Step 4, run: the assignment through the runtime, under the task
    /// deadline (counted from the claim; past it the task is stopped through
    /// the slot's `stop`, as a cancellation is), with live output forwarded
    /// when `link`'s server asked for it. Returns once the runtime has and
    /// the task's last output went out (bounded).
    async fn run(self: &Arc<Self>, a: TaskAssignment, slot: &Slot, link: &Link) -> RunOutcome {
        let deadline = self
            .config
            .task_timeout
            .map(|limit| spawn_deadline(limit, slot));
        // Live output only for a server that asked for it.
        let (output, forwarder) = if link.extensions().task_output {
            let (sink, reader) = OutputSink::channel();
            let forwarder = tokio::spawn(tracing::Instrument::in_current_span(
                self.clone().forward_output(slot.task.clone(), reader),
            ));
            (sink, Some(forwarder))
        } else {
            (OutputSink::none(), None)
        };
        let outcome = match invocation::build(&a, &self.config) {
            Err(failure) => RunOutcome::Failed(failure),
            Ok(inv) => {
                let ctx = TaskContext {
                    stop: slot.stop.clone(),
                    force: slot.force.clone(),
                    output: output.clone(),
                };
                self.runtime.run(inv, ctx).await
            }
        };
        if let Some(deadline) = deadline {
            deadline.abort();
        }
        output.close();
        // The task's last output goes out before its report, so a reader
        // that stops at the report has it all; bounded, because a stalled
        // link must not hold the report back (what is left is dropped and
        // counted).
        if let Some(forwarder) = forwarder {
            self.wait_for_output(forwarder).await;
        }
        outcome
    }

    /// A run returned: its report step goes through the event loop, the
    /// same way in as everything else.
    fn ended(&self, slot: Slot, outcome: RunOutcome, started: std::time::Instant) {
        let ended = RunEnded {
            slot,
            outcome,
            started,
        };
        // The loop ends only with the manager; should the runtime be
        // winding down under us, report here rather than lose it.
        if let Err(mpsc::error::SendError(Event::Finished(ended))) =
            self.events.send(Event::Finished(ended))
        {
            self.report(&ended.slot, ended.outcome, ended.started);
        }
    }

    /// Step 5, report: turns the outcome into the execution's one terminal
    /// report (recorded, then queued for delivery) and frees the slot. A
    /// dispatched task is recorded as such and reports nothing; an outcome
    /// already settled at shutdown (reported by the core, or left to the
    /// next start) is dropped.
    fn report(&self, slot: &Slot, outcome: RunOutcome, started: std::time::Instant) {
        let task = &slot.task;
        if self.settled_elsewhere(slot) {
            return;
        }
        if outcome == RunOutcome::Spawned {
            if let Err(e) = self.journal.dispatched(task) {
                tracing::error!(task_id = task.task_id, "cannot record the dispatch: {e}");
            }
            tracing::info!(task_id = task.task_id, "task dispatched; its slot is free");
            self.metrics
                .finished(TaskResult::Dispatched, started.elapsed(), None);
            self.finish(&task.task_id);
            return;
        }
        let cause = *slot.cause.lock().unwrap();
        let msg = report(task, outcome, cause);
        self.metrics
            .finished(result_of(&msg), started.elapsed(), failure_of(&msg));
        log_report(&msg);
        self.outbox.report(task.clone(), msg);
        self.finish(&task.task_id);
    }

    /// Whether a run's outcome is no longer the run's to report: the core
    /// reported it at shutdown, or detached it (the next start follows the
    /// task again). Frees the slot when so.
    fn settled_elsewhere(&self, slot: &Slot) -> bool {
        let why = if slot.detached.load(Ordering::SeqCst) {
            "the runtime returned after the task was left to the next start"
        } else if slot.reported.load(Ordering::SeqCst) {
            "the runtime returned after the task was reported at shutdown"
        } else {
            return false;
        };
        tracing::info!(task_id = slot.task.task_id, "{why}");
        self.finish(&slot.task.task_id);
        true
    }

    /// The start-up step for a runtime whose tasks outlive the worker
    /// ([`Runtime::reattaches`]): follows again an execution that an
    /// earlier instance of this worker claimed and did not finish. It holds
    /// a slot, can be cancelled and is reported like any run (the report
    /// step). It was claimed already, so nothing is claimed again (a server
    /// that offered `task-reannounce` hears of it as a held task on
    /// connect).
    pub fn reattach(self: &Arc<Self>, task: TaskRef) {
        let slot = self.take_slot(task, &mut self.running.lock().unwrap());
        tracing::info!(
            task_id = slot.task.task_id,
            execution_id = slot.task.execution_id.as_deref().unwrap_or(""),
            "following again a task an earlier run of this worker started"
        );
        let span = task_span(&slot.task);
        let this = self.clone();
        let steps = async move {
            let started = std::time::Instant::now();
            // Live output as for a fresh task: the forwarder waits for a
            // connection, and stops at one that takes no output.
            let (output, reader) = OutputSink::channel();
            let forwarder = tokio::spawn(tracing::Instrument::in_current_span(
                this.clone().forward_output(slot.task.clone(), reader),
            ));
            let ctx = TaskContext {
                stop: slot.stop.clone(),
                force: slot.force.clone(),
                output: output.clone(),
            };
            let outcome = this.runtime.reattach(slot.task.clone(), ctx).await;
            output.close();
            this.wait_for_output(forwarder).await;
            this.ended(slot, outcome, started);
        };
        tokio::spawn(tracing::Instrument::instrument(steps, span));
    }

    /// Sends a task's output to whichever connection is current, as
    /// `task_output` frames, in order. While no connection takes output (a
    /// disconnect, a restarting server), it waits for the next one and
    /// newer output waits in the task's bounded sink, which keeps the newest
    /// and counts what it drops; the next frame that goes out says how much
    /// (`dropped_bytes`). Ends when the sink is closed and drained, or when
    /// a new connection does not take output at all.
    async fn forward_output(
        self: Arc<Self>,
        task: TaskRef,
        reader: oz_runtime::output::OutputReader,
    ) {
        let mut utf8 = oz_runtime::output::Utf8Carry::default();
        let mut links = self.outbox.watch();
        while let Some(chunk) = reader.next().await {
            let msg = WorkerMessage::TaskOutput(TaskOutput {
                task_id: task.task_id.clone(),
                execution_id: task.execution_id.clone(),
                stream: chunk.stream,
                data: utf8.decode(chunk.stream, &chunk.data),
                dropped_bytes: chunk.dropped_before,
            });
            loop {
                let link = links.borrow_and_update().clone();
                let sent = match link {
                    Some(l) if l.is_open() && !l.extensions().task_output => {
                        tracing::debug!(
                            "the new connection takes no live output; the rest is dropped"
                        );
                        return;
                    }
                    Some(l) if l.is_open() => l.send_output(msg.clone()).await,
                    _ => false,
                };
                if sent {
                    break;
                }
                // Closed or none: the next connection takes it.
                if links.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Waits for a finished task's forwarder to hand over its last output
    /// (see [`OUTPUT_FLUSH_LIMIT`] and [`OUTPUT_RECONNECT_WAIT`]).
    async fn wait_for_output(&self, mut forwarder: tokio::task::JoinHandle<()>) {
        let mut links = self.outbox.watch();
        let give_up = tokio::time::Instant::now() + OUTPUT_RECONNECT_WAIT;
        loop {
            let connected = links
                .borrow_and_update()
                .as_ref()
                .is_some_and(Link::is_open);
            if connected {
                let _ = tokio::time::timeout(OUTPUT_FLUSH_LIMIT, &mut forwarder).await;
                return;
            }
            tokio::select! {
                _ = &mut forwarder => return,
                changed = links.changed() => if changed.is_err() { return },
                _ = self.stopping.cancelled() => break,
                _ = tokio::time::sleep_until(give_up) => break,
            }
        }
        tracing::info!("no connection to send the task's last output on; it is dropped");
        forwarder.abort();
    }

    /// On a new task-reannounce connection: releases each assignment an
    /// earlier connection received but could not claim, as `task_rejected`
    /// naming its execution, so a server that restarted after offering it
    /// (and waits for a re-announce that will never come) offers it again
    /// now. One that could not be written waits for the next connection.
    fn release_unclaimed(self: &Arc<Self>, link: &Link) {
        let pending = std::mem::take(&mut *self.unclaimed.lock().unwrap());
        if pending.is_empty() {
            return;
        }
        let this = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            for task in pending {
                let msg = WorkerMessage::TaskRejected(TaskRejected {
                    task_id: task.task_id.clone(),
                    reason: "the assignment arrived as the connection closed; it was never claimed or started".into(),
                    execution_id: task.execution_id.clone(),
                });
                if this.outbox.send(&link, msg).await {
                    tracing::info!(
                        task_id = task.task_id,
                        execution_id = task.execution_id.as_deref().unwrap_or(""),
                        "released an assignment this worker could not claim"
                    );
                } else {
                    this.unclaimed.lock().unwrap().push(task);
                }
            }
        });
    }

    fn finish(&self, task_id: &str) {
        let mut running = self.running.lock().unwrap();
        running.remove(task_id);
        self.metrics.set_active(running.len());
        drop(running);
        self.finished.notify_waiters();
    }

    /// Stops a running task; `None` when it is not running, else whether
    /// it was already stopping.
    fn stop(&self, task_id: &str, why: StopCause) -> Option<bool> {
        let running = self.running.lock().unwrap();
        let r = running.get(task_id)?;
        let already = r.stop.is_cancelled();
        r.cause.lock().unwrap().get_or_insert(why);
        r.stop.cancel();
        Some(already)
    }

    fn cancel(self: &Arc<Self>, task_id: &str) {
        match self.stop(task_id, StopCause::Cancelled) {
            Some(false) => {
                tracing::info!(task_id, "cancelling task on the server's request");
                return;
            }
            Some(true) => {
                tracing::info!(
                    task_id,
                    "repeated cancellation of a task already stopping; nothing more to do"
                );
                return;
            }
            None => {}
        }
        let dispatched = self.journal.dispatched_of(task_id);
        if dispatched.is_empty() {
            tracing::info!(
                task_id,
                "cancellation for a task this worker is not running; ignored"
            );
            return;
        }
        for task in dispatched {
            if !self.cancelling.lock().unwrap().insert(task.clone()) {
                tracing::info!(
                    task_id,
                    "repeated cancellation of a dispatched task already being cancelled; ignored"
                );
                continue;
            }
            tracing::info!(task_id, "cancelling a dispatched task through the runtime");
            let this = self.clone();
            tokio::spawn(async move {
                this.runtime.cancel_dispatched(task.clone()).await;
                this.journal.forget(&task);
                this.cancelling.lock().unwrap().remove(&task);
            });
        }
    }

    /// Starts a drain: from now on every offer is rejected as at capacity
    /// ([`AT_CAPACITY_REASON`]) and running tasks go on to their end. A
    /// server that offered `worker-state` is told (now, and first on every
    /// later connection).
    pub fn start_drain(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(link) = self
            .outbox
            .current()
            .filter(|l| l.extensions().worker_state)
        {
            self.outbox.post(&link, draining_message());
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once no task runs, however long that takes (a drain has no
    /// deadline; a SIGTERM ends it the normal way).
    pub async fn idle(&self) {
        self.wait_until(|| self.active() == 0).await
    }

    /// Resolves once `--disconnect-after-task`'s one task has been claimed
    /// and has ended (its report queued for delivery). Never without the flag.
    pub async fn one_task_ended(&self) {
        if !self.config.disconnect_after_task {
            return std::future::pending().await;
        }
        self.wait_until(|| self.claimed_one.load(Ordering::SeqCst) && self.active() == 0)
            .await
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    }

    async fn wait_idle(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.finished.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Stops taking tasks and, unless the runtime preserves tasks across a
    /// shutdown, stops the running ones (reported `graceful_shutdown`).
    /// Waits at most `timeout` for them; then force-stops what is left and
    /// gives it [`FORCE_STOP_GRACE`], and reports whatever still has not
    /// ended itself. Every task ends with its report in the journal.
    /// Returns whether everything ended within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.accepting.store(false, Ordering::SeqCst);
        self.stopping.cancel();
        if self.runtime.reattaches() {
            // The tasks run on without us (Kubernetes Jobs): leave them
            // running, unreported and claimed in the journal, for the next
            // start to follow again.
            let running = self.running.lock().unwrap();
            for r in running.values() {
                r.detached.store(true, Ordering::SeqCst);
            }
            if !running.is_empty() {
                tracing::info!(
                    "leaving {} running task(s) in place; the next start of this worker follows them again",
                    running.len()
                );
            }
            return true;
        }
        if !self.runtime.preserves_tasks_on_shutdown() {
            let ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
            for id in &ids {
                self.stop(id, StopCause::Shutdown);
            }
        }
        if self.wait_idle(timeout).await {
            return true;
        }
        let left: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        tracing::warn!(
            "{} task(s) still running after the shutdown timeout ({timeout:?}): stopping them now",
            left.len()
        );
        {
            let running = self.running.lock().unwrap();
            for r in running.values() {
                r.cause.lock().unwrap().get_or_insert(StopCause::Shutdown);
                r.stop.cancel();
                r.force.cancel();
            }
        }
        if self.wait_idle(FORCE_STOP_GRACE).await {
            return false;
        }
        let stuck: Vec<TaskRef> = {
            let running = self.running.lock().unwrap();
            running
                .values()
                .filter(|r| !r.reported.swap(true, Ordering::SeqCst))
                .map(|r| r.task.clone())
                .collect()
        };
        for task in stuck {
            tracing::error!(
                task_id = task.task_id,
                "the runtime did not finish stopping the task; reporting it now (a later start cleans up what is left)"
            );
            let msg = report(
                &task,
                RunOutcome::Failed(Failure::new(
                    FailureReason::GracefulShutdown,
                    "the worker was shut down while the task ran and could not confirm that it stopped; \
                     whatever is left of it is removed at the worker's next start",
                )),
                Some(StopCause::Shutdown),
            );
            self.outbox.report(task, msg);
        }
        false
    }
}

impl TaskManager {
    /// The core's event loop (started by [`Self::new`]): every event of
    /// every connection and every run's end, one at a time, in the order
    /// they were sent. Ends with the manager.
    async fn serve_events(
        manager: std::sync::Weak<Self>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        while let Some(event) = events.recv().await {
            let Some(manager) = manager.upgrade() else {
                return;
            };
            manager.handle(event);
        }
    }

    /// One event: a new connection, a frame, an undecodable assignment, a
    /// run's end.
    pub fn handle(self: &Arc<Self>, event: Event) {
        match event {
            Event::Connected(link) => self.connected(&link),
            Event::Frame(ServerMessage::TaskAssignment(a), link) => self.assign(*a, &link),
            Event::Frame(ServerMessage::TaskCancellation(c), _) => self.cancel(&c.task_id),
            // Handled by the connection, which owns delivery.
            Event::Frame(ServerMessage::ReportAck(_), _) => {}
            Event::UndecodableAssignment {
                task_id,
                error,
                link,
            } => self.undecodable_assignment(task_id, error, &link),
            Event::Finished(ended) => self.report(&ended.slot, ended.outcome, ended.started),
        }
    }

    /// A new connection: it takes live output from now on; it hears first
    /// that this worker drains (worker-state), then the tasks it holds
    /// (task-reannounce), then the assignments it could not claim.
    fn connected(self: &Arc<Self>, link: &Link) {
        self.outbox.connected(link);
        // In order: that it drains first, then the tasks it still holds.
        let mut messages = Vec::new();
        if self.is_draining() && link.extensions().worker_state {
            messages.push(draining_message());
        }
        if link.extensions().task_reannounce {
            let held = self.journal.held();
            if !held.is_empty() {
                tracing::info!("re-announcing {} task(s) this worker holds", held.len());
            }
            messages.extend(held.iter().map(|(task, _)| self.claim_message(task, link)));
        } else {
            // Only a server that offered task-reannounce hears of releases.
            self.unclaimed.lock().unwrap().clear();
        }
        self.outbox.post_all(link, messages);
        if link.extensions().task_reannounce {
            self.release_unclaimed(link);
        }
    }

    /// An assignment that could not be read: claimed so it ends visibly as
    /// failed instead of bouncing between workers.
    fn undecodable_assignment(self: &Arc<Self>, task_id: String, error: String, link: &Link) {
        let manager = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let task = TaskRef {
                task_id,
                execution_id: None,
            };
            if manager.journal.get(&task).is_some() {
                return;
            }
            if manager.journal.claimed(&task).is_err() {
                return;
            }
            if manager
                .outbox
                .send(&link, manager.claim_message(&task, &link))
                .await
            {
                manager.metrics.claimed();
                let msg = report(
                    &task,
                    RunOutcome::Failed(Failure::new(
                        FailureReason::Unknown,
                        format!("the task assignment could not be read: {error}"),
                    )),
                    None,
                );
                manager
                    .metrics
                    .finished(TaskResult::Failed, Duration::ZERO, failure_of(&msg));
                manager.outbox.report(task, msg);
            } else {
                manager.journal.forget(&task);
            }
        });
    }
}

/// The span every line about `task` is logged in (its ids, escaped).
fn task_span(task: &TaskRef) -> tracing::Span {
    tracing::info_span!(
        "task",
        task_id = %Escaped(&task.task_id),
        execution_id = %Escaped(task.execution_id.as_deref().unwrap_or(""))
    )
}

/// Stops the slot's task once it has run `limit` past its claim, recording
/// [`StopCause::Timeout`] unless another cause came first. Abort the handle
/// when the run ends.
fn spawn_deadline(limit: Duration, slot: &Slot) -> tokio::task::JoinHandle<()> {
    let (stop, cause) = (slot.stop.clone(), slot.cause.clone());
    // In the task's span: the line names the task and execution.
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        tokio::time::sleep(limit).await;
        let mut cause = cause.lock().unwrap();
        if cause.is_none() {
            *cause = Some(StopCause::Timeout(limit));
            tracing::warn!(
                "the task ran past task_timeout ({}): stopping it",
                go_duration(limit)
            );
        }
        drop(cause);
        stop.cancel();
    }))
}

/// Extension `worker-state`: this worker is draining.
fn draining_message() -> WorkerMessage {
    WorkerMessage::WorkerState(WorkerState { draining: true })
}

fn log_report(msg: &WorkerMessage) {
    match msg {
        WorkerMessage::TaskFailed(f) => {
            tracing::warn!(task_id = f.task_id, execution_id = f.execution_id.as_deref().unwrap_or(""), reason = %f.failure_reason, exit_code = ?f.exit_code, "task failed: {}", Escaped(&f.message))
        }
        WorkerMessage::TaskCompleted(c) => {
            tracing::info!(
                task_id = c.task_id,
                execution_id = c.execution_id.as_deref().unwrap_or(""),
                state = c.task_state.as_deref().unwrap_or("COMPLETED"),
                "task finished"
            )
        }
        _ => {}
    }
}

fn result_of(msg: &WorkerMessage) -> TaskResult {
    match msg {
        WorkerMessage::TaskFailed(_) => TaskResult::Failed,
        WorkerMessage::TaskCompleted(c) if c.task_state.is_some() => TaskResult::Cancelled,
        _ => TaskResult::Succeeded,
    }
}

fn failure_of(msg: &WorkerMessage) -> Option<&FailureReason> {
    match msg {
        WorkerMessage::TaskFailed(f) => Some(&f.failure_reason),
        _ => None,
    }
}

/// How a task stopped at its deadline is reported: reason `task_timeout`
/// (PROTOCOL.md's bounded set) and a message naming the limit and the
/// setting that raises it.
fn timeout_failure(limit: Duration) -> Failure {
    Failure::new(
        FailureReason::TaskTimeout,
        format!(
            "task exceeded task_timeout {}; set task_timeout/--task-timeout to allow longer",
            go_duration(limit)
        ),
    )
}

/// `limit` as Go prints a `time.Duration` (`30m0s`), as operators wrote it.
fn go_duration(limit: Duration) -> String {
    oz_foundation::duration::format_go_duration(limit.as_nanos().min(i64::MAX as u128) as i64)
}

/// The one terminal report for an execution's outcome.
fn report(task: &TaskRef, outcome: RunOutcome, cause: Option<StopCause>) -> WorkerMessage {
    let failed = |f: Failure| {
        WorkerMessage::TaskFailed(TaskFailed {
            task_id: task.task_id.clone(),
            message: f.message,
            failure_reason: f.reason,
            exit_code: f.exit_code,
            execution_id: task.execution_id.clone(),
            failure_details: f.details,
        })
    };
    match (outcome, cause) {
        (RunOutcome::Completed, _) | (RunOutcome::Spawned, _) => {
            WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task.task_id.clone(),
                message: "the agent exited successfully".into(),
                task_state: None,
                execution_id: task.execution_id.clone(),
            })
        }
        (RunOutcome::Failed(f), _) => failed(f),
        (RunOutcome::Stopped, Some(StopCause::Timeout(limit))) => failed(timeout_failure(limit)),
        (RunOutcome::Stopped, Some(StopCause::Shutdown)) => failed(Failure::new(
            FailureReason::GracefulShutdown,
            "the worker was shut down while the task ran; the task was stopped",
        )),
        (RunOutcome::Stopped, _) => WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task.task_id.clone(),
            message: "cancelled on the server's request; the task was stopped".into(),
            task_state: Some(TASK_STATE_CANCELLED.into()),
            execution_id: task.execution_id.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! The core's rules against a fake runtime: no daemon, no socket.
    use super::*;
    use crate::config::CoreInputs;
    use crate::connection::TestWire;
    use crate::delivery::Delivery;
    use futures_util::future::BoxFuture;
    use oz_foundation::secret::Secret;
    use oz_runtime::{Invocation, RunOutcome, TaskContext};
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::{mpsc, oneshot};

    /// How long a test waits for an event (a frame, a start, a report, the
    /// end of a shutdown) before failing: a bound, not a delay, and
    /// generous, as CI runs the suite on two loaded cores (the journal's
    /// writes wait for the disk).
    const WITHIN: Duration = Duration::from_secs(30);

    /// How the fake ends a run.
    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        /// Completes when released, stops when asked.
        Obedient,
        /// Ignores the stop token until forced.
        Stubborn,
        /// Ignores everything: never returns.
        Hung,
        /// Dispatches at once.
        Dispatch,
        /// Writes a line of output and completes at once.
        Chatty,
    }

    struct Fake {
        behaviour: Behaviour,
        preserves: bool,
        runs: AtomicUsize,
        started: mpsc::UnboundedSender<String>,
        release: Mutex<HashMap<String, oneshot::Sender<RunOutcome>>>,
        cancelled: Mutex<Vec<TaskRef>>,
    }

    impl Runtime for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn describe(&self) -> String {
            "fake".into()
        }
        fn preserves_tasks_on_shutdown(&self) -> bool {
            self.preserves
        }
        fn run(&self, inv: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
            Box::pin(async move {
                self.runs.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = oneshot::channel();
                self.release
                    .lock()
                    .unwrap()
                    .insert(inv.task.task_id.clone(), tx);
                let _ = self.started.send(inv.task.task_id.clone());
                match self.behaviour {
                    Behaviour::Dispatch => RunOutcome::Spawned,
                    Behaviour::Chatty => {
                        ctx.output
                            .write(oz_runtime::OutputStream::Stdout, b"last words\n");
                        RunOutcome::Completed
                    }
                    Behaviour::Obedient => tokio::select! {
                        r = rx => r.unwrap_or(RunOutcome::Completed),
                        _ = ctx.stop.cancelled() => RunOutcome::Stopped,
                    },
                    Behaviour::Stubborn => tokio::select! {
                        r = rx => r.unwrap_or(RunOutcome::Completed),
                        _ = ctx.force.cancelled() => RunOutcome::Stopped,
                    },
                    Behaviour::Hung => std::future::pending().await,
                }
            })
        }
        fn cancel_dispatched(&self, task: TaskRef) -> BoxFuture<'_, ()> {
            Box::pin(async move { self.cancelled.lock().unwrap().push(task) })
        }
        fn recover(&self, _: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
            Box::pin(async { Vec::new() })
        }
    }

    struct Harness {
        _dir: tempfile::TempDir,
        fake: Arc<Fake>,
        started: mpsc::UnboundedReceiver<String>,
        manager: Arc<TaskManager>,
        journal: Arc<Journal>,
        delivery: Arc<Delivery>,
        link: Link,
        wire: TestWire,
    }

    fn harness(behaviour: Behaviour, max: Option<u32>, ext: Extensions) -> Harness {
        harness_with(behaviour, max, ext, CoreInputs::default())
    }

    /// [`harness`] with more core settings (`task_timeout`, …).
    fn harness_with(
        behaviour: Behaviour,
        max: Option<u32>,
        ext: Extensions,
        more: CoreInputs,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = WorkerConfig::resolve(
            &CoreInputs {
                flag_worker_id: Some("w".into()),
                flag_api_key: Some(Secret::new("k")),
                flag_max_concurrent_tasks: max,
                flag_state_dir: Some(dir.path().to_path_buf()),
                ..more
            },
            &HashMap::new(),
        )
        .unwrap();
        let (journal, _) = Journal::open(dir.path(), "w").unwrap();
        let journal = Arc::new(journal);
        let delivery = Arc::new(Delivery::new(journal.clone()));
        let (started_tx, started) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            behaviour,
            preserves: behaviour == Behaviour::Dispatch,
            runs: AtomicUsize::new(0),
            started: started_tx,
            release: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(Vec::new()),
        });
        let manager = TaskManager::new(
            fake.clone(),
            Arc::new(config),
            journal.clone(),
            Arc::new(Outbox::new(delivery.clone())),
            Metrics::new("w", "fake", max),
        );
        let (link, wire) = Link::for_test(ext, 1);
        Harness {
            _dir: dir,
            fake,
            started,
            manager,
            journal,
            delivery,
            link,
            wire,
        }
    }

    fn assignment(task_id: &str, execution_id: &str) -> ServerMessage {
        ServerMessage::TaskAssignment(Box::new(TaskAssignment {
            task_id: task_id.into(),
            execution_id: Some(execution_id.into()),
            task: Task {
                id: task_id.into(),
                ..Default::default()
            },
            sidecar_image: Some("agent:1".into()),
            ..Default::default()
        }))
    }

    fn task(task_id: &str, execution_id: &str) -> TaskRef {
        TaskRef {
            task_id: task_id.into(),
            execution_id: Some(execution_id.into()),
        }
    }

    impl Harness {
        fn send(&self, msg: ServerMessage) {
            self.manager.handle(Event::Frame(msg, self.link.clone()));
        }

        /// The next frame on the wire, acknowledged as written.
        async fn frame(&mut self) -> WorkerMessage {
            let (msg, written) = tokio::time::timeout(WITHIN, self.wire.recv())
                .await
                .expect("a frame in time")
                .expect("link open");
            let _ = written.send(true);
            msg
        }

        async fn started(&mut self) -> String {
            tokio::time::timeout(WITHIN, self.started.recv())
                .await
                .expect("a run starts in time")
                .unwrap()
        }

        fn release(&self, task_id: &str, outcome: RunOutcome) {
            let tx = self.fake.release.lock().unwrap().remove(task_id).unwrap();
            let _ = tx.send(outcome);
        }

        async fn report(&self, t: &TaskRef) -> WorkerMessage {
            let deadline = tokio::time::Instant::now() + WITHIN;
            loop {
                if let Some(ExecutionState::Finished { report, .. }) =
                    self.journal.get(t).map(|e| e.state)
                {
                    assert!(
                        self.delivery.contains(t),
                        "a recorded report is queued for delivery"
                    );
                    return report;
                }
                assert!(tokio::time::Instant::now() < deadline, "no report for {t}");
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[tokio::test]
    async fn the_claim_is_recorded_and_written_before_the_task_runs() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        let (msg, written) = h.wire.recv().await.unwrap();
        assert_eq!(msg.kind(), "task_claimed");
        assert_eq!(
            msg.execution_id(),
            None,
            "no execution id for a server without task-reannounce"
        );
        assert_eq!(
            h.journal.get(&task("t1", "e1")).unwrap().state,
            ExecutionState::Claimed
        );
        tokio::task::yield_now().await;
        assert_eq!(
            h.fake.runs.load(Ordering::SeqCst),
            0,
            "nothing runs before the claim is written"
        );
        written.send(true).unwrap();
        assert_eq!(h.started().await, "t1");
        h.release("t1", RunOutcome::Completed);
        let report = h.report(&task("t1", "e1")).await;
        assert_eq!(report.kind(), "task_completed");
        assert_eq!(report.execution_id(), Some("e1"));
    }

    /// A harness whose runtime writes a line and completes, connected over
    /// a link with `task-output`; the link's output queue to read.
    fn chatty_harness() -> (Harness, mpsc::Receiver<WorkerMessage>) {
        let ext = Extensions {
            task_output: true,
            ..Default::default()
        };
        let mut h = harness(Behaviour::Chatty, None, ext);
        let (link, wire, output) = Link::for_test_with_output(ext, 2);
        (h.link, h.wire) = (link, wire);
        h.manager.handle(Event::Connected(h.link.clone()));
        (h, output)
    }

    /// A reader that stops at the report (`runs logs --follow`) must have
    /// had all of the task's output by then.
    #[tokio::test]
    async fn a_tasks_last_output_is_queued_before_its_report() {
        let (mut h, mut output) = chatty_harness();
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        tokio::time::timeout(WITHIN, h.delivery.pushed())
            .await
            .expect("a report in time");
        match output.try_recv() {
            Ok(WorkerMessage::TaskOutput(o)) => assert_eq!(o.data, "last words\n"),
            other => panic!("the output was not queued before the report: {other:?}"),
        }
    }

    /// On a link whose output queue is full, the report waits for the
    /// task's last output, but no longer than the flush limit.
    #[tokio::test(start_paused = true)]
    async fn a_report_waits_for_stuck_output_only_up_to_the_flush_limit() {
        let (mut h, mut output) = chatty_harness();
        for _ in 0..crate::connection::OUTPUT_QUEUE {
            let filler = WorkerMessage::TaskOutput(TaskOutput {
                task_id: "other".into(),
                execution_id: None,
                stream: oz_runtime::OutputStream::Stdout,
                data: "x".into(),
                dropped_bytes: 0,
            });
            assert!(h.link.send_output(filler).await);
        }
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        let waiting = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), h.delivery.pushed())
            .await
            .expect("the report is not held forever");
        assert!(
            waiting.elapsed() >= OUTPUT_FLUSH_LIMIT,
            "the report waited for the output ({:?})",
            waiting.elapsed()
        );
        for _ in 0..crate::connection::OUTPUT_QUEUE {
            output.recv().await.unwrap();
        }
        match output.recv().await {
            Some(WorkerMessage::TaskOutput(o)) => assert_eq!(o.data, "last words\n"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_claim_that_cannot_be_written_runs_nothing_and_is_forgotten() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        let (_, written) = h.wire.recv().await.unwrap();
        written.send(false).unwrap();
        let deadline = tokio::time::Instant::now() + WITHIN;
        while h.journal.get(&task("t1", "e1")).is_some() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 0);
        assert_eq!(h.manager.active(), 0);
        // The reference protocol hears nothing more of it on a new connection.
        let (link, mut wire) = Link::for_test(Extensions::default(), 2);
        h.manager.handle(Event::Connected(link.clone()));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), wire.recv())
                .await
                .is_err(),
            "nothing outside the reference protocol"
        );
    }

    /// Issue 22 item 1: a restarted server waits for a re-announce of an
    /// assignment whose claim never left; the next connection releases it.
    #[tokio::test]
    async fn an_unclaimed_assignment_is_released_on_the_next_reannounce_connection() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::ALL);
        h.send(assignment("t1", "e1"));
        let (_, written) = h.wire.recv().await.unwrap();
        written.send(false).unwrap();
        let deadline = tokio::time::Instant::now() + WITHIN;
        while h.manager.unclaimed.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (link, mut wire) = Link::for_test(Extensions::ALL, 2);
        h.manager.handle(Event::Connected(link.clone()));
        let (msg, written) = wire.recv().await.unwrap();
        written.send(true).unwrap();
        match msg {
            WorkerMessage::TaskRejected(r) => {
                assert_eq!(
                    (r.task_id.as_str(), r.execution_id.as_deref()),
                    ("t1", Some("e1"))
                )
            }
            other => panic!("expected a release, got {other:?}"),
        }
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 0, "never started");
    }

    #[tokio::test]
    async fn at_capacity_assignments_are_rejected() {
        let mut h = harness(Behaviour::Obedient, Some(1), Extensions::default());
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        h.started().await;
        h.send(assignment("t2", "e2"));
        match h.frame().await {
            WorkerMessage::TaskRejected(r) => {
                assert_eq!(r.task_id, "t2");
                assert!(r.reason.contains("at capacity"), "{}", r.reason);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.journal.get(&task("t2", "e2")),
            None,
            "a rejected task is not recorded"
        );
        h.release("t1", RunOutcome::Completed);
        h.report(&task("t1", "e1")).await;
        h.send(assignment("t2", "e2"));
        assert_eq!(
            h.frame().await.kind(),
            "task_claimed",
            "a freed slot takes the next task"
        );
    }

    #[tokio::test]
    async fn duplicate_assignments_never_run_an_agent_twice() {
        let ext = Extensions::ALL;
        let mut h = harness(Behaviour::Obedient, None, ext);
        h.send(assignment("t1", "e1"));
        let claim = h.frame().await;
        assert_eq!(
            claim.execution_id(),
            Some("e1"),
            "task-reannounce servers get the execution"
        );
        h.started().await;
        // While it runs: the claim is repeated, the agent is not.
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await, claim);
        h.release("t1", RunOutcome::Completed);
        let report = h.report(&task("t1", "e1")).await;
        h.delivery.acked("t1", Some("e1"));
        assert!(h.delivery.is_empty());
        // After it ended: the stored report answers, the agent does not run.
        h.send(assignment("t1", "e1"));
        tokio::task::yield_now().await;
        assert!(
            h.delivery.contains(&task("t1", "e1")),
            "the stored report is sent again"
        );
        assert_eq!(
            h.journal.get(&task("t1", "e1")).unwrap().state,
            ExecutionState::Finished {
                report,
                delivered: true
            }
        );
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 1);
        // A new execution of the same task is a new run.
        h.send(assignment("t1", "e2"));
        assert_eq!(h.frame().await.execution_id(), Some("e2"));
        h.started().await;
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn cancel_reports_cancelled_and_shutdown_reports_graceful_shutdown() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        h.send(ServerMessage::TaskCancellation(TaskCancellation {
            task_id: "t1".into(),
        }));
        match h.report(&task("t1", "e1")).await {
            WorkerMessage::TaskCompleted(c) => {
                assert_eq!(c.task_state.as_deref(), Some("CANCELLED"))
            }
            other => panic!("{other:?}"),
        }
        h.send(assignment("t2", "e2"));
        h.frame().await;
        h.started().await;
        assert!(h.manager.shutdown(WITHIN).await, "ended in time");
        match h.report(&task("t2", "e2")).await {
            WorkerMessage::TaskFailed(f) => {
                assert_eq!(f.failure_reason, FailureReason::GracefulShutdown)
            }
            other => panic!("{other:?}"),
        }
        h.send(assignment("t3", "e3"));
        match h.frame().await {
            WorkerMessage::TaskRejected(r) => assert!(r.reason.contains("shutting down")),
            other => panic!("{other:?}"),
        }
    }

    /// Past `task_timeout` the task is stopped through its stop token (as a
    /// cancellation) and reported `task_timeout`, naming the limit; a
    /// stubborn one is not forced by the deadline (the runtime's grace is).
    #[tokio::test(start_paused = true)]
    async fn past_the_task_timeout_a_task_is_stopped_and_reported_task_timeout() {
        let mut h = harness_with(
            Behaviour::Obedient,
            None,
            Extensions::default(),
            CoreInputs {
                flag_task_timeout: Some("1.5s".into()),
                ..Default::default()
            },
        );
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        let started = tokio::time::Instant::now();
        match h.report(&task("t1", "e1")).await {
            WorkerMessage::TaskFailed(f) => {
                assert_eq!(f.failure_reason, FailureReason::TaskTimeout);
                assert_eq!(
                    f.message,
                    "task exceeded task_timeout 1.5s; set task_timeout/--task-timeout to allow longer"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // A task that ends in time is not touched by its deadline.
        h.send(assignment("t2", "e2"));
        h.frame().await;
        h.started().await;
        h.release("t2", RunOutcome::Completed);
        assert_eq!(h.report(&task("t2", "e2")).await.kind(), "task_completed");
    }

    /// While draining, every offer is rejected with the Go worker's
    /// at-capacity reason; the running task goes on and reports normally.
    #[tokio::test]
    async fn a_draining_worker_rejects_as_at_capacity_and_lets_its_task_finish() {
        let ext = Extensions {
            worker_state: true,
            ..Default::default()
        };
        let mut h = harness(Behaviour::Obedient, None, ext);
        h.manager.handle(Event::Connected(h.link.clone()));
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        h.started().await;
        h.manager.start_drain();
        assert_eq!(
            h.frame().await,
            WorkerMessage::WorkerState(WorkerState { draining: true }),
            "a server that offered worker-state is told"
        );
        h.send(assignment("t2", "e2"));
        match h.frame().await {
            WorkerMessage::TaskRejected(r) => {
                assert_eq!(
                    (r.task_id.as_str(), r.reason.as_str()),
                    ("t2", AT_CAPACITY_REASON)
                )
            }
            other => panic!("{other:?}"),
        }
        // A new connection hears that it drains first, then what it holds.
        let both = Extensions {
            worker_state: true,
            task_reannounce: true,
            ..Default::default()
        };
        let (next, mut next_wire) = Link::for_test(both, 2);
        h.manager.handle(Event::Connected(next.clone()));
        for want in ["worker_state", "task_claimed"] {
            let (msg, written) = tokio::time::timeout(WITHIN, next_wire.recv())
                .await
                .unwrap()
                .unwrap();
            let _ = written.send(true);
            assert_eq!(msg.kind(), want);
        }
        let manager = h.manager.clone();
        let idle = manager.idle();
        tokio::pin!(idle);
        assert!(
            futures_util::poll!(idle.as_mut()).is_pending(),
            "a drain waits for the running task"
        );
        h.release("t1", RunOutcome::Completed);
        tokio::time::timeout(WITHIN, idle).await.unwrap();
        assert_eq!(h.report(&task("t1", "e1")).await.kind(), "task_completed");
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 1);
    }

    /// `--disconnect-after-task`: one task is claimed, a second is rejected
    /// as at capacity even while the first runs, and its end is signalled.
    #[tokio::test]
    async fn disconnect_after_task_claims_one_task_only() {
        let mut h = harness_with(
            Behaviour::Obedient,
            None,
            Extensions::default(),
            CoreInputs {
                flag_disconnect_after_task: true,
                ..Default::default()
            },
        );
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        h.started().await;
        h.send(assignment("t2", "e2"));
        match h.frame().await {
            WorkerMessage::TaskRejected(r) => assert_eq!(r.reason, AT_CAPACITY_REASON),
            other => panic!("{other:?}"),
        }
        let manager = h.manager.clone();
        let ended = manager.one_task_ended();
        tokio::pin!(ended);
        assert!(futures_util::poll!(ended.as_mut()).is_pending());
        h.release("t1", RunOutcome::Completed);
        tokio::time::timeout(WITHIN, ended).await.unwrap();
        h.report(&task("t1", "e1")).await;
        h.send(assignment("t3", "e3"));
        assert_eq!(
            h.frame().await.kind(),
            "task_rejected",
            "still one task only"
        );
    }

    #[tokio::test]
    async fn a_claim_that_cannot_be_recorded_is_rejected_and_nothing_runs() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::default());
        h.journal.break_writes_for_test();
        h.send(assignment("t1", "e1"));
        match h.frame().await {
            WorkerMessage::TaskRejected(r) => {
                assert!(r.reason.contains("state directory"), "{}", r.reason)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_cancellation_for_an_unknown_task_is_ignored() {
        let h = harness(Behaviour::Obedient, None, Extensions::default());
        h.send(ServerMessage::TaskCancellation(TaskCancellation {
            task_id: "nope".into(),
        }));
        tokio::task::yield_now().await;
        assert!(h.fake.cancelled.lock().unwrap().is_empty());
        assert!(h.delivery.is_empty());
    }

    #[tokio::test]
    async fn dispatched_tasks_free_their_slot_survive_shutdown_and_are_cancelled_through_the_runtime(
    ) {
        let mut h = harness(Behaviour::Dispatch, Some(1), Extensions::default());
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        let deadline = tokio::time::Instant::now() + WITHIN;
        while h.journal.get(&task("t1", "e1")).map(|e| e.state) != Some(ExecutionState::Dispatched)
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.manager.active(), 0, "the slot is free");
        h.send(assignment("t2", "e2"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        assert!(h.manager.shutdown(WITHIN).await);
        assert!(
            h.delivery.is_empty(),
            "nothing is ever reported for a dispatched task"
        );
        // Ten at once (issue 22 item 2): the runtime cancels it once.
        for _ in 0..10 {
            h.send(ServerMessage::TaskCancellation(TaskCancellation {
                task_id: "t1".into(),
            }));
        }
        let deadline = tokio::time::Instant::now() + WITHIN;
        while h.journal.get(&task("t1", "e1")).is_some() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*h.fake.cancelled.lock().unwrap(), [task("t1", "e1")]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_shutdown_deadline_tasks_are_forced_and_a_hung_one_is_reported_by_the_core() {
        let mut h = harness(Behaviour::Stubborn, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        assert!(
            !h.manager.shutdown(Duration::from_secs(3)).await,
            "not in time"
        );
        match h.report(&task("t1", "e1")).await {
            WorkerMessage::TaskFailed(f) => {
                assert_eq!(f.failure_reason, FailureReason::GracefulShutdown)
            }
            other => panic!("{other:?}"),
        }

        let mut h = harness(Behaviour::Hung, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        assert!(!h.manager.shutdown(Duration::from_secs(3)).await);
        match h.report(&task("t1", "e1")).await {
            WorkerMessage::TaskFailed(f) => {
                assert_eq!(f.failure_reason, FailureReason::GracefulShutdown);
                assert!(f.message.contains("could not confirm"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn reannounce_repeats_claims_for_held_tasks_only_when_offered() {
        let mut h = harness(Behaviour::Obedient, None, Extensions::default());
        h.send(assignment("t1", "e1"));
        h.frame().await;
        h.started().await;
        let (plain, mut plain_wire) = Link::for_test(Extensions::default(), 2);
        h.manager.handle(Event::Connected(plain.clone()));
        tokio::task::yield_now().await;
        assert!(
            plain_wire.try_recv().is_err(),
            "nothing unknown for a reference server"
        );
        let (ext, mut ext_wire) = Link::for_test(Extensions::ALL, 3);
        h.manager.handle(Event::Connected(ext.clone()));
        let (msg, _) = tokio::time::timeout(WITHIN, ext_wire.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            msg,
            WorkerMessage::TaskClaimed(TaskClaimed {
                task_id: "t1".into(),
                worker_id: "w".into(),
                execution_id: Some("e1".into())
            })
        );
    }
}
