//! Metrics export: a small instrument model with OpenTelemetry's semantics
//! ([`model`]), the Prometheus `/metrics` page ([`exposition`]), OTLP/HTTP
//! push ([`otlp`]) and the choice between them from the OpenTelemetry
//! environment variables ([`exporter`]). Which metrics exist is the
//! worker's business (`worker::metrics`); this module knows none of them.

pub mod exporter;
pub mod exposition;
pub mod model;
pub mod otlp;

use exporter::ExporterChoice;
use model::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Anything that can be exported.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Snapshot;
}

/// The exporter that runs; [`Running::shutdown`] stops it (after a last
/// OTLP push, as the OpenTelemetry SDK's shutdown flushes).
#[derive(Debug)]
pub struct Running {
    /// For the start-up log: `Prometheus at http://127.0.0.1:9464/metrics`.
    pub description: String,
    /// The bound address of the `/metrics` server, if one runs.
    pub prometheus: Option<SocketAddr>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// No exporter; `description` says why (for the start-up log).
    pub fn off(description: String) -> Self {
        Running::idle(description)
    }

    /// Lets the exporter run for the rest of the process.
    pub fn detach(mut self) {
        self.task.take();
        self.stop = CancellationToken::new();
    }

    fn idle(description: String) -> Self {
        Running {
            description,
            prometheus: None,
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// Stops the exporter; an OTLP exporter pushes once more first (bounded
    /// by its timeout).
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::MAX).await;
    }

    /// As [`Running::shutdown`], but gives the last push at most `budget`
    /// (a stop must fit in the service manager's limit, whatever the
    /// collector does); past it the push is abandoned. Whether it finished.
    pub async fn shutdown_within(mut self, budget: Duration) -> bool {
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return true;
        };
        match tokio::time::timeout(budget, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Why [`start`] could not start the exporter; each message says what to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings cannot work ([`ExporterChoice::Refused`]); `reason`
    /// names the variable and the values it takes.
    #[error("{reason}")]
    Refused { reason: String },
    /// The Prometheus page's address cannot be bound (taken, or not an
    /// address of this machine); `setting` is the flag or the variables it
    /// came from.
    #[error("cannot serve metrics on {address}: {source}; choose another address with {setting}")]
    Serve {
        address: String,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The OTLP exporter cannot be built (a bad endpoint, an unreadable
    /// certificate or key).
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
}

/// Starts what `choice` says. `Err` when it cannot start (the address is
/// taken, a certificate is unreadable): the message says what to change.
pub async fn start(
    choice: &ExporterChoice,
    source: Arc<dyn Source>,
) -> Result<Running, StartError> {
    match choice {
        ExporterChoice::None => Ok(Running::idle(
            "off (OTEL_METRICS_EXPORTER=none)".to_string(),
        )),
        ExporterChoice::Refused { reason } => Err(StartError::Refused {
            reason: reason.clone(),
        }),
        ExporterChoice::Prometheus { address, from_flag } => {
            let setting = if *from_flag {
                "--metrics-listen"
            } else {
                "OTEL_EXPORTER_PROMETHEUS_HOST/OTEL_EXPORTER_PROMETHEUS_PORT"
            };
            let (bound, stop, task) =
                serve_prometheus(address, source)
                    .await
                    .map_err(|source| StartError::Serve {
                        address: address.clone(),
                        setting,
                        source,
                    })?;
            Ok(Running {
                description: format!("Prometheus at http://{bound}/metrics"),
                prometheus: Some(bound),
                stop,
                task: Some(task),
            })
        }
        ExporterChoice::Otlp(settings) => {
            let pusher = otlp::Pusher::new(settings.clone())?;
            let description = format!(
                "OTLP to {} every {}s",
                pusher.endpoint(),
                settings.interval.as_secs_f32()
            );
            let stop = CancellationToken::new();
            let task = tokio::spawn(push_loop(pusher, settings.interval, source, stop.clone()));
            Ok(Running {
                description,
                prometheus: None,
                stop,
                task: Some(task),
            })
        }
    }
}

/// Pushes every `interval`, and once more when stopped. The first failure
/// is a warning; repeats are debug until a push succeeds again.
async fn push_loop(
    pusher: otlp::Pusher,
    interval: Duration,
    source: Arc<dyn Source>,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stop.cancelled() => true,
        };
        match pusher.push(&source.snapshot()).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(endpoint = pusher.endpoint(), "metrics push works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    endpoint = pusher.endpoint(),
                    "cannot push metrics: {e}; retrying every {}s (OTEL_METRICS_EXPORTER=none turns metrics off)",
                    interval.as_secs_f32()
                );
            }
            Err(e) => tracing::debug!(endpoint = pusher.endpoint(), "cannot push metrics: {e}"),
        }
        if last {
            return;
        }
    }
}

/// Serves `/metrics` on `address` until stopped; returns the bound address.
async fn serve_prometheus(
    address: &str,
    source: Arc<dyn Source>,
) -> std::io::Result<(SocketAddr, CancellationToken, JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = stopped.cancelled() => return,
            };
            let source = source.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let source = source.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let accept = req
                                .headers()
                                .get(http::header::ACCEPT)
                                .and_then(|v| v.to_str().ok());
                            let format = exposition::negotiate(accept);
                            Response::builder()
                                .header(http::header::CONTENT_TYPE, format.content_type())
                                .body(Full::new(Bytes::from(exposition::encode(
                                    &source.snapshot(),
                                    format,
                                ))))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(
                            resp.expect("static response parts are valid"),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // As the Go exporter's server: a client gets 5 s to send its
                // request headers.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok((bound, stop, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Identity, Registry};

    /// A source with no instruments (nothing here scrapes it).
    struct NoInstruments(Registry);

    impl Source for NoInstruments {
        fn snapshot(&self) -> Snapshot {
            self.0.snapshot()
        }
    }

    #[tokio::test]
    async fn a_taken_address_or_refused_settings_are_typed_errors_naming_the_setting() {
        let source: Arc<dyn Source> = Arc::new(NoInstruments(Registry::new(Identity {
            resource: Vec::new(),
            scope_name: "test",
        })));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        for (from_flag, setting) in [
            (true, "--metrics-listen"),
            (
                false,
                "OTEL_EXPORTER_PROMETHEUS_HOST/OTEL_EXPORTER_PROMETHEUS_PORT",
            ),
        ] {
            let choice = ExporterChoice::Prometheus {
                address: address.clone(),
                from_flag,
            };
            let e = start(&choice, source.clone()).await.unwrap_err();
            assert!(
                matches!(&e, StartError::Serve { source, .. }
                    if source.kind() == std::io::ErrorKind::AddrInUse),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("cannot serve metrics on {address}: "))
                    && text.ends_with(&format!("; choose another address with {setting}")),
                "{text}"
            );
        }
        let reason = "OTEL_METRICS_EXPORTER=\"x\" is not an exporter; use prometheus, otlp or none";
        let refused = ExporterChoice::Refused {
            reason: reason.into(),
        };
        let e = start(&refused, source).await.unwrap_err();
        assert!(matches!(e, StartError::Refused { .. }), "{e:?}");
        assert_eq!(e.to_string(), reason);
    }
}
