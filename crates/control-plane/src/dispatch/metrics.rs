//! The control plane's metrics: how much work waits for each worker id, and
//! how long runs wait before a worker claims them. Served as a Prometheus
//! page by `serve --metrics-listen ADDR` (off by default; see
//! `ControlPlane::start`) through the crate's own exporter
//! (`oz_telemetry`), so the page has the same shape as the worker's.
//!
//! The per-worker-id gauges are computed when the page is read (from the
//! run scheduler's memory, no database), so they are never stale; an
//! autoscaler (KEDA's Prometheus scaler, an HPA on external metrics) reads
//! `oz_control_plane_runs_queued{worker_id="…"}`.
//!
//! Series, with labels `team_id` (the team's number, as `api-keys list`
//! shows it) and `worker_id`, for every worker id with a live connection
//! or a run that has not ended:
//! - `oz_control_plane_runs_queued`: runs waiting for a worker.
//! - `oz_control_plane_runs_active`: runs offered to or claimed by a worker.
//! - `oz_control_plane_worker_connections`: live worker connections.
//! - `oz_control_plane_oldest_queued_run_age_seconds`: how long the
//!   oldest queued run has waited (0 when none waits).
//!
//! And `oz_control_plane_dispatch_latency_seconds`, a histogram of the
//! seconds from a run being queued until a worker claimed it.

use oz_telemetry::model::{Descriptor, Family, Identity, Kind, Point, Registry, Series, Snapshot};
use std::sync::Arc;
use std::time::Duration;

/// The instrumentation scope (Prometheus: `otel_scope_name`).
pub(crate) const SCOPE_NAME: &str = "github.com/warpdotdev/oz-agent-worker/control-plane";

/// Bucket boundaries of the dispatch latency, in seconds: a claim takes
/// milliseconds when a worker has room, minutes to hours when runs queue.
pub(crate) const DISPATCH_LATENCY_BOUNDARIES: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

const WORKER_LABELS: &[&str] = &["team_id", "worker_id"];

/// What waits for one worker id of one team, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerQueue {
    pub team_id: i64,
    pub worker_id: String,
    /// Runs in state `queued`.
    pub queued: usize,
    /// Runs `assigned` or `claimed`.
    pub active: usize,
    /// Live worker connections with this id.
    pub connections: usize,
    /// How long the oldest queued run has waited (`None`: none queued).
    pub oldest_queued: Option<Duration>,
}

/// The control plane's instruments: the dispatch latency is recorded as it
/// happens; the rest comes from [`WorkerQueue`]s at each read.
pub(crate) struct PlaneMetrics {
    registry: Registry,
    dispatch_latency: Arc<Family>,
}

impl std::fmt::Debug for PlaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaneMetrics").finish_non_exhaustive()
    }
}

impl Default for PlaneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge(name: &'static str, description: &'static str, unit: &'static str) -> Descriptor {
    Descriptor {
        name,
        description,
        unit,
        kind: Kind::Gauge,
        labels: WORKER_LABELS,
    }
}

impl PlaneMetrics {
    pub(crate) fn new() -> PlaneMetrics {
        let mut registry = Registry::new(Identity {
            resource: vec![
                (
                    "service.name".into(),
                    "oz-agent-worker-control-plane".into(),
                ),
                ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
            ],
            scope_name: SCOPE_NAME,
        });
        let dispatch_latency = registry.register_histogram(
            Descriptor {
                name: "oz_control_plane_dispatch_latency_seconds",
                description: "Seconds from a run being queued (created, or restored at start-up) until a worker claimed it.",
                unit: "s",
                kind: Kind::Histogram,
                labels: &[],
            },
            DISPATCH_LATENCY_BOUNDARIES,
        );
        PlaneMetrics {
            registry,
            dispatch_latency,
        }
    }

    /// A worker claimed a run that had waited `waited` since it was queued.
    pub(crate) fn claimed_after(&self, waited: Duration) {
        self.dispatch_latency.record(&[], waited.as_secs_f64());
    }

    /// Everything, with the per-worker-id gauges from `queues`.
    pub(crate) fn snapshot(&self, queues: &[WorkerQueue]) -> Snapshot {
        let mut snapshot = self.registry.snapshot();
        let series = |value: &dyn Fn(&WorkerQueue) -> i64| -> Vec<Series> {
            queues
                .iter()
                .map(|q| {
                    (
                        vec![q.team_id.to_string(), q.worker_id.clone()],
                        Point::Int(value(q)),
                    )
                })
                .collect()
        };
        let gauges = [
            (
                gauge(
                    "oz_control_plane_runs_queued",
                    "Runs waiting for a worker with this id (state queued).",
                    "",
                ),
                series(&|q| q.queued as i64),
            ),
            (
                gauge(
                    "oz_control_plane_runs_active",
                    "Runs offered to or claimed by a worker with this id (states assigned and claimed).",
                    "",
                ),
                series(&|q| q.active as i64),
            ),
            (
                gauge(
                    "oz_control_plane_worker_connections",
                    "Live worker connections with this id.",
                    "",
                ),
                series(&|q| q.connections as i64),
            ),
            (
                gauge(
                    "oz_control_plane_oldest_queued_run_age_seconds",
                    "Seconds the oldest queued run for this worker id has waited; 0 when none waits.",
                    "s",
                ),
                series(&|q| q.oldest_queued.map_or(0, |d| d.as_secs() as i64)),
            ),
        ];
        snapshot
            .families
            .extend(gauges.into_iter().filter(|(_, series)| !series.is_empty()));
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_telemetry::exposition::{encode, Format};

    fn queue(worker_id: &str, queued: usize, oldest: Option<u64>) -> WorkerQueue {
        WorkerQueue {
            team_id: 1,
            worker_id: worker_id.into(),
            queued,
            active: 2,
            connections: 1,
            oldest_queued: oldest.map(Duration::from_secs),
        }
    }

    #[test]
    fn every_worker_id_gets_its_gauges() {
        let m = PlaneMetrics::new();
        let page = encode(
            &m.snapshot(&[queue("a", 3, Some(42)), queue("b", 0, None)]),
            Format::PrometheusText,
        );
        let scope = format!(
            "otel_scope_name=\"{SCOPE_NAME}\",otel_scope_schema_url=\"\",otel_scope_version=\"\""
        );
        for line in [
            format!("oz_control_plane_runs_queued{{{scope},team_id=\"1\",worker_id=\"a\"}} 3"),
            format!("oz_control_plane_runs_queued{{{scope},team_id=\"1\",worker_id=\"b\"}} 0"),
            format!("oz_control_plane_runs_active{{{scope},team_id=\"1\",worker_id=\"a\"}} 2"),
            format!(
                "oz_control_plane_worker_connections{{{scope},team_id=\"1\",worker_id=\"b\"}} 1"
            ),
            format!(
                "oz_control_plane_oldest_queued_run_age_seconds{{{scope},team_id=\"1\",worker_id=\"a\"}} 42"
            ),
            format!(
                "oz_control_plane_oldest_queued_run_age_seconds{{{scope},team_id=\"1\",worker_id=\"b\"}} 0"
            ),
        ] {
            assert!(page.lines().any(|l| l == line), "missing {line:?} in:\n{page}");
        }
        // No claim yet: the histogram has no series.
        assert!(!page.contains("dispatch_latency"), "{page}");
    }

    #[test]
    fn dispatch_latency_uses_its_own_buckets() {
        let m = PlaneMetrics::new();
        m.claimed_after(Duration::from_millis(3));
        m.claimed_after(Duration::from_secs(90));
        let page = encode(&m.snapshot(&[]), Format::PrometheusText);
        let bucket = |le: &str| {
            page.lines()
                .find(|l| {
                    l.starts_with("oz_control_plane_dispatch_latency_seconds_bucket")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .unwrap_or_else(|| panic!("no le={le} bucket in:\n{page}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("60"), "1");
        assert_eq!(bucket("120"), "2");
        assert_eq!(bucket("+Inf"), "2");
        assert!(!page.contains("oz_control_plane_runs_queued"), "{page}");
    }
}
