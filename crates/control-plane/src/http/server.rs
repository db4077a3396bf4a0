//! The HTTP listener: accepts connections (plain, or TLS with `tls`) and
//! routes each request to the worker endpoint (`ws`), the API (`api`), the
//! management UI (`ui`) or `/healthz`. Nothing else lives here; what the endpoints share is in
//! `endpoint_support`.

use crate::http::connections::{Admission, Admitted, Held};
use crate::http::endpoint_support::{full, no_such_endpoint, Body, BodyDeadline, Peer, Shared};
use crate::http::{api, ui, ws};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use oz_foundation::escape::Escaped;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// Accepts connections until shutdown; with `tls`, each one is a TLS
/// handshake first (bounded like the headers: a peer that connects and says
/// nothing is dropped). Every connection takes a place in `shared.connections`
/// (see `connections`): past the budget, the oldest untrusted connection is
/// closed to make room, or, when all are trusted, the new one is answered
/// `503` and closed at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut shutdown = shared.shutdown.clone();
    let mut last_full_log: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors (something else holds
                    // them): back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let (admission, close) = match shared.connections.admit() {
            Admitted::Yes {
                admission,
                close,
                evicted,
            } => {
                if evicted {
                    note_full(
                        &mut last_full_log,
                        &shared,
                        "closed the oldest connection that had not authenticated to make room",
                    );
                }
                (admission, close)
            }
            Admitted::Full => {
                note_full(
                    &mut last_full_log,
                    &shared,
                    "every open connection is authenticated; refusing new ones with 503",
                );
                if acceptor.is_none() {
                    let _ = stream.try_write(REFUSED);
                }
                continue;
            }
        };
        // Small messages (an ack, then an assignment) must not wait for the
        // peer's delayed ACK (Nagle's algorithm): up to 40 ms each.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve(TokioIo::new(stream), peer, shared, admission, close).await;
            };
            match tokio::time::timeout(shared.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(TokioIo::new(tls), peer, shared, admission, close).await,
                Ok(Err(e)) => {
                    tracing::info!(%peer, "TLS handshake failed: {}", Escaped(e.to_string()))
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within {:?}; closed", shared.header_read_timeout)
                }
            }
        });
    }
}

/// Written to a connection refused for want of room, without reading it.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 52\r\n\r\nthe control plane is at its connection limit; retry\n";

/// Logs that the budget is full, at most every 10 s.
fn note_full(last: &mut Option<Instant>, shared: &Shared, what: &str) {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        max = shared.connections.max(),
        "connection limit reached (--max-connections): {what}"
    );
}

/// HTTP/1.1 on one connection, with upgrades (the worker WebSocket).
/// Closed at once when a newer connection takes its place.
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    mut close: oneshot::Receiver<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let svc = {
        let shared = shared.clone();
        let admission = admission.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let ext = req.extensions_mut();
            ext.insert(admission.trust.clone());
            ext.insert(Held::new(admission.clone()));
            ext.insert(Peer(peer));
            ext.insert(BodyDeadline(Instant::now() + shared.body_read_timeout));
            route(req, shared.clone())
        })
    };
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Also bounds an idle kept-alive connection: the timer runs
            // from the end of one response to the next request's headers.
            .header_read_timeout(shared.header_read_timeout)
            .serve_connection(io, svc)
            .with_upgrades(),
    );
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("HTTP connection error: {e}") } }
        _ = &mut close => {
            tracing::debug!(%peer, "closed to make room for a newer connection");
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
    // The socket first: the place is free once its descriptor is (an
    // upgraded WebSocket holds its own reference to the place).
    drop(conn);
    drop(admission);
}

async fn route(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    Ok(if path == ws::WS_PATH {
        ws::upgrade(req, shared).await
    } else if path.starts_with(api::API_PREFIX) {
        api::handle(req, &shared).await
    } else if ui::serves(path) {
        ui::handle(req, &shared).await
    } else if path == "/healthz" {
        Response::new(full("ok\n"))
    } else {
        no_such_endpoint(path)
    })
}
