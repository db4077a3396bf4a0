//! A worker in its own PID namespace (`unshare --pid --fork --mount-proc`,
//! as a container has) and a second worker with the same id on the same
//! host, outside it (issue 22 item 3). The second one's start-up sweep and
//! `cleanup --dry-run` must judge the first alive (by its liveness socket,
//! not by a pid that means another process out here), so its running task
//! container survives and its run succeeds. Real worker binaries, real
//! dockerd.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn unshare_available() -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("`unshare --pid --fork --mount-proc` cannot run here (util-linux, root)");
        }
        eprintln!("skipping: `unshare --pid --fork --mount-proc` cannot run here");
    }
    ok
}

/// Ids of the task containers labelled with `worker_id`, running or not.
async fn task_containers(worker_id: &str) -> Vec<(String, bool)> {
    let d = Engine::Docker.docker().await;
    let labels = [
        format!("dev.oz.worker-id={worker_id}"),
        "dev.oz.role=task".to_string(),
    ];
    labelled_containers(&d, &labels)
        .await
        .into_iter()
        .map(|c| {
            (
                c.id,
                c.state == Some(oz_docker_engine::models::ContainerSummaryState::Running),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_another_pid_namespace_keeps_its_task_containers() {
    if !Engine::Docker.available() || !unshare_available() {
        return;
    }
    let plane = TestPlane::start(test_config()).await;
    let report = tempfile::tempdir().unwrap();
    let id = unique_id("pidns");
    let volume = format!("{}:/report", report.path().display());
    let options = |wrapper: Vec<String>| WorkerOptions {
        worker_id: &id,
        extra_args: vec!["-v".into(), volume.clone()],
        wrapper,
        ..Default::default()
    };
    let inside = WorkerProcess::start(
        &plane,
        Engine::Docker,
        options(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
                .map(String::from)
                .to_vec(),
        ),
    )
    .await;
    let run = plane
        .client()
        .create_run(&demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "12")],
        ))
        .await
        .unwrap();
    wait_state(&plane, &run.id, RunState::Claimed, RUN_TIMEOUT).await;
    // The agent has started once its report exists.
    let executions = report.path().join(&run.id).join("executions");
    support::host::wait_file(&executions).await;
    let before = task_containers(&id).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].1, "the task container runs");

    // A second worker with the same id, outside the namespace: its start-up
    // sweep runs before it connects.
    let outside = WorkerProcess::start(&plane, Engine::Docker, options(vec![])).await;
    let after = task_containers(&id).await;
    assert_eq!(
        after,
        before,
        "the other worker removed a live worker's task container; its log:\n{}",
        outside.log_text()
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["cleanup", "--dry-run", "--worker-id", &id])
        .env_remove("DOCKER_CONTEXT")
        .envs(Engine::Docker.env())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = &before[0].0[..12];
    let line = listing
        .lines()
        .find(|l| l.contains(short))
        .unwrap_or_else(|| panic!("cleanup does not list the task container:\n{listing}"));
    assert!(
        line.starts_with("kept") && line.contains("is running"),
        "cleanup --dry-run would remove a live worker's container: {line}"
    );

    let done = wait_terminal(&plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        done.state,
        RunState::Succeeded,
        "{done:#?}\ninside log:\n{}",
        inside.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&executions)
            .unwrap()
            .lines()
            .count(),
        1
    );
    drop(outside);
    drop(inside);
}
