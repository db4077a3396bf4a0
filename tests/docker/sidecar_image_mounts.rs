//! Version-aware sidecars on a Docker 28 daemon (API 1.51): read-only
//! sidecars are image mounts (no volume, no copy), read-write ones still go
//! through a filled volume, and with the API pinned below 1.48 the same task
//! takes the volume path. Both paths give the same container contract.

use oz_test_support as support;

use oz_docker_engine::transport::EnvSnapshot;
use oz_docker_engine::Docker;
use oz_protocol::SidecarSpec;
use oz_runs_api::model::RunState;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::images::{fresh_sidecar, remove_sidecar};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

async fn run_once(host: &str, pinned: Option<&str>) {
    let d = Docker::connect(&EnvSnapshot::empty().with_var("DOCKER_HOST", host))
        .await
        .unwrap();
    let (agent, agent_volume) = fresh_sidecar(&d).await;
    let (tools, tools_volume) = fresh_sidecar(&d).await;
    let plane = TestPlane::start(test_config()).await;
    // The daemon's container bind-mounts /tmp at the same path.
    let report = tempfile::tempdir_in("/tmp").unwrap();
    let id = unique_id("imgmount");
    let mut env = vec![("DOCKER_HOST".to_string(), host.to_string())];
    if let Some(v) = pinned {
        env.push(("DOCKER_API_VERSION".into(), v.into()));
    }
    let w = WorkerProcess::start(
        &plane,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            extra_args: vec!["-v".into(), format!("{}:/report", report.path().display())],
            env,
            ..Default::default()
        },
    )
    .await;
    let mut req = demo_run(&id, &[]);
    req.sidecar_image = Some(agent.clone());
    req.additional_sidecars = vec![SidecarSpec {
        image: tools.clone(),
        mount_path: "/tools".into(),
        read_write: true,
    }];
    let run = plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(&plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        done.state,
        RunState::Succeeded,
        "{done:#?}\n{}",
        w.log_text()
    );

    // The same contract either way: the agent ran from /agent, read-only.
    let out = report.path().join(&run.id);
    assert_eq!(
        std::fs::read_to_string(out.join("agent_mount"))
            .unwrap()
            .trim(),
        "readonly"
    );
    let mounts = std::fs::read_to_string(out.join("mounts")).unwrap();
    assert!(mounts.contains(" /agent "), "{mounts}");
    assert!(mounts.contains(" /tools "), "{mounts}");

    let exists = |name: String| {
        let d = d.clone();
        async move { d.volume_inspect(&name).await.is_ok() }
    };
    match pinned {
        None => {
            assert!(
                !exists(agent_volume.clone()).await,
                "a read-only sidecar is an image mount: no volume, no copy"
            );
            assert!(w.log_text().contains("read-only sidecars are image mounts"));
        }
        Some(_) => {
            assert!(
                exists(agent_volume.clone()).await,
                "below API 1.48: a filled volume"
            );
            assert!(w.log_text().contains("copied once into named volumes"));
        }
    }
    assert!(
        exists(tools_volume.clone()).await,
        "a read-write sidecar is always a filled volume"
    );
    remove_sidecar(&d, &agent, &agent_volume).await;
    remove_sidecar(&d, &tools, &tools_volume).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sidecars_are_image_mounts_on_docker_28() {
    let Some(host) = Engine::Docker28.reachable_host() else {
        return;
    };
    run_once(&host, None).await;
}

/// Version gating: the same daemon with the API pinned to 1.47 (before
/// image mounts) never gets a mount type it would not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_api_1_48_sidecars_are_copied_into_volumes() {
    let Some(host) = Engine::Docker28.reachable_host() else {
        return;
    };
    run_once(&host, Some("1.47")).await;
}
