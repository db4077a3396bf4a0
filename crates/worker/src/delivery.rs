//! Terminal reports until the orchestrator has provably received them.
//!
//! A successful socket write is not delivery: a report written into a
//! connection that then dies may never have been read. So every report stays
//! here (and in the journal) until it is confirmed, and each new connection
//! sends every unconfirmed report again, oldest first. Confirmation is the
//! server's `report_ack` when the connection offered the `report-ack`
//! extension; otherwise a pong answering a ping that was sent after the
//! report was written (the peer has read everything before that ping).
//! docs/PROTOCOL.md, "Delivery".

use crate::journal::Journal;
use oz_protocol::WorkerMessage;
use oz_runtime::TaskRef;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Identifies one connection for the life of the process.
pub type ConnectionId = u64;

struct Pending {
    task: TaskRef,
    report: WorkerMessage,
    /// Written on this connection, before the ping with this sequence number.
    written: Option<(ConnectionId, u64)>,
}

pub struct Delivery {
    queue: Mutex<Vec<Pending>>,
    journal: Arc<Journal>,
    /// Wakes the one writer; `notify_one` keeps a permit if it is busy.
    pushed: Notify,
    /// Wakes everyone waiting for the queue to empty.
    confirmed: Notify,
}

impl Delivery {
    pub fn new(journal: Arc<Journal>) -> Delivery {
        Delivery {
            queue: Mutex::new(Vec::new()),
            journal,
            pushed: Notify::new(),
            confirmed: Notify::new(),
        }
    }

    /// Records the report in the journal (synced), then queues it. A report
    /// already pending for the same execution is replaced in place: only one
    /// terminal report per execution is ever sent.
    pub fn push(&self, task: TaskRef, report: WorkerMessage) {
        debug_assert!(report.is_terminal());
        if let Err(e) = self.journal.finished(&task, &report) {
            // Still deliver it now; only a crash before delivery could lose it.
            tracing::error!(
                task_id = task.task_id,
                "cannot record the report in the journal: {e}"
            );
        }
        self.enqueue(task, report);
    }

    /// Queues a report that the journal already holds (inherited at start-up).
    pub fn resume(&self, task: TaskRef, report: WorkerMessage) {
        self.enqueue(task, report);
    }

    fn enqueue(&self, task: TaskRef, report: WorkerMessage) {
        let mut q = self.queue.lock().unwrap();
        match q.iter_mut().find(|p| p.task == task) {
            Some(p) => {
                p.report = report;
                p.written = None;
            }
            None => q.push(Pending {
                task,
                report,
                written: None,
            }),
        }
        drop(q);
        self.pushed.notify_one();
    }

    /// The oldest report not yet written on connection `conn`.
    pub fn next_unwritten(&self, conn: ConnectionId) -> Option<(TaskRef, WorkerMessage)> {
        self.queue
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.written.is_none_or(|(c, _)| c != conn))
            .map(|p| (p.task.clone(), p.report.clone()))
    }

    /// The report was written on `conn` before the ping numbered `ping_seq`.
    pub fn written(&self, task: &TaskRef, conn: ConnectionId, ping_seq: u64) {
        if let Some(p) = self
            .queue
            .lock()
            .unwrap()
            .iter_mut()
            .find(|p| p.task == *task)
        {
            p.written = Some((conn, ping_seq));
        }
    }

    /// A pong for the ping numbered `ping_seq` arrived on `conn`: everything
    /// written there before that ping was read. Returns how many were confirmed.
    pub fn pong(&self, conn: ConnectionId, ping_seq: u64) -> usize {
        self.confirm(|p| p.written.is_some_and(|(c, s)| c == conn && s <= ping_seq))
    }

    /// The server acknowledged the report for `task_id` (and `execution_id`,
    /// when the ack names one).
    pub fn acked(&self, task_id: &str, execution_id: Option<&str>) -> usize {
        self.confirm(|p| {
            p.task.task_id == task_id
                && (execution_id.is_none() || p.task.execution_id.as_deref() == execution_id)
        })
    }

    fn confirm(&self, matches: impl Fn(&Pending) -> bool) -> usize {
        let mut q = self.queue.lock().unwrap();
        let mut done = Vec::new();
        q.retain(|p| {
            if matches(p) {
                done.push(p.task.clone());
                false
            } else {
                true
            }
        });
        drop(q);
        for task in &done {
            self.journal.delivered(task);
            tracing::debug!(
                task_id = task.task_id,
                execution_id = task.execution_id.as_deref().unwrap_or(""),
                "report delivery confirmed"
            );
        }
        if !done.is_empty() {
            self.confirmed.notify_waiters();
        }
        done.len()
    }

    pub fn contains(&self, task: &TaskRef) -> bool {
        self.queue.lock().unwrap().iter().any(|p| p.task == *task)
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a report was queued (the writer checks
    /// [`Self::next_unwritten`] before waiting).
    pub async fn pushed(&self) {
        self.pushed.notified().await
    }

    /// Resolves once every report has been confirmed.
    pub async fn drained(&self) {
        loop {
            let notified = self.confirmed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_protocol::TaskCompleted;

    fn t(id: &str) -> TaskRef {
        TaskRef {
            task_id: id.into(),
            execution_id: Some(format!("e-{id}")),
        }
    }

    fn done(id: &str) -> WorkerMessage {
        WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: id.into(),
            message: "ok".into(),
            task_state: None,
            execution_id: Some(format!("e-{id}")),
        })
    }

    fn delivery() -> (tempfile::TempDir, Arc<Journal>, Delivery) {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "w").unwrap();
        let j = Arc::new(j);
        (dir, j.clone(), Delivery::new(j))
    }

    #[test]
    fn a_written_report_stays_until_a_later_pong_and_is_resent_on_a_new_connection() {
        let (_d, journal, o) = delivery();
        o.push(t("a"), done("a"));
        o.push(t("b"), done("b"));
        let (task, _) = o.next_unwritten(1).unwrap();
        assert_eq!(task, t("a"));
        o.written(&t("a"), 1, 5);
        assert_eq!(o.next_unwritten(1).unwrap().0, t("b"));
        o.written(&t("b"), 1, 6);
        assert!(o.next_unwritten(1).is_none());
        assert_eq!(o.pong(1, 4), 0, "a pong for an earlier ping proves nothing");
        assert_eq!(o.pong(2, 9), 0, "nor one on another connection");
        // The connection died: connection 2 sends both again, in order.
        assert_eq!(o.next_unwritten(2).unwrap().0, t("a"));
        o.written(&t("a"), 2, 1);
        assert_eq!(o.pong(2, 1), 1);
        assert!(matches!(
            journal.get(&t("a")).unwrap().state,
            crate::journal::ExecutionState::Finished {
                delivered: true,
                ..
            }
        ));
        assert_eq!(o.len(), 1);
        assert_eq!(o.acked("b", Some("other-exec")), 0);
        assert_eq!(o.acked("b", Some("e-b")), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn one_report_per_execution() {
        let (_d, _j, o) = delivery();
        o.push(t("a"), done("a"));
        o.push(t("a"), done("a"));
        assert_eq!(o.len(), 1);
    }

    #[tokio::test]
    async fn drained_wakes_when_the_last_report_is_confirmed() {
        let (_d, _j, o) = delivery();
        let o = Arc::new(o);
        o.push(t("a"), done("a"));
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.drained().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        o.acked("a", None);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
