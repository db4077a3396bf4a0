//! The client against real daemons: one scenario (ping, version, image
//! import, container lifecycle with archives and export, TTY logs, attach,
//! volumes) against every daemon of the matrix over its unix socket
//! (`ENGINE::scenario`: dockerd 20.10, Podman 4, Docker 26, Docker 28,
//! Podman 5), and against dockerd 20.10 over every other way of reaching
//! one: TLS TCP from the environment, a context made by the real `docker
//! context create` selected by DOCKER_CONTEXT and by currentContext,
//! DOCKER_API_VERSION pinned to 1.41, and ssh:// to the test sshd, whose
//! `docker system dial-stdio` reaches dockerd.

use oz_test_support as support;

use futures_util::StreamExt;
use http::Method;
use oz_docker_engine::request::{ApiRequest, CallKind, RequestBody};
use oz_docker_engine::stream::{LogChunk, LogSource};
use oz_docker_engine::transport::{ApiVersion, EndpointSource, EngineKind};
use support::docker::{chunked, per_daemon, scan_tar, tar_of, TestDaemon, Via};

per_daemon!(scenario);

/// dockerd 20.10 reached every other way.
mod docker_transports {
    use super::*;

    #[tokio::test]
    async fn tls_tcp_from_env() {
        scenario(Via::TlsEnv).await;
    }

    #[tokio::test]
    async fn context_selected_by_docker_context() {
        scenario(Via::ContextEnv).await;
    }

    #[tokio::test]
    async fn context_selected_by_current_context() {
        scenario(Via::ContextConfig).await;
    }

    #[tokio::test]
    async fn api_version_pinned_to_1_41() {
        scenario(Via::Pinned141).await;
    }

    #[tokio::test]
    async fn ssh_from_env() {
        scenario(Via::Ssh).await;
    }

    /// A context whose host is ssh://, written by the real CLI.
    #[tokio::test]
    async fn ssh_context() {
        let Some(d) = TestDaemon::connect(Via::SshContext).await else {
            return;
        };
        check_identity(&d);
        ping_and_version(&d).await;
    }
}

async fn scenario(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    check_identity(&d);
    ping_and_version(&d).await;
    image_import_and_inspect(&d).await;
    container_lifecycle(&d).await;
    tty_container_logs_are_raw(&d).await;
    attach_writes_stdin(&d).await;
    volume_lifecycle(&d).await;
    required_fields_decode(&d).await;
}

fn check_identity(d: &TestDaemon) {
    let ep = d.docker.endpoint();
    match d.via {
        Via::Unix
        | Via::Pinned141
        | Via::Podman
        | Via::TlsEnv
        | Via::Ssh
        | Via::Docker26
        | Via::Docker28
        | Via::Podman5 => {
            assert_eq!(ep.source, EndpointSource::Env)
        }
        Via::SshContext => {
            assert!(
                matches!(&ep.source, EndpointSource::Context { name, .. } if name == "oz-ssh"),
                "{:?}",
                ep.source
            );
        }
        Via::ContextEnv | Via::ContextConfig => {
            assert!(
                matches!(&ep.source, EndpointSource::Context { name, .. } if name == "oz-remote"),
                "{:?}",
                ep.source
            );
        }
    }
    let tls = matches!(d.via, Via::TlsEnv | Via::ContextEnv | Via::ContextConfig);
    assert_eq!(ep.tls.is_some(), tls, "TLS for {:?}", d.via);
    if let Some(t) = &ep.tls {
        assert!(t.verify);
        assert!(
            t.ca.is_some() && t.cert.is_some() && t.key.is_some(),
            "{t:?}"
        );
    }
    let engine = d.docker.engine();
    let expected_kind = if d.via.is_podman() {
        EngineKind::Podman
    } else {
        EngineKind::Docker
    };
    assert_eq!(engine.kind, expected_kind);
    if d.via.is_podman() {
        assert!(engine.libpod_api_version.is_some());
    }
    // Each daemon of the matrix is the version it stands for.
    let major = |v: &str| -> u32 { v.split('.').next().unwrap().parse().unwrap() };
    match d.via {
        Via::Docker26 => {
            assert_eq!(major(&engine.version), 26, "{engine:?}");
            assert_eq!(engine.api_version, ApiVersion::new(1, 45), "{engine:?}");
        }
        // Debian unstable moves on: Docker 28 or newer, API 1.51 or newer.
        Via::Docker28 => {
            assert!(major(&engine.version) >= 28, "{engine:?}");
            assert!(engine.api_version >= ApiVersion::new(1, 51), "{engine:?}");
        }
        Via::Podman5 => {
            let libpod = engine.libpod_api_version.as_deref().unwrap();
            assert!(major(libpod) >= 5, "{engine:?}");
        }
        Via::Podman => {
            let libpod = engine.libpod_api_version.as_deref().unwrap();
            assert_eq!(major(libpod), 4, "{engine:?}");
        }
        _ => assert_eq!(major(&engine.version), 20, "{engine:?}"),
    }
    // Negotiated: the lower of the daemon's and ours, unless pinned.
    if d.via == Via::Pinned141 {
        assert_eq!(d.docker.api_version(), ApiVersion::new(1, 41));
    } else {
        assert_eq!(
            d.docker.api_version(),
            engine.api_version.min(ApiVersion::LATEST),
            "{engine:?}"
        );
    }
    assert!(d.docker.api_version() >= ApiVersion::MINIMUM);
    assert!(d.docker.api_version() <= ApiVersion::LATEST);
    assert_eq!(d.docker.platform().os, "linux");
    if matches!(d.via, Via::Ssh | Via::SshContext) {
        assert_eq!(ep.host.to_string(), d.env.ssh_host);
    }
}

async fn ping_and_version(d: &TestDaemon) {
    d.docker.ping().await.expect("ping");
    let v = d.docker.version().await.expect("version");
    assert!(!v.version.is_empty());
    assert_eq!(v.os, "linux");
    assert_eq!(v.arch, d.docker.platform().arch);
}

async fn image_import_and_inspect(d: &TestDaemon) {
    let repo = d.unique("import");
    let tar = tar_of(&[("hello.txt", b"imported\n")]);
    let mut req = ApiRequest::new(
        "ImageCreate",
        Method::POST,
        "/images/create".into(),
        CallKind::Streaming,
    );
    // The tag goes into `repo`: Docker accepts both forms, Podman 4 ignores
    // the separate `tag` parameter.
    req.query = vec![("fromSrc", "-".into()), ("repo", format!("{repo}:t1"))];
    req.body = RequestBody::Stream {
        content_type: "application/x-tar",
        stream: chunked(tar),
    };
    let mut progress = d
        .docker
        .send_json_stream::<serde_json::Value>(req)
        .await
        .expect("import");
    let mut lines = 0;
    while let Some(item) = progress.next().await {
        item.unwrap_or_else(|e| panic!("import progress via {:?}: {e}", d.via));
        lines += 1;
    }
    assert!(lines > 0, "import reported no progress");
    let name = format!("{repo}:t1");
    let seg = oz_docker_engine::request::encode_path_segment(&name);
    let inspect = d
        .json(
            "ImageInspect",
            Method::GET,
            format!("/images/{seg}/json"),
            None,
        )
        .await
        .expect("inspect imported image");
    assert!(inspect["Id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(inspect["Os"], "linux");
    let mut del = ApiRequest::new(
        "ImageDelete",
        Method::DELETE,
        format!("/images/{seg}"),
        CallKind::Ordinary,
    );
    del.query.push(("force", "true".into()));
    d.docker
        .send_json::<serde_json::Value>(del)
        .await
        .expect("delete image");
    // A second inspect is a 404 with the daemon's message.
    let err = d
        .json(
            "ImageInspect",
            Method::GET,
            format!("/images/{seg}/json"),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.operation(), "ImageInspect");
    assert!(err.to_string().contains("404"), "{err}");
}

fn split(chunks: &[LogChunk]) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    for c in chunks {
        match c.source {
            LogSource::Stdout => out.push_str(&String::from_utf8_lossy(&c.data)),
            LogSource::Stderr => err.push_str(&String::from_utf8_lossy(&c.data)),
            other => panic!("unexpected {other:?} chunk"),
        }
    }
    (out, err)
}

async fn container_lifecycle(d: &TestDaemon) {
    let id = d
        .create_container(
            &["sh", "-c", "cat /hello.txt; echo to-stderr >&2; exit 3"],
            false,
        )
        .await;

    // Archive put (streamed tar) before start.
    let mut put = ApiRequest::new(
        "PutContainerArchive",
        Method::PUT,
        format!("/containers/{id}/archive"),
        CallKind::Streaming,
    );
    put.query.push(("path", "/".into()));
    put.body = RequestBody::Stream {
        content_type: "application/x-tar",
        stream: chunked(tar_of(&[("hello.txt", b"from-archive\n")])),
    };
    d.docker.send_unit(put).await.expect("archive put");

    d.start(&id).await;
    assert_eq!(d.wait(&id).await, 3);

    let logs = d.logs(&id).await;
    let (out, err) = split(&logs);
    assert_eq!(out, "from-archive\n");
    assert_eq!(err, "to-stderr\n");

    // Archive get: a streamed tar holding the file.
    let mut get = ApiRequest::new(
        "ContainerArchive",
        Method::GET,
        format!("/containers/{id}/archive"),
        CallKind::Streaming,
    );
    get.query.push(("path", "/hello.txt".into()));
    let body = d.docker.send_byte_stream(get).await.expect("archive get");
    let (names, kept, _) = scan_tar(body, &["hello.txt"]).await;
    assert_eq!(names, vec!["hello.txt".to_string()]);
    assert_eq!(kept[0].1, b"from-archive\n");

    // Export: the whole filesystem, streamed.
    let export = ApiRequest::new(
        "ContainerExport",
        Method::GET,
        format!("/containers/{id}/export"),
        CallKind::Streaming,
    );
    let body = d.docker.send_byte_stream(export).await.expect("export");
    let (names, _, total) = scan_tar(body, &[]).await;
    assert!(names.iter().any(|n| n == "hello.txt"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(total > 100_000, "export of {total} bytes");

    d.remove(&id).await;
    let err = d
        .json(
            "ContainerInspect",
            Method::GET,
            format!("/containers/{id}/json"),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

async fn tty_container_logs_are_raw(d: &TestDaemon) {
    let id = d.create_container(&["sh", "-c", "echo on-tty"], true).await;
    d.start(&id).await;
    assert_eq!(d.wait(&id).await, 0);
    let logs = d.logs(&id).await;
    assert!(logs.iter().all(|c| c.source == LogSource::Console));
    let text: Vec<u8> = logs.iter().flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(String::from_utf8_lossy(&text).trim_end(), "on-tty");
    d.remove(&id).await;
}

async fn attach_writes_stdin(d: &TestDaemon) {
    use tokio::io::AsyncWriteExt;
    let created = d
        .json(
            "ContainerCreate",
            Method::POST,
            "/containers/create".into(),
            Some(serde_json::json!({
                "Image": d.env.busybox,
                "Cmd": ["sh", "-c", "read line; echo got:$line; echo bye >&2"],
                "OpenStdin": true,
                "StdinOnce": true,
                "AttachStdin": true,
                "AttachStdout": true,
                "AttachStderr": true,
            })),
        )
        .await
        .expect("create");
    let id = created["Id"].as_str().unwrap().to_string();
    let mut attached = d.docker.attach(&id, true).await.expect("attach");
    d.start(&id).await;
    attached.input.write_all(b"hello\n").await.unwrap();
    attached.input.flush().await.unwrap();
    let mut chunks = Vec::new();
    let read_all = async {
        while let Some(c) = attached.output.next().await {
            chunks.push(c.expect("attach output"));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
        .await
        .expect("attach output ended");
    let (out, err) = split(&chunks);
    assert_eq!(out, "got:hello\n");
    assert_eq!(err, "bye\n");
    assert_eq!(d.wait(&id).await, 0);
    d.remove(&id).await;
}

async fn volume_lifecycle(d: &TestDaemon) {
    let name = d.unique("vol");
    let created = d
        .json(
            "VolumeCreate",
            Method::POST,
            "/volumes/create".into(),
            Some(serde_json::json!({ "Name": name, "Labels": { "oz-test": "1" } })),
        )
        .await
        .expect("volume create");
    assert_eq!(created["Name"], name.as_str());
    let inspected = d
        .json(
            "VolumeInspect",
            Method::GET,
            format!("/volumes/{name}"),
            None,
        )
        .await
        .expect("volume inspect");
    assert_eq!(inspected["Labels"]["oz-test"], "1");
    d.unit(
        "VolumeDelete",
        Method::DELETE,
        format!("/volumes/{name}"),
        &[],
    )
    .await
    .expect("volume delete");
    let err = d
        .json(
            "VolumeInspect",
            Method::GET,
            format!("/volumes/{name}"),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

/// The answers whose generated types have required fields (the spec's
/// `required`, adjusted by `xtask/src/quirks.rs` for what engines omit),
/// read through the generated bindings: a required field an engine leaves
/// out or sends as null fails to decode, naming it.
async fn required_fields_decode(d: &TestDaemon) {
    use oz_docker_engine::models::*;
    use oz_docker_engine::params::*;
    let via = d.via;
    let name = d.unique("required");
    let body: ContainerCreateBody = serde_json::from_value(serde_json::json!({
        "Image": d.env.busybox,
        "Cmd": ["sleep", "30"],
        "Labels": { "oz-test": name },
        "ExposedPorts": { "80/tcp": {} },
        "HostConfig": { "PortBindings": { "80/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] } },
    }))
    .unwrap();
    let create = ContainerCreateParams {
        name: Some(name.clone()),
        ..Default::default()
    };
    let created = (d.docker.container_create(&create, &body).await)
        .unwrap_or_else(|e| panic!("ContainerCreateResponse via {via:?}: {e}"));
    let id = created.id;
    assert!(!id.is_empty());

    // A file added before the start shows in the container's changes.
    let mut put = ApiRequest::new(
        "PutContainerArchive",
        Method::PUT,
        format!("/containers/{id}/archive"),
        CallKind::Streaming,
    );
    put.query.push(("path", "/".into()));
    put.body = RequestBody::Stream {
        content_type: "application/x-tar",
        stream: chunked(tar_of(&[("added.txt", b"x\n")])),
    };
    d.docker.send_unit(put).await.expect("archive put");
    d.start(&id).await;

    let filters = serde_json::json!({ "label": [format!("oz-test={name}")] }).to_string();
    let list = ContainerListParams {
        all: Some(true),
        filters: Some(filters),
        ..Default::default()
    };
    let listed = (d.docker.container_list(&list).await)
        .unwrap_or_else(|e| panic!("Vec<ContainerSummary> via {via:?}: {e}"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    let ports = listed[0]
        .ports
        .as_ref()
        .expect("Ports of a container publishing one");
    assert!(
        ports
            .iter()
            .any(|p| p.private_port == 80 && p.r#type == PortType::Tcp),
        "{ports:?}"
    );

    let inspected = (d.docker.container_inspect(&id, &Default::default()).await)
        .unwrap_or_else(|e| panic!("ContainerInspectResponse via {via:?}: {e}"));
    assert_eq!(inspected.id, id);
    assert_eq!(inspected.name.trim_start_matches('/'), name);

    let changes = (d.docker.container_changes(&id).await)
        .unwrap_or_else(|e| panic!("Vec<FilesystemChange> via {via:?}: {e}"));
    assert!(
        changes
            .iter()
            .any(|c| c.path == "/added.txt" && c.kind == 1),
        "{changes:?}"
    );

    let exec = ContainerExecBody {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let exec = (d.docker.container_exec(&id, &exec).await)
        .unwrap_or_else(|e| panic!("IDResponse via {via:?}: {e}"));
    assert!(!exec.id.is_empty());

    d.docker
        .container_kill(&id, &Default::default())
        .await
        .expect("kill");
    let waited = (d.docker.container_wait(&id, &Default::default()).await)
        .unwrap_or_else(|e| panic!("ContainerWaitResponse via {via:?}: {e}"));
    assert_eq!(waited.status_code, 137);
    d.remove(&id).await;

    let images = (d.docker.image_list(&Default::default()).await)
        .unwrap_or_else(|e| panic!("Vec<ImageSummary> via {via:?}: {e}"));
    assert!(!images.is_empty());
    assert!(images.iter().all(|i| !i.id.is_empty()), "{images:?}");
    let history = (d
        .docker
        .image_history(&d.env.busybox, &Default::default())
        .await)
        .unwrap_or_else(|e| panic!("Vec<ImageHistoryResponseItem> via {via:?}: {e}"));
    assert!(history.iter().any(|h| h.size > 0), "{history:?}");
    let image = (d
        .docker
        .image_inspect(&d.env.busybox, &Default::default())
        .await)
        .unwrap_or_else(|e| panic!("ImageInspect via {via:?}: {e}"));
    assert_eq!(
        (image.os.as_str(), image.architecture.as_str()),
        ("linux", d.docker.platform().arch.as_str())
    );

    // A volume without labels or options: several engines send both as null.
    let volume = (d
        .docker
        .volume_create(&VolumeCreateOptions {
            name: Some(name.clone()),
            ..Default::default()
        })
        .await)
        .unwrap_or_else(|e| panic!("Volume via {via:?}: {e}"));
    assert_eq!(volume.name, name);
    assert_eq!(volume.scope, VolumeScope::Local);
    let volumes = (d.docker.volume_list(&Default::default()).await)
        .unwrap_or_else(|e| panic!("VolumeListResponse via {via:?}: {e}"));
    assert!(
        volumes.volumes.iter().flatten().any(|v| v.name == name),
        "{volumes:?}"
    );
    // dockerd runs one disk-usage count at a time and refuses a second
    // ("a disk usage operation is already running"); the other transports'
    // scenarios count on the same daemon, so a refusal is retried.
    let mut attempts = 0;
    let usage = loop {
        match d.docker.system_data_usage(&Default::default()).await {
            Err(e) if e.message().contains("already running") && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            answer => {
                break answer.unwrap_or_else(|e| panic!("SystemDataUsageResponse via {via:?}: {e}"))
            }
        }
    };
    assert!(usage.volumes.iter().flatten().any(|v| v.name == name));
    d.docker
        .volume_delete(&name, &Default::default())
        .await
        .expect("volume delete");

    let network = (d
        .docker
        .network_create(&NetworkCreateBody {
            name: name.clone(),
            ..Default::default()
        })
        .await)
        .unwrap_or_else(|e| panic!("NetworkCreateResponse via {via:?}: {e}"));
    assert!(!network.id.is_empty());
    d.docker
        .network_delete(&network.id)
        .await
        .expect("network delete");

    let version = (d.docker.system_version().await)
        .unwrap_or_else(|e| panic!("SystemVersion via {via:?}: {e}"));
    let components = version.components.expect("Components");
    assert!(
        components.iter().all(|c| !c.version.is_empty()),
        "{components:?}"
    );
}
