//! `--task-timeout` / `task_timeout`, end to end with the real worker
//! binary: past the limit a task is stopped as a cancellation stops it
//! (SIGTERM, then SIGKILL after the stop grace period), its container or
//! agent process group is gone, and it is reported `task_failed` with
//! reason `task_timeout` and a message naming the limit; the failure is
//! counted under that reason in the metrics. On dockerd and on the direct
//! runtime.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use std::time::{Duration, Instant};
use support::control_plane::{test_config, TestPlane};
use support::fixtures::FakeAgentRoot;
use support::host::{running, wait_file, wait_gone};
use support::net::{free_port, metrics_page};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn message(limit: &str) -> String {
    format!("task exceeded task_timeout {limit}; set task_timeout/--task-timeout to allow longer")
}

/// The value of the one `name` series whose labels include all of `labels`.
async fn metric(port: u16, name: &str, labels: &[&str]) -> Option<String> {
    metrics_page(port)
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// A sleeping agent in a container, a 3 s limit: stopped, reported
/// `task_timeout` with the limit, the container removed, the failure counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_docker_the_container_is_stopped_and_the_run_fails_with_task_timeout() {
    if !Engine::Docker.available() {
        return;
    }
    let plane = TestPlane::start(test_config()).await;
    let id = unique_id("timeout-docker");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let _w = WorkerProcess::start(
        &plane,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            extra_args: ["--task-timeout", "3s", "--metrics-listen", &metrics]
                .map(String::from)
                .to_vec(),
            env: vec![("OTEL_METRICS_EXPORTER".into(), "prometheus".into())],
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    let run = plane
        .client()
        .create_run(&demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "300")],
        ))
        .await
        .unwrap();
    let done = wait_terminal(&plane, &run.id, RUN_TIMEOUT).await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("task_timeout"));
    assert_eq!(done.message.as_deref(), Some(message("3s").as_str()));
    let left = task_containers(&Engine::Docker.docker().await, &run.id).await;
    assert!(left.is_empty(), "the task container is gone: {left:?}");
    assert_eq!(
        metric(
            port,
            "oz_worker_task_failures_total",
            &["phase=\"backend\"", "reason=\"task_timeout\""]
        )
        .await
        .as_deref(),
        Some("1")
    );
}

/// An agent on the host that ignores SIGTERM, a 2 s limit and a 1 s grace:
/// SIGTERM to its group at the limit, SIGKILL after the grace, both the
/// agent and its grandchild gone, the run `task_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_direct_runtime_the_agent_group_is_stopped_and_the_run_fails_with_task_timeout() {
    let plane = TestPlane::start(test_config()).await;
    let root = FakeAgentRoot::new();
    let (ws, report) = (root.ws(), root.report());
    // The limit from the file this time; the flag is tested on docker.
    let config = root.config("task_timeout: 2s\n");
    let id = unique_id("timeout-direct");
    let w = WorkerProcess::start(
        &plane,
        Engine::None,
        WorkerOptions {
            worker_id: &id,
            extra_args: [
                "--backend",
                "direct",
                "--config-file",
                config.to_str().unwrap(),
                "--stop-grace-period",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await;
    let run = plane
        .client()
        .create_run(&host_run(&id, "timeout", &[("FAKE_OZ_BEHAVIOUR", "hold")]))
        .await
        .unwrap()
        .id;
    let out = report.join(&run);
    wait_file(&out.join("ready")).await;
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(out.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (agent, grandchild) = (pid("pid"), pid("gc_pid"));
    assert!(running(agent) && running(grandchild));
    let done = wait_terminal(&plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("task_timeout"));
    assert_eq!(done.message.as_deref(), Some(message("2s").as_str()));
    assert!(out.join("term").exists(), "asked politely first (SIGTERM)");
    wait_gone(agent, "the agent").await;
    wait_gone(grandchild, "the agent's grandchild").await;
    assert!(!ws.join(&run).exists(), "the workspace is removed");
    let log = w.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ran past task_timeout (2s)") && l.contains(&run)),
        "the deadline's log line names the task:\n{log}"
    );
}
