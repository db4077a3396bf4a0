//! The worker against a scripted orchestrator: handshake, frames that must
//! be survived, liveness, and terminal messages held across a dropped
//! connection. Uses the real worker binary and dockerd.

mod support;

use oz_agent_worker::protocol::*;
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
    let pings = second.count_pings(Duration::from_millis(1100)).await;
    assert!(pings >= 3, "a ping every 200ms, saw {pings}");
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
