//! Volume specs against real engines: every spec the parser accepts is a
//! `HostConfig.Binds` entry dockerd and Podman create a container with, with
//! the options kept (read-only, propagation); every spec it refuses for a
//! daemon rule, dockerd refuses too (the daemon is the source of those rules).

use oz_test_support as support;

use oz_runtime_docker::volume_spec::{VolumeSource, VolumeSpec};
use support::docker::{TestDaemon, Via};

/// Creates a busybox container with `binds`; the daemon's answer.
async fn create_with(
    d: &TestDaemon,
    binds: &[String],
) -> Result<String, oz_docker_engine::DockerError> {
    let created = d
        .json(
            "ContainerCreate",
            http::Method::POST,
            format!("/containers/create?name={}", d.unique("vol")),
            Some(serde_json::json!({
                "Image": d.env.busybox,
                "Cmd": ["true"],
                "HostConfig": {"Binds": binds},
            })),
        )
        .await?;
    Ok(created["Id"].as_str().expect("Id").to_string())
}

async fn mounts(d: &TestDaemon, id: &str) -> Vec<serde_json::Value> {
    let info = d
        .json(
            "ContainerInspect",
            http::Method::GET,
            format!("/containers/{id}/json"),
            None,
        )
        .await
        .unwrap();
    info["Mounts"].as_array().cloned().unwrap_or_default()
}

async fn remove_volume(d: &TestDaemon, name: &str) {
    let _ = d
        .unit(
            "VolumeDelete",
            http::Method::DELETE,
            format!("/volumes/{name}"),
            &[("force", "true")],
        )
        .await;
}

/// (options, read-only, propagation the daemon reports for a bind mount).
const BIND_CASES: &[(&str, bool, Option<&str>)] = &[
    ("", false, None),
    ("ro", true, None),
    ("rw", false, None),
    ("z", false, None),
    ("Z,ro", true, None),
    ("rshared", false, Some("rshared")),
    ("ro,rslave", true, Some("rslave")),
    ("private", false, Some("private")),
    ("shared,z", false, Some("shared")),
    ("cached,ro", true, None),
];

async fn accepted_specs_create_containers(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let host_dir = tempfile::tempdir().unwrap();
    let host = host_dir.path().to_str().unwrap();
    for (options, read_only, propagation) in BIND_CASES {
        let raw = if options.is_empty() {
            format!("{host}:/data")
        } else {
            format!("{host}:/data:{options}")
        };
        let spec = VolumeSpec::parse(&raw).unwrap();
        assert_eq!(spec.read_only(), *read_only, "{raw}");
        let id = create_with(&d, &[spec.bind()])
            .await
            .unwrap_or_else(|e| panic!("{via:?} refused {:?}: {e}", spec.bind()));
        let mounts = mounts(&d, &id).await;
        let m = mounts
            .iter()
            .find(|m| m["Destination"] == "/data")
            .unwrap_or_else(|| panic!("{via:?}: no mount at /data for {raw}: {mounts:?}"));
        assert_eq!(m["RW"], serde_json::json!(!read_only), "{via:?} {raw}: {m}");
        if let Some(p) = propagation {
            assert_eq!(m["Propagation"], *p, "{via:?} {raw}: {m}");
        }
        d.remove(&id).await;
    }

    let volume = d.unique("named");
    for options in ["", "nocopy", "ro,nocopy", "z"] {
        let raw = if options.is_empty() {
            format!("{volume}:/cache")
        } else {
            format!("{volume}:/cache:{options}")
        };
        let spec = VolumeSpec::parse(&raw).unwrap();
        assert_eq!(spec.source, VolumeSource::Volume(volume.clone()));
        let id = create_with(&d, &[spec.bind()])
            .await
            .unwrap_or_else(|e| panic!("{via:?} refused {:?}: {e}", spec.bind()));
        let mounts = mounts(&d, &id).await;
        let m = mounts
            .iter()
            .find(|m| m["Destination"] == "/cache")
            .unwrap_or_else(|| panic!("{via:?}: no mount at /cache for {raw}: {mounts:?}"));
        assert_eq!(m["RW"], serde_json::json!(!spec.read_only()), "{raw}: {m}");
        d.remove(&id).await;
    }
    remove_volume(&d, &volume).await;
}

#[tokio::test]
async fn dockerd_creates_containers_with_every_accepted_spec() {
    accepted_specs_create_containers(Via::Unix).await;
}

#[tokio::test]
async fn podman_creates_containers_with_every_accepted_spec() {
    accepted_specs_create_containers(Via::Podman).await;
}

/// What we refuse for a daemon rule, dockerd refuses as well.
#[tokio::test]
async fn dockerd_refuses_what_we_refuse_for_its_rules() {
    let Some(d) = TestDaemon::connect(Via::Unix).await else {
        return;
    };
    let host_dir = tempfile::tempdir().unwrap();
    let host = host_dir.path().to_str().unwrap();
    let volume = d.unique("refused");
    let cases = [
        format!("{host}:/data:ro,rw"),
        format!("{host}:/data:z,Z"),
        format!("{host}:/data:shared,slave"),
        format!("{host}:/data:rx"),
        format!("{host}:/data:ro,"),
        format!("{host}:/data:nocopy"),
        format!("{host}:/"),
        format!("{host}:relative"),
        format!("{volume}:/data:rshared"),
        "a:/data".to_string(),
    ];
    for raw in cases {
        assert!(VolumeSpec::parse(&raw).is_err(), "we accept {raw}");
        if let Ok(id) = create_with(&d, std::slice::from_ref(&raw)).await {
            d.remove(&id).await;
            remove_volume(&d, &volume).await;
            panic!("dockerd accepted {raw:?}, which we refuse for a daemon rule");
        }
    }
}
