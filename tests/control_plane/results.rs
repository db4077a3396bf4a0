//! Results reported through the API (`POST /api/v1/runs/{id}/result`) for
//! runs a worker handed to an outside system, and the image-reference check
//! of new runs and schedules with the worker's own parser.

use oz_test_support as support;

use oz_protocol::SidecarSpec;
use oz_runs_api::client::Client;
use oz_runs_api::model::{
    CreateRunRequest, CreateScheduleRequest, MissedSlots, ResultOutcome, RunResultRequest, RunState,
};
use std::time::Duration;
use support::control_plane::{
    create_key_with_cli, test_config, wait_for_state, ServeProcess, TestPlane, QUIET_PERIOD,
};
use support::fixtures;
use support::worker::*;

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        ..Default::default()
    }
}

fn result(outcome: ResultOutcome) -> RunResultRequest {
    RunResultRequest {
        outcome,
        execution_id: None,
        failure_reason: None,
        exit_code: None,
        message: None,
    }
}

#[tokio::test]
async fn a_claimed_runs_result_is_recorded_once_and_repeating_it_changes_nothing() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await;

    let report = RunResultRequest {
        execution_id: Some(exec.clone()),
        failure_reason: Some("dispatch_command".into()),
        exit_code: Some(3),
        message: Some("the outside system's job failed".into()),
        ..result(ResultOutcome::Failed)
    };
    let ended = client.report_result(&run.id, &report).await.unwrap();
    assert_eq!(ended.state, RunState::Failed);
    assert_eq!(ended.failure_reason.as_deref(), Some("dispatch_command"));
    assert_eq!(ended.exit_code, Some(3));
    assert_eq!(
        ended.message.as_deref(),
        Some("the outside system's job failed")
    );
    let last = ended.history.last().unwrap();
    assert_eq!(last.state, RunState::Failed);
    assert_eq!(
        last.note.as_deref(),
        Some("result reported through the API: failed (dispatch_command)")
    );

    // The same report again (a retry after a lost answer): unchanged.
    let again = client.report_result(&run.id, &report).await.unwrap();
    assert_eq!(again.history, ended.history);
    // A different one: refused, naming what ended it.
    let e = client
        .report_result(&run.id, &result(ResultOutcome::Succeeded))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(
        e.to_string()
            .contains("already ended (failed, reported by api)"),
        "{e}"
    );

    // The worker's own late report is acked and ignored; its re-announce
    // of the execution is not answered with a cancellation (the outside
    // system has finished it).
    w.complete_execution(&run.id, Some(&exec), None).await;
    w.expect_ack(&run.id).await;
    w.claim_execution(&run.id, Some(&exec)).await;
    w.expect_nothing(QUIET_PERIOD).await;
    assert_eq!(
        client.get_run(&run.id).await.unwrap().history,
        ended.history
    );
}

#[tokio::test]
async fn results_for_runs_not_claimed_for_another_execution_or_team_are_refused() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let queued = client.create_run(&run_for("nobody")).await.unwrap();
    let e = client
        .report_result(&queued.id, &result(ResultOutcome::Succeeded))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(
        e.to_string().contains("is queued") && e.to_string().contains("cancel it instead"),
        "{e}"
    );

    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    let e = client
        .report_result(&run.id, &result(ResultOutcome::Succeeded))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is assigned"), "{e}");
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await;
    let other_exec = RunResultRequest {
        execution_id: Some("exec_someone_else".into()),
        ..result(ResultOutcome::Succeeded)
    };
    let e = client
        .report_result(&run.id, &other_exec)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("exec_someone_else"), "{e}");

    let beta = t.plane.create_api_key("beta").unwrap();
    let theirs = Client::new(&t.plane.url(), &beta.secret).unwrap();
    let e = theirs
        .report_result(&run.id, &result(ResultOutcome::Succeeded))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(
        client.get_run(&run.id).await.unwrap().state,
        RunState::Claimed,
        "nothing refused changed the run"
    );
}

/// The real worker's command runtime dispatches a run to a fake outside
/// system and frees its slot; the run stays claimed until the outside
/// system reports through the API. A restarted worker re-announces the
/// dispatch and is not told to cancel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatched_run_ends_when_its_outside_system_reports_it() {
    let t = TestPlane::start(test_config()).await;
    let root = tempfile::tempdir().unwrap();
    let report = root.path().join("report");
    std::fs::create_dir(&report).unwrap();
    let config = root.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "backend:\n  command:\n    dispatch_command: '{} {r}'\n    cancel_command: '{} {r}'\n",
            fixtures::path("command/dispatch.sh").display(),
            fixtures::path("command/cancel.sh").display(),
            r = report.display()
        ),
    )
    .unwrap();
    let id = unique_id("result");
    let options = || WorkerOptions {
        worker_id: &id,
        extra_args: vec![
            "--backend".into(),
            "command".into(),
            "--config-file".into(),
            config.display().to_string(),
        ],
        ..Default::default()
    };
    let mut w = WorkerProcess::start(&t, Engine::None, options()).await;
    let client = t.client();
    let run = client.create_run(&run_for(&id)).await.unwrap();
    let dir = report.join(&run.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !dir.join("job_pid").exists() || !w.log_text().contains("task dispatched") {
        assert!(tokio::time::Instant::now() < deadline, "{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job: u32 = std::fs::read_to_string(dir.join("job_pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let claimed = wait_for_state(&client, &run.id, RunState::Claimed).await;

    let ended = client
        .report_result(
            &run.id,
            &RunResultRequest {
                execution_id: claimed.execution_id.clone(),
                message: Some("the outside system finished it".into()),
                ..result(ResultOutcome::Succeeded)
            },
        )
        .await
        .unwrap();
    assert_eq!(ended.state, RunState::Succeeded);

    // The worker goes away and comes back: it re-announces the dispatch.
    w.signal(15);
    w.wait_exit(Duration::from_secs(30)).await;
    let w = WorkerProcess::start(&t, Engine::None, options()).await;
    w.wait_for_log("re-announcing 1 task(s)", Duration::from_secs(30))
        .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        !dir.join("cancels").exists(),
        "the cancel command ran for a run whose result was reported"
    );
    assert_eq!(
        client.get_run(&run.id).await.unwrap().state,
        RunState::Succeeded
    );
    // The fake outside system's job.
    let _ = std::process::Command::new("kill")
        .arg(job.to_string())
        .status();
}

#[tokio::test]
async fn image_references_are_checked_with_the_workers_parser() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(dir.path(), "alpha").await;
    let serve = ServeProcess::start(dir.path(), &[]).await;
    let client = Client::new(&serve.url, &key).unwrap();
    let worker_says = |r: &str| {
        oz_docker_engine::reference::ImageRef::parse(r)
            .unwrap_err()
            .to_string()
    };
    let bad = [
        (
            CreateRunRequest {
                docker_image: Some("Ubuntu:22.04".into()),
                ..run_for("w1")
            },
            "Ubuntu:22.04",
        ),
        (
            CreateRunRequest {
                sidecar_image: Some("registry.example.com//agent".into()),
                ..run_for("w1")
            },
            "registry.example.com//agent",
        ),
        (
            CreateRunRequest {
                additional_sidecars: vec![SidecarSpec {
                    image: "tools:bad tag".into(),
                    mount_path: "/tools".into(),
                    read_write: false,
                }],
                ..run_for("w1")
            },
            "tools:bad tag",
        ),
    ];
    for (req, reference) in bad {
        let e = client.create_run(&req).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        assert_eq!(e.to_string(), worker_says(reference));
        let e = client
            .create_schedule(&CreateScheduleRequest {
                name: None,
                cron: "@hourly".into(),
                time_zone: None,
                missed: MissedSlots::Skip,
                run: req,
            })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), format!("run: {}", worker_says(reference)));
    }
    assert!(client.list_runs(None, None).await.unwrap().is_empty());
    // What the worker can pull is taken.
    let ok = client
        .create_run(&CreateRunRequest {
            docker_image: Some("127.0.0.1:5000/oz/busybox:1".into()),
            sidecar_image: Some(format!("{SIDECAR}@sha256:{}", "a".repeat(64))),
            ..run_for("w1")
        })
        .await
        .unwrap();
    assert_eq!(ok.state, RunState::Queued);
    // The CLI shows the same message.
    let out = support::cli::client(&serve.url, &key)
        .args(["run", "--host", "w1", "--image", "Ubuntu:22.04"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&worker_says("Ubuntu:22.04")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
