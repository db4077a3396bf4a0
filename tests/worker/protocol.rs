//! The worker against a scripted orchestrator: handshake, frames that must
//! be survived, liveness, and terminal messages held across a dropped
//! connection. Uses the real worker binary and dockerd.

use oz_test_support as support;

use oz_protocol::*;
use std::time::Duration;
use support::scripted_server::ScriptedServer;
use support::worker::*;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "ozk_scripted-test-key-0001";
const ROOT: &str = "http://oz.invalid";

fn worker(server: &ScriptedServer, id: &str, extra: &[&str]) -> WorkerProcess {
    let opts = WorkerOptions {
        worker_id: id,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    WorkerProcess::spawn_at(&server.ws_url, ROOT, KEY, Engine::Docker, opts)
}

fn assignment(task_id: &str, env: &[(&str, &str)], sidecar: Option<&str>) -> String {
    let a = TaskAssignment {
        task_id: task_id.into(),
        execution_id: Some(format!("exec-{task_id}")),
        task: Task {
            id: task_id.into(),
            title: "t".into(),
            ..Default::default()
        },
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: sidecar.map(str::to_string),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        ..Default::default()
    };
    encode(&ServerMessage::TaskAssignment(Box::new(a)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_frames_that_must_be_survived() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto");
    let w = worker(&server, &id, &[]);
    let mut conn = server.accept(Duration::from_secs(30)).await;
    assert_eq!(
        conn.authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        conn.target
            .ends_with(&format!("/api/v1/selfhosted/worker/ws?worker_id={id}")),
        "{}",
        conn.target
    );

    // Garbage, binary, an unknown type, an unknown cancellation: all ignored.
    conn.send_text("{not json").await;
    conn.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    conn.send_text(r#"{"type":"hello_from_the_future","data":{"x":1}}"#)
        .await;
    conn.send_text(r#"{"type":"task_cancellation","data":{"task_id":"nobody"}}"#)
        .await;
    assert!(
        conn.next_message(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing is answered to those"
    );

    // An assignment whose body cannot be read is claimed and failed, clearly.
    conn.send_text(r#"{"type":"task_assignment","data":{"task_id":"t-bad","task":5}}"#)
        .await;
    let m = conn.next_message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        m,
        WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: "t-bad".into(),
            worker_id: id.clone(),
            execution_id: None,
        })
    );
    match conn.next_message(Duration::from_secs(10)).await.unwrap() {
        WorkerMessage::TaskFailed(f) => {
            assert_eq!(f.task_id, "t-bad");
            assert!(f.message.contains("could not be read"), "{}", f.message);
        }
        other => panic!("expected task_failed, got {other:?}"),
    }

    // An assignment missing what it needs: claimed, then failed with a reason.
    conn.send_text(&assignment(
        "t-nosidecar",
        &[("SECRET_VALUE", "hunter2-xyz")],
        None,
    ))
    .await;
    assert!(matches!(
        conn.next_message(Duration::from_secs(10)).await,
        Some(WorkerMessage::TaskClaimed(_))
    ));
    match conn.next_message(Duration::from_secs(10)).await.unwrap() {
        WorkerMessage::TaskFailed(f) => assert_eq!(f.failure_reason, FailureReason::SidecarPrep),
        other => panic!("expected task_failed, got {other:?}"),
    }
    let log = w.log_text();
    assert!(log.contains("ignoring frame"), "{log}");
    assert!(
        !log.contains(KEY) && !log.contains("hunter2-xyz"),
        "no secret in the log:\n{log}"
    );
}

/// `--version` prints the string every dial sends as `X-Warp-Worker-Version`
/// (the Go worker's header), on the first connection and on a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dial_sends_the_version_that_dash_dash_version_prints() {
    if !Engine::Docker.available() {
        return;
    }
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(printed, format!("{}\n", env!("CARGO_PKG_VERSION")));
    let server = ScriptedServer::start().await;
    let w = worker(&server, &unique_id("proto-version"), &[]);
    let first = server.accept(Duration::from_secs(30)).await;
    let sent = |c: &support::scripted_server::ServerConn| {
        c.headers
            .get_all(WORKER_VERSION_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(sent(&first), [printed.trim()], "{:?}", first.headers);
    drop(first);
    let second = server.accept(Duration::from_secs(30)).await;
    assert_eq!(
        sent(&second),
        [printed.trim()],
        "the reconnect sends it too"
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_dropped_and_the_worker_reconnects_with_pings() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-silent");
    let w = worker(
        &server,
        &id,
        &["--ping-interval", "200ms", "--read-timeout", "1s"],
    );
    // Accept and never read: no pong, no frame, so the read deadline passes.
    let _silent = server.accept(Duration::from_secs(30)).await;
    w.wait_for_log("nothing heard from the server", Duration::from_secs(10))
        .await;
    let mut second = server.accept(Duration::from_secs(10)).await;
    // Three pings well within the protocol's 30 s interval: the flag's
    // 200ms is used (their spacing is not measured: a loaded machine may
    // delay any of them).
    let pings = second.wait_for_pings(3, Duration::from_secs(10)).await;
    assert_eq!(pings, 3, "a ping every 200ms, saw {pings} in 10 s");
    assert!(w.log_text().contains("reconnecting in"), "{}", w.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_message_is_held_across_a_dropped_connection_and_sent_once() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-drop");
    let w = worker(&server, &id, &[]);
    let mut first = server.accept(Duration::from_secs(30)).await;
    first
        .send_text(&assignment(
            "t-held",
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "2")],
            Some(SIDECAR),
        ))
        .await;
    assert!(matches!(
        first.next_message(Duration::from_secs(10)).await,
        Some(WorkerMessage::TaskClaimed(_))
    ));
    w.wait_for_log("task container started", Duration::from_secs(30))
        .await;
    drop(first); // the connection dies while the task runs
    w.wait_for_log("task finished", Duration::from_secs(30))
        .await;
    let mut second = server.accept(Duration::from_secs(15)).await;
    match second.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskCompleted(c)) => {
            assert_eq!(c.task_id, "t-held");
            assert_eq!(c.task_state, None);
        }
        other => panic!("expected the held task_completed, got {other:?}"),
    }
    assert!(
        second.next_message(Duration::from_secs(2)).await.is_none(),
        "sent exactly once"
    );
}

/// Frames until a terminal report arrives (live output collected on the way).
async fn until_terminal(
    conn: &mut support::scripted_server::ServerConn,
    within: Duration,
) -> (Vec<TaskOutput>, WorkerMessage) {
    let mut output = Vec::new();
    loop {
        match conn.next_message(within).await {
            Some(WorkerMessage::TaskOutput(o)) => output.push(o),
            Some(WorkerMessage::TaskClaimed(_)) => {}
            Some(m) if m.is_terminal() => return (output, m),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no terminal report within {within:?}"),
        }
    }
}

/// An orchestrator that does not check image references (the hosted
/// service may not; our control plane refuses them at creation with the
/// same message) gets a malformed one reported as `invalid_image`, with the
/// Docker CLI's words, and nothing pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_image_reference_is_invalid_image() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-badref");
    let w = worker(&server, &id, &[]);
    let mut conn = server.accept(Duration::from_secs(30)).await;
    let a = TaskAssignment {
        task_id: "t-badref".into(),
        task: Task {
            id: "t-badref".into(),
            title: "t".into(),
            ..Default::default()
        },
        docker_image: Some("Oz-Test/BusyBox:latest".into()),
        sidecar_image: Some(SIDECAR.into()),
        ..Default::default()
    };
    conn.send_text(&encode(&ServerMessage::TaskAssignment(Box::new(a))))
        .await;
    match until_terminal(&mut conn, Duration::from_secs(60)).await.1 {
        WorkerMessage::TaskFailed(f) => {
            assert_eq!(f.failure_reason.to_string(), "invalid_image", "{f:?}");
            assert!(
                f.message.contains("\"Oz-Test/BusyBox:latest\"") && f.message.contains("lowercase"),
                "{}",
                f.message
            );
        }
        other => panic!("expected task_failed, got {other:?}"),
    }
    assert!(!w.log_text().contains("pulling image"), "nothing is pulled");
    drop(w);
}

/// A server that offers nothing gets the reference protocol only: no
/// execution id on claims, no live output, no re-announced claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_server_hears_nothing_it_does_not_know() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-ref");
    let w = worker(&server, &id, &[]);
    let mut conn = server.accept(Duration::from_secs(30)).await;
    conn.send_text(&assignment(
        "t-ref",
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "1")],
        Some(SIDECAR),
    ))
    .await;
    match conn.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskClaimed(c)) => assert_eq!(c.execution_id, None),
        other => panic!("{other:?}"),
    }
    let (output, report) = until_terminal(&mut conn, Duration::from_secs(60)).await;
    assert!(output.is_empty(), "no task_output for a reference server");
    assert_eq!(report.execution_id(), Some("exec-t-ref"), "PR #139's field");
    drop(w);
}

/// With `task-output` offered the agent's output streams while it runs, in
/// order and before the report; with `task-reannounce` a new connection
/// first hears the claim of every task still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offered_extensions_stream_output_and_reannounce_claims() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-ext");
    let w = worker(&server, &id, &[]);
    let offer = Some("task-output, task-reannounce");
    let mut first = server.accept_offering(Duration::from_secs(30), offer).await;
    first
        .send_text(&assignment(
            "t-ext",
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "3")],
            Some(SIDECAR),
        ))
        .await;
    match first.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskClaimed(c)) => {
            assert_eq!(c.execution_id.as_deref(), Some("exec-t-ext"))
        }
        other => panic!("{other:?}"),
    }
    // Output arrives while the agent still sleeps.
    match first.next_message(Duration::from_secs(30)).await {
        Some(WorkerMessage::TaskOutput(o)) => {
            assert_eq!(o.task_id, "t-ext");
            assert_eq!(o.execution_id.as_deref(), Some("exec-t-ext"));
            assert!(
                o.data.contains("oz demo agent: task t-ext started"),
                "{o:?}"
            );
        }
        other => panic!("expected live output, got {other:?}"),
    }
    drop(first);
    let mut second = server.accept_offering(Duration::from_secs(30), offer).await;
    match second.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskClaimed(c)) => {
            assert_eq!(c.task_id, "t-ext");
            assert_eq!(c.execution_id.as_deref(), Some("exec-t-ext"));
        }
        other => panic!("expected the re-announced claim first, got {other:?}"),
    }
    let (output, report) = until_terminal(&mut second, Duration::from_secs(60)).await;
    assert!(
        output
            .iter()
            .any(|o| o.data.contains("oz demo agent: done")),
        "{output:?}"
    );
    assert_eq!(report.kind(), "task_completed");
    drop(w);
}

/// A task's last output comes before its report, even when the agent
/// writes it just before it exits: a reader that stops at the report (as
/// `runs logs --follow` does) has seen all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_last_output_arrives_before_its_report() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-last");
    let w = worker(&server, &id, &[]);
    let mut conn = server
        .accept_offering(Duration::from_secs(30), Some("task-output"))
        .await;
    for n in 0..3 {
        let task = format!("t-last-{n}");
        conn.send_text(&assignment(&task, &[], Some(SIDECAR))).await;
        let (output, report) = until_terminal(&mut conn, Duration::from_secs(60)).await;
        assert_eq!(report.task_id(), task);
        let text: String = output
            .iter()
            .filter(|o| o.task_id == task)
            .map(|o| o.data.as_str())
            .collect();
        assert!(
            text.contains(&format!("task {task} started"))
                && text.ends_with("oz demo agent: done\n"),
            "all of {task}'s output before its report, got {text:?}"
        );
    }
    drop(w);
}

/// Without report-ack, a report counts as received only once a pong answers
/// a ping sent after it: a connection that read the report but never
/// answered the ping gets it again on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_without_a_later_pong_is_sent_again() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-pong");
    let w = worker(
        &server,
        &id,
        &["--read-timeout", "3s", "--ping-interval", "500ms"],
    );
    let mut first = server.accept(Duration::from_secs(30)).await;
    first
        .send_text(&assignment(
            "t-pong",
            &[("OZ_DEMO_EXIT", "4")],
            Some(SIDECAR),
        ))
        .await;
    let (_, report) = until_terminal(&mut first, Duration::from_secs(60)).await;
    assert_eq!(report.kind(), "task_failed");
    // Read nothing more: the worker's pings go unanswered, it drops us.
    let mut second = server.accept(Duration::from_secs(30)).await;
    let (_, again) = until_terminal(&mut second, Duration::from_secs(10)).await;
    assert_eq!(again, report, "the unconfirmed report is sent again");
    drop(first);
    // This connection keeps reading, so it answers the pings: confirmed.
    assert_eq!(second.wait_for_pings(1, Duration::from_secs(30)).await, 1);
    drop(second);
    let mut third = server.accept(Duration::from_secs(30)).await;
    assert!(
        third.next_message(Duration::from_secs(3)).await.is_none(),
        "a confirmed report is not sent again"
    );
    drop(w);
}

/// With report-ack, only the ack confirms: a report is sent on every new
/// connection until one acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_report_ack_only_the_ack_confirms() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("proto-ack");
    let w = worker(&server, &id, &[]);
    let offer = Some("report-ack");
    let mut first = server.accept_offering(Duration::from_secs(30), offer).await;
    first
        .send_text(&assignment("t-ack", &[], Some(SIDECAR)))
        .await;
    let (_, report) = until_terminal(&mut first, Duration::from_secs(60)).await;
    // Reading answers the worker's pings, yet without an ack the report
    // stays pending.
    first.count_pings(Duration::from_millis(1500)).await;
    drop(first);
    let mut second = server.accept_offering(Duration::from_secs(30), offer).await;
    let (_, again) = until_terminal(&mut second, Duration::from_secs(10)).await;
    assert_eq!(again, report);
    second
        .send_text(&encode(&ServerMessage::ReportAck(ReportAck {
            task_id: "t-ack".into(),
            execution_id: Some("exec-t-ack".into()),
        })))
        .await;
    w.wait_for_log("report delivery confirmed", Duration::from_secs(10))
        .await;
    drop(second);
    let mut third = server.accept_offering(Duration::from_secs(30), offer).await;
    assert!(third.next_message(Duration::from_secs(3)).await.is_none());
}
