//! The Docker client: owns a transport, the negotiated API version and the
//! resolved endpoint; executes [`ApiRequest`]s built by the generated bindings.
//!
//! CONTRACT (relied on by `generated/`): the `send_*` methods below, with
//! exactly these signatures. Everything else here is free to change.
//!
//! ```no_run
//! # async fn demo() -> Result<(), oz_docker_engine::DockerError> {
//! use oz_docker_engine::{Docker, LogsOptions};
//! use oz_docker_engine::transport::EnvSnapshot;
//! // Resolve as the Docker CLI would, connect, negotiate, identify.
//! let docker = Docker::connect(&EnvSnapshot::from_process()).await?;
//! println!("{} via {}", docker.endpoint().host, docker.endpoint().source);
//! println!("{} {} API {} on {}", docker.engine().kind, docker.engine().version,
//!          docker.api_version(), docker.platform());
//! let _logs = docker.logs("my-container", &LogsOptions::default()).await?;
//! # Ok(()) }
//! ```

use crate::error::{DecodeError, DockerError, ErrorKind};
use crate::request::{ApiRequest, CallKind, RequestBody};
use crate::stream::{self, ByteStream, JsonStream, LogStream};
use crate::transport::endpoint::{resolve_endpoint, Endpoint, EnvSnapshot};
use crate::transport::http::{Body, HttpTransport};
use crate::transport::negotiate::{self, ApiVersion, Engine, PingInfo, Platform};
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use oz_foundation::net::connector::Timeouts;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// How to connect, beyond the endpoint itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Use exactly this API version instead of negotiating (`DOCKER_API_VERSION`).
    pub api_version: Option<ApiVersion>,
    pub timeouts: Timeouts,
}

impl ConnectOptions {
    /// Reads `DOCKER_API_VERSION` from the snapshot; default timeouts.
    pub fn from_env(env: &EnvSnapshot) -> Result<Self, DockerError> {
        let api_version = match env.non_empty("DOCKER_API_VERSION") {
            None => None,
            Some(v) => Some(v.parse::<ApiVersion>().map_err(|e| {
                DockerError::new(
                    ErrorKind::Config,
                    "negotiate API version",
                    format!("DOCKER_API_VERSION: {e}"),
                )
            })?),
        };
        Ok(ConnectOptions {
            api_version,
            timeouts: Timeouts::default(),
        })
    }
}

/// The answer of `GET /version` (the fields the worker uses).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DaemonVersion {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(rename = "MinAPIVersion", default)]
    pub min_api_version: Option<String>,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub kernel_version: Option<String>,
}

/// Options of [`Docker::logs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsOptions {
    pub stdout: bool,
    pub stderr: bool,
    /// Keep streaming until the container stops.
    pub follow: bool,
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Whether the container has a TTY (its output is then one raw stream,
    /// not multiplexed frames), when the caller knows because it created
    /// the container; `None` asks the daemon (one `ContainerInspect` more,
    /// which a busy daemon can take tens of milliseconds to answer).
    pub tty: Option<bool>,
}

impl Default for LogsOptions {
    fn default() -> Self {
        LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            timestamps: false,
            tail: None,
            tty: None,
        }
    }
}

/// A hijacked attach: the container's output and a writer to its stdin.
pub struct Attached {
    pub output: LogStream,
    /// Shutting this down closes the container's stdin.
    pub input: tokio::io::WriteHalf<TokioIo<hyper::upgrade::Upgraded>>,
}

/// What [`Docker::exec_start`] got: the daemon answers an attached start
/// (`Detach: false`, the default) by hijacking the connection (101) and a
/// detached one with a plain 200 once the command has started.
pub enum ExecStartOutcome {
    /// The command's stdin/stdout/stderr on the hijacked connection
    /// (multiplexed unless the exec has a TTY).
    Attached(TokioIo<hyper::upgrade::Upgraded>),
    /// The command runs in the background; `exec_inspect` tells when it ends.
    Detached,
}

impl std::fmt::Debug for ExecStartOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecStartOutcome::Attached(_) => "Attached",
            ExecStartOutcome::Detached => "Detached",
        })
    }
}

struct Inner {
    transport: HttpTransport,
    api_version: ApiVersion,
    /// `/v1.41`.
    prefix: String,
    engine: Engine,
    platform: Platform,
}

/// Cheap to clone; shares one connection pool.
#[derive(Clone)]
pub struct Docker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker")
            .field(
                "endpoint",
                &self.inner.transport.endpoint().host.to_string(),
            )
            .field("api_version", &self.inner.api_version)
            .field("engine", &self.inner.engine.kind)
            .finish()
    }
}

impl Docker {
    /// Resolves the endpoint as the Docker CLI would (see
    /// [`resolve_endpoint`]), logs it and how it was chosen, then connects,
    /// negotiates the API version (or uses `DOCKER_API_VERSION`) and
    /// identifies the engine and platform.
    pub async fn connect(env: &EnvSnapshot) -> Result<Docker, DockerError> {
        let endpoint = resolve_endpoint(env)?;
        tracing::info!(
            endpoint = %endpoint.host,
            chosen_by = %endpoint.source,
            tls = endpoint.tls.is_some(),
            "Docker endpoint resolved"
        );
        let options = ConnectOptions::from_env(env)?;
        Docker::connect_endpoint(endpoint, options).await
    }

    /// Connects to a given endpoint: pings `/_ping` (HEAD, else GET),
    /// negotiates the version, reads `/version`.
    pub async fn connect_endpoint(
        endpoint: Endpoint,
        options: ConnectOptions,
    ) -> Result<Docker, DockerError> {
        let transport = HttpTransport::new(endpoint, options.timeouts)?;
        let ping = ping(&transport).await?;
        let api_version = negotiate::negotiate(ping.api_version, options.api_version)
            .map_err(|e| e.with_endpoint(transport.endpoint().error_label()))?;
        let prefix = format!("/v{api_version}");
        let version: DaemonVersion = send_json(
            &transport,
            ApiRequest::new(
                "SystemVersion",
                http::Method::GET,
                "/version".into(),
                CallKind::Ordinary,
            ),
            &prefix,
        )
        .await?;
        let engine = Engine {
            kind: ping.engine_kind(),
            version: version.version.clone(),
            api_version: ping
                .api_version
                .or_else(|| version.api_version.parse().ok())
                .unwrap_or(api_version),
            libpod_api_version: ping.libpod_api_version.clone(),
        };
        let platform = Platform {
            os: version.os.clone(),
            arch: version.arch.clone(),
        };
        tracing::info!(
            engine = %engine.kind,
            version = %engine.version,
            api_version = %api_version,
            platform = %platform,
            "connected to the container engine"
        );
        Ok(Docker {
            inner: Arc::new(Inner {
                transport,
                api_version,
                prefix,
                engine,
                platform,
            }),
        })
    }

    /// The resolved endpoint and how it was chosen.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.transport.endpoint()
    }

    /// The API version every request is prefixed with.
    pub fn api_version(&self) -> ApiVersion {
        self.inner.api_version
    }

    /// Docker or Podman, with its versions.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The daemon's `os/arch` from `/version`.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    pub fn timeouts(&self) -> Timeouts {
        self.inner.transport.timeouts()
    }

    /// `GET /_ping`: fails unless the daemon answers `OK`.
    pub async fn ping(&self) -> Result<(), DockerError> {
        let text = self
            .send_text(ApiRequest::new(
                "SystemPing",
                http::Method::GET,
                "/_ping".into(),
                CallKind::Ordinary,
            ))
            .await?;
        if text.trim() == "OK" {
            Ok(())
        } else {
            Err(self.err(
                ErrorKind::Protocol,
                "SystemPing",
                "/_ping did not answer OK",
            ))
        }
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<DaemonVersion, DockerError> {
        self.send_json(ApiRequest::new(
            "SystemVersion",
            http::Method::GET,
            "/version".into(),
            CallKind::Ordinary,
        ))
        .await
    }

    /// Whether the container was created with a TTY (`Config.Tty`), which
    /// decides how its output is framed.
    pub async fn container_tty(&self, id: &str) -> Result<bool, DockerError> {
        #[derive(serde::Deserialize)]
        struct Inspect {
            #[serde(rename = "Config")]
            config: Option<Config>,
        }
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(rename = "Tty", default)]
            tty: bool,
        }
        let path = format!(
            "/containers/{}/json",
            crate::request::encode_path_segment(id)
        );
        let inspect: Inspect = self
            .send_json(ApiRequest::new(
                "ContainerInspect",
                http::Method::GET,
                path,
                CallKind::Ordinary,
            ))
            .await?;
        Ok(inspect.config.is_some_and(|c| c.tty))
    }

    /// A container's output: inspects its TTY setting, then streams its logs,
    /// demultiplexed into stdout/stderr chunks (or raw [`stream::LogSource::Console`]
    /// chunks for a TTY container). Never cut by the request timeout.
    pub async fn logs(&self, id: &str, options: &LogsOptions) -> Result<LogStream, DockerError> {
        let tty = match options.tty {
            Some(tty) => tty,
            None => self.container_tty(id).await?,
        };
        let mut req = ApiRequest::new(
            "ContainerLogs",
            http::Method::GET,
            format!(
                "/containers/{}/logs",
                crate::request::encode_path_segment(id)
            ),
            CallKind::Streaming,
        );
        req.query.push(("stdout", options.stdout.to_string()));
        req.query.push(("stderr", options.stderr.to_string()));
        req.query.push(("follow", options.follow.to_string()));
        req.query
            .push(("timestamps", options.timestamps.to_string()));
        if let Some(tail) = options.tail {
            req.query.push(("tail", tail.to_string()));
        }
        let body = self.send_byte_stream(req).await?;
        Ok(stream::container_output("ContainerLogs", body, tty))
    }

    /// Attaches to a container over a hijacked connection (`Upgrade: tcp`):
    /// its output (demultiplexed unless it has a TTY) and a writer to its
    /// stdin. Attach before starting the container to see all output.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<Attached, DockerError> {
        let tty = self.container_tty(id).await?;
        let mut req = ApiRequest::new(
            "ContainerAttach",
            http::Method::POST,
            format!(
                "/containers/{}/attach",
                crate::request::encode_path_segment(id)
            ),
            CallKind::Streaming,
        );
        req.query.push(("stream", "true".into()));
        req.query.push(("stdin", stdin.to_string()));
        req.query.push(("stdout", "true".into()));
        req.query.push(("stderr", "true".into()));
        let io = self.send_upgrade(req).await?;
        let (read, write) = tokio::io::split(io);
        let endpoint = self.endpoint().error_label();
        let body: ByteStream = tokio_util::io::ReaderStream::new(read)
            .map_err(move |e| {
                DockerError::new(ErrorKind::Protocol, "ContainerAttach", e.to_string())
                    .with_endpoint(endpoint.clone())
            })
            .boxed();
        Ok(Attached {
            output: stream::container_output("ContainerAttach", body, tty),
            input: write,
        })
    }

    fn err(&self, kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> DockerError {
        DockerError::new(kind, op, msg).with_endpoint(self.endpoint().error_label())
    }

    /// Sends the request; a non-2xx status becomes a `DockerError` carrying the
    /// daemon's message. The body is returned unread (for an ordinary call the
    /// request timeout covers the exchange up to the response headers).
    pub async fn send_raw(
        &self,
        req: ApiRequest,
    ) -> Result<http::Response<hyper::body::Incoming>, DockerError> {
        let t = &self.inner.transport;
        let (op, kind) = (req.operation, req.kind);
        t.deadline(op, kind, send(t, req, &self.inner.prefix)).await
    }

    /// Decodes a JSON response body.
    pub async fn send_json<T: DeserializeOwned>(&self, req: ApiRequest) -> Result<T, DockerError> {
        send_json(&self.inner.transport, req, &self.inner.prefix).await
    }

    /// For operations whose success response has no (useful) body.
    pub async fn send_unit(&self, req: ApiRequest) -> Result<(), DockerError> {
        let t = &self.inner.transport;
        let (op, kind) = (req.operation, req.kind);
        t.deadline(op, kind, async {
            let resp = send(t, req, &self.inner.prefix).await?;
            t.collect(op, resp).await.map(drop)
        })
        .await
    }

    /// A plain-text response body (e.g. `/_ping`'s `OK`).
    pub async fn send_text(&self, req: ApiRequest) -> Result<String, DockerError> {
        let t = &self.inner.transport;
        let (op, kind) = (req.operation, req.kind);
        t.deadline(op, kind, async {
            let resp = send(t, req, &self.inner.prefix).await?;
            let body = t.collect(op, resp).await?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .await
    }

    /// Response headers only (HEAD operations such as `ContainerArchiveInfo`).
    pub async fn send_headers(&self, req: ApiRequest) -> Result<http::HeaderMap, DockerError> {
        let t = &self.inner.transport;
        let (op, kind) = (req.operation, req.kind);
        t.deadline(op, kind, async {
            let resp = send(t, req, &self.inner.prefix).await?;
            let headers = resp.headers().clone();
            t.collect(op, resp).await?;
            Ok(headers)
        })
        .await
    }

    /// The raw response body as a stream of chunks (export, archive get,
    /// image save, logs before demultiplexing).
    pub async fn send_byte_stream(&self, req: ApiRequest) -> Result<ByteStream, DockerError> {
        let t = &self.inner.transport;
        let (op, kind) = (req.operation, req.kind);
        let resp = t
            .deadline(op, kind, send(t, req, &self.inner.prefix))
            .await?;
        let endpoint = t.endpoint().error_label();
        Ok(resp
            .into_body()
            .into_data_stream()
            .map_err(move |e| {
                DockerError::new(
                    ErrorKind::Protocol,
                    op,
                    format!("the response body broke off: {e}"),
                )
                .with_endpoint(endpoint.clone())
            })
            .boxed())
    }

    /// A JSON-lines response (pull/push/import/build progress, events, stats).
    /// An in-band `error`/`errorDetail` object becomes an `Err` item.
    pub async fn send_json_stream<T: DeserializeOwned + Send + 'static>(
        &self,
        req: ApiRequest,
    ) -> Result<JsonStream<T>, DockerError> {
        let op = req.operation;
        let body = self.send_byte_stream(req).await?;
        let endpoint = self.endpoint().error_label();
        Ok(stream::json_lines(op, body)
            .map_err(move |e| match e.endpoint() {
                Some(_) => e,
                None => e.with_endpoint(endpoint.clone()),
            })
            .boxed())
    }

    /// A hijacked connection (`Upgrade: tcp`, answered 101) for attach/exec.
    pub async fn send_upgrade(
        &self,
        mut req: ApiRequest,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, DockerError> {
        let t = &self.inner.transport;
        let op = req.operation;
        req.headers.push(("Connection", "Upgrade".into()));
        req.headers.push(("Upgrade", "tcp".into()));
        // The handshake is prompt (the daemon answers before any stream
        // data), so it gets the request timeout; the upgraded stream does not.
        let resp = t
            .deadline(op, CallKind::Ordinary, send(t, req, &self.inner.prefix))
            .await?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(self.err(
                ErrorKind::Protocol,
                op,
                format!("expected 101 Switching Protocols, got {}", resp.status()),
            ));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| self.err(ErrorKind::Protocol, op, format!("the upgrade failed: {e}")))?;
        Ok(TokioIo::new(upgraded))
    }

    /// Like [`Docker::send_upgrade`], but a 200 is a valid answer too: the
    /// daemon does not hijack when the request asked it not to attach
    /// (`ExecStart` with `Detach: true`), and answers 200 without a body
    /// once the command has started.
    pub async fn send_upgrade_or_detached(
        &self,
        mut req: ApiRequest,
    ) -> Result<ExecStartOutcome, DockerError> {
        let t = &self.inner.transport;
        let op = req.operation;
        req.headers.push(("Connection", "Upgrade".into()));
        req.headers.push(("Upgrade", "tcp".into()));
        // The handshake is prompt (the daemon answers before any stream
        // data), so it gets the request timeout; the upgraded stream does not.
        let resp = t
            .deadline(op, CallKind::Ordinary, send(t, req, &self.inner.prefix))
            .await?;
        match resp.status() {
            http::StatusCode::SWITCHING_PROTOCOLS => {
                let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
                    self.err(ErrorKind::Protocol, op, format!("the upgrade failed: {e}"))
                })?;
                Ok(ExecStartOutcome::Attached(TokioIo::new(upgraded)))
            }
            // Not hijacked: the (empty) body ends promptly, so the ordinary
            // request timeout applies to reading it.
            http::StatusCode::OK | http::StatusCode::NO_CONTENT => {
                t.deadline(op, CallKind::Ordinary, t.collect(op, resp))
                    .await?;
                Ok(ExecStartOutcome::Detached)
            }
            other => Err(self.err(
                ErrorKind::Protocol,
                op,
                format!(
                    "expected 101 Switching Protocols (attached) or 200 (detached), got {other}"
                ),
            )),
        }
    }

    /// A WebSocket (RFC 6455) on the daemon connection, whatever the
    /// transport (unix socket, TCP, TLS): sends the HTTP/1.1 upgrade with a
    /// random `Sec-WebSocket-Key`, requires 101 and the matching
    /// `Sec-WebSocket-Accept`, then speaks WebSocket as the client on the
    /// upgraded connection (`ContainerAttachWebsocket`).
    pub async fn send_websocket(
        &self,
        mut req: ApiRequest,
    ) -> Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, DockerError> {
        use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
        let t = &self.inner.transport;
        let op = req.operation;
        let key = generate_key();
        let expected_accept = derive_accept_key(key.as_bytes());
        req.headers.push(("Connection", "Upgrade".into()));
        req.headers.push(("Upgrade", "websocket".into()));
        req.headers.push(("Sec-WebSocket-Version", "13".into()));
        req.headers.push(("Sec-WebSocket-Key", key));
        let resp = match t
            .deadline(op, CallKind::Ordinary, send(t, req, &self.inner.prefix))
            .await
        {
            Ok(resp) => resp,
            Err(e) => return Err(self.websocket_unsupported(op, e)),
        };
        let status = resp.status();
        if status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(self.err(
                ErrorKind::Protocol,
                op,
                format!(
                    "expected 101 Switching Protocols for the WebSocket handshake, got {status}"
                ),
            ));
        }
        let header = |name: http::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if !header(http::header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            return Err(self.err(
                ErrorKind::Protocol,
                op,
                "the daemon switched protocols, but not to `websocket`",
            ));
        }
        if header(http::header::SEC_WEBSOCKET_ACCEPT).as_deref() != Some(expected_accept.as_str()) {
            return Err(self.err(
                ErrorKind::Protocol,
                op,
                "the daemon's Sec-WebSocket-Accept does not match our Sec-WebSocket-Key",
            ));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| self.err(ErrorKind::Protocol, op, format!("the upgrade failed: {e}")))?;
        Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
    }

    /// An engine without the WebSocket endpoint answers 404 for the route
    /// itself; say that instead of its bare "page not found".
    /// (Podman 4 answers a plain-text `Not Found`; an unknown container is a
    /// JSON message naming it, and stays as it is.)
    fn websocket_unsupported(&self, op: &'static str, e: DockerError) -> DockerError {
        let route_missing = e.status() == Some(http::StatusCode::NOT_FOUND)
            && matches!(
                e.message().trim().to_ascii_lowercase().as_str(),
                "not found" | "page not found" | "404 page not found"
            );
        if !route_missing {
            return e;
        }
        let engine = self.engine();
        self.err(
            ErrorKind::Unsupported,
            op,
            format!(
                "{} {} does not support WebSocket attach (GET /containers/{{id}}/attach/ws answered 404 Not Found)",
                engine.kind, engine.version
            ),
        )
        .with_hint("Use `container_attach` (a hijacked connection) with this engine")
    }
}

/// What the generated bindings' requests become on the wire: the version
/// prefix, the query (Go-compatible encoding), headers and body.
fn build(
    t: &HttpTransport,
    req: ApiRequest,
    prefix: &str,
) -> Result<http::Request<Body>, DockerError> {
    let op = req.operation;
    let mut uri = String::with_capacity(t.base().len() + prefix.len() + req.path.len() + 32);
    uri.push_str(t.base());
    uri.push_str(prefix);
    uri.push_str(&req.path);
    for (i, (k, v)) in req.query.iter().enumerate() {
        uri.push(if i == 0 { '?' } else { '&' });
        uri.push_str(&encode_query(k));
        uri.push('=');
        uri.push_str(&encode_query(v));
    }
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(uri)
        .header(http::header::USER_AGENT, USER_AGENT);
    for (name, value) in &req.headers {
        let value = http::HeaderValue::from_str(value).map_err(|_| {
            // Never echo the value: it may be a registry credential.
            t.err(
                ErrorKind::Config,
                op,
                format!("the value of header {name} is not a valid header value"),
            )
        })?;
        builder = builder.header(*name, value);
    }
    let never = |n: std::convert::Infallible| -> std::io::Error { match n {} };
    let body: Body = match req.body {
        RequestBody::Empty => Empty::new().map_err(never).boxed_unsync(),
        RequestBody::Json(data) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Full::new(data).map_err(never).boxed_unsync()
        }
        RequestBody::Bytes { content_type, data } => {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
            Full::new(data).map_err(never).boxed_unsync()
        }
        RequestBody::Stream {
            content_type,
            stream,
        } => {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
            StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
        }
    };
    builder.body(body).map_err(|e| {
        t.err(
            ErrorKind::Config,
            op,
            format!("cannot build the request: {e}"),
        )
    })
}

/// Builds and sends an [`ApiRequest`]; the body is left unread on success.
async fn send(
    t: &HttpTransport,
    req: ApiRequest,
    prefix: &str,
) -> Result<http::Response<Incoming>, DockerError> {
    let op = req.operation;
    let request = build(t, req, prefix)?;
    t.send(op, request).await
}

/// `/_ping` without a version prefix: HEAD first, GET when HEAD fails
/// with a status (older daemons, proxies).
async fn ping(t: &HttpTransport) -> Result<PingInfo, DockerError> {
    let head = ApiRequest::new(
        "SystemPing",
        http::Method::HEAD,
        "/_ping".into(),
        CallKind::Ordinary,
    );
    let head_result = t
        .deadline("SystemPing", CallKind::Ordinary, send(t, head, ""))
        .await;
    match head_result {
        Ok(resp) => return Ok(PingInfo::from_headers(resp.headers())),
        Err(e) if e.status().is_none() => return Err(e),
        Err(_) => {}
    }
    let get = ApiRequest::new(
        "SystemPing",
        http::Method::GET,
        "/_ping".into(),
        CallKind::Ordinary,
    );
    t.deadline("SystemPing", CallKind::Ordinary, async {
        let resp = send(t, get, "").await?;
        let info = PingInfo::from_headers(resp.headers());
        t.collect("SystemPing", resp).await?;
        Ok(info)
    })
    .await
}

async fn send_json<T: DeserializeOwned>(
    t: &HttpTransport,
    req: ApiRequest,
    prefix: &str,
) -> Result<T, DockerError> {
    let (op, kind) = (req.operation, req.kind);
    t.deadline(op, kind, async {
        let resp = send(t, req, prefix).await?;
        let body = t.collect(op, resp).await?;
        serde_json::from_slice(&body).map_err(|e| {
            let cause = DecodeError::new::<T>(&e);
            DockerError::decode(op, "the daemon's answer is not the expected JSON", cause)
                .with_endpoint(t.error_endpoint())
        })
    })
    .await
}

const USER_AGENT: &str = concat!("oz-agent-worker/", env!("CARGO_PKG_VERSION"));

use oz_foundation::percent::encode as encode_query;

#[cfg(test)]
mod tests {
    #[test]
    fn docker_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<super::Docker>();
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::encode_query("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
