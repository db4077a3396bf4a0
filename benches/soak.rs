//! Soak: N short demo tasks (default 1,000) through the embedded control
//! plane and one worker at concurrency 4, every 10th agent exiting 1. The
//! bench keeps four runs outstanding (it creates the next when one ends, so
//! the worker is never offered more than it takes), then checks every run:
//!
//! - lost: no terminal state;
//! - duplicated: more than one terminal entry in the run's history, or more
//!   than one agent execution (the demo agent appends a line to
//!   `/report/<run>/executions`; `/report` is bound with `-v`);
//! - wrong: an outcome other than the one asked for (succeeded, or failed
//!   with `container_exit` and exit code 1), or no execution at all;
//! - leaked: containers labelled with the worker's `dev.oz.worker-id` once
//!   every run has ended, and again after the worker stopped.
//!
//! All must be 0: otherwise the bench exits 1 (after writing its report).
//! Also: time per task, and the worker's RSS and open descriptors at start,
//! middle and end. `cargo bench --bench soak`; `OZ_BENCH_SOAK_N` (default
//! 1000, quick 40).

use oz_test_support::bench as support;

use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use oz_test_support::control_plane::TestPlane;
use oz_test_support::worker::{Launch, WorkerProcess};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::engine::unique;
use support::plane::POLL;
use support::report::{verdict, Report};
use support::setup;
use support::stats::{mib, ms, secs};

const NAME: &str = "soak";
const CONCURRENCY: usize = 4;
/// Every FAIL_EVERY-th run's agent exits 1.
const FAIL_EVERY: usize = 10;
/// A soak with no run ending for this long has stalled.
const STALL: Duration = Duration::from_secs(300);

struct Sample {
    at: &'static str,
    done: usize,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(worker: &WorkerProcess, at: &'static str, done: usize) -> Sample {
    Sample {
        at,
        done,
        rss_kib: worker.rss_kib(),
        fds: worker.open_fds(),
        threads: worker.threads(),
    }
}

fn should_fail(i: usize) -> bool {
    i % FAIL_EVERY == FAIL_EVERY - 1
}

#[tokio::main]
async fn main() {
    let n = setup::count("OZ_BENCH_SOAK_N", 1000, 40);
    let host = setup::docker_host();
    let image = setup::busybox_image();
    let engine = setup::engine(NAME, &host, &[&image]).await;
    let demo = support::images::demo_sidecar(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the demo sidecar: {e}"));
    let sidecar = demo.reference.clone();
    // Under /tmp: the daemon resolves the bind on this host.
    let report_dir = tempfile::Builder::new()
        .prefix("oz-bench-soak-")
        .tempdir_in("/tmp")
        .unwrap();
    let plane = TestPlane::ephemeral().await;
    let worker_id = unique("bench-soak");
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
            CONCURRENCY.to_string(),
            "-v".into(),
            format!("{}:/report", report_dir.path().display()),
        ],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let request = |i: usize| CreateRunRequest {
        worker_host: worker_id.clone(),
        title: Some(format!("soak {i}")),
        prompt: Some("say hello".into()),
        docker_image: Some(image.clone()),
        sidecar_image: Some(sidecar.clone()),
        env_vars: if should_fail(i) {
            BTreeMap::from([("OZ_DEMO_EXIT".to_string(), "1".into())])
        } else {
            BTreeMap::new()
        },
        ..Default::default()
    };

    let mut samples = vec![sample(&worker, "start", 0)];
    let t0 = Instant::now();
    let mut runs: Vec<(usize, String)> = Vec::with_capacity(n);
    let mut outstanding: Vec<(usize, String)> = Vec::new();
    let mut done = 0;
    let mut last_progress = Instant::now();
    let mut stalled = false;
    while done < n {
        while outstanding.len() < CONCURRENCY && runs.len() < n {
            let i = runs.len();
            let run = plane
                .runs
                .create_run(&request(i))
                .await
                .unwrap_or_else(|e| panic!("creating run {i}: {e}"));
            runs.push((i, run.id.clone()));
            outstanding.push((i, run.id));
        }
        tokio::time::sleep(POLL).await;
        let mut still = Vec::with_capacity(outstanding.len());
        for (i, id) in outstanding {
            let run = plane.runs.get_run(&id).await.unwrap();
            if run.state.is_terminal() {
                done += 1;
                last_progress = Instant::now();
                if done == n / 2 {
                    samples.push(sample(&worker, "middle", done));
                }
            } else {
                still.push((i, id));
            }
        }
        outstanding = still;
        if last_progress.elapsed() > STALL {
            eprintln!(
                "soak: no run ended for {STALL:?}; {} outstanding; counting them as lost",
                outstanding.len()
            );
            stalled = true;
            break;
        }
    }
    let wall = t0.elapsed();
    samples.push(sample(&worker, "end", done));

    // Every run, checked from the plane's record and the agent's own trace.
    let (mut lost, mut duplicated, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
    let (mut succeeded, mut failed) = (0, 0);
    for (i, id) in &runs {
        let run: Run = plane.runs.get_run(id).await.unwrap();
        let terminal_entries = run.history.iter().filter(|h| h.state.is_terminal()).count();
        let executions = std::fs::read_to_string(report_dir.path().join(id).join("executions"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if !run.state.is_terminal() {
            lost.push(id.clone());
            continue;
        }
        if terminal_entries > 1 || executions > 1 {
            duplicated.push(format!(
                "{id}: {terminal_entries} terminal entries, {executions} executions"
            ));
        }
        let expected = if should_fail(*i) {
            run.state == RunState::Failed
                && run.failure_reason.as_deref() == Some("container_exit")
                && run.exit_code == Some(1)
        } else {
            run.state == RunState::Succeeded
        };
        if !expected || executions == 0 {
            wrong.push(format!(
                "{id} (#{i}): {} {:?} exit {:?}, {executions} executions",
                run.state, run.failure_reason, run.exit_code
            ));
        }
        match run.state {
            RunState::Succeeded => succeeded += 1,
            _ => failed += 1,
        }
    }
    let leaked_running = engine
        .containers_labelled("dev.oz.worker-id", &worker_id)
        .await
        .unwrap();
    let worker_log = worker.log_text();
    let exit = worker.stop(Duration::from_secs(60)).await;
    let leaked_after = engine
        .containers_labelled("dev.oz.worker-id", &worker_id)
        .await
        .unwrap();
    for id in leaked_running.iter().chain(&leaked_after) {
        let _ = engine.remove(id).await;
    }

    let clean_exit = exit.is_some_and(|s| s.success());
    let problems =
        lost.len() + duplicated.len() + wrong.len() + leaked_running.len() + leaked_after.len();
    let per_task = wall / n.max(1) as u32;
    let mut r = Report::new(NAME, "Soak: many short tasks through the control plane");
    r.text(&format!(
        "{n} demo tasks through the embedded control plane and one worker \
         (`--max-concurrent-tasks {CONCURRENCY}`) on dockerd {} (API {}); every \
         {FAIL_EVERY}th agent exits 1. The bench keeps {CONCURRENCY} runs outstanding and creates \
         the next when one ends (polling every {POLL:?}). Each run is then checked against the \
         plane's record (state, history) and the agent's own trace (one line per execution in \
         `/report/<run>/executions`).",
        engine.version, engine.api
    ));
    r.table(
        &["check", "count", "goal"],
        &[
            vec!["runs".into(), n.to_string(), "—".into()],
            vec![
                "succeeded / failed as asked".into(),
                format!("{succeeded} / {failed}"),
                "—".into(),
            ],
            vec![
                "**lost** (no terminal state)".into(),
                format!("**{}**", lost.len()),
                format!("0 ({})", verdict(lost.is_empty())),
            ],
            vec![
                "**duplicated** (> 1 terminal entry or > 1 execution)".into(),
                format!("**{}**", duplicated.len()),
                format!("0 ({})", verdict(duplicated.is_empty())),
            ],
            vec![
                "wrong outcome or never executed".into(),
                wrong.len().to_string(),
                format!("0 ({})", verdict(wrong.is_empty())),
            ],
            vec![
                "**leaked** containers (worker running / after it stopped)".into(),
                format!("**{} / {}**", leaked_running.len(), leaked_after.len()),
                format!(
                    "0 ({})",
                    verdict(leaked_running.is_empty() && leaked_after.is_empty())
                ),
            ],
            vec![
                "worker exit after SIGTERM".into(),
                exit.map(|s| s.to_string())
                    .unwrap_or_else(|| "did not exit".into()),
                format!("0 ({})", verdict(clean_exit)),
            ],
        ],
    );
    r.table(
        &["figure", "value"],
        &[
            vec!["wall time".into(), secs(wall)],
            vec![
                format!("time per task (wall / {n}, {CONCURRENCY} at a time)"),
                ms(per_task),
            ],
            vec![
                "throughput".into(),
                format!("{:.2} tasks/s", n as f64 / wall.as_secs_f64()),
            ],
        ],
    );
    r.table(
        &["worker at", "runs ended", "VmRSS", "open fds", "threads"],
        &samples
            .iter()
            .map(|s| {
                vec![
                    s.at.to_string(),
                    s.done.to_string(),
                    mib(s.rss_kib),
                    s.fds.to_string(),
                    s.threads.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let examples: Vec<&String> = lost
        .iter()
        .chain(&duplicated)
        .chain(&wrong)
        .chain(&leaked_running)
        .chain(&leaked_after)
        .take(10)
        .collect();
    if !examples.is_empty() {
        r.text(&format!(
            "First problems found: {}",
            examples
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if stalled {
        r.text("The soak stalled: no run ended for five minutes.");
    }
    r.goal(
        &format!("soak, {n} tasks: lost / duplicated / leaked"),
        &format!(
            "{} / {} / {}",
            lost.len(),
            duplicated.len(),
            leaked_running.len() + leaked_after.len()
        ),
        "0 / 0 / 0",
        Some(problems == 0),
    );
    r.goal(
        "soak: time per task at concurrency 4",
        &ms(per_task),
        "—",
        None,
    );
    let rss: Vec<String> = samples.iter().map(|s| mib(s.rss_kib)).collect();
    let fds: Vec<String> = samples.iter().map(|s| s.fds.to_string()).collect();
    r.goal(
        "soak: worker RSS / open fds at start, middle, end",
        &format!("{} / {}", rss.join(", "), fds.join(", ")),
        "—",
        None,
    );
    r.finish();
    if problems > 0 || !clean_exit {
        eprintln!(
            "soak: {} lost, {} duplicated, {} wrong, {} + {} leaked, worker exit {exit:?}; worker log tail:\n{}",
            lost.len(),
            duplicated.len(),
            wrong.len(),
            leaked_running.len(),
            leaked_after.len(),
            worker_log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::process::exit(1);
    }
}
