//! The core's one way out: every frame the core sends the orchestrator
//! goes through the [`Outbox`], and the connection loop
//! ([`crate::connection::drive`]) drains it in one order of priority:
//! terminal reports first (kept until confirmed, on every connection), then
//! frames bound to one connection (claims, rejections, re-announces, the
//! drain notice), then live output (waits, and its buffer drops, instead).

use crate::connection::Link;
use crate::delivery::Delivery;
use oz_protocol::WorkerMessage;
use oz_runtime::TaskRef;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Outbox {
    /// Terminal reports until the orchestrator has confirmed them.
    reports: Arc<Delivery>,
    /// The newest connection: live output and the drain notice go there;
    /// output forwarders wait on it while there is none.
    current: watch::Sender<Option<Link>>,
}

impl Outbox {
    pub fn new(reports: Arc<Delivery>) -> Outbox {
        Outbox {
            reports,
            current: watch::Sender::new(None),
        }
    }

    /// The reports still waiting for confirmation.
    pub fn reports(&self) -> &Arc<Delivery> {
        &self.reports
    }

    /// An execution's terminal report: recorded in the journal (synced),
    /// then sent on this and every later connection until confirmed.
    pub fn report(&self, task: TaskRef, report: WorkerMessage) {
        self.reports.push(task, report);
    }

    /// A report the journal already holds (inherited at start-up, or an
    /// execution assigned again after it ran): sent again until confirmed.
    pub fn report_again(&self, task: TaskRef, report: WorkerMessage) {
        self.reports.resume(task, report);
    }

    /// A frame that only means something on `link`'s connection (a claim,
    /// a rejection): true once written there, false when that connection
    /// is gone (it is never sent on another).
    pub async fn send(&self, link: &Link, msg: WorkerMessage) -> bool {
        link.send(msg).await
    }

    /// [`Self::send`] without waiting for the write.
    pub fn post(&self, link: &Link, msg: WorkerMessage) {
        let link = link.clone();
        tokio::spawn(async move {
            link.send(msg).await;
        });
    }

    /// [`Self::send`] of each frame in order, without waiting; stops at the
    /// first that cannot be written.
    pub fn post_all(&self, link: &Link, msgs: Vec<WorkerMessage>) {
        if msgs.is_empty() {
            return;
        }
        let link = link.clone();
        tokio::spawn(async move {
            for m in msgs {
                if !link.send(m).await {
                    return;
                }
            }
        });
    }

    /// A new connection is up: live output goes there from now on.
    pub fn connected(&self, link: &Link) {
        self.current.send_replace(Some(link.clone()));
    }

    /// The newest connection, if it is still open.
    pub fn current(&self) -> Option<Link> {
        self.current.borrow().clone().filter(Link::is_open)
    }

    /// Follows the newest connection (live output forwarders).
    pub fn watch(&self) -> watch::Receiver<Option<Link>> {
        self.current.subscribe()
    }
}
