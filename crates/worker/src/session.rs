//! The outbound session: connect, drive the connection, and when it ends
//! reconnect with jittered exponential backoff, forever, until asked to close.

use crate::config::WorkerConfig;
use crate::connection::{drive, Ended, Events, Socket, Timing};
use crate::dial::DialError;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use oz_foundation::backoff::ExponentialBackoff;
use oz_protocol::extensions::EXTENSIONS_HEADER;
use oz_protocol::{Extensions, WORKER_VERSION, WORKER_VERSION_HEADER};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;

pub struct Session<'a> {
    pub config: &'a WorkerConfig,
    pub timing: Timing,
    /// What goes out on every connection.
    pub outbox: &'a Outbox,
    /// The core's event loop, which every connection feeds.
    pub events: &'a Events,
    /// Fires when the worker has finished its work and wants a normal close.
    pub close: CancellationToken,
    pub metrics: &'a Metrics,
    pub health: &'a crate::health::Health,
}

enum ConnectError {
    Unauthorized(StatusCode),
    Other(String),
}

impl Session<'_> {
    pub async fn run(&self) {
        let mut backoff = ExponentialBackoff::protocol_default();
        let mut connections = 0;
        if let Some(proxy) = self.config.proxy.describe() {
            tracing::info!("outbound proxy: {proxy} (localhost, loopback and NO_PROXY go direct)");
        }
        for warning in self.config.proxy.warnings() {
            tracing::warn!("{warning}");
        }
        loop {
            self.health.beat();
            // A shutdown does not wait for a connection attempt (a proxy
            // that never answers holds one for the whole handshake budget).
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                _ = self.close.cancelled() => return,
            };
            let delay = match attempt {
                Ok((ws, extensions)) => {
                    connections += 1;
                    if extensions.is_empty() {
                        tracing::info!(worker_id = %oz_foundation::escape::Escaped(&self.config.worker_id), url = %self.config.web_socket_url, "connected to the orchestrator");
                    } else {
                        tracing::info!(worker_id = %oz_foundation::escape::Escaped(&self.config.worker_id), url = %self.config.web_socket_url, extensions = %extensions.header_value(), "connected to the orchestrator");
                    }
                    self.metrics.set_connected(true);
                    self.health.set_connected(true);
                    backoff.reset();
                    let cx = crate::connection::Context {
                        timing: self.timing,
                        outbox: self.outbox,
                        events: self.events,
                        close: &self.close,
                        health: self.health,
                    };
                    let ended = drive(ws, connections, extensions, &cx).await;
                    self.metrics.set_connected(false);
                    self.health.set_connected(false);
                    match ended {
                        Ended::Closed => {
                            tracing::info!("connection closed normally");
                            return;
                        }
                        Ended::ClosedByServer(why) | Ended::Dropped(why) => {
                            self.metrics.reconnect("remote_close");
                            let d = backoff.next_delay();
                            tracing::warn!(
                                "connection lost: {why}; reconnecting in {:.1}s",
                                d.as_secs_f64()
                            );
                            d
                        }
                    }
                }
                Err(ConnectError::Unauthorized(status)) => {
                    self.metrics.reconnect("dial_failed");
                    let d = backoff.slowest();
                    tracing::error!(
                        "the orchestrator refused the API key ({status}): it is invalid, expired or revoked. \
                         Create a new key and restart with --api-key or WARP_API_KEY; retrying in {:.0}s",
                        d.as_secs_f64()
                    );
                    d
                }
                Err(ConnectError::Other(why)) => {
                    self.metrics.reconnect("dial_failed");
                    let d = backoff.next_delay();
                    tracing::warn!(
                        "cannot connect to {}: {why}; retrying in {:.1}s",
                        self.config.web_socket_url,
                        d.as_secs_f64()
                    );
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.close.cancelled() => return,
            }
        }
    }

    async fn connect(&self) -> Result<(Socket, Extensions), ConnectError> {
        let url = with_worker_id(&self.config.web_socket_url, &self.config.worker_id);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.config.api_key.expose_str()))
            .map_err(|_| {
                ConnectError::Other(
                    "the API key contains characters not allowed in an HTTP header".into(),
                )
            })?;
        request.headers_mut().insert("Authorization", bearer);
        // Every dial says which build it is (the Go worker does the same),
        // so the orchestrator can record the build that claims an execution.
        request.headers_mut().insert(
            WORKER_VERSION_HEADER,
            HeaderValue::from_static(WORKER_VERSION),
        );
        // The proxy's part has its own deadline inside this one, so a proxy
        // that never answers is named when it runs out.
        let budget = self.timing.write_timeout * 3;
        let connect = crate::dial::open(
            request,
            &self.config.proxy,
            super::tls::client_config,
            budget,
        );
        match tokio::time::timeout(budget + std::time::Duration::from_secs(1), connect).await {
            Err(_) => Err(ConnectError::Other("the handshake timed out".into())),
            Ok(Ok((ws, response))) => {
                let offered = Extensions::parse(
                    response
                        .headers()
                        .get_all(EXTENSIONS_HEADER)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                Ok((ws, offered))
            }
            Ok(Err(DialError::Proxy(why))) => Err(ConnectError::Other(why)),
            Ok(Err(DialError::Ws(tokio_tungstenite::tungstenite::Error::Http(resp))))
                if matches!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ) =>
            {
                Err(ConnectError::Unauthorized(resp.status()))
            }
            Ok(Err(DialError::Ws(tokio_tungstenite::tungstenite::Error::Http(resp)))) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Err(ConnectError::Other(format!(
                    "HTTP {} {}",
                    resp.status(),
                    body.trim()
                )))
            }
            Ok(Err(DialError::Ws(e))) => {
                Err(ConnectError::Other(super::tls::describe_connect_error(&e)))
            }
        }
    }
}

fn with_worker_id(base: &str, worker_id: &str) -> String {
    let encoded = oz_foundation::percent::encode(worker_id);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}worker_id={encoded}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_id_is_a_query_parameter() {
        assert_eq!(
            super::with_worker_id("ws://h/ws", "prod-runner_1.x~"),
            "ws://h/ws?worker_id=prod-runner_1.x~"
        );
        assert_eq!(
            super::with_worker_id("ws://h/ws", "a b"),
            "ws://h/ws?worker_id=a%20b"
        );
        assert_eq!(
            super::with_worker_id("ws://h/ws?x=1", "w"),
            "ws://h/ws?x=1&worker_id=w"
        );
    }
}
