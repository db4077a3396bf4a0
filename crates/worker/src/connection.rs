//! One live WebSocket connection to the orchestrator. A single loop owns the
//! socket, so exactly one place writes to it: frames from the task manager,
//! terminal reports from [`Delivery`], pings and the final close. It also
//! turns what proves delivery (a `report_ack`, or a pong after a report)
//! into confirmations.

use crate::delivery::{ConnectionId, Delivery};
use futures_util::{SinkExt, StreamExt};
use oz_protocol::{
    decode_server_frame, encode, DecodeError, Extensions, ServerMessage, WorkerMessage,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use tokio_util::sync::CancellationToken;

pub use crate::dial::Socket;

/// The protocol's liveness rules; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for Timing {
    /// docs/PROTOCOL.md: ping every 30 s, 60 s read deadline, 10 s writes.
    fn default() -> Self {
        Timing {
            ping_interval: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle for sending connection-bound frames (claims, rejections, live
/// output). They only mean something on the connection they were made for,
/// so they are never retried on another one.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<(WorkerMessage, oneshot::Sender<bool>)>,
    /// Live output: a separate, lower-priority queue, so a chatty task never
    /// delays a claim.
    output: mpsc::Sender<WorkerMessage>,
    extensions: Extensions,
    id: ConnectionId,
}

/// Live-output frames queued per connection before senders wait (and the
/// task's bounded output buffer starts dropping).
pub(crate) const OUTPUT_QUEUE: usize = 16;

impl Link {
    /// True once the frame has been written to the socket.
    pub async fn send(&self, msg: WorkerMessage) -> bool {
        let (ack, written) = oneshot::channel();
        if self.tx.send((msg, ack)).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }

    /// Queues a `task_output` frame; waits while the connection is behind.
    /// False when the connection is gone.
    pub async fn send_output(&self, msg: WorkerMessage) -> bool {
        self.output.send(msg).await.is_ok()
    }

    /// What the server offered on this connection.
    pub fn extensions(&self) -> Extensions {
        self.extensions
    }

    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Whether the connection is still being driven.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// What a test sees of a [`Link`]: every frame, with the channel that says
/// whether it was written.
#[cfg(test)]
pub type TestWire = mpsc::Receiver<(WorkerMessage, oneshot::Sender<bool>)>;

#[cfg(test)]
impl Link {
    pub fn for_test(extensions: Extensions, id: ConnectionId) -> (Link, TestWire) {
        let (link, wire, mut drain) = Link::for_test_with_output(extensions, id);
        tokio::spawn(async move { while drain.recv().await.is_some() {} });
        (link, wire)
    }

    /// As [`Link::for_test`], with the live-output queue to read.
    pub fn for_test_with_output(
        extensions: Extensions,
        id: ConnectionId,
    ) -> (Link, TestWire, mpsc::Receiver<WorkerMessage>) {
        let (tx, rx) = mpsc::channel(64);
        let (output, drain) = mpsc::channel(OUTPUT_QUEUE);
        (
            Link {
                tx,
                output,
                extensions,
                id,
            },
            rx,
            drain,
        )
    }
}

pub use crate::event::{Event, Events};

#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// We closed it normally on request.
    Closed,
    /// The server closed it (the reason is for the log).
    ClosedByServer(String),
    /// It broke; the reason is for the log.
    Dropped(String),
}

struct ConnectionState<'a> {
    conn: ConnectionId,
    extensions: Extensions,
    delivery: &'a Delivery,
    events: &'a Events,
    link: Link,
    ping_seq: u64,
}

impl ConnectionState<'_> {
    /// Hands an event to the core; one that has stopped (the worker is
    /// ending) no longer takes any.
    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn pong(&self, payload: &[u8]) {
        // With report-ack only the ack proves a report was recorded.
        if self.extensions.report_ack {
            return;
        }
        if let Ok(bytes) = <[u8; 8]>::try_from(payload) {
            let n = self.delivery.pong(self.conn, u64::from_be_bytes(bytes));
            if n > 0 {
                tracing::debug!("{n} report(s) confirmed by a pong");
            }
        }
    }

    fn text(&self, text: &str) {
        match decode_server_frame(text) {
            Ok(ServerMessage::ReportAck(ack)) => {
                if self.extensions.report_ack {
                    self.delivery
                        .acked(&ack.task_id, ack.execution_id.as_deref());
                } else {
                    tracing::debug!(
                        task_id = ack.task_id,
                        "ignoring a report_ack the server did not offer"
                    );
                }
            }
            Ok(msg) => self.emit(Event::Frame(msg, self.link.clone())),
            Err(DecodeError::BadBody {
                kind,
                task_id: Some(task_id),
                error,
            }) if kind == "task_assignment" => self.emit(Event::UndecodableAssignment {
                task_id,
                error,
                link: self.link.clone(),
            }),
            Err(e @ DecodeError::UnknownType(_)) => {
                tracing::info!(
                    "ignoring frame: {}",
                    oz_foundation::escape::Escaped(e.to_string())
                )
            }
            // Never echo the frame: an assignment carries secrets.
            Err(e) => tracing::warn!(
                "ignoring frame ({} bytes): {}",
                text.len(),
                oz_foundation::escape::Escaped(e.to_string())
            ),
        }
    }
}

/// What every connection works with besides its socket.
pub struct Context<'a> {
    pub timing: Timing,
    /// The core's one outbox: its reports are written first, every time.
    pub outbox: &'a crate::outbox::Outbox,
    pub events: &'a Events,
    /// Fires when the worker wants a normal close.
    pub close: &'a CancellationToken,
    pub health: &'a crate::health::Health,
}

/// Drives one connection until it ends. `conn` must be new for every
/// connection: reports written on an earlier one are sent again here.
pub async fn drive(
    mut ws: Socket,
    conn: ConnectionId,
    extensions: Extensions,
    cx: &Context<'_>,
) -> Ended {
    let Context {
        timing,
        outbox,
        events,
        close,
        health,
    } = *cx;
    let delivery: &Delivery = outbox.reports();
    let (tx, mut rx) = mpsc::channel::<(WorkerMessage, oneshot::Sender<bool>)>(32);
    let (output, mut output_rx) = mpsc::channel::<WorkerMessage>(OUTPUT_QUEUE);
    let mut st = ConnectionState {
        conn,
        extensions,
        delivery,
        events,
        link: Link {
            tx,
            output,
            extensions,
            id: conn,
        },
        ping_seq: 0,
    };
    st.emit(Event::Connected(st.link.clone()));
    let mut deadline = Instant::now() + timing.read_timeout;
    let mut ping =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);

    loop {
        health.beat();
        if let Err(ended) = write_reports(&mut ws, &mut st, &mut output_rx, timing).await {
            return ended;
        }
        tokio::select! {
            // In this order: closing, reports, claims, liveness and reads;
            // live output last (it waits, and its buffer drops, instead).
            biased;
            _ = close.cancelled() => {
                close_normally(&mut ws, &st, timing).await;
                return Ended::Closed;
            }
            _ = delivery.pushed() => {}
            Some((msg, ack)) = rx.recv() => {
                let ok = write(&mut ws, Message::text(encode(&msg)), timing).await;
                let _ = ack.send(ok.is_ok());
                if let Err(e) = ok {
                    return Ended::Dropped(format!("writing {} for task {}: {e}", msg.kind(), msg.task_id()));
                }
            }
            _ = ping.tick() => {
                st.ping_seq += 1;
                if let Err(e) = write(&mut ws, ping_frame(st.ping_seq), timing).await {
                    return Ended::Dropped(format!("sending ping: {e}"));
                }
            }
            _ = sleep_until(deadline) => {
                return Ended::Dropped(format!("nothing heard from the server for {:?} (no frame or pong)", timing.read_timeout));
            }
            frame = ws.next() => {
                deadline = Instant::now() + timing.read_timeout;
                match frame {
                    None => return Ended::Dropped("the server closed the connection".into()),
                    Some(Err(e)) => return Ended::Dropped(format!("reading: {e}")),
                    Some(Ok(Message::Text(text))) => st.text(text.as_str()),
                    Some(Ok(Message::Pong(p))) => st.pong(&p),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        return Ended::ClosedByServer(format!("the server closed the connection {why}").trim_end().to_string());
                    }
                    Some(Ok(Message::Binary(_))) => tracing::warn!("ignoring a binary frame: the protocol only uses JSON text frames"),
                    Some(Ok(_)) => {} // pings are answered by tungstenite
                }
            }
            Some(msg) = output_rx.recv(), if extensions.task_output => {
                if let Err(e) = write(&mut ws, Message::text(encode(&msg)), timing).await {
                    return Ended::Dropped(format!("writing task_output for task {}: {e}", msg.task_id()));
                }
            }
        }
    }
}

/// Unconfirmed reports go first, before anything new (the live output
/// queued before them first of all); then, without report-ack, a ping whose
/// pong proves they were read. `Err` ends the connection.
async fn write_reports(
    ws: &mut Socket,
    st: &mut ConnectionState<'_>,
    output_rx: &mut mpsc::Receiver<WorkerMessage>,
    timing: Timing,
) -> Result<(), Ended> {
    let mut wrote_report = false;
    let mut output_flushed = !st.extensions.task_output;
    while let Some((task, msg)) = st.delivery.next_unwritten(st.conn) {
        if !output_flushed {
            // Output already queued was written by tasks before they ended:
            // it goes before their reports, so a reader that stops at a
            // report has seen all of it. Bounded by the queue's size.
            output_flushed = true;
            while let Ok(out) = output_rx.try_recv() {
                if let Err(e) = write(ws, Message::text(encode(&out)), timing).await {
                    return Err(Ended::Dropped(format!(
                        "writing task_output for task {}: {e}",
                        out.task_id()
                    )));
                }
            }
        }
        if let Err(e) = write(ws, Message::text(encode(&msg)), timing).await {
            return Err(Ended::Dropped(format!(
                "writing {} for task {}: {e}",
                msg.kind(),
                msg.task_id()
            )));
        }
        st.delivery.written(&task, st.conn, st.ping_seq + 1);
        tracing::info!(
            task_id = msg.task_id(),
            execution_id = msg.execution_id().unwrap_or(""),
            "sent {}",
            msg.kind()
        );
        wrote_report = true;
    }
    if wrote_report && !st.extensions.report_ack {
        st.ping_seq += 1;
        if let Err(e) = write(ws, ping_frame(st.ping_seq), timing).await {
            return Err(Ended::Dropped(format!("sending ping: {e}")));
        }
    }
    Ok(())
}

/// The worker's normal close: a close frame, then a moment for the
/// server's answer; acks and pongs that arrive meanwhile still count.
async fn close_normally(ws: &mut Socket, st: &ConnectionState<'_>, timing: Timing) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "worker shutting down".into(),
    };
    let _ = write(ws, Message::Close(Some(frame)), timing).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Close(_) => break,
                Message::Pong(p) => st.pong(&p),
                Message::Text(t) => {
                    if let Ok(ServerMessage::ReportAck(a)) = decode_server_frame(t.as_str()) {
                        if st.extensions.report_ack {
                            st.delivery.acked(&a.task_id, a.execution_id.as_deref());
                        }
                    }
                }
                _ => {}
            }
        }
    })
    .await;
}

fn ping_frame(seq: u64) -> Message {
    Message::Ping(seq.to_be_bytes().to_vec().into())
}

/// A frame that could not be written: the connection is dropped.
#[derive(Debug)]
pub enum WriteError {
    /// The socket refused it (closed, reset, TLS failure).
    Socket(tokio_tungstenite::tungstenite::Error),
    /// The peer did not take it within [`Timing::write_timeout`].
    TimedOut(Duration),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Socket(e) => e.fmt(f),
            WriteError::TimedOut(limit) => write!(f, "write did not finish within {limit:?}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Socket(e) => Some(e),
            WriteError::TimedOut(_) => None,
        }
    }
}

async fn write(ws: &mut Socket, msg: Message, timing: Timing) -> Result<(), WriteError> {
    match tokio::time::timeout(timing.write_timeout, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Socket(e)),
        Err(_) => Err(WriteError::TimedOut(timing.write_timeout)),
    }
}
