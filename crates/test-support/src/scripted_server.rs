//! `ScriptedServer`: the orchestrator side of the worker protocol over a
//! real WebSocket (tokio-tungstenite), driven step by step: by tests, for
//! what the local control plane would never do on purpose (malformed
//! frames, silence, dropped connections), and by benches, to time single
//! frames. It offers no extension unless asked (the reference protocol the
//! hosted service speaks).

use futures_util::{SinkExt, StreamExt};
use oz_protocol::{
    decode_worker_frame, encode, ServerMessage, Task, TaskAssignment, TaskDefinition, WorkerMessage,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub struct ScriptedServer {
    listener: TcpListener,
    /// `ws://127.0.0.1:PORT/api/v1/selfhosted/worker/ws`, for `--web-socket-url`.
    pub ws_url: String,
    /// `http://127.0.0.1:PORT`, for `--server-root-url`.
    pub root_url: String,
}

pub struct ServerConn {
    pub ws: WebSocketStream<TcpStream>,
    /// Path and query of the upgrade request.
    pub target: String,
    pub authorization: Option<String>,
    /// Every header of the upgrade request, as the worker sent it.
    pub headers: tokio_tungstenite::tungstenite::http::HeaderMap,
}

impl ScriptedServer {
    /// Listens on a free loopback port.
    pub async fn start() -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().unwrap();
        ScriptedServer {
            ws_url: format!("ws://{addr}/api/v1/selfhosted/worker/ws"),
            root_url: format!("http://{addr}"),
            listener,
        }
    }

    /// Accepts a connection offering no extension (the reference server).
    pub async fn accept(&self, within: Duration) -> ServerConn {
        self.accept_offering(within, None).await
    }

    /// [`ScriptedServer::accept`] as a `Result`, for the benches. Errors:
    /// no connection within `within`, or a failed handshake.
    pub async fn try_accept(&self, within: Duration) -> Result<ServerConn, ConnError> {
        let accepted = tokio::time::timeout(within, self.listener.accept()).await;
        let (stream, _) = accepted
            .map_err(|_| ConnError::NoConnection { within })?
            .map_err(ConnError::Accept)?;
        self.handshake(stream, None)
            .await
            .map_err(ConnError::Handshake)
    }

    /// Accepts a connection, offering `extensions` (the
    /// `Oz-Worker-Extensions` header value) when given.
    pub async fn accept_offering(&self, within: Duration, extensions: Option<&str>) -> ServerConn {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .expect("the worker connects in time")
            .unwrap();
        self.handshake(stream, extensions).await.unwrap()
    }

    /// The server's side of the WebSocket handshake on an accepted stream,
    /// recording the upgrade request. No Nagle delay: benches time frames.
    // The handshake callback's error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    async fn handshake(
        &self,
        stream: TcpStream,
        extensions: Option<&str>,
    ) -> Result<ServerConn, tokio_tungstenite::tungstenite::Error> {
        stream.set_nodelay(true)?;
        let seen = Arc::new(Mutex::new((
            String::new(),
            None::<String>,
            tokio_tungstenite::tungstenite::http::HeaderMap::new(),
        )));
        let record = seen.clone();
        let offer = extensions.map(str::to_string);
        let callback = move |req: &Request, mut resp: Response| {
            if let Some(offer) = &offer {
                resp.headers_mut().insert(
                    oz_protocol::extensions::EXTENSIONS_HEADER,
                    offer.parse().unwrap(),
                );
            }
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            *record.lock().unwrap() = (req.uri().to_string(), auth, req.headers().clone());
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
        let (target, authorization, headers) = seen.lock().unwrap().clone();
        Ok(ServerConn {
            ws,
            target,
            authorization,
            headers,
        })
    }
}

impl ServerConn {
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next protocol message, skipping pings and pongs; None on timeout.
    pub async fn next_message(&mut self, within: Duration) -> Option<WorkerMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame.expect("a readable frame") {
                Message::Text(t) => {
                    return Some(
                        decode_worker_frame(t.as_str()).expect("the worker sends valid frames"),
                    )
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Counts pings received within the window (answering them as it reads).
    pub async fn count_pings(&mut self, window: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + window;
        let mut pings = 0;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if matches!(frame, Message::Ping(_)) {
                pings += 1;
            }
        }
        pings
    }

    /// Reads until `n` pings came (each answered: its pong is flushed at
    /// once) or `within` passed; how many came. Returns as soon as the
    /// `n`th is answered, so a loaded machine that delays the peer's pings
    /// only makes it wait longer.
    pub async fn wait_for_pings(&mut self, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut pings = 0;
        while pings < n {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => {
                    pings += 1;
                    // tungstenite queues the pong; send it now.
                    let _ = self.ws.flush().await;
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        pings
    }

    /// Writes one protocol message (and flushes it).
    pub async fn send(&mut self, msg: &ServerMessage) -> Result<(), ConnError> {
        self.ws
            .send(Message::text(encode(msg)))
            .await
            .map_err(ConnError::Send)
    }

    /// Sends a WebSocket ping carrying `payload`.
    pub async fn ping(&mut self, payload: u64) -> Result<(), ConnError> {
        self.ws
            .send(Message::Ping(payload.to_be_bytes().to_vec().into()))
            .await
            .map_err(ConnError::Ping)
    }

    /// The next frame: a protocol message, or the pong with an 8-byte
    /// payload. Pings from the worker are answered by tungstenite while
    /// reading. Errors: nothing within `within`, the connection closed or
    /// broken, an undecodable frame.
    pub async fn next(&mut self, within: Duration) -> Result<Frame, ConnError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ConnError::Silent { within })?
                .ok_or(ConnError::Closed)?
                .map_err(ConnError::Read)?;
            match frame {
                Message::Text(t) => {
                    return decode_worker_frame(t.as_str())
                        .map(|m| Frame::Message(Box::new(m)))
                        .map_err(ConnError::Unreadable)
                }
                Message::Pong(p) => {
                    if let Ok(b) = <[u8; 8]>::try_from(p.as_ref()) {
                        return Ok(Frame::Pong(u64::from_be_bytes(b)));
                    }
                }
                Message::Close(_) => return Err(ConnError::Closed),
                _ => {}
            }
        }
    }

    /// The next protocol message, skipping pongs ([`ServerConn::next`]'s errors).
    pub async fn message(&mut self, within: Duration) -> Result<WorkerMessage, ConnError> {
        loop {
            if let Frame::Message(m) = self.next(within).await? {
                return Ok(*m);
            }
        }
    }
}

/// Why the benches' fallible calls on the scripted orchestrator's side
/// failed ([`ScriptedServer::try_accept`], [`ServerConn::send`],
/// [`ServerConn::ping`], [`ServerConn::next`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the worker did not connect within {within:?}")]
    NoConnection { within: Duration },
    #[error(transparent)]
    Accept(std::io::Error),
    #[error("WebSocket handshake: {0}")]
    Handshake(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("sending: {0}")]
    Send(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("sending a ping: {0}")]
    Ping(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("nothing from the worker within {within:?}")]
    Silent { within: Duration },
    #[error("the worker closed the connection")]
    Closed,
    #[error("reading: {0}")]
    Read(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("an unreadable frame from the worker: {0}")]
    Unreadable(#[source] oz_protocol::DecodeError),
}

/// What [`ServerConn::next`] read.
pub enum Frame {
    Message(Box<WorkerMessage>),
    /// The pong to a [`ServerConn::ping`], with its payload.
    Pong(u64),
}

/// An assignment of the demo agent, as the control plane would send it:
/// execution id `exec_<task_id>`, title "bench", prompt "say hello".
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
