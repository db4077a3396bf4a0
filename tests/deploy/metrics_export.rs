//! Metrics export against real consumers: the `/metrics` page parsed by the
//! Prometheus Python client's own parsers (text 0.0.4, and OpenMetrics 1.0
//! when asked for in `Accept`), and OTLP/HTTP pushed to a receiver that
//! decodes the protobuf body with the official `opentelemetry-proto`
//! package. Both Python packages live in a virtualenv the test command
//! installs (`OZ_TEST_TELEMETRY_PYTHON`, default
//! `/var/lib/oz-worker-test/otlp-venv/bin/python`).

use oz_protocol::FailureReason;
use oz_telemetry::exporter;
use oz_worker::metrics::{
    start_chosen, Metrics, TaskResult, FAILURE_PHASES, FAILURE_REASONS, SCOPE_NAME,
};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oz_test_support::fixtures;

/// The virtualenv's python, if it has both packages (else skip, or fail
/// under CI).
fn python() -> Option<PathBuf> {
    let python = std::env::var("OZ_TEST_TELEMETRY_PYTHON")
        .unwrap_or_else(|_| "/var/lib/oz-worker-test/otlp-venv/bin/python".into());
    let ok = Command::new(&python)
        .args(["-c", "import prometheus_client, opentelemetry.proto"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python.into());
    }
    let why =
        format!("{python} lacks prometheus_client or opentelemetry-proto (see scripts/test.sh)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    None
}

/// `GET /metrics` with an optional `Accept`; (content type, body).
async fn scrape(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (content_type, body.to_string())
}

/// The page as the Prometheus client parses it: family name → (type, samples).
fn parse(python: &Path, format: &str, page: &str) -> HashMap<String, (String, Vec<Value>)> {
    let mut child = Command::new(python)
        .arg(fixtures::path("telemetry/prom_parse.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus client refuses the {format} page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    families
        .into_iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                (
                    f["type"].as_str().unwrap().to_string(),
                    f["samples"].as_array().unwrap().clone(),
                ),
            )
        })
        .collect()
}

fn sample_value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find_map(|s| {
        let matches = s[0] == name
            && labels
                .iter()
                .all(|(k, v)| s[1].get(*k).and_then(Value::as_str) == Some(*v));
        matches.then(|| s[2].as_f64().unwrap())
    })
}

#[tokio::test]
async fn the_prometheus_page_parses_in_both_formats() {
    let Some(python) = python() else { return };
    let metrics = Metrics::new("w-prom", "docker", Some(2));
    metrics.set_connected(true);
    metrics.claimed();
    metrics.finished(
        TaskResult::Failed,
        Duration::from_millis(7500),
        Some(&FailureReason::ImagePull),
    );
    let choice = exporter::choose(Some("127.0.0.1:0"), &|_| None);
    let running = start_chosen(&metrics, choice).await.unwrap();
    let addr = running.prometheus.expect("a /metrics server");

    let (content_type, page) = scrape(addr, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = parse(&python, "text", &page);
    let (kind, claimed) = &text["oz_worker_tasks_claimed"];
    assert_eq!(kind, "counter");
    assert_eq!(
        sample_value(
            claimed,
            "oz_worker_tasks_claimed_total",
            &[("otel_scope_name", SCOPE_NAME)]
        ),
        Some(1.0)
    );
    let (_, failures) = &text["oz_worker_task_failures"];
    assert_eq!(failures.len(), FAILURE_PHASES.len() * FAILURE_REASONS.len());
    assert_eq!(
        sample_value(
            failures,
            "oz_worker_task_failures_total",
            &[("phase", "backend"), ("reason", "image_pull")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            failures,
            "oz_worker_task_failures_total",
            &[("phase", "cleanup"), ("reason", "cleanup")]
        ),
        Some(0.0)
    );
    let (kind, duration) = &text["oz_worker_task_duration_seconds"];
    assert_eq!(kind, "histogram");
    assert_eq!(
        sample_value(
            duration,
            "oz_worker_task_duration_seconds_bucket",
            &[("result", "failed"), ("le", "10")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            duration,
            "oz_worker_task_duration_seconds_sum",
            &[("result", "failed")]
        ),
        Some(7.5)
    );
    for (family, kind) in [
        ("oz_worker_connected", "gauge"),
        ("oz_worker_tasks_active", "gauge"),
        ("oz_worker_tasks_max_concurrent", "gauge"),
        ("oz_worker_info", "gauge"),
        ("target_info", "gauge"),
    ] {
        assert_eq!(text[family].0, kind, "{family}");
    }
    assert_eq!(
        sample_value(
            &text["target_info"].1,
            "target_info",
            &[("worker_id", "w-prom"), ("service_name", "oz-agent-worker")]
        ),
        Some(1.0)
    );

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, page) = scrape(addr, Some(prometheus_accept)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = parse(&python, "openmetrics", &page);
    assert_eq!(om["oz_worker"].0, "info");
    assert_eq!(om["target"].0, "info");
    assert_eq!(om["oz_worker_tasks_claimed"].0, "counter");
    assert_eq!(om["oz_worker_task_duration_seconds"].0, "histogram");
    assert_eq!(
        sample_value(&om["oz_worker_connected"].1, "oz_worker_connected", &[]),
        Some(1.0)
    );
    running.shutdown().await;
}

/// The receiver: a child process and the file it appends requests to.
struct Receiver {
    child: std::process::Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(python: &Path) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("requests.jsonl");
        let mut child = Command::new(python)
            .arg(fixtures::path("telemetry/otlp_receiver.py"))
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the receiver prints its port");
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (bounded) until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "only {} request(s) arrived",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric<'a>(request: &'a Value, name: &str) -> &'a Value {
    request["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {request}"))
}

#[tokio::test]
async fn otlp_pushes_reach_a_real_receiver() {
    let Some(python) = python() else { return };
    let receiver = Receiver::start(&python);
    let vars: HashMap<&str, String> = [
        ("OTEL_METRICS_EXPORTER", "otlp".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-oz-test=hello%20there".to_string(),
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.name=overridden".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let choice = exporter::choose(None, &|k| vars.get(k).cloned());
    let metrics = Metrics::new("w-otlp", "docker", None);
    let running = start_chosen(&metrics, choice).await.unwrap();
    assert!(
        running.description.contains("/v1/metrics"),
        "{}",
        running.description
    );

    let first = receiver.wait_for(1).await.remove(0);
    assert_eq!(first["path"], "/v1/metrics");
    assert_eq!(first["content_type"], "application/x-protobuf");
    assert_eq!(first["headers"]["x-oz-test"], "hello there");
    let resource: HashMap<String, String> = first["request"]["resourceMetrics"][0]["resource"]
        ["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"]["stringValue"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        resource["service.name"], "oz-agent-worker",
        "the worker's own attributes win"
    );
    assert_eq!(resource["worker.id"], "w-otlp");
    assert_eq!(resource["worker.backend"], "docker");
    assert_eq!(resource["deployment.environment"], "test");
    assert_eq!(
        first["request"]["resourceMetrics"][0]["scopeMetrics"][0]["scope"]["name"],
        SCOPE_NAME
    );
    let failures = metric(&first, "oz_worker_task_failures_total");
    assert_eq!(failures["sum"]["isMonotonic"], true);
    assert_eq!(
        failures["sum"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    assert_eq!(
        failures["sum"]["dataPoints"].as_array().unwrap().len(),
        FAILURE_PHASES.len() * FAILURE_REASONS.len()
    );
    assert!(
        metric(&first, "oz_worker_tasks_active")["sum"]["isMonotonic"].is_null(),
        "up-down: not monotonic"
    );
    assert!(metric(&first, "oz_worker_connected")["gauge"].is_object());
    let names: Vec<&str> = first["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"oz_worker_task_duration_seconds"),
        "not primed: {names:?}"
    );
    assert_eq!(names.len(), 9, "{names:?}");

    // An event, then shutdown: the last push carries it.
    metrics.claimed();
    metrics.finished(TaskResult::Succeeded, Duration::from_secs(3), None);
    let before = receiver.requests().len();
    running.shutdown().await;
    let last = receiver.wait_for(before + 1).await.pop().unwrap();
    let histogram = metric(&last, "oz_worker_task_duration_seconds");
    assert_eq!(histogram["unit"], "s");
    let point = &histogram["histogram"]["dataPoints"][0];
    assert_eq!(point["count"], "1");
    assert_eq!(point["sum"], 3.0);
    assert_eq!(point["attributes"][0]["value"]["stringValue"], "succeeded");
    let claimed = metric(&last, "oz_worker_tasks_claimed_total");
    assert_eq!(claimed["sum"]["dataPoints"][0]["asInt"], "1");
}
