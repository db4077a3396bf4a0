//! The `/metrics` page: Prometheus text format 0.0.4 (what the Go worker's
//! OpenTelemetry Prometheus exporter serves), or OpenMetrics 1.0 when the
//! scraper asks for it in `Accept`.
//!
//! Names and labels as the Go exporter (go.opentelemetry.io/otel/exporters/
//! prometheus v0.65 with its default translation) writes them: counters end
//! in `_total`, a unit becomes a suffix (`s` → `_seconds`) unless already
//! there, every series carries `otel_scope_name`, `otel_scope_schema_url` and
//! `otel_scope_version`, the resource is a `target_info` series, families
//! are sorted by name and series by labels, numbers are written as Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)` writes them.

use super::model::{Descriptor, HistogramPoint, Kind, Point, Snapshot};
use std::fmt::Write as _;

/// Which text format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Picks the format from an `Accept` header: OpenMetrics when the scraper
/// prefers it (by `q`, then by order) over plain text, else the Prometheus
/// text format (also for no header, `*/*`, or anything unknown).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::PrometheusText;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "text/plain" | "text/*" | "*/*" => Format::PrometheusText,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::PrometheusText, |(_, f)| f)
}

/// The Prometheus name of an instrument (see the module documentation).
pub fn prometheus_name(descriptor: &Descriptor) -> String {
    let mut name = descriptor.name.to_owned();
    let unit = match descriptor.unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        _ => "",
    };
    if !unit.is_empty() && !name.ends_with(&format!("_{unit}")) {
        name.push('_');
        name.push_str(unit);
    }
    if descriptor.kind == Kind::Counter && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// A Prometheus label name from an attribute key (`service.name` →
/// `service_name`).
fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    out
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits that
/// read back to `v`, in exponent form when the exponent is below -4 or at
/// least 6 (`1e+06`, `1.5e-05`), else plain (`123.25`, `0.001`).
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Rust's `{:e}` is the shortest round-trip form: `-1.2345e-7`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{point}{rest}e{exp_sign}{:02}", exp.abs());
    }
    let point_at = exp + 1; // digits before the decimal point
    if point_at <= 0 {
        let zeros = "0".repeat((-point_at) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let point_at = point_at as usize;
    if digits.len() <= point_at {
        let zeros = "0".repeat(point_at - digits.len());
        format!("{sign}{digits}{zeros}")
    } else {
        format!("{sign}{}.{}", &digits[..point_at], &digits[point_at..])
    }
}

/// An OpenMetrics float: Go's form, with `.0` when it would read as an
/// integer.
fn om_float(v: f64) -> String {
    let s = go_float(v);
    if s.contains(['.', 'e', 'N', 'I']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels_text(pairs: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut out = String::new();
    let all = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra);
    for (i, (k, v)) in all.enumerate() {
        out.push_str(if i == 0 { "{" } else { "," });
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if !out.is_empty() {
        out.push('}');
    }
    out
}

/// One series ready to write: its labels sorted by name (scope labels
/// included) and its point.
struct SeriesOut {
    labels: Vec<(String, String)>,
    point: Point,
}

struct FamilyOut {
    name: String,
    help: String,
    kind: Kind,
    unit: &'static str,
    /// OpenMetrics `info` (the Go exporter's gauges named `*_info`).
    info: bool,
    series: Vec<SeriesOut>,
}

fn families(snapshot: &Snapshot) -> Vec<FamilyOut> {
    let scope = [
        (
            "otel_scope_name".to_string(),
            snapshot.identity.scope_name.to_string(),
        ),
        ("otel_scope_schema_url".to_string(), String::new()),
        ("otel_scope_version".to_string(), String::new()),
    ];
    let mut out: Vec<FamilyOut> = snapshot
        .families
        .iter()
        .map(|(descriptor, points)| {
            let mut series: Vec<SeriesOut> = points
                .iter()
                .map(|(values, point)| {
                    let mut labels: Vec<(String, String)> = descriptor
                        .labels
                        .iter()
                        .map(|l| l.to_string())
                        .zip(values.iter().cloned())
                        .chain(scope.iter().cloned())
                        .collect();
                    labels.sort();
                    SeriesOut {
                        labels,
                        point: point.clone(),
                    }
                })
                .collect();
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            let name = prometheus_name(descriptor);
            FamilyOut {
                info: descriptor.kind == Kind::Gauge && name.ends_with("_info"),
                name,
                help: descriptor.description.to_owned(),
                kind: descriptor.kind,
                unit: descriptor.unit,
                series,
            }
        })
        .collect();
    if !snapshot.identity.resource.is_empty() {
        let mut labels: Vec<(String, String)> = snapshot
            .identity
            .resource
            .iter()
            .map(|(k, v)| (label_name(k), v.clone()))
            .collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        out.push(FamilyOut {
            name: "target_info".into(),
            help: "Target metadata".into(),
            kind: Kind::Gauge,
            unit: "",
            info: true,
            series: vec![SeriesOut {
                labels,
                point: Point::Int(1),
            }],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes `snapshot` in `format`.
pub fn encode(snapshot: &Snapshot, format: Format) -> String {
    let mut out = String::new();
    for family in families(snapshot) {
        match format {
            Format::PrometheusText => write_text_family(&mut out, &family),
            Format::OpenMetrics => write_openmetrics_family(&mut out, &family),
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn write_text_family(out: &mut String, f: &FamilyOut) {
    let kind = match f.kind {
        Kind::Counter => "counter",
        Kind::Gauge | Kind::UpDownCounter => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
    let _ = writeln!(out, "# TYPE {} {kind}", f.name);
    for s in &f.series {
        match &s.point {
            Point::Int(v) => {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    f.name,
                    labels_text(&s.labels, None),
                    go_float(*v as f64)
                );
            }
            Point::Histogram(h) => write_histogram(out, &f.name, &s.labels, h, go_float),
        }
    }
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    h: &HistogramPoint,
    float: fn(f64) -> String,
) {
    let mut cumulative = 0u64;
    for (i, count) in h.bucket_counts.iter().enumerate() {
        cumulative += count;
        let le = h
            .boundaries
            .get(i)
            .map_or("+Inf".to_string(), |b| float(*b));
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            labels_text(labels, Some(("le", &le)))
        );
    }
    let _ = writeln!(
        out,
        "{name}_sum{} {}",
        labels_text(labels, None),
        float(h.sum)
    );
    let _ = writeln!(out, "{name}_count{} {}", labels_text(labels, None), h.count);
}

fn write_openmetrics_family(out: &mut String, f: &FamilyOut) {
    let (family, kind, suffix) = match f.kind {
        _ if f.info => (f.name.trim_end_matches("_info").to_owned(), "info", "_info"),
        Kind::Counter => (
            f.name.trim_end_matches("_total").to_owned(),
            "counter",
            "_total",
        ),
        Kind::Gauge | Kind::UpDownCounter => (f.name.clone(), "gauge", ""),
        Kind::Histogram => (f.name.clone(), "histogram", ""),
    };
    let _ = writeln!(out, "# TYPE {family} {kind}");
    let unit = match f.unit {
        "s" => "seconds",
        _ => "",
    };
    if !unit.is_empty() && family.ends_with(&format!("_{unit}")) {
        let _ = writeln!(out, "# UNIT {family} {unit}");
    }
    let _ = writeln!(out, "# HELP {family} {}", escape_help(&f.help));
    for s in &f.series {
        match &s.point {
            Point::Int(v) => {
                let _ = writeln!(out, "{family}{suffix}{} {v}", labels_text(&s.labels, None));
            }
            Point::Histogram(h) => write_histogram(out, &family, &s.labels, h, om_float),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, Registry};
    use proptest::prelude::*;

    /// `strconv.FormatFloat(v, 'g', -1, 64)`. Source: Go's strconv package
    /// (ftoa.go, `%e` when exp < -4 || exp >= 6 for the shortest form).
    #[test]
    fn floats_are_written_as_go_writes_them() {
        #[rustfmt::skip]
        let cases: &[(f64, &str)] = &[
            (0.0, "0"), (1.0, "1"), (-1.0, "-1"), (5.0, "5"), (10000.0, "10000"),
            (100000.0, "100000"), (1e6, "1e+06"), (1234567.0, "1.234567e+06"),
            (0.5, "0.5"), (0.001, "0.001"), (0.0001, "0.0001"), (0.00001, "1e-05"),
            (2.5e-7, "2.5e-07"), (123.456, "123.456"), (1e21, "1e+21"), (1e100, "1e+100"),
            (-0.25, "-0.25"), (f64::INFINITY, "+Inf"), (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"), (0.1 + 0.2, "0.30000000000000004"), (999999.0, "999999"),
        ];
        for &(v, want) in cases {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    /// What Prometheus and common scrapers send. Source: Prometheus 2.x's
    /// scrape `Accept` header, and RFC 9110 q-values.
    #[test]
    fn accept_header_negotiation() {
        #[rustfmt::skip]
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::PrometheusText),
            (Some("*/*"), Format::PrometheusText),
            (Some("text/plain"), Format::PrometheusText),
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Format::OpenMetrics),
            (Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"), Format::PrometheusText),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/openmetrics-text; version=2.0.0"), Format::PrometheusText),
            (Some("application/openmetrics-text;q=0"), Format::PrometheusText),
            (Some("application/json"), Format::PrometheusText),
            (Some(""), Format::PrometheusText),
        ];
        for &(accept, want) in cases {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    fn sample() -> Snapshot {
        let mut r = Registry::new(Identity {
            resource: vec![
                ("service.name".into(), "oz-agent-worker".into()),
                ("worker.id".into(), "w1".into()),
            ],
            scope_name: "scope",
        });
        let c = r.register(Descriptor {
            name: "x_events_total",
            description: "Events.\nTwo lines",
            unit: "",
            kind: Kind::Counter,
            labels: &["reason"],
        });
        let h = r.register(Descriptor {
            name: "x_duration_seconds",
            description: "Duration",
            unit: "s",
            kind: Kind::Histogram,
            labels: &["result"],
        });
        let g = r.register(Descriptor {
            name: "x_info",
            description: "Info",
            unit: "",
            kind: Kind::Gauge,
            labels: &["version"],
        });
        c.add(&["b\"q"], 3);
        c.prime(&["a"]);
        h.record(&["ok"], 7.5);
        g.set(&["1.0"], 1);
        r.snapshot()
    }

    #[test]
    fn prometheus_text_is_the_go_exporters() {
        let text = encode(&sample(), Format::PrometheusText);
        let scope = r#"otel_scope_name="scope",otel_scope_schema_url="",otel_scope_version="""#;
        assert!(
            text.starts_with(
                "# HELP target_info Target metadata\n# TYPE target_info gauge\n\
                 target_info{service_name=\"oz-agent-worker\",worker_id=\"w1\"} 1\n"
            ),
            "{text}"
        );
        for line in [
            "# HELP x_events_total Events.\\nTwo lines".to_string(),
            "# TYPE x_events_total counter".to_string(),
            format!("x_events_total{{{scope},reason=\"a\"}} 0"),
            format!("x_events_total{{{scope},reason=\"b\\\"q\"}} 3"),
            "# TYPE x_duration_seconds histogram".to_string(),
            format!("x_duration_seconds_bucket{{{scope},result=\"ok\",le=\"5\"}} 0"),
            format!("x_duration_seconds_bucket{{{scope},result=\"ok\",le=\"10\"}} 1"),
            format!("x_duration_seconds_bucket{{{scope},result=\"ok\",le=\"+Inf\"}} 1"),
            format!("x_duration_seconds_sum{{{scope},result=\"ok\"}} 7.5"),
            format!("x_duration_seconds_count{{{scope},result=\"ok\"}} 1"),
            format!("x_info{{{scope},version=\"1.0\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Families sorted by name; series by labels ("a" before "b").
        let order: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            order,
            vec![
                "# TYPE target_info gauge",
                "# TYPE x_duration_seconds histogram",
                "# TYPE x_events_total counter",
                "# TYPE x_info gauge",
            ]
        );
    }

    #[test]
    fn openmetrics_when_asked() {
        let text = encode(&sample(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "# TYPE x_events counter",
            "# TYPE x_duration_seconds histogram",
            "# UNIT x_duration_seconds seconds",
            "# TYPE x info",
            "# TYPE target info",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("x_events_total{"), "{text}");
        assert!(text.contains(",le=\"5.0\"} 0"), "{text}");
        assert!(text.contains("x_info{"), "{text}");
        assert!(text.contains("target_info{service_name="), "{text}");
    }

    proptest! {
        /// Go's 'g' output reads back to the same number.
        #[test]
        fn go_floats_round_trip(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            let text = go_float(v);
            prop_assert_eq!(text.parse::<f64>().unwrap(), v, "{}", text);
        }

        #[test]
        fn negotiation_never_panics(accept in ".{0,100}") {
            let _ = negotiate(Some(&accept));
        }

        /// Any label value is escaped onto one line.
        #[test]
        fn label_values_stay_on_one_line(value in ".{0,40}") {
            let text = labels_text(&[("l".into(), value)], None);
            prop_assert!(!text.contains('\n'));
        }
    }
}
