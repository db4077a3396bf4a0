//! Sidecar volumes under concurrency and after an interrupted fill: no task
//! ever mounts a half-filled volume, a new image is copied once however many
//! tasks and workers need it, and no helper container is left behind.

use oz_test_support as support;

use futures_util::StreamExt;
use oz_docker_engine::models::{ContainerCreateBody, HostConfig, VolumeCreateOptions};
use oz_docker_engine::params::*;
use oz_docker_engine::Docker;
use oz_runs_api::model::RunState;
use oz_runtime_docker::tar;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::images::{fresh_sidecar, remove_sidecar};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
async fn volume_exists(d: &Docker, name: &str) -> bool {
    d.volume_inspect(name).await.is_ok()
}

async fn leftover_containers(d: &Docker, worker_id: &str) -> Vec<String> {
    let filters =
        serde_json::json!({ "label": [format!("dev.oz.worker-id={worker_id}")] }).to_string();
    let params = ContainerListParams {
        all: Some(true),
        filters: Some(filters),
        ..Default::default()
    };
    d.container_list(&params)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.first().cloned()))
        .collect()
}

macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod docker {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if super::Engine::Docker.available() { super::$name(super::Engine::Docker).await } } )*
        }
        mod podman {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if super::Engine::Podman.available() { super::$name(super::Engine::Podman).await } } )*
        }
    };
}

per_engine!(
    concurrent_tasks_on_two_workers_copy_a_new_sidecar_once,
    half_filled_volume_is_refilled_not_mounted
);

async fn concurrent_tasks_on_two_workers_copy_a_new_sidecar_once(engine: Engine) {
    let d = engine.docker().await;
    let (sidecar, volume) = fresh_sidecar(&d).await;
    let plane = TestPlane::start(test_config()).await;
    let id = unique_id("e2e-fill");
    let opts = || WorkerOptions {
        worker_id: &id,
        ..Default::default()
    };
    let a = WorkerProcess::start(&plane, engine, opts()).await;
    let b = WorkerProcess::start(&plane, engine, opts()).await;
    let client = plane.client();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut req = demo_run(&id, &[]);
        req.sidecar_image = Some(sidecar.clone());
        runs.push(client.create_run(&req).await.unwrap());
    }
    for run in &runs {
        let done = wait_terminal(&plane, &run.id, RUN_TIMEOUT).await;
        assert_eq!(
            done.state,
            RunState::Succeeded,
            "{done:#?}\nA:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        );
    }
    let copies = a.log_text().matches("copying sidecar filesystem").count()
        + b.log_text().matches("copying sidecar filesystem").count();
    assert_eq!(copies, 1, "the image is copied once across both workers");
    assert!(
        a.log_text().contains("claimed task") && b.log_text().contains("claimed task"),
        "both workers ran tasks"
    );
    assert!(
        volume_exists(&d, &volume).await,
        "volume {volume} holds the sidecar"
    );
    assert!(
        leftover_containers(&d, &id).await.is_empty(),
        "no helper or task container left"
    );
    remove_sidecar(&d, &sidecar, &volume).await;
}

async fn half_filled_volume_is_refilled_not_mounted(engine: Engine) {
    let d = engine.docker().await;
    let (sidecar, volume) = fresh_sidecar(&d).await;
    // What a crash mid-fill leaves: the volume, some content, no ready marker.
    d.volume_create(&VolumeCreateOptions {
        name: Some(volume.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = ContainerCreateBody {
        image: Some(BUSYBOX.into()),
        cmd: Some(vec!["true".into()]),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{volume}:/fill")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let helper = d
        .container_create(&Default::default(), &body)
        .await
        .unwrap()
        .id;
    let junk = tar::single_file("partial-file", b"half", 0o644);
    let stream = futures_util::stream::once(async move { Ok(bytes::Bytes::from(junk)) }).boxed();
    d.put_container_archive(
        &helper,
        &PutContainerArchiveParams {
            path: "/fill".into(),
            ..Default::default()
        },
        stream,
    )
    .await
    .unwrap();
    d.container_delete(
        &helper,
        &ContainerDeleteParams {
            force: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let plane = TestPlane::start(test_config()).await;
    let id = unique_id("e2e-refill");
    let w = WorkerProcess::start(
        &plane,
        engine,
        WorkerOptions {
            worker_id: &id,
            ..Default::default()
        },
    )
    .await;
    let mut req = demo_run(&id, &[]);
    req.sidecar_image = Some(sidecar.clone());
    let run = plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(&plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        done.state,
        RunState::Succeeded,
        "the agent's entrypoint is there: {done:#?}\n{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("copying sidecar filesystem"),
        "the incomplete volume was filled, not used as is"
    );
    assert!(leftover_containers(&d, &id).await.is_empty());
    remove_sidecar(&d, &sidecar, &volume).await;
}
