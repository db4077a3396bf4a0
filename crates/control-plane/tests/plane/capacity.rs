//! Offers to a worker at capacity: one unclaimed offer per connection, and
//! after a rejection nothing more until one of its tasks ends or the
//! back-off passes, so a run's history stays short. Scripted workers over
//! real WebSockets; no Docker.

use oz_test_support as support;

use oz_runs_api::model::{CreateRunRequest, RunState};
use std::time::Duration;
use support::control_plane::{test_config, wait_for_state, ScriptedWorker, TestPlane};

const QUIET: Duration = Duration::from_millis(200);

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        ..Default::default()
    }
}

/// Takes the next offer and claims it; returns its run id.
async fn take(w: &mut ScriptedWorker) -> String {
    let a = w.expect_assignment().await;
    w.claim_execution(&a.task_id, a.execution_id.as_deref())
        .await;
    a.task_id
}

#[tokio::test]
async fn a_worker_that_rejected_is_offered_nothing_until_one_of_its_tasks_ends() {
    let mut config = test_config();
    // Long enough that only a finished task can bring the next offer.
    config.rejection_backoff = Duration::from_secs(60);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(client.create_run(&run_for("w1")).await.unwrap().id);
    }
    // A worker holding at most two tasks.
    let first = take(&mut w).await;
    let second = take(&mut w).await;
    let third = w.expect_assignment().await;
    w.reject(&third.task_id, "at capacity: 2 of 2 tasks running")
        .await;
    w.expect_nothing(QUIET * 3).await;
    let waiting = wait_for_state(&client, &third.task_id, RunState::Queued).await;
    assert!(
        waiting
            .waiting_reason
            .as_deref()
            .is_some_and(|r| r.contains("at capacity")),
        "{waiting:?}"
    );

    let mut running = vec![first, second];
    let mut offers = 3;
    let mut finished = 0;
    while finished < ids.len() {
        // One task ends: exactly one offer follows (the oldest queued run),
        // and nothing more while the worker is full again.
        let done = running.remove(0);
        w.complete(&done, None).await;
        w.expect_ack(&done).await;
        finished += 1;
        if offers - 1 < ids.len() {
            let next = w.expect_assignment().await;
            offers += 1;
            w.claim_execution(&next.task_id, next.execution_id.as_deref())
                .await;
            running.push(next.task_id);
        }
        w.expect_nothing(QUIET).await;
    }
    assert_eq!(offers, ids.len() + 1, "one rejection in all");
    for id in &ids {
        let run = client.get_run(id).await.unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        // queued, assigned, claimed, succeeded; the rejected one also
        // went back to queued and was assigned again.
        let expected = if *id == third.task_id { 6 } else { 4 };
        assert_eq!(run.history.len(), expected, "{run:#?}");
    }
}

#[tokio::test]
async fn a_worker_that_rejected_is_probed_again_after_the_backoff() {
    let mut config = test_config();
    config.rejection_backoff = Duration::from_millis(400);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let offer = w.expect_assignment().await;
    w.reject(&run.id, "at capacity").await;
    // Not before the back-off, then once, same execution.
    w.expect_nothing(Duration::from_millis(200)).await;
    let probe = w.expect_assignment().await;
    assert_eq!(probe.task_id, run.id);
    assert_eq!(probe.execution_id, offer.execution_id);
    // Rejected again: the next probe waits twice as long.
    w.reject(&run.id, "at capacity").await;
    w.expect_nothing(Duration::from_millis(600)).await;
    assert_eq!(w.expect_assignment().await.task_id, run.id);
}

#[tokio::test]
async fn another_connection_takes_what_one_at_capacity_rejected() {
    let mut config = test_config();
    config.rejection_backoff = Duration::from_secs(60);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut full = t.worker("w1").await;
    let mut free = t.worker("w1").await;
    let a = client.create_run(&run_for("w1")).await.unwrap();
    let b = client.create_run(&run_for("w1")).await.unwrap();
    assert_eq!(full.expect_assignment().await.task_id, a.id);
    assert_eq!(take(&mut free).await, b.id);
    full.reject(&a.id, "at capacity").await;
    assert_eq!(take(&mut free).await, a.id);
    full.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn a_report_for_a_task_of_an_earlier_connection_frees_a_slot() {
    let mut config = test_config();
    config.rejection_backoff = Duration::from_secs(60);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut before = t.worker("w1").await;
    let running = client.create_run(&run_for("w1")).await.unwrap();
    assert_eq!(take(&mut before).await, running.id);
    wait_for_state(&client, &running.id, RunState::Claimed).await;
    before.close().await;
    // The same worker, reconnected, still busy with `running` (a reference
    // worker does not re-announce it): it rejects the next run.
    let mut after = t.worker("w1").await;
    let next = client.create_run(&run_for("w1")).await.unwrap();
    assert_eq!(after.expect_assignment().await.task_id, next.id);
    after
        .reject(&next.id, "at capacity: 1 of 1 tasks running")
        .await;
    after.expect_nothing(QUIET).await;
    // Its report for the earlier task (naming its execution: a report
    // naming none is taken only from the run's own connection, issue 21)
    // shows the slot is free again.
    let execution = client.get_run(&running.id).await.unwrap().execution_id;
    after
        .complete_execution(&running.id, execution.as_deref(), None)
        .await;
    after.expect_ack(&running.id).await;
    assert_eq!(after.expect_assignment().await.task_id, next.id);
}
