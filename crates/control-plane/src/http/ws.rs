//! One worker connection: the upgrade handshake (bearer key, `worker_id`,
//! the extensions offered in `Oz-Worker-Extensions`), then a loop that
//! forwards the run scheduler's messages to the worker and the worker's frames
//! to the run scheduler, in order. Any frame from the worker (pings included)
//! extends the read deadline; a worker silent past it is dropped, but only
//! after every frame it had already sent has been read and handled.
//! Malformed and unknown frames are logged and ignored.

use crate::dispatch::run_scheduler::{ConnId, Outgoing, RunScheduler};
use crate::http::connections::Held;
use crate::http::endpoint_support::{
    bearer_secret, bearer_team, empty, error_response, trust_connection, Body, Shared,
};
use crate::store::KEY_RECHECK;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oz_foundation::escape::Escaped;
use oz_protocol::extensions::EXTENSIONS_HEADER;
use oz_protocol::{
    decode_worker_frame, encode, is_reserved_worker_id, DecodeError, Extensions,
    RESERVED_WORKER_ID_PREFIX, WORKER_VERSION_HEADER,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const WS_PATH: &str = "/api/v1/selfhosted/worker/ws";
/// docs/PROTOCOL.md: a write must finish within 10 s.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn upgrade(mut req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    if req.method() != http::Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the worker endpoint only accepts a GET WebSocket upgrade",
        );
    }
    let team = match bearer_team(req.headers(), &shared).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    trust_connection(&req);
    let key_hash = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(bearer_secret)
        .map(crate::store::keys::hash)
        .unwrap_or_default();
    let worker_id = req.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "worker_id").then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    let Some(worker_id) = worker_id.filter(|w| !w.is_empty()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "missing worker_id query parameter: connect to this endpoint with ?worker_id=<id>",
        );
    };
    if is_reserved_worker_id(&worker_id) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("worker ids starting with {RESERVED_WORKER_ID_PREFIX:?} are reserved; choose another --worker-id"),
        );
    }
    let header_has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, true, Some(key)) = (
        header_has(header::UPGRADE, "websocket"),
        header_has(header::SEC_WEBSOCKET_VERSION, "13"),
        key,
    ) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "this endpoint needs a WebSocket upgrade (version 13)",
        );
    };
    let version = req
        .headers()
        .get(WORKER_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect::<String>());
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The connection's place in the budget, for as long as the socket lives.
    let place = req.extensions().get::<Held>().cloned();
    tokio::spawn(async move {
        let _place = place;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                run_connection(ws, shared, team.id, worker_id, version, key_hash).await;
            }
            Err(e) => tracing::warn!("worker WebSocket upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        // docs/PROTOCOL.md: the control plane offers every extension it
        // implements; a worker that knows none ignores the header.
        .header(EXTENSIONS_HEADER, Extensions::ALL.header_value())
        .body(empty())
        .expect("static response parts are valid")
}

async fn run_connection<S>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    team_id: i64,
    worker_id: String,
    version: Option<String>,
    key_hash: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut outbox) = mpsc::unbounded_channel::<Outgoing>();
    let run_scheduler = shared.run_scheduler.clone();
    let conn = run_scheduler.register(team_id, &worker_id, version, tx);
    let (mut sink, mut stream) = ws.split();
    let read_timeout = shared.worker_read_timeout;
    let mut deadline = tokio::time::Instant::now() + read_timeout;
    let mut shutdown = shared.shutdown.clone();
    // The key may be revoked or expire while the worker is connected.
    let mut key_check = tokio::time::interval(KEY_RECHECK);
    key_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close_reason = loop {
        // Biased: frames already received are handled before the deadline
        // is looked at, so a worker is never dropped with its last report
        // unread.
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "control plane shutting down".into(),
                })))).await;
                break "control plane shutting down";
            }
            _ = key_check.tick() => {
                if let Ok(None) = run_scheduler.store().team_for_key_hash(&key_hash).await {
                    tracing::warn!(conn, worker_id = %Escaped(&worker_id), "the worker's API key was revoked or has expired; closing its connection");
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "API key revoked or expired".into(),
                    })))).await;
                    break "API key revoked or expired";
                }
            }
            out = outbox.recv() => {
                let msg = match out {
                    None => break "the run scheduler dropped the connection",
                    Some(Outgoing::Now(msg)) => msg,
                    // Receipts settle in submission order (one database
                    // thread), so waiting here keeps the worker's view in
                    // the order the run scheduler decided.
                    Some(Outgoing::WhenStored(receipt, msg)) => match receipt.await {
                        Ok(true) => msg,
                        _ => continue,
                    },
                };
                let text = encode(&msg);
                match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { tracing::warn!(conn, "write to worker failed: {e}"); break "write failed" }
                    Err(_) => break "write timed out",
                }
            }
            frame = stream.next() => {
                deadline = tokio::time::Instant::now() + read_timeout;
                if let Err(reason) = on_frame(&run_scheduler, conn, frame).await {
                    break reason;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                // The task may have been starved past the deadline while the
                // worker's frames sat in the socket: read what is there
                // without waiting. Anything at all means it is not silent.
                let mut heard = false;
                let mut ended = None;
                while let Some(frame) = stream.next().now_or_never() {
                    heard = true;
                    if let Err(reason) = on_frame(&run_scheduler, conn, frame).await {
                        ended = Some(reason);
                        break;
                    }
                }
                if let Some(reason) = ended {
                    break reason;
                }
                if heard {
                    deadline = tokio::time::Instant::now() + read_timeout;
                    continue;
                }
                tracing::warn!(conn, worker_id = %Escaped(&worker_id), "worker silent for {}s; dropping its connection", read_timeout.as_secs_f64());
                break "read deadline passed";
            }
        }
    };
    tracing::debug!(conn, reason = close_reason, "worker connection ended");
    run_scheduler.unregister(conn);
    // Best effort: tell the peer, then drop the socket.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

/// Hands one read result to the run scheduler; `Err` ends the connection.
async fn on_frame(
    run_scheduler: &RunScheduler,
    conn: ConnId,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<(), &'static str> {
    match frame {
        None => Err("closed"),
        Some(Err(e)) => {
            tracing::debug!(conn, "read from worker failed: {e}");
            Err("read failed")
        }
        Some(Ok(Message::Text(text))) => {
            match decode_worker_frame(text.as_str()) {
                Ok(msg) => run_scheduler.handle(conn, msg).await,
                Err(DecodeError::UnknownType(t)) => {
                    tracing::info!(conn, kind = %Escaped(&t), "unknown message type from worker; ignored")
                }
                Err(e) => tracing::warn!(
                    conn,
                    "ignoring frame from worker: {}",
                    Escaped(e.to_string())
                ),
            }
            Ok(())
        }
        Some(Ok(Message::Binary(_))) => {
            tracing::warn!(
                conn,
                "ignoring binary frame from worker (the protocol is JSON text)"
            );
            Ok(())
        }
        Some(Ok(Message::Close(_))) => Err("worker closed the connection"),
        // Pongs to pings are queued by tungstenite and flushed by the read loop.
        Some(Ok(_)) => Ok(()),
    }
}
