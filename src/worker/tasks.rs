//! Task lifecycle: record and claim before any work, reject at capacity,
//! answer re-sent assignments from the journal, run through the runtime, and
//! turn every outcome into exactly one terminal report per execution.
//! Cancellation and shutdown both stop tasks through the same token; the
//! recorded cause decides how the stop is reported.

use crate::protocol::*;
use crate::runtime::{Failure, OutputSink, RunOutcome, Runtime, TaskContext, TaskRef};
use crate::text::Escaped;
use crate::worker::config::WorkerConfig;
use crate::worker::connection::{Inbound, Link};
use crate::worker::delivery::Delivery;
use crate::worker::invocation;
use crate::worker::journal::{Journal, State};
use crate::worker::metrics::{Metrics, TaskResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// After the shutdown deadline, how long force-stopped tasks get to finish
/// their cleanup before the core reports them itself.
pub const FORCE_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a finished task's last live output may hold its report back
/// while the link is slow; what is still unsent then is dropped and counted.
const OUTPUT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Cancelled,
    Shutdown,
}

struct Running {
    task: TaskRef,
    stop: CancellationToken,
    force: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
    /// Set when the core reported the task itself (the runtime did not
    /// return in time at shutdown): a later outcome is not reported again.
    reported: Arc<AtomicBool>,
}

pub struct TaskManager {
    runtime: Arc<dyn Runtime>,
    config: Arc<WorkerConfig>,
    journal: Arc<Journal>,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    /// By task id: one execution of a task at a time.
    running: Mutex<HashMap<String, Running>>,
    accepting: AtomicBool,
    finished: Notify,
    /// The connection live output goes to (the newest one).
    current_link: Mutex<Option<Link>>,
}

impl TaskManager {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        config: Arc<WorkerConfig>,
        journal: Arc<Journal>,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(TaskManager {
            runtime,
            config,
            journal,
            delivery,
            metrics,
            running: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            finished: Notify::new(),
            current_link: Mutex::new(None),
        })
    }

    /// Tasks running now.
    pub fn active(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    /// Queues the report of an execution that ended while no instance of
    /// this worker was watching it (found at start-up).
    pub fn report_recovered(&self, task: TaskRef, outcome: RunOutcome) {
        if outcome == RunOutcome::Dispatched {
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
        self.delivery.push(task, msg);
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

    fn assign(self: &Arc<Self>, a: TaskAssignment, link: &Link) {
        let task = TaskRef {
            task_id: a.task_id.clone(),
            execution_id: a.execution_id.clone(),
        };
        let slot = {
            let mut running = self.running.lock().unwrap();
            if let Some(r) = running.get(&task.task_id) {
                if r.task == task && link.extensions().task_reannounce {
                    // The server may have lost our claim (it restarted): repeat it.
                    self.send_in_background(link, self.claim_message(&task, link));
                }
                tracing::info!(
                    task_id = task.task_id,
                    execution_id = task.execution_id.as_deref().unwrap_or(""),
                    "ignoring a repeated assignment for a task this worker is running"
                );
                return;
            }
            match self.journal.get(&task).map(|e| e.state) {
                Some(State::Finished { report, .. }) => {
                    tracing::info!(
                        task_id = task.task_id,
                        execution_id = task.execution_id.as_deref().unwrap_or(""),
                        "this execution already ran here: answering with its stored {} instead of running it again",
                        report.kind()
                    );
                    self.delivery.resume(task, report);
                    return;
                }
                Some(State::Dispatched) => {
                    if link.extensions().task_reannounce {
                        self.send_in_background(link, self.claim_message(&task, link));
                    }
                    tracing::info!(
                        task_id = task.task_id,
                        execution_id = task.execution_id.as_deref().unwrap_or(""),
                        "ignoring an assignment for an execution already dispatched"
                    );
                    return;
                }
                Some(State::Claimed) => {
                    tracing::info!(
                        task_id = task.task_id,
                        execution_id = task.execution_id.as_deref().unwrap_or(""),
                        "ignoring an assignment for an execution still being recovered"
                    );
                    return;
                }
                None => {}
            }
            let refusal = if !self.accepting.load(Ordering::SeqCst) {
                Some(("shutting_down", "worker is shutting down".to_string()))
            } else {
                match self.config.max_concurrent_tasks {
                    Some(max) if running.len() >= max as usize => Some((
                        "at_capacity",
                        format!("at capacity: {} of {max} tasks running", running.len()),
                    )),
                    _ => None,
                }
            };
            if let Some((kind, reason)) = refusal {
                tracing::info!(
                    task_id = task.task_id,
                    execution_id = task.execution_id.as_deref().unwrap_or(""),
                    "rejecting task: {}",
                    Escaped(&reason)
                );
                self.metrics.rejected(kind);
                self.send_in_background(
                    link,
                    WorkerMessage::TaskRejected(TaskRejected {
                        task_id: task.task_id.clone(),
                        reason,
                    }),
                );
                return;
            }
            let r = Running {
                task: task.clone(),
                stop: CancellationToken::new(),
                force: CancellationToken::new(),
                cause: Arc::new(Mutex::new(None)),
                reported: Arc::new(AtomicBool::new(false)),
            };
            let handle = (
                r.stop.clone(),
                r.force.clone(),
                r.cause.clone(),
                r.reported.clone(),
            );
            running.insert(task.task_id.clone(), r);
            self.metrics.set_active(running.len());
            handle
        };
        let this = self.clone();
        let link = link.clone();
        // Every line logged about this task, here and in the runtime, carries
        // its task and execution ids.
        let span = tracing::info_span!(
            "task",
            task_id = %Escaped(&task.task_id),
            execution_id = %Escaped(task.execution_id.as_deref().unwrap_or(""))
        );
        let run = async move {
            let (stop, force, cause, reported) = slot;
            // The journal first: a claim we cannot record is a claim we could
            // not honour after a crash.
            if let Err(e) = this.journal.claimed(&task) {
                tracing::error!(
                    task_id = task.task_id,
                    "cannot record the claim in the journal under {}: {e}; rejecting the task",
                    this.config.state_dir.display()
                );
                this.metrics.rejected("journal");
                link.send(WorkerMessage::TaskRejected(TaskRejected {
                    task_id: task.task_id.clone(),
                    reason: "the worker cannot write its state directory".into(),
                }))
                .await;
                this.finish(&task.task_id);
                return;
            }
            if !link.send(this.claim_message(&task, &link)).await {
                // Without a written claim the server re-queues the task;
                // running it anyway could run it twice.
                tracing::warn!(
                    task_id = task.task_id,
                    "the claim could not be sent (connection lost); leaving the task to the server"
                );
                this.journal.forget(&task);
                this.finish(&task.task_id);
                return;
            }
            this.metrics.claimed();
            tracing::info!(
                task_id = task.task_id,
                execution_id = task.execution_id.as_deref().unwrap_or(""),
                "claimed task"
            );
            let claimed_at = std::time::Instant::now();
            // Live output only for a server that asked for it.
            let (output, forwarder) = if link.extensions().task_output {
                let (sink, reader) = OutputSink::channel();
                let forwarder = tokio::spawn(tracing::Instrument::in_current_span(
                    this.clone().forward_output(task.clone(), reader),
                ));
                (sink, Some(forwarder))
            } else {
                (OutputSink::none(), None)
            };
            let outcome = match invocation::build(&a, &this.config) {
                Err(failure) => RunOutcome::Failed(failure),
                Ok(inv) => {
                    let ctx = TaskContext {
                        stop,
                        force,
                        output: output.clone(),
                    };
                    this.runtime.run(inv, ctx).await
                }
            };
            output.close();
            // The task's last output goes out before its report, so a reader
            // that stops at the report has it all; bounded, because a stalled
            // link must not hold the report back (what is left is dropped
            // and counted).
            if let Some(forwarder) = forwarder {
                let _ = tokio::time::timeout(OUTPUT_FLUSH_LIMIT, forwarder).await;
            }
            if reported.load(Ordering::SeqCst) {
                tracing::info!(
                    task_id = task.task_id,
                    "the runtime returned after the task was reported at shutdown"
                );
                this.finish(&task.task_id);
                return;
            }
            if outcome == RunOutcome::Dispatched {
                if let Err(e) = this.journal.dispatched(&task) {
                    tracing::error!(task_id = task.task_id, "cannot record the dispatch: {e}");
                }
                tracing::info!(task_id = task.task_id, "task dispatched; its slot is free");
                this.metrics
                    .finished(TaskResult::Dispatched, claimed_at.elapsed(), None);
                this.finish(&task.task_id);
                return;
            }
            let cause = *cause.lock().unwrap();
            let msg = report(&task, outcome, cause);
            this.metrics
                .finished(result_of(&msg), claimed_at.elapsed(), failure_of(&msg));
            log_report(&msg);
            this.delivery.push(task.clone(), msg);
            this.finish(&task.task_id);
        };
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }

    /// Sends a task's output to whichever connection is current, as
    /// `task_output` frames; what cannot be sent is counted and said in the
    /// next frame that goes out.
    async fn forward_output(
        self: Arc<Self>,
        task: TaskRef,
        reader: crate::runtime::output::OutputReader,
    ) {
        let mut unsent = 0u64;
        let mut utf8 = crate::runtime::output::Utf8Carry::default();
        while let Some(chunk) = reader.next().await {
            let dropped = unsent + chunk.dropped_before;
            let data = utf8.decode(chunk.stream, &chunk.data);
            let link = self
                .current_link
                .lock()
                .unwrap()
                .clone()
                .filter(|l| l.is_open() && l.extensions().task_output);
            let sent = match link {
                Some(l) => {
                    l.send_output(WorkerMessage::TaskOutput(TaskOutput {
                        task_id: task.task_id.clone(),
                        execution_id: task.execution_id.clone(),
                        stream: chunk.stream,
                        data,
                        dropped_bytes: dropped,
                    }))
                    .await
                }
                None => false,
            };
            unsent = if sent {
                0
            } else {
                dropped + chunk.data.len() as u64
            };
        }
        if unsent > 0 {
            tracing::debug!("{unsent} bytes of live output could not be sent");
        }
    }

    fn send_in_background(&self, link: &Link, msg: WorkerMessage) {
        let link = link.clone();
        tokio::spawn(async move {
            link.send(msg).await;
        });
    }

    fn finish(&self, task_id: &str) {
        let mut running = self.running.lock().unwrap();
        running.remove(task_id);
        self.metrics.set_active(running.len());
        drop(running);
        self.finished.notify_waiters();
    }

    fn stop(&self, task_id: &str, why: StopCause) -> bool {
        let running = self.running.lock().unwrap();
        match running.get(task_id) {
            Some(r) => {
                r.cause.lock().unwrap().get_or_insert(why);
                r.stop.cancel();
                true
            }
            None => false,
        }
    }

    fn cancel(self: &Arc<Self>, task_id: &str) {
        if self.stop(task_id, StopCause::Cancelled) {
            tracing::info!(task_id, "cancelling task on the server's request");
            return;
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
            tracing::info!(task_id, "cancelling a dispatched task through the runtime");
            let this = self.clone();
            tokio::spawn(async move {
                this.runtime.cancel_dispatched(task.clone()).await;
                this.journal.forget(&task);
            });
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
            self.delivery.push(task, msg);
        }
        false
    }
}

/// Lets the connection hand frames to the manager.
pub struct Dispatch(pub Arc<TaskManager>);

impl Inbound for Dispatch {
    fn connected(&self, link: &Link) {
        *self.0.current_link.lock().unwrap() = Some(link.clone());
        if !link.extensions().task_reannounce {
            return;
        }
        let held = self.0.journal.held();
        if held.is_empty() {
            return;
        }
        tracing::info!("re-announcing {} task(s) this worker holds", held.len());
        let messages: Vec<WorkerMessage> = held
            .iter()
            .map(|(task, _)| self.0.claim_message(task, link))
            .collect();
        let link = link.clone();
        tokio::spawn(async move {
            for m in messages {
                if !link.send(m).await {
                    return;
                }
            }
        });
    }

    fn message(&self, msg: ServerMessage, link: &Link) {
        match msg {
            ServerMessage::TaskAssignment(a) => self.0.assign(*a, link),
            ServerMessage::TaskCancellation(c) => self.0.cancel(&c.task_id),
            // Handled by the connection, which owns delivery.
            ServerMessage::ReportAck(_) => {}
        }
    }

    fn undecodable_assignment(&self, task_id: String, error: String, link: &Link) {
        // Claim it so it ends visibly as failed instead of bouncing between workers.
        let manager = self.0.clone();
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
            if link.send(manager.claim_message(&task, &link)).await {
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
                manager.delivery.push(task, msg);
            } else {
                manager.journal.forget(&task);
            }
        });
    }
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

/// The one terminal report for an execution's outcome.
fn report(task: &TaskRef, outcome: RunOutcome, cause: Option<StopCause>) -> WorkerMessage {
    let failed = |f: Failure| {
        WorkerMessage::TaskFailed(TaskFailed {
            task_id: task.task_id.clone(),
            message: f.message,
            failure_reason: f.reason,
            exit_code: f.exit_code,
            execution_id: task.execution_id.clone(),
        })
    };
    match (outcome, cause) {
        (RunOutcome::Completed, _) | (RunOutcome::Dispatched, _) => {
            WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task.task_id.clone(),
                message: "the agent exited successfully".into(),
                task_state: None,
                execution_id: task.execution_id.clone(),
            })
        }
        (RunOutcome::Failed(f), _) => failed(f),
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
    use crate::runtime::{Invocation, RunOutcome, TaskContext};
    use crate::secret::Secret;
    use crate::worker::config::CoreInputs;
    use crate::worker::connection::TestWire;
    use futures_util::future::BoxFuture;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::{mpsc, oneshot};

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
                    Behaviour::Dispatch => RunOutcome::Dispatched,
                    Behaviour::Chatty => {
                        ctx.output
                            .write(crate::runtime::OutputStream::Stdout, b"last words\n");
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
        let dir = tempfile::tempdir().unwrap();
        let config = WorkerConfig::resolve(
            &CoreInputs {
                flag_worker_id: Some("w".into()),
                flag_api_key: Some(Secret::new("k")),
                flag_max_concurrent_tasks: max,
                flag_state_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
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
            delivery.clone(),
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
            Dispatch(self.manager.clone()).message(msg, &self.link);
        }

        /// The next frame on the wire, acknowledged as written.
        async fn frame(&mut self) -> WorkerMessage {
            let (msg, written) = tokio::time::timeout(Duration::from_secs(5), self.wire.recv())
                .await
                .expect("a frame within 5 s")
                .expect("link open");
            let _ = written.send(true);
            msg
        }

        async fn started(&mut self) -> String {
            tokio::time::timeout(Duration::from_secs(5), self.started.recv())
                .await
                .expect("a run starts within 5 s")
                .unwrap()
        }

        fn release(&self, task_id: &str, outcome: RunOutcome) {
            let tx = self.fake.release.lock().unwrap().remove(task_id).unwrap();
            let _ = tx.send(outcome);
        }

        async fn report(&self, t: &TaskRef) -> WorkerMessage {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(State::Finished { report, .. }) = self.journal.get(t).map(|e| e.state) {
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
            State::Claimed
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
        Dispatch(h.manager.clone()).connected(&h.link);
        (h, output)
    }

    /// A reader that stops at the report (`runs logs --follow`) must have
    /// had all of the task's output by then.
    #[tokio::test]
    async fn a_tasks_last_output_is_queued_before_its_report() {
        let (mut h, mut output) = chatty_harness();
        h.send(assignment("t1", "e1"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        tokio::time::timeout(Duration::from_secs(5), h.delivery.pushed())
            .await
            .expect("a report within 5 s");
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
        for _ in 0..crate::worker::connection::OUTPUT_QUEUE {
            let filler = WorkerMessage::TaskOutput(TaskOutput {
                task_id: "other".into(),
                execution_id: None,
                stream: crate::runtime::OutputStream::Stdout,
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
        for _ in 0..crate::worker::connection::OUTPUT_QUEUE {
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while h.journal.get(&task("t1", "e1")).is_some() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.fake.runs.load(Ordering::SeqCst), 0);
        assert_eq!(h.manager.active(), 0);
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
            State::Finished {
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
        assert!(
            h.manager.shutdown(Duration::from_secs(5)).await,
            "ended in time"
        );
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while h.journal.get(&task("t1", "e1")).map(|e| e.state) != Some(State::Dispatched) {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.manager.active(), 0, "the slot is free");
        h.send(assignment("t2", "e2"));
        assert_eq!(h.frame().await.kind(), "task_claimed");
        assert!(h.manager.shutdown(Duration::from_secs(5)).await);
        assert!(
            h.delivery.is_empty(),
            "nothing is ever reported for a dispatched task"
        );
        h.send(ServerMessage::TaskCancellation(TaskCancellation {
            task_id: "t1".into(),
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
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
        Dispatch(h.manager.clone()).connected(&plain);
        tokio::task::yield_now().await;
        assert!(
            plain_wire.try_recv().is_err(),
            "nothing unknown for a reference server"
        );
        let (ext, mut ext_wire) = Link::for_test(Extensions::ALL, 3);
        Dispatch(h.manager.clone()).connected(&ext);
        let (msg, _) = tokio::time::timeout(Duration::from_secs(5), ext_wire.recv())
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
