//! `TestDaemon`: one helper for every test that talks to a real daemon.
//!
//! Locations come from the `OZ_TEST_*` variables written by
//! `scripts/test-env.sh` (defaults match it). A daemon that cannot be reached
//! fails the test under `CI=true` and skips it (with the reason printed)
//! otherwise. No test mutates the process environment: each builds an
//! [`EnvSnapshot`], and the real Docker CLI gets its `DOCKER_CONFIG` on the
//! child command only.

use bytes::Bytes;
use futures_util::StreamExt;
use oz_docker_engine::request::{ApiRequest, CallKind, RequestBody};
use oz_docker_engine::transport::EnvSnapshot;
use oz_docker_engine::{Docker, DockerError};
use std::path::{Path, PathBuf};
use std::process::Command;

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Where the test environment lives.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub docker_host: String,
    pub tls_host: String,
    pub cert_dir: PathBuf,
    pub other_ca_dir: PathBuf,
    pub podman_host: String,
    /// The daemon matrix (scripts/test-env.sh): Docker 26, Docker 28 and
    /// Podman 5, each in a container of the test dockerd, on its own socket.
    pub docker26_host: String,
    pub docker28_host: String,
    pub podman5_host: String,
    /// `ssh://root@127.0.0.1:2222`: sshd whose `docker system dial-stdio`
    /// reaches the unix-socket daemon.
    pub ssh_host: String,
    pub busybox: String,
}

impl TestEnv {
    pub fn load() -> Self {
        TestEnv {
            docker_host: var("OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock"),
            tls_host: var("OZ_TEST_TLS_HOST", "tcp://127.0.0.1:2376"),
            cert_dir: var("OZ_TEST_CERT_DIR", "/var/lib/oz-worker-test/certs").into(),
            other_ca_dir: var(
                "OZ_TEST_OTHER_CA_DIR",
                "/var/lib/oz-worker-test/certs/other-ca",
            )
            .into(),
            podman_host: var("OZ_TEST_PODMAN_HOST", "unix:///run/podman/podman.sock"),
            docker26_host: var(
                "OZ_TEST_DOCKER26_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker26/docker.sock",
            ),
            docker28_host: var(
                "OZ_TEST_DOCKER28_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock",
            ),
            podman5_host: var(
                "OZ_TEST_PODMAN5_HOST",
                "unix:///var/lib/oz-worker-test/daemons/podman5/podman.sock",
            ),
            ssh_host: var("OZ_TEST_SSH_HOST", "ssh://root@127.0.0.1:2222"),
            busybox: var("OZ_TEST_IMAGE_BUSYBOX", "oz-test/busybox:latest"),
        }
    }
}

impl TestEnv {
    /// The `DOCKER_HOST` of a daemon reached over a plain socket (`Unix`,
    /// `Pinned141`, `Podman` and the matrix); `None` for TLS, contexts, ssh.
    pub fn socket_host(&self, via: Via) -> Option<&str> {
        match via {
            Via::Unix | Via::Pinned141 => Some(&self.docker_host),
            Via::Podman => Some(&self.podman_host),
            Via::Docker26 => Some(&self.docker26_host),
            Via::Docker28 => Some(&self.docker28_host),
            Via::Podman5 => Some(&self.podman5_host),
            Via::TlsEnv | Via::ContextEnv | Via::ContextConfig | Via::Ssh | Via::SshContext => None,
        }
    }
}

/// Fails under `CI=true`, otherwise prints why the test is skipped.
/// Returns `None` so callers can `let Some(x) = ... else { return };`.
pub fn unavailable<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("test environment unavailable under CI=true: {reason} (run scripts/test-env.sh)");
    }
    eprintln!("SKIPPED: {reason} (run scripts/test-env.sh to set up the daemons)");
    None
}

fn socket_of(host: &str) -> Option<&Path> {
    host.strip_prefix("unix://").map(Path::new)
}

fn tcp_reachable(host: &str) -> bool {
    let addr = host.trim_start_matches("tcp://");
    // ssh://user@host:port -> host:port
    let addr = addr
        .strip_prefix("ssh://")
        .map_or(addr, |rest| rest.rsplit_once('@').map_or(rest, |(_, h)| h));
    std::net::TcpStream::connect_timeout(
        &match addr.parse() {
            Ok(a) => a,
            Err(_) => return false,
        },
        std::time::Duration::from_secs(2),
    )
    .is_ok()
}

/// How a test reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `DOCKER_HOST=unix:///var/run/docker.sock`.
    Unix,
    /// `DOCKER_HOST=tcp://…:2376` + `DOCKER_TLS_VERIFY` + `DOCKER_CERT_PATH`.
    TlsEnv,
    /// A context written by `docker context create`, selected by `DOCKER_CONTEXT`.
    ContextEnv,
    /// The same, selected by `currentContext` (`docker context use`).
    ContextConfig,
    /// Podman's Docker-compatible socket.
    Podman,
    /// The unix socket with `DOCKER_API_VERSION=1.41`.
    Pinned141,
    /// `DOCKER_HOST=ssh://root@127.0.0.1:2222`: `ssh … docker system
    /// dial-stdio` per connection, as the Docker CLI does.
    Ssh,
    /// A context made by `docker context create` whose host is that ssh:// URL.
    SshContext,
    /// Docker 26 (API 1.45, Debian 13's docker.io) on its unix socket.
    Docker26,
    /// Docker 28 (API 1.51, Debian unstable's docker.io) on its unix socket.
    Docker28,
    /// Podman 5 (Debian unstable) on its Docker-compatible socket.
    Podman5,
}

impl Via {
    /// Whether the daemon is Podman (its answers differ in places).
    pub fn is_podman(self) -> bool {
        matches!(self, Via::Podman | Via::Podman5)
    }
}

/// One module per daemon of the matrix, each holding one `#[tokio::test]`
/// per listed `async fn NAME(via: Via)` of the calling file: `docker`
/// (dockerd 20.10, unix socket), `podman` (Podman 4), `docker26`,
/// `docker28`, `podman5`. Tests are named `ENGINE::NAME`; the README's
/// daemon matrix table is made from those names (scripts/matrix-table.py).
#[macro_export]
macro_rules! per_daemon {
    ($($test:ident),* $(,)?) => {
        $crate::per_daemon!(@engine docker, Unix, $($test),*);
        $crate::per_daemon!(@engine podman, Podman, $($test),*);
        $crate::per_daemon!(@engine docker26, Docker26, $($test),*);
        $crate::per_daemon!(@engine docker28, Docker28, $($test),*);
        $crate::per_daemon!(@engine podman5, Podman5, $($test),*);
    };
    (@engine $engine:ident, $via:ident, $($test:ident),*) => {
        mod $engine {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::docker::Via::$via).await
                }
            )*
        }
    };
}
pub use crate::per_daemon;

/// An environment snapshot for a way of reaching the daemon; keeps the
/// temporary Docker config directory alive.
pub struct Setup {
    pub env: EnvSnapshot,
    pub config_dir: tempfile::TempDir,
}

impl Setup {
    /// An empty snapshot with a fresh, empty `DOCKER_CONFIG` (so the machine's
    /// own `~/.docker` never leaks in).
    pub fn new() -> Setup {
        let config_dir = tempfile::tempdir().expect("tempdir");
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_CONFIG", config_dir.path().to_str().unwrap())
            .with_home(config_dir.path());
        Setup { env, config_dir }
    }

    pub fn var(mut self, name: &str, value: impl Into<String>) -> Setup {
        self.env = self.env.with_var(name, value);
        self
    }

    /// Runs the real Docker CLI with this setup's `DOCKER_CONFIG` (on the
    /// child only). `None` (skip/fail) when the CLI is missing.
    pub fn docker_cli(&self, args: &[&str]) -> Option<()> {
        let out = match Command::new("docker")
            .args(args)
            .env("DOCKER_CONFIG", self.config_dir.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
        {
            Ok(o) => o,
            Err(e) => return unavailable(&format!("the docker CLI cannot run: {e}")),
        };
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(())
    }

    /// Creates a context with the real CLI: `docker context create NAME --docker SPEC`.
    pub fn create_context(&self, name: &str, docker_spec: &str) -> Option<()> {
        self.docker_cli(&["context", "create", name, "--docker", docker_spec])
    }

    /// The endpoint spec for a TLS context on the test daemon.
    pub fn tls_context_spec(env: &TestEnv) -> String {
        format!(
            "host={},ca={},cert={},key={}",
            env.tls_host,
            env.cert_dir.join("ca.pem").display(),
            env.cert_dir.join("cert.pem").display(),
            env.cert_dir.join("key.pem").display()
        )
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

/// A connected client plus what the scenario needs to know about it.
pub struct TestDaemon {
    pub docker: Docker,
    pub via: Via,
    pub env: TestEnv,
    _setup: Setup,
}

impl TestDaemon {
    /// Checks the daemon for `via` is there (else skip/fail), then builds the
    /// environment snapshot.
    pub fn setup(via: Via) -> Option<(TestEnv, Setup)> {
        let env = TestEnv::load();
        // A socket file is not enough: a daemon killed with its session
        // leaves it behind.
        let needs_socket = |host: &str| -> Option<()> {
            match socket_of(host) {
                Some(p) if std::os::unix::net::UnixStream::connect(p).is_ok() => Some(()),
                Some(p) if p.exists() => unavailable(&format!("nothing answers on {host}")),
                _ => unavailable(&format!("no daemon socket at {host}")),
            }
        };
        let needs_tls = || -> Option<()> {
            if !env.cert_dir.join("ca.pem").exists() {
                return unavailable(&format!("no ca.pem in {}", env.cert_dir.display()));
            }
            if !tcp_reachable(&env.tls_host) {
                return unavailable(&format!("nothing listens on {}", env.tls_host));
            }
            Some(())
        };
        let needs_ssh = || -> Option<()> {
            if !tcp_reachable(&env.ssh_host) {
                return unavailable(&format!("no sshd for {}", env.ssh_host));
            }
            needs_socket(&env.docker_host)
        };
        let setup = match via {
            Via::Ssh => {
                needs_ssh()?;
                Setup::new().var("DOCKER_HOST", &env.ssh_host)
            }
            Via::SshContext => {
                needs_ssh()?;
                let setup = Setup::new();
                setup.create_context("oz-ssh", &format!("host={}", env.ssh_host))?;
                setup.var("DOCKER_CONTEXT", "oz-ssh")
            }
            Via::Unix => {
                needs_socket(&env.docker_host)?;
                Setup::new().var("DOCKER_HOST", &env.docker_host)
            }
            Via::Pinned141 => {
                needs_socket(&env.docker_host)?;
                Setup::new()
                    .var("DOCKER_HOST", &env.docker_host)
                    .var("DOCKER_API_VERSION", "1.41")
            }
            Via::Podman => {
                needs_socket(&env.podman_host)?;
                Setup::new().var("DOCKER_HOST", &env.podman_host)
            }
            Via::Docker26 | Via::Docker28 | Via::Podman5 => {
                let host = env.socket_host(via).expect("a socket").to_string();
                needs_socket(&host)?;
                Setup::new().var("DOCKER_HOST", host)
            }
            Via::TlsEnv => {
                needs_tls()?;
                Setup::new()
                    .var("DOCKER_HOST", &env.tls_host)
                    .var("DOCKER_TLS_VERIFY", "1")
                    .var("DOCKER_CERT_PATH", env.cert_dir.to_str().unwrap())
            }
            Via::ContextEnv | Via::ContextConfig => {
                needs_tls()?;
                let setup = Setup::new();
                setup.create_context("oz-remote", &Setup::tls_context_spec(&env))?;
                if via == Via::ContextEnv {
                    setup.var("DOCKER_CONTEXT", "oz-remote")
                } else {
                    setup.docker_cli(&["context", "use", "oz-remote"])?;
                    setup
                }
            }
        };
        Some((env, setup))
    }

    /// Connects through `via`, as the worker would (`Docker::connect`).
    pub async fn connect(via: Via) -> Option<TestDaemon> {
        let (env, setup) = TestDaemon::setup(via)?;
        let docker = Docker::connect(&setup.env)
            .await
            .unwrap_or_else(|e| panic!("connect via {via:?}: {e}"));
        Some(TestDaemon {
            docker,
            via,
            env,
            _setup: setup,
        })
    }

    /// A name unique to this test run and transport.
    pub fn unique(&self, what: &str) -> String {
        format!("oz-test-{what}-{:?}-{}", self.via, fastrand::u32(..)).to_lowercase()
    }

    pub async fn json(
        &self,
        op: &'static str,
        method: http::Method,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, DockerError> {
        let mut req = ApiRequest::new(op, method, path, CallKind::Ordinary);
        if let Some(b) = body {
            req.body = RequestBody::Json(Bytes::from(serde_json::to_vec(&b).unwrap()));
        }
        self.docker.send_json(req).await
    }

    pub async fn unit(
        &self,
        op: &'static str,
        method: http::Method,
        path: String,
        query: &[(&'static str, &str)],
    ) -> Result<(), DockerError> {
        let mut req = ApiRequest::new(op, method, path, CallKind::Ordinary);
        req.query = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.docker.send_unit(req).await
    }

    /// `POST /containers/create` of the busybox image; returns the id.
    pub async fn create_container(&self, cmd: &[&str], tty: bool) -> String {
        let created = self
            .json(
                "ContainerCreate",
                http::Method::POST,
                "/containers/create".into(),
                Some(serde_json::json!({
                    "Image": self.env.busybox,
                    "Cmd": cmd,
                    "Tty": tty,
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create via {:?}: {e}", self.via));
        created["Id"].as_str().expect("Id").to_string()
    }

    pub async fn start(&self, id: &str) {
        self.unit(
            "ContainerStart",
            http::Method::POST,
            format!("/containers/{id}/start"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("start via {:?}: {e}", self.via));
    }

    /// `POST /containers/{id}/wait` (a streaming call): the exit code.
    /// All of a stopped container's output, as the client splits it.
    pub async fn logs(&self, id: &str) -> Vec<oz_docker_engine::stream::LogChunk> {
        use futures_util::StreamExt;
        self.docker
            .logs(id, &oz_docker_engine::LogsOptions::default())
            .await
            .unwrap_or_else(|e| panic!("logs via {:?}: {e}", self.via))
            .map(|r| r.expect("log chunk"))
            .collect()
            .await
    }

    pub async fn wait(&self, id: &str) -> i64 {
        let req = ApiRequest::new(
            "ContainerWait",
            http::Method::POST,
            format!("/containers/{id}/wait"),
            CallKind::Streaming,
        );
        let v: serde_json::Value = self
            .docker
            .send_json(req)
            .await
            .unwrap_or_else(|e| panic!("wait via {:?}: {e}", self.via));
        v["StatusCode"].as_i64().expect("StatusCode")
    }

    pub async fn remove(&self, id: &str) {
        self.unit(
            "ContainerDelete",
            http::Method::DELETE,
            format!("/containers/{id}"),
            &[("force", "true")],
        )
        .await
        .unwrap_or_else(|e| panic!("remove via {:?}: {e}", self.via));
    }
}

/// A tar archive of regular files (mode 0644).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let files: Vec<(&str, &[u8], u32)> = files.iter().map(|(n, d)| (*n, *d, 0o644)).collect();
    oz_runtime_docker::tar::archive(&files)
}

/// Streams a body in small chunks, as a caller with a large archive would.
pub fn chunked(data: Vec<u8>) -> oz_docker_engine::request::BodyStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(700)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks).boxed()
}

/// Reads a tar from a byte stream without holding it: the entry names and,
/// for entries named in `keep`, their contents. Returns (names, kept, total bytes).
pub async fn scan_tar(
    mut body: oz_docker_engine::stream::ByteStream,
    keep: &[&str],
) -> (Vec<String>, Vec<(String, Vec<u8>)>, usize) {
    let mut names = Vec::new();
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    // Bytes of the current entry still to read (content + padding), and
    // whether to keep them.
    let mut skip = 0usize;
    let mut content_left = 0usize;
    let mut keeping: Option<(String, Vec<u8>)> = None;
    let mut ended = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("tar stream");
        total += chunk.len();
        if ended {
            continue;
        }
        buf.extend_from_slice(&chunk);
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                if n == 0 {
                    break;
                }
                let take = content_left.min(n);
                if let Some((_, data)) = keeping.as_mut() {
                    data.extend_from_slice(&buf[..take]);
                }
                content_left -= take;
                buf.drain(..n);
                skip -= n;
                if skip == 0 {
                    if let Some(k) = keeping.take() {
                        kept.push(k);
                    }
                }
                continue;
            }
            if buf.len() < 512 {
                break;
            }
            let header: Vec<u8> = buf.drain(..512).collect();
            if header.iter().all(|&b| b == 0) {
                ended = true;
                break;
            }
            let field = |r: std::ops::Range<usize>| {
                let s = &header[r];
                let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
                String::from_utf8_lossy(&s[..end]).trim().to_string()
            };
            let mut name = field(0..100);
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
            let size = usize::from_str_radix(&field(124..136), 8).unwrap_or(0);
            let name = name.trim_start_matches("./").to_string();
            if keep.contains(&name.as_str()) && size > 0 {
                keeping = Some((name.clone(), Vec::new()));
            }
            names.push(name);
            content_left = size;
            skip = size.div_ceil(512) * 512;
        }
    }
    (names, kept, total)
}
