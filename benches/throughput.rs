//! Throughput at concurrency 8: N demo tasks through the worker
//! (`--max-concurrent-tasks 8`), fed by a scripted orchestrator that keeps
//! eight assigned and sends the next one the moment a report arrives, vs.
//! raw Engine API calls doing the same container work eight at a time
//! (eight lanes of create → start → wait → remove). Batches alternate in
//! ABBA order. Goal: worker throughput / raw throughput ≥ 0.95.
//!
//! `cargo bench --bench throughput`; `OZ_BENCH_N` tasks per batch (default
//! 48, quick 16), `OZ_BENCH_ROUNDS` pairs of batches (default 5: the median of 3 pair
//! ratios swung 0.95–1.01 between runs here; quick 1).

use oz_test_support::bench as support;

use oz_protocol::WorkerMessage;
use oz_test_support::scripted_server::{assignment, ScriptedServer, ServerConn};
use oz_test_support::worker::{Launch, WorkerProcess};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::engine::{task_container, unique, Agent, RawEngine};
use support::report::{verdict, Report};
use support::setup;
use support::stats::{median, median_f64, secs, worker_first};

const NAME: &str = "throughput";
const CONCURRENCY: usize = 8;
const GOAL: f64 = 0.95;
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);

struct Batch {
    took: Duration,
    /// Assignments the worker turned down (it was still freeing the slot).
    rejected: usize,
}

/// N tasks through the worker, at most CONCURRENCY assigned at a time.
async fn through_worker(conn: &mut ServerConn, image: &str, sidecar: &str, n: usize) -> Batch {
    let t0 = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    let mut rejected = 0;
    let mut in_flight = 0;
    while sent < n.min(CONCURRENCY) {
        conn.send(&assignment(&unique("run"), image, sidecar, &[]))
            .await
            .unwrap();
        sent += 1;
        in_flight += 1;
    }
    while done < n {
        match conn.message(FRAME_TIMEOUT).await.unwrap() {
            WorkerMessage::TaskClaimed(_) => {}
            WorkerMessage::TaskCompleted(_) => {
                done += 1;
                in_flight -= 1;
            }
            WorkerMessage::TaskRejected(_) => {
                // Offered again at once, as a server with no other worker would.
                rejected += 1;
                in_flight -= 1;
                sent -= 1;
            }
            WorkerMessage::TaskFailed(f) => panic!("a benchmark task failed: {f:?}"),
            _ => {}
        }
        while in_flight < CONCURRENCY && sent < n {
            conn.send(&assignment(&unique("run"), image, sidecar, &[]))
                .await
                .unwrap();
            sent += 1;
            in_flight += 1;
        }
    }
    Batch {
        took: t0.elapsed(),
        rejected,
    }
}

/// N raw container lifecycles, CONCURRENCY lanes.
async fn raw(engine: &RawEngine, image_id: &str, volume: &str, n: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (engine, next) = (engine.clone(), next.clone());
        let (image_id, volume) = (image_id.to_string(), volume.to_string());
        lanes.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let task_id = unique("run");
                let body = task_container(&image_id, Agent::Volume(&volume), &task_id, &[], &[]);
                let code = engine
                    .run(Some(&format!("oz-bench-{task_id}")), &body)
                    .await
                    .unwrap_or_else(|e| panic!("baseline: {e}"));
                assert_eq!(code, 0, "a baseline container failed");
            }
        });
    }
    while let Some(r) = lanes.join_next().await {
        r.expect("a baseline lane panicked");
    }
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    let n = setup::count("OZ_BENCH_N", 48, 16);
    let rounds = setup::count("OZ_BENCH_ROUNDS", 5, 1);
    let host = setup::docker_host();
    let image = setup::busybox_image();
    let engine = setup::engine(NAME, &host, &[&image]).await;
    let demo = support::images::demo_sidecar(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the demo sidecar: {e}"));
    let sidecar = demo.reference.clone();
    let orchestrator = ScriptedServer::start().await;
    let worker = WorkerProcess::try_spawn(Launch {
        worker_id: unique("bench-throughput"),
        ws_url: orchestrator.ws_url.clone(),
        root_url: orchestrator.root_url.clone(),
        api_key: "bench".into(),
        docker_host: Some(host.clone()),
        args: vec![
            "--pull-policy".into(),
            "if-not-present".into(),
            "--max-concurrent-tasks".into(),
            CONCURRENCY.to_string(),
        ],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = orchestrator
        .try_accept(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_text()));

    // Warm-up: the first task fills the sidecar volume the baseline mounts.
    through_worker(&mut conn, &image, &sidecar, 1).await;
    let image_id = engine.image_id(&image).await.unwrap().unwrap();
    let volume = demo.volume.clone();
    assert!(
        engine.volume_exists(&volume).await.unwrap(),
        "no volume {volume}"
    );
    raw(&engine, &image_id, &volume, CONCURRENCY).await;

    let (mut w, mut b) = (Vec::new(), Vec::new());
    let mut rejected = 0;
    for i in 0..rounds {
        if worker_first(i) {
            w.push(through_worker(&mut conn, &image, &sidecar, n).await);
            b.push(raw(&engine, &image_id, &volume, n).await);
        } else {
            b.push(raw(&engine, &image_id, &volume, n).await);
            w.push(through_worker(&mut conn, &image, &sidecar, n).await);
        }
        rejected += w.last().unwrap().rejected;
    }
    let peak = worker.peak_rss_kib();
    worker.stop(Duration::from_secs(30)).await;

    // Throughput ratio per pair: raw time / worker time.
    let ratios: Vec<f64> = w
        .iter()
        .zip(&b)
        .map(|(w, b)| b.as_secs_f64() / w.took.as_secs_f64())
        .collect();
    let ratio = median_f64(&ratios);
    let wt: Vec<Duration> = w.iter().map(|b| b.took).collect();
    let (mw, mb) = (median(&wt), median(&b));
    let tps = |d: Duration| n as f64 / d.as_secs_f64();

    let mut r = Report::new(NAME, "Throughput at concurrency 8");
    r.text(&format!(
        "{rounds} pair(s) of batches of {n} demo tasks, ABBA order: through the worker \
         (`--max-concurrent-tasks {CONCURRENCY}`; a scripted orchestrator keeps {CONCURRENCY} \
         assigned and assigns the next when a report arrives) vs. raw Engine API calls doing the \
         same container lifecycle in {CONCURRENCY} parallel lanes, on dockerd {} (API {}). A \
         batch runs from the first assignment (or call) to the last report (or removal).",
        engine.version, engine.api
    ));
    r.table(
        &["figure", "value"],
        &[
            vec![
                "raw, 8 lanes: batch time (median) / throughput".into(),
                format!("{} / {:.2} tasks/s", secs(mb), tps(mb)),
            ],
            vec![
                "worker, 8 slots: batch time (median) / throughput".into(),
                format!("{} / {:.2} tasks/s", secs(mw), tps(mw)),
            ],
            vec![
                "assignments rejected (slot not yet free)".into(),
                rejected.to_string(),
            ],
            vec![
                format!("**worker / raw throughput, median of pairs** (goal ≥ {GOAL})"),
                format!("**{ratio:.3}** ({})", verdict(ratio >= GOAL)),
            ],
            vec!["worker peak RSS (VmHWM)".into(), support::stats::mib(peak)],
        ],
    );
    r.goal(
        "throughput at concurrency 8: worker / raw",
        &format!("{ratio:.3}"),
        &format!("≥ {GOAL}"),
        Some(ratio >= GOAL),
    );
    r.finish();
}
