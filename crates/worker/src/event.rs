//! The core's one way in: every connection's frames and every run's end
//! arrive as an [`Event`] at one loop
//! ([`crate::tasks::TaskManager::serve_events`]), which handles them one at
//! a time, in the order they were sent. What goes out leaves through the
//! one outbox ([`crate::outbox::Outbox`]).

use crate::connection::Link;
use oz_protocol::ServerMessage;
use tokio::sync::mpsc;

/// Everything the core reacts to, a closed set. Delivery confirmations
/// (`report_ack`, pongs) stay in the connection, which owns delivery, and
/// the stop and drain signals reach `run_with` as futures. (No `Debug`: an
/// assignment carries secrets.)
pub enum Event {
    /// A new connection is up; sent before anything is read from it.
    Connected(Link),
    /// An assignment or a cancellation read on the link's connection.
    Frame(ServerMessage, Link),
    /// An assignment whose body did not decode but whose task id is known:
    /// it is claimed and failed visibly.
    UndecodableAssignment {
        task_id: String,
        error: String,
        link: Link,
    },
    /// A run (or a followed-again run) returned: its report step.
    Finished(crate::tasks::RunEnded),
}

/// The sending end of the core's event loop.
pub type Events = mpsc::UnboundedSender<Event>;
