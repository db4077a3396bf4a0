//! Terminal messages waiting for a connection. A task's `task_completed` or
//! `task_failed` is put here once and removed only after a connection has
//! written it, so a drop in between delays it to the next connection but never
//! loses it, and this process never sends it twice.

use crate::protocol::WorkerMessage;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct TerminalOutbox {
    queue: Mutex<VecDeque<WorkerMessage>>,
    /// Wakes the one writer; `notify_one` keeps a permit if it is busy.
    pushed: Notify,
    /// Wakes everyone waiting for the queue to empty.
    delivered: Notify,
}

impl TerminalOutbox {
    pub fn push(&self, msg: WorkerMessage) {
        debug_assert!(msg.is_terminal());
        self.queue.lock().unwrap().push_back(msg);
        self.pushed.notify_one();
    }

    /// The oldest undelivered message, left in place until [`Self::delivered`].
    pub fn front(&self) -> Option<WorkerMessage> {
        self.queue.lock().unwrap().front().cloned()
    }

    /// Marks the front message written; only the writer calls this, right
    /// after a successful write of exactly that message.
    pub fn delivered(&self, task_id: &str) {
        let mut q = self.queue.lock().unwrap();
        if q.front().is_some_and(|m| m.task_id() == task_id) {
            q.pop_front();
        }
        drop(q);
        self.delivered.notify_waiters();
    }

    /// Everything undelivered, in order, leaving the outbox empty.
    pub fn take_all(&self) -> Vec<WorkerMessage> {
        self.queue.lock().unwrap().drain(..).collect()
    }

    pub fn contains(&self, task_id: &str) -> bool {
        self.queue
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.task_id() == task_id)
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a message was pushed (for the writer, which checks
    /// [`Self::front`] before waiting).
    pub async fn pushed(&self) {
        self.pushed.notified().await
    }

    /// Resolves once every message has been delivered.
    pub async fn drained(&self) {
        loop {
            let notified = self.delivered.notified();
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
    use crate::protocol::TaskCompleted;

    fn done(id: &str) -> WorkerMessage {
        WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: id.into(),
            message: "ok".into(),
            task_state: None,
            execution_id: None,
        })
    }

    #[tokio::test]
    async fn messages_stay_until_delivered_in_order() {
        let o = TerminalOutbox::default();
        o.push(done("a"));
        o.push(done("b"));
        assert_eq!(o.front().unwrap().task_id(), "a");
        o.delivered("b"); // not the front: ignored
        assert_eq!(o.len(), 2);
        o.delivered("a");
        assert_eq!(o.front().unwrap().task_id(), "b");
        assert!(o.contains("b") && !o.contains("a"));
        let drained = tokio::spawn(async move {
            let o = std::sync::Arc::new(o);
            let o2 = o.clone();
            let h = tokio::spawn(async move { o2.drained().await });
            tokio::task::yield_now().await;
            o.delivered("b");
            h.await.unwrap();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), drained)
            .await
            .unwrap()
            .unwrap();
    }
}
