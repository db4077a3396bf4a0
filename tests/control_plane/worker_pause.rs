//! Pausing and resuming a worker id on the control plane, through the CLI
//! (`oz-agent-worker workers pause|resume|list`) and the runs API, against
//! the real `serve` process: a paused id is offered nothing (a queued run
//! says why), the run it holds goes on to its end, a resume offers the
//! queued run at once, and the pause survives a restart of the plane.

use oz_test_support as support;

use oz_runs_api::model::{CreateRunRequest, RunState};
use oz_test_support::cli::output_text as text;
use std::process::Output;
use std::time::Duration;
use support::control_plane::{wait_for_state, ScriptedWorker, QUIET_PERIOD};
use support::plane_process::PlaneProcess;

async fn cli(plane: &PlaneProcess, args: &[&str]) -> Output {
    support::cli::client(&plane.url(), &plane.key)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        ..Default::default()
    }
}

/// Until the plane lists `id` with a live connection (its record is
/// written after the handshake).
async fn wait_listed(plane: &PlaneProcess, id: &str) {
    // A worker process's start and connect: seconds on a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = plane.client().list_workers().await.unwrap();
        if list
            .workers
            .iter()
            .any(|w| w.worker_id == id && !w.connections.is_empty())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never listed: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_cli_and_the_api_and_across_a_restart() {
    let mut plane = PlaneProcess::start(&[]).await;
    let client = plane.client();
    let id = "pause-me";
    let mut w = ScriptedWorker::connect(&plane.ws_url(), &plane.key, id).await;
    wait_listed(&plane, id).await;

    // A run it holds while it is paused runs on to its end.
    let held = client.create_run(&run_for(id)).await.unwrap();
    let a = w.expect_assignment().await;
    assert_eq!(a.task_id, held.id);
    w.claim(&held.id).await;
    wait_for_state(&client, &held.id, RunState::Claimed).await;

    let out = cli(&plane, &["workers", "pause", id]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), format!("worker {id} paused"));
    let out = cli(&plane, &["workers", "list"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let line = text(&out)
        .lines()
        .find(|l| l.starts_with(id))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("paused"), "{}", text(&out));

    let queued = client.create_run(&run_for(id)).await.unwrap();
    w.expect_nothing(QUIET_PERIOD).await;
    let q = client.get_run(&queued.id).await.unwrap();
    assert_eq!(q.state, RunState::Queued);
    assert!(
        q.waiting_reason
            .as_deref()
            .is_some_and(|r| r.contains("paused")),
        "{q:#?}"
    );
    w.complete(&held.id, None).await;
    wait_for_state(&client, &held.id, RunState::Succeeded).await;
    w.expect_ack(&held.id).await;
    w.expect_nothing(QUIET_PERIOD).await;

    // Stored: a restarted plane keeps it paused.
    drop(w);
    plane.kill().await;
    plane.restart().await;
    let mut w = ScriptedWorker::connect(&plane.ws_url(), &plane.key, id).await;
    wait_listed(&plane, id).await;
    let listed = plane.client().list_workers().await.unwrap();
    let me = listed.workers.iter().find(|x| x.worker_id == id).unwrap();
    assert!(me.paused && me.paused_at.is_some(), "{me:#?}");
    w.expect_nothing(QUIET_PERIOD).await;

    // Resumed through the API: the queued run is offered at once.
    let resumed = plane.client().resume_worker(id).await.unwrap();
    assert!(!resumed.paused);
    let a = w.expect_assignment().await;
    assert_eq!(a.task_id, queued.id);

    // An id nobody connected with is named, exit 2.
    let out = cli(&plane, &["workers", "pause", "nobody-here"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no worker with id \"nobody-here\""),
        "{}",
        text(&out)
    );
}
