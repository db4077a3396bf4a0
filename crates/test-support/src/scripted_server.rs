//! `ScriptedServer`: the orchestrator side of the worker protocol driven by
//! the test over a real WebSocket, for what the local control plane would
//! never do on purpose (malformed frames, silence, dropped connections).

use futures_util::{SinkExt, StreamExt};
use oz_protocol::{decode_worker_frame, WorkerMessage};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub struct ScriptedServer {
    listener: TcpListener,
    pub ws_url: String,
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
    pub async fn start() -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_url = format!(
            "ws://{}/api/v1/selfhosted/worker/ws",
            listener.local_addr().unwrap()
        );
        ScriptedServer { listener, ws_url }
    }

    /// Accepts a connection offering no extension (the reference server).
    pub async fn accept(&self, within: Duration) -> ServerConn {
        self.accept_offering(within, None).await
    }

    /// Accepts a connection, offering `extensions` (the
    /// `Oz-Worker-Extensions` header value) when given.
    // The handshake callback's error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    pub async fn accept_offering(&self, within: Duration, extensions: Option<&str>) -> ServerConn {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .expect("the worker connects in time")
            .unwrap();
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
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .unwrap();
        let (target, authorization, headers) = seen.lock().unwrap().clone();
        ServerConn {
            ws,
            target,
            authorization,
            headers,
        }
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
}
