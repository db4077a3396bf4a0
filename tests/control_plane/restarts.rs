//! Delivery across failures: the extensions offered at the handshake,
//! report acks, one execution id per run across re-offers and restarts,
//! re-announced claims, frames read before a silent worker is dropped, the
//! header-read timeout, and a SIGKILLed `serve` process. Scripted workers
//! over real WebSockets; no Docker.

use oz_test_support as support;

use oz_control_plane::{Config, Storage, DEFAULT_HEADER_READ_TIMEOUT};
use oz_protocol::{Extensions, FailureReason};
use oz_runs_api::client::Client;
use oz_runs_api::model::{CreateRunRequest, RunState};
use std::path::Path;
use std::time::Duration;
use support::control_plane::{
    create_key_with_cli, test_config, wait_for_state, ScriptedWorker, ServeProcess, TestPlane,
    EXPECT_TIMEOUT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        title: Some("survive".into()),
        ..Default::default()
    }
}

const QUIET: Duration = Duration::from_millis(150);

fn on_file(dir: &Path, grace: Duration) -> Config {
    let mut c = test_config();
    c.storage = Storage::File(dir.join("cp.sqlite3"));
    c.reannounce_grace = grace;
    c
}

fn states(run: &oz_runs_api::model::Run) -> Vec<RunState> {
    run.history.iter().map(|h| h.state).collect()
}

#[tokio::test]
async fn every_extension_is_offered_at_the_handshake() {
    let t = TestPlane::start(test_config()).await;
    let w = t.worker("w1").await;
    assert_eq!(w.extensions, Extensions::ALL);
}

#[tokio::test]
async fn reports_are_acked_once_recorded_and_duplicates_are_acked_and_ignored() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    let claimed = wait_for_state(&client, &run.id, RunState::Claimed).await;

    // A repeated claim of the same execution changes nothing.
    w.claim_execution(&run.id, Some(&exec)).await;
    w.claim(&run.id).await;
    w.ping().await;
    assert_eq!(
        client.get_run(&run.id).await.unwrap().history,
        claimed.history
    );

    // A report naming another execution is ignored, but acked so the worker
    // forgets it.
    w.complete_execution(&run.id, Some("exec_not_this_one"), None)
        .await;
    let ack = w.expect_ack(&run.id).await;
    assert_eq!(ack.execution_id.as_deref(), Some("exec_not_this_one"));
    assert_eq!(
        client.get_run(&run.id).await.unwrap().state,
        RunState::Claimed
    );

    // The real report: recorded, then acked with its execution.
    w.complete_execution(&run.id, Some(&exec), None).await;
    let ack = w.expect_ack(&run.id).await;
    assert_eq!(ack.execution_id.as_deref(), Some(exec.as_str()));
    // The ack means it is recorded: no polling needed.
    let done = client.get_run(&run.id).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);

    // Duplicates (a re-send after a lost ack) are acked and ignored.
    w.complete_execution(&run.id, Some(&exec), None).await;
    w.expect_ack(&run.id).await;
    w.fail(&run.id, FailureReason::Unknown, Some(1)).await;
    w.expect_ack(&run.id).await;
    let after = client.get_run(&run.id).await.unwrap();
    assert_eq!(after.history, done.history);
    assert_eq!(after.exit_code, None);
}

#[tokio::test]
async fn a_claim_naming_another_execution_is_ignored() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some("exec_0000000000000000"))
        .await;
    w.ping().await;
    assert_eq!(
        client.get_run(&run.id).await.unwrap().state,
        RunState::Assigned
    );
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await;
}

/// Long enough that a loaded machine cannot delay the restarted plane's
/// first answers and the worker's re-announce past it (the grace runs from
/// the restart, not from anything the test can wait for), so the claim is
/// certainly read inside it; the test then waits it out.
const LONG_GRACE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn after_a_restart_the_old_execution_is_re_announced_and_never_offered_again() {
    let dir = tempfile::tempdir().unwrap();
    let grace = LONG_GRACE;
    let t = TestPlane::start(on_file(dir.path(), grace)).await;
    let mut w = t.worker("w1").await;
    let run = t.client().create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    // The control plane goes away before it reads the claim.
    t.plane.shutdown().await;
    w.expect_closed(EXPECT_TIMEOUT).await;

    // The grace ends after this (it starts when the restarted plane loads
    // its runs).
    let restarted = tokio::time::Instant::now();
    let t = TestPlane::start(on_file(dir.path(), grace)).await;
    let client = t.client();
    let waiting = client.get_run(&run.id).await.unwrap();
    assert_eq!(waiting.state, RunState::Assigned);
    assert!(
        waiting
            .waiting_reason
            .as_deref()
            .unwrap()
            .contains("re-announce"),
        "{waiting:?}"
    );
    let mut w = t.worker("w1").await;
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await;
    assert!(
        restarted.elapsed() < grace,
        "the test took the whole grace period to re-announce; the check below proves nothing"
    );
    // Until well past the end of the grace period: no re-offer.
    w.expect_nothing((restarted + grace + Duration::from_secs(1)) - tokio::time::Instant::now())
        .await;
    w.complete_execution(&run.id, Some(&exec), None).await;
    w.expect_ack(&run.id).await;
    let done = client.get_run(&run.id).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.execution_id.as_deref(), Some(exec.as_str()));
    assert_eq!(
        states(&done),
        [
            RunState::Queued,
            RunState::Assigned,
            RunState::Claimed,
            RunState::Succeeded
        ]
    );
}

#[tokio::test]
async fn after_a_restart_a_report_for_the_old_execution_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestPlane::start(on_file(dir.path(), Duration::from_secs(30))).await;
    let mut w = t.worker("w1").await;
    let run = t.client().create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    t.plane.shutdown().await;
    w.expect_closed(EXPECT_TIMEOUT).await;

    // The worker claimed and ran it meanwhile; it delivers its report.
    let t = TestPlane::start(on_file(dir.path(), Duration::from_secs(30))).await;
    let mut w = t.worker("w1").await;
    w.send(oz_protocol::WorkerMessage::TaskFailed(
        oz_protocol::TaskFailed {
            task_id: run.id.clone(),
            message: "exit 2".into(),
            failure_reason: FailureReason::ContainerExit,
            exit_code: Some(2),
            execution_id: Some(exec.clone()),
            failure_details: None,
        },
    ))
    .await;
    assert_eq!(
        w.expect_ack(&run.id).await.execution_id.as_deref(),
        Some(exec.as_str())
    );
    let done = t.client().get_run(&run.id).await.unwrap();
    assert_eq!(done.state, RunState::Failed);
    assert_eq!(done.exit_code, Some(2));
}

#[tokio::test]
async fn after_a_restart_without_a_re_announce_the_run_is_offered_again_with_the_same_execution() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(1);
    let t = TestPlane::start(on_file(dir.path(), grace)).await;
    let mut w = t.worker("w1").await;
    let run = t.client().create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    t.plane.shutdown().await;
    w.expect_closed(EXPECT_TIMEOUT).await;

    // The grace cannot have started before this.
    let restarted = tokio::time::Instant::now();
    let t = TestPlane::start(on_file(dir.path(), grace)).await;
    let mut w = t.worker("w1").await;
    let again = w.expect_assignment().await;
    // Not at once: the worker may still re-announce it. (Measured from the
    // restart, which the grace counts from: a loaded machine may connect
    // the worker late, and then the offer comes at once, rightly.)
    assert!(
        restarted.elapsed() >= grace,
        "offered again {:?} after the restart, before the {grace:?} grace ended",
        restarted.elapsed()
    );
    assert_eq!(again.task_id, run.id);
    assert_eq!(again.execution_id.as_deref(), Some(exec.as_str()));
    let shown = t.client().get_run(&run.id).await.unwrap();
    assert!(
        shown.history.iter().any(|h| h
            .note
            .as_deref()
            .is_some_and(|n| n.contains("re-announced"))),
        "{shown:#?}"
    );
}

#[tokio::test]
async fn a_claim_re_announced_on_a_new_connection_takes_the_run_back() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut a = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = a.expect_assignment().await.execution_id.unwrap();
    // The claim was written but the connection died before it was read.
    let mut other = t.worker("w1").await;
    a.close().await;
    let offered = other.expect_assignment().await;
    assert_eq!(offered.execution_id.as_deref(), Some(exec.as_str()));
    // The worker that runs it reconnects and re-announces its execution.
    let mut back = t.worker("w1").await;
    back.claim_execution(&run.id, Some(&exec)).await;
    let claimed = wait_for_state(&client, &run.id, RunState::Claimed).await;
    assert!(
        claimed.history.iter().any(|h| h
            .note
            .as_deref()
            .is_some_and(|n| n.contains("re-announced"))),
        "{claimed:#?}"
    );
    // Cancellation goes to the connection that re-announced it.
    client.cancel_run(&run.id).await.unwrap();
    assert_eq!(back.expect_cancellation().await, run.id);
    other.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn a_re_announced_run_that_already_ended_is_cancelled_on_the_worker() {
    let mut config = test_config();
    config.worker_lost_timeout = Duration::from_millis(100);
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&client, &run.id, RunState::Claimed).await;
    w.close().await;
    wait_for_state(&client, &run.id, RunState::Failed).await;
    // The worker comes back still running it: it is told to stop.
    let mut back = t.worker("w1").await;
    back.claim_execution(&run.id, Some(&exec)).await;
    assert_eq!(back.expect_cancellation().await, run.id);
}

/// The control plane's task is starved past the read deadline while the
/// worker's report sits in its socket: the report is still read and
/// recorded, and the connection is not dropped for silence it did not have.
/// Repeated, because a loop that let the deadline race the read would lose
/// the report only some of the time.
#[tokio::test(flavor = "current_thread")]
async fn frames_received_before_the_read_deadline_are_handled() {
    let read_timeout = Duration::from_millis(500);
    let mut config = test_config();
    config.worker_read_timeout = read_timeout;
    let t = TestPlane::start(config).await;
    let client = t.client();
    for _ in 0..6 {
        // Queued first, so the connection is offered the run as it
        // registers: until the fault, the worker is silent only while its
        // assignment is stored and sent, well within the read timeout even
        // on a loaded machine (a request of the test's own in that gap, or
        // polling for the claim, once let the deadline pass before the
        // fault).
        let run = client.create_run(&run_for("w1")).await.unwrap();
        let mut w = t.worker("w1").await;
        let exec = w.expect_assignment().await.execution_id.unwrap();
        // Back to back: the plane reads a connection's frames in order.
        w.claim_execution(&run.id, Some(&exec)).await;
        w.complete_execution(&run.id, Some(&exec), None).await;
        // The fault: block the only runtime thread (the control plane's
        // too) until the deadline has long passed. Not a synchronisation
        // sleep.
        std::thread::sleep(read_timeout * 5 / 2);
        w.expect_ack(&run.id).await;
        let done = client.get_run(&run.id).await.unwrap();
        assert_eq!(
            states(&done),
            [
                RunState::Queued,
                RunState::Assigned,
                RunState::Claimed,
                RunState::Succeeded
            ]
        );
        // Truly silent from now on: dropped at the next deadline.
        w.expect_closed(EXPECT_TIMEOUT).await;
    }
}

#[tokio::test]
async fn a_connection_that_sends_half_its_headers_is_closed() {
    let t = TestPlane::start(test_config()).await;
    let mut sock = tokio::net::TcpStream::connect(t.plane.addr())
        .await
        .unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let bound = DEFAULT_HEADER_READ_TIMEOUT + Duration::from_secs(20);
    let mut buf = Vec::new();
    // Whatever the server says before closing (hyper may answer 408), the
    // connection must end within the bound.
    let read = tokio::time::timeout(bound, sock.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection was still open after {bound:?}"
    );
    assert!(started.elapsed() >= DEFAULT_HEADER_READ_TIMEOUT / 2);
    // The listener itself is fine.
    let mut ok = tokio::net::TcpStream::connect(t.plane.addr())
        .await
        .unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The next assignment sent to `a` or `b`, whichever gets it, and which.
async fn assignment_to_either(
    a: &mut ScriptedWorker,
    b: &mut ScriptedWorker,
) -> (oz_protocol::TaskAssignment, char) {
    use oz_protocol::ServerMessage::TaskAssignment;
    let (got, to) = tokio::select! {
        m = a.next_message(EXPECT_TIMEOUT) => (m, 'a'),
        m = b.next_message(EXPECT_TIMEOUT) => (m, 'b'),
    };
    match got {
        Some(TaskAssignment(t)) => (*t, to),
        other => panic!("expected an assignment to either connection, got {other:?} on {to}"),
    }
}

/// The real `serve` binary, SIGKILLed right after `POST /runs` was answered
/// and the assignment sent, restarted on the same data directory: the
/// re-announced run is claimed, never re-offered; the other one is offered
/// again after the grace period with its original execution id.
#[tokio::test]
async fn a_sigkilled_serve_keeps_its_executions_across_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(dir.path(), "alpha").await;
    let grace = ["--reannounce-grace", "10s"];
    let serve = ServeProcess::start(dir.path(), &grace).await;
    let client = Client::new(&serve.url, &key).unwrap();
    // Two connections of one worker id: which gets which run is the run
    // scheduler's choice (and the order they register in), so the test
    // takes each assignment from whichever got it.
    let mut a = ScriptedWorker::connect(&serve.ws_url(), &key, "w1").await;
    let mut b = ScriptedWorker::connect(&serve.ws_url(), &key, "w1").await;
    let kept = client.create_run(&run_for("w1")).await.unwrap();
    let (first, _) = assignment_to_either(&mut a, &mut b).await;
    let lost = client.create_run(&run_for("w1")).await.unwrap();
    let (second, _) = assignment_to_either(&mut a, &mut b).await;
    assert_eq!(
        (first.task_id.as_str(), second.task_id.as_str()),
        (kept.id.as_str(), lost.id.as_str())
    );
    let kept_exec = first.execution_id.unwrap();
    let lost_exec = second.execution_id.unwrap();
    serve.kill().await;
    a.expect_closed(EXPECT_TIMEOUT).await;
    b.expect_closed(EXPECT_TIMEOUT).await;

    // The grace (10 s, so a loaded machine cannot delay the re-announce
    // past it) starts after this, when the new process loads its runs.
    let restarted = tokio::time::Instant::now();
    let serve = ServeProcess::start(dir.path(), &grace).await;
    let client = Client::new(&serve.url, &key).unwrap();
    let mut w = ScriptedWorker::connect(&serve.ws_url(), &key, "w1").await;
    // The worker re-announces the one it claimed; the other it never took.
    w.claim_execution(&kept.id, Some(&kept_exec)).await;
    wait_for_state(&client, &kept.id, RunState::Claimed).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "the re-announce took the whole grace period; log:\n{}",
        serve.log_text()
    );
    // The other is offered once the grace has passed (the sweep runs every
    // second).
    let again = match w
        .next_message(Duration::from_secs(10) + EXPECT_TIMEOUT)
        .await
    {
        Some(oz_protocol::ServerMessage::TaskAssignment(t)) => *t,
        other => panic!(
            "expected the lost run's offer, got {other:?}; log:\n{}",
            serve.log_text()
        ),
    };
    assert!(restarted.elapsed() >= Duration::from_secs(10));
    assert_eq!(again.task_id, lost.id, "{}", serve.log_text());
    assert_eq!(again.execution_id.as_deref(), Some(lost_exec.as_str()));
    w.expect_nothing(Duration::from_millis(300)).await;
    let kept = client.get_run(&kept.id).await.unwrap();
    assert_eq!(kept.execution_id.as_deref(), Some(kept_exec.as_str()));
    assert_eq!(
        states(&kept),
        [RunState::Queued, RunState::Assigned, RunState::Claimed]
    );
}
