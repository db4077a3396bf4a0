//! `oom::oom_event_logged` against the Docker engines: a container the
//! kernel's OOM killer ended is found by its `oom` event; one killed with
//! SIGKILL under the same memory limit is not. This is the fallback for
//! dockerd's `State.OOMKilled` left false when the OOM event crosses the
//! exit.

use oz_runtime_docker::oom::oom_event_logged;
use oz_test_support::docker::{TestDaemon, Via};

async fn create_limited(d: &TestDaemon, script: &str) -> String {
    let limit = 32 * 1024 * 1024;
    let created = d
        .json(
            "ContainerCreate",
            http::Method::POST,
            format!("/containers/create?name={}", d.unique("oom")),
            Some(serde_json::json!({
                "Image": d.env.busybox,
                "Cmd": ["sh", "-c", script],
                "HostConfig": {"Memory": limit, "MemorySwap": limit},
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("{:?}: create: {e}", d.via));
    created["Id"].as_str().expect("Id").to_string()
}

async fn oom_and_kill_are_told_apart(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let oom = create_limited(&d, "x=a; while true; do x=\"$x$x\"; done").await;
    d.start(&oom).await;
    assert_eq!(d.wait(&oom).await, 137, "{via:?}: the OOM container's exit");
    assert!(
        oom_event_logged(&d.docker, &oom).await,
        "{via:?}: no oom event for a container the OOM killer ended"
    );

    let killed = create_limited(&d, "sleep 600").await;
    d.start(&killed).await;
    d.unit(
        "ContainerKill",
        http::Method::POST,
        format!("/containers/{killed}/kill"),
        &[("signal", "KILL")],
    )
    .await
    .unwrap_or_else(|e| panic!("{via:?}: kill: {e}"));
    assert_eq!(
        d.wait(&killed).await,
        137,
        "{via:?}: the killed container's exit"
    );
    assert!(
        !oom_event_logged(&d.docker, &killed).await,
        "{via:?}: an oom event for a container killed with SIGKILL"
    );
    d.remove(&oom).await;
    d.remove(&killed).await;
}

#[tokio::test]
async fn dockerd_oom_kills_are_found_by_their_event() {
    oom_and_kill_are_told_apart(Via::Unix).await;
}

#[tokio::test]
async fn docker28_oom_kills_are_found_by_their_event() {
    oom_and_kill_are_told_apart(Via::Docker28).await;
}
