//! The operator's dashboard and alerts in `contrib/` work against what the
//! binaries really export:
//!
//! - `promtool check rules` and `promtool test rules` (Debian's
//!   `prometheus` package, installed by `scripts/test-promtool.sh`) pass on
//!   `contrib/prometheus/`. A missing promtool fails the test: there is no
//!   skip.
//! - Every metric a query of the Grafana dashboard, of the rules or of the
//!   README's KEDA example names
//!   (each identifier starting `oz_`, and `target_info`) is on the pages
//!   the real worker binary (`--metrics-listen`, direct runtime, one task
//!   run) and the real `serve --metrics-listen` export, and every label a
//!   selector of it matches is one those series carry (or one the scrape
//!   adds: `job`, `instance`). A histogram is named through its `_bucket`,
//!   `_sum` or `_count` series, and only a histogram may be.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::fixtures::FakeAgentRoot;
use support::net::{free_port, metrics_page};
use support::plane_process::PlaneProcess;
use support::worker::{host_run, Engine, WorkerOptions, WorkerProcess};

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

/// `promtool` on PATH, or a failure saying how to install it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH: run scripts/test-promtool.sh (it installs Debian's \
             prometheus package); scripts/test.sh does so"
        )
    })
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(contrib("prometheus"))
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    assert!(text.contains("SUCCESS"), "promtool {args:?} said:\n{text}");
}

#[test]
fn promtool_checks_the_rules() {
    run_promtool(&["check", "rules", "oz-agent-worker.rules.yml"]);
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    run_promtool(&["test", "rules", "oz-agent-worker.rules.test.yml"]);
}

// ---- the metrics a page exports ----

/// A family on a `/metrics` page: its `# TYPE` and the label names of its
/// series (histogram `le` included).
#[derive(Debug, Default, Clone)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// Family name → family, from Prometheus text format 0.0.4.
fn families(page: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            out.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| sample.strip_suffix(s))
            .find(|f| out.get(*f).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(sample)
            .to_string();
        let labels = label_names(line[end..].strip_prefix('{').unwrap_or(""));
        out.entry(family).or_default().labels.extend(labels);
    }
    out
}

/// The label names of a selector or series body (`a="x",b=~"y"}` …), up
/// to its closing brace.
fn label_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\n']);
        if rest.is_empty() || rest.starts_with('}') {
            return names;
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        names.push(rest[..name_end].to_string());
        // Skip the operator and the quoted value.
        let Some(open) = rest.find('"') else {
            return names;
        };
        let mut i = open + 1;
        let bytes = rest.as_bytes();
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        rest = &rest[(i + 1).min(rest.len())..];
    }
}

// ---- the metrics a query names ----

/// One metric a query names, with the label names its selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    name: String,
    labels: Vec<String>,
}

/// Every `oz_…` identifier (and `target_info`) of a PromQL expression
/// outside string literals, with the labels of a `{…}` selector right
/// after it.
fn named_metrics(expr: &str) -> Vec<Named> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            if ident.starts_with("oz_") || ident == "target_info" {
                let labels = if chars.get(i) == Some(&'{') {
                    let body: String = chars[i + 1..].iter().collect();
                    label_names(&body)
                } else {
                    Vec::new()
                };
                out.push(Named {
                    name: ident,
                    labels,
                });
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Why `named` is not what `exported` has, if it is not.
fn check(named: &Named, exported: &BTreeMap<String, Family>) -> Result<(), String> {
    let (family, suffixed) = match exported.get(&named.name) {
        Some(f) if f.kind == "histogram" => {
            return Err(format!(
                "{} is a histogram: name its _bucket, _sum or _count series",
                named.name
            ))
        }
        Some(f) => (f, false),
        None => {
            let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                let base = named.name.strip_suffix(s)?;
                exported.get(base).filter(|f| f.kind == "histogram")
            });
            match histogram {
                Some(f) => (f, true),
                None => return Err(format!("{} is not exported", named.name)),
            }
        }
    };
    for label in &named.labels {
        let known = family.labels.contains(label)
            || ["job", "instance", "__name__"].contains(&label.as_str());
        // `le` exists on _bucket series only.
        let bucket_only = label == "le" && suffixed && !named.name.ends_with("_bucket");
        if !known || bucket_only {
            return Err(format!(
                "{} has no label {label:?} (it has {:?})",
                named.name, family.labels
            ));
        }
    }
    Ok(())
}

/// Every query of the dashboard (panel targets, and template variables'
/// queries) and of the rules, each with where it is.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/oz-agent-worker.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    fn panels<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("dashboard panel {:?}", p["title"]), expr.into()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let query = match &v["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o["query"].as_str().unwrap_or_default().to_string(),
            _ => continue,
        };
        if v["type"] == "query" {
            out.push((format!("dashboard variable {:?}", v["name"]), query));
        }
    }
    // The README's autoscaling example (the KEDA ScaledObject's query).
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let keda: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: "))
        .filter(|q| q.contains("oz_"))
        .collect();
    assert!(!keda.is_empty(), "no KEDA query in the README");
    for q in keda {
        out.push(("README's KEDA ScaledObject".into(), q.into()));
    }
    let rules: Value = serde_norway::from_str(
        &std::fs::read_to_string(contrib("prometheus/oz-agent-worker.rules.yml")).unwrap(),
    )
    .expect("the rules are YAML");
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let what = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            out.push((format!("rule {what}"), r["expr"].as_str().unwrap().into()));
        }
    }
    out
}

/// The test's own checks, on a made-up page: a name that is not exported,
/// a bare histogram name, a suffix on a counter and a label a family lacks
/// are all refused.
#[test]
fn the_name_check_refuses_what_a_page_does_not_have() {
    let page = "\
# TYPE oz_worker_connected gauge
oz_worker_connected{otel_scope_name=\"s\"} 1
# TYPE oz_worker_tasks_completed_total counter
oz_worker_tasks_completed_total{result=\"failed\"} 0
# TYPE oz_worker_task_duration_seconds histogram
oz_worker_task_duration_seconds_bucket{result=\"failed\",le=\"5\"} 1
oz_worker_task_duration_seconds_sum{result=\"failed\"} 2
oz_worker_task_duration_seconds_count{result=\"failed\"} 1
";
    let exported = families(page);
    let verdict = |expr: &str| -> Vec<Result<(), String>> {
        named_metrics(expr)
            .iter()
            .map(|n| check(n, &exported))
            .collect()
    };
    assert_eq!(
        verdict(
            "sum by (le) (rate(oz_worker_task_duration_seconds_bucket{job=~\"$job\",le!=\"oz_x\"}[5m]))"
        ),
        vec![Ok(())]
    );
    assert_eq!(
        verdict("oz_worker_tasks_completed_total{result=\"failed\"} / oz_worker_connected"),
        vec![Ok(()), Ok(())]
    );
    for bad in [
        "oz_worker_conected",
        "rate(oz_worker_task_duration_seconds[5m])",
        "oz_worker_tasks_completed_total_bucket",
        "oz_worker_tasks_completed_total{reason=\"x\"}",
        "oz_worker_task_duration_seconds_sum{le=\"5\"}",
    ] {
        let v = verdict(bad);
        assert!(
            v.len() == 1 && v[0].is_err(),
            "{bad:?} should be refused: {v:?}"
        );
    }
    // Strings are not names; label_values() names its metric.
    assert_eq!(
        named_metrics("label_values(oz_worker_info{job=~\"oz_a\"}, instance)"),
        vec![Named {
            name: "oz_worker_info".into(),
            labels: vec!["job".into()]
        }]
    );
}

#[test]
fn the_dashboard_is_plain_json_with_its_data_source_as_a_variable() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/oz-agent-worker.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard.get("__inputs").is_none(), "no import-time inputs");
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        }
    }
}

// ---- against the real binaries ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_name_is_exported() {
    // The control plane with its metrics page.
    let plane_metrics = free_port();
    let plane =
        PlaneProcess::start(&["--metrics-listen", &format!("127.0.0.1:{plane_metrics}")]).await;
    // The worker: direct runtime, the fake agent, its own metrics page.
    let root = FakeAgentRoot::new();
    let config = root.config("");
    let worker_metrics = free_port();
    let worker = WorkerProcess::spawn_at(
        &plane.ws_url(),
        &plane.url(),
        &plane.key,
        Engine::None,
        WorkerOptions {
            worker_id: "dash-worker",
            extra_args: vec![
                "--backend".into(),
                "direct".into(),
                "--config-file".into(),
                config.display().to_string(),
                "--metrics-listen".into(),
                format!("127.0.0.1:{worker_metrics}"),
                "--max-concurrent-tasks".into(),
                "2".into(),
            ],
            ..Default::default()
        },
    );
    worker
        .wait_for_log("connected to the orchestrator", Duration::from_secs(30))
        .await;
    // One task end to end (the worker's duration histogram, the plane's
    // dispatch latency), and one run queued for a worker id with no worker.
    let client = plane.client();
    let run = client
        .create_run(&host_run("dash-worker", "dashboards", &[]))
        .await
        .unwrap();
    let waiting = client
        .create_run(&host_run("dash-absent", "dashboards", &[]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get_run(&run.id).await.unwrap();
        if r.state == RunState::Succeeded {
            break;
        }
        assert!(
            !matches!(r.state, RunState::Failed | RunState::Cancelled),
            "{r:#?}\n{}",
            worker.log_text()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not end: {r:#?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker counts the task once its report is acknowledged; the page
    // shows the histogram from then on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let worker_page = loop {
        let page = metrics_page(worker_metrics).await;
        if page.contains("oz_worker_task_duration_seconds_bucket") {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let plane_page = metrics_page(plane_metrics).await;

    // The plane's page counts what it holds.
    let queued_line = plane_page
        .lines()
        .find(|l| {
            l.starts_with("oz_control_plane_runs_queued{")
                && l.contains("worker_id=\"dash-absent\"")
        })
        .unwrap_or_else(|| panic!("no queue for dash-absent:\n{plane_page}"));
    assert!(queued_line.ends_with(" 1"), "{queued_line}");
    assert!(
        plane_page
            .lines()
            .any(|l| l.starts_with("oz_control_plane_worker_connections{")
                && l.contains("worker_id=\"dash-worker\"")
                && l.ends_with(" 1")),
        "{plane_page}"
    );
    assert!(
        plane_page.lines().any(|l| l
            .starts_with("oz_control_plane_dispatch_latency_seconds_count")
            && l.ends_with(" 1")),
        "{plane_page}"
    );

    let mut exported = families(&worker_page);
    for (name, family) in families(&plane_page) {
        let entry = exported.entry(name).or_default();
        entry.kind = family.kind;
        entry.labels.extend(family.labels);
    }
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    let queries = queries();
    assert!(queries.len() > 20, "{queries:?}");
    for (place, expr) in &queries {
        let named = named_metrics(expr);
        assert!(!named.is_empty(), "{place} names no metric: {expr}");
        for n in named {
            checked.insert(n.name.clone());
            if let Err(why) = check(&n, &exported) {
                problems.push(format!("{place}: {why}\n    in {expr}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries name what is not exported:\n{}",
        problems.join("\n")
    );
    // Every metric either exports appears in the dashboard or the rules.
    let unused: Vec<&String> = exported
        .keys()
        .filter(|name| {
            let family = &exported[*name];
            let forms: Vec<String> = if family.kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect()
            } else {
                vec![name.to_string()]
            };
            !forms.iter().any(|f| checked.contains(f))
        })
        .collect();
    assert!(unused.is_empty(), "not on the dashboard: {unused:?}");
    client.cancel_run(&waiting.id).await.unwrap();
}

/// A metrics address that cannot be served stops `serve` with exit 2 and a
/// message naming the flag, instead of running without the metrics the
/// operator asked for.
#[test]
fn serve_refuses_a_metrics_address_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--metrics-listen"),
        "{stderr}"
    );
}
