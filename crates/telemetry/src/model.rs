//! A small, fixed set of instruments with OpenTelemetry's semantics
//! (cumulative sums, last-value gauges, explicit-bucket histograms), read as
//! snapshots by the exporters. Updates take one short lock per family; the
//! worker records a handful of events per task, never in a hot loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// OpenTelemetry's default explicit bucket boundaries (the SDK default the
/// Go worker's histogram uses, in the instrument's unit).
pub const DEFAULT_BOUNDARIES: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// The instrument kinds the worker uses, as OpenTelemetry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Last value wins (`Int64Gauge`).
    Gauge,
    /// A sum that may go down (`Int64UpDownCounter`); a gauge to Prometheus.
    UpDownCounter,
    /// A monotonic sum (`Int64Counter`).
    Counter,
    /// Explicit-bucket histogram of `f64` (`Float64Histogram`).
    Histogram,
}

/// What an instrument is: name (as registered, e.g. `oz_worker_tasks_claimed_total`),
/// description, unit (UCUM, e.g. `s`), kind and label names.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// One series' value at a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    Int(i64),
    Histogram(HistogramPoint),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    pub count: u64,
    pub sum: f64,
    /// Per bucket (not cumulative), one more than the boundaries: the last
    /// bucket is above the highest boundary.
    pub bucket_counts: Vec<u64>,
    pub boundaries: &'static [f64],
    pub min: f64,
    pub max: f64,
}

impl HistogramPoint {
    fn new(boundaries: &'static [f64]) -> Self {
        HistogramPoint {
            count: 0,
            sum: 0.0,
            bucket_counts: vec![0; boundaries.len() + 1],
            boundaries,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn record(&mut self, value: f64) {
        // Buckets are upper-inclusive: (previous, boundary].
        let bucket = self
            .boundaries
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.boundaries.len());
        self.bucket_counts[bucket] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }
}

/// A family of series of one instrument, keyed by label values (in the
/// order of [`Descriptor::labels`]).
#[derive(Debug)]
pub struct Family {
    pub descriptor: Descriptor,
    /// A histogram's bucket boundaries (ignored for other kinds).
    boundaries: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Point>>,
}

impl Family {
    fn with<R>(&self, labels: &[&str], f: impl FnOnce(&mut Point) -> R) -> R {
        debug_assert_eq!(
            labels.len(),
            self.descriptor.labels.len(),
            "{}",
            self.descriptor.name
        );
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let point = series
            .entry(key)
            .or_insert_with(|| match self.descriptor.kind {
                Kind::Histogram => Point::Histogram(HistogramPoint::new(self.boundaries)),
                _ => Point::Int(0),
            });
        f(point)
    }

    /// Creates the series at zero if it does not exist (what the Go worker's
    /// priming does), so dashboards see it before the first event.
    pub fn prime(&self, labels: &[&str]) {
        self.with(labels, |_| ());
    }

    /// Adds to a counter or up-down counter.
    pub fn add(&self, labels: &[&str], delta: i64) {
        self.with(labels, |p| {
            if let Point::Int(v) = p {
                *v += delta;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, labels: &[&str], value: i64) {
        self.with(labels, |p| {
            if let Point::Int(v) = p {
                *v = value;
            }
        });
    }

    /// Records a histogram observation.
    pub fn record(&self, labels: &[&str], value: f64) {
        self.with(labels, |p| {
            if let Point::Histogram(h) = p {
                h.record(value);
            }
        });
    }

    fn snapshot(&self) -> Vec<Series> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Who produces the metrics: the OpenTelemetry resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Resource attributes, in order (`service.name`, `service.version`,
    /// `worker.id`, `worker.backend`, then any from `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// Instrumentation scope name (Prometheus: `otel_scope_name`).
    pub scope_name: &'static str,
}

/// The instruments of one process.
#[derive(Debug)]
pub struct Registry {
    pub identity: Identity,
    /// Resource attributes from the environment (`OTEL_RESOURCE_ATTRIBUTES`),
    /// known only once the exporter is chosen; the identity's win.
    extra_resource: Mutex<Vec<(String, String)>>,
    families: Vec<Arc<Family>>,
    /// When the cumulative sums started (OTLP `start_time_unix_nano`).
    pub start: SystemTime,
}

/// One series: its label values (in the descriptor's order) and value.
pub type Series = (Vec<String>, Point);

/// Every family with its series, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub identity: Identity,
    pub start: SystemTime,
    pub time: SystemTime,
    pub families: Vec<(Descriptor, Vec<Series>)>,
}

impl Registry {
    pub fn new(identity: Identity) -> Self {
        Registry {
            identity,
            extra_resource: Mutex::new(Vec::new()),
            families: Vec::new(),
            start: SystemTime::now(),
        }
    }

    /// Registers an instrument; a histogram gets [`DEFAULT_BOUNDARIES`].
    pub fn register(&mut self, descriptor: Descriptor) -> Arc<Family> {
        self.register_histogram(descriptor, DEFAULT_BOUNDARIES)
    }

    /// Registers an instrument whose histogram buckets are `boundaries`
    /// (ascending, in the instrument's unit): for a latency measured in
    /// milliseconds' worth of seconds, where the defaults' first bucket
    /// (0–5) would hold everything.
    pub fn register_histogram(
        &mut self,
        descriptor: Descriptor,
        boundaries: &'static [f64],
    ) -> Arc<Family> {
        debug_assert!(boundaries.windows(2).all(|w| w[0] < w[1]));
        let family = Arc::new(Family {
            descriptor,
            boundaries,
            series: Mutex::new(BTreeMap::new()),
        });
        self.families.push(family.clone());
        family
    }

    /// Adds resource attributes; a key the identity already has is ignored
    /// (the worker's `service.name`, `worker.id`, … win, as in the Go worker).
    pub fn add_resource(&self, attributes: &[(String, String)]) {
        let mut extra = self
            .extra_resource
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (k, v) in attributes {
            if self.identity.resource.iter().any(|(key, _)| key == k) {
                continue;
            }
            match extra.iter_mut().find(|(key, _)| key == k) {
                Some(existing) => existing.1 = v.clone(),
                None => extra.push((k.clone(), v.clone())),
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut identity = self.identity.clone();
        identity.resource.extend(
            self.extra_resource
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        Snapshot {
            identity,
            start: self.start,
            time: SystemTime::now(),
            families: self
                .families
                .iter()
                .map(|f| (f.descriptor.clone(), f.snapshot()))
                .filter(|(_, series)| !series.is_empty())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Identity {
            resource: vec![],
            scope_name: "test",
        })
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut r = registry();
        let h = r.register(Descriptor {
            name: "h",
            description: "",
            unit: "s",
            kind: Kind::Histogram,
            labels: &[],
        });
        for v in [0.0, 0.5, 5.0, 5.1, 20000.0] {
            h.record(&[], v);
        }
        let snap = r.snapshot();
        let Point::Histogram(p) = &snap.families[0].1[0].1 else {
            panic!()
        };
        assert_eq!(p.count, 5);
        assert_eq!(&p.bucket_counts[..3], &[1, 2, 1]);
        assert_eq!(p.bucket_counts[DEFAULT_BOUNDARIES.len()], 1);
        assert_eq!((p.min, p.max, p.sum), (0.0, 20000.0, 20010.6));
    }

    #[test]
    fn unprimed_families_are_absent_and_primed_series_are_zero() {
        let mut r = registry();
        let c = r.register(Descriptor {
            name: "c_total",
            description: "",
            unit: "",
            kind: Kind::Counter,
            labels: &["reason"],
        });
        let _unused = r.register(Descriptor {
            name: "never",
            description: "",
            unit: "",
            kind: Kind::Gauge,
            labels: &[],
        });
        c.prime(&["a"]);
        c.add(&["b"], 2);
        let snap = r.snapshot();
        assert_eq!(snap.families.len(), 1);
        assert_eq!(
            snap.families[0].1,
            vec![
                (vec!["a".to_string()], Point::Int(0)),
                (vec!["b".to_string()], Point::Int(2))
            ]
        );
    }
}
