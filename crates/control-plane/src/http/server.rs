//! The HTTP listener: accepts connections (plain, or TLS with `tls`) and
//! routes each request to the worker endpoint (`ws`), the API (`api`), the
//! management UI (`ui`) or `/healthz`. Nothing else lives here; what the endpoints share is in
//! `edge`.

use crate::http::endpoint_support::{full, no_such_endpoint, Body, Shared};
use crate::http::{api, ui, ws};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Accepts connections until shutdown; with `tls`, each one is a TLS
/// handshake first (bounded like the headers: a peer that connects and says
/// nothing is dropped).
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
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
                return serve(TokioIo::new(stream), shared).await;
            };
            match tokio::time::timeout(shared.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(TokioIo::new(tls), shared).await,
                Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within {:?}; closed", shared.header_read_timeout)
                }
            }
        });
    }
}

/// HTTP/1.1 on one connection, with upgrades (the worker WebSocket).
async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| route(req, shared.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("HTTP connection error: {e}") } }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
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
