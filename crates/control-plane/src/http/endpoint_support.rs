//! The HTTP edge that the API's endpoints (`api_*`), the worker endpoint
//! (`ws`) and the UI share: the response body type (complete, or streamed
//! from a channel), JSON and error responses, request bodies and queries,
//! bearer-key authentication, and the state every request handler and
//! connection task holds. It knows nothing of routing (`server`, `api`) or
//! of any endpoint.

// Handlers return the error response itself; it is built once per request.
#![allow(clippy::result_large_err)]

use crate::dispatch::cron_scheduler::CronScheduler;
use crate::dispatch::run_scheduler::RunScheduler;
use crate::http::connections::{Connections, Trust};
use crate::http::followers::Followers;
use crate::http::login_limit::LoginLimit;
use crate::http::sessions::{self, Sessions};
use crate::store::Team;
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use oz_runs_api::model::ApiError;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every response body: complete ([`full`]) or streamed (the live output's
/// server-sent events, `api::output`).
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// The client's address, set on every request by `server`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub std::net::SocketAddr);

/// When the request's body must have been read by (`--body-read-timeout`
/// from its arrival), set on every request by `server`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyDeadline(pub std::time::Instant);

/// Says that the request's connection authenticated (see `connections`):
/// it may no longer be closed to make room for a newer one.
pub(crate) fn trust_connection<B>(req: &Request<B>) {
    if let Some(t) = req.extensions().get::<Trust>() {
        t.mark();
    }
}

/// Reads at most `limit` bytes of `req`'s body before its [`BodyDeadline`]
/// (a slow sender holds a connection no longer than that). The error is
/// the response to send: 413 past the limit, 408 past the deadline, 400 on
/// a broken body; all close the connection.
pub(crate) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    let deadline = req
        .extensions()
        .get::<BodyDeadline>()
        .map(|d| d.0)
        .unwrap_or_else(|| std::time::Instant::now() + DEFAULT_BODY_READ_TIMEOUT);
    let read = Limited::new(req.into_body(), limit).collect();
    let closing = |mut r: Response<Body>| {
        r.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        r
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(closing(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {limit} bytes"),
            )))
        }
        Ok(Err(e)) => Err(closing(bad_request(&format!(
            "cannot read the request body: {e}"
        )))),
        Err(_) => Err(closing(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time (--body-read-timeout); send it at once",
        ))),
    }
}

/// `--body-read-timeout`'s default: a request body (at most 1 MiB) takes
/// well under this on any link a control plane is used over.
pub(crate) const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler and connection task shares.
pub(crate) struct Shared {
    pub run_scheduler: Arc<RunScheduler>,
    pub cron_scheduler: Arc<CronScheduler>,
    /// The management UI's sign-in sessions.
    pub sessions: Sessions,
    /// Served over TLS: session cookies are `Secure`, origins `https`.
    pub tls: bool,
    /// A worker connection that sends nothing for this long is dropped.
    pub worker_read_timeout: Duration,
    /// An HTTP connection that has not sent a request's headers within this
    /// long is closed.
    pub header_read_timeout: Duration,
    /// A request's body must have arrived within this long.
    pub body_read_timeout: Duration,
    /// The open HTTP connections and their budget.
    pub connections: Arc<Connections>,
    /// Live-output followers per team, and the slow-follower deadline.
    pub followers: Followers,
    /// Failed UI sign-ins per client address.
    pub login_limit: LoginLimit,
    /// Flips to `true` once when the control plane shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Who is calling: a team.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub team: Team,
}

/// Authenticates an API request: by its bearer key, else by a UI session
/// cookie. A change (any method but GET and HEAD) made with a session must
/// come from the control plane's own origin and carry the session's CSRF
/// token in `X-CSRF-Token` (the cookie is also SameSite=Strict). `Err` is
/// the response to send.
pub(crate) async fn authenticate(
    req: &Request<Incoming>,
    shared: &Shared,
) -> Result<Caller, Response<Body>> {
    let headers = req.headers();
    let Some(id) = session_id(headers).filter(|_| !headers.contains_key(header::AUTHORIZATION))
    else {
        let team = bearer_team(headers, shared).await?;
        trust_connection(req);
        return Ok(Caller { team });
    };
    let Some(session) = live_session(shared, id).await? else {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "your sign-in has ended (sessions end after --session-idle-timeout unused or --session-lifetime in all, at sign-out, when the key signed in with is revoked, and at a restart of the control plane); sign in again at /ui/login",
        ));
    };
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        check_change(req, shared, &session)?;
    }
    trust_connection(req);
    Ok(Caller { team: session.team })
}

/// The live session `id`, if the key it signed in with is still valid
/// (revoking or expiring the key ends its sessions). `Err`: the database
/// failed (the response to send).
pub(crate) async fn live_session(
    shared: &Shared,
    id: &str,
) -> Result<Option<sessions::Session>, Response<Body>> {
    let Some(session) = shared.sessions.get(id) else {
        return Ok(None);
    };
    match shared
        .run_scheduler
        .store()
        .team_for_key_hash(&session.key_hash)
        .await
    {
        Ok(Some(_)) => Ok(Some(session)),
        Ok(None) => {
            shared.sessions.end(id);
            Ok(None)
        }
        Err(e) => Err(internal(e)),
    }
}

/// The header the UI sends its session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// A change made with a UI session: it must come from this control
/// plane's own origin and carry the session's CSRF token.
pub(crate) fn check_change(
    req: &Request<Incoming>,
    shared: &Shared,
    session: &sessions::Session,
) -> Result<(), Response<Body>> {
    same_origin(req, shared)?;
    let token = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !crate::store::keys::same_secret(token, &session.csrf_token) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: a change made with the UI's session must send its token in X-CSRF-Token (reload the page)",
        ));
    }
    Ok(())
}

/// The UI session id in the request's cookies.
pub(crate) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| sessions::cookie_value(h, sessions::COOKIE))
        .filter(|v| !v.is_empty())
}

/// Refuses a request a browser sent from another site: its `Origin` (sent
/// with every cross-origin request and every POST) must be this control
/// plane's own, and `Sec-Fetch-Site`, when sent, must not say otherwise.
pub(crate) fn same_origin(req: &Request<Incoming>, shared: &Shared) -> Result<(), Response<Body>> {
    let headers = req.headers();
    let forbidden = |why: &str| {
        Err(error_response(
            StatusCode::FORBIDDEN,
            &format!("cross-site request refused: {why}"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return forbidden(&format!("Sec-Fetch-Site is {site:?}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let scheme = if shared.tls { "https" } else { "http" };
        if origin.to_str().ok() != Some(format!("{scheme}://{host}").as_str()) {
            return forbidden(&format!(
                "Origin {:?} is not this control plane ({scheme}://{host})",
                origin.to_str().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

/// Resolves the bearer key to its team, or answers 401 with a body that says
/// what was wrong. Keys are never logged.
pub(crate) async fn bearer_team(
    headers: &HeaderMap,
    shared: &Shared,
) -> Result<Team, Response<Body>> {
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
    let Some(secret) = bearer_secret(value) else {
        return Err(unauthorized(
            "malformed Authorization header: expected `Bearer <key>`",
        ));
    };
    match shared.run_scheduler.store().team_for_key(secret).await {
        Ok(Some(team)) => Ok(team),
        Ok(None) => Err(unauthorized(
            "invalid API key: this control plane does not know it, or it was revoked or has expired (see `oz-agent-worker api-keys list`); check --api-key / WARP_API_KEY, or create one with `oz-agent-worker api-keys create --team NAME`",
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

/// The key in an `Authorization: Bearer <key>` value.
pub(crate) fn bearer_secret(value: &http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `body` as pretty JSON with a trailing newline (readable with curl).
/// Never cached: answers hold a team's data.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(body).expect("API bodies serialize");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(text))
        .expect("static response parts are valid")
}

/// An `ApiError` body: one sentence saying what went wrong and what to do.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &ApiError {
            error: message.to_string(),
        },
    )
}

/// A handler's answer: the error arm is a complete error response.
pub(crate) type Answer = Result<Response<Body>, Response<Body>>;

/// Request bodies are small JSON documents.
pub(crate) const MAX_BODY: usize = 1 << 20;

pub(crate) fn bad_request(msg: &str) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, msg)
}

/// A database failure (or a change that could not be stored): logged; the
/// client is told to look at the log.
pub(crate) fn internal(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!("{e}");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the control plane could not use its database; see its log",
    )
}

/// The request's JSON body as `T` (at most [`MAX_BODY`]); 400 naming the
/// problem otherwise. `what` names the document in messages ("run request").
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
) -> Result<T, Response<Body>> {
    let bytes = read_body(req, MAX_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("invalid {what}: {e}")))
}

/// The query's `key=value` pairs, percent-decoded (`+` is a space).
pub(crate) fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// 405 for a known path with the wrong method.
pub(crate) fn method_not_allowed(method: &http::Method, path: &str) -> Response<Body> {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {path}"),
    )
}

pub(crate) fn no_such_endpoint(path: &str) -> Response<Body> {
    error_response(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"))
}
