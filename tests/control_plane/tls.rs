//! TLS on the control plane's listener (`serve --tls-cert --tls-key`): the
//! real worker binary over `wss://` and the CLI over `https://`, each
//! trusting the test CA through `SSL_CERT_FILE`, and clear certificate
//! errors for a client that does not. Certificates are generated at test
//! time (rcgen).

use oz_test_support as support;

use oz_control_plane::{Config, ControlPlane, TlsFiles, DEFAULT_HEADER_READ_TIMEOUT};
use oz_test_support::cli::output_text as text;
use std::path::Path;
use std::time::Duration;
use support::control_plane::{create_key_with_cli, ServeProcess, TestCa};
use support::worker::{unique_id, Engine, WorkerOptions, WorkerProcess, BUSYBOX, SIDECAR};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The CLI against `url`, trusting exactly the CAs in `ca_file`.
fn cli(url: &str, key: &str, ca_file: &Path, empty_dir: &Path) -> Command {
    let mut c = support::cli::client(url, key);
    c.env("SSL_CERT_FILE", ca_file)
        .env("SSL_CERT_DIR", empty_dir);
    c
}

async fn serve_tls(data: &Path, ca: &TestCa) -> ServeProcess {
    let args = ca.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = ServeProcess::start(data, &args).await;
    assert!(serve.url.starts_with("https://"), "{}", serve.url);
    serve
}

#[tokio::test]
async fn the_cli_talks_https_to_a_tls_control_plane_trusting_ssl_cert_file() {
    let ca = TestCa::generate();
    let stranger = TestCa::generate();
    let data = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(data.path(), "alpha").await;
    let serve = serve_tls(data.path(), &ca).await;

    let out = cli(&serve.url, &key, &ca.ca, &ca.empty_dir())
        .args(["run", "--host", "w1", "--title", "over tls"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("run_"), "{}", text(&out));
    let out = cli(&serve.url, &key, &ca.ca, &ca.empty_dir())
        .args(["runs", "list"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&id), "{}", text(&out));

    // Trusting another CA only: refused, saying why and what to do.
    let out = cli(&serve.url, &key, &stranger.ca, &ca.empty_dir())
        .args(["runs", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("certificate was refused") && said.contains("SSL_CERT_FILE"),
        "{said}"
    );
}

#[tokio::test]
async fn the_worker_binary_runs_a_task_over_wss_trusting_ssl_cert_file() {
    let engine = Engine::Docker;
    if !engine.available() {
        return;
    }
    let ca = TestCa::generate();
    let data = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(data.path(), "alpha").await;
    let serve = serve_tls(data.path(), &ca).await;
    let id = unique_id("tls");
    let worker = WorkerProcess::spawn_at(
        &serve.ws_url(),
        &serve.url,
        &key,
        engine,
        WorkerOptions {
            worker_id: &id,
            env: vec![
                ("SSL_CERT_FILE".into(), ca.ca.display().to_string()),
                ("SSL_CERT_DIR".into(), ca.empty_dir().display().to_string()),
            ],
            ..Default::default()
        },
    );
    worker
        .wait_for_log("connected to the orchestrator", Duration::from_secs(30))
        .await;
    let out = cli(&serve.url, &key, &ca.ca, &ca.empty_dir())
        .args([
            "run",
            "--host",
            &id,
            "--image",
            BUSYBOX,
            "--sidecar",
            SIDECAR,
        ])
        .args(["--prompt", "hello over tls", "--wait"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nworker log:\n{}",
        text(&out),
        worker.log_text()
    );
    assert!(text(&out).contains("claimed"), "{}", text(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
}

#[tokio::test]
async fn a_worker_that_does_not_trust_the_ca_says_so() {
    let engine = Engine::Docker;
    if !engine.available() {
        return;
    }
    let ca = TestCa::generate();
    let stranger = TestCa::generate();
    let data = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(data.path(), "alpha").await;
    let serve = serve_tls(data.path(), &ca).await;
    let worker = WorkerProcess::spawn_at(
        &serve.ws_url(),
        &serve.url,
        &key,
        engine,
        WorkerOptions {
            worker_id: &unique_id("tls-untrusted"),
            env: vec![
                ("SSL_CERT_FILE".into(), stranger.ca.display().to_string()),
                ("SSL_CERT_DIR".into(), ca.empty_dir().display().to_string()),
            ],
            ..Default::default()
        },
    );
    worker
        .wait_for_log("certificate was refused", Duration::from_secs(30))
        .await;
    let log = worker.log_text();
    assert!(
        log.contains("UnknownIssuer") && log.contains("SSL_CERT_FILE"),
        "{log}"
    );
    assert!(!log.contains("connected to the orchestrator"), "{log}");
}

#[tokio::test]
async fn a_tls_listener_closes_a_peer_that_never_starts_the_handshake() {
    let ca = TestCa::generate();
    let mut config = Config::ephemeral();
    config.tls = Some(TlsFiles {
        cert: ca.cert.clone(),
        key: ca.key.clone(),
    });
    let plane = ControlPlane::start(config).await.unwrap();
    assert!(plane.ws_url().starts_with("wss://"));
    let mut sock = tokio::net::TcpStream::connect(plane.addr()).await.unwrap();
    let bound = DEFAULT_HEADER_READ_TIMEOUT + Duration::from_secs(20);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(bound, sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after {bound:?}");
}

#[tokio::test]
async fn serve_names_a_tls_file_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&ca.cert)
        .arg("--tls-key")
        .arg(&ca.ca) // a certificate, not a key
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--tls-key") && said.contains("ca.pem"),
        "{said}"
    );
}
