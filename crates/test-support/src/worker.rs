//! `WorkerProcess`: the real worker binary, started against an embedded
//! control plane and a real engine, so tests can signal and kill it.

use super::control_plane::TestPlane;
use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub const BUSYBOX: &str = "oz-test/busybox:latest";
pub const MUSL: &str = "oz-test/musl:latest";
pub const SIDECAR: &str = "oz-test/agent-sidecar:latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// dockerd 20.10 (Debian 12) on its unix socket.
    Docker,
    /// Podman 4 (Debian 12) on its Docker-compatible socket.
    Podman,
    /// The same dockerd, reached over TCP with mutual TLS.
    DockerTls,
    /// No engine at all (the direct and command runtimes): no `DOCKER_*`
    /// variable reaches the worker and no `--pull-policy` is passed.
    None,
    /// Docker 26 (API 1.45, Debian 13), in a container of the test dockerd.
    Docker26,
    /// Docker 28 (API 1.51, Debian unstable), in a container of the test dockerd.
    Docker28,
    /// Podman 5 (Debian unstable), in a container of the test dockerd.
    Podman5,
}

impl Engine {
    /// Every daemon of the matrix, each over its unix socket.
    pub const MATRIX: [Engine; 5] = [
        Engine::Docker,
        Engine::Podman,
        Engine::Docker26,
        Engine::Docker28,
        Engine::Podman5,
    ];

    /// The name of the test module that runs a scenario on this engine
    /// (`docker::NAME`, `docker28::NAME`, ...): the README's daemon matrix
    /// table (scripts/matrix-table.py) attributes tests by it.
    pub fn key(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::DockerTls => "docker_tls",
            Engine::Docker26 => "docker26",
            Engine::Docker28 => "docker28",
            Engine::Podman5 => "podman5",
            Engine::None => "none",
        }
    }

    /// Whether containers of this engine reach the host's loopback (the
    /// test registry on 127.0.0.1:5000, a control plane). The matrix's
    /// nested daemons live in their own network namespace: they pull
    /// nothing from the test registry, so tests there use preloaded images
    /// (`--pull-policy if-not-present`, the `WorkerOptions` default).
    pub fn reaches_host_loopback(self) -> bool {
        matches!(self, Engine::Docker | Engine::Podman | Engine::DockerTls)
    }

    pub fn host(self) -> String {
        let (var, default) = match self {
            Engine::Docker => ("OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock"),
            Engine::Podman => ("OZ_TEST_PODMAN_HOST", "unix:///run/podman/podman.sock"),
            Engine::DockerTls => ("OZ_TEST_TLS_HOST", "tcp://127.0.0.1:2376"),
            Engine::None => return String::new(),
            Engine::Docker26 => (
                "OZ_TEST_DOCKER26_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker26/docker.sock",
            ),
            Engine::Docker28 => (
                "OZ_TEST_DOCKER28_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock",
            ),
            Engine::Podman5 => (
                "OZ_TEST_PODMAN5_HOST",
                "unix:///var/lib/oz-worker-test/daemons/podman5/podman.sock",
            ),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_string())
    }

    /// The variables that select this engine, as a user would set them.
    pub fn env(self) -> Vec<(String, String)> {
        if self == Engine::None {
            return Vec::new();
        }
        let mut env = vec![("DOCKER_HOST".to_string(), self.host())];
        if self == Engine::DockerTls {
            let certs = std::env::var("OZ_TEST_CERT_DIR")
                .unwrap_or_else(|_| "/var/lib/oz-worker-test/certs".into());
            env.push(("DOCKER_TLS_VERIFY".into(), "1".into()));
            env.push(("DOCKER_CERT_PATH".into(), certs));
        }
        env
    }

    /// Whether the engine answers. Under CI a missing engine fails the test
    /// instead of skipping it.
    pub fn available(self) -> bool {
        if self == Engine::None {
            return true;
        }
        let host = self.host();
        let up = match host.strip_prefix("unix://") {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(host.trim_start_matches("tcp://")).is_ok(),
        };
        if !up {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{self:?} is not reachable at {host}; run scripts/test-env.sh up");
            }
            eprintln!("skipping: {self:?} is not reachable at {host} (run scripts/test-env.sh up)");
        }
        up
    }

    pub async fn docker(self) -> oz_docker_engine::Docker {
        let env = self.env().into_iter().fold(
            oz_docker_engine::transport::endpoint::EnvSnapshot::empty(),
            |snapshot, (k, v)| snapshot.with_var(&k, v),
        );
        oz_docker_engine::Docker::connect(&env)
            .await
            .expect("test engine reachable")
    }
}

pub struct WorkerProcess {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    pub worker_id: String,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct WorkerOptions<'a> {
    pub worker_id: &'a str,
    pub extra_args: Vec<String>,
    /// Defaults to `if-not-present`: the local test images exist in no registry.
    pub pull_policy: Option<&'a str>,
    /// Extra environment for the worker process (e.g. DOCKER_CONFIG, PATH).
    pub env: Vec<(String, String)>,
    /// Instead of the plane's valid key.
    pub api_key: Option<&'a str>,
    /// The claim journal's directory (`--state-dir`); by default one shared
    /// temp dir, which tests that restart a worker on its journal replace.
    pub state_dir: Option<PathBuf>,
}

impl WorkerProcess {
    /// Starts the worker and waits until it is connected.
    pub async fn start(
        plane: &TestPlane,
        engine: Engine,
        opts: WorkerOptions<'_>,
    ) -> WorkerProcess {
        let w = Self::spawn(plane, engine, opts);
        w.wait_for_log("connected to the orchestrator", Duration::from_secs(30))
            .await;
        w
    }

    /// Starts the worker without waiting for anything.
    pub fn spawn(plane: &TestPlane, engine: Engine, opts: WorkerOptions<'_>) -> WorkerProcess {
        let key = opts.api_key.unwrap_or(&plane.key).to_string();
        Self::spawn_at(
            &plane.plane.ws_url(),
            &plane.plane.url(),
            &key,
            engine,
            opts,
        )
    }

    /// Starts the worker against any orchestrator URL (e.g. a scripted server).
    pub fn spawn_at(
        ws_url: &str,
        root_url: &str,
        key: &str,
        engine: Engine,
        opts: WorkerOptions<'_>,
    ) -> WorkerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(crate::worker_binary());
        cmd.args(["--worker-id", opts.worker_id])
            .args(["--web-socket-url", ws_url])
            .args(["--server-root-url", root_url])
            .args(if engine == Engine::None {
                vec![]
            } else {
                vec![
                    "--pull-policy",
                    opts.pull_policy.unwrap_or("if-not-present"),
                ]
            })
            .args(
                if opts.extra_args.iter().any(|a| a == "--stop-grace-period") {
                    vec![]
                } else {
                    vec!["--stop-grace-period", "2s"]
                },
            )
            .arg("--state-dir")
            .arg(
                opts.state_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("oz-worker-test-state")),
            )
            .args(["--log-level", "debug"])
            .args(&opts.extra_args)
            .env("WARP_API_KEY", key)
            // Only the engine's own variables select the daemon.
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .envs(engine.env())
            .env("OZ_LOG", "info,oz_agent_worker=debug,oz_worker=debug,oz_runtime=debug,oz_docker_engine=debug")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("worker binary starts");
        WorkerProcess {
            child,
            log,
            worker_id: opts.worker_id.to_string(),
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.log_text().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                panic!("worker never logged {needle:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("worker still running") as i32;
        // SAFETY-free: `kill` from the shell keeps unsafe code out of tests.
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "worker did not exit within {within:?}; log:\n{}",
                self.log_text()
            ),
        }
    }
}

/// A run of the demo agent with the given extra environment.
pub fn demo_run(host: &str, env: &[(&str, &str)]) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.to_string(),
        title: Some("e2e".into()),
        prompt: Some("say hello".into()),
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        ..Default::default()
    }
}

/// A run for a host runtime (direct, command): [`demo_run`] without images,
/// under `title`.
pub fn host_run(host: &str, title: &str, env: &[(&str, &str)]) -> CreateRunRequest {
    CreateRunRequest {
        title: Some(title.into()),
        docker_image: None,
        sidecar_image: None,
        ..demo_run(host, env)
    }
}

/// Polls until the run reaches a terminal state, then returns it.
pub async fn wait_terminal(plane: &TestPlane, id: &str, within: Duration) -> Run {
    let client = plane.client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = client.get_run(id).await.unwrap();
        if matches!(
            run.state,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        ) {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} did not end within {within:?}: {run:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_state(plane: &TestPlane, id: &str, state: RunState, within: Duration) -> Run {
    let client = plane.client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = client.get_run(id).await.unwrap();
        if run.state == state {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never reached {state:?}: {run:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique worker id per test, so tests sharing a control plane or engine
/// never see each other's tasks or containers.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &oz_runtime_docker::identity::random_id()[..8]
    )
}
