//! A hostile orchestrator cannot forge lines in the worker's text log: a
//! task id, an execution id and a message type carrying `\n`, `\r` and ANSI
//! escapes are logged escaped (issue 21, item 7). Real worker binary,
//! scripted orchestrator, dockerd.

use oz_test_support as support;

use oz_protocol::*;
use std::time::Duration;
use support::scripted_server::ScriptedServer;
use support::worker::*;

const KEY: &str = "ozk_scripted-test-key-0001";
const ROOT: &str = "http://oz.invalid";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_task_ids_cannot_forge_lines_in_the_workers_log() {
    assert!(
        Engine::Docker.available(),
        "dockerd is needed: scripts/test-env.sh up"
    );
    let server = ScriptedServer::start().await;
    let id = unique_id("hostile");
    let opts = WorkerOptions {
        worker_id: &id,
        ..Default::default()
    };
    let w = WorkerProcess::spawn_at(&server.ws_url, ROOT, KEY, Engine::Docker, opts);
    let mut conn = server.accept(Duration::from_secs(30)).await;

    let task_id = "t1\nFORGED-TASK\r\u{1b}[31mred";
    let a = TaskAssignment {
        task_id: task_id.into(),
        execution_id: Some("e1\nFORGED-EXEC\u{1b}[2J".into()),
        task: Task {
            id: task_id.into(),
            title: "t".into(),
            ..Default::default()
        },
        docker_image: Some(BUSYBOX.into()),
        // No sidecar: claimed, then failed before anything runs.
        sidecar_image: None,
        ..Default::default()
    };
    conn.send_text(&encode(&ServerMessage::TaskAssignment(Box::new(a))))
        .await;
    conn.send_text("{\"type\":\"x\\nFORGED-TYPE\\u001b[31m\",\"data\":{}}")
        .await;
    let mut failed = false;
    while let Some(m) = conn.next_message(Duration::from_secs(20)).await {
        if let WorkerMessage::TaskFailed(f) = m {
            assert_eq!(f.task_id, task_id);
            failed = true;
            break;
        }
    }
    assert!(failed, "the task was failed");
    w.wait_for_log("task failed", Duration::from_secs(10)).await;
    let log = w.log_text();
    assert!(!log.contains('\u{1b}'), "a raw ESC in the log:\n{log}");
    assert!(!log.contains('\r'), "a raw CR in the log:\n{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "a forged line: {line:?}\n{log}"
        );
    }
    assert!(log.contains("FORGED-TASK"), "the task id is logged:\n{log}");
    assert!(log.contains("FORGED-TYPE"), "the type is logged:\n{log}");
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("FORGED"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
