//! `oz-agent-worker probe URL` (the image's HEALTHCHECK) through the built
//! binary, against a real HTTP server on loopback: 2xx passes, anything
//! else fails with a one-line reason, and so do a closed port and a server
//! that never answers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

/// `/healthz` 200, `/readyz` 503 with a two-line body, `/hang` never answers.
async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/healthz" => (200, "ok\n"),
                        "/readyz" => (503, "not ready:\nnot connected to the orchestrator\n"),
                        "/hang" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            (200, "")
                        }
                        _ => (404, ""),
                    };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn probe(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("probe")
        .args(args)
        // As in the image: the worker's own variables are set; they must
        // not turn `probe` into a worker invocation.
        .env("WARP_API_KEY", "not-used-by-probe")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run oz-agent-worker probe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn a_2xx_answer_passes() {
    let addr = server().await;
    let url = format!("http://{addr}/healthz");
    let out = probe(&[&url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{url} 200 OK\n")
    );
}

#[tokio::test]
async fn a_non_2xx_answer_fails_with_status_and_body_on_one_line() {
    let addr = server().await;
    let url = format!("http://{addr}/readyz");
    let out = probe(&[&url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("{url}: 503 Service Unavailable: not ready: not connected to the orchestrator\n")
    );
}

#[tokio::test]
async fn a_closed_port_fails_saying_so() {
    // Bound, then dropped: nothing listens there any more.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/healthz");
    let out = probe(&[&url]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn no_answer_within_the_timeout_fails() {
    let addr = server().await;
    let url = format!("http://{addr}/hang");
    let started = std::time::Instant::now();
    let out = probe(&[&url, "--timeout", "500ms"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("{url}: no answer within 500ms\n"));
    assert!(started.elapsed() < Duration::from_secs(30));
}
