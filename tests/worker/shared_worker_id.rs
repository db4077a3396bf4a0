//! Two workers sharing one worker id, each on a different daemon of the
//! matrix (dockerd 20.10 and Docker 28): runs routed to that id spread over
//! both and all complete, and when one stops the rest go to the other.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn claimed_by(w: &WorkerProcess, run: &str) -> bool {
    w.log_text()
        .lines()
        .any(|l| l.contains("claimed task") && l.contains(run))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_one_worker_id() {
    if !Engine::Docker.available() {
        return;
    }
    let Some(host28) = Engine::Docker28.reachable_host() else {
        return;
    };
    let plane = TestPlane::start(test_config()).await;
    // Docker 28 runs in a container that bind-mounts /tmp at the same path.
    let report = tempfile::tempdir_in("/tmp").unwrap();
    let id = unique_id("shared");
    let start = |env: Vec<(String, String)>| {
        let plane = &plane;
        let id = id.clone();
        let report = report.path().display().to_string();
        async move {
            WorkerProcess::start(
                plane,
                Engine::Docker,
                WorkerOptions {
                    worker_id: &id,
                    extra_args: vec![
                        "-v".into(),
                        format!("{report}:/report"),
                        "--max-concurrent-tasks".into(),
                        "1".into(),
                    ],
                    env,
                    ..Default::default()
                },
            )
            .await
        }
    };
    let mut on20 = start(vec![]).await;
    let on28 = start(vec![("DOCKER_HOST".into(), host28)]).await;
    let client = plane.client();

    // Spread: with one slot each, a queue of runs is shared by both.
    let mut first = Vec::new();
    for _ in 0..6 {
        let req = demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "1")],
        );
        first.push(client.create_run(&req).await.unwrap().id);
    }
    for run in &first {
        let done = wait_terminal(&plane, run, RUN_TIMEOUT).await;
        assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    }
    let by20 = first.iter().filter(|r| claimed_by(&on20, r)).count();
    let by28 = first.iter().filter(|r| claimed_by(&on28, r)).count();
    assert_eq!(
        by20 + by28,
        first.len(),
        "each run claimed by exactly one worker"
    );
    assert!(
        by20 >= 1 && by28 >= 1,
        "spread over both: {by20} and {by28}"
    );

    // Stop one while runs wait: the rest go to the other.
    let mut second = Vec::new();
    for _ in 0..5 {
        let req = demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "2")],
        );
        second.push(client.create_run(&req).await.unwrap().id);
    }
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !second.iter().any(|r| claimed_by(&on20, r)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            on20.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    on20.signal(15);
    on20.wait_exit(Duration::from_secs(60)).await;
    let mut shut_down = 0;
    for run in &second {
        let done = wait_terminal(&plane, run, RUN_TIMEOUT).await;
        if claimed_by(&on20, run) {
            // What the stopped worker held ends as its shutdown says.
            assert!(
                done.state == RunState::Succeeded
                    || done.failure_reason.as_deref() == Some("graceful_shutdown"),
                "{done:#?}"
            );
            shut_down += 1;
        } else {
            assert!(
                claimed_by(&on28, run),
                "{run} was run by the remaining worker"
            );
            assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
        }
        let executions = std::fs::read_to_string(report.path().join(run).join("executions"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        assert!(executions <= 1, "{run} ran {executions} times");
    }
    assert_eq!(shut_down, 1, "one slot on the stopped worker");
}
