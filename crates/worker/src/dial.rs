//! Opening the WebSocket to the orchestrator: a TCP connection straight to
//! its host, or a tunnel through the proxy [`crate::proxy`] chose
//! (HTTP `CONNECT` through hyper's client and upgrade, SOCKS5 through
//! tokio-socks, which offers "no authentication" and user/password together
//! as Go's dialer does), then TLS for `wss://` and the WebSocket handshake
//! (tokio-tungstenite) over whichever stream that gave.

use crate::proxy::{OutboundProxy, ProxyScheme, ProxyUrl};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// Any byte stream a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The worker's WebSocket, direct or through a proxy.
pub type Socket = WebSocketStream<MaybeTlsStream<Box<dyn Io>>>;

/// Why no WebSocket was opened.
#[derive(Debug)]
pub enum DialError {
    /// The proxy could not be reached or refused the tunnel: a sentence
    /// naming the proxy (never its password) and what to check.
    Proxy(String),
    /// Everything from the TCP connect to the WebSocket handshake.
    Ws(WsError),
}

/// Opens `request`'s `ws://` or `wss://` URL, through a proxy when `proxy`
/// says so. `connect_timeout` bounds the proxy's own handshake. `tls` gives
/// the TLS client configuration; it is only asked for when a TLS
/// handshake is made (a `wss://` URL or an `https://` proxy), so a plain
/// `ws://` worker never loads the CA certificates.
pub async fn open(
    request: Request,
    proxy: &OutboundProxy,
    tls: fn() -> std::sync::Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<(Socket, Response), DialError> {
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream: Box<dyn Io> = match proxy.for_target(secure, &host, port) {
        None => {
            let tcp = TcpStream::connect((bare_host, port))
                .await
                .map_err(|e| DialError::Ws(WsError::Io(e)))?;
            // Nagle off: claims and reports are small frames that must go
            // out at once, not wait for the previous frame's ACK.
            let _ = tcp.set_nodelay(true);
            Box::new(tcp)
        }
        Some(p) => {
            match tokio::time::timeout(connect_timeout, through(p, &tls, bare_host, port)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(DialError::Proxy(format!(
                        "{p} did not open a tunnel to {host}:{port} within {connect_timeout:?}"
                    )))
                }
            }
        }
    };
    // Without TLS (ws://) the connector is never used.
    let connector = if secure {
        Some(Connector::Rustls(tls()))
    } else {
        Some(Connector::Plain)
    };
    tokio_tungstenite::client_async_tls_with_config(request, stream, None, connector)
        .await
        .map_err(DialError::Ws)
}

/// A byte stream to `host:port` through the proxy `p`.
async fn through(
    p: &ProxyUrl,
    tls: &fn() -> std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
) -> Result<Box<dyn Io>, DialError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        DialError::Proxy(format!(
            "cannot reach {p}: {e}. Check the proxy's address and that it is running"
        ))
    };
    match p.scheme {
        ProxyScheme::Http => {
            let tcp = proxy_tcp(p).await.map_err(|e| unreachable(&e))?;
            connect_tunnel(p, TokioIo::new(tcp), host, port).await
        }
        ProxyScheme::Https => {
            let tcp = proxy_tcp(p).await.map_err(|e| unreachable(&e))?;
            let name = rustls::pki_types::ServerName::try_from(p.host.clone())
                .map_err(|e| unreachable(&e))?;
            let stream = tokio_rustls::TlsConnector::from(tls())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let hint = oz_foundation::tls_roots::certificate_hint(&e)
                        .map(|h| format!(": {h}"))
                        .unwrap_or_default();
                    DialError::Proxy(format!("TLS to {p} failed: {e}{hint}"))
                })?;
            connect_tunnel(p, TokioIo::new(stream), host, port).await
        }
        ProxyScheme::Socks5 => {
            let tcp = proxy_tcp(p).await.map_err(|e| unreachable(&e))?;
            // The proxy resolves the name, as Go's SOCKS5 dialer has it.
            let target = (host, port);
            let result = match (&p.user, &p.password) {
                (Some(user), password) => {
                    let password = password.as_ref().map(|s| s.expose_str()).unwrap_or("");
                    tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                        tcp, target, user, password,
                    )
                    .await
                }
                (None, _) => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
            };
            let stream = result.map_err(|e| DialError::Proxy(socks_refusal(p, host, port, &e)))?;
            Ok(Box::new(stream))
        }
    }
}

/// A SOCKS5 failure (RFC 1928 §6, RFC 1929 §2), said with what to check.
fn socks_refusal(p: &ProxyUrl, host: &str, port: u16, e: &tokio_socks::Error) -> String {
    use tokio_socks::Error as E;
    let target = authority(host, port);
    match e {
        E::PasswordAuthFailure(_) => {
            format!("{p} refused the user and password in {}; check them", p.source)
        }
        E::NoAcceptableAuthMethods | E::AuthorizationRequired if p.user.is_none() => format!(
            "{p} asks for credentials: put them in {} as socks5://user:password@host:port",
            p.source
        ),
        E::NoAcceptableAuthMethods => {
            format!("{p} accepts neither no authentication nor a user and password")
        }
        E::ConnectionNotAllowedByRuleset => format!(
            "{p} does not allow connections to {target}; ask its administrator to allow this host and port, or list the host in NO_PROXY if it is reachable directly"
        ),
        E::NetworkUnreachable | E::HostUnreachable | E::ConnectionRefused | E::TtlExpired => {
            format!("{p} could not reach {target}: {e}")
        }
        E::Io(io) => format!(
            "{p} closed the connection during the SOCKS5 handshake ({io}); if it is an HTTP proxy, write http:// in {}",
            p.source
        ),
        E::InvalidResponseVersion | E::UnknownAuthMethod => format!(
            "{p} does not answer as a SOCKS5 proxy; if it is an HTTP proxy, write http:// in {}",
            p.source
        ),
        other => format!("{p}: SOCKS5 to {target} failed: {other}"),
    }
}

async fn proxy_tcp(p: &ProxyUrl) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect((p.host.as_str(), p.port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// `CONNECT host:port` (RFC 9110 §9.3.6) over `io`; the tunnel on a 2xx.
async fn connect_tunnel<T>(
    p: &ProxyUrl,
    io: TokioIo<T>,
    host: &str,
    port: u16,
) -> Result<Box<dyn Io>, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |what: String| DialError::Proxy(format!("{p}: {what}"));
    let not_http = |e: &hyper::Error| {
        if e.is_parse() || e.is_parse_status() {
            failed(format!(
                "it answered CONNECT with something that is not HTTP ({}); if it is a SOCKS5 proxy, write socks5:// in {}, if it wants TLS, https://",
                oz_foundation::error_chain::error_chain(e),
                p.source
            ))
        } else {
            failed(format!(
                "it closed the connection instead of answering CONNECT ({}); if it wants TLS, write https:// in {}",
                oz_foundation::error_chain::error_chain(e),
                p.source
            ))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io)
        .await
        .map_err(|e| not_http(&e))?;
    // The connection future hands the stream to the upgrade when the
    // proxy answers 2xx, and ends.
    let driver = tokio::spawn(conn.with_upgrades());
    let target = authority(host, port);
    let mut request = http::Request::connect(target.as_str())
        .header(http::header::HOST, target.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("oz-agent-worker/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(user) = &p.user {
        let password = p.password.as_ref().map(|s| s.expose_str()).unwrap_or("");
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = http::HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
            failed("the user or password holds characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        request = request.header(http::header::PROXY_AUTHORIZATION, value);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| not_http(&e))?;
    let status = response.status();
    if !status.is_success() {
        driver.abort();
        let reason = status.canonical_reason().unwrap_or("");
        let hint = match status.as_u16() {
            // 407 is the standard answer (RFC 9110 §15.5.8); some proxies
            // (tinyproxy) answer a CONNECT with 401.
            401 | 407 if p.user.is_some() => format!(
                "it refused the user and password in {}; check them",
                p.source
            ),
            401 | 407 => format!(
                "it asks for credentials: put them in {} as http://user:password@host:port",
                p.source
            ),
            403 => format!(
                "it does not allow tunnels to {target}; ask its administrator to allow this host and port, or list the host in NO_PROXY if it is reachable directly"
            ),
            _ => format!("it did not open a tunnel to {target}"),
        };
        return Err(failed(format!(
            "CONNECT {target} answered {} {reason}: {hint}",
            status.as_u16()
        )));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| {
        failed(format!(
            "the tunnel did not open: {}",
            oz_foundation::error_chain::error_chain(&e)
        ))
    })?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// `host:port`, IPv6 in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
