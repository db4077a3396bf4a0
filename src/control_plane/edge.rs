//! The HTTP edge that the runs API (`api`) and the worker endpoint (`ws`)
//! share: the response body type, JSON and error responses, bearer-key
//! authentication, and the state every request handler and connection task
//! holds. It knows nothing of routing (`server`) or of either endpoint.

use crate::control_plane::dispatcher::Dispatcher;
use crate::control_plane::model::ApiError;
use crate::control_plane::store::Team;
use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every response body: the API's answers are small and complete.
pub type Body = http_body_util::Full<Bytes>;

/// What every request handler and connection task shares.
pub struct Shared {
    pub dispatcher: Arc<Dispatcher>,
    /// A worker connection that sends nothing for this long is dropped.
    pub worker_read_timeout: Duration,
    /// An HTTP connection that has not sent a request's headers within this
    /// long is closed.
    pub header_read_timeout: Duration,
    /// Flips to `true` once when the control plane shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Resolves the bearer key to its team, or answers 401 with a body that says
/// what was wrong. Keys are never logged.
#[allow(clippy::result_large_err)]
pub async fn authenticate(headers: &HeaderMap, shared: &Shared) -> Result<Team, Response<Body>> {
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
    match shared.dispatcher.store().team_for_key(secret).await {
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

/// `body` as pretty JSON with a trailing newline (readable with curl).
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(body).expect("API bodies serialize");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(text))
        .expect("static response parts are valid")
}

/// An `ApiError` body: one sentence saying what went wrong and what to do.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &ApiError {
            error: message.to_string(),
        },
    )
}
