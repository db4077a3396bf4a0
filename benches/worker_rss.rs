//! Worker memory: resident set (VmRSS) of the worker binary idle (connected,
//! no task yet) and with 16 tasks running at once (`--max-concurrent-tasks
//! 16`, demo agents that sleep), sampled every 100 ms for a few seconds in
//! each state; also open descriptors and threads, and idle again after the
//! tasks were cancelled. Goals: idle < 15 MiB, 16 tasks < 30 MiB. Also
//! how many names of the link order file (`link/idle-symbols.txt`, see
//! build.rs) the measured binary defines: far fewer than all means the
//! file is stale and the idle figure is not the ordered link's.
//!
//! `cargo bench --bench worker_rss`; `OZ_BENCH_TASKS` (default 16).

use oz_test_support::bench as support;

use oz_runs_api::model::{CreateRunRequest, RunState};
use oz_test_support::control_plane::TestPlane;
use oz_test_support::worker::{Launch, WorkerProcess};
use std::time::Duration;
use support::engine::unique;
use support::report::{verdict, Report};
use support::setup;
use support::stats::mib;

const NAME: &str = "worker_rss";
const IDLE_GOAL_KIB: u64 = 15 * 1024;
const BUSY_GOAL_KIB: u64 = 30 * 1024;
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// VmRSS every 100 ms for `window`: (max, last).
async fn sample(worker: &WorkerProcess, window: Duration) -> (u64, u64) {
    let mut max = 0;
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < deadline {
        last = worker.rss_kib();
        max = max.max(last);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (max, last)
}

/// "N of M names of link/idle-symbols.txt are defined in the measured
/// binary", counted with `nm --defined-only`, or why they were not counted.
fn order_file_names_present(binary: &str) -> String {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/link/idle-symbols.txt");
    let names = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => return format!("link/idle-symbols.txt not counted: cannot read {file}: {e}"),
    };
    let nm = match std::process::Command::new("nm")
        .args(["--defined-only", binary])
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return format!(
                "link/idle-symbols.txt not counted: nm {binary} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
        Err(e) => return format!("link/idle-symbols.txt not counted: cannot run nm: {e}"),
    };
    let nm = String::from_utf8_lossy(&nm.stdout);
    // `ADDRESS TYPE NAME`; LLD ignores `#` lines (the stamp) in the file.
    let defined: std::collections::HashSet<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let present = listed.iter().filter(|n| defined.contains(*n)).count();
    format!(
        "{present} of {} names of link/idle-symbols.txt are defined in the measured binary{}",
        listed.len(),
        if present < listed.len() {
            " (fewer than all: the file is stale for it; scripts/idle-symbol-order.sh)"
        } else {
            ""
        }
    )
}

#[tokio::main]
async fn main() {
    let tasks = setup::count("OZ_BENCH_TASKS", 16, 16);
    let window = Duration::from_secs(if setup::quick() { 2 } else { 5 });
    let host = setup::docker_host();
    let image = setup::busybox_image();
    let engine = setup::engine(NAME, &host, &[&image]).await;
    let demo = support::images::demo_sidecar(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the demo sidecar: {e}"));
    let sidecar = demo.reference.clone();
    let plane = TestPlane::ephemeral().await;
    let worker_id = unique("bench-rss");
    let worker = WorkerProcess::try_start(Launch {
        worker_id: worker_id.clone(),
        ws_url: plane.ws_url(),
        root_url: plane.url(),
        api_key: plane.key.clone(),
        docker_host: Some(host.clone()),
        args: vec![
            "--pull-policy".into(),
            "if-not-present".into(),
            "--max-concurrent-tasks".into(),
            tasks.to_string(),
            "--stop-grace-period".into(),
            "1s".into(),
        ],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let req = |env: &[(&str, &str)]| CreateRunRequest {
        worker_host: worker_id.clone(),
        title: Some("bench".into()),
        prompt: Some("say hello".into()),
        docker_image: Some(image.clone()),
        sidecar_image: Some(sidecar.clone()),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        ..Default::default()
    };

    let (idle_max, idle) = sample(&worker, window).await;
    let idle_fds = worker.open_fds();
    let idle_threads = worker.threads();

    // One task first, so the busy figure is not the sidecar fill's.
    let warm = plane
        .timed_run(&req(&[]), RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warm.run.state, RunState::Succeeded, "{:#?}", warm.run);

    let mut ids = Vec::new();
    for _ in 0..tasks {
        let run = plane
            .runs
            .create_run(&req(&[
                ("OZ_DEMO_BEHAVIOUR", "sleep"),
                ("OZ_DEMO_SLEEP", "600"),
            ]))
            .await
            .unwrap();
        ids.push(run.id);
    }
    plane
        .wait_all_claimed(&ids, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_text()));
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let running = engine
            .running_labelled("dev.oz.worker-id", &worker_id)
            .await
            .unwrap();
        if running == tasks {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {running} of {tasks} task containers are running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (busy_max, busy) = sample(&worker, window).await;
    let busy_fds = worker.open_fds();
    let busy_threads = worker.threads();

    for id in &ids {
        plane.runs.cancel_run(id).await.unwrap();
    }
    for id in &ids {
        let run = plane.wait_terminal(id, RUN_TIMEOUT).await.unwrap();
        assert_eq!(run.state, RunState::Cancelled, "{run:#?}");
    }
    let (after_max, after) = sample(&worker, window).await;
    let after_fds = worker.open_fds();
    let peak = worker.peak_rss_kib();
    worker.stop(Duration::from_secs(30)).await;

    let mut r = Report::new(NAME, "Worker memory");
    r.text(&format!(
        "The worker binary (bench profile) on dockerd {} (API {}), connected to the embedded \
         control plane, `--max-concurrent-tasks {tasks}`. VmRSS sampled every 100 ms for {:?} in \
         each state; the figure is the largest sample. Busy: {tasks} demo agents sleeping, all \
         {tasks} containers observed running (after one earlier task filled the sidecar \
         volume). After: the {tasks} runs cancelled and reported.",
        engine.version, engine.api, window
    ));
    r.text(&format!(
        "Link order: {}.",
        order_file_names_present(oz_test_support::worker_binary())
    ));
    r.table(
        &["state", "VmRSS (max / last)", "open fds", "threads", "goal"],
        &[
            vec![
                "idle (connected, no task yet)".into(),
                format!("**{}** / {}", mib(idle_max), mib(idle)),
                idle_fds.to_string(),
                idle_threads.to_string(),
                format!("< 15 MiB ({})", verdict(idle_max < IDLE_GOAL_KIB)),
            ],
            vec![
                format!("{tasks} tasks running"),
                format!("**{}** / {}", mib(busy_max), mib(busy)),
                busy_fds.to_string(),
                busy_threads.to_string(),
                format!("< 30 MiB ({})", verdict(busy_max < BUSY_GOAL_KIB)),
            ],
            vec![
                "idle again, after they were cancelled".into(),
                format!("{} / {}", mib(after_max), mib(after)),
                after_fds.to_string(),
                "—".into(),
                "—".into(),
            ],
            vec![
                "peak over the whole run (VmHWM)".into(),
                mib(peak),
                "—".into(),
                "—".into(),
                "—".into(),
            ],
        ],
    );
    r.goal(
        "worker RSS idle",
        &mib(idle_max),
        "< 15 MiB",
        Some(idle_max < IDLE_GOAL_KIB),
    );
    r.goal(
        &format!("worker RSS with {tasks} running tasks"),
        &mib(busy_max),
        "< 30 MiB",
        Some(busy_max < BUSY_GOAL_KIB),
    );
    r.finish();
}
