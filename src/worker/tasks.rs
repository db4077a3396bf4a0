//! Task lifecycle: claim before any work, reject at capacity, run through the
//! runtime, and turn every outcome into exactly one terminal message in the
//! outbox. Cancellation and shutdown both stop tasks through the same token;
//! the recorded cause decides how the stop is reported.

use crate::protocol::*;
use crate::runtime::{TaskOutcome, TaskRuntime};
use crate::worker::config::WorkerConfig;
use crate::worker::connection::{Inbound, Link};
use crate::worker::metrics::{Metrics, TaskResult};
use crate::worker::outbox::TerminalOutbox;
use crate::worker::task_spec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Cancelled,
    Shutdown,
}

struct Running {
    stop: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
}

pub struct TaskManager<R> {
    runtime: Arc<R>,
    config: Arc<WorkerConfig>,
    outbox: Arc<TerminalOutbox>,
    running: Mutex<HashMap<String, Running>>,
    metrics: Arc<Metrics>,
    accepting: AtomicBool,
    finished: Notify,
}

impl<R: TaskRuntime> TaskManager<R> {
    pub fn new(
        runtime: Arc<R>,
        config: Arc<WorkerConfig>,
        outbox: Arc<TerminalOutbox>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(TaskManager {
            runtime,
            config,
            outbox,
            running: Mutex::new(HashMap::new()),
            metrics,
            accepting: AtomicBool::new(true),
            finished: Notify::new(),
        })
    }

    /// Queues the final report of tasks a dead earlier instance of this
    /// worker had claimed (found by the runtime at start-up).
    pub fn report_recovered(&self, recovered: Vec<crate::runtime::RecoveredTask>) {
        for task in recovered {
            tracing::info!(
                task_id = task.task_id,
                "reporting a task left by a crashed earlier run of this worker"
            );
            self.outbox.push(report(&task.task_id, task.outcome, None));
        }
    }

    pub fn active(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    fn assign(self: &Arc<Self>, a: TaskAssignment, link: &Link) {
        let task_id = a.task_id.clone();
        let slot = {
            let mut running = self.running.lock().unwrap();
            if running.contains_key(&task_id) || self.outbox.contains(&task_id) {
                tracing::info!(
                    task_id,
                    "ignoring a repeated assignment for a task this worker already holds"
                );
                return;
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
                tracing::info!(task_id, "rejecting task: {reason}");
                self.metrics.rejected(kind);
                let link = link.clone();
                tokio::spawn(async move {
                    link.send(WorkerMessage::TaskRejected(TaskRejected {
                        task_id,
                        reason,
                    }))
                    .await;
                });
                return;
            }
            let slot = Running {
                stop: CancellationToken::new(),
                cause: Arc::new(Mutex::new(None)),
            };
            let handle = (slot.stop.clone(), slot.cause.clone());
            running.insert(task_id.clone(), slot);
            self.metrics.set_active(running.len());
            handle
        };
        let this = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let (stop, cause) = slot;
            let claim = WorkerMessage::TaskClaimed(TaskClaimed {
                task_id: task_id.clone(),
                worker_id: this.config.worker_id.clone(),
                execution_id: None,
            });
            if !link.send(claim).await {
                // Without a delivered claim the server re-queues the task; running
                // it anyway could run it twice.
                tracing::warn!(
                    task_id,
                    "the claim could not be sent (connection lost); leaving the task to the server"
                );
                this.finish(&task_id, None);
                return;
            }
            tracing::info!(
                task_id,
                execution_id = a.execution_id.as_deref().unwrap_or(""),
                "claimed task"
            );
            let claimed_at = std::time::Instant::now();
            let terminal = match task_spec::build(&a, &this.config) {
                Err(invalid) => failed(&task_id, invalid.reason, invalid.message, None),
                Ok(spec) => {
                    let outcome = this.runtime.run(spec, stop).await;
                    let cause = *cause.lock().unwrap();
                    report(&task_id, outcome, cause)
                }
            };
            let (result, failure) = match &terminal {
                WorkerMessage::TaskFailed(f) => (TaskResult::Failed, Some(&f.failure_reason)),
                WorkerMessage::TaskCompleted(c) if c.task_state.is_some() => {
                    (TaskResult::Cancelled, None)
                }
                _ => (TaskResult::Succeeded, None),
            };
            this.metrics.finished(result, claimed_at.elapsed(), failure);
            this.finish(&task_id, Some(terminal));
        });
    }

    fn finish(&self, task_id: &str, terminal: Option<WorkerMessage>) {
        if let Some(msg) = terminal {
            match &msg {
                WorkerMessage::TaskFailed(f) => {
                    tracing::warn!(task_id, reason = %f.failure_reason, exit_code = ?f.exit_code, "task failed: {}", f.message)
                }
                _ => tracing::info!(task_id, "task finished"),
            }
            self.outbox.push(msg);
        }
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

    /// Stops taking tasks, stops the running ones (reported as
    /// `graceful_shutdown`) and waits, at most `timeout`, for them to finish.
    /// Returns how many were still running when the time ran out.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.accepting.store(false, Ordering::SeqCst);
        let ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        for id in &ids {
            self.stop(id, StopCause::Shutdown);
        }
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
        let _ = tokio::time::timeout(timeout, wait).await;
        self.active()
    }
}

/// Lets the connection hand frames to the manager without knowing its runtime type.
pub struct Dispatch<R>(pub Arc<TaskManager<R>>);

impl<R: TaskRuntime> Inbound for Dispatch<R> {
    fn message(&self, msg: ServerMessage, link: &Link) {
        match msg {
            ServerMessage::TaskAssignment(a) => self.0.assign(*a, link),
            ServerMessage::ReportAck(_) => {}
            ServerMessage::TaskCancellation(c) => {
                if self.0.stop(&c.task_id, StopCause::Cancelled) {
                    tracing::info!(
                        task_id = c.task_id,
                        "cancelling task on the server's request"
                    );
                } else {
                    tracing::info!(
                        task_id = c.task_id,
                        "cancellation for a task this worker is not running; ignored"
                    );
                }
            }
        }
    }

    fn undecodable_assignment(&self, task_id: String, error: String, link: &Link) {
        // Claim it so it ends visibly as failed instead of bouncing between workers.
        let manager = self.0.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let claim = WorkerMessage::TaskClaimed(TaskClaimed {
                task_id: task_id.clone(),
                worker_id: manager.config.worker_id.clone(),
                execution_id: None,
            });
            if link.send(claim).await {
                manager.metrics.finished(
                    TaskResult::Failed,
                    Duration::ZERO,
                    Some(&FailureReason::Unknown),
                );
                manager.outbox.push(failed(
                    &task_id,
                    FailureReason::Unknown,
                    format!("the task assignment could not be read: {error}"),
                    None,
                ));
            }
        });
    }
}

fn failed(
    task_id: &str,
    reason: FailureReason,
    message: String,
    exit_code: Option<i64>,
) -> WorkerMessage {
    WorkerMessage::TaskFailed(TaskFailed {
        task_id: task_id.into(),
        message,
        failure_reason: reason,
        exit_code,
        execution_id: None,
    })
}

fn report(task_id: &str, outcome: TaskOutcome, cause: Option<StopCause>) -> WorkerMessage {
    match (outcome, cause) {
        (TaskOutcome::Succeeded, _) => WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: "the agent exited successfully".into(),
            task_state: None,
            execution_id: None,
        }),
        (
            TaskOutcome::Failed {
                reason,
                message,
                exit_code,
            },
            _,
        ) => failed(task_id, reason, message, exit_code),
        (TaskOutcome::Stopped, Some(StopCause::Shutdown)) => failed(
            task_id,
            FailureReason::GracefulShutdown,
            "the worker was shut down while the task ran; its container was stopped".into(),
            None,
        ),
        (TaskOutcome::Stopped, _) => WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: "cancelled on the server's request; the container was stopped".into(),
            task_state: Some(TASK_STATE_CANCELLED.into()),
            execution_id: None,
        }),
    }
}
