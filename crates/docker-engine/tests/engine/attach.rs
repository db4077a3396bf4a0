//! The two operations that do not end in a plain HTTP answer, against every
//! daemon of the matrix (and dockerd over TLS): `ContainerAttachWebsocket`
//! (a WebSocket on the daemon connection) and `ExecStart` both attached
//! (101, hijacked) and detached (200, no body).

use oz_test_support as support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use oz_docker_engine::error::ErrorKind;
use oz_docker_engine::models::{ContainerCreateBody, ContainerExecBody, ExecStartBody};
use oz_docker_engine::params::{
    ContainerArchiveParams, ContainerAttachWebsocketParams, ContainerCreateParams,
    ContainerDeleteParams,
};
use oz_docker_engine::transport::EngineKind;
use oz_docker_engine::ExecStartOutcome;
use std::time::Duration;
use support::docker::{per_daemon, scan_tar, TestDaemon, Via};
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(30);

per_daemon!(
    websocket_attach,
    websocket_attach_to_a_missing_container,
    exec_detached_and_attached
);

/// dockerd 20.10 over TCP with mutual TLS.
mod docker_tls {
    use super::*;

    #[tokio::test]
    async fn websocket_attach() {
        super::websocket_attach(Via::TlsEnv).await;
    }

    #[tokio::test]
    async fn exec_detached_and_attached() {
        super::exec_detached_and_attached(Via::TlsEnv).await;
    }
}

/// A missing container is a not-found error with the daemon's message (on
/// Podman, which has no such route, the route's absence is explained).
async fn websocket_attach_to_a_missing_container(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let err = d
        .docker
        .container_attach_websocket(
            &d.unique("missing"),
            &ContainerAttachWebsocketParams::default(),
        )
        .await
        .expect_err("no such container");
    if d.docker.engine().kind == EngineKind::Podman {
        assert_eq!(err.kind(), &ErrorKind::Unsupported, "{err}");
        return;
    }
    assert!(err.is_not_found(), "{err}");
    assert!(err.message().contains("No such container"), "{err}");
}

async fn create(d: &TestDaemon, what: &str, cmd: &[&str], open_stdin: bool) -> String {
    let body = ContainerCreateBody {
        image: Some(d.env.busybox.clone()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        open_stdin: Some(open_stdin),
        ..Default::default()
    };
    let params = ContainerCreateParams {
        name: Some(d.unique(what)),
        ..Default::default()
    };
    let created = d
        .docker
        .container_create(&params, &body)
        .await
        .unwrap_or_else(|e| panic!("create via {:?}: {e}", d.via));
    created.id
}

async fn remove(d: &TestDaemon, id: &str) {
    let params = ContainerDeleteParams {
        force: Some(true),
        ..Default::default()
    };
    d.docker
        .container_delete(id, &params)
        .await
        .unwrap_or_else(|e| panic!("remove via {:?}: {e}", d.via));
}

/// `cat` echoes what it gets on stdin: a line sent as a WebSocket message
/// comes back in the messages the daemon sends (raw, not multiplexed).
async fn websocket_attach(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let id = create(&d, "ws", &["cat"], true).await;
    let params = ContainerAttachWebsocketParams {
        stream: Some(true),
        stdin: Some(true),
        stdout: Some(true),
        stderr: Some(true),
        ..Default::default()
    };
    let attached = d.docker.container_attach_websocket(&id, &params).await;
    let mut ws = match attached {
        Ok(ws) => ws,
        Err(e) if d.docker.engine().kind == EngineKind::Podman => {
            // Podman (4 and 5) has no such route; the error must say so rather
            // than pass on a bare "Not Found".
            assert_eq!(e.kind(), &ErrorKind::Unsupported, "{e}");
            assert!(
                e.message().contains("Podman") && e.message().contains("WebSocket attach"),
                "{e}"
            );
            assert!(
                e.hint().is_some_and(|h| h.contains("container_attach")),
                "{e}"
            );
            remove(&d, &id).await;
            return;
        }
        Err(e) => panic!("attach/ws via {via:?}: {e}"),
    };
    d.docker
        .container_start(&id, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("start via {via:?}: {e}"));
    let line = format!("over the websocket via {via:?}\n");
    ws.send(Message::Binary(Bytes::from(line.clone().into_bytes())))
        .await
        .expect("send stdin");
    let mut echoed = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&echoed).contains(&line) {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => echoed.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => echoed.extend_from_slice(t.as_bytes()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("websocket via {via:?}: {e}"),
                None => panic!(
                    "websocket closed before the echo; got {:?}",
                    String::from_utf8_lossy(&echoed)
                ),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the echo within 30s");
    assert_eq!(String::from_utf8_lossy(&echoed), line);
    let _ = ws.close(None).await;
    remove(&d, &id).await;
}

/// A detached exec answers 200 and runs in the background (exit code 0,
/// its file readable through the archive endpoint); an attached one still
/// hands back the hijacked connection with the command's output.
async fn exec_detached_and_attached(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let id = create(&d, "exec", &["sleep", "300"], false).await;
    d.docker
        .container_start(&id, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("start via {via:?}: {e}"));

    // Detached.
    let exec = d
        .docker
        .container_exec(
            &id,
            &ContainerExecBody {
                cmd: Some(vec!["sh".into(), "-c".into(), "echo hi > /tmp/x".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec create via {via:?}: {e}"))
        .id;
    let outcome = d
        .docker
        .exec_start(
            &exec,
            Some(&ExecStartBody {
                detach: Some(true),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("exec start via {via:?}: {e}"));
    assert!(matches!(outcome, ExecStartOutcome::Detached), "{outcome:?}");
    // The file shows up: the command ran.
    let written = async {
        loop {
            let params = ContainerArchiveParams {
                path: "/tmp/x".into(),
            };
            match d.docker.container_archive(&id, &params).await {
                Ok(archive) => {
                    let (_, kept, _) = scan_tar(archive, &["x"]).await;
                    if kept == [("x".to_string(), b"hi\n".to_vec())] {
                        return;
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => panic!("archive via {via:?}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, written)
        .await
        .expect("the detached exec writes /tmp/x within 30s");
    // And it ended with 0. Podman before 4.6 keeps reporting a detached
    // session as running until conmon's cleanup, minutes later
    // (containers/podman#18437), so there only a finished session is checked.
    let stale_exec_state = d.via == Via::Podman;
    let finished = async {
        loop {
            let inspect = d
                .docker
                .exec_inspect(&exec)
                .await
                .unwrap_or_else(|e| panic!("exec inspect via {via:?}: {e}"));
            if inspect.running == Some(false) {
                return Some(inspect.exit_code);
            }
            if stale_exec_state {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let exit_code = tokio::time::timeout(PATIENCE, finished)
        .await
        .expect("the detached exec ends within 30s");
    if let Some(exit_code) = exit_code {
        assert_eq!(exit_code, Some(0));
    }

    // Attached: the output comes over the hijacked connection (multiplexed
    // frames; the payload is all that is checked here).
    let exec = d
        .docker
        .container_exec(
            &id,
            &ContainerExecBody {
                cmd: Some(vec!["cat".into(), "/tmp/x".into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec create via {via:?}: {e}"))
        .id;
    let outcome = d
        .docker
        .exec_start(&exec, Some(&ExecStartBody::default()))
        .await
        .unwrap_or_else(|e| panic!("exec start via {via:?}: {e}"));
    let ExecStartOutcome::Attached(mut io) = outcome else {
        panic!("an attached exec start came back {outcome:?}");
    };
    let mut output = Vec::new();
    tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut io, &mut output),
    )
    .await
    .expect("the attached exec ends within 30s")
    .expect("read the attached exec's output");
    assert!(
        output.ends_with(b"hi\n"),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    remove(&d, &id).await;
}
