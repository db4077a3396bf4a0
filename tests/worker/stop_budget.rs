//! A stop fits inside the systemd unit's `TimeoutStopSec` by construction
//! (issue 22 item 8). The worst case, caused for real: the real worker
//! binary with its default shutdown timeout, an OTLP collector that accepts
//! connections and never answers, and a running task (direct runtime) whose
//! agent ignores SIGTERM and whose teardown command never ends. After
//! SIGTERM the worker must exit before the unit's limit (read from
//! contrib/systemd/oz-agent-worker.service) and leave no process of the task
//! running, the teardown command's included.

use oz_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::control_plane::{test_config, TestPlane};
use support::host::{wait_file, wait_gone};
use support::worker::*;

/// `TimeoutStopSec` of the unit this project ships.
fn unit_stop_timeout() -> Duration {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/oz-agent-worker.service"),
    )
    .unwrap();
    let value = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    oz_foundation::duration::parse_duration(value).unwrap()
}

fn pid_in(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_silent_collector_and_a_hung_teardown_exits_within_the_units_limit() {
    let limit = unit_stop_timeout();
    // A collector that accepts and never answers (connections kept open).
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_port = collector.local_addr().unwrap().port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = collector.accept().await {
            held.push(conn);
        }
    });

    let root = tempfile::tempdir().unwrap();
    let (ws, report) = (root.path().join("ws"), root.path().join("report"));
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&report).unwrap();
    let agent = root.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\ntrap '' TERM\necho $$ > {r}/agent.pid\nwhile :; do sleep 1; done\n",
            r = report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = root.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "backend:\n  direct:\n    workspace_root: {ws}\n    oz_path: {agent}\n    \
             teardown_command: 'echo $$ > {r}/teardown.pid; sleep 300 & echo $! > {r}/teardown-child.pid; wait'\n    \
             teardown_timeout: 300s\n",
            ws = ws.display(),
            agent = agent.display(),
            r = report.display()
        ),
    )
    .unwrap();

    let plane = TestPlane::start(test_config()).await;
    let id = unique_id("stop-budget");
    let mut w = WorkerProcess::start(
        &plane,
        Engine::None,
        WorkerOptions {
            worker_id: &id,
            extra_args: [
                "--backend",
                "direct",
                "--config-file",
                &config.display().to_string(),
            ]
            .map(String::from)
            .to_vec(),
            env: vec![
                ("OTEL_METRICS_EXPORTER".into(), "otlp".into()),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("http://127.0.0.1:{collector_port}"),
                ),
                // The collector's 10 s of the report.
                ("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "10000".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let run = plane
        .client()
        .create_run(&host_run(&id, "stop", &[]))
        .await
        .unwrap();
    wait_file(&report.join("agent.pid")).await;
    let agent_pid = pid_in(&report.join("agent.pid"));

    let sigterm = Instant::now();
    w.signal(15);
    // The agent ignores SIGTERM and is killed after the grace period; then
    // the teardown starts and never ends on its own.
    wait_file(&report.join("teardown-child.pid")).await;
    let (teardown, teardown_child) = (
        pid_in(&report.join("teardown.pid")),
        pid_in(&report.join("teardown-child.pid")),
    );
    let status = w.wait_exit(limit * 2).await;
    let took = sigterm.elapsed();
    eprintln!("[stop_budget] SIGTERM to exit: {took:.1?} (unit limit {limit:?})");
    let log = w.log_text();
    assert!(
        took < limit,
        "the stop took {took:?}, past the unit's TimeoutStopSec={limit:?} (systemd would SIGKILL it); log:\n{log}"
    );
    assert_eq!(
        status.code(),
        Some(3),
        "the drain was incomplete (the task was force-stopped): exit status 3; log:\n{log}"
    );
    // SIGKILLed before the worker exited; delivery of the signal is
    // asynchronous, and `sleep 300` would outlast the bound.
    for (pid, what) in [
        (agent_pid, "the agent"),
        (teardown, "the teardown command"),
        (teardown_child, "the teardown command's child"),
    ] {
        wait_gone(pid, &format!("{what}, after the worker exited,")).await;
    }
    assert!(
        log.contains("last metrics push did not finish"),
        "the push to the silent collector was not bounded: {log}"
    );
    // The run was reported before the exit.
    let done = plane.client().get_run(&run.id).await.unwrap();
    assert_eq!(
        done.state,
        oz_runs_api::model::RunState::Failed,
        "{done:#?}"
    );
}
