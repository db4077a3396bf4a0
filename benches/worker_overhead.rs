//! What the worker adds to a task: N demo tasks end to end (run created on
//! the embedded control plane → assignment → claim → image and sidecar checks
//! → container create/start/wait/remove → report → run observed succeeded),
//! against the bare container work for the same task (create → start → wait
//! → remove of the same image, mounts and command through the Engine API),
//! interleaved in the same run. Prints both medians, their ratio and the
//! worker process's peak memory (VmHWM).
//!
//! `cargo bench --bench worker_overhead`; `OZ_BENCH_N` (default 20). Needs the
//! test environment's images (`scripts/test-env.sh up`).

use oz_agent_worker::control_plane::client::Client;
use oz_agent_worker::control_plane::model::{CreateRunRequest, RunState};
use oz_agent_worker::control_plane::{Config, ControlPlane};
use oz_agent_worker::docker::models::{ContainerCreateBody, HostConfig};
use oz_agent_worker::docker::params::{ContainerDeleteParams, ContainerWaitParams};
use oz_agent_worker::docker::Docker;
use oz_agent_worker::runtime::docker::sidecar_volume_name;
use oz_agent_worker::transport::EnvSnapshot;
use std::time::{Duration, Instant};

const IMAGE: &str = "oz-test/busybox:latest";
const SIDECAR: &str = "oz-test/agent-sidecar:latest";

async fn through_worker(client: &Client, host: &str) -> Duration {
    let t0 = Instant::now();
    let req = CreateRunRequest {
        worker_host: host.into(),
        docker_image: Some(IMAGE.into()),
        sidecar_image: Some(SIDECAR.into()),
        ..Default::default()
    };
    let run = client.create_run(&req).await.expect("create run");
    loop {
        let now = client.get_run(&run.id).await.expect("get run");
        match now.state {
            RunState::Succeeded => return t0.elapsed(),
            RunState::Failed | RunState::Cancelled => panic!("benchmark task failed: {now:#?}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn bare(docker: &Docker, volume: &str) -> Duration {
    let t0 = Instant::now();
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        entrypoint: Some(vec!["/agent/entrypoint.sh".into()]),
        cmd: Some(vec!["agent".into(), "run".into()]),
        working_dir: Some("/workspace".into()),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{volume}:/agent:ro")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .container_create(&Default::default(), &body)
        .await
        .expect("create")
        .id
        .unwrap();
    docker
        .container_start(&id, &Default::default())
        .await
        .expect("start");
    let waited = docker
        .container_wait(&id, &ContainerWaitParams::default())
        .await
        .expect("wait");
    assert_eq!(waited.status_code, Some(0));
    docker
        .container_delete(
            &id,
            &ContainerDeleteParams {
                force: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("remove");
    t0.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("OZ_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let docker = Docker::connect(&EnvSnapshot::from_process())
        .await
        .expect("a reachable daemon");
    let plane = ControlPlane::start(Config::ephemeral())
        .await
        .expect("control plane");
    let key = plane.create_api_key("bench").unwrap().secret;
    let client = Client::new(&plane.url(), &key).unwrap();
    let host = "bench-worker";
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args([
            "--worker-id",
            host,
            "--web-socket-url",
            &plane.ws_url(),
            "--server-root-url",
            &plane.url(),
        ])
        .args(["--pull-policy", "if-not-present", "--log-level", "warn"])
        .env("WARP_API_KEY", &key)
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary");
    while plane.connection_count() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm-up: the first task fills the sidecar volume, which the baseline mounts.
    through_worker(&client, host).await;
    let sidecar_id = docker
        .image_inspect(SIDECAR, &Default::default())
        .await
        .unwrap()
        .id
        .unwrap();
    let volume = sidecar_volume_name("oz-test/agent-sidecar", &sidecar_id);
    bare(&docker, &volume).await;

    let (mut w, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        w.push(through_worker(&client, host).await);
        b.push(bare(&docker, &volume).await);
    }
    let (mw, mb) = (median(w), median(b));
    let rss = worker.id().and_then(peak_rss_kib);
    println!("tasks: {n} (interleaved)");
    println!(
        "bare container work, median:    {:>8.1} ms",
        mb.as_secs_f64() * 1e3
    );
    println!(
        "end to end via worker, median:  {:>8.1} ms",
        mw.as_secs_f64() * 1e3
    );
    println!(
        "ratio worker/bare:              {:>8.3}",
        mw.as_secs_f64() / mb.as_secs_f64()
    );
    println!(
        "overhead per task:              {:>8.1} ms",
        (mw.as_secs_f64() - mb.as_secs_f64()) * 1e3
    );
    if let Some(kib) = rss {
        println!(
            "worker peak RSS (VmHWM):        {:>8.1} MiB",
            kib as f64 / 1024.0
        );
    }
    worker.kill().await.ok();
}
