//! The worker's connection to the orchestrator through an outbound proxy,
//! chosen from `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` as the Go worker's
//! dialer chooses it, through real proxies: tinyproxy (HTTP CONNECT with
//! Basic credentials), the same behind stunnel (an `https://` proxy) and
//! microsocks (SOCKS5 with a user and password), Debian packages the test
//! command installs.
//!
//! Loopback addresses never go through a proxy (Go's rule), so the control
//! plane listens on all addresses and the worker is given this host's own
//! non-loopback address. The worker runs the direct runtime with
//! `/bin/true` as its agent: no container engine is involved.

use oz_test_support as support;

use oz_control_plane::http::tls::TlsFiles;
use oz_runs_api::model::RunState;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::control_plane::{test_config, TestCa, TestPlane};
use support::net::free_port;
use support::worker::*;

const WITHIN: Duration = Duration::from_secs(30);
const PASSWORD: &str = "s3cret-proxy-pass";

/// This host's address on its default route: not loopback, so a proxy
/// applies. No packet is sent (UDP `connect` only picks the route).
fn host_address() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for target in ["192.0.2.1:9", "10.255.255.255:9", "172.31.255.255:9"] {
        if probe.connect(target).is_ok() {
            let ip = probe.local_addr().unwrap().ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                return ip;
            }
        }
    }
    panic!("this host has no non-loopback IPv4 address with a route; the proxy tests need one");
}

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: scripts/test-env.sh up installs it (Debian package {name})");
}

/// A proxy process on 127.0.0.1:`port`; killed on drop.
struct Proxy {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// tinyproxy, asking for `alice` and [`PASSWORD`], logging connects.
    async fn tinyproxy(port: u16) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port (the plane's is random).
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 50\nLogLevel Connect\n\
                 LogFile \"{}\"\nBasicAuth alice {PASSWORD}\n",
                log.display()
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(program("tinyproxy"));
        cmd.arg("-d").arg("-c").arg(&conf);
        Self::spawn(cmd, port, log, dir).await
    }

    /// stunnel on `port` serving TLS with `ca`'s server certificate, in
    /// front of `inner` (an `https://` proxy).
    async fn stunnel(port: u16, inner: &Proxy, ca: &TestCa) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stunnel.log");
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {}\n[proxy]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{}\ncert = {}\nkey = {}\n",
                log.display(),
                inner.port,
                ca.cert.display(),
                ca.key.display()
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(program("stunnel4"));
        cmd.arg(&conf);
        Self::spawn(cmd, port, log, dir).await
    }

    /// microsocks, asking for `bob` and [`PASSWORD`].
    async fn microsocks(port: u16) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("microsocks.log");
        let mut cmd = tokio::process::Command::new(program("microsocks"));
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "bob",
            "-P",
            PASSWORD,
        ]);
        Self::spawn(cmd, port, log, dir).await
    }

    async fn spawn(
        mut cmd: tokio::process::Command,
        port: u16,
        log: PathBuf,
        dir: tempfile::TempDir,
    ) -> Proxy {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr"))
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the proxy starts");
        let proxy = Proxy {
            child,
            port,
            log,
            dir,
        };
        // Ready when it accepts connections.
        let deadline = tokio::time::Instant::now() + WITHIN;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy did not listen on {port}: {}",
                proxy.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        s
    }

    async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

/// A plane on every address, a direct-runtime worker that reaches it at
/// `ws://<host address>:<port>` with `env`.
struct Setup {
    plane: TestPlane,
    ws_url: String,
    root_url: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        Self::start(None).await
    }

    /// With `ca`'s certificate: `wss://` and `https://`.
    async fn start(ca: Option<&TestCa>) -> Setup {
        let mut config = test_config();
        config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        config.tls = ca.map(|ca| TlsFiles {
            cert: ca.cert.clone(),
            key: ca.key.clone(),
        });
        let plane = TestPlane::start(config).await;
        let addr = SocketAddr::new(host_address(), plane.plane.addr().port());
        let s = if ca.is_some() { "s" } else { "" };
        Setup {
            plane,
            ws_url: format!("ws{s}://{addr}/api/v1/selfhosted/worker/ws"),
            root_url: format!("http{s}://{addr}"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn worker(&self, id: &str, env: &[(&str, String)]) -> WorkerProcess {
        let ws = self.dir.path().join(format!("ws-{id}"));
        std::fs::create_dir_all(&ws).unwrap();
        let config = self.dir.path().join(format!("{id}.yaml"));
        std::fs::write(
            &config,
            format!(
                "backend:\n  direct:\n    workspace_root: {}\n    oz_path: /bin/true\n",
                ws.display()
            ),
        )
        .unwrap();
        let mut vars: Vec<(String, String)> = [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
        ]
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        WorkerProcess::spawn_at(
            &self.ws_url,
            &self.root_url,
            &self.plane.key,
            Engine::None,
            WorkerOptions {
                worker_id: id,
                extra_args: vec![
                    "--backend".into(),
                    "direct".into(),
                    "--config-file".into(),
                    config.display().to_string(),
                ],
                env: vars,
                ..Default::default()
            },
        )
    }

    async fn run_succeeds(&self, worker: &WorkerProcess) {
        let req = host_run(&worker.worker_id, "through a proxy", &[]);
        let id = self.plane.client().create_run(&req).await.unwrap().id;
        let run = wait_terminal(&self.plane, &id, WITHIN).await;
        assert_eq!(
            run.state,
            RunState::Succeeded,
            "{run:#?}\n{}",
            worker.log_text()
        );
    }
}

#[tokio::test]
async fn a_worker_behind_an_http_proxy_connects_through_it_and_again_after_it_restarts() {
    let s = Setup::new().await;
    let proxy = Proxy::tinyproxy(free_port()).await;
    let url = format!("http://alice:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let w = s.worker(&unique_id("proxied"), &[("HTTP_PROXY", url)]);
    w.wait_for_log("connected to the orchestrator", WITHIN)
        .await;
    s.run_succeeds(&w).await;

    // The proxy carried it: its log has the CONNECT to the plane.
    let target = s
        .ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let log = proxy.output();
    assert!(
        log.contains(&format!("CONNECT {target} HTTP/1.1")),
        "tinyproxy's log has no CONNECT {target}:\n{log}"
    );
    let said = w.log_text();
    assert!(
        said.contains(&format!(
            "outbound proxy: the proxy http://127.0.0.1:{} (user alice) from HTTP_PROXY",
            proxy.port
        )),
        "{said}"
    );

    // The proxy dies: the tunnel with it. The worker says which proxy it
    // cannot reach, and is back once the proxy is.
    let port = proxy.kill().await;
    w.wait_for_log(
        &format!("cannot reach the proxy http://127.0.0.1:{port}"),
        WITHIN,
    )
    .await;
    let proxy = Proxy::tinyproxy(port).await;
    let connected = w
        .log_text()
        .matches("connected to the orchestrator")
        .count();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while w
        .log_text()
        .matches("connected to the orchestrator")
        .count()
        == connected
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect through the restarted proxy:\n{}\nproxy:\n{}",
            w.log_text(),
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.run_succeeds(&w).await;
    assert!(
        !w.log_text().contains(PASSWORD),
        "the worker logged the proxy password"
    );
}

#[tokio::test]
async fn wrong_proxy_credentials_are_named_without_the_password() {
    let s = Setup::new().await;
    let proxy = Proxy::tinyproxy(free_port()).await;
    let wrong = "not-the-password";
    let url = format!("http://alice:{wrong}@127.0.0.1:{}", proxy.port);
    let w = s.worker(&unique_id("bad-creds"), &[("HTTP_PROXY", url)]);
    w.wait_for_log("refused the user and password in HTTP_PROXY", WITHIN)
        .await;
    let said = w.log_text();
    assert!(!said.contains(wrong), "the password is in the log:\n{said}");
    assert!(!said.contains("connected to the orchestrator"), "{said}");
}

#[tokio::test]
async fn no_proxy_sends_the_connection_direct() {
    let s = Setup::new().await;
    // Nothing listens there: only a direct connection can succeed.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let host = host_address().to_string();
    let w = s.worker(
        &unique_id("no-proxy"),
        &[
            ("HTTP_PROXY", dead.clone()),
            ("NO_PROXY", format!("example.invalid,{host}")),
        ],
    );
    w.wait_for_log("connected to the orchestrator", WITHIN)
        .await;
    s.run_succeeds(&w).await;

    // Without the exception the same worker cannot get out.
    let w = s.worker(&unique_id("no-exception"), &[("HTTP_PROXY", dead.clone())]);
    w.wait_for_log(&format!("cannot reach the proxy {dead}"), WITHIN)
        .await;
}

#[tokio::test]
async fn a_worker_behind_a_socks5_proxy_runs_a_task() {
    let s = Setup::new().await;
    let proxy = Proxy::microsocks(free_port()).await;
    let url = format!("socks5://bob:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let w = s.worker(&unique_id("socks"), &[("http_proxy", url)]);
    w.wait_for_log("connected to the orchestrator", WITHIN)
        .await;
    s.run_succeeds(&w).await;
    assert!(w.log_text().contains("from http_proxy"), "{}", w.log_text());

    // The SOCKS proxy given as an HTTP one: its answer is not HTTP, and
    // the message says which scheme to write.
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let w = s.worker(&unique_id("socks-as-http"), &[("HTTP_PROXY", url)]);
    w.wait_for_log(
        "if it is a SOCKS5 proxy, write socks5:// in HTTP_PROXY",
        WITHIN,
    )
    .await;

    // A wrong password: SOCKS5's own refusal, named.
    let url = format!("socks5://bob:wrong@127.0.0.1:{}", proxy.port);
    let w = s.worker(&unique_id("socks-bad"), &[("http_proxy", url)]);
    w.wait_for_log("refused the user and password in http_proxy", WITHIN)
        .await;
    assert!(!w.log_text().contains("wrong@"), "{}", w.log_text());
}

#[tokio::test]
async fn an_unusable_proxy_setting_stops_the_worker_with_exit_status_2() {
    let s = Setup::new().await;
    // ws:// reads HTTP_PROXY: its bad value stops the worker.
    let mut w = s.worker(
        &unique_id("bad-proxy"),
        &[("HTTP_PROXY", "ftp://carol:hunter2@proxy.example:21".into())],
    );
    let status = w.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(2), "{}", w.log_text());
    let said = w.log_text();
    assert!(said.contains("HTTP_PROXY: the scheme ftp://"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");

    // The variable this URL does not read is only a warning (hosts often
    // set both for other programs; Go never reads it here).
    let w = s.worker(
        &unique_id("other-proxy"),
        &[("HTTPS_PROXY", "ftp://carol:hunter2@proxy.example:21".into())],
    );
    w.wait_for_log("connected to the orchestrator", WITHIN)
        .await;
    let said = w.log_text();
    assert!(
        said.contains("ignored: the orchestrator URL is ws://, which reads HTTP_PROXY"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
}

#[tokio::test]
async fn wss_through_an_https_proxy() {
    let host = host_address().to_string();
    let ca = TestCa::for_names(&[&host]);
    let s = Setup::start(Some(&ca)).await;
    let inner = Proxy::tinyproxy(free_port()).await;
    let proxy = Proxy::stunnel(free_port(), &inner, &ca).await;
    let url = format!("https://alice:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let w = s.worker(
        &unique_id("https-proxy"),
        &[
            ("HTTPS_PROXY", url),
            // The proxy's certificate and the plane's come from this CA.
            ("SSL_CERT_FILE", ca.ca.display().to_string()),
            ("SSL_CERT_DIR", ca.empty_dir().display().to_string()),
        ],
    );
    w.wait_for_log("connected to the orchestrator", WITHIN)
        .await;
    // A run through the CLI, which trusts the test CA (this process's own
    // client reads the system's CAs once).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .env(
            "OZ_SERVER_URL",
            format!("https://127.0.0.1:{}", s.plane.plane.addr().port()),
        )
        .env("WARP_API_KEY", &s.plane.key)
        .env("SSL_CERT_FILE", &ca.ca)
        .env("SSL_CERT_DIR", ca.empty_dir())
        .args([
            "run",
            "--host",
            &w.worker_id,
            "--title",
            "wss through a proxy",
            "--wait",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\nworker:\n{}", w.log_text());
    assert!(said.contains("succeeded"), "{said}");
    let target = s
        .ws_url
        .trim_start_matches("wss://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let log = inner.output();
    assert!(
        log.contains(&format!("CONNECT {target} HTTP/1.1")),
        "tinyproxy (behind stunnel) has no CONNECT {target}:\n{log}"
    );
}

/// A proxy that accepts the connection and never answers holds the
/// connection attempt; a shutdown must not wait for it.
#[tokio::test]
async fn a_shutdown_does_not_wait_for_a_proxy_that_never_answers() {
    let s = Setup::new().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(1);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
            let _ = accepted_tx.try_send(());
        }
    });
    let mut w = s.worker(
        &unique_id("silent-proxy"),
        &[("HTTP_PROXY", format!("http://127.0.0.1:{port}"))],
    );
    // The worker is inside its connection attempt, through the proxy.
    tokio::time::timeout(WITHIN, accepted.recv())
        .await
        .expect("the worker never reached the proxy")
        .unwrap();
    w.signal(15); // SIGTERM
                  // The attempt's budget is 30 s; the shutdown must not sit it out.
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log_text());
    holder.abort();
}
