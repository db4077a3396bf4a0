//! Prometheus metrics, under the reference worker's names, served on
//! `--metrics-listen` at `/metrics` (OpenMetrics text).

use crate::protocol::FailureReason;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    connected: Gauge,
    active: Gauge,
    rejected: Family<Labels, Counter>,
    completed: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    failures: Family<Labels, Counter>,
    reconnects: Family<Labels, Counter>,
}

/// How a task ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskResult {
    Succeeded,
    Failed,
    Cancelled,
    /// Handed to an outside system (the command runtime).
    Dispatched,
}

impl TaskResult {
    fn label(self) -> &'static str {
        match self {
            TaskResult::Succeeded => "succeeded",
            TaskResult::Failed => "failed",
            TaskResult::Cancelled => "cancelled",
            TaskResult::Dispatched => "dispatched",
        }
    }
}

impl Metrics {
    pub fn new(worker_id: &str, backend: &str, max_concurrent: Option<u32>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let connected = Gauge::default();
        let active = Gauge::default();
        let max = Gauge::<i64>::default();
        max.set(max_concurrent.map(i64::from).unwrap_or(0));
        let rejected = Family::<Labels, Counter>::default();
        let completed = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 1 s to ~2.3 h: agent tasks run for minutes to hours.
            Histogram::new([
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 4800.0, 8400.0,
            ])
        });
        let failures = Family::<Labels, Counter>::default();
        let reconnects = Family::<Labels, Counter>::default();
        let info = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("backend", backend.to_string()),
            ("worker_id", worker_id.to_string()),
        ]);
        registry.register(
            "oz_worker_connected",
            "1 while connected to the orchestrator",
            connected.clone(),
        );
        registry.register(
            "oz_worker_tasks_active",
            "Tasks running now",
            active.clone(),
        );
        registry.register(
            "oz_worker_tasks_max_concurrent",
            "Concurrency limit (0 = unlimited)",
            max,
        );
        registry.register(
            "oz_worker_tasks_rejected",
            "Assignments rejected, by reason",
            rejected.clone(),
        );
        registry.register(
            "oz_worker_tasks_completed",
            "Tasks ended, by result",
            completed.clone(),
        );
        registry.register(
            "oz_worker_task_duration_seconds",
            "Task duration from claim to report",
            duration.clone(),
        );
        registry.register(
            "oz_worker_task_failures",
            "Failed tasks, by phase and reason",
            failures.clone(),
        );
        registry.register(
            "oz_worker_websocket_reconnects",
            "Reconnections, by reason",
            reconnects.clone(),
        );
        registry.register("oz_worker", "Build and identity", info);
        Arc::new(Metrics {
            registry,
            connected,
            active,
            rejected,
            completed,
            duration,
            failures,
            reconnects,
        })
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    pub fn set_active(&self, n: usize) {
        self.active.set(n as i64);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn reconnect(&self, reason: &'static str) {
        self.reconnects
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn finished(&self, result: TaskResult, took: Duration, failure: Option<&FailureReason>) {
        let labels = vec![("result", result.label().to_string())];
        self.completed.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(reason) = failure {
            let labels = vec![
                ("phase", phase(reason).to_string()),
                ("reason", reason.as_str().to_string()),
            ];
            self.failures.get_or_create(&labels).inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Which step of the container contract a failure reason belongs to.
fn phase(reason: &FailureReason) -> &'static str {
    match reason {
        FailureReason::ImagePull | FailureReason::InvalidImage => "image",
        FailureReason::SidecarPrep => "sidecar",
        FailureReason::ContainerCreate | FailureReason::ContainerStart => "start",
        FailureReason::ContainerWait
        | FailureReason::ContainerExit
        | FailureReason::ContainerOom
        | FailureReason::TaskTimeout => "run",
        FailureReason::TaskCancelled | FailureReason::GracefulShutdown => "stop",
        FailureReason::Cleanup => "cleanup",
        _ => "other",
    }
}

/// Serves `/metrics` until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header(
                                    "Content-Type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.encode())))
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
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_and_labels() {
        let m = Metrics::new("w1", "docker", Some(3));
        m.set_connected(true);
        m.rejected("at_capacity");
        m.finished(
            TaskResult::Failed,
            Duration::from_secs(2),
            Some(&FailureReason::ContainerOom),
        );
        m.reconnect("connection_lost");
        let text = m.encode();
        for line in [
            "oz_worker_connected 1",
            "oz_worker_tasks_max_concurrent 3",
            "oz_worker_tasks_rejected_total{reason=\"at_capacity\"} 1",
            "oz_worker_tasks_completed_total{result=\"failed\"} 1",
            "oz_worker_task_duration_seconds_count{result=\"failed\"} 1",
            "oz_worker_task_failures_total{phase=\"run\",reason=\"container_oom\"} 1",
            "oz_worker_websocket_reconnects_total{reason=\"connection_lost\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            text.contains("oz_worker_info{") && text.contains("worker_id=\"w1\""),
            "{text}"
        );
    }
}
