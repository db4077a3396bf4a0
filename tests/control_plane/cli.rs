//! The CLI client commands against an embedded control plane.

use oz_test_support as support;

use oz_protocol::FailureReason;
use oz_test_support::cli::output_text as text;
use support::cli::client as cli;
use support::control_plane::{test_config, TestPlane};
use tokio::process::Command;

#[tokio::test]
async fn run_wait_follows_a_failed_run_and_exits_non_zero() {
    let t = TestPlane::start(test_config()).await;
    let mut w = t.worker("w1").await;
    let child = cli(&t.plane.url(), &t.key)
        .args([
            "run", "--host", "w1", "--prompt", "hi", "-e", "A=1", "--wait",
        ])
        .output();
    let worker = async {
        let a = w.expect_assignment().await;
        assert_eq!(a.env_vars["A"].expose_str(), "1");
        w.claim(&a.task_id).await;
        w.fail(&a.task_id, FailureReason::ContainerExit, Some(3))
            .await;
    };
    let (out, ()) = tokio::join!(child, worker);
    let out = out.unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("failed (container_exit), exit code 3: it broke"),
        "{all}"
    );
    assert!(all.contains("claimed"), "{all}");
}

#[tokio::test]
async fn run_wait_exits_zero_on_success() {
    let t = TestPlane::start(test_config()).await;
    let mut w = t.worker("w1").await;
    let child = cli(&t.plane.url(), &t.key)
        .args(["run", "--host", "w1", "--wait"])
        .output();
    let worker = async {
        let a = w.expect_assignment().await;
        w.claim(&a.task_id).await;
        w.complete(&a.task_id, None).await;
    };
    let (out, ()) = tokio::join!(child, worker);
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn client_errors_are_actionable() {
    let t = TestPlane::start(test_config()).await;
    let out = cli(&t.plane.url(), "ozk_wrong")
        .args(["runs", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("refused the API key"), "{}", text(&out));

    let out = cli("http://127.0.0.1:9", &t.key)
        .args(["runs", "get", "run_x"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot reach the control plane"),
        "{}",
        text(&out)
    );

    let out = cli(&t.plane.url(), &t.key)
        .args(["runs", "cancel", "run_x"])
        .output()
        .await
        .unwrap();
    assert!(text(&out).contains("no run \"run_x\""), "{}", text(&out));
}

#[tokio::test]
async fn api_keys_show_the_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_oz-agent-worker");
    let out = Command::new(bin)
        .args(["api-keys", "create", "--team", "alpha", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("ozk_"), "{secret}");
    let list = Command::new(bin)
        .args(["api-keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let listed = text(&list);
    assert!(listed.contains("alpha"), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
}

#[tokio::test]
async fn runs_logs_prints_each_stream_to_its_own_and_marks_what_the_worker_dropped() {
    use oz_protocol::OutputStream::{Stderr, Stdout};
    use oz_runs_api::model::CreateRunRequest;
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut w = t.worker("w1").await;
    let run = client
        .create_run(&CreateRunRequest {
            worker_host: "w1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let exec = w.expect_assignment().await.execution_id.unwrap();
    w.claim_execution(&run.id, Some(&exec)).await;
    w.output(&run.id, Some(&exec), Stdout, "to stdout\n", 0)
        .await;
    w.output(&run.id, Some(&exec), Stderr, "to stderr\n", 0)
        .await;
    w.output(&run.id, Some(&exec), Stdout, "after a gap\n", 4096)
        .await;
    support::control_plane::wait_for_output(&client, &run.id, 32).await;
    let out = cli(&t.plane.url(), &t.key)
        .args(["runs", "logs", &run.id])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "to stdout\nafter a gap\n");
    assert!(stderr.contains("to stderr\n"), "{stderr}");
    assert!(
        stderr.contains("4096 bytes of older output dropped by the worker here"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is claimed; `runs logs --follow"),
        "a running run's read says more may come: {stderr}"
    );
}
