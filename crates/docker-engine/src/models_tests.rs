//! Decoding and encoding checks for the generated models: what real daemons
//! send (Podman included) must decode, and what we send must stay minimal.

use crate::models::*;
use crate::params::*;
use serde_json::json;

fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("decodes")
}

#[test]
fn container_inspect_with_podman_state_and_nulls_decodes() {
    let inspect: ContainerInspectResponse = decode(json!({
        "Id": "4fa6e0f0c678",
        "Name": "/task",
        "Created": "2025-01-01T10:00:00.000000000Z",
        "Path": "/bin/sh",
        "Args": null,
        "State": {
            "Status": "stopping",
            "Running": true,
            "Pid": 1234,
            "ExitCode": 0,
            "Error": "",
            "Health": { "Status": "", "FailingStreak": 0, "Log": null }
        },
        "Image": "sha256:abc",
        "Mounts": null,
        "SizeRw": null,
        "Config": { "Image": "alpine", "Env": null, "Labels": null, "ExposedPorts": { "80/tcp": {} } },
        "HostConfig": { "Binds": null, "RestartPolicy": { "Name": "", "MaximumRetryCount": 0 } },
        "NetworkSettings": { "Ports": { "80/tcp": null, "443/tcp": [{ "HostIp": "0.0.0.0", "HostPort": "8443" }] } },
        "PodmanOnlyField": { "anything": [1, 2] }
    }));
    let state = inspect.state.expect("state");
    assert_eq!(state.status, Some(ContainerStateStatus::Stopping));
    assert_eq!(state.health.unwrap().status, Some(HealthStatus::Empty));
    assert_eq!(inspect.mounts, None);
    assert_eq!(inspect.args, None);
    assert_eq!(inspect.config.unwrap().env, None);
    let restart = inspect.host_config.unwrap().restart_policy.unwrap();
    assert_eq!(restart.name, Some(RestartPolicyName::Empty));
    let ports = inspect.network_settings.unwrap().ports.unwrap();
    assert_eq!(ports["80/tcp"], None);
    assert_eq!(
        ports["443/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
        Some("8443")
    );
}

#[test]
fn container_inspect_with_an_unheard_of_state_decodes() {
    let inspect: ContainerInspectResponse =
        decode(json!({ "Id": "x", "Name": "x", "State": { "Status": "configured-ish" } }));
    assert_eq!(
        inspect.state.unwrap().status,
        Some(ContainerStateStatus::Other("configured-ish".into()))
    );
    let podman: ContainerState = decode(json!({ "Status": "configured" }));
    assert_eq!(podman.status, Some(ContainerStateStatus::Configured));
}

#[test]
fn container_create_body_sends_only_what_is_set() {
    let body = ContainerCreateBody {
        image: Some("alpine:3".into()),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({ "Image": "alpine:3" })
    );
}

#[test]
fn image_inspect_decodes() {
    let image: ImageInspect = decode(json!({
        "Id": "sha256:ec3f0931a6e6b6855d76b2d7b0be30e81860baccd891b2e243280bf1cd8ad710",
        "RepoTags": ["example:1.0", "example:latest"],
        "RepoDigests": null,
        "Created": "2022-02-04T21:20:12.497794809Z",
        "Author": "",
        "Config": {
            "User": "web:web",
            "ExposedPorts": { "80/tcp": {} },
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Volumes": null,
            "Labels": { "com.example.version": "v1" }
        },
        "Architecture": "arm",
        "Variant": "v7",
        "Os": "linux",
        "Size": 1239828,
        "GraphDriver": { "Name": "overlay2", "Data": null },
        "RootFS": { "Type": "layers", "Layers": ["sha256:1834950e52ce4d5a88a1bbd131c537f4d0e56d10ff0dd69e66be3b7dfa9df7e6"] },
        "Metadata": { "LastTagTime": null },
        "VirtualSize": 1239828
    }));
    assert_eq!(image.size, Some(1_239_828));
    assert_eq!(image.repo_digests, None);
    assert_eq!(image.config.unwrap().cmd, Some(vec!["/bin/sh".to_owned()]));
    assert_eq!(image.root_fs.unwrap().r#type, "layers");
}

#[test]
fn open_enums_round_trip_unknown_and_empty_values() {
    for wire in ["unless-stopped", "", "restart-when-bored"] {
        let name: RestartPolicyName = decode(json!(wire));
        assert_eq!(name.as_str(), wire);
        assert_eq!(serde_json::to_value(&name).unwrap(), json!(wire));
    }
    assert_eq!(
        RestartPolicyName::from("unless-stopped"),
        RestartPolicyName::UnlessStopped
    );
    assert_eq!(
        ContainerWaitCondition::from("next-exit").to_string(),
        "next-exit"
    );
}

#[test]
fn params_debug_never_prints_registry_credentials() {
    let params = ImageCreateParams {
        from_image: Some("alpine".into()),
        x_registry_auth: Some("c2VjcmV0".into()),
        ..Default::default()
    };
    let printed = format!("{params:?}");
    assert!(printed.contains("alpine"), "{printed}");
    assert!(!printed.contains("c2VjcmV0"), "{printed}");
}

#[test]
fn a_container_list_missing_a_required_id_is_an_error_naming_it() {
    let text =
        r#"[{"Id": "4fa6e0f0c678", "Names": ["/a"]}, {"Names": ["/b"], "State": "running"}]"#;
    let err = serde_json::from_str::<Vec<ContainerSummary>>(text).unwrap_err();
    let decode = crate::error::DecodeError::new::<Vec<ContainerSummary>>(&err);
    assert_eq!(decode.missing_field(), Some("Id"));
    assert_eq!(decode.type_name(), "Vec<ContainerSummary>");
    let err = crate::DockerError::decode("ContainerList", "the answer did not decode", decode);
    assert_eq!(err.kind(), &crate::error::ErrorKind::Protocol);
    let shown = err.to_string();
    assert!(shown.contains("missing field `Id`"), "{shown}");
    assert!(shown.contains("Vec<ContainerSummary>"), "{shown}");
    let source = std::error::Error::source(&err).expect("the decode error as source");
    assert!(source.to_string().contains("`Id`"), "{source}");
}

#[test]
fn required_fields_are_plain_and_always_sent() {
    let created: ContainerCreateResponse = decode(json!({ "Id": "abc", "Warnings": [] }));
    assert_eq!((created.id.as_str(), created.warnings.len()), ("abc", 0));
    let err =
        serde_json::from_value::<ContainerWaitResponse>(json!({ "Error": null })).unwrap_err();
    assert!(
        err.to_string().contains("missing field `StatusCode`"),
        "{err}"
    );
    // A required request field is sent even when empty.
    let body = NetworkCreateBody {
        name: String::new(),
        ..Default::default()
    };
    assert_eq!(serde_json::to_value(&body).unwrap(), json!({ "Name": "" }));
}

#[test]
fn required_fields_engines_send_as_null_stay_optional() {
    // dockerd 20.10/26/28 for a volume created without labels or options
    // (`quirks::NOT_REQUIRED`).
    let volume: Volume = decode(json!({
        "CreatedAt": "2026-12-05T14:10:09Z", "Driver": "local", "Labels": null,
        "Mountpoint": "/var/lib/docker/volumes/v/_data", "Name": "v", "Options": null, "Scope": "local"
    }));
    assert_eq!((volume.labels, volume.options), (None, None));
    // Podman 5 on the vfs storage driver.
    let driver: DriverData = decode(json!({ "Data": null, "Name": "vfs" }));
    assert_eq!(driver.name, "vfs");
    // The rest of a volume's required fields are still required.
    let err = serde_json::from_value::<Volume>(
        json!({ "Name": "v", "Driver": "local", "Scope": "local" }),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("missing field `Mountpoint`"),
        "{err}"
    );
}
