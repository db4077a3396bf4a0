//! The HTTP listener: one hyper server for the worker WebSocket endpoint and
//! the runs API, plus the authentication both share. Plain HTTP: put a TLS
//! terminating proxy in front when the control plane leaves the machine.

use crate::control_plane::dispatcher::Dispatcher;
use crate::control_plane::model::ApiError;
use crate::control_plane::store::Team;
use crate::control_plane::{api, ws};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = http_body_util::Full<Bytes>;

/// What every request handler and connection task shares.
pub struct Shared {
    pub dispatcher: Arc<Dispatcher>,
    pub worker_read_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

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
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            let svc = {
                let shared = shared.clone();
                service_fn(move |req| route(req, shared.clone()))
            };
            let conn = hyper::server::conn::http1::Builder::new()
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
        ws::upgrade(req, shared)
    } else if path == api::RUNS_PATH || path.starts_with(&format!("{}/", api::RUNS_PATH)) {
        api::handle(req, &shared).await
    } else if path == "/healthz" {
        Response::new(Body::from("ok\n"))
    } else {
        error_response(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"))
    })
}

/// Resolves the bearer key to its team, or answers 401 with a body that says
/// what was wrong. Keys are never logged.
#[allow(clippy::result_large_err)]
pub fn authenticate(headers: &HeaderMap, shared: &Shared) -> Result<Team, Response<Body>> {
    let unauthorized = |msg: &str| {
        let mut r = error_response(StatusCode::UNAUTHORIZED, msg);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        r
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing API key: send `Authorization: Bearer <key>`; create a key with `oz-agent-worker api-keys create --team NAME`",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Some(secret) = secret else {
        return Err(unauthorized(
            "malformed Authorization header: expected `Bearer <key>`",
        ));
    };
    match shared.dispatcher.store().team_for_key(secret) {
        Ok(Some(team)) => Ok(team),
        Ok(None) => Err(unauthorized(
            "invalid API key: this control plane does not know it; check --api-key / WARP_API_KEY, or create one with `oz-agent-worker api-keys create --team NAME`",
        )),
        Err(e) => {
            tracing::error!("{e}");
            Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the control plane could not read its database; see its log",
            ))
        }
    }
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(body).expect("API bodies serialize");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(text))
        .expect("static response parts are valid")
}

pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &ApiError {
            error: message.to_string(),
        },
    )
}
