//! The control plane against scripted worker peers over real WebSockets.
//! No Docker. Timers are shortened through `Config`, not slept out.

use oz_test_support as support;

use oz_control_plane::{Config, Storage};
use oz_protocol::{FailureReason, OwnerType, TaskFailed, WorkerMessage};
use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use std::collections::BTreeMap;
use std::time::Duration;
use support::control_plane::{
    test_config, wait_for_state, ScriptedWorker, TestPlane, EXPECT_TIMEOUT,
};
use tokio_tungstenite::tungstenite::Message;

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        title: Some("fix the build".into()),
        prompt: Some("make CI green".into()),
        docker_image: Some("ubuntu:22.04".into()),
        env_vars: BTreeMap::from([("TOKEN".into(), "s3cret".into())]),
        ..Default::default()
    }
}

const QUIET: Duration = Duration::from_millis(150);

/// Creates a run for `w`'s id and has `w` take and claim it.
async fn claimed_run(t: &TestPlane, w: &mut ScriptedWorker) -> Run {
    let client = t.client();
    let run = client.create_run(&run_for(&w.worker_id)).await.unwrap();
    w.expect_assignment().await;
    w.claim(&run.id).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await
}

#[tokio::test]
async fn missing_wrong_keys_and_reserved_ids_are_refused() {
    let t = TestPlane::start(test_config()).await;
    let url = t.plane.ws_url();
    let (status, body) = ScriptedWorker::try_connect(&url, None, Some("w1"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("missing API key"), "{body}");
    let (status, body) = ScriptedWorker::try_connect(&url, Some("ozk_wrong"), Some("w1"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("invalid API key"), "{body}");
    let (status, body) = ScriptedWorker::try_connect(&url, Some(&t.key), None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("worker_id"), "{body}");
    let (status, body) = ScriptedWorker::try_connect(&url, Some(&t.key), Some("warp-1"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("reserved"), "{body}");
    // The prefix is case-sensitive, as in the Go worker.
    let mut capital = t.worker("Warp-1").await;
    let run = t.client().create_run(&run_for("Warp-1")).await.unwrap();
    assert_eq!(capital.expect_assignment().await.task_id, run.id);
    let refused = t.client().create_run(&run_for("warp-1")).await.unwrap_err();
    assert_eq!(refused.status(), Some(400));
    assert!(refused.to_string().contains("reserved"), "{refused}");

    // The runs API answers the same way.
    let bad = oz_runs_api::client::Client::new(&t.plane.url(), "ozk_wrong").unwrap();
    let e = bad.list_runs(None, None).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("invalid API key"), "{e}");
}

#[tokio::test]
async fn assignment_carries_the_run_and_the_team_owner() {
    let t = TestPlane::start(test_config()).await;
    let mut w = t.worker("w1").await;
    let run = t.client().create_run(&run_for("w1")).await.unwrap();
    let a = w.expect_assignment().await;
    assert_eq!(a.task_id, run.id);
    assert_eq!(a.task.id, run.id);
    assert!(a
        .execution_id
        .as_deref()
        .is_some_and(|e| e.starts_with("exec_")));
    assert_eq!(a.task.title, "fix the build");
    assert_eq!(a.task.task_definition.prompt, "make CI green");
    let owner = a.task.owner.unwrap();
    assert_eq!((owner.kind, owner.id), (OwnerType::Team, t.team_id));
    assert_eq!(a.env_vars["TOKEN"].expose_str(), "s3cret");
    assert!(a.task.created_at.unwrap().ends_with('Z'));
    // The API never returns env values.
    let shown = t.client().get_run(&run.id).await.unwrap();
    assert_eq!(shown.env_var_names, ["TOKEN"]);
    assert!(!serde_json::to_string(&shown).unwrap().contains("s3cret"));
}

#[tokio::test]
async fn teams_only_see_and_receive_their_own_runs() {
    let t = TestPlane::start(test_config()).await;
    let beta = t.plane.create_api_key("beta").unwrap();
    let beta_client = oz_runs_api::client::Client::new(&t.plane.url(), &beta.secret).unwrap();
    let mut alpha_w = t.worker("shared").await;
    let mut beta_w = ScriptedWorker::connect(&t.plane.ws_url(), &beta.secret, "shared").await;

    let run = t.client().create_run(&run_for("shared")).await.unwrap();
    assert_eq!(alpha_w.expect_assignment().await.task_id, run.id);
    beta_w.expect_nothing(QUIET).await;

    // Beta can neither see, cancel, nor report on alpha's run.
    assert_eq!(
        beta_client.get_run(&run.id).await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        beta_client.cancel_run(&run.id).await.unwrap_err().status(),
        Some(404)
    );
    assert!(beta_client.list_runs(None, None).await.unwrap().is_empty());
    beta_w.claim(&run.id).await;
    beta_w.complete(&run.id, None).await;
    beta_w.ping().await;
    assert_eq!(
        t.client().get_run(&run.id).await.unwrap().state,
        RunState::Assigned
    );
}

#[tokio::test]
async fn connections_sharing_an_id_get_runs_round_robin_one_offer_at_a_time() {
    let t = TestPlane::start(test_config()).await;
    let mut workers = vec![
        t.worker("pool").await,
        t.worker("pool").await,
        t.worker("pool").await,
    ];
    let mut other = t.worker("Pool").await; // ids are case-sensitive
    let client = t.client();
    let mut created = Vec::new();
    for _ in 0..9 {
        created.push(client.create_run(&run_for("pool")).await.unwrap().id);
    }
    // Each connection holds one unclaimed offer at a time; claiming it
    // brings the next. Runs go out oldest first, to each connection in turn.
    let mut offered = Vec::new();
    for _round in 0..3 {
        for w in &mut workers {
            let a = w.expect_assignment().await;
            w.expect_nothing(QUIET).await;
            offered.push(a.task_id.clone());
            w.claim(&a.task_id).await;
        }
    }
    let mut sorted = offered.clone();
    sorted.sort_by_key(|id| created.iter().position(|c| c == id));
    assert_eq!(sorted, created, "every run offered exactly once");
    assert_eq!(offered[..3], created[..3], "first round in creation order");
    other.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn a_rejected_run_goes_back_to_the_queue_and_to_another_connection() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut a = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let first = a.expect_assignment().await;
    let mut b = t.worker("w1").await;
    a.reject(&run.id, "at capacity").await;
    let second = b.expect_assignment().await;
    assert_eq!(second.task_id, run.id);
    // One execution per run: a re-offer repeats it.
    assert_eq!(second.execution_id, first.execution_id);
    a.expect_nothing(QUIET).await;
    let shown = client.get_run(&run.id).await.unwrap();
    assert!(shown.history.iter().any(|h| h.state == RunState::Queued
        && h.note.as_deref() == Some("rejected by worker: at capacity")));

    // With nobody else, the same connection is offered it again later.
    b.reject(&run.id, "at capacity").await;
    a.close().await;
    let again = b.expect_assignment().await;
    assert_eq!(again.task_id, run.id);
}

#[tokio::test]
async fn a_disconnect_before_the_claim_requeues_the_run() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut a = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    a.expect_assignment().await;
    a.close().await;
    let queued = wait_for_state(&client, &run.id, RunState::Queued).await;
    assert!(queued
        .waiting_reason
        .unwrap()
        .contains("no worker with id \"w1\""));
    assert!(queued
        .history
        .iter()
        .any(|h| h.note.as_deref() == Some("worker connection closed before claim")));
    let mut b = t.worker("w1").await;
    assert_eq!(b.expect_assignment().await.task_id, run.id);
}

#[tokio::test]
async fn a_terminal_message_after_reconnecting_is_accepted() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut a = t.worker("w1").await;
    let run = claimed_run(&t, &mut a).await;
    a.close().await;
    // Still claimed, and the API says why it is not moving (once the plane
    // has seen the connection go).
    let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
    loop {
        let waiting = client.get_run(&run.id).await.unwrap();
        assert_eq!(waiting.state, RunState::Claimed);
        if waiting
            .waiting_reason
            .as_deref()
            .is_some_and(|r| r.contains("worker_lost"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never said why: {waiting:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A report naming no execution is taken only from the connection the
    // run was assigned to (issue 21); a worker re-sending a held report on
    // a new connection names its execution, as this one does next.
    let mut again = t.worker("w1").await;
    again
        .fail(&run.id, FailureReason::ContainerExit, Some(3))
        .await;
    again.ping().await;
    assert_eq!(
        client.get_run(&run.id).await.unwrap().state,
        RunState::Claimed
    );
    again
        .send(WorkerMessage::TaskFailed(TaskFailed {
            task_id: run.id.clone(),
            message: "it broke".into(),
            failure_reason: FailureReason::ContainerExit,
            exit_code: Some(3),
            execution_id: run.execution_id.clone(),
            failure_details: None,
        }))
        .await;
    let done = wait_for_state(&client, &run.id, RunState::Failed).await;
    assert_eq!(done.failure_reason.as_deref(), Some("container_exit"));
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.message.as_deref(), Some("it broke"));
}

#[tokio::test]
async fn duplicate_terminal_messages_change_nothing() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    w.expect_assignment().await;
    w.claim(&run.id).await;
    w.complete(&run.id, None).await;
    let done = wait_for_state(&client, &run.id, RunState::Succeeded).await;
    w.complete(&run.id, None).await;
    w.fail(&run.id, FailureReason::Unknown, Some(1)).await;
    w.claim(&run.id).await;
    w.ping().await;
    let after = client.get_run(&run.id).await.unwrap();
    assert_eq!(after.state, RunState::Succeeded);
    assert_eq!(after.history, done.history);
    assert_eq!(after.exit_code, None);
}

#[tokio::test]
async fn cancelling_a_queued_run_is_immediate_and_final() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let run = client.create_run(&run_for("nobody-home")).await.unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert!(run.waiting_reason.unwrap().contains("nobody-home"));
    let cancelled = client.cancel_run(&run.id).await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    // Cancelling again is a no-op (issue 22: cancellation is idempotent):
    // the same cancelled run, no second history entry.
    let again = client.cancel_run(&run.id).await.unwrap();
    assert_eq!(again.state, RunState::Cancelled);
    assert_eq!(again.history.len(), cancelled.history.len(), "{again:#?}");
    // A worker connecting later is not offered it.
    let mut w = t.worker("nobody-home").await;
    w.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn cancelling_a_claimed_run_asks_its_worker() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = claimed_run(&t, &mut w).await;
    let requested = client.cancel_run(&run.id).await.unwrap();
    assert_eq!(requested.state, RunState::Claimed);
    assert!(requested.cancel_requested);
    assert_eq!(w.expect_cancellation().await, run.id);
    w.complete(&run.id, Some("CANCELLED")).await;
    wait_for_state(&client, &run.id, RunState::Cancelled).await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = test_config();
        c.storage = Storage::File(dir.path().join("cp.sqlite3"));
        c
    };
    let t = TestPlane::start(config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let claimed = client.create_run(&run_for("w1")).await.unwrap();
    let execution = w.expect_assignment().await.execution_id;
    w.claim(&claimed.id).await;
    wait_for_state(&client, &claimed.id, RunState::Claimed).await;
    let queued = client.create_run(&run_for("w2")).await.unwrap();
    let key = t.key.clone();
    t.plane.shutdown().await;
    w.expect_closed(Duration::from_secs(2)).await;

    let plane = oz_control_plane::ControlPlane::start(config())
        .await
        .unwrap();
    let client = oz_runs_api::client::Client::new(&plane.url(), &key).unwrap();
    assert_eq!(
        client.get_run(&claimed.id).await.unwrap().state,
        RunState::Claimed
    );
    assert_eq!(
        client.get_run(&queued.id).await.unwrap().state,
        RunState::Queued
    );
    // The queued run is offered again; the claimed one takes its worker's report.
    let mut w2 = ScriptedWorker::connect(&plane.ws_url(), &key, "w2").await;
    assert_eq!(w2.expect_assignment().await.task_id, queued.id);
    let mut w1 = ScriptedWorker::connect(&plane.ws_url(), &key, "w1").await;
    w1.expect_nothing(QUIET).await;
    // On a new connection, the held report names its execution.
    w1.complete_execution(&claimed.id, execution.as_deref(), None)
        .await;
    let done = wait_for_state(&client, &claimed.id, RunState::Succeeded).await;
    let states: Vec<RunState> = done.history.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        [
            RunState::Queued,
            RunState::Assigned,
            RunState::Claimed,
            RunState::Succeeded
        ]
    );
}

#[tokio::test]
async fn malformed_and_unknown_frames_are_ignored() {
    let t = TestPlane::start(test_config()).await;
    let mut w = t.worker("w1").await;
    for frame in [
        Message::text("{not json"),
        Message::text(r#"{"type":"hello","data":{}}"#),
        Message::text(r#"{"type":"task_claimed","data":{"task_id":5}}"#),
        Message::text(
            r#"{"type":"task_failed","data":{"task_id":"run_nope","message":"x","failure_reason":"unknown"}}"#,
        ),
        Message::binary(vec![0, 1, 2]),
    ] {
        w.send_raw(frame).await;
    }
    w.ping().await;
    let run = t.client().create_run(&run_for("w1")).await.unwrap();
    assert_eq!(w.expect_assignment().await.task_id, run.id);
}

#[tokio::test]
async fn a_silent_worker_is_dropped_and_its_claimed_run_fails_as_worker_lost() {
    let mut config: Config = test_config();
    // Long enough that a loaded machine does not stall a ping, or the
    // silent worker's claim, past it.
    config.worker_read_timeout = Duration::from_secs(2);
    config.worker_lost_timeout = Duration::from_millis(300);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut chatty = t.worker("chatty").await;
    // Queued before it connects: offered as it registers, claimed at once.
    let run = client.create_run(&run_for("silent")).await.unwrap();
    let mut silent = t.worker("silent").await;
    silent.expect_assignment().await;
    silent.claim(&run.id).await;
    let claimed = tokio::time::Instant::now();
    // Pings (every 100 ms) keep a connection alive past the deadline, until
    // the silent one is dropped for it.
    loop {
        chatty.ping().await;
        if silent.closed_within(Duration::from_millis(100)).await {
            break;
        }
        assert!(
            claimed.elapsed() < EXPECT_TIMEOUT,
            "the silent worker is still connected"
        );
    }
    assert!(
        claimed.elapsed() >= Duration::from_secs(2) / 2,
        "dropped too early"
    );
    let lost = wait_for_state(&client, &run.id, RunState::Failed).await;
    assert_eq!(lost.failure_reason.as_deref(), Some("worker_lost"));
    let r = client.create_run(&run_for("chatty")).await.unwrap();
    assert_eq!(chatty.expect_assignment().await.task_id, r.id);
}

#[tokio::test]
async fn a_cancel_before_the_claim_ends_the_run_when_the_worker_rejects_it() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    w.expect_assignment().await;
    let requested = client.cancel_run(&run.id).await.unwrap();
    assert_eq!(requested.state, RunState::Assigned);
    assert_eq!(w.expect_cancellation().await, run.id);
    w.reject(&run.id, "at capacity").await;
    wait_for_state(&client, &run.id, RunState::Cancelled).await;
    w.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn a_cancel_for_a_disconnected_holder_is_delivered_when_it_reconnects() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = claimed_run(&t, &mut w).await;
    w.close().await;
    tokio::time::sleep(QUIET).await;
    assert!(client.cancel_run(&run.id).await.unwrap().cancel_requested);
    let mut back = t.worker("w1").await;
    assert_eq!(back.expect_cancellation().await, run.id);
    back.complete(&run.id, Some("CANCELLED")).await;
    wait_for_state(&client, &run.id, RunState::Cancelled).await;
}
