//! The HTTP listener: accepts connections and routes each request to the
//! worker endpoint (`ws`), the runs API (`api`) or `/healthz`. Nothing else
//! lives here; what both endpoints share is in `edge`.

use crate::control_plane::edge::{error_response, Body, Shared};
use crate::control_plane::{api, ws};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
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
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            let svc = {
                let shared = shared.clone();
                service_fn(move |req| route(req, shared.clone()))
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.header_read_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("HTTP connection error: {e}") } }
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    Ok(if path == ws::WS_PATH {
        ws::upgrade(req, shared).await
    } else if path == api::RUNS_PATH || path.starts_with(&format!("{}/", api::RUNS_PATH)) {
        api::handle(req, &shared).await
    } else if path == "/healthz" {
        Response::new(Body::from("ok\n"))
    } else {
        error_response(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"))
    })
}
