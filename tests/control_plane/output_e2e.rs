//! Live output end to end: the real worker binary runs the demo agent on
//! the real dockerd against the embedded control plane, and the CLI prints
//! what the agent printed: `runs logs ID` after the run, `runs logs ID
//! --follow` and `run --attach` while it runs (exiting when it ends, with
//! `run --wait`'s exit status), and both mark output the control plane no
//! longer keeps.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use std::process::Stdio;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Setup {
    plane: TestPlane,
    worker: WorkerProcess,
}

impl Setup {
    async fn new(output_limit: Option<u64>) -> Option<Setup> {
        if !Engine::Docker.available() {
            return None;
        }
        let mut config = test_config();
        if let Some(limit) = output_limit {
            config.output_limit = limit;
        }
        let plane = TestPlane::start(config).await;
        let id = unique_id("output");
        let worker = WorkerProcess::start(
            &plane,
            Engine::Docker,
            WorkerOptions {
                worker_id: &id,
                ..Default::default()
            },
        )
        .await;
        Some(Setup { plane, worker })
    }

    fn cli(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
            .args(args)
            .env("OZ_SERVER_URL", self.plane.plane.url())
            .env("WARP_API_KEY", &self.plane.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Polls until the run's stored output contains `needle`.
    async fn wait_for_output_text(&self, id: &str, needle: &str) -> String {
        let client = self.plane.client();
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        loop {
            let out = client.get_output(id, 0).await.unwrap();
            let text: String = out.chunks.iter().map(|c| c.data.as_str()).collect();
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {id} never printed {needle:?}; output so far {text:?}; worker log:\n{}",
                self.worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads `child`'s stdout until a line contains `needle`; returns what was read.
async fn read_stdout_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(RUN_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no line with {needle:?} in {seen:?}");
    seen
}

/// The child's exit code, the rest of its stdout, and its stderr.
async fn finish(
    mut child: Child,
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> (Option<i32>, String, String) {
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(RUN_TIMEOUT, async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        let mut err = String::new();
        stderr.read_to_string(&mut err).await.unwrap();
        (child.wait().await.unwrap().code(), rest, err)
    })
    .await
    .expect("the command ends when the run does");
    status
}

#[tokio::test]
async fn runs_logs_prints_the_agents_output() {
    let Some(s) = Setup::new(None).await else {
        return;
    };
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&s.worker.worker_id, &[]))
        .await
        .unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let stored = s.wait_for_output_text(&run.id, "oz demo agent: done").await;
    let out = s
        .cli(&["runs", "logs", &run.id])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, stored);
    assert!(
        printed.contains(&format!(
            "oz demo agent: task {} started in /workspace",
            run.id
        )),
        "{printed}"
    );
    assert!(printed.contains("--task-id"), "the argv line: {printed}");
}

#[tokio::test]
async fn runs_logs_follow_prints_output_as_it_comes_and_exits_when_the_run_ends() {
    let Some(s) = Setup::new(None).await else {
        return;
    };
    let client = s.plane.client();
    let run = client
        .create_run(&demo_run(
            &s.worker.worker_id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "5")],
        ))
        .await
        .unwrap();
    let mut child = s.cli(&["runs", "logs", &run.id, "--follow"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = read_stdout_until(&mut lines, "started in /workspace").await;
    // Printed while the agent still sleeps: live, not after the fact.
    let now = client.get_run(&run.id).await.unwrap();
    assert_eq!(now.state, RunState::Claimed, "{now:#?}");
    assert!(!first.contains("oz demo agent: done"), "{first}");
    let (code, rest, err) = finish(child, lines).await;
    assert_eq!(code, Some(0), "{rest}{err}");
    assert!(rest.contains("oz demo agent: done"), "{rest}");
    let ended = client.get_run(&run.id).await.unwrap();
    assert_eq!(ended.state, RunState::Succeeded);
}

#[tokio::test]
async fn run_attach_prints_output_live_and_exits_with_the_runs_status() {
    let Some(s) = Setup::new(None).await else {
        return;
    };
    let client = s.plane.client();
    let mut child = s.cli(&[
        "run",
        "--attach",
        "--host",
        &s.worker.worker_id,
        "--image",
        BUSYBOX,
        "--sidecar",
        SIDECAR,
        "-e",
        "OZ_DEMO_BEHAVIOUR=sleep",
        "-e",
        "OZ_DEMO_SLEEP=5",
        "-e",
        "OZ_DEMO_EXIT=3",
    ]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    read_stdout_until(&mut lines, "started in /workspace").await;
    let runs = client
        .list_runs(None, Some(&s.worker.worker_id))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunState::Claimed, "printed while it runs");
    let (code, rest, err) = finish(child, lines).await;
    assert_eq!(
        code,
        Some(1),
        "a failed run exits 1 as with --wait: {rest}{err}"
    );
    assert!(rest.contains("oz demo agent: done"), "{rest}");
    assert!(
        err.contains(&format!(
            "run {} failed (container_exit), exit code 3",
            runs[0].id
        )),
        "{err}"
    );
}

#[tokio::test]
async fn output_the_control_plane_no_longer_keeps_is_marked() {
    let Some(s) = Setup::new(Some(2048)).await else {
        return;
    };
    let mut spec = demo_run(&s.worker.worker_id, &[]);
    // The demo agent echoes its argv: one line of some 6 KB.
    spec.additional_oz_args = vec!["y".repeat(6000)];
    let run = s.plane.client().create_run(&spec).await.unwrap();
    wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    s.wait_for_output_text(&run.id, "oz demo agent: done").await;

    let out = s
        .cli(&["runs", "logs", &run.id])
        .wait_with_output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.len() <= 2048 && stdout.ends_with("oz demo agent: done\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("bytes of output are no longer kept") && stderr.contains("last 2048 bytes"),
        "{stderr}"
    );

    let out = s
        .cli(&["runs", "logs", "--follow", &run.id])
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("bytes of output skipped"), "{stderr}");
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with("oz demo agent: done\n"));
}
