//! Per-task overhead: N demo tasks end to end (run created on the embedded
//! control plane → assignment → journalled claim → image and sidecar checks
//! → container create/start/wait/remove → journalled report → terminal
//! state recorded by the plane) against the bare container work of the same
//! task through raw Engine API calls (create → start → wait → remove of the
//! same image, command, environment, working directory and read-only agent
//! volume), in interleaved pairs (ABBA order). Goal: worker / raw ≤ 1.03.
//!
//! `cargo bench --bench worker_overhead`; `OZ_BENCH_N` pairs (default 30,
//! 3 with `OZ_BENCH_QUICK=1`). Needs the test environment's dockerd and
//! busybox image (`scripts/test-env.sh up`). To see where a worker task's
//! time goes, run it with `OZ_BENCH_WORKER_LOG=info,oz_worker=debug,oz_runtime=debug,oz_docker_engine=debug
//! OZ_BENCH_LOG_DIR=DIR`: the kept log times every Docker request.

use oz_test_support::bench as support;

use oz_runs_api::model::{CreateRunRequest, RunState};
use oz_test_support::control_plane::TestPlane;
use oz_test_support::worker::{Launch, WorkerProcess};
use std::time::{Duration, Instant};
use support::engine::{task_container, unique, Agent};
use support::plane::Timed;
use support::report::{verdict, Report};
use support::stats::{median, ms, paired_ratio, ratio, ratio_spread, worker_first};
use support::{setup, stats};

const NAME: &str = "worker_overhead";
const GOAL: f64 = 1.03;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let n = setup::count("OZ_BENCH_N", 30, 3);
    let host = setup::docker_host();
    let image = setup::busybox_image();
    let engine = setup::engine(NAME, &host, &[&image]).await;
    let demo = support::images::demo_sidecar(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the demo sidecar: {e}"));
    let sidecar = demo.reference.clone();
    let plane = TestPlane::ephemeral().await;
    let worker_id = unique("bench-overhead");
    let worker = WorkerProcess::try_start(Launch {
        worker_id: worker_id.clone(),
        ws_url: plane.ws_url(),
        root_url: plane.url(),
        api_key: plane.key.clone(),
        docker_host: Some(host.clone()),
        args: vec!["--pull-policy".into(), "if-not-present".into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let req = CreateRunRequest {
        worker_host: worker_id.clone(),
        title: Some("bench".into()),
        prompt: Some("say hello".into()),
        docker_image: Some(image.clone()),
        sidecar_image: Some(sidecar.clone()),
        ..Default::default()
    };
    let through_worker = async || {
        let t = plane
            .timed_run(&req, RUN_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_text()));
        assert_eq!(
            t.run.state,
            RunState::Succeeded,
            "a benchmark task failed: {:#?}\nworker log:\n{}",
            t.run,
            worker.log_text()
        );
        t
    };

    // Warm-up: the first task fills the sidecar volume the baseline mounts.
    through_worker().await;
    let image_id = engine.image_id(&image).await.unwrap().unwrap();
    let volume = demo.volume.clone();
    assert!(
        engine.volume_exists(&volume).await.unwrap(),
        "the worker filled no volume named {volume}"
    );
    let bare = async || {
        let task_id = unique("run");
        let body = task_container(&image_id, Agent::Volume(&volume), &task_id, &[], &[]);
        let t0 = Instant::now();
        let code = engine
            .run(Some(&format!("oz-bench-{task_id}")), &body)
            .await
            .unwrap_or_else(|e| panic!("baseline: {e}"));
        let took = t0.elapsed();
        assert_eq!(code, 0, "the baseline container failed");
        took
    };
    bare().await;

    let (mut w, mut b): (Vec<Timed>, Vec<Duration>) = (Vec::new(), Vec::new());
    for i in 0..n {
        if worker_first(i) {
            w.push(through_worker().await);
            b.push(bare().await);
        } else {
            b.push(bare().await);
            w.push(through_worker().await);
        }
        eprintln!(
            "pair {i} ({}): worker {}, raw {}",
            if worker_first(i) {
                "worker first"
            } else {
                "raw first"
            },
            ms(w[i].total),
            ms(b[i])
        );
    }
    let totals: Vec<Duration> = w.iter().map(|t| t.total).collect();
    let (mw, mb) = (median(&totals), median(&b));
    let paired = paired_ratio(&totals, &b);
    let to_created = median(&w.iter().map(|t| t.to_created).collect::<Vec<_>>());
    let to_claim = median(&w.iter().map(|t| t.to_claim).collect::<Vec<_>>());
    let claim_to_end = median(&w.iter().map(|t| t.claim_to_end).collect::<Vec<_>>());
    let peak = worker.peak_rss_kib();
    worker.stop(Duration::from_secs(30)).await;

    let mut r = Report::new(NAME, "Per-task overhead (one task at a time)");
    r.text(&format!(
        "{n} demo tasks end to end through the embedded control plane and the worker \
         (`--pull-policy if-not-present`, default log level, journal on the local disk) vs. the \
         same container lifecycle through raw Engine API calls (create → start → wait → remove, \
         same image, command, environment, working directory and read-only agent volume), on \
         dockerd {} (API {}). Interleaved in ABBA order. A worker task's time runs from just \
         before the run is created to the plane recording its terminal report (the container \
         is removed before the report).",
        engine.version, engine.api
    ));
    r.table(
        &["figure", "value"],
        &[
            vec!["raw container lifecycle, median".into(), ms(mb)],
            vec!["end to end through the worker, median".into(), ms(mw)],
            vec![
                "… runs API request → run recorded, median".into(),
                ms(to_created),
            ],
            vec![
                "… run recorded → claim recorded, median".into(),
                ms(to_claim),
            ],
            vec![
                "… claim recorded → report recorded, median".into(),
                ms(claim_to_end),
            ],
            vec![
                "overhead per task (median − median)".into(),
                ms(mw.saturating_sub(mb)),
            ],
            vec!["ratio of medians".into(), format!("{:.3}", ratio(mw, mb))],
            vec![
                format!("**median of paired ratios** (goal ≤ {GOAL})"),
                format!("**{paired:.3}** ({})", verdict(paired <= GOAL)),
            ],
            vec![
                "per-pair ratios, middle half (p25–p75)".into(),
                ratio_spread(&totals, &b),
            ],
            vec!["worker peak RSS (VmHWM)".into(), stats::mib(peak)],
        ],
    );
    r.text(
        "Where a worker task's time goes: run this bench with \
         `OZ_BENCH_WORKER_LOG=info,oz_worker=debug,oz_runtime=debug,oz_docker_engine=debug OZ_BENCH_LOG_DIR=DIR`; the worker's log \
         (kept in DIR) times every Docker request of every task.",
    );
    r.goal(
        "per-task overhead: worker / raw lifecycle",
        &format!("{paired:.3}"),
        &format!("≤ {GOAL}"),
        Some(paired <= GOAL),
    );
    r.finish();
}
