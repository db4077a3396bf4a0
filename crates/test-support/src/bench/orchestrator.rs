//! A scripted orchestrator: the server side of the worker protocol over a
//! real WebSocket (tokio-tungstenite), offering no extension (the reference
//! protocol the hosted service speaks), driven step by step by a bench so
//! it can time single frames.

use futures_util::{SinkExt, StreamExt};
use oz_protocol::{
    decode_worker_frame, encode, ServerMessage, Task, TaskAssignment, TaskDefinition, WorkerMessage,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub struct Orchestrator {
    listener: TcpListener,
    pub ws_url: String,
    pub root_url: String,
}

pub struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Orchestrator {
    pub async fn bind() -> Orchestrator {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().unwrap();
        Orchestrator {
            ws_url: format!("ws://{addr}/api/v1/selfhosted/worker/ws"),
            root_url: format!("http://{addr}"),
            listener,
        }
    }

    /// Accepts the worker's connection.
    pub async fn accept(&self, within: Duration) -> Result<Conn, String> {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .map_err(|_| format!("the worker did not connect within {within:?}"))?
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let ws = tokio_tungstenite::accept_async(stream)
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        Ok(Conn { ws })
    }
}

impl Conn {
    /// Writes one frame (and flushes it).
    pub async fn send(&mut self, msg: &ServerMessage) -> Result<(), String> {
        self.ws
            .send(Message::text(encode(msg)))
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    /// Sends a WebSocket ping carrying `payload`.
    pub async fn ping(&mut self, payload: u64) -> Result<(), String> {
        self.ws
            .send(Message::Ping(payload.to_be_bytes().to_vec().into()))
            .await
            .map_err(|e| format!("sending a ping: {e}"))
    }

    /// The next frame: a protocol message, or the pong with `payload`.
    /// Pings from the worker are answered by tungstenite while reading.
    pub async fn next(&mut self, within: Duration) -> Result<Frame, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("nothing from the worker within {within:?}"))?
                .ok_or("the worker closed the connection")?
                .map_err(|e| format!("reading: {e}"))?;
            match frame {
                Message::Text(t) => {
                    return decode_worker_frame(t.as_str())
                        .map(|m| Frame::Message(Box::new(m)))
                        .map_err(|e| format!("an unreadable frame from the worker: {e}"))
                }
                Message::Pong(p) => {
                    if let Ok(b) = <[u8; 8]>::try_from(p.as_ref()) {
                        return Ok(Frame::Pong(u64::from_be_bytes(b)));
                    }
                }
                Message::Close(_) => return Err("the worker closed the connection".into()),
                _ => {}
            }
        }
    }

    /// The next protocol message, skipping pongs.
    pub async fn message(&mut self, within: Duration) -> Result<WorkerMessage, String> {
        loop {
            if let Frame::Message(m) = self.next(within).await? {
                return Ok(*m);
            }
        }
    }
}

pub enum Frame {
    Message(Box<WorkerMessage>),
    Pong(u64),
}

/// An assignment of the demo agent, as the control plane would send it.
pub fn assignment(
    task_id: &str,
    image: &str,
    sidecar: &str,
    env: &[(&str, &str)],
) -> ServerMessage {
    let env_vars: BTreeMap<_, _> = env
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    ServerMessage::TaskAssignment(Box::new(TaskAssignment {
        task_id: task_id.to_string(),
        execution_id: Some(format!("exec_{task_id}")),
        task: Task {
            id: task_id.to_string(),
            title: "bench".into(),
            task_definition: TaskDefinition {
                prompt: "say hello".into(),
            },
            ..Default::default()
        },
        docker_image: Some(image.to_string()),
        sidecar_image: Some(sidecar.to_string()),
        env_vars,
        ..Default::default()
    }))
}
