//! Live task output on the control plane's side (docs/PROTOCOL.md,
//! `task-output`): kept per run within the limit, in order, with what the
//! worker dropped and what the control plane cut both visible; served as a
//! plain read and as server-sent events that end once the run has ended;
//! kept across a SIGKILL of `serve`. Scripted workers over real WebSockets.

use oz_test_support as support;

use futures_util::StreamExt;
use oz_protocol::OutputStream::{Stderr, Stdout};
use oz_runs_api::client::{Client, OutputEvent};
use oz_runs_api::model::{CreateRunRequest, RunState};
use support::control_plane::{
    create_key_with_cli, test_config, wait_for_output, wait_for_state, ScriptedWorker,
    ServeProcess, TestPlane, EXPECT_TIMEOUT,
};

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        title: Some("output".into()),
        ..Default::default()
    }
}

/// A claimed run of `w` and its execution id.
async fn claimed_run(t: &TestPlane, w: &mut ScriptedWorker) -> (String, String) {
    let run = t.client().create_run(&run_for(&w.worker_id)).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    wait_for_state(&t.client(), &run.id, RunState::Claimed).await;
    (run.id, exec)
}

async fn next_event<S>(events: &mut S) -> OutputEvent
where
    S: futures_util::Stream<Item = Result<OutputEvent, oz_runs_api::client::ClientError>> + Unpin,
{
    tokio::time::timeout(EXPECT_TIMEOUT, events.next())
        .await
        .expect("an output event in time")
        .expect("the stream goes on")
        .expect("events decode")
}

async fn expect_data<S>(events: &mut S, want: &str)
where
    S: futures_util::Stream<Item = Result<OutputEvent, oz_runs_api::client::ClientError>> + Unpin,
{
    let mut got = String::new();
    while got.len() < want.len() {
        match next_event(events).await {
            OutputEvent::Output(c) => got.push_str(&c.data),
            other => panic!("expected output {want:?}, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn output_is_kept_in_order_by_stream_with_worker_drops_and_truncation_visible() {
    let mut config = test_config();
    config.output_limit = 64;
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let (id, exec) = claimed_run(&t, &mut w).await;
    w.output(&id, Some(&exec), Stdout, "line 1\n", 0).await;
    w.output(&id, Some(&exec), Stderr, "warn\n", 0).await;
    w.output(&id, Some(&exec), Stdout, "line 2\n", 100).await;
    let out = wait_for_output(&client, &id, 19).await;
    assert_eq!(
        out.chunks
            .iter()
            .map(|c| (c.offset, c.stream, c.data.as_str(), c.dropped_bytes))
            .collect::<Vec<_>>(),
        [
            (0, Stdout, "line 1\n", 0),
            (7, Stderr, "warn\n", 0),
            (12, Stdout, "line 2\n", 100)
        ]
    );
    assert_eq!(
        (out.truncated_bytes, out.dropped_bytes, out.limit_bytes),
        (0, 100, 64)
    );
    // Past the limit: the oldest bytes go, and a reader from 0 is told.
    let filler = "x".repeat(60);
    w.output(&id, Some(&exec), Stdout, &filler, 0).await;
    let out = wait_for_output(&client, &id, 79).await;
    assert_eq!(out.truncated_bytes, 79 - 64);
    let kept: String = out.chunks.iter().map(|c| c.data.as_str()).collect();
    assert_eq!(kept.len(), 64);
    assert!(kept.ends_with(&filler), "{kept:?}");
    let run = client.get_run(&id).await.unwrap();
    assert_eq!(
        (
            run.output_bytes,
            run.output_truncated_bytes,
            run.output_dropped_bytes
        ),
        (79, 15, 100)
    );
    // Reading on from an offset returns only what is new.
    w.output(&id, Some(&exec), Stderr, "tail\n", 0).await;
    wait_for_output(&client, &id, 84).await;
    let more = client.get_output(&id, 79).await.unwrap();
    assert_eq!(more.chunks.len(), 1);
    assert_eq!(more.chunks[0].data, "tail\n");
    assert_eq!((more.truncated_bytes, more.next_offset), (0, 84));
}

#[tokio::test]
async fn following_streams_output_live_and_ends_after_the_run_with_its_late_output() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let (id, exec) = claimed_run(&t, &mut w).await;
    let mut events = Box::pin(client.follow_output(&id, 0).await.unwrap());
    w.output(&id, Some(&exec), Stdout, "first\n", 0).await;
    expect_data(&mut events, "first\n").await;
    w.output(&id, Some(&exec), Stderr, "second\n", 0).await;
    expect_data(&mut events, "second\n").await;
    // The report, then output the worker sent after it (its output queue
    // has a lower priority than reports): still part of the run.
    w.complete_execution(&id, Some(&exec), None).await;
    w.expect_ack(&id).await;
    w.output(&id, Some(&exec), Stdout, "last\n", 0).await;
    expect_data(&mut events, "last\n").await;
    match next_event(&mut events).await {
        OutputEvent::End(run) => assert_eq!(run.state, RunState::Succeeded),
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(
        events.next().await.is_none(),
        "the stream closes after the end"
    );

    // A reader that comes later gets all of it and the end at once, and
    // one resuming from an offset only the rest.
    for (after, want) in [(0, "first\nsecond\nlast\n"), (6, "second\nlast\n")] {
        let mut events = Box::pin(client.follow_output(&id, after).await.unwrap());
        expect_data(&mut events, want).await;
        assert!(matches!(next_event(&mut events).await, OutputEvent::End(_)));
    }
}

#[tokio::test]
async fn a_follower_behind_the_limit_is_told_what_it_missed() {
    let mut config = test_config();
    config.output_limit = 10;
    let t = TestPlane::start(config).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let (id, exec) = claimed_run(&t, &mut w).await;
    w.output(&id, Some(&exec), Stdout, &"a".repeat(25), 0).await;
    w.output(&id, Some(&exec), Stdout, "0123456789", 7).await;
    wait_for_output(&client, &id, 35).await;
    let mut events = Box::pin(client.follow_output(&id, 0).await.unwrap());
    match next_event(&mut events).await {
        OutputEvent::Truncated(t) => assert_eq!((t.bytes, t.limit_bytes), (25, 10)),
        other => panic!("expected a truncation, got {other:?}"),
    }
    match next_event(&mut events).await {
        OutputEvent::Output(c) => {
            assert_eq!(
                (c.offset, c.data.as_str(), c.dropped_bytes),
                (25, "0123456789", 7)
            )
        }
        other => panic!("expected output, got {other:?}"),
    }
    w.fail(&id, oz_protocol::FailureReason::ContainerExit, Some(3))
        .await;
    match next_event(&mut events).await {
        OutputEvent::End(run) => {
            assert_eq!((run.state, run.exit_code), (RunState::Failed, Some(3)));
            assert_eq!(
                (run.output_truncated_bytes, run.output_dropped_bytes),
                (25, 7)
            );
        }
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test]
async fn output_is_taken_only_from_the_runs_worker_and_shown_only_to_its_team() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let (id, exec) = claimed_run(&t, &mut w).await;
    // Another worker id of the same team, and the run's id with another
    // execution: neither is the run's output.
    let mut other = t.worker("w2").await;
    other
        .output(&id, Some(&exec), Stdout, "not mine\n", 0)
        .await;
    w.output(&id, Some("exec_other"), Stdout, "stale\n", 0)
        .await;
    w.output(&id, Some(&exec), Stdout, "mine\n", 0).await;
    let out = wait_for_output(&client, &id, 5).await;
    assert_eq!(out.chunks.len(), 1);
    assert_eq!(out.chunks[0].data, "mine\n");
    // Another team's key sees no such run.
    let beta = t.plane.create_api_key("beta").unwrap();
    let theirs = Client::new(&t.plane.url(), &beta.secret).unwrap();
    let e = theirs.get_output(&id, 0).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let e = theirs.follow_output(&id, 0).await.err().unwrap();
    assert_eq!(e.status(), Some(404), "{e}");
}

/// The real `serve`, SIGKILLed after a run finished: its output is read
/// back the same after the restart.
#[tokio::test]
async fn a_finished_runs_output_survives_a_sigkill_of_serve() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(dir.path(), "alpha").await;
    let serve = ServeProcess::start(dir.path(), &[]).await;
    let client = Client::new(&serve.url, &key).unwrap();
    let mut w = ScriptedWorker::connect(&serve.ws_url(), &key, "w1").await;
    let run = client.create_run(&run_for("w1")).await.unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    w.output(&run.id, Some(&exec), Stdout, "kept\n", 0).await;
    w.output(&run.id, Some(&exec), Stderr, "also kept\n", 3)
        .await;
    w.complete_execution(&run.id, Some(&exec), None).await;
    w.expect_ack(&run.id).await;
    let before = wait_for_output(&client, &run.id, 15).await;
    serve.kill().await;
    w.expect_closed(EXPECT_TIMEOUT).await;

    let serve = ServeProcess::start(dir.path(), &[]).await;
    let client = Client::new(&serve.url, &key).unwrap();
    let after = client.get_output(&run.id, 0).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.state, RunState::Succeeded);
    assert_eq!(after.dropped_bytes, 3);
    let mut events = Box::pin(client.follow_output(&run.id, 0).await.unwrap());
    expect_data(&mut events, "kept\nalso kept\n").await;
    assert!(matches!(next_event(&mut events).await, OutputEvent::End(_)));
}
