//! Live output across faults (issue 22 item 5), with the real worker binary
//! (direct runtime: the "agent" is a shell script on this host) and the real
//! `serve` process, read back with the real `runs logs`:
//! - `serve` SIGKILLed for about 3 s while the task prints: every numbered
//!   line reaches `runs logs`, in order (the worker keeps a bounded buffer
//!   while it has no connection and sends it on the next one);
//! - a 20 MB burst, then a final `FATAL` line: the newest output is what is
//!   kept (by the worker's buffer and by the control plane's
//!   `--output-limit`), so `FATAL` is the last line `runs logs` prints, and
//!   the reader is told how much was dropped.

use oz_test_support as support;

use oz_runs_api::model::RunState;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::host::wait_file;
use support::plane_process::PlaneProcess;
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Direct {
    root: tempfile::TempDir,
}

impl Direct {
    /// A direct-runtime setup whose agent is `agent` (a shell script body);
    /// `$CONTROL` is a folder the test and the script share.
    fn new(agent: &str) -> Direct {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("ws")).unwrap();
        std::fs::create_dir(root.path().join("control")).unwrap();
        let script = root.path().join("agent.sh");
        std::fs::write(&script, format!("#!/bin/sh\nset -u\n{agent}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = Direct { root };
        std::fs::write(
            d.path("config.yaml"),
            format!(
                "backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    environment:\n      - name: CONTROL\n        value: {}\n",
                d.path("ws").display(),
                script.display(),
                d.control("").display()
            ),
        )
        .unwrap();
        d
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn control(&self, name: &str) -> PathBuf {
        self.path("control").join(name)
    }

    async fn worker(&self, plane: &PlaneProcess, id: &str) -> WorkerProcess {
        let w = WorkerProcess::spawn_at(
            &plane.ws_url(),
            &plane.url(),
            &plane.key,
            Engine::None,
            WorkerOptions {
                worker_id: id,
                extra_args: [
                    "--backend",
                    "direct",
                    "--config-file",
                    &self.path("config.yaml").display().to_string(),
                    "--ping-interval",
                    "1s",
                    "--read-timeout",
                    "4s",
                ]
                .map(String::from)
                .to_vec(),
                ..Default::default()
            },
        );
        w.wait_for_log("connected to the orchestrator", Duration::from_secs(30))
            .await;
        w
    }
}

fn touch(p: &Path) {
    std::fs::write(p, "").unwrap();
}

/// `runs logs ID` through the CLI: (stdout, stderr).
async fn runs_logs(plane: &PlaneProcess, run: &str) -> (String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["runs", "logs", run, "--server", &plane.url()])
        .env("WARP_API_KEY", &plane.key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn wait_ended(plane: &PlaneProcess, run: &str) -> oz_runs_api::model::Run {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        if let Ok(r) = plane.client().get_run(run).await {
            if matches!(
                r.state,
                RunState::Succeeded | RunState::Failed | RunState::Cancelled
            ) {
                return r;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run} never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_printed_while_serve_is_down_reach_runs_logs() {
    // Lines 1-5, then 6-10 once told (while serve is down), then 11-15.
    let d = Direct::new(
        r#"n=1
for phase in start outage back; do
  [ "$phase" = start ] || while [ ! -e "$CONTROL/$phase" ]; do sleep 0.05; done
  for i in 1 2 3 4 5; do echo "line $n"; n=$((n+1)); sleep 0.1; done
  touch "$CONTROL/printed-$phase"
done"#,
    );
    let mut plane = PlaneProcess::start(&[]).await;
    let id = unique_id("out-outage");
    let w = d.worker(&plane, &id).await;
    let run = plane
        .client()
        .create_run(&host_run(&id, "outage", &[]))
        .await
        .unwrap()
        .id;
    wait_file(&d.control("printed-start")).await;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !runs_logs(&plane, &run).await.0.contains("line 5\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "line 5 never stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plane.kill().await;
    let down = tokio::time::Instant::now();
    touch(&d.control("outage"));
    wait_file(&d.control("printed-outage")).await;
    // The outage lasts about 3 s, as in the report.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    plane.restart().await;
    touch(&d.control("back"));
    let done = wait_ended(&plane, &run).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let (out, err) = runs_logs(&plane, &run).await;
    let expected: String = (1..=15).map(|n| format!("line {n}\n")).collect();
    assert_eq!(
        out,
        expected,
        "stderr: {err}\nworker log:\n{}",
        w.log_text()
    );
    assert!(!err.contains("dropped"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_20_mb_burst_the_final_fatal_line_is_kept_and_the_drop_is_marked() {
    let d = Direct::new(
        r#"yes 'burst burst burst burst burst burst burst burst burst burst burst' | head -c 20000000
echo
echo "FATAL: the task gave up after the burst"
exit 3"#,
    );
    let plane = PlaneProcess::start(&[]).await;
    let id = unique_id("out-burst");
    let w = d.worker(&plane, &id).await;
    let run = plane
        .client()
        .create_run(&host_run(&id, "burst", &[]))
        .await
        .unwrap()
        .id;
    let done = wait_ended(&plane, &run).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    // The last output may follow the report by a moment.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let (out, err) = loop {
        let (out, err) = runs_logs(&plane, &run).await;
        if out.contains("FATAL") || tokio::time::Instant::now() > deadline {
            break (out, err);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let last = out.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "FATAL: the task gave up after the burst",
        "stderr: {err}\nworker log:\n{}",
        w.log_text()
    );
    assert!(
        out.len() < 20_000_000,
        "not everything can be kept: {} bytes",
        out.len()
    );
    assert!(
        err.contains("older output dropped by the worker") || err.contains("no longer kept"),
        "the reader is not told what was dropped: {err}"
    );
}
