//! HTTP to the container engine: one hyper client over the [`Connector`]
//! (unix, tcp, TLS, ssh), the request deadline for ordinary calls (streams
//! are never cut), and the diagnosis of what went wrong on the way: a
//! missing socket, a refused connection, a TLS certificate at fault (naming
//! the file or the context's TLS folder), ssh's own message. Callers build
//! the requests; this module only carries them.

use crate::transport::endpoint::{Endpoint, Host};
use crate::transport::error::{DockerError, ErrorKind};
use crate::transport::tls;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oz_foundation::net::connector::{ConnectError, Connector, Stream, Timeouts};
use oz_foundation::net::ssh::{SshFailure, SshTarget};
use std::future::Future;
use tower_service::Service;

/// A request body: anything from empty to a stream of chunks.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How long a call may take: decides which timeouts apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A request answered promptly (inspect, create, start, list): connect
    /// timeout plus the ordinary request timeout for the whole exchange.
    Ordinary,
    /// A call whose answer may take indefinitely long (wait, logs with follow,
    /// pull, events, attach, export, archive): connect timeout only, never cut.
    Streaming,
}

/// One endpoint's HTTP client. Cheap to share behind an `Arc`.
pub struct HttpTransport {
    client: Client<Connector, Body>,
    /// The client's connector, for [`HttpTransport::tls_refusal`]'s probe.
    connector: Connector,
    /// `scheme://authority` every request URI starts with.
    base: String,
    endpoint: Endpoint,
    timeouts: Timeouts,
}

impl HttpTransport {
    /// `scheme://authority` every request URI starts with.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

impl HttpTransport {
    /// A client for `endpoint`: one connection pool over the connector that
    /// speaks unix, tcp, TLS or ssh.
    pub fn new(endpoint: Endpoint, timeouts: Timeouts) -> Result<HttpTransport, DockerError> {
        let label = endpoint.error_label();
        let (base, tls) = match (&endpoint.host, &endpoint.tls) {
            (Host::Unix(path), _) => {
                let uri: hyper::Uri = hyperlocal::Uri::new(path, "/").into();
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
                (format!("unix://{authority}"), None)
            }
            (Host::Tcp { host, port }, tls_settings) => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                match tls_settings {
                    Some(settings) => (
                        format!("https://{host}:{port}"),
                        Some(
                            tls::client_config(settings)
                                .map_err(|e| e.with_endpoint(label.clone()))?,
                        ),
                    ),
                    None => (format!("http://{host}:{port}"), None),
                }
            }
            // The connector holds the target; the URI's host is a placeholder
            // (it becomes the `Host` header the daemon ignores).
            (Host::Ssh { .. }, _) => ("ssh://docker".to_string(), None),
        };
        let mut connector = Connector::new(tls, timeouts.connect);
        if let Host::Ssh { user, host, port } = &endpoint.host {
            connector = connector.with_ssh(SshTarget {
                user: user.clone(),
                host: host.clone(),
                port: *port,
            });
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector.clone());
        Ok(HttpTransport {
            client,
            connector,
            base,
            endpoint,
            timeouts,
        })
    }

    /// Where this transport's calls go, as errors name it.
    pub fn error_endpoint(&self) -> crate::error::ErrorEndpoint {
        self.endpoint.error_label()
    }

    /// An error of operation `op` at this endpoint.
    pub fn err(&self, kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> DockerError {
        DockerError::new(kind, op, msg).with_endpoint(self.endpoint.error_label())
    }

    /// Applies the request timeout to ordinary calls only.
    pub async fn deadline<T>(
        &self,
        op: &'static str,
        kind: CallKind,
        fut: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        match kind {
            CallKind::Streaming => fut.await,
            CallKind::Ordinary => match tokio::time::timeout(self.timeouts.request, fut).await {
                Ok(r) => r,
                Err(_) => Err(DockerError::timeout(op, self.timeouts.request)
                    .with_endpoint(self.endpoint.error_label())),
            },
        }
    }

    /// Sends and checks the status; the body is left unread on success. A
    /// failure says which endpoint, how it was chosen and what to check.
    pub async fn send(
        &self,
        op: &'static str,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, DockerError> {
        tracing::debug!(operation = op, method = %request.method(), path = request.uri().path(), "docker request");
        let resp = match self.client.request(request).await {
            Ok(resp) => resp,
            Err(e) => {
                let err = self.transport_error(op, &e);
                if self.endpoint.tls.is_some() && err.kind() != &ErrorKind::Tls && !e.is_connect() {
                    if let Some(tls) = self.tls_refusal().await {
                        return Err(tls.for_operation(op));
                    }
                }
                return Err(err);
            }
        };
        let status = resp.status();
        if status.is_success() || status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let body = match tokio::time::timeout(
            self.timeouts.request,
            http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        Err(self.status_error(op, status, &body))
    }

    fn status_error(&self, op: &'static str, status: http::StatusCode, body: &[u8]) -> DockerError {
        #[derive(serde::Deserialize)]
        struct Message {
            message: String,
        }
        let message = match serde_json::from_slice::<Message>(body) {
            Ok(m) => m.message,
            Err(_) => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no message")
                        .to_string()
                } else {
                    text
                }
            }
        };
        if status == http::StatusCode::BAD_REQUEST
            && message.contains("HTTP request to an HTTPS server")
        {
            return self
                .err(
                    ErrorKind::Connect,
                    op,
                    "the daemon expects TLS on this port, but the connection was plain HTTP",
                )
                .with_hint(self.endpoint.enable_tls_hint());
        }
        self.err(ErrorKind::Status(status), op, message)
    }

    /// Reads a whole response body.
    pub async fn collect(
        &self,
        op: &'static str,
        resp: http::Response<Incoming>,
    ) -> Result<Bytes, DockerError> {
        resp.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| {
                let err: &(dyn std::error::Error + 'static) = &e;
                if let Some(failure) = ssh_failure(err) {
                    return self.ssh_error(op, failure);
                }
                match self.tls_problem(err) {
                    Some(tls) => tls.for_operation(op),
                    None => self.err(
                        ErrorKind::Protocol,
                        op,
                        format!("the response body broke off: {e}"),
                    ),
                }
            })
    }

    /// Why the daemon dropped a TLS connection we had made, if it refused
    /// us. With TLS 1.3 the client's handshake ends before the daemon has
    /// checked our certificate: its refusal (an alert) comes afterwards and
    /// may close the connection before hyper sends the request, and hyper
    /// then reports a closed connection without the alert. A fresh
    /// connection that sends a request and reads the answer receives the
    /// alert itself. `None` when that connection is not refused.
    async fn tls_refusal(&self) -> Option<TlsProblem> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uri: hyper::Uri = self.base.parse().ok()?;
        let mut connector = self.connector.clone();
        let stream = match connector.call(uri).await {
            Ok(Stream::Tls(stream)) => stream,
            Ok(_) => return None,
            Err(e) => return self.tls_problem(&e),
        };
        let mut tls = stream.into_inner();
        let probe = async {
            tls.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = [0u8; 1024];
            while tls.read(&mut buf).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(self.timeouts.connect, probe).await {
            Ok(Err(e)) => self.tls_problem(&e),
            _ => None,
        }
    }

    /// Turns a client error into an actionable one: which endpoint, how it
    /// was chosen, and what to check.
    fn transport_error(
        &self,
        op: &'static str,
        e: &hyper_util::client::legacy::Error,
    ) -> DockerError {
        let root: &(dyn std::error::Error + 'static) = e;
        let connect = chain(root).find_map(|s| s.downcast_ref::<ConnectError>());
        let check = "run `oz-agent-worker check` to see which daemon the worker resolves";
        if let Some(failure) = ssh_failure(root) {
            return self.ssh_error(op, failure);
        }
        match connect {
            Some(ConnectError::Io(io)) => {
                let hint = match (io.kind(), &self.endpoint.host) {
                    (std::io::ErrorKind::NotFound, Host::Unix(_)) => format!(
                        "Is the daemon running? Set DOCKER_HOST or DOCKER_CONTEXT to the right endpoint, or {check}."
                    ),
                    (std::io::ErrorKind::PermissionDenied, Host::Unix(p)) => format!(
                        "Your user may not access {}: add it to the socket's group (e.g. `docker`) or run the worker as a user that can. Or {check}.",
                        p.display()
                    ),
                    (std::io::ErrorKind::ConnectionRefused, _) => format!(
                        "Is the daemon running and listening there? Set DOCKER_HOST or DOCKER_CONTEXT to the right endpoint, or {check}."
                    ),
                    _ => format!("Is the daemon running and reachable? Or {check}."),
                };
                self.err(ErrorKind::Connect, op, describe_io(io))
                    .with_hint(hint)
            }
            Some(ConnectError::Timeout(d)) => self
                .err(
                    ErrorKind::Connect,
                    op,
                    format!("no connection within {d:?}"),
                )
                .with_hint(format!(
                    "Is the host reachable and the port open? Or {check}."
                )),
            Some(ConnectError::Ssh(failure)) => self.ssh_error(op, failure),
            Some(ConnectError::Unsupported(s)) => self.err(
                ErrorKind::Unsupported,
                op,
                format!("unsupported scheme {s}"),
            ),
            Some(ConnectError::Tls(_)) | None => match self.tls_problem(root) {
                Some(tls) => tls.for_operation(op),
                None => {
                    let kind = if e.is_connect() {
                        ErrorKind::Connect
                    } else {
                        ErrorKind::Protocol
                    };
                    let mut err = self.err(kind, op, oz_foundation::error_chain::error_chain(root));
                    if self.endpoint.tls.is_none() && matches!(self.endpoint.host, Host::Tcp { .. })
                    {
                        err = err.with_hint(format!(
                            "If the daemon listens with TLS: {}",
                            self.endpoint.enable_tls_hint()
                        ));
                    }
                    err
                }
            },
        }
    }

    /// ssh failed (could not start, or exited non-zero): quote it and say
    /// what to check, from what it said.
    fn ssh_error(&self, op: &'static str, failure: &SshFailure) -> DockerError {
        let command = match &self.endpoint.host {
            Host::Ssh { user, host, port } => SshTarget {
                user: user.clone(),
                host: host.clone(),
                port: *port,
            }
            .command_line(),
            _ => "ssh HOST docker system dial-stdio".to_string(),
        };
        let msg = failure.message.to_ascii_lowercase();
        let hint = if msg.contains("host key verification failed")
            || msg.contains("remote host identification has changed")
        {
            "ssh does not trust the host's key: check it and add it to known_hosts (ssh's own config decides host checking; connecting once by hand with `ssh` shows the key)".to_string()
        } else if msg.contains("permission denied") {
            "ssh could not log in: check the user and that ssh's config or agent offers a key the remote's authorized_keys accepts (no password prompts: ssh runs with BatchMode=yes)".to_string()
        } else if msg.contains("could not resolve hostname") {
            "Check the host name in DOCKER_HOST or the context".to_string()
        } else if msg.contains("connection refused")
            || msg.contains("timed out")
            || msg.contains("no route to host")
        {
            "Is sshd running on that host and port? Check the host and port in DOCKER_HOST or the context".to_string()
        } else if failure.exit_code == Some(127) || msg.contains("not found") {
            "The remote host needs the `docker` CLI on the login shell's PATH: it runs `docker system dial-stdio`".to_string()
        } else {
            format!("Run `{command}` by hand to see what ssh says")
        };
        self.err(ErrorKind::Connect, op, format!("`{command}`: {failure}"))
            .with_hint(hint)
    }

    /// Recognises a rustls failure anywhere in the chain and says which file
    /// to fix.
    fn tls_problem(&self, root: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
        let rustls_err = chain(root).find_map(|s| {
            s.downcast_ref::<rustls::Error>().or_else(|| {
                s.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            })
        })?;
        let tls = self.endpoint.tls.as_ref();
        let dir = tls.map(|t| t.dir.display().to_string()).unwrap_or_default();
        let fix = |what: &str| tls.map(|t| t.fix_files(what)).unwrap_or_default();
        let ca = tls
            .and_then(|t| t.ca.as_ref())
            .map(|p| p.display().to_string());
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let (message, hint) = match rustls_err {
            E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => (
                match &ca {
                    Some(ca) => format!("the daemon's certificate is not signed by the CA in {ca}"),
                    None => "the daemon's certificate is not signed by a known CA (no ca.pem was found)".to_string(),
                },
                fix("the CA that signed the daemon's certificate (ca.pem)"),
            ),
            E::InvalidCertificate(C::NotValidForName)
            | E::InvalidCertificate(C::NotValidForNameContext { .. }) => (
                format!("the daemon's certificate is not valid for {}", self.endpoint.host),
                format!("Use the host name or address the certificate was issued for in {}.", self.endpoint.host_setting()),
            ),
            E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => (
                "the daemon's certificate has expired".to_string(),
                "Renew the daemon's certificate.".to_string(),
            ),
            E::AlertReceived(A::CertificateRequired | A::BadCertificate | A::HandshakeFailure | A::UnknownCA) => {
                let has_cert = tls.is_some_and(|t| t.cert.is_some());
                (
                    if has_cert {
                        format!("the daemon rejected our client certificate ({rustls_err})")
                    } else {
                        format!("the daemon requires a client certificate and there is no cert.pem/key.pem in {}", tls.map(|t| t.location()).unwrap_or_else(|| dir.clone()))
                    },
                    fix("a client certificate (cert.pem) and key (key.pem) signed by the daemon's CA"),
                )
            }
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => (
                format!("the peer did not answer TLS ({rustls_err})"),
                "Does this port serve TLS? A plain daemon port needs DOCKER_TLS_VERIFY and DOCKER_TLS unset.".to_string(),
            ),
            other => (
                format!("TLS failed: {other}"),
                format!("Check {}.", tls.map(|t| t.location()).unwrap_or(dir)),
            ),
        };
        Some(TlsProblem(
            self.err(ErrorKind::Tls, "connect", message).with_hint(hint),
        ))
    }
}

/// A TLS error built before the operation name was known.
struct TlsProblem(DockerError);

impl TlsProblem {
    fn for_operation(self, op: &'static str) -> DockerError {
        let e = self.0;
        let mut out = DockerError::new(ErrorKind::Tls, op, e.message().to_string());
        if let Some(ep) = e.endpoint() {
            out = out.with_endpoint(ep.clone());
        }
        if let Some(h) = e.hint() {
            out = out.with_hint(h.to_string());
        }
        out
    }
}

/// An [`SshFailure`] anywhere in the chain, also inside an `io::Error`
/// (whose `source` skips its own payload).
fn ssh_failure<'a>(root: &'a (dyn std::error::Error + 'static)) -> Option<&'a SshFailure> {
    chain(root).find_map(|s| {
        s.downcast_ref::<SshFailure>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<SshFailure>())
        })
    })
}

fn chain<'a>(
    root: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(root), |e| e.source())
}

/// `No such file or directory` rather than `... (os error 2)`.
fn describe_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
