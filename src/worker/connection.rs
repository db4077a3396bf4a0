//! One live WebSocket connection to the orchestrator. A single loop owns the
//! socket, so exactly one place writes to it: frames from the task manager,
//! terminal messages from the outbox, pings and the final close.

use crate::protocol::{decode_server_frame, encode, DecodeError, ServerMessage, WorkerMessage};
use crate::worker::outbox::TerminalOutbox;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The protocol's liveness rules; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle for sending connection-bound frames (claims, rejections). They
/// only mean something on the connection that received the assignment, so
/// they are never retried on another one.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<(WorkerMessage, oneshot::Sender<bool>)>,
}

impl Link {
    /// True once the frame has been written to the socket.
    pub async fn send(&self, msg: WorkerMessage) -> bool {
        let (ack, written) = oneshot::channel();
        if self.tx.send((msg, ack)).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }
}

/// What the connection delivers upward.
pub trait Inbound: Send + Sync {
    fn message(&self, msg: ServerMessage, link: &Link);
    /// An assignment whose body did not decode but whose task id is known.
    fn undecodable_assignment(&self, task_id: String, error: String, link: &Link);
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// We closed it normally on request.
    Closed,
    /// It broke; the reason is for the log.
    Dropped(String),
}

pub async fn drive(
    mut ws: Socket,
    timing: Timing,
    outbox: &TerminalOutbox,
    inbound: &dyn Inbound,
    close: &CancellationToken,
) -> Ended {
    let (tx, mut rx) = mpsc::channel::<(WorkerMessage, oneshot::Sender<bool>)>(32);
    let link = Link { tx };
    let mut deadline = Instant::now() + timing.read_timeout;
    let mut ping =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);

    loop {
        // Undelivered terminal messages go first, before anything new.
        while let Some(msg) = outbox.front() {
            if let Err(e) = write(&mut ws, Message::text(encode(&msg)), timing).await {
                return Ended::Dropped(format!(
                    "writing {} for task {}: {e}",
                    kind(&msg),
                    msg.task_id()
                ));
            }
            tracing::info!(task_id = msg.task_id(), "reported {}", kind(&msg));
            outbox.delivered(msg.task_id());
        }
        tokio::select! {
            _ = close.cancelled() => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "worker shutting down".into() };
                let _ = write(&mut ws, Message::Close(Some(frame)), timing).await;
                // Give the server a moment to answer the close handshake.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() { break; }
                    }
                }).await;
                return Ended::Closed;
            }
            _ = outbox.pushed() => {}
            Some((msg, ack)) = rx.recv() => {
                let ok = write(&mut ws, Message::text(encode(&msg)), timing).await;
                let _ = ack.send(ok.is_ok());
                if let Err(e) = ok {
                    return Ended::Dropped(format!("writing {} for task {}: {e}", kind(&msg), msg.task_id()));
                }
            }
            _ = ping.tick() => {
                if let Err(e) = write(&mut ws, Message::Ping(Default::default()), timing).await {
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
                    Some(Ok(Message::Text(text))) => handle_text(text.as_str(), inbound, &link),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        return Ended::Dropped(format!("the server closed the connection {why}").trim_end().to_string());
                    }
                    Some(Ok(Message::Binary(_))) => tracing::warn!("ignoring a binary frame: the protocol only uses JSON text frames"),
                    Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                }
            }
        }
    }
}

fn handle_text(text: &str, inbound: &dyn Inbound, link: &Link) {
    match decode_server_frame(text) {
        Ok(msg) => inbound.message(msg, link),
        Err(DecodeError::BadBody {
            kind,
            task_id: Some(task_id),
            error,
        }) if kind == "task_assignment" => inbound.undecodable_assignment(task_id, error, link),
        Err(e @ DecodeError::UnknownType(_)) => tracing::info!("ignoring frame: {e}"),
        // Never echo the frame: an assignment carries secrets.
        Err(e) => tracing::warn!("ignoring frame ({} bytes): {e}", text.len()),
    }
}

async fn write(ws: &mut Socket, msg: Message, timing: Timing) -> Result<(), String> {
    match tokio::time::timeout(timing.write_timeout, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "write did not finish within {:?}",
            timing.write_timeout
        )),
    }
}

fn kind(msg: &WorkerMessage) -> &'static str {
    match msg {
        WorkerMessage::TaskClaimed(_) => "task_claimed",
        WorkerMessage::TaskRejected(_) => "task_rejected",
        WorkerMessage::TaskCompleted(_) => "task_completed",
        WorkerMessage::TaskFailed(_) => "task_failed",
        WorkerMessage::TaskOutput(_) => "task_output",
    }
}
