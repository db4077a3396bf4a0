//! The worker's metrics, as the Go worker defines them
//! (internal/metrics/metrics.go): the same instrument names, kinds, units,
//! label values and instrumentation scope, and every series primed at zero
//! at start-up (all but the duration histogram, which the Go worker leaves
//! empty so latency quantiles are not skewed), so dashboards and alerts
//! find them before the first task. Exported by `oz_telemetry`:
//! Prometheus (`--metrics-listen`, or `OTEL_METRICS_EXPORTER=prometheus`),
//! OTLP/HTTP push (`otlp`, also when the variable is unset, as in the Go
//! worker) or nothing (`none`); see [`start_exporter`].

use oz_protocol::FailureReason;
use oz_telemetry::exporter::{self, ExporterChoice};
use oz_telemetry::model::{Descriptor, Family, Identity, Kind, Registry, Snapshot};
use oz_telemetry::Running;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The instrumentation scope (Prometheus: `otel_scope_name`), part of the
/// Go worker's public contract for dashboards.
pub const SCOPE_NAME: &str = "github.com/warpdotdev/oz-agent-worker";

/// `phase` label values of `oz_worker_task_failures_total`.
pub const FAILURE_PHASES: [&str; 3] = ["assignment", "backend", "cleanup"];

/// `reason` label values of `oz_worker_task_failures_total`: the Go
/// worker's bounded set (any other reason is counted as `unknown`).
pub const FAILURE_REASONS: [&str; 29] = [
    "unknown",
    "task_timeout",
    "task_cancelled",
    "graceful_shutdown",
    "image_pull",
    "sidecar_prep",
    "container_create",
    "container_start",
    "container_wait",
    "container_exit",
    "container_oom",
    "workspace_setup",
    "setup_command",
    "agent_invocation",
    "teardown_command",
    "dispatch_command",
    "dispatch_timeout",
    "cancel_command",
    "job_create",
    "job_watch",
    "job_failed",
    "evicted",
    "pod_watch",
    "unschedulable",
    "volume_mount",
    "init_container",
    "invalid_image",
    "active_deadline",
    "cleanup",
];

/// How a task ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskResult {
    Succeeded,
    Failed,
    Cancelled,
    /// Handed to a remote runtime (the command backend); no terminal report.
    Dispatched,
}

impl TaskResult {
    pub const ALL: [TaskResult; 4] = [
        TaskResult::Succeeded,
        TaskResult::Failed,
        TaskResult::Cancelled,
        TaskResult::Dispatched,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TaskResult::Succeeded => "succeeded",
            TaskResult::Failed => "failed",
            TaskResult::Cancelled => "cancelled",
            TaskResult::Dispatched => "dispatched",
        }
    }
}

/// Why the worker reconnects, as the `reason` label says it: a connection
/// attempt failed (`dial_failed`), or an established connection ended
/// (`remote_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    DialFailed,
    RemoteClose,
}

impl ReconnectReason {
    pub fn label(self) -> &'static str {
        match self {
            ReconnectReason::DialFailed => "dial_failed",
            ReconnectReason::RemoteClose => "remote_close",
        }
    }
}

impl From<&str> for ReconnectReason {
    /// The reference's labels, and the core's earlier names
    /// (`connection_lost` is a remote close; `connect_failed` and
    /// `unauthorized` are failed dials).
    fn from(reason: &str) -> Self {
        match reason {
            "remote_close" | "connection_lost" => ReconnectReason::RemoteClose,
            _ => ReconnectReason::DialFailed,
        }
    }
}

/// Rejection reason the Go worker uses (and primes).
pub const REJECT_AT_CAPACITY: &str = "at_capacity";

pub struct Metrics {
    registry: Registry,
    connected: Arc<Family>,
    active: Arc<Family>,
    claimed: Arc<Family>,
    rejected: Arc<Family>,
    completed: Arc<Family>,
    duration: Arc<Family>,
    failures: Arc<Family>,
    reconnects: Arc<Family>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn descriptor(
    name: &'static str,
    description: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
) -> Descriptor {
    Descriptor {
        name,
        description,
        unit: "",
        kind,
        labels,
    }
}

impl Metrics {
    /// Every instrument, with every known series primed at zero, the
    /// concurrency limit (0 = unlimited) and the info series set.
    pub fn new(worker_id: &str, backend: &str, max_concurrent: Option<u32>) -> Arc<Metrics> {
        let version = env!("CARGO_PKG_VERSION");
        let mut registry = Registry::new(Identity {
            resource: vec![
                ("service.name".into(), "oz-agent-worker".into()),
                ("service.version".into(), version.into()),
                ("worker.id".into(), worker_id.into()),
                ("worker.backend".into(), backend.into()),
            ]
            .into_iter()
            .filter(|(_, v): &(String, String)| !v.is_empty())
            .collect(),
            scope_name: SCOPE_NAME,
        });
        let connected = registry.register(descriptor(
            "oz_worker_connected",
            "1 while the worker is connected to the orchestrator, else 0.",
            Kind::Gauge,
            &[],
        ));
        let active = registry.register(descriptor(
            "oz_worker_tasks_active",
            "Tasks the worker is running now.",
            Kind::UpDownCounter,
            &[],
        ));
        let max = registry.register(descriptor(
            "oz_worker_tasks_max_concurrent",
            "The configured limit of concurrent tasks; 0 means unlimited.",
            Kind::Gauge,
            &[],
        ));
        let claimed = registry.register(descriptor(
            "oz_worker_tasks_claimed_total",
            "Tasks claimed since the worker started.",
            Kind::Counter,
            &[],
        ));
        let rejected = registry.register(descriptor(
            "oz_worker_tasks_rejected_total",
            "Tasks rejected since the worker started, by reason.",
            Kind::Counter,
            &["reason"],
        ));
        let completed = registry.register(descriptor(
            "oz_worker_tasks_completed_total",
            "Tasks the worker finished, by result.",
            Kind::Counter,
            &["result"],
        ));
        let duration = registry.register(Descriptor {
            name: "oz_worker_task_duration_seconds",
            description: "How long tasks ran on the worker, by result.",
            unit: "s",
            kind: Kind::Histogram,
            labels: &["result"],
        });
        let failures = registry.register(descriptor(
            "oz_worker_task_failures_total",
            "Task failures by phase and reason.",
            Kind::Counter,
            &["phase", "reason"],
        ));
        let reconnects = registry.register(descriptor(
            "oz_worker_websocket_reconnects_total",
            "Reconnections to the orchestrator since the worker started, by reason.",
            Kind::Counter,
            &["reason"],
        ));
        let info = registry.register(descriptor(
            "oz_worker_info",
            "Always 1; the labels say which build and worker this is.",
            Kind::Gauge,
            &["version", "backend", "worker_id"],
        ));

        connected.prime(&[]);
        active.prime(&[]);
        max.set(&[], max_concurrent.map(i64::from).unwrap_or(0));
        claimed.prime(&[]);
        rejected.prime(&[REJECT_AT_CAPACITY]);
        for result in TaskResult::ALL {
            completed.prime(&[result.label()]);
        }
        for phase in FAILURE_PHASES {
            for reason in FAILURE_REASONS {
                failures.prime(&[phase, reason]);
            }
        }
        for reason in [ReconnectReason::DialFailed, ReconnectReason::RemoteClose] {
            reconnects.prime(&[reason.label()]);
        }
        info.set(&[version, backend, worker_id], 1);

        Arc::new(Metrics {
            registry,
            connected,
            active,
            claimed,
            rejected,
            completed,
            duration,
            failures,
            reconnects,
        })
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.set(&[], i64::from(up));
    }

    pub fn set_active(&self, n: usize) {
        self.active.set(&[], n as i64);
    }

    /// A task was claimed (its claim was written).
    pub fn claimed(&self) {
        self.claimed.add(&[], 1);
    }

    /// `reason`: `at_capacity` (the Go worker's only one), or another
    /// bounded value of ours (`shutting_down`).
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.add(&[reason], 1);
    }

    pub fn reconnect(&self, reason: impl Into<ReconnectReason>) {
        self.reconnects.add(&[reason.into().label()], 1);
    }

    /// A task ended: its result and duration, and for a failure its reason
    /// under the `backend` phase (the only phase the Go worker emits).
    pub fn finished(&self, result: TaskResult, took: Duration, failure: Option<&FailureReason>) {
        self.completed.add(&[result.label()], 1);
        self.duration.record(&[result.label()], took.as_secs_f64());
        if let Some(reason) = failure {
            self.failure("backend", reason);
        }
    }

    /// A failure in a given phase (`assignment`, `backend` or `cleanup`).
    pub fn failure(&self, phase: &'static str, reason: &FailureReason) {
        let reason = FAILURE_REASONS
            .iter()
            .find(|r| **r == reason.as_str())
            .copied()
            .unwrap_or("unknown");
        self.failures.add(&[phase, reason], 1);
    }

    /// The Prometheus text page (what `/metrics` serves by default).
    pub fn encode(&self) -> String {
        oz_telemetry::exposition::encode(
            &self.registry.snapshot(),
            oz_telemetry::exposition::Format::PrometheusText,
        )
    }
}

impl oz_telemetry::Source for Metrics {
    fn snapshot(&self) -> Snapshot {
        self.registry.snapshot()
    }
}

/// Chooses the exporter from `--metrics-listen` (the config's
/// `metrics_listen`) and the process's OpenTelemetry variables, logs what
/// it chose and any warnings, and starts it. Call once at start-up, after
/// [`Metrics::new`]; keep the [`Running`] and `shutdown().await` it at exit
/// (a last OTLP push).
///
/// `Err` only when `--metrics-listen` cannot be served (the operator asked
/// for it explicitly: stop). A problem with the variables is logged as an
/// error and the worker goes on without metrics, as the Go worker does.
pub async fn start_exporter(
    metrics: &Arc<Metrics>,
    metrics_listen: Option<SocketAddr>,
) -> Result<Running, ExporterError> {
    let flag = metrics_listen.map(|a| a.to_string());
    let choice = exporter::choose(flag.as_deref(), &|name| std::env::var(name).ok());
    start_chosen(metrics, choice).await
}

/// Serves the Prometheus page on `addr` for the life of the process (the
/// `--metrics-listen` shorthand); returns the bound address. Kept for the
/// core's current call; [`start_exporter`] replaces it (it also honours the
/// OpenTelemetry variables).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let choice = ExporterChoice::Prometheus {
        address: addr.to_string(),
        from_flag: true,
    };
    let running = oz_telemetry::start(&choice, metrics)
        .await
        .map_err(std::io::Error::other)?;
    let bound = running.prometheus.expect("a Prometheus exporter binds");
    running.detach();
    Ok(bound)
}

/// The exporter `--metrics-listen` asked for could not start (its address
/// is taken, or cannot be bound): the worker stops rather than run without
/// the metrics the operator asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExporterError(
    /// What the telemetry layer said, naming the address.
    #[source]
    pub oz_telemetry::StartError,
);

/// [`start_exporter`] for an already made choice (tests give their own).
pub async fn start_chosen(
    metrics: &Arc<Metrics>,
    choice: exporter::Choice,
) -> Result<Running, ExporterError> {
    for warning in &choice.warnings {
        tracing::warn!("metrics: {warning}");
    }
    metrics.registry.add_resource(&choice.resource);
    let from_flag = matches!(
        choice.exporter,
        ExporterChoice::Prometheus {
            from_flag: true,
            ..
        }
    );
    let source: Arc<dyn oz_telemetry::Source> = metrics.clone();
    match oz_telemetry::start(&choice.exporter, source).await {
        Ok(running) => {
            tracing::info!("metrics: {}", running.description);
            Ok(running)
        }
        Err(e) if from_flag => Err(ExporterError(e)),
        Err(e) => {
            tracing::error!("metrics: {e} (continuing without metrics)");
            Ok(Running::off(format!("off ({e})")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn scoped(name: &str, labels: &str) -> String {
        let scope = format!(
            "otel_scope_name=\"{SCOPE_NAME}\",otel_scope_schema_url=\"\",otel_scope_version=\"\""
        );
        if labels.is_empty() {
            format!("{name}{{{scope}}}")
        } else {
            format!("{name}{{{scope},{labels}}}")
        }
    }

    /// Every series the Go worker primes exists at start-up, at zero.
    /// Source: the Go worker's `primeInstruments` (and its test
    /// `TestPrimeInstrumentsExposesAllSeriesAtStartup`).
    #[test]
    fn every_series_is_primed_at_start_up() {
        let m = Metrics::new("w1", "docker", None);
        let text = m.encode();
        let series = lines(&text);
        let mut expected = vec![
            format!("{} 0", scoped("oz_worker_connected", "")),
            format!("{} 0", scoped("oz_worker_tasks_active", "")),
            format!("{} 0", scoped("oz_worker_tasks_max_concurrent", "")),
            format!("{} 0", scoped("oz_worker_tasks_claimed_total", "")),
            format!(
                "{} 0",
                scoped("oz_worker_tasks_rejected_total", "reason=\"at_capacity\"")
            ),
            format!(
                "{} 0",
                scoped(
                    "oz_worker_websocket_reconnects_total",
                    "reason=\"dial_failed\""
                )
            ),
            format!(
                "{} 0",
                scoped(
                    "oz_worker_websocket_reconnects_total",
                    "reason=\"remote_close\""
                )
            ),
        ];
        for result in ["succeeded", "failed", "cancelled", "dispatched"] {
            expected.push(format!(
                "{} 0",
                scoped(
                    "oz_worker_tasks_completed_total",
                    &format!("result=\"{result}\"")
                )
            ));
        }
        for phase in FAILURE_PHASES {
            for reason in FAILURE_REASONS {
                expected.push(format!(
                    "{} 0",
                    scoped(
                        "oz_worker_task_failures_total",
                        &format!("phase=\"{phase}\",reason=\"{reason}\"")
                    )
                ));
            }
        }
        for line in &expected {
            assert!(
                series.contains(&line.as_str()),
                "missing {line:?} in:\n{text}"
            );
        }
        // 3 × 29 failure series, 4 results, 2 reconnect reasons, …
        assert_eq!(expected.len(), 7 + 4 + 87);
        // Plus the info series and target_info; the histogram stays empty.
        assert!(!text.contains("oz_worker_task_duration_seconds"), "{text}");
        let info = format!(
            "oz_worker_info{{backend=\"docker\",otel_scope_name=\"{SCOPE_NAME}\",otel_scope_schema_url=\"\",\
             otel_scope_version=\"\",version=\"{}\",worker_id=\"w1\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            series.contains(&info.as_str()),
            "missing {info:?} in:\n{text}"
        );
        assert!(
            text.contains("target_info{service_name=\"oz-agent-worker\"")
                && text.contains("worker_backend=\"docker\",worker_id=\"w1\"} 1"),
            "{text}"
        );
        assert_eq!(series.len(), expected.len() + 2, "{text}");
    }

    /// The label values the core's events become. Source: the Go worker's
    /// worker.go (dial_failed on a failed connect, remote_close when a
    /// connection ends; failures under the backend phase).
    #[test]
    fn events_use_the_reference_labels() {
        let m = Metrics::new("w1", "docker", Some(3));
        m.set_connected(true);
        m.claimed();
        m.rejected("at_capacity");
        for legacy in ["connection_lost", "remote_close"] {
            m.reconnect(legacy);
        }
        for legacy in ["connect_failed", "unauthorized", "dial_failed"] {
            m.reconnect(legacy);
        }
        m.reconnect(ReconnectReason::DialFailed);
        m.finished(
            TaskResult::Failed,
            Duration::from_secs(2),
            Some(&FailureReason::ContainerOom),
        );
        m.finished(
            TaskResult::Failed,
            Duration::from_secs(1),
            Some(&FailureReason::WorkerLost),
        );
        m.finished(TaskResult::Dispatched, Duration::from_millis(300), None);
        let text = m.encode();
        let series = lines(&text);
        for line in [
            format!("{} 1", scoped("oz_worker_connected", "")),
            format!("{} 3", scoped("oz_worker_tasks_max_concurrent", "")),
            format!("{} 1", scoped("oz_worker_tasks_claimed_total", "")),
            format!(
                "{} 1",
                scoped("oz_worker_tasks_rejected_total", "reason=\"at_capacity\"")
            ),
            format!(
                "{} 2",
                scoped(
                    "oz_worker_websocket_reconnects_total",
                    "reason=\"remote_close\""
                )
            ),
            format!(
                "{} 4",
                scoped(
                    "oz_worker_websocket_reconnects_total",
                    "reason=\"dial_failed\""
                )
            ),
            format!(
                "{} 2",
                scoped("oz_worker_tasks_completed_total", "result=\"failed\"")
            ),
            format!(
                "{} 1",
                scoped("oz_worker_tasks_completed_total", "result=\"dispatched\"")
            ),
            format!(
                "{} 1",
                scoped(
                    "oz_worker_task_failures_total",
                    "phase=\"backend\",reason=\"container_oom\""
                )
            ),
            format!(
                "{} 1",
                scoped(
                    "oz_worker_task_failures_total",
                    "phase=\"backend\",reason=\"unknown\""
                )
            ),
            format!(
                "{} 2",
                scoped("oz_worker_task_duration_seconds_count", "result=\"failed\"")
            ),
            format!(
                "{} 1",
                scoped(
                    "oz_worker_task_duration_seconds_bucket",
                    "result=\"dispatched\",le=\"5\""
                )
            ),
        ] {
            assert!(
                series.contains(&line.as_str()),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
