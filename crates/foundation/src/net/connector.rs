//! One connector for every scheme, so one `hyper_util` client type serves
//! every transport: `unix` (through hyperlocal, which carries the socket path
//! in the URI host), `http` (plain TCP), `https` (TCP + rustls) and `ssh`
//! (one `ssh … docker system dial-stdio` process per connection, see
//! [`crate::net::ssh`]; the target is set on the connector, the URI's
//! host is a placeholder).

use crate::net::ssh::{self, SshFailure, SshStream, SshTarget};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower_service::Service;

/// Timeouts per kind of call. There is no global timeout: a streaming call
/// (wait, logs, pull, events, attach) is only bounded while connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection (TCP/unix connect plus TLS handshake).
    pub connect: Duration,
    /// A whole ordinary exchange: request, headers and body.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

/// Why a connection could not be made; found again by the client in the
/// error's source chain to build an actionable message.
#[derive(Debug)]
pub enum ConnectError {
    /// Socket-level failure (missing path, refused, permission denied).
    Io(io::Error),
    /// The TLS handshake failed (the source is the rustls error).
    Tls(io::Error),
    /// No connection within the connect timeout.
    Timeout(Duration),
    /// `ssh` could not be started.
    Ssh(SshFailure),
    /// A scheme this connector does not serve.
    Unsupported(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Timeout(d) => write!(f, "no connection within {d:?}"),
            ConnectError::Ssh(e) => write!(f, "{e}"),
            ConnectError::Unsupported(s) => write!(f, "unsupported scheme {s}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) | ConnectError::Tls(e) => Some(e),
            ConnectError::Ssh(e) => Some(e),
            _ => None,
        }
    }
}

/// The connector behind the client: connects to whatever the URI names.
#[derive(Clone)]
pub struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    ssh: Option<SshTarget>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("ssh", &self.ssh)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Connector {
    /// `tls` is used for `https` URIs; without it they are refused.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, connect_timeout: Duration) -> Self {
        Connector {
            tls: tls.map(tokio_rustls::TlsConnector::from),
            ssh: None,
            connect_timeout,
        }
    }

    /// Where `ssh` URIs go: every connection runs `ssh` to this target.
    pub fn with_ssh(mut self, target: SshTarget) -> Self {
        self.ssh = Some(target);
        self
    }

    async fn connect(self, uri: Uri) -> Result<Stream, ConnectError> {
        match uri.scheme_str() {
            Some("unix") => {
                let mut unix = hyperlocal::UnixConnector;
                let stream = unix.call(uri).await.map_err(ConnectError::Io)?;
                Ok(Stream::Unix(stream))
            }
            Some(scheme @ ("http" | "https")) => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(2375);
                let tcp = TcpStream::connect((host, port))
                    .await
                    .map_err(ConnectError::Io)?;
                let _ = tcp.set_nodelay(true);
                if scheme == "http" {
                    return Ok(Stream::Tcp(TokioIo::new(tcp)));
                }
                let tls = self.tls.ok_or_else(|| {
                    ConnectError::Unsupported("https without TLS settings".into())
                })?;
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e))
                    })?;
                let stream = tls.connect(name, tcp).await.map_err(ConnectError::Tls)?;
                Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
            }
            Some("ssh") => {
                let target = self
                    .ssh
                    .as_ref()
                    .ok_or_else(|| ConnectError::Unsupported("ssh without an ssh target".into()))?;
                let stream = ssh::spawn(target, self.connect_timeout).map_err(ConnectError::Ssh)?;
                Ok(Stream::Ssh(Box::new(TokioIo::new(stream))))
            }
            other => Err(ConnectError::Unsupported(other.unwrap_or("").to_string())),
        }
    }
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let limit = this.connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, this.connect(uri)).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::Timeout(limit)),
            }
        })
    }
}

/// A connection over any transport.
pub enum Stream {
    Unix(hyperlocal::UnixStream),
    Tcp(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
    /// `ssh … docker system dial-stdio`: the child's stdout and stdin.
    Ssh(Box<TokioIo<SshStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::Ssh($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Write::poll_write(s, cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Write::poll_flush(s, cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Write::poll_shutdown(s, cx))
    }
}
