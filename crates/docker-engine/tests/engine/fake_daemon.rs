//! Behaviour that real daemons here cannot show on demand, against a scripted
//! daemon on a unix socket: HEAD→GET ping fallback, Podman's `Server` header,
//! version negotiation both ways, the request timeout (and that streaming
//! calls are never cut), in-band stream errors, no secret in errors, the
//! WebSocket handshake checks and an engine without the WebSocket route.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use http_body_util::Full;
use oz_docker_engine::error::ErrorKind;
use oz_docker_engine::request::{ApiRequest, CallKind};
use oz_docker_engine::transport::{ApiVersion, Endpoint, EngineKind, Host, Timeouts};
use oz_docker_engine::{ConnectOptions, Docker};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn answer(status: StatusCode, body: &str) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

type Script = fn(&Method, &str) -> Answer;

struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    /// Every request as `METHOD /path?query`.
    seen: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeDaemon {
    async fn start(script: Script) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fake.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let pq = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                log.lock().unwrap().push(format!("{} {pq}", req.method()));
                                let a = script(req.method(), req.uri().path());
                                tokio::time::sleep(a.delay).await;
                                let mut resp = http::Response::builder().status(a.status);
                                for (k, v) in a.headers {
                                    resp = resp.header(k, v);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    resp.body(Full::new(Bytes::from(a.body))).unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeDaemon {
            _dir: dir,
            socket,
            seen,
            connections,
        }
    }

    async fn connect(
        &self,
        options: ConnectOptions,
    ) -> Result<Docker, oz_docker_engine::DockerError> {
        Docker::connect_endpoint(
            Endpoint::new(Host::Unix(self.socket.clone()), None),
            options,
        )
        .await
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn ping_with(version: &str, server: &str) -> Answer {
    Answer {
        status: StatusCode::OK,
        headers: vec![
            ("Api-Version", version.to_string()),
            ("Server", server.to_string()),
        ],
        body: "OK".into(),
        delay: Duration::ZERO,
    }
}

const VERSION_JSON: &str = r#"{"Version":"9.9.9","ApiVersion":"1.45","Os":"linux","Arch":"arm64"}"#;

#[tokio::test]
async fn head_ping_falls_back_to_get_and_recognises_libpod() {
    let fake = FakeDaemon::start(|m, p| match (m.as_str(), p) {
        ("HEAD", "/_ping") => answer(StatusCode::METHOD_NOT_ALLOWED, ""),
        ("GET", "/_ping") => ping_with("1.45", "Libpod/5.0"),
        (_, "/v1.45/version") => answer(StatusCode::OK, VERSION_JSON),
        _ => answer(StatusCode::NOT_FOUND, r#"{"message":"unexpected"}"#),
    })
    .await;
    let docker = fake.connect(ConnectOptions::default()).await.unwrap();
    assert_eq!(docker.api_version(), ApiVersion::new(1, 45));
    assert_eq!(docker.engine().kind, EngineKind::Podman);
    assert_eq!(docker.engine().version, "9.9.9");
    assert_eq!(docker.platform().to_string(), "linux/arm64");
    assert_eq!(
        fake.seen(),
        vec!["HEAD /_ping", "GET /_ping", "GET /v1.45/version"]
    );
}

#[tokio::test]
async fn newer_daemon_gets_our_latest_version_on_every_request() {
    let fake = FakeDaemon::start(|_, p| match p {
        "/_ping" => ping_with("1.99", "Docker/99"),
        "/v1.51/version" => answer(StatusCode::OK, VERSION_JSON),
        "/v1.51/containers/x/json" => answer(StatusCode::OK, r#"{"Config":{"Tty":true}}"#),
        _ => answer(StatusCode::NOT_FOUND, r#"{"message":"wrong prefix"}"#),
    })
    .await;
    let docker = fake.connect(ConnectOptions::default()).await.unwrap();
    assert_eq!(docker.api_version(), ApiVersion::LATEST);
    assert!(docker.container_tty("x").await.unwrap());
    assert_eq!(docker.engine().kind, EngineKind::Docker);
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let fake = FakeDaemon::start(|_, p| match p {
        "/_ping" => ping_with("1.41", "Docker/20.10"),
        "/v1.41/version" => answer(StatusCode::OK, VERSION_JSON),
        _ => answer(
            StatusCode::NOT_FOUND,
            r#"{"message":"no such container: x"}"#,
        ),
    })
    .await;
    let docker = fake.connect(ConnectOptions::default()).await.unwrap();
    for _ in 0..5 {
        docker.version().await.unwrap();
        // Error answers are read to the end, so the connection stays usable.
        assert!(docker.container_tty("x").await.unwrap_err().is_not_found());
    }
    assert_eq!(
        fake.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{:?}",
        fake.seen()
    );
}

#[tokio::test]
async fn a_pin_overrides_negotiation_on_every_request() {
    let fake = FakeDaemon::start(|_, p| match p {
        "/_ping" => ping_with("1.51", "Docker/28.5"),
        "/v1.43/version" => answer(StatusCode::OK, VERSION_JSON),
        "/v1.43/containers/x/json" => answer(StatusCode::OK, r#"{"Config":{"Tty":false}}"#),
        _ => answer(StatusCode::NOT_FOUND, r#"{"message":"wrong prefix"}"#),
    })
    .await;
    let options = ConnectOptions {
        api_version: Some(ApiVersion::new(1, 43)),
        ..ConnectOptions::default()
    };
    let docker = fake.connect(options).await.unwrap();
    assert_eq!(docker.api_version(), ApiVersion::new(1, 43));
    assert_eq!(docker.engine().api_version, ApiVersion::new(1, 51));
    assert!(!docker.container_tty("x").await.unwrap());
}

#[tokio::test]
async fn old_daemon_is_refused_naming_both_versions() {
    let fake = FakeDaemon::start(|_, _| ping_with("1.40", "Docker/19.03")).await;
    let err = fake.connect(ConnectOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Version);
    let msg = err.to_string();
    assert!(msg.contains("1.40") && msg.contains("1.41"), "{msg}");
    assert!(msg.contains(fake.socket.to_str().unwrap()), "{msg}");
}

fn slow_script(m: &Method, p: &str) -> Answer {
    match (m.as_str(), p) {
        (_, "/_ping") => ping_with("1.41", "Docker/20.10"),
        (_, "/v1.41/version") => answer(StatusCode::OK, VERSION_JSON),
        (_, "/v1.41/slow") => Answer {
            delay: Duration::from_millis(800),
            ..answer(StatusCode::OK, r#"{"StatusCode":0}"#)
        },
        (_, "/v1.41/images/create") => answer(
            StatusCode::OK,
            "{\"status\":\"Pulling\"}\n{\"errorDetail\":{\"message\":\"pull access denied for nope\"},\"error\":\"pull access denied for nope\"}\n",
        ),
        _ => answer(StatusCode::NOT_FOUND, r#"{"message":"no such thing"}"#),
    }
}

fn short_timeouts() -> ConnectOptions {
    ConnectOptions {
        api_version: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_millis(250),
        },
    }
}

#[tokio::test]
async fn ordinary_calls_time_out_streaming_calls_never_do() {
    let fake = FakeDaemon::start(slow_script).await;
    let docker = fake.connect(short_timeouts()).await.unwrap();
    let req = |kind| ApiRequest::new("ContainerWait", Method::POST, "/slow".into(), kind);
    let err = docker
        .send_json::<serde_json::Value>(req(CallKind::Ordinary))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Timeout);
    assert!(err.to_string().contains("ContainerWait timed out"), "{err}");
    let v: serde_json::Value = docker.send_json(req(CallKind::Streaming)).await.unwrap();
    assert_eq!(v["StatusCode"], 0);
}

/// A daemon that never answers an upgrade would otherwise hang an attach
/// forever: the handshake (up to the 101) gets the request timeout even on a
/// streaming call; the upgraded stream itself is never cut.
#[tokio::test]
async fn an_unanswered_upgrade_handshake_times_out() {
    let fake = FakeDaemon::start(slow_script).await;
    let docker = fake.connect(short_timeouts()).await.unwrap();
    let req = ApiRequest::new(
        "ContainerAttach",
        Method::POST,
        "/slow".into(),
        CallKind::Streaming,
    );
    let err = docker.send_upgrade(req).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains("ContainerAttach timed out"),
        "{err}"
    );
}

#[tokio::test]
async fn failed_pull_answering_200_is_an_error() {
    let fake = FakeDaemon::start(slow_script).await;
    let docker = fake.connect(short_timeouts()).await.unwrap();
    let mut req = ApiRequest::new(
        "ImageCreate",
        Method::POST,
        "/images/create".into(),
        CallKind::Streaming,
    );
    req.query.push(("fromImage", "nope".into()));
    let items: Vec<_> = docker
        .send_json_stream::<serde_json::Value>(req)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InBand);
    assert!(
        err.to_string().contains("pull access denied for nope"),
        "{err}"
    );
}

#[tokio::test]
async fn secrets_never_reach_an_error() {
    let fake = FakeDaemon::start(slow_script).await;
    let docker = fake.connect(short_timeouts()).await.unwrap();
    // A header value that cannot be sent.
    let mut req = ApiRequest::new(
        "ImageCreate",
        Method::POST,
        "/images/create".into(),
        CallKind::Ordinary,
    );
    req.headers
        .push(("X-Registry-Auth", "c2VjcmV0\nhunter2".into()));
    let err = docker.send_unit(req).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("c2VjcmV0"),
        "{shown}"
    );
    // A daemon error for a request that carried credentials.
    let mut req = ApiRequest::new(
        "ImagePush",
        Method::POST,
        "/images/x/push".into(),
        CallKind::Ordinary,
    );
    req.headers.push(("X-Registry-Auth", "c2VjcmV0".into()));
    let err = docker.send_unit(req).await.unwrap_err();
    assert!(err.is_not_found());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("c2VjcmV0"), "{shown}");
    assert!(shown.contains("no such thing"), "{shown}");
}

fn websocket_script(_: &Method, p: &str) -> Answer {
    match p {
        "/_ping" => ping_with("1.41", "Libpod/4.3.1"),
        "/v1.41/version" => answer(StatusCode::OK, VERSION_JSON),
        // Switches, but with an accept key that is not derived from ours.
        "/v1.41/containers/forged/attach/ws" => Answer {
            headers: vec![
                ("Connection", "Upgrade".into()),
                ("Upgrade", "websocket".into()),
                (
                    "Sec-WebSocket-Accept",
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                ),
            ],
            ..answer(StatusCode::SWITCHING_PROTOCOLS, "")
        },
        // An engine that does not route attach/ws at all (Podman 4).
        "/v1.41/containers/unrouted/attach/ws" => answer(StatusCode::NOT_FOUND, "Not Found\n"),
        _ => answer(
            StatusCode::NOT_FOUND,
            r#"{"message":"No such container: missing"}"#,
        ),
    }
}

#[tokio::test]
async fn websocket_handshake_is_checked_and_a_missing_route_is_named() {
    use oz_docker_engine::params::ContainerAttachWebsocketParams;
    let fake = FakeDaemon::start(websocket_script).await;
    let docker = fake.connect(ConnectOptions::default()).await.unwrap();
    let params = ContainerAttachWebsocketParams::default();

    let err = docker
        .container_attach_websocket("forged", &params)
        .await
        .expect_err("a wrong Sec-WebSocket-Accept");
    assert_eq!(err.kind(), &ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("Sec-WebSocket-Accept"), "{err}");

    let err = docker
        .container_attach_websocket("unrouted", &params)
        .await
        .expect_err("no such route");
    assert_eq!(err.kind(), &ErrorKind::Unsupported, "{err}");
    assert!(
        err.message()
            .contains("Podman 9.9.9 does not support WebSocket attach"),
        "{err}"
    );

    let err = docker
        .container_attach_websocket("missing", &params)
        .await
        .expect_err("no such container");
    assert!(err.is_not_found(), "{err}");
    assert!(err.message().contains("No such container"), "{err}");

    let seen = fake.seen();
    assert!(
        seen.contains(&"GET /v1.41/containers/forged/attach/ws".to_string()),
        "{seen:?}"
    );
}

/// A container list whose second entry lacks the required `Id` (the spec
/// leaves it optional; every engine sends it, see `xtask/src/quirks.rs`) is
/// a typed decode error naming the field and the type, not an empty id.
#[tokio::test]
async fn a_list_missing_a_required_id_is_a_decode_error_naming_it() {
    let fake = FakeDaemon::start(|_, p| match p {
        "/_ping" => ping_with("1.51", "Docker/28"),
        "/v1.51/version" => answer(StatusCode::OK, VERSION_JSON),
        "/v1.51/containers/json" => answer(
            StatusCode::OK,
            r#"[{"Id":"4fa6e0f0c678","Names":["/a"]},{"Names":["/b"],"State":"running"}]"#,
        ),
        _ => answer(StatusCode::NOT_FOUND, r#"{"message":"not scripted"}"#),
    })
    .await;
    let docker = fake.connect(ConnectOptions::default()).await.unwrap();
    let err = docker
        .container_list(&Default::default())
        .await
        .expect_err("an entry without Id");
    assert_eq!(err.kind(), &ErrorKind::Protocol, "{err}");
    assert_eq!(err.operation(), "ContainerList");
    let decode = err.decode_error().expect("a decode error");
    assert_eq!(decode.missing_field(), Some("Id"), "{err}");
    assert_eq!(decode.type_name(), "Vec<ContainerSummary>");
    let shown = err.to_string();
    assert!(shown.contains("missing field `Id`"), "{shown}");
    assert!(shown.contains("Vec<ContainerSummary>"), "{shown}");
}
